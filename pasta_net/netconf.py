"""Netlink at setup time: read the host's addresses and routes, configure the namespace.

pasta's model, which we keep: the namespace interface gets the host's own address and
prefix (no NAT) and the host's default gateways, so applications inside see the same
addresses as outside. The netlink work itself (:mod:`pasta_net.rtnl`, pyroute2) runs in a
child process, :class:`NetlinkHelper`; requests for the target netns carry a netlink
socket opened there, so :meth:`NetlinkHelper.configure` is meant to be called inside it
(``NetnsThread.call`` or ``in_netns``).

Addresses are packed ``bytes`` (4 or 16), as in :class:`pasta_net.core.plan.AddressPlan`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pickle
import socket
from collections.abc import Callable
from typing import Any

import attrs

__all__ = [
    "Addressing",
    "HostConfig",
    "NetconfError",
    "NetlinkHelper",
    "parse_resolv_conf",
    "read_host",
    "readdress_namespace",
]

_MAX_MESSAGE = 1 << 16
"""Bound of one pickled request or outcome."""
_MAXNS = 3
"""glibc's resolver uses only the first three ``nameserver`` lines (``MAXNS``)."""


class NetconfError(Exception):
    """A netlink request failed; the message says which step and why."""


@attrs.frozen
class HostConfig:
    """The host interface we copy to the namespace; None where the host has nothing."""

    ifname: str
    mac: bytes | None
    mtu: int
    addr4: bytes | None = None
    prefix4: int | None = None
    gw4: bytes | None = None
    addr6: bytes | None = None
    """The first global-scope, non-temporary IPv6 address."""
    prefix6: int | None = None
    gw6: bytes | None = None
    """Often link-local (``fe80::1``): the namespace then routes via the same address."""


@attrs.frozen
class Addressing:
    """One address family of the namespace interface; None where there is none."""

    addr: bytes | None
    prefix: int
    gw: bytes | None


class NetlinkHelper:
    """A forked child that does our netlink work with pyroute2; the parent never imports it.

    Why a child: pyroute2 costs about 12 MiB of resident memory and 0.2 s of imports.
    :meth:`start` runs first thing in ``cli.main``, so the child imports pyroute2 and
    reads the host on one core while the parent imports trio and the engine on the
    other; the namespace is then configured by a child that is already warm.

    The child stays in the namespaces it was forked in (the host's). Work in another
    netns comes with a netlink socket the caller opened there (a netlink socket talks
    to the netns it was created in), passed with ``SCM_RIGHTS``. Requests and outcomes
    are pickles, one per ``SOCK_SEQPACKET`` message; errors come back as
    :class:`NetconfError` and are raised in the caller.
    """

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self._pid: int | None = pid
        self._sock = sock

    @classmethod
    def start(cls, host: tuple[str | None, bool, bool] | None = None) -> NetlinkHelper:
        """Fork the helper from the calling thread; with ``host`` (``interface, want4,
        want6``) it reads the host at once, for :meth:`host`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            try:
                _helper_main(theirs, host)
            finally:
                os._exit(0)
        theirs.close()
        return cls(pid, ours)

    def host(self) -> HostConfig:
        """The host's configuration, read when the helper started (ask once)."""
        return self._outcome("read_host")

    def configure(self, ifname: str, **settings: object) -> None:
        """Bring ``ifname`` of the calling thread's netns up with addresses and default
        routes (see :func:`rtnl.configure_namespace`)."""
        _disable_dad(ifname)  # /proc/sys/net shows the calling thread's netns, not the child's
        self._request("configure_namespace", ifname, **settings)

    def readdress(self, ifname: str, old: Addressing, new: Addressing) -> None:
        """Move one address family of ``ifname`` in the calling thread's netns from ``old``
        to ``new`` (``--follow-host``)."""
        self._request("readdress_namespace", ifname, old, new)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """The child exits at the end of its socket; reap it if it is ours (after a
        daemonising fork it is the parent's). Closing again does nothing.

        ``shutdown`` ends the socket for every process holding a copy of our end (a
        child forked since, like the spawned command before its ``exec``), which
        ``close`` alone would not: reaping would then wait for them.
        """
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        pid, self._pid = self._pid, None
        if pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def __enter__(self) -> NetlinkHelper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, name: str, *args: object, **kwargs: object) -> None:
        request = pickle.dumps((name, args, kwargs))
        # SOCK_DGRAM: pyroute2 (asyncio) wants a datagram socket; netlink takes either
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE) as nl:
            try:
                socket.send_fds(self._sock, [request], [nl.fileno()])
            except OSError:  # EPIPE: it is gone
                raise NetconfError(f"netlink helper died before {name}") from None
        self._outcome(name)

    def _outcome(self, name: str) -> Any:
        try:
            data = self._sock.recv(_MAX_MESSAGE)
        except OSError:  # ECONNRESET: it died with our request unread
            data = b""
        if not data:
            raise NetconfError(f"netlink helper died before {name}")
        ok, value = pickle.loads(data)
        if not ok:
            raise value
        return value


def read_host(interface: str | None, want4: bool, want6: bool) -> HostConfig:
    """The host interface to copy: ``interface``, else the one of the first default
    route. A one-off helper: for reads after startup (``--follow-host``)."""
    with NetlinkHelper.start((interface, want4, want6)) as helper:
        return helper.host()


def readdress_namespace(ifname: str, old: Addressing, new: Addressing) -> None:
    """:meth:`NetlinkHelper.readdress` through a one-off helper."""
    with NetlinkHelper.start() as helper:
        helper.readdress(ifname, old, new)


def _helper_main(sock: socket.socket, host: tuple[str | None, bool, bool] | None) -> None:
    """The child: answer the host read, then one request per message until EOF."""
    from pasta_net import privileges, rtnl

    privileges.close_inherited_fds([sock.fileno()])  # ours may include a starter's pipes
    if host is not None:
        sock.send(_run(rtnl.read_host, *host))
    while True:
        data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 1)
        if not data:
            return
        name, args, kwargs = pickle.loads(data)
        sock.send(_run(getattr(rtnl, name), fds[0], *args, **kwargs))


def _run(function: Callable[..., object], *args: object, **kwargs: object) -> bytes:
    """``function``'s outcome, pickled: ``(True, value)`` or ``(False, NetconfError)``."""
    try:
        outcome: tuple[bool, object] = (True, function(*args, **kwargs))
    except BaseException as exc:  # everything goes back to the parent, which decides
        outcome = (False, exc if isinstance(exc, NetconfError) else NetconfError(str(exc)))
    return pickle.dumps(outcome)


def _disable_dad(ifname: str) -> None:
    """Before the link goes up, so its link-local address skips DAD too: nobody else is
    on this link, and DAD would delay the namespace's first IPv6 packet by two seconds.
    The knob is missing when IPv6 is off (``ipv6.disable=1``): nothing to wait for then.
    """
    with (
        contextlib.suppress(FileNotFoundError),
        open(f"/proc/sys/net/ipv6/conf/{ifname}/accept_dad", "w") as knob,
    ):
        knob.write("0")


def parse_resolv_conf(
    text: str,
) -> tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...], tuple[str, ...]]:
    """``(nameservers, search domains)`` from resolv.conf text, as glibc reads it.

    Comments start with ``#`` or ``;``; invalid addresses are skipped, a ``%zone`` suffix
    is dropped; only the first :data:`_MAXNS` servers count; the last ``search`` or
    ``domain`` line wins.
    """
    servers: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    search: tuple[str, ...] = ()
    for line in text.splitlines():
        words = line.split()
        if not words or words[0][0] in "#;":
            continue
        if words[0] == "nameserver" and len(words) > 1 and len(servers) < _MAXNS:
            with contextlib.suppress(ValueError):
                servers.append(ipaddress.ip_address(words[1].partition("%")[0]))
        elif words[0] in ("search", "domain"):
            search = tuple(words[1:])
    return tuple(servers), search
