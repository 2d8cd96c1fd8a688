"""Netlink at setup time: read the host's addresses and routes, configure the namespace.

pasta's model, which we keep: the namespace interface gets the host's own address and
prefix (no NAT) and the host's default gateways, so applications inside see the same
addresses as outside. The netlink work itself (:mod:`pasta_net.rtnl`, pyroute2) runs in a
child process, :class:`~pasta_net.netlink.NetlinkHelper`; requests for the target netns
carry a netlink socket opened there, so its ``configure`` is meant to be called inside it
(``NetnsThread.call`` or ``in_netns``).

Addresses are packed ``bytes`` (4 or 16), as in :class:`pasta_net.core.plan.AddressPlan`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import attrs

from pasta_net.core.dnsname import is_domain_name
from pasta_net.netlink import NetconfError, NetlinkHelper, NoDefaultRoute, route_socket

__all__ = [
    "LOCAL_MODE",
    "Addressing",
    "HostConfig",
    "NetconfError",
    "NetlinkHelper",
    "NoDefaultRoute",
    "host_config",
    "parse_resolv_conf",
    "read_host",
    "readdress_namespace",
    "route_socket",
]

_MAXNS = 3
"""glibc's resolver uses only the first three ``nameserver`` lines (``MAXNS``)."""


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
    local: bool = False
    """No host interface to copy (see :data:`LOCAL_MODE`): the addresses above are not
    the host's own."""


LOCAL_MODE = HostConfig(
    ifname="tap0", mac=None, mtu=65520, local=True,
    addr4=ipaddress.IPv4Address("169.254.2.1").packed, prefix4=16,
    gw4=ipaddress.IPv4Address("169.254.2.2").packed,
)
"""What the namespace copies when the host has no usable interface (offline, no default
route): pasta's "local mode" addresses, link-local, so they clash with nothing. The
namespace then reaches the host's loopback at the gateway address (unless
``--no-map-gw``), forwarded ports work, and connections elsewhere go out through host
sockets as soon as the host has a route. IPv6 gets nothing: with no host route and no
global address there is nothing for the namespace to use that its own link-local
address does not already give it."""


@attrs.frozen
class Addressing:
    """One address family of the namespace interface; None where there is none."""

    addr: bytes | None
    prefix: int
    gw: bytes | None


def host_config(helper: NetlinkHelper) -> HostConfig:
    """The host interface ``helper`` was asked for (``NetlinkHelper.ask_host``)."""
    return HostConfig(**helper.host())


def read_host(interface: str | None, want4: bool, want6: bool) -> HostConfig:
    """``interface`` of the host, else the one of the first default route, through a
    one-off helper: for reads after startup (``--follow-host``)."""
    with NetlinkHelper.start() as helper:
        helper.ask_host(interface, want4, want6)
        return host_config(helper)


def readdress_namespace(nl: socket.socket, ifname: str, old: Addressing,
                        new: Addressing) -> None:
    """Move one address family of ``ifname`` from ``old`` to ``new`` in the netns of
    ``nl`` (a :func:`~pasta_net.netlink.route_socket`), through a one-off helper
    (``--follow-host``)."""
    with NetlinkHelper.start() as helper:
        helper.readdress(nl, ifname, attrs.astuple(old), attrs.astuple(new))


def parse_resolv_conf(
    text: str,
) -> tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...], tuple[str, ...]]:
    """``(nameservers, search domains)`` from resolv.conf text, as glibc reads it.

    Comments start with ``#`` or ``;``; invalid addresses are skipped, a ``%zone`` suffix
    is dropped; only the first :data:`_MAXNS` servers count; the last ``search`` or
    ``domain`` line wins, without what is no domain name (systemd-resolved's ``.``).
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
            search = tuple(name for name in words[1:] if is_domain_name(name))
    return tuple(servers), search
