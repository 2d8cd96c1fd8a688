"""Which host address a namespace destination really means, and back.

pasta copies the host's addresses into the namespace, so most traffic needs no
translation at all: a connection to 203.0.113.1 becomes a host socket connected to
203.0.113.1. Three kinds of address are special (upstream pasta's semantics):

``--map-host-loopback ADDR`` (default: the gateway address; ``--no-map-gw`` turns the
    default off): the namespace reaches the host's loopback (127.0.0.1 or ::1) at ADDR,
    and host-loopback clients of forwarded ports appear to come from ADDR.
``--map-guest-addr ADDR``: the namespace reaches the host's own global address at ADDR
    (which it cannot use directly: the namespace has that address itself), and
    connections from that host address appear to come from ADDR.
``--dns-forward ADDR``: queries to ADDR port 53 go to the host's resolver
    (``--dns-host`` or the first nameserver of /etc/resolv.conf); replies come from ADDR.

Flows remember the address the namespace used, so replies need only the forward map;
:meth:`AddressMap.apparent_source` serves connections and datagrams that start on the
host side.
"""

from __future__ import annotations

import ipaddress

import attrs

__all__ = ["AddressMap"]

_LOOPBACK = {4: "127.0.0.1", 6: "::1"}


def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


@attrs.frozen
class AddressMap:
    host_loopback: tuple[bytes, ...] = ()
    """Namespace-side addresses that mean the host's loopback."""
    guest_addr: tuple[bytes, ...] = ()
    """Namespace-side addresses that mean the host's own global address."""
    host_addr4: bytes | None = None
    host_addr6: bytes | None = None
    """The host's own global addresses (what --map-guest-addr leads to)."""
    dns_forward: tuple[bytes, ...] = ()
    dns_host4: bytes | None = None
    dns_host6: bytes | None = None

    def outbound(self, dst: bytes, port: int) -> tuple[str, int]:
        """The host-side destination of a namespace packet to ``dst``:``port``."""
        family = 4 if len(dst) == 4 else 6
        if port == 53 and dst in self.dns_forward:
            resolver = self.dns_host4 if family == 4 else self.dns_host6
            if resolver is not None:
                return _text(resolver), 53
        if dst in self.host_loopback:
            return _LOOPBACK[family], port
        if dst in self.guest_addr:
            host = self.host_addr4 if family == 4 else self.host_addr6
            if host is not None:
                return _text(host), port
        return _text(dst), port

    def apparent_source(self, host_addr: str) -> bytes | None:
        """How the namespace sees a host-side peer; None if it cannot be represented."""
        packed = ipaddress.ip_address(host_addr.split("%", 1)[0])
        if isinstance(packed, ipaddress.IPv6Address) and packed.ipv4_mapped:
            packed = packed.ipv4_mapped
        raw = packed.packed
        family = 4 if len(raw) == 4 else 6
        if packed.is_loopback:
            return self._first(self.host_loopback, family)
        if raw in (self.host_addr4, self.host_addr6):
            return self._first(self.guest_addr, family) or self._first(self.host_loopback, family)
        return raw

    @staticmethod
    def _first(addrs: tuple[bytes, ...], family: int) -> bytes | None:
        size = 4 if family == 4 else 16
        return next((a for a in addrs if len(a) == size), None)
