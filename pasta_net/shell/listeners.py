"""Inbound forwards (``-t``/``-u``): listening host sockets feeding the engine.

One socket per port and family, as pasta: a listener bound to the wildcard address
exists once for IPv4 (0.0.0.0) and once for IPv6 (::, ``IPV6_V6ONLY``), so that the
client's real address reaches the namespace in its own family. Accepted TCP sockets are
handed to the hub and announced to the engine, which opens the connection towards the
namespace with the client as source (the tap path keeps the source address).

Every bind happens before we report "ready": a port that cannot be bound is a start-up
error with pasta's wording (``Failed to bind port 8000 (Address already in use) for
option '-t 8000'``), never a silent gap. Running out of fds while accepting (EMFILE and
friends) refuses that one connection and keeps serving, as trio's serve_listeners does.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections.abc import Iterable

import attrs

from pasta_net.core.actions import CloseSocket, SocketKind
from pasta_net.core.portspec import PortSpec
from pasta_net.shell.hub import Hub

__all__ = ["ListenError", "Listener", "bind_forwards"]

log = logging.getLogger("pasta_net.listeners")

_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_BATCH = 64


class ListenError(Exception):
    """A forwarded port could not be bound; the message is ready for the user."""


@attrs.define(eq=False)
class Listener:
    sock: socket.socket
    kind: SocketKind
    ns_port: int
    flow: int
    """Engine id of a UDP listener (datagrams from clients go out through it)."""


def _families(addr: str | None, want4: bool, want6: bool) -> list[tuple[int, str, bool]]:
    """``(family, bind address, IPv6-only?)`` of the sockets one forwarded port needs.

    With both families and no address, one dual-stack socket (``::``, IPV6_V6ONLY off)
    serves both: IPv4 clients arrive as ``::ffff:a.b.c.d`` and keep their address. One
    fd per port instead of two matters for large ranges (``-t 10000-19999`` under a
    20,000-fd limit).
    """
    if addr is not None:
        return [(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr, True)]
    if want4 and want6:
        return [(socket.AF_INET6, "::", False)]
    return [(socket.AF_INET, "0.0.0.0", True)] if want4 else [(socket.AF_INET6, "::", True)]


def _bind(kind: SocketKind, family: int, addr: str, port: int, iface: str | None,
          v6only: bool = True) -> socket.socket:
    sock_type = socket.SOCK_STREAM if kind is SocketKind.TCP else socket.SOCK_DGRAM
    sock = socket.socket(family, sock_type | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        if iface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        sock.bind((addr, port))
        if kind is SocketKind.TCP:
            sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_forwards(hub: Hub, specs: Iterable[PortSpec], kind: SocketKind, option: str,
                  want4: bool, want6: bool) -> list[Listener]:
    """Bind every port of ``specs`` and register the listeners with ``hub``."""
    listeners: list[Listener] = []
    try:
        for spec in specs:
            for forward in spec.forwards:
                addr = str(forward.addr) if forward.addr is not None else None
                for port in forward.ports():
                    ns_port = forward.target(port)
                    for family, bind_addr, v6only in _families(addr, want4, want6):
                        try:
                            sock = _bind(kind, family, bind_addr, port, forward.iface, v6only)
                        except OSError as exc:
                            raise ListenError(
                                f"Failed to bind port {port} ({exc.strerror}) for option "
                                f"'{option} {spec.text}', exiting") from exc
                        listener = Listener(sock, kind, ns_port, hub.engine.new_flow_id())
                        _register(hub, listener)
                        listeners.append(listener)
    except BaseException:
        close_listeners(hub, listeners)
        raise
    return listeners


def _register(hub: Hub, listener: Listener) -> None:
    fd = listener.sock.fileno()
    if listener.kind is SocketKind.TCP:
        hub.add_fd(fd, select.EPOLLIN, lambda _mask: _accept(hub, listener))
    else:
        hub.register_udp_listener(listener.flow, listener.sock, listener.ns_port)


def _accept(hub: Hub, listener: Listener) -> None:
    engine = hub.engine
    for _ in range(_ACCEPT_BATCH):
        try:
            conn, client = listener.sock.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in _CAPACITY_ERRNOS:
                log.warning("cannot accept on port %d: %s", listener.ns_port, exc.strerror)
                return
            raise
        flow = engine.new_flow_id()
        hub.adopt(flow, conn, SocketKind.TCP)
        hub.execute(engine.tcp.accepted(flow, client[:2], listener.ns_port,
                                        hub.now()))


def close_listeners(hub: Hub, listeners: Iterable[Listener]) -> None:
    """Stop listening; TCP connections already accepted go on."""
    for listener in listeners:
        if listener.kind is SocketKind.UDP:  # the hub owns it, as a flow's socket
            hub.execute([CloseSocket(listener.flow)])
        else:
            hub.remove_fd(listener.sock.fileno())
            listener.sock.close()
