"""Netlink at setup time: read the host's addresses and routes, configure the namespace.

pasta's model, which we keep: the namespace interface gets the host's own address and
prefix (no NAT) and the host's default gateways, so applications inside see the same
addresses as outside. The netlink work itself (:mod:`pasta_net.rtnl`, pyroute2) runs in a
short-lived child forked from the *calling thread*, so it happens in that thread's
namespace: :func:`configure_namespace` is meant to be called inside the target netns
(``NetnsThread.call`` or ``in_netns``).

Addresses are packed ``bytes`` (4 or 16), as in :class:`pasta_net.core.plan.AddressPlan`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pickle
from typing import Any

import attrs

__all__ = [
    "Addressing",
    "HostConfig",
    "NetconfError",
    "configure_namespace",
    "parse_resolv_conf",
    "read_host",
    "readdress_namespace",
]

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


def read_host(interface: str | None, want4: bool, want6: bool) -> HostConfig:
    """The host interface to copy: ``interface``, else the one of the first default route."""
    return _in_child("read_host", interface, want4, want6)


def configure_namespace(ifname: str, **settings: object) -> None:
    """Bring ``ifname`` up with addresses and default routes (see :func:`rtnl.configure_namespace`);
    call it in the target netns (``NetnsThread.call``)."""
    _in_child("configure_namespace", ifname, **settings)


def readdress_namespace(ifname: str, old: Addressing, new: Addressing) -> None:
    """Move one address family of ``ifname`` from ``old`` to ``new`` (``--follow-host``)."""
    _in_child("readdress_namespace", ifname, old, new)


def _in_child(name: str, *args: object, **kwargs: object) -> Any:
    """Run ``rtnl.<name>`` in a forked child of the calling thread; return or raise its result.

    The child inherits the calling thread's namespaces (setns is per thread, and fork
    copies only the forking thread), imports pyroute2, does the work and pickles the
    outcome back through a pipe. The parent never imports pyroute2.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            from pasta_net import rtnl

            outcome: tuple[bool, object] = (True, getattr(rtnl, name)(*args, **kwargs))
        except BaseException as exc:  # everything goes back to the parent, which decides
            outcome = (False, exc if isinstance(exc, NetconfError) else NetconfError(str(exc)))
        with os.fdopen(write_end, "wb") as pipe:
            pickle.dump(outcome, pipe)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    if not data:
        raise NetconfError(f"netlink helper for {name} died")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value


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
