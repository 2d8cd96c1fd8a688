"""Ethernet, ARP, IPv4, IPv6 and UDP: parse what the namespace sends, build what it gets.

Parsing takes a ``memoryview`` of one Ethernet frame and decodes only what dispatch
needs; payloads stay views into the caller's buffer (no copies). Every length is
checked against the bytes actually present before it is used; anything that does not
add up raises :class:`MalformedFrame`, which the engine turns into a dropped frame and
a counter (never an exception leaving the engine).

Frames we build begin with a :data:`VNET_HDR_LEN`-byte virtio-net header slot. The tap
backend writes the slot as is (the tap is opened with ``IFF_VNET_HDR``); the passt
backend skips it. An all-zero header means "checksums complete, no segmentation", which
is what every builder here produces.

Addresses are packed ``bytes`` (4 or 16 long) throughout the core: cheap to compare,
hash and copy into headers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import attrs

from pasta_net.core.checksum import checksum, fold, pseudo_header_sum, sum16

__all__ = [
    "ETH_HLEN",
    "ETH_P_ARP",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "VNET_HDR_LEN",
    "ArpPacket",
    "IpPacket",
    "MalformedFrame",
    "UdpDatagram",
    "build_arp",
    "build_frame",
    "build_ip",
    "build_ip_frame",
    "build_udp",
    "forwardable",
    "iter_tlv",
    "l4_checksum",
    "parse_arp",
    "parse_ethernet",
    "parse_ip",
    "parse_udp",
]

VNET_HDR_LEN = 12
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
BROADCAST_MAC = b"\xff" * 6

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_EXT = struct.Struct("!BB")
_VNET_ZERO = bytes(VNET_HDR_LEN)
_ZERO80 = bytes(10)

# IPv6 extension headers we step over to find the upper layer (RFC 8200 §4).
# Fragments (44) are not reassembled, like pasta: such packets are dropped.
_IPV6_SKIPPABLE = frozenset({0, 43, 60})
_IPV6_FRAGMENT = 44
_IPV6_MAX_EXT = 8


class MalformedFrame(ValueError):
    """The namespace sent something we cannot or will not parse; the frame is dropped.

    ``reason`` is a short, stable token used for drop counters ("truncated", "fragment"…).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@attrs.frozen(slots=True)
class ArpPacket:
    """An ARP message for IPv4 over Ethernet (RFC 826)."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


@attrs.define(slots=True)  # not frozen: per-frame cost (core/actions.py)
class IpPacket:
    """An IPv4 or IPv6 packet, decoded as far as dispatch needs."""

    version: int
    src: bytes
    dst: bytes
    proto: int
    """Upper-layer protocol (IPv6: after skipping extension headers)."""
    hop_limit: int
    l4: memoryview
    """Upper-layer header and payload, bounded by the IP length fields."""


@attrs.define(slots=True)  # not frozen: per-frame cost (core/actions.py)
class UdpDatagram:
    sport: int
    dport: int
    payload: memoryview


def parse_ethernet(frame: memoryview) -> tuple[bytes, bytes, int, memoryview]:
    """Return ``(dst_mac, src_mac, ethertype, payload)``; VLAN tags are not supported."""
    if len(frame) < ETH_HLEN:
        raise MalformedFrame("truncated", "ethernet header")
    dst, src, ethertype = _ETH.unpack_from(frame)
    return dst, src, ethertype, frame[ETH_HLEN:]


def parse_arp(payload: memoryview) -> ArpPacket:
    if len(payload) < _ARP.size:
        raise MalformedFrame("truncated", "arp")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(payload)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        raise MalformedFrame("unsupported", "arp hardware/protocol type")
    return ArpPacket(op, sha, spa, tha, tpa)


def parse_ip(ethertype: int, payload: memoryview) -> IpPacket:
    """Parse the IPv4 or IPv6 header at the start of ``payload``."""
    if ethertype == ETH_P_IP:
        return _parse_ipv4(payload)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(payload)
    raise MalformedFrame("unsupported", f"ethertype {ethertype:#06x}")


def _parse_ipv4(payload: memoryview) -> IpPacket:
    # RFC 791 §3.1
    if len(payload) < _IPV4.size:
        raise MalformedFrame("truncated", "ipv4 header")
    ver_ihl, _tos, total, _ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(payload)
    if ver_ihl >> 4 != 4:
        raise MalformedFrame("bad-header", "ipv4 version")
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < _IPV4.size or total < ihl:
        raise MalformedFrame("bad-header", "ipv4 header length")
    if total > len(payload):
        # A GSO super-frame from the tap may carry tot_len 0 when larger than 64 KiB;
        # we never enable that (no BIG TCP), so a short frame is simply truncated.
        raise MalformedFrame("truncated", "ipv4 total length")
    if frag & 0x3FFF:
        raise MalformedFrame("fragment", "ipv4")
    return IpPacket(4, src, dst, proto, ttl, payload[ihl:total])


def _parse_ipv6(payload: memoryview) -> IpPacket:
    # RFC 8200 §3
    if len(payload) < _IPV6.size:
        raise MalformedFrame("truncated", "ipv6 header")
    vtf, plen, next_header, hop, src, dst = _IPV6.unpack_from(payload)
    if vtf >> 28 != 6:
        raise MalformedFrame("bad-header", "ipv6 version")
    end = _IPV6.size + plen
    if end > len(payload):
        raise MalformedFrame("truncated", "ipv6 payload length")
    offset = _IPV6.size
    for _ in range(_IPV6_MAX_EXT):
        if next_header not in _IPV6_SKIPPABLE:
            break
        if offset + 8 > end:
            raise MalformedFrame("truncated", "ipv6 extension header")
        next_header, ext_len = _EXT.unpack_from(payload, offset)
        offset += (ext_len + 1) * 8
        if offset > end:
            raise MalformedFrame("truncated", "ipv6 extension header")
    else:
        raise MalformedFrame("bad-header", "ipv6 extension header chain too long")
    if next_header == _IPV6_FRAGMENT:
        raise MalformedFrame("fragment", "ipv6")
    return IpPacket(6, src, dst, next_header, hop, payload[offset:end])


def parse_udp(l4: memoryview) -> UdpDatagram:
    # RFC 768
    if len(l4) < _UDP.size:
        raise MalformedFrame("truncated", "udp header")
    sport, dport, length, _csum = _UDP.unpack_from(l4)
    if length < _UDP.size or length > len(l4):
        raise MalformedFrame("bad-header", "udp length")
    return UdpDatagram(sport, dport, l4[_UDP.size : length])


def forwardable(addr: bytes) -> bool:
    """Whether a flow from the namespace may name ``addr`` as an endpoint on the host.

    Not unspecified, loopback, multicast or broadcast (passt's ``inany_is_unicast``, plus
    loopback): a socket connected to ``0.0.0.0``, ``127.x``, ``::``, ``::1`` or an
    IPv4-mapped ``::ffff:127.x`` reaches the host's own loopback services, which only the
    explicit mappings (``--map-host-loopback``, the gateway unless ``--no-map-gw``) may
    offer. IPv4 ``0/8``, ``127/8`` and ``224/3``; IPv6 ``::/80`` (unspecified, loopback,
    compatible, mapped) and ``ff00::/8``.
    """
    if len(addr) == 4:
        return addr[0] not in (0, 127) and addr[0] < 224
    return addr[0] != 0xFF and addr[:10] != _ZERO80


def l4_checksum(src: bytes, dst: bytes, proto: int, l4: bytes | bytearray | memoryview) -> int:
    """Checksum of a TCP, UDP or ICMPv6 message over the pseudo-header, field zeroed."""
    return fold(pseudo_header_sum(src, dst, proto, len(l4)) + sum16(l4))


def build_frame(dst_mac: bytes, src_mac: bytes, ethertype: int, payload: bytes) -> bytes:
    """A complete outgoing frame: an all-zero virtio-net header slot, Ethernet, payload."""
    return _VNET_ZERO + _ETH.pack(dst_mac, src_mac, ethertype) + payload


def build_ip(src: bytes, dst: bytes, proto: int, l4: bytes, hop_limit: int = 64) -> bytes:
    """An IPv4 (4-byte addresses) or IPv6 packet carrying ``l4`` (checksummed already)."""
    if len(src) == 4:
        header = bytearray(
            _IPV4.pack(0x45, 0, _IPV4.size + len(l4), 0, 0x4000, hop_limit, proto, 0, src, dst)
        )
        struct.pack_into("!H", header, 10, checksum(header))
        return bytes(header) + l4
    return _IPV6.pack(6 << 28, len(l4), proto, hop_limit, src, dst) + l4


def build_ip_frame(
    dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int, l4: bytes,
    hop_limit: int = 64,
) -> bytes:
    """Ethernet + IP around an upper-layer message whose checksum is already set."""
    ethertype = ETH_P_IP if len(src) == 4 else ETH_P_IPV6
    return build_frame(dst_mac, src_mac, ethertype, build_ip(src, dst, proto, l4, hop_limit))


def build_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header and payload with its checksum (0 is sent as 0xFFFF, RFC 768)."""
    datagram = bytearray(_UDP.pack(sport, dport, _UDP.size + len(payload), 0))
    datagram += payload
    struct.pack_into("!H", datagram, 6, l4_checksum(src, dst, IPPROTO_UDP, datagram) or 0xFFFF)
    return bytes(datagram)


def build_arp(op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes,
              target_ip: bytes) -> bytes:
    return _ARP.pack(1, ETH_P_IP, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip)


def iter_tlv(
    data: memoryview,
    header: struct.Struct,
    *,
    what: str,
    unit: int = 1,
    inclusive: bool = False,
    pad: int | None = None,
    end: int | None = None,
    max_count: int = 256,
) -> Iterator[tuple[int, memoryview]]:
    """Walk type-length-value options, yielding ``(type, value)`` views: one bounded loop
    for DHCPv4, DHCPv6 and NDP options (and TCP's, whose layout is NDP's with pad/end).

    ``header`` unpacks ``(type, length)``. The length counts ``unit``-byte units and,
    when ``inclusive``, the header itself (NDP). ``pad`` names a one-byte option with no
    length (DHCPv4 0); ``end`` stops the walk (DHCPv4 255). An option running past the
    data, an inclusive length shorter than the header (a loop that never advances) and
    more than ``max_count`` options raise :class:`MalformedFrame`; ``what`` names the
    message in the detail. Every pass advances by at least one byte, so the walk is
    bounded by ``len(data)``.
    """
    size = len(data)
    offset = count = 0
    while offset < size:
        first = data[offset]
        if first == pad:
            offset += 1
            continue
        if first == end:
            return
        if offset + header.size > size:
            raise MalformedFrame("truncated", f"{what} option header")
        kind, length = header.unpack_from(data, offset)
        start = offset + header.size
        stop = offset + length * unit if inclusive else start + length * unit
        if stop < start:
            raise MalformedFrame("bad-option", f"{what} option {kind} length {length}")
        if stop > size:
            raise MalformedFrame("truncated", f"{what} option {kind}")
        count += 1
        if count > max_count:
            raise MalformedFrame("bad-option", f"more than {max_count} {what} options")
        yield kind, data[start:stop]
        offset = stop
