"""The address plan: which addresses the namespace has and which ones we answer for.

Built once from the options and the host's configuration (``netconf.py``), frozen, and
handed to the handlers that need it (ARP, NDP, DHCP, DHCPv6, ICMP). Addresses are packed
``bytes``; ``None`` means the family is disabled or unknown.

pasta's model, which we keep: the namespace gets the host's own address (no NAT) and
the host's gateway as its gateway; every other address on the link answers with
``our_mac``, because the namespace's whole world is behind us.
"""

from __future__ import annotations

import attrs

__all__ = ["AddressPlan"]


@attrs.frozen
class AddressPlan:
    our_mac: bytes
    """The MAC address we answer with for every address but the namespace's own."""
    addr4: bytes | None = None
    """The namespace's IPv4 address."""
    prefix4: int = 24
    gw4: bytes | None = None
    """The namespace's IPv4 default gateway (the host's gateway by default)."""
    addr6: bytes | None = None
    """The namespace's global IPv6 address."""
    prefix6: int = 64
    gw6: bytes | None = None
    """The namespace's IPv6 gateway; the router address of our advertisements."""
    our_ll6: bytes = bytes.fromhex("fe800000000000000000000000000001")
    """Our link-local address: source of router advertisements and DHCPv6 replies."""
    mtu: int = 65520
    """The MTU we announce (DHCP option 26, RA MTU option); 0 means "do not announce"."""
    dns4: tuple[bytes, ...] = ()
    dns6: tuple[bytes, ...] = ()
    search: tuple[str, ...] = ()
    hostname: str | None = None
    fqdn: str | None = None

    def is_ns_address(self, addr: bytes) -> bool:
        """True for the namespace's own unicast addresses (we never answer for those)."""
        return addr == self.addr4 or addr == self.addr6
