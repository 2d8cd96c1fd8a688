"""TCP on the wire: segment parsing and per-connection frame templates.

Parsing decodes the fixed header always and the options only on SYN segments (MSS and
window scale are all we use; RFC 9293 §3.1, RFC 7323 §2). Building never starts from
scratch: each connection owns a :class:`FrameTemplate` whose virtio-net, Ethernet, IP
and TCP headers are filled once; a segment copies the template in front of its payload
and patches sequence numbers, flags, window, lengths and checksums with ``pack_into``.

Checksums: with offload (tap) the TCP checksum field carries the folded pseudo-header
sum and the virtio-net header says ``NEEDS_CSUM`` (csum_start/csum_offset point at the
field): the kernel completes it, and also cuts GSO super-frames into ``gso_size``
segments when it has to. Without offload (passt mode) the full sum is computed here.
Pseudo-header and IPv4-header sums are precomputed per connection: only the length
varies, so each frame costs an addition, not a pass over the header.
"""

from __future__ import annotations

import struct

import attrs

from pasta_net.core.checksum import fold, pseudo_header_sum, sum16
from pasta_net.core.frames import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_TCP,
    VNET_HDR_LEN,
    MalformedFrame,
)

__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "FrameTemplate",
    "Segment",
    "parse_segment",
]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_TCP = struct.Struct("!HHIIBBHHH")
_TCP_PATCH = struct.Struct("!IIBBH")  # seq, ack, data offset, flags, window
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_VNET_F_NEEDS_CSUM = 1
_GSO_TCPV4, _GSO_TCPV6 = 1, 4
_OPT_EOL, _OPT_NOP, _OPT_MSS, _OPT_WSCALE = 0, 1, 2, 3
TCP_HLEN = 20


@attrs.define(slots=True)  # not frozen: per-frame cost (core/actions.py)
class Segment:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: memoryview
    mss: int | None = None
    wscale: int | None = None


def parse_segment(l4: memoryview) -> Segment:
    """Decode a TCP segment; options are read only when SYN is set."""
    if len(l4) < TCP_HLEN:
        raise MalformedFrame("truncated", "tcp header")
    sport, dport, seq, ack, offset, flags, window, _csum, _urg = _TCP.unpack_from(l4)
    hlen = (offset >> 4) * 4
    if hlen < TCP_HLEN or hlen > len(l4):
        raise MalformedFrame("bad-header", "tcp data offset")
    if not flags & SYN:
        return Segment(sport, dport, seq, ack, flags, window, l4[hlen:])
    mss, wscale = _parse_syn_options(l4[TCP_HLEN:hlen])
    return Segment(sport, dport, seq, ack, flags, window, l4[hlen:], mss, wscale)


def _parse_syn_options(options: memoryview) -> tuple[int | None, int | None]:
    mss = wscale = None
    i, end = 0, len(options)
    while i < end:
        kind = options[i]
        if kind == _OPT_EOL:
            break
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= end or options[i + 1] < 2 or i + options[i + 1] > end:
            raise MalformedFrame("bad-header", "tcp option length")
        length = options[i + 1]
        if kind == _OPT_MSS and length == 4:
            mss = int.from_bytes(options[i + 2 : i + 4], "big")
        elif kind == _OPT_WSCALE and length == 3:
            wscale = min(options[i + 2], 14)  # RFC 7323 §2.3: larger values mean 14
        i += length
    return mss, wscale


class FrameTemplate:
    """Pre-built headers of one connection's frames towards the namespace."""

    __slots__ = (
        "_ip_base",
        "_pseudo_base",
        "_v4",
        "gso_type",
        "header",
        "hlen",
        "ip_off",
        "offload",
        "tcp_off",
    )

    def __init__(
        self,
        dst_mac: bytes,
        src_mac: bytes,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        offload: bool,
    ) -> None:
        self._v4 = len(src) == 4
        self.offload = offload
        self.ip_off = VNET_HDR_LEN + ETH_HLEN
        iphl = 20 if self._v4 else 40
        self.tcp_off = self.ip_off + iphl
        self.hlen = self.tcp_off + TCP_HLEN
        header = bytearray(self.hlen)
        ethertype = ETH_P_IP if self._v4 else ETH_P_IPV6
        struct.pack_into("!6s6sH", header, VNET_HDR_LEN, dst_mac, src_mac, ethertype)
        if self._v4:
            struct.pack_into(
                "!BBHHHBBH4s4s",
                header,
                self.ip_off,
                0x45,
                0,
                0,
                0,
                0x4000,
                64,
                IPPROTO_TCP,
                0,
                src,
                dst,
            )
            self._ip_base = sum16(header[self.ip_off : self.tcp_off])
            self.gso_type = _GSO_TCPV4
        else:
            struct.pack_into(
                "!IHBB16s16s", header, self.ip_off, 6 << 28, 0, IPPROTO_TCP, 64, src, dst
            )
            self._ip_base = 0
            self.gso_type = _GSO_TCPV6
        struct.pack_into("!HH", header, self.tcp_off, sport, dport)
        self._pseudo_base = pseudo_header_sum(src, dst, IPPROTO_TCP, 0)
        self.header = bytes(header)

    def fill(
        self,
        buf: bytearray | memoryview,
        payload_len: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        gso_size: int = 0,
        options: bytes = b"",
    ) -> int:
        """Write the headers for a segment whose payload already sits after them in ``buf``.

        ``options`` (SYN only) are placed between the header and the payload, which must
        then be empty. Returns the frame length (virtio-net header included).
        """
        hlen = self.hlen + len(options)
        tcp_len = TCP_HLEN + len(options) + payload_len
        buf[: self.hlen] = self.header
        if options:
            buf[self.hlen : hlen] = options
        ip_off, tcp_off = self.ip_off, self.tcp_off
        if self._v4:
            total = tcp_len + 20
            struct.pack_into("!H", buf, ip_off + 2, total)
            struct.pack_into("!H", buf, ip_off + 10, fold(self._ip_base + total))
        else:
            struct.pack_into("!H", buf, ip_off + 4, tcp_len)
        _TCP_PATCH.pack_into(
            buf, tcp_off + 4, seq, ack, (TCP_HLEN + len(options)) << 2, flags, window
        )
        pseudo = self._pseudo_base + tcp_len
        if self.offload:
            # Folded, not inverted: the kernel adds the segment and inverts (NEEDS_CSUM).
            struct.pack_into("!H", buf, tcp_off + 16, ~fold(pseudo) & 0xFFFF)
            gso = self.gso_type if gso_size and payload_len > gso_size else 0
            _VNET.pack_into(
                buf,
                0,
                _VNET_F_NEEDS_CSUM,
                gso,
                hlen - VNET_HDR_LEN,
                gso_size if gso else 0,
                tcp_off - VNET_HDR_LEN,
                16,
            )
        else:
            segment = buf[tcp_off : hlen + payload_len]
            struct.pack_into("!H", buf, tcp_off + 16, fold(pseudo + sum16(segment)))
        return hlen + payload_len
