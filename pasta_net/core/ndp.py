"""Neighbour Discovery for the namespace (RFC 4861): we are every neighbour and the router.

Theory of operation — the rules this file keeps:

* **Everything on the link is us.** A Neighbour Solicitation for any target but the
  namespace's own address gets a Neighbour Advertisement with Router, Solicited and
  Override set and ``our_mac`` as the target link-layer address (§7.2.4), sent from
  the target address itself. We never answer for ``plan.addr6``: that would break the
  namespace's own Duplicate Address Detection.
* **DAD probes are answered only to defend our addresses.** A solicitation from the
  unspecified address is a DAD probe for the sender's own tentative address (RFC 4862
  §5.4.2), so we answer only when it claims ``our_ll6`` or ``gw6``; the answer goes to
  all-nodes with Solicited clear (RFC 4861 §7.2.4). Any other probe is the
  namespace's own link-local address coming up: silence.
* **Router Solicitation → Router Advertisement** (§6.2.6), unicast to the solicitor or
  to all-nodes when it has no address yet. :func:`build_router_advertisement` is the
  same message for the engine's periodic, unsolicited advertisements.
* **What an RA says** (§4.2; RFC 8106): managed and other-config (DHCPv6 is there),
  current hop limit 255, router lifetime 65535 s (RFC 8319), our link-layer address,
  the MTU when it is usable (≥ 1280), the /64 of ``addr6`` on-link and autonomous
  with infinite lifetimes, RDNSS from ``dns6`` and DNSSL from ``search`` —
  all within one minimum-MTU packet (1280 bytes): DNS servers come first, and search
  domains that do not fit are left out.
* **The prefix is always a /64**, whatever ``prefix6`` the host has, as in pasta:
  SLAAC on Ethernet forms an address only from a 64-bit prefix (RFC 4862 §5.5.3 d,
  RFC 4291 §2.5.1), and a host with a /128 or a /48 must still let the namespace
  configure itself. The namespace's SLAAC address is then EUI-64, not ``addr6``: the
  managed flag sends it to DHCPv6 for the host's exact address.
* **Validation** (§6.1.1, §7.1.1): hop limit 255, code 0, the fixed part present,
  every option non-empty and inside the message, no source link-layer option and a
  solicited-node destination when the source is unspecified, no multicast target.
  Anything else raises :class:`MalformedFrame`. Checksums are not verified: tap frames
  may carry partial checksums, and the namespace is our only peer. Other ICMPv6
  types, including advertisements the namespace sends, get nothing.
* **Everything we send** has hop limit 255 and a full ICMPv6 checksum.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable

from pasta_net.core.dnsname import encode_names
from pasta_net.core.frames import (
    IPPROTO_ICMPV6,
    IpPacket,
    MalformedFrame,
    build_ip_frame,
    iter_tlv,
    l4_checksum,
)
from pasta_net.core.plan import AddressPlan

__all__ = [
    "ALL_NODES",
    "ALL_NODES_MAC",
    "IcmpType",
    "NdpOption",
    "build_router_advertisement",
    "handle_ndp",
]

log = logging.getLogger(__name__)

ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"

_HOP_LIMIT = 255
_UNSPECIFIED = bytes(16)
_SOLICITED_NODE_PREFIX = bytes.fromhex("ff0200000000000000000001ff")
_INFINITE = 0xFFFFFFFF
_ROUTER_LIFETIME = 65535
_MIN_IPV6_MTU = 1280
_SLAAC_PREFIX_LEN = 64
_RA_BUDGET = _MIN_IPV6_MTU - 40
_MAX_OPTIONS = 64

_ICMP = struct.Struct("!BBH")
# RFC 4861 §4.1 Router Solicitation: type code checksum reserved.
_RS = struct.Struct("!BBHI")
# §4.2 Router Advertisement: ... cur hop limit, M/O flags, router lifetime,
# reachable time, retrans timer.
_RA = struct.Struct("!BBHBBHII")
# §4.3/§4.4 Neighbour Solicitation/Advertisement: ... flags/reserved, target.
_NS = struct.Struct("!BBHI16s")
_OPTION = struct.Struct("!BB")
# §4.6.3 MTU: reserved, MTU.  §4.6.2 Prefix Information: prefix length, L/A flags,
# valid lifetime, preferred lifetime, reserved, prefix.
_MTU = struct.Struct("!HI")
_PREFIX = struct.Struct("!BBIII16s")
# RFC 8106 §5.1/§5.2 RDNSS and DNSSL: reserved, lifetime, then addresses or names.
_DNS_HEAD = struct.Struct("!HI")

_RA_MANAGED_OTHER = 0xC0
_PREFIX_ON_LINK_AUTONOMOUS = 0xC0
_NA_ROUTER = 0x80000000
_NA_SOLICITED = 0x40000000
_NA_OVERRIDE = 0x20000000


class IcmpType(enum.IntEnum):
    """ICMPv6 types of Neighbour Discovery (RFC 4861 §4)."""

    ROUTER_SOLICITATION = 133
    ROUTER_ADVERTISEMENT = 134
    NEIGHBOUR_SOLICITATION = 135
    NEIGHBOUR_ADVERTISEMENT = 136


class NdpOption(enum.IntEnum):
    """RFC 4861 §4.6; RFC 8106 §5."""

    SOURCE_LL_ADDRESS = 1
    TARGET_LL_ADDRESS = 2
    PREFIX_INFORMATION = 3
    MTU = 5
    RDNSS = 25
    DNSSL = 31


def handle_ndp(src_mac: bytes, packet: IpPacket, plan: AddressPlan,
               managed: bool = True) -> list[bytes]:
    """Answer one ICMPv6 message from the namespace; only solicitations get a reply.
    ``managed``: a DHCPv6 server answers (the M and O flags of our advertisements)."""
    if len(packet.l4) < _ICMP.size:
        raise MalformedFrame("truncated", "icmpv6 header")
    icmp_type, code, _checksum = _ICMP.unpack_from(packet.l4)
    handler = _HANDLERS.get(icmp_type)
    if handler is None:
        return []
    if packet.hop_limit != _HOP_LIMIT:
        raise MalformedFrame("bad-header", f"ndp hop limit {packet.hop_limit}")
    if code != 0:
        raise MalformedFrame("bad-header", f"ndp code {code}")
    return handler(src_mac, packet, plan, managed)


def _router_solicitation(src_mac: bytes, packet: IpPacket, plan: AddressPlan,
                         managed: bool) -> list[bytes]:
    # RFC 4861 §6.1.1 validation, §6.2.6 reply.
    source_ll = _check_options(packet, _RS.size)
    if packet.src == _UNSPECIFIED and source_ll:
        raise MalformedFrame("bad-option", "rs from :: with source link-layer option")
    if plan.addr6 is None:
        return []  # no IPv6 here: a default router without a prefix is a route to nowhere
    if packet.src == _UNSPECIFIED:
        return [build_router_advertisement(plan, managed=managed)]
    return [build_router_advertisement(plan, src_mac, packet.src, managed=managed)]


def _neighbour_solicitation(src_mac: bytes, packet: IpPacket, plan: AddressPlan,
                            _managed: bool) -> list[bytes]:
    # RFC 4861 §7.1.1 validation.
    source_ll = _check_options(packet, _NS.size)
    target = _NS.unpack_from(packet.l4)[4]
    if target[0] == 0xFF:
        raise MalformedFrame("bad-address", "ns for a multicast target")
    dad = packet.src == _UNSPECIFIED
    if dad and (source_ll or not packet.dst.startswith(_SOLICITED_NODE_PREFIX)):
        raise MalformedFrame("bad-message", "dad probe with link-layer option or wrong dst")
    # §7.2.3: never answer for the namespace's own address.
    if plan.is_ns_address(target):
        return []
    if dad:
        # RFC 4862 §5.4.3: a probe is for the prober's own address; defend only ours.
        if target not in (plan.our_ll6, plan.gw6):
            return []
        flags, dst, dst_mac = _NA_ROUTER | _NA_OVERRIDE, ALL_NODES, ALL_NODES_MAC
    else:
        flags, dst, dst_mac = _NA_ROUTER | _NA_SOLICITED | _NA_OVERRIDE, packet.src, src_mac
    log.debug("NDP: advertising %s to %s", target.hex(), dst.hex())
    message = _NS.pack(IcmpType.NEIGHBOUR_ADVERTISEMENT, 0, 0, flags, target)
    message += _option(NdpOption.TARGET_LL_ADDRESS, plan.our_mac)
    return [_icmp_frame(plan, dst_mac, target, dst, message)]


_HANDLERS: dict[int, Callable[[bytes, IpPacket, AddressPlan, bool], list[bytes]]] = {
    IcmpType.ROUTER_SOLICITATION: _router_solicitation,
    IcmpType.NEIGHBOUR_SOLICITATION: _neighbour_solicitation,
}


def _check_options(packet: IpPacket, fixed: int) -> bool:
    """Check the fixed part and every option; True if a source link-layer option is there."""
    if len(packet.l4) < fixed:
        raise MalformedFrame("truncated", "ndp message")
    options = iter_tlv(
        packet.l4[fixed:], _OPTION, what="ndp", unit=8, inclusive=True, max_count=_MAX_OPTIONS
    )
    kinds = [kind for kind, _ in options]  # walk them all: a bad one anywhere is fatal
    return NdpOption.SOURCE_LL_ADDRESS in kinds


def build_router_advertisement(
    plan: AddressPlan, dst_mac: bytes = ALL_NODES_MAC, dst: bytes = ALL_NODES,
    managed: bool = True,
) -> bytes:
    """A complete Router Advertisement frame (RFC 4861 §4.2, RFC 8106) from ``our_ll6``;
    M and O set only when a DHCPv6 server answers (``managed``): otherwise clients would
    solicit one for ever."""
    message = bytearray(
        _RA.pack(
            IcmpType.ROUTER_ADVERTISEMENT,
            0,
            0,
            _HOP_LIMIT,
            _RA_MANAGED_OTHER if managed else 0,
            _ROUTER_LIFETIME,
            0,
            0,
        )
    )
    message += _option(NdpOption.SOURCE_LL_ADDRESS, plan.our_mac)
    if plan.mtu >= _MIN_IPV6_MTU:
        message += _option(NdpOption.MTU, _MTU.pack(0, plan.mtu))
    if plan.addr6 is not None:
        message += _option(
            NdpOption.PREFIX_INFORMATION,
            _PREFIX.pack(
                _SLAAC_PREFIX_LEN,
                _PREFIX_ON_LINK_AUTONOMOUS,
                _INFINITE,
                _INFINITE,
                0,
                _prefix(plan.addr6, _SLAAC_PREFIX_LEN),
            ),
        )
    head = _DNS_HEAD.pack(0, _INFINITE)
    # Each option costs its 2-byte header and its head, and is padded to 8 bytes.
    room = _RA_BUDGET - len(message) - _OPTION.size - len(head)
    servers = plan.dns6[: max(room // 16, 0)]
    if servers:
        message += _option(NdpOption.RDNSS, head + b"".join(servers))
    room = (_RA_BUDGET - len(message) - _OPTION.size - len(head)) & ~7
    names = encode_names(plan.search, limit=max(room, 0))
    if names:
        message += _option(NdpOption.DNSSL, head + names)
    return _icmp_frame(plan, dst_mac, plan.our_ll6, dst, bytes(message))


def _option(kind: NdpOption, body: bytes) -> bytes:
    """An NDP option, zero-padded to a multiple of 8 bytes (§4.6)."""
    length = -(-(len(body) + _OPTION.size) // 8)
    return _OPTION.pack(kind, length) + body.ljust(length * 8 - _OPTION.size, b"\0")


def _prefix(address: bytes, length: int) -> bytes:
    mask = ((1 << 128) - 1) ^ ((1 << (128 - length)) - 1)
    return (int.from_bytes(address, "big") & mask).to_bytes(16, "big")


def _icmp_frame(plan: AddressPlan, dst_mac: bytes, src: bytes, dst: bytes, message: bytes) -> bytes:
    checked = bytearray(message)
    struct.pack_into("!H", checked, 2, l4_checksum(src, dst, IPPROTO_ICMPV6, checked))
    return build_ip_frame(
        dst_mac, plan.our_mac, src, dst, IPPROTO_ICMPV6, bytes(checked), hop_limit=_HOP_LIMIT
    )
