"""ICMP and ICMPv6 echo through the host's unprivileged ping sockets.

Theory of operation: an echo request from the namespace opens (or reuses) a flow keyed
by (family, namespace address, peer, echo id). The shell holds one ping socket per flow
(``SOCK_DGRAM``/``IPPROTO_ICMP[V6]``, allowed by ``net.ipv4.ping_group_range``). The
kernel rewrites the echo id to the socket's own identifier and computes the checksum,
so requests are passed on as they are; replies come back carrying the socket's id and
we put the namespace's id back before building the frame. Flows expire after
:data:`ECHO_TIMEOUT` seconds without a request, which closes their socket.
"""

from __future__ import annotations

import struct

import attrs

from pasta_net.core.checksum import checksum
from pasta_net.core.frames import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IpPacket,
    MalformedFrame,
    build_ip_frame,
    l4_checksum,
)

__all__ = ["ECHO_TIMEOUT", "EchoRequest", "PingFlow", "echo_reply_frame", "parse_echo_request"]

ECHO_TIMEOUT = 60.0
"""Idle seconds before a ping flow and its socket go away (pasta uses 60 s too)."""

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

_ECHO = struct.Struct("!BBHHH")
_REQUEST_TYPE = {4: ICMP_ECHO_REQUEST, 6: ICMPV6_ECHO_REQUEST}
_REPLY_TYPE = {4: ICMP_ECHO_REPLY, 6: ICMPV6_ECHO_REPLY}


@attrs.frozen(slots=True)
class EchoRequest:
    ident: int
    message: memoryview
    """The whole ICMP message, to be sent on the ping socket as it is."""


@attrs.define(eq=False, slots=True)
class PingFlow:
    flow: int
    version: int
    ns_addr: bytes
    peer: bytes
    ident: int
    last_used: float


def parse_echo_request(packet: IpPacket) -> EchoRequest | None:
    """The echo request in ``packet``, or None for any other ICMP message type."""
    if len(packet.l4) < _ECHO.size:
        raise MalformedFrame("truncated", "icmp echo")
    icmp_type, _code, _csum, ident, _seq = _ECHO.unpack_from(packet.l4)
    if icmp_type != _REQUEST_TYPE[packet.version]:
        return None
    return EchoRequest(ident, packet.l4)


def echo_reply_frame(flow: PingFlow, reply: bytes, dst_mac: bytes, src_mac: bytes) -> bytes | None:
    """Turn a reply read from the ping socket into a frame for the namespace.

    Returns None when the socket handed us something that is not an echo reply.
    """
    if len(reply) < _ECHO.size or reply[0] != _REPLY_TYPE[flow.version]:
        return None
    message = bytearray(reply)
    struct.pack_into("!HH", message, 2, 0, flow.ident)
    if flow.version == 4:
        struct.pack_into("!H", message, 2, checksum(message))
        proto = IPPROTO_ICMP
    else:
        struct.pack_into(
            "!H", message, 2, l4_checksum(flow.peer, flow.ns_addr, IPPROTO_ICMPV6, message)
        )
        proto = IPPROTO_ICMPV6
    return build_ip_frame(dst_mac, src_mac, flow.peer, flow.ns_addr, proto, bytes(message))
