"""Domain names in RFC 1035 wire format, for the options that carry them.

Theory of operation — the rules this file keeps:

* A name is a sequence of labels, each one length byte and 1–63 bytes, ended by the
  root label (a zero byte); the whole encoding is at most 255 bytes (RFC 1035 §2.3.4,
  §3.1). Non-ASCII labels go through IDNA so a name is always plain bytes on the wire.
* Lists of names are concatenated encodings. DHCPv4 option 119 may compress them with
  pointers into the list itself (RFC 3397 §2, RFC 1035 §4.1.4); DHCPv6 option 24
  (RFC 3646 §4, RFC 8415 §10) and the NDP DNSSL option (RFC 8106 §5.2) must not, so
  compression is a flag.
* Names come from our own configuration, not from the namespace, so a bad one is the
  caller's mistake: it raises :class:`ValueError`, never :class:`MalformedFrame`.
* Lists are cut to a byte budget on a name boundary: the options that carry them have
  a size limit, and a shorter search list is better than an unparsable option.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MAX_NAME_LEN", "encode_name", "encode_names", "is_domain_name"]

MAX_NAME_LEN = 255
_MAX_LABEL_LEN = 63
_POINTER = 0xC000
_MAX_POINTER_OFFSET = 0x3FFF


def _labels(name: str) -> tuple[bytes, ...]:
    """Split ``name`` (a trailing dot is allowed) into encoded labels, checking lengths."""
    stripped = name.removesuffix(".")
    if not stripped:
        raise ValueError(f"empty domain name {name!r}")
    labels = tuple(
        label.encode("ascii") if label.isascii() else label.encode("idna")
        for label in stripped.split(".")
    )
    if any(not 0 < len(label) <= _MAX_LABEL_LEN for label in labels):
        raise ValueError(f"bad label length in domain name {name!r}")
    if sum(len(label) + 1 for label in labels) + 1 > MAX_NAME_LEN:
        raise ValueError(f"domain name {name!r} longer than {MAX_NAME_LEN} bytes")
    return labels


def is_domain_name(name: str) -> bool:
    """Whether ``name`` can be sent as a domain name: labels of 1 to 63 bytes, at most
    255 bytes in all. Not the root alone: systemd-resolved writes ``search .`` when it
    has no search domain, which means "none", and no DHCP option can carry it."""
    try:
        _labels(name)
    except (ValueError, UnicodeError):
        return False
    return True


def encode_name(name: str) -> bytes:
    """``name`` in uncompressed wire format (RFC 1035 §3.1), root label included."""
    return b"".join(bytes((len(label),)) + label for label in _labels(name)) + b"\0"


def encode_names(names: Iterable[str], *, compress: bool = False, limit: int = 0xFFFF) -> bytes:
    """A list of names, optionally compressed (RFC 1035 §4.1.4), at most ``limit`` bytes.

    With ``compress``, every name whose tail was already written ends in a pointer to
    it; offsets count from the start of the list (RFC 3397 §2). Names that would push
    the list past ``limit`` are left out, whole.
    """
    out = bytearray()
    seen: dict[tuple[bytes, ...], int] = {}
    for name in names:
        labels = _labels(name)
        encoded = bytearray()
        new_suffixes: list[tuple[tuple[bytes, ...], int]] = []
        for index in range(len(labels)):
            suffix = tuple(label.lower() for label in labels[index:])
            if compress and suffix in seen:
                encoded += (_POINTER | seen[suffix]).to_bytes(2, "big")
                break
            new_suffixes.append((suffix, len(out) + len(encoded)))
            encoded += bytes((len(labels[index]),)) + labels[index]
        else:
            encoded += b"\0"
        if len(out) + len(encoded) > limit:
            continue
        seen.update((s, off) for s, off in new_suffixes if off <= _MAX_POINTER_OFFSET)
        out += encoded
    return bytes(out)
