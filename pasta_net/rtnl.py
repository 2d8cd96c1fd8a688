"""pyroute2 at work: the netlink requests behind :mod:`pasta_net.netconf`.

This module is imported only in the helper child of :mod:`pasta_net.netlink`, so the
long-running process never loads pyroute2 (about 12 MiB of resident memory and 0.2 s
of imports), and, like that module, it loads nothing that imports attrs. :func:`read_host`
works in the child's own netns; the functions that change the namespace take a netlink
socket (``fd``) opened in it by the parent.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pasta_net.netlink import NetconfError, NoDefaultRoute

__all__ = ["configure_namespace", "read_host", "readdress_namespace"]

_RTN_UNICAST = 1
_RT_SCOPE_UNIVERSE = 0
_RT_SCOPE_LINK = 253
# IFA_F_SECONDARY (IPv4) has the value of IFA_F_TEMPORARY (IPv6): neither is the address
# to copy, and neither is one that failed DAD or is being retired.
_IFA_F_SKIP = 0x01 | 0x08 | 0x20  # SECONDARY/TEMPORARY | DADFAILED | DEPRECATED
_IFA_F_NODAD = 0x02
_IFA_F_TENTATIVE = 0x40
_READY_TIMEOUT = 3.0


def read_host(interface: str | None, want4: bool, want6: bool) -> dict[str, object]:
    """Read ``interface`` (default: that of the first IPv4, else IPv6, default route): the
    fields of a :class:`pasta_net.netconf.HostConfig`."""
    with _doing("Failed to read host routes and addresses"), IPRoute() as ipr:
        routes4 = _default_nexthops(ipr, socket.AF_INET) if want4 else []
        routes6 = _default_nexthops(ipr, socket.AF_INET6) if want6 else []
        index = _pick_interface(ipr, interface, routes4 + routes6)
        link = ipr.get_links(index)[0]
        addr4 = _first_address(ipr, index, socket.AF_INET) if want4 else None
        addr6 = _first_address(ipr, index, socket.AF_INET6, global_only=True) if want6 else None
    mac = link.get("address")
    return {
        "ifname": link.get("ifname"),
        "mac": bytes.fromhex(mac.replace(":", "")) if mac else None,
        "mtu": link.get("mtu"),
        "addr4": addr4[0] if addr4 else None,
        "prefix4": addr4[1] if addr4 else None,
        "gw4": _gateway_on(routes4, index),
        "addr6": addr6[0] if addr6 else None,
        "prefix6": addr6[1] if addr6 else None,
        "gw6": _gateway_on(routes6, index),
    }


def _default_nexthops(ipr: IPRoute, family: int) -> list[tuple[int | None, bytes | None]]:
    """``(oif, gateway)`` of each unicast default route in the main table, in kernel order
    (lowest metric first); a multipath route gives one pair per nexthop. The oif is None
    for a route through a nexthop object (RTA_NH_ID), which we do not resolve."""
    hops: list[tuple[int | None, bytes | None]] = []
    for route in ipr.get_default_routes(family=family):
        if route["type"] != _RTN_UNICAST:
            continue
        for hop in route.get("multipath") or [route]:
            gateway = hop.get("gateway")
            hops.append((hop.get("oif"), _pack(gateway) if gateway else None))
    return hops


def _pick_interface(
    ipr: IPRoute, interface: str | None, hops: list[tuple[int | None, bytes | None]]
) -> int:
    if interface is not None:
        found = ipr.link_lookup(ifname=interface)
        if not found:
            raise NetconfError(f"No such interface: {interface}")
        return int(found[0])
    oif = next((oif for oif, _gw in hops if oif is not None), None)
    if oif is not None:
        return oif
    if hops:  # online, but we cannot tell through which interface: not local mode
        raise NetconfError("Default routes through nexthop objects only: name the "
                           "interface to copy with -i")
    raise NoDefaultRoute("No interfaces with usable default routes")


def _gateway_on(hops: list[tuple[int | None, bytes | None]], index: int) -> bytes | None:
    return next((gw for oif, gw in hops if oif == index and gw), None)


def _first_address(
    ipr: IPRoute, index: int, family: int, global_only: bool = False
) -> tuple[bytes, int] | None:
    for msg in ipr.get_addr(index=index, family=family):
        flags = msg.get("IFA_FLAGS") or msg["flags"]
        if flags & _IFA_F_SKIP or (global_only and msg["scope"] != _RT_SCOPE_UNIVERSE):
            continue
        return _pack(msg.get("address")), int(msg["prefixlen"])
    return None


def configure_namespace(
    fd: int,
    ifname: str,
    *,
    mac: bytes | None,
    mtu: int,
    addr4: bytes | None = None,
    prefix4: int = 24,
    gw4: bytes | None = None,
    addr6: bytes | None = None,
    prefix6: int = 64,
    gw6: bytes | None = None,
) -> None:
    """Bring ``ifname`` up with the given addresses and default routes; ``lo`` up too.

    Returns once every IPv6 address on ``ifname`` is usable (not tentative), so that the
    namespace can send at once. Our global address gets ``IFA_F_NODAD`` (the caller has
    set ``accept_dad=0`` for the link-local one): nobody else is on this link, and DAD
    would delay startup by about two seconds.
    """
    with IPRoute(fileno=fd) as ipr:
        index = _lookup(ipr, ifname)
        with _doing(f"Failed to set up {ifname}"):
            # One request: the kernel sets the address and MTU before it brings the link up.
            link = {"mtu": mtu, "state": "up"}
            if mac is not None:
                link["address"] = _mac_text(mac)
            ipr.link("set", index=index, **link)
            ipr.link("set", index=_lookup(ipr, "lo"), state="up")
        if addr4 is not None:
            _add_address(ipr, index, ifname, addr4, prefix4, flags=0)
            if gw4 is not None:
                _add_default_route(ipr, index, gw4, addr4, prefix4)
        if addr6 is not None:
            _add_address(ipr, index, ifname, addr6, prefix6, flags=_IFA_F_NODAD)
            if gw6 is not None:
                _add_default_route(ipr, index, gw6, addr6, prefix6)
        _wait_ipv6_ready(ipr, index, ifname)


Addressing = tuple[bytes | None, int, bytes | None]
"""``(addr, prefix, gw)``: :class:`pasta_net.netconf.Addressing` as a plain tuple."""


def readdress_namespace(fd: int, ifname: str, old: Addressing, new: Addressing) -> None:
    """Move one address family of ``ifname`` from ``old`` to ``new`` (``--follow-host``).

    The old address goes first: deleting an IPv4 primary address deletes the secondary
    addresses of its prefix too, so a new address added first could vanish with it.
    Deleting the last IPv4 address flushes the routes through the interface, so the
    default route is always installed again, with "replace" (idempotent). Addresses and
    routes that are already gone or already there are not errors.
    """
    (old_addr, old_prefix, old_gw), (addr, prefix, gw) = old, new
    with IPRoute(fileno=fd) as ipr:
        index = _lookup(ipr, ifname)
        if (old_addr, old_prefix) != (addr, prefix):
            if old_addr is not None:
                _del_address(ipr, index, ifname, old_addr, old_prefix)
            if addr is not None:
                flags = _IFA_F_NODAD if len(addr) == 16 else 0
                _add_address(ipr, index, ifname, addr, prefix, flags=flags, exist_ok=True)
        if addr is not None and gw is not None:
            _add_default_route(ipr, index, gw, addr, prefix, command="replace")
        elif old_gw is not None:
            _del_default_route(ipr, index, old_gw)


def _del_address(ipr: IPRoute, index: int, ifname: str, addr: bytes, prefix: int) -> None:
    text = _text(addr)
    with _doing(f"Failed to remove address {text}/{prefix} from {ifname}"):
        try:
            ipr.addr("del", index=index, address=text, prefixlen=prefix)
        except NetlinkError as exc:
            if exc.code != errno.EADDRNOTAVAIL:
                raise


def _del_default_route(ipr: IPRoute, index: int, gw: bytes) -> None:
    gateway = ipaddress.ip_address(gw)
    default = "0.0.0.0/0" if gateway.version == 4 else "::/0"
    with _doing(f"Failed to remove default route via {gateway}"):
        try:
            ipr.route("del", dst=default, gateway=str(gateway), oif=index)
        except NetlinkError as exc:
            if exc.code != errno.ESRCH:
                raise


def _lookup(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetconfError(f"No such interface in the namespace: {ifname}")
    return int(found[0])


def _add_address(
    ipr: IPRoute, index: int, ifname: str, addr: bytes, prefix: int, flags: int,
    exist_ok: bool = False,
) -> None:
    text = _text(addr)
    with _doing(f"Failed to add address {text}/{prefix} to {ifname}"):
        try:
            ipr.addr("add", index=index, address=text, prefixlen=prefix, flags=flags)
        except NetlinkError as exc:
            if not (exist_ok and exc.code == errno.EEXIST):
                raise


def _add_default_route(ipr: IPRoute, index: int, gw: bytes, addr: bytes, prefix: int,
                       command: str = "add") -> None:
    """Default route via ``gw``; first a host route to ``gw`` if it is off our prefix.

    The kernel refuses a gateway it cannot reach on-link ("Nexthop has invalid gateway").
    A link-local IPv6 gateway is on-link through ``oif`` already.
    """
    gateway = ipaddress.ip_address(gw)
    network = ipaddress.ip_interface((ipaddress.ip_address(addr), prefix)).network
    with _doing(f"Failed to add default route via {gateway}"):
        if gateway not in network and not gateway.is_link_local:
            ipr.route(
                command,
                dst=f"{gateway}/{gateway.max_prefixlen}",
                oif=index,
                scope=_RT_SCOPE_LINK,
            )
        default = "0.0.0.0/0" if gateway.version == 4 else "::/0"
        ipr.route(command, dst=default, gateway=str(gateway), oif=index)


def _wait_ipv6_ready(ipr: IPRoute, index: int, ifname: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while any(
        (msg.get("IFA_FLAGS") or msg["flags"]) & _IFA_F_TENTATIVE
        for msg in ipr.get_addr(index=index, family=socket.AF_INET6)
    ):
        if time.monotonic() > deadline:
            raise NetconfError(
                f"IPv6 addresses on {ifname} still tentative after {_READY_TIMEOUT} s"
            )
        time.sleep(0.01)


@contextlib.contextmanager
def _doing(what: str) -> Iterator[None]:
    """Turn a netlink error into a :class:`NetconfError` that names the step."""
    try:
        yield
    except NetlinkError as exc:
        raise NetconfError(f"{what}: {os.strerror(exc.code)}") from exc


def _pack(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
