"""Just enough DNS (RFC 1035) for the forwarding tests: queries, answers, and a responder.

Written out by hand (no dnslib) so that the test's resolver and server share no code
with anything they test; `dig` in the container is the independent client.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

__all__ = ["CLASS_IN", "TYPE_A", "TYPE_AAAA", "answer", "parse_response", "query"]

TYPE_A, TYPE_AAAA = 1, 28
CLASS_IN = 1
RCODE_NXDOMAIN = 3
_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_RR_TAIL = struct.Struct("!HHIH")
_FLAG_QR, _FLAG_AA, _FLAG_RD, _FLAG_RA = 0x8000, 0x0400, 0x0100, 0x0080
_POINTER_TO_QUESTION = b"\xc0\x0c"
_TTL = 60

Records = Mapping[tuple[str, int], bytes]
"""(lower-case name without the final dot, type) -> rdata."""


def _encode_name(name: str) -> bytes:
    labels = [label.encode() for label in name.rstrip(".").split(".")]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def _skip_name(message: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` (following compression pointers) and the offset after it."""
    labels: list[str] = []
    end = None
    for _ in range(128):  # bounded: a pointer loop must not hang the test
        length = message[offset]
        if length & 0xC0 == 0xC0:
            end = offset + 2 if end is None else end
            offset = int.from_bytes(message[offset : offset + 2], "big") & 0x3FFF
            continue
        if length == 0:
            return ".".join(labels), offset + 1 if end is None else end
        labels.append(message[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    raise ValueError("name too long or looping")


def query(ident: int, name: str, qtype: int) -> bytes:
    """A recursive query for one name."""
    return (_HEADER.pack(ident, _FLAG_RD, 1, 0, 0, 0) + _encode_name(name)
            + _QUESTION_TAIL.pack(qtype, CLASS_IN))


def answer(request: bytes, records: Records) -> bytes:
    """The authoritative answer to ``request``: one record, or NXDOMAIN."""
    ident, flags, _qd, _an, _ns, _ar = _HEADER.unpack_from(request)
    name, end = _skip_name(request, _HEADER.size)
    qtype, _qclass = _QUESTION_TAIL.unpack_from(request, end)
    question = request[_HEADER.size : end + _QUESTION_TAIL.size]
    rdata = records.get((name.lower(), qtype))
    reply_flags = _FLAG_QR | _FLAG_AA | _FLAG_RA | (flags & _FLAG_RD)
    if rdata is None:
        return _HEADER.pack(ident, reply_flags | RCODE_NXDOMAIN, 1, 0, 0, 0) + question
    record = _POINTER_TO_QUESTION + _RR_TAIL.pack(qtype, CLASS_IN, _TTL, len(rdata)) + rdata
    return _HEADER.pack(ident, reply_flags, 1, 1, 0, 0) + question + record


def parse_response(message: bytes) -> tuple[int, int, list[bytes]]:
    """(id, rcode, rdata of every answer record) of a response."""
    ident, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(message)
    offset = _HEADER.size
    for _ in range(qdcount):
        offset = _skip_name(message, offset)[1] + _QUESTION_TAIL.size
    rdatas = []
    for _ in range(ancount):
        offset = _skip_name(message, offset)[1]
        _type, _class, _ttl, length = _RR_TAIL.unpack_from(message, offset)
        offset += _RR_TAIL.size
        rdatas.append(message[offset : offset + length])
        offset += length
    return ident, flags & 0x000F, rdatas
