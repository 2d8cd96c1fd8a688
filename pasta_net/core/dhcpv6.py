"""DHCPv6 server for the namespace (RFC 8415): one address, DNS servers, search domains.

Theory of operation — the rules this file keeps:

* **Stateless, like the DHCPv4 server.** Every reply is a function of the request and
  the plan: the namespace gets ``plan.addr6`` with infinite lifetimes and T1/T2 (it
  never needs to renew). Our DUID is a DUID-LL of ``our_mac`` (RFC 8415 §11.4), so it
  is the same after a restart.
* **Validation is a table** (RFC 8415 §16): for each client message type, whether the
  Client ID is required and whether a Server ID is required, forbidden or optional. A
  message that breaks its row is malformed; a Server ID that is not ours means the
  message is for another server, and gets nothing.
* **Answers** (RFC 8415 §18.3): SOLICIT → ADVERTISE with preference 255, or REPLY when
  it carries Rapid Commit (§18.3.1); REQUEST, RENEW, REBIND → REPLY with the IAs;
  CONFIRM → REPLY with Success or NotOnLink and no IAs, or nothing when it lists no
  address (§18.3.3); RELEASE, DECLINE → REPLY with Success (§18.3.7, §18.3.8);
  INFORMATION-REQUEST → REPLY with configuration only (§18.3.6). Server-to-client
  types coming from the namespace are malformed; relay messages (there is no relay on
  our link) and unknown types get nothing.
* **IAs** (§21.4): the first IA_NA gets ``plan.addr6``; other IA_NAs, and all of them
  without an address, carry status NoAddrsAvail. Addresses the client lists that are
  not ours come back with lifetimes 0 (§18.3.4), so a lease from an earlier plan goes
  away at once. IA_TA and IA_PD are not served: each comes back with status
  NoAddrsAvail or NoPrefixAvail (§21.5, §21.21), without which clients that ask only
  for a prefix (odhcp6c, systemd-networkd) wait for one for ever.
* **Configuration** goes in every reply, requested or not: DNS servers (option 23,
  RFC 3646), the domain list (24, uncompressed, RFC 8415 §10) and the FQDN (39,
  RFC 4704).
* **Bounds.** At most :data:`MAX_MESSAGE_LEN` bytes, at most 64 options per level,
  options inside an IA_NA walked one level deep; every option walk goes through
  :func:`frames.iter_tlv`.
* **Addressing.** From ``our_ll6`` port 547 to the client's source address port 546,
  at the MAC that sent the request.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable, Iterable

import attrs

from pasta_net.core.dnsname import encode_name, encode_names
from pasta_net.core.frames import (
    IPPROTO_UDP,
    IpPacket,
    MalformedFrame,
    UdpDatagram,
    build_ip_frame,
    build_udp,
    iter_tlv,
)
from pasta_net.core.plan import AddressPlan

__all__ = [
    "CLIENT_PORT",
    "MAX_MESSAGE_LEN",
    "SERVER_PORT",
    "Dhcpv6Message",
    "IaNa",
    "MessageType",
    "Option",
    "StatusCode",
    "handle_dhcpv6",
    "parse_message",
    "server_duid",
]

log = logging.getLogger(__name__)

SERVER_PORT = 547
CLIENT_PORT = 546
MAX_MESSAGE_LEN = 4096
"""Longer messages are hostile: real clients send a few hundred bytes."""

_MAX_OPTIONS = 64
_MIN_DUID_LEN = 3
_MAX_DUID_LEN = 130
_INFINITE = 0xFFFFFFFF
_PREFERENCE_MAX = b"\xff"
_MAX_DOMAIN_LIST = 1024
# RFC 4704 §4.1: N set — this server performs no DNS updates.
_FQDN_FLAG_N = b"\x04"
# RFC 8415 §11.4: DUID-LL, hardware type 1 (Ethernet).
_DUID_LL_ETHERNET = b"\x00\x03\x00\x01"

_HEADER = struct.Struct("!B3s")
_OPTION = struct.Struct("!HH")
_IA_NA = struct.Struct("!4sII")
_IA_ADDRESS = struct.Struct("!16sII")
_STATUS = struct.Struct("!H")


class MessageType(enum.IntEnum):
    """RFC 8415 §7.3."""

    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13


_SERVER_TYPES = frozenset(
    {MessageType.ADVERTISE, MessageType.REPLY, MessageType.RECONFIGURE, MessageType.RELAY_REPL}
)


class Option(enum.IntEnum):
    """The option codes we read or write (RFC 8415 §21 unless noted)."""

    CLIENT_ID = 1
    SERVER_ID = 2
    IA_NA = 3
    IA_TA = 4
    IA_ADDRESS = 5
    PREFERENCE = 7
    STATUS_CODE = 13
    RAPID_COMMIT = 14
    DNS_SERVERS = 23
    """RFC 3646."""
    DOMAIN_LIST = 24
    """RFC 3646."""
    FQDN = 39
    """RFC 4704."""
    IA_PD = 25


class StatusCode(enum.IntEnum):
    """RFC 8415 §21.13."""

    SUCCESS = 0
    NO_ADDRS_AVAIL = 2
    NOT_ON_LINK = 4
    NO_PREFIX_AVAIL = 6


@attrs.frozen
class IaNa:
    """An Identity Association for Non-temporary Addresses from a client (§21.4)."""

    iaid: bytes
    addresses: tuple[bytes, ...]
    """The IA Address options inside it (§21.6): the client's hints or its lease."""


@attrs.frozen
class Dhcpv6Message:
    """A client message, decoded as far as the server needs (RFC 8415 §8)."""

    msg_type: int
    transaction_id: bytes
    client_id: bytes | None
    server_id: bytes | None
    ia_na: tuple[IaNa, ...]
    rapid_commit: bool
    ia_ta: tuple[bytes, ...] = ()
    """IAIDs of its IA_TA options."""
    ia_pd: tuple[bytes, ...] = ()
    """IAIDs of its IA_PD options."""


def server_duid(plan: AddressPlan) -> bytes:
    """Our DUID: DUID-LL of ``our_mac`` (RFC 8415 §11.4)."""
    return _DUID_LL_ETHERNET + plan.our_mac


def parse_message(message: memoryview) -> Dhcpv6Message:
    """Decode a client message (not a relay message), or raise :class:`MalformedFrame`."""
    if len(message) < _HEADER.size:
        raise MalformedFrame("truncated", "dhcpv6 header")
    if len(message) > MAX_MESSAGE_LEN:
        raise MalformedFrame("oversized", f"dhcpv6 message of {len(message)} bytes")
    msg_type, transaction_id = _HEADER.unpack_from(message)
    client_id = server_id = None
    ia_na: list[IaNa] = []
    ia_ta: list[bytes] = []
    ia_pd: list[bytes] = []
    rapid_commit = False
    for code, value in _options(message[_HEADER.size :]):
        match code:
            case Option.CLIENT_ID:
                client_id = _duid(client_id, value, "client")
            case Option.SERVER_ID:
                server_id = _duid(server_id, value, "server")
            case Option.IA_NA:
                ia_na.append(_parse_ia_na(value))
            case Option.IA_TA:
                ia_ta.append(_iaid(value, 4, "IA_TA"))
            case Option.IA_PD:
                ia_pd.append(_iaid(value, _IA_NA.size, "IA_PD"))  # IAID, T1, T2 as IA_NA
            case Option.RAPID_COMMIT:
                rapid_commit = True
    return Dhcpv6Message(msg_type, transaction_id, client_id, server_id, tuple(ia_na),
                         rapid_commit, tuple(ia_ta), tuple(ia_pd))


def _iaid(value: memoryview, size: int, what: str) -> bytes:
    if len(value) < size:
        raise MalformedFrame("truncated", f"dhcpv6 {what}")
    return bytes(value[:4])


def _options(data: memoryview) -> Iterable[tuple[int, memoryview]]:
    return iter_tlv(data, _OPTION, what="dhcpv6", max_count=_MAX_OPTIONS)


def _duid(previous: bytes | None, value: memoryview, whose: str) -> bytes:
    """A Client or Server ID: present once, a DUID of sane length (§11.1)."""
    if previous is not None:
        raise MalformedFrame("bad-option", f"dhcpv6 {whose} id repeated")
    if not _MIN_DUID_LEN <= len(value) <= _MAX_DUID_LEN:
        raise MalformedFrame("bad-option", f"dhcpv6 {whose} id length {len(value)}")
    return bytes(value)


def _parse_ia_na(value: memoryview) -> IaNa:
    # RFC 8415 §21.4: IAID, T1, T2, then IA options.
    if len(value) < _IA_NA.size:
        raise MalformedFrame("truncated", "dhcpv6 IA_NA")
    iaid = bytes(value[:4])
    addresses = []
    for code, inner in _options(value[_IA_NA.size :]):
        if code == Option.IA_ADDRESS:
            # RFC 8415 §21.6: address, preferred and valid lifetimes, then options.
            if len(inner) < _IA_ADDRESS.size:
                raise MalformedFrame("truncated", "dhcpv6 IA Address")
            addresses.append(bytes(inner[:16]))
    return IaNa(iaid, tuple(addresses))


def handle_dhcpv6(
    src_mac: bytes, packet: IpPacket, udp: UdpDatagram, plan: AddressPlan
) -> list[bytes]:
    """Answer one DHCPv6 message sent by the namespace to port 547.

    Returns the reply frames (none or one), addressed to the sender's IP and MAC.
    """
    if len(udp.payload) < _HEADER.size:
        raise MalformedFrame("truncated", "dhcpv6 header")
    msg_type = udp.payload[0]
    if msg_type in _SERVER_TYPES:
        raise MalformedFrame("bad-message", f"dhcpv6 message type {msg_type} from client")
    rule = _RULES.get(msg_type)
    if rule is None:
        log.debug("DHCPv6: no reply to message type %d", msg_type)
        return []
    if packet.src == bytes(16) or packet.src[0] == 0xFF:
        raise MalformedFrame("bad-address", "dhcpv6 client source address")
    request = parse_message(udp.payload)
    if not rule.accepts(request, server_duid(plan)):
        log.debug("DHCPv6: message type %d is for another server", msg_type)
        return []
    answer = rule.respond(request, plan)
    if answer is None:
        return []
    reply_type, body = answer
    log.debug("DHCPv6: %s to %s", reply_type.name, src_mac.hex(":"))
    options = [(Option.SERVER_ID, server_duid(plan))]
    if request.client_id is not None:
        options.append((Option.CLIENT_ID, request.client_id))
    message = _HEADER.pack(reply_type, request.transaction_id) + _encode(
        [*options, *body, *_configuration(plan)]
    )
    datagram = build_udp(plan.our_ll6, packet.src, SERVER_PORT, CLIENT_PORT, message)
    return [build_ip_frame(src_mac, plan.our_mac, plan.our_ll6, packet.src, IPPROTO_UDP, datagram)]


_Body = list[tuple[int, bytes]]
_Responder = Callable[[Dhcpv6Message, AddressPlan], tuple[MessageType, _Body] | None]


class _Need(enum.Enum):
    REQUIRED = enum.auto()
    FORBIDDEN = enum.auto()
    OPTIONAL = enum.auto()


@attrs.frozen
class _Rule:
    """One row of the RFC 8415 §16 validation table, and who answers."""

    client_id_required: bool
    server_id: _Need
    respond: _Responder

    def accepts(self, request: Dhcpv6Message, duid: bytes) -> bool:
        """False when the message names another server; raise when it breaks the row."""
        if self.client_id_required and request.client_id is None:
            raise MalformedFrame("bad-message", f"dhcpv6 type {request.msg_type} without client id")
        if request.server_id is None:
            if self.server_id is _Need.REQUIRED:
                raise MalformedFrame(
                    "bad-message", f"dhcpv6 type {request.msg_type} without server id"
                )
            return True
        if self.server_id is _Need.FORBIDDEN:
            raise MalformedFrame("bad-message", f"dhcpv6 type {request.msg_type} with server id")
        return request.server_id == duid


def _solicit(request: Dhcpv6Message, plan: AddressPlan) -> tuple[MessageType, _Body]:
    # RFC 8415 §18.3.1; Rapid Commit §21.14: commit at once, answer with a REPLY.
    if request.rapid_commit:
        return MessageType.REPLY, [(Option.RAPID_COMMIT, b""), *_assign(request, plan)]
    # §21.8: preference 255 tells the client to stop collecting Advertises.
    return MessageType.ADVERTISE, [(Option.PREFERENCE, _PREFERENCE_MAX), *_assign(request, plan)]


def _commit(request: Dhcpv6Message, plan: AddressPlan) -> tuple[MessageType, _Body]:
    # RFC 8415 §18.3.2 (Request), §18.3.4 (Renew), §18.3.5 (Rebind).
    return MessageType.REPLY, _assign(request, plan)


def _confirm(request: Dhcpv6Message, plan: AddressPlan) -> tuple[MessageType, _Body] | None:
    # RFC 8415 §18.3.3: say whether the addresses still fit the link; no IAs.
    addresses = [address for ia in request.ia_na for address in ia.addresses]
    if not addresses:
        return None
    if all(_on_link(address, plan) for address in addresses):
        return MessageType.REPLY, [_status(StatusCode.SUCCESS, "addresses on link")]
    return MessageType.REPLY, [_status(StatusCode.NOT_ON_LINK, "addresses not on link")]


def _acknowledge(request: Dhcpv6Message, plan: AddressPlan) -> tuple[MessageType, _Body]:
    # RFC 8415 §18.3.7 (Release), §18.3.8 (Decline): nothing to undo, say Success.
    return MessageType.REPLY, [_status(StatusCode.SUCCESS, "")]


def _inform(request: Dhcpv6Message, plan: AddressPlan) -> tuple[MessageType, _Body]:
    # RFC 8415 §18.3.6: configuration only.
    return MessageType.REPLY, []


_RULES: dict[int, _Rule] = {
    MessageType.SOLICIT: _Rule(True, _Need.FORBIDDEN, _solicit),  # §16.2
    MessageType.REQUEST: _Rule(True, _Need.REQUIRED, _commit),  # §16.4
    MessageType.CONFIRM: _Rule(True, _Need.FORBIDDEN, _confirm),  # §16.5
    MessageType.RENEW: _Rule(True, _Need.REQUIRED, _commit),  # §16.6
    MessageType.REBIND: _Rule(True, _Need.FORBIDDEN, _commit),  # §16.7
    MessageType.DECLINE: _Rule(True, _Need.REQUIRED, _acknowledge),  # §16.8
    MessageType.RELEASE: _Rule(True, _Need.REQUIRED, _acknowledge),  # §16.9
    MessageType.INFORMATION_REQUEST: _Rule(False, _Need.OPTIONAL, _inform),  # §16.12
}


def _assign(request: Dhcpv6Message, plan: AddressPlan) -> _Body:
    """One IA option per IA the client sent (RFC 8415 §21.4): addresses in IA_NA only."""
    replies = []
    for index, ia in enumerate(request.ia_na):
        # §18.3.4: addresses that are not ours are returned with lifetimes 0.
        inner = [
            (Option.IA_ADDRESS, _IA_ADDRESS.pack(address, 0, 0))
            for address in ia.addresses
            if address != plan.addr6
        ]
        if index == 0 and plan.addr6 is not None:
            inner.insert(0, (Option.IA_ADDRESS, _IA_ADDRESS.pack(plan.addr6, _INFINITE, _INFINITE)))
            renew = _INFINITE
        else:
            inner.append(_status(StatusCode.NO_ADDRS_AVAIL, "one address per client"))
            renew = 0
        replies.append((Option.IA_NA, _IA_NA.pack(ia.iaid, renew, renew) + _encode(inner)))
    for iaid in request.ia_ta:
        replies.append((Option.IA_TA, iaid + _encode(
            [_status(StatusCode.NO_ADDRS_AVAIL, "no temporary addresses")])))
    for iaid in request.ia_pd:
        replies.append((Option.IA_PD, _IA_NA.pack(iaid, 0, 0) + _encode(
            [_status(StatusCode.NO_PREFIX_AVAIL, "no prefix delegation")])))
    return replies


def _configuration(plan: AddressPlan) -> _Body:
    options: _Body = []
    if plan.dns6:
        options.append((Option.DNS_SERVERS, b"".join(plan.dns6)))
    if plan.search:
        options.append((Option.DOMAIN_LIST, encode_names(plan.search, limit=_MAX_DOMAIN_LIST)))
    if plan.fqdn:
        options.append((Option.FQDN, _FQDN_FLAG_N + encode_name(plan.fqdn)))
    return options


def _on_link(address: bytes, plan: AddressPlan) -> bool:
    if plan.addr6 is None:
        return False
    differs = int.from_bytes(address, "big") ^ int.from_bytes(plan.addr6, "big")
    return differs >> (128 - plan.prefix6) == 0


def _status(code: StatusCode, message: str) -> tuple[int, bytes]:
    return Option.STATUS_CODE, _STATUS.pack(code) + message.encode()


def _encode(options: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(_OPTION.pack(code, len(value)) + value for code, value in options)
