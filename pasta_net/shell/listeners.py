"""Listening sockets of the forwards: ``-t``/``-u`` on the host, ``-T``/``-U`` in the namespace.

One socket per forwarded port: with both families and no address, a dual-stack one
(``::``, ``IPV6_V6ONLY`` off), where IPv4 clients arrive as ``::ffff:a.b.c.d`` and keep
their address in their own family. Accepted TCP sockets are handed to the hub and
announced to the engine, which opens the connection towards the namespace with the
client as source (the tap path keeps the source address).

Every bind happens before we report "ready": a port that cannot be bound is a start-up
error with pasta's wording (``Failed to bind port 8000 (Address already in use) for
option '-t 8000'``), never a silent gap. Running out of fds while accepting (EMFILE and
friends) refuses that one connection with a reset, through the hub's spare fd
(shell/reserve.py), and keeps serving.

What is not the tap path comes in through a :class:`Binding` (shell/forwarding.py):
the namespace's sockets for -T/-U, loopback addresses only, and handlers that splice
loopback clients instead of handing them to the engine. ``auto`` rules are bound by the
port scan there, one port at a time (:func:`bind_port`), never here; "all" rules (weak)
skip the ports they cannot bind and fail only when they could bind none.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import select
import socket
from collections.abc import Callable, Iterable

import attrs

from pasta_net.core.actions import CloseSocket, SocketKind
from pasta_net.core.portspec import PortForward, PortSpec
from pasta_net.shell.hub import Hub
from pasta_net.shell.splice import SocketFactory, host_socket

__all__ = [
    "Binding", "ListenError", "Listener", "bind_forwards", "bind_port", "close_listeners", "to_tap",
]

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
    to_addr: str | None = None
    """The rule's target address, if it names one."""
    target: bytes | None = attrs.field(init=False)
    """``to_addr`` packed, as the engine takes it: parsed once, not per connection."""

    def __attrs_post_init__(self) -> None:
        self.target = ipaddress.ip_address(self.to_addr).packed if self.to_addr else None


IP_FREEBIND = 15  # <linux/in.h>; not in Python's socket module

AcceptHandler = Callable[[Listener, socket.socket, tuple[str, int]], None]
Divert = Callable[[bytes, tuple[str, int]], bool]


@attrs.frozen
class Binding:
    """Where one option's listeners live and what serves them. The default is -t/-u's:
    host sockets on every address, everything through the engine's tap path."""

    new_socket: SocketFactory = host_socket
    loopback: bool = False
    """Listen on 127.0.0.1 and ::1 only (-T/-U) instead of every address."""
    accept: AcceptHandler | None = None
    """TCP: takes each accepted connection instead of the tap path."""
    divert: Callable[[Listener], Divert] | None = None
    """UDP: the listener's divert, which takes the datagrams it returns True for
    (:meth:`Hub.register_udp_listener`)."""
    freebind: bool = False
    """``--freebind``: listen on an address the host does not have (yet)."""


TAP = Binding()


def _families(addr: str | None, want4: bool, want6: bool,
              loopback: bool = False) -> list[tuple[int, str, bool]]:
    """``(family, bind address, IPv6-only?)`` of the sockets one forwarded port needs.

    With both families and no address, one dual-stack socket (``::``, IPV6_V6ONLY off)
    serves both: IPv4 clients arrive as ``::ffff:a.b.c.d`` and keep their address. One
    fd per port instead of two matters for large ranges (``-t 10000-19999`` under a
    20,000-fd limit).
    """
    if addr is not None:
        return [(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr, True)]
    if loopback:
        return [f for f, wanted in (((socket.AF_INET, "127.0.0.1", True), want4),
                                    ((socket.AF_INET6, "::1", True), want6)) if wanted]
    if want4 and want6:
        return [(socket.AF_INET6, "::", False)]
    return [(socket.AF_INET, "0.0.0.0", True)] if want4 else [(socket.AF_INET6, "::", True)]


def _bind(kind: SocketKind, family: int, addr: str, port: int, iface: str | None,
          v6only: bool = True, binding: Binding = TAP) -> socket.socket:
    sock = binding.new_socket(family, socket.SOCK_STREAM if kind is SocketKind.TCP
                              else socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if binding.freebind:  # IPv6 sockets take it too (one flag of the inet socket)
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
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
                  want4: bool, want6: bool, binding: Binding = TAP) -> list[Listener]:
    """Bind every port of the fixed (not ``auto``) rules of ``specs``, register the
    listeners with ``hub``; :class:`ListenError` if one cannot be bound."""
    listeners: list[Listener] = []
    try:
        for spec in specs:
            _bind_spec(hub, spec, kind, option, want4, want6, binding, listeners)
    except BaseException:
        close_listeners(hub, listeners)
        raise
    return listeners


def _bind_spec(hub: Hub, spec: PortSpec, kind: SocketKind, option: str, want4: bool,
               want6: bool, binding: Binding, listeners: list[Listener]) -> None:
    bound, skipped = len(listeners), False
    for forward in spec.forwards:
        if forward.auto:
            continue
        for port in forward.ports():
            try:
                listeners += bind_port(hub, forward, port, kind, want4, want6, binding)
            except OSError as exc:
                if not forward.weak:
                    raise ListenError(f"Failed to bind port {port} ({exc.strerror}) for "
                                      f"option '{option} {spec.text}', exiting") from exc
                skipped = True
    if skipped and len(listeners) == bound:
        raise ListenError(f"Failed to bind any port for option '{option} {spec.text}', exiting")


def bind_port(hub: Hub, forward: PortForward, port: int, kind: SocketKind, want4: bool,
              want6: bool, binding: Binding = TAP) -> list[Listener]:
    """The listeners of one port of ``forward``, registered with ``hub``; raises OSError
    (with nothing left bound) if one of them cannot be bound."""
    addr = str(forward.addr) if forward.addr is not None else None
    to_addr = str(forward.to_addr) if forward.to_addr is not None else None
    ns_port = forward.target(port)
    assert ns_port is not None
    listeners: list[Listener] = []
    try:
        for family, bind_addr, v6only in _families(addr, want4, want6, binding.loopback):
            sock = _bind(kind, family, bind_addr, port, forward.iface, v6only, binding)
            listener = Listener(sock, kind, ns_port, hub.engine.new_flow_id(), to_addr)
            _register(hub, listener, binding)
            listeners.append(listener)
    except BaseException:
        close_listeners(hub, listeners)
        raise
    return listeners


def _register(hub: Hub, listener: Listener, binding: Binding) -> None:
    fd = listener.sock.fileno()
    if listener.kind is SocketKind.TCP:
        handle = binding.accept or functools.partial(to_tap, hub)
        hub.add_fd(fd, select.EPOLLIN, lambda _mask: _accept(hub, listener, handle))
    else:
        divert = binding.divert(listener) if binding.divert is not None else None
        hub.register_udp_listener(listener.flow, listener.sock, listener.ns_port, divert,
                                  listener.target)


def _accept(hub: Hub, listener: Listener, handle: AcceptHandler) -> None:
    for _ in range(_ACCEPT_BATCH):
        try:
            conn, client = listener.sock.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            log.warning("cannot accept on port %d (%s): connection refused",
                        listener.ns_port, exc.strerror)
            if not hub.spare.refuse(listener.sock):
                return
            continue
        handle(listener, conn, client[:2])


def to_tap(hub: Hub, listener: Listener, conn: socket.socket, client: tuple[str, int]) -> None:
    """The tap path: the engine opens the connection towards the namespace."""
    engine = hub.engine
    flow = engine.new_flow_id()
    hub.adopt(flow, conn, SocketKind.TCP)
    hub.execute(engine.tcp.accepted(flow, client, listener.ns_port, hub.now(),
                                    listener.target))


def close_listeners(hub: Hub, listeners: Iterable[Listener]) -> None:
    """Stop listening; TCP connections already accepted go on."""
    for listener in listeners:
        if listener.kind is SocketKind.UDP:  # the hub owns it, as a flow's socket
            hub.execute([CloseSocket(listener.flow)])
        else:
            hub.remove_fd(listener.sock.fileno())
            listener.sock.close()
