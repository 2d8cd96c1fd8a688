"""ARP (RFC 826): we answer for every IPv4 address except the namespace's own.

The namespace's whole world is behind us, so any address it asks for — the gateway,
a neighbour on its prefix, anything it believes is on-link — resolves to our MAC.
Requests for its own address (duplicate address detection, gratuitous ARP) get no
answer, or it would conclude its address is taken. Nor does an address probe (RFC 5227:
sender 0.0.0.0) for anything but the gateway: a client choosing an IPv4 link-local or a
static address would otherwise find every candidate taken (as NDP does for IPv6).
"""

from __future__ import annotations

from pasta_net.core.frames import ETH_P_ARP, build_arp, build_frame, parse_arp
from pasta_net.core.plan import AddressPlan

__all__ = ["handle_arp"]

ARP_REQUEST = 1
ARP_REPLY = 2
_UNSPECIFIED = bytes(4)


def handle_arp(payload: memoryview, plan: AddressPlan) -> list[bytes]:
    """Reply to an ARP request on the namespace's link; anything else gets nothing."""
    arp = parse_arp(payload)
    if arp.op != ARP_REQUEST:
        return []
    if plan.is_ns_address(arp.target_ip) or arp.target_ip == arp.sender_ip:
        return []
    if arp.sender_ip == _UNSPECIFIED and arp.target_ip != plan.gw4:
        return []
    reply = build_arp(ARP_REPLY, plan.our_mac, arp.target_ip, arp.sender_mac, arp.sender_ip)
    return [build_frame(arp.sender_mac, plan.our_mac, ETH_P_ARP, reply)]
