"""DHCPv4 server for the namespace (RFC 2131; options RFC 2132).

Theory of operation — the rules this file keeps:

* **One client, one address, forever.** The namespace is alone on the link and gets
  ``plan.addr4`` with an infinite lease (0xFFFFFFFF). The server identifier and the
  source address of every reply is ``plan.gw4``, as in pasta. Without ``addr4`` and
  ``gw4`` the server is off and answers nothing.
* **No state.** Every reply is a function of the request and the plan alone, so
  retransmissions, reboots and restarts of pasta-net all get the same answer.
* **What gets an answer.** DISCOVER → OFFER. REQUEST → ACK, or NAK when the address
  it names (option 50 or ``ciaddr``) is not ours; a REQUEST for another server id gets
  nothing (the client chose someone else). INFORM → ACK without ``yiaddr`` or lease.
  RELEASE and DECLINE get nothing: the lease never ends and there is no other address
  to give. Relayed requests (``giaddr`` set: there is no relay on our link), plain
  BOOTP (no option 53) and unknown types get nothing; server-to-client types coming
  from the namespace are malformed.
* **Parsing is bounded.** At most :data:`MAX_MESSAGE_LEN` bytes; the fixed header is
  one ``Struct``; options are walked with :func:`frames.iter_tlv` in the options field
  and, when option 52 says so, the ``file`` then ``sname`` fields (RFC 2131 §4.1);
  repeated codes are concatenated (RFC 3396). Anything that does not add up raises
  :class:`MalformedFrame`.
* **Option order.** 53, 54, 61 (echoed, RFC 6842), 51 and 1 come first — the subnet
  mask must precede the router (RFC 2132 §3.3) — then what the client listed in its
  parameter request list (option 55) in its order, then the rest by code. Every
  configured option is sent, requested or not, as pasta does. A gateway outside the
  client's subnet (a /32 address) comes with option 121 routes to reach it.
* **Size.** Replies fit the client's maximum message size (option 57, else the 576
  bytes every client takes, RFC 2131 §2): the search list (option 119) is cut to the
  room left, on a name boundary; an option that still does not fit is left out. Long
  options are split (RFC 3396); messages are padded to the 300-byte BOOTP minimum
  (RFC 1542 §3.2.1).
* **Addressing** (RFC 2131 §4.1): NAK is broadcast; a client with ``ciaddr`` gets
  unicast there; the broadcast flag gets a broadcast (IP and MAC); otherwise unicast to
  ``yiaddr``. Unicast goes to ``chaddr``, the client's own MAC.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable

import attrs

from pasta_net.core.dnsname import encode_name, encode_names
from pasta_net.core.frames import (
    BROADCAST_MAC,
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
    "DhcpRequest",
    "MessageType",
    "Option",
    "handle_dhcp",
    "parse_request",
]

log = logging.getLogger(__name__)

SERVER_PORT = 67
CLIENT_PORT = 68
MAX_MESSAGE_LEN = 4096
"""Longer requests are hostile: real clients send a few hundred bytes."""

_MAGIC_COOKIE = b"\x63\x82\x53\x63"
_BOOTREQUEST = 1
_BOOTREPLY = 2
_HTYPE_ETHERNET = 1
_FLAG_BROADCAST = 0x8000
_INFINITE = 0xFFFFFFFF
_ZERO4 = bytes(4)
_BROADCAST4 = b"\xff" * 4
_MIN_MESSAGE_LEN = 300
_DEFAULT_MAX_SIZE = 576
_IP_UDP_HLEN = 28
_MIN_MTU = 68
_MAX_OPTION_LEN = 255

# RFC 2131 §2: op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr
# sname file, then the magic cookie that starts the options (RFC 2131 §3).
_HEADER = struct.Struct("!BBBB4sHH4s4s4s4s16s64s128s4s")
_SNAME = slice(44, 108)
_FILE = slice(108, 236)
_OPTION = struct.Struct("!BB")

# RFC 4702 §3.1 flags for our replies: E (canonical wire format) and N (this server
# performs no DNS updates); RCODE1/RCODE2 are 255 from a server (§2.2).
_FQDN_HEAD = bytes((0x0C, 255, 255))
_NAK_MESSAGE = b"requested address is not available on this link"


class MessageType(enum.IntEnum):
    """Option 53 values (RFC 2132 §9.6, RFC 3203)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8
    FORCERENEW = 9


_SERVER_TYPES = frozenset(
    {MessageType.OFFER, MessageType.ACK, MessageType.NAK, MessageType.FORCERENEW}
)


class Option(enum.IntEnum):
    """The option codes we read or write (RFC 2132 unless noted)."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    MTU = 26
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_LIST = 55
    MESSAGE = 56
    MAX_SIZE = 57
    CLIENT_ID = 61
    FQDN = 81
    """RFC 4702."""
    DOMAIN_SEARCH = 119
    """RFC 3397."""
    CLASSLESS_ROUTES = 121
    """RFC 3442."""
    END = 255


@attrs.frozen
class DhcpRequest:
    """A BOOTREQUEST, decoded as far as the server needs (RFC 2131 §2, §4.3)."""

    msg_type: int | None
    """Option 53; ``None`` for plain BOOTP."""
    xid: bytes
    flags: int
    ciaddr: bytes
    giaddr: bytes
    chaddr: bytes
    """The whole 16-byte field, echoed in replies; the MAC is its first 6 bytes."""
    requested_ip: bytes | None
    server_id: bytes | None
    parameters: tuple[int, ...]
    """Option 55, in the client's order."""
    max_size: int
    """Option 57 (at least 576, RFC 2132 §9.10), or 576."""
    client_id: bytes | None

    @property
    def mac(self) -> bytes:
        return self.chaddr[:6]


@attrs.frozen
class _Answer:
    """What a responder decided; :func:`_build_reply` turns it into a frame."""

    msg_type: MessageType
    yiaddr: bytes
    ciaddr: bytes
    lease: bool


def parse_request(message: memoryview) -> DhcpRequest:
    """Decode a DHCP message from a client, or raise :class:`MalformedFrame`."""
    if len(message) < _HEADER.size:
        raise MalformedFrame("truncated", "dhcp header")
    if len(message) > MAX_MESSAGE_LEN:
        raise MalformedFrame("oversized", f"dhcp message of {len(message)} bytes")
    (
        op,
        htype,
        hlen,
        _hops,
        xid,
        _secs,
        flags,
        ciaddr,
        _yiaddr,
        _siaddr,
        giaddr,
        chaddr,
        _sname,
        _file,
        cookie,
    ) = _HEADER.unpack_from(message)
    if op != _BOOTREQUEST:
        raise MalformedFrame("bad-message", f"dhcp op {op}")
    if htype != _HTYPE_ETHERNET or hlen != 6:
        raise MalformedFrame("unsupported", f"dhcp hardware type {htype}/{hlen}")
    if cookie != _MAGIC_COOKIE:
        raise MalformedFrame("bad-message", "dhcp magic cookie")
    options = _collect_options(message)
    msg_type = _fixed(options, Option.MESSAGE_TYPE, 1)
    max_size = _fixed(options, Option.MAX_SIZE, 2)
    return DhcpRequest(
        msg_type=msg_type[0] if msg_type is not None else None,
        xid=xid,
        flags=flags,
        ciaddr=ciaddr,
        giaddr=giaddr,
        chaddr=chaddr,
        requested_ip=_fixed(options, Option.REQUESTED_IP, 4),
        server_id=_fixed(options, Option.SERVER_ID, 4),
        parameters=tuple(options.get(Option.PARAMETER_LIST, b"")),
        max_size=max(int.from_bytes(max_size, "big"), _DEFAULT_MAX_SIZE)
        if max_size is not None
        else _DEFAULT_MAX_SIZE,
        client_id=bytes(options[Option.CLIENT_ID]) if Option.CLIENT_ID in options else None,
    )


def _collect_options(message: memoryview) -> dict[int, bytearray]:
    """Option values by code, concatenated across repeats and overloaded fields."""
    values: dict[int, bytearray] = {}

    def walk(area: memoryview) -> None:
        for code, value in iter_tlv(area, _OPTION, what="dhcp", pad=Option.PAD, end=Option.END):
            values.setdefault(code, bytearray()).extend(value)

    walk(message[_HEADER.size :])
    overload = values.get(Option.OVERLOAD)
    if overload is not None:
        # RFC 2132 §9.3: 1 = file, 2 = sname, 3 = both; RFC 2131 §4.1: file first.
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise MalformedFrame("bad-option", "dhcp option overload")
        if overload[0] & 1:
            walk(message[_FILE])
        if overload[0] & 2:
            walk(message[_SNAME])
    return values


def _fixed(options: dict[int, bytearray], code: Option, size: int) -> bytes | None:
    """The value of a fixed-size option, if present."""
    value = options.get(code)
    if value is None:
        return None
    if len(value) != size:
        raise MalformedFrame("bad-option", f"dhcp option {code} length {len(value)}")
    return bytes(value)


def handle_dhcp(
    src_mac: bytes, packet: IpPacket, udp: UdpDatagram, plan: AddressPlan
) -> list[bytes]:
    """Answer one DHCP message sent by the namespace to port 67.

    Returns the reply frames (none or one). ``src_mac`` and the IP addresses are not
    used: RFC 2131 addresses replies by ``chaddr``, ``ciaddr`` and the broadcast flag.
    """
    request = parse_request(udp.payload)
    if request.msg_type in _SERVER_TYPES:
        raise MalformedFrame("bad-message", f"dhcp message type {request.msg_type} from client")
    if plan.addr4 is None or plan.gw4 is None:
        log.debug("DHCP: no IPv4 address to give, ignoring")
        return []
    if request.giaddr != _ZERO4:
        log.debug("DHCP: ignoring relayed request (giaddr set)")
        return []
    respond = _RESPONDERS.get(request.msg_type)
    answer = respond(request, plan) if respond is not None else None
    if answer is None:
        log.debug("DHCP: no reply to message type %s", request.msg_type)
        return []
    log.debug("DHCP: %s to %s", answer.msg_type.name, request.mac.hex(":"))
    return [_build_reply(request, answer, plan)]


def _offer(request: DhcpRequest, plan: AddressPlan) -> _Answer:
    # RFC 2131 §4.3.1
    assert plan.addr4 is not None
    return _Answer(MessageType.OFFER, plan.addr4, _ZERO4, lease=True)


def _acknowledge(request: DhcpRequest, plan: AddressPlan) -> _Answer | None:
    # RFC 2131 §4.3.2: SELECTING names a server and an address (option 50); INIT-REBOOT
    # names only the address; RENEWING and REBINDING put it in ciaddr.
    if request.server_id is not None and request.server_id != plan.gw4:
        return None
    named = (request.requested_ip, request.ciaddr)
    if any(addr not in (None, _ZERO4, plan.addr4) for addr in named):
        return _Answer(MessageType.NAK, _ZERO4, _ZERO4, lease=False)
    assert plan.addr4 is not None
    return _Answer(MessageType.ACK, plan.addr4, request.ciaddr, lease=True)


def _inform(request: DhcpRequest, plan: AddressPlan) -> _Answer:
    # RFC 2131 §4.3.5: configuration only — no yiaddr, no lease time.
    return _Answer(MessageType.ACK, _ZERO4, request.ciaddr, lease=False)


# RELEASE and DECLINE are absent on purpose (RFC 2131 §4.3.3, §4.3.4): the lease never
# ends and there is no other address to offer instead.
_RESPONDERS: dict[int | None, Callable[[DhcpRequest, AddressPlan], _Answer | None]] = {
    MessageType.DISCOVER: _offer,
    MessageType.REQUEST: _acknowledge,
    MessageType.INFORM: _inform,
}


def _build_reply(request: DhcpRequest, answer: _Answer, plan: AddressPlan) -> bytes:
    assert plan.gw4 is not None
    header = _HEADER.pack(
        _BOOTREPLY,
        _HTYPE_ETHERNET,
        6,
        0,
        request.xid,
        0,
        request.flags,
        answer.ciaddr,
        answer.yiaddr,
        _ZERO4,
        _ZERO4,
        request.chaddr,
        b"",
        b"",
        _MAGIC_COOKIE,
    )
    room = request.max_size - _IP_UDP_HLEN - _HEADER.size
    message = header + _encode_options(_reply_options(request, answer, plan, room), room)
    dst_mac, dst = _destination(request, answer)
    datagram = build_udp(
        plan.gw4, dst, SERVER_PORT, CLIENT_PORT, message.ljust(_MIN_MESSAGE_LEN, b"\0")
    )
    return build_ip_frame(dst_mac, plan.our_mac, plan.gw4, dst, IPPROTO_UDP, datagram)


def _reply_options(
    request: DhcpRequest, answer: _Answer, plan: AddressPlan, room: int
) -> list[tuple[int, bytes]]:
    """The options of a reply, in wire order (see the module docstring)."""
    assert plan.gw4 is not None
    head = [(Option.MESSAGE_TYPE, bytes((answer.msg_type,))), (Option.SERVER_ID, plan.gw4)]
    if request.client_id is not None:
        head.append((Option.CLIENT_ID, request.client_id))
    if answer.msg_type == MessageType.NAK:
        # RFC 2131 §4.3.2, table 3: a NAK carries no configuration.
        return [*head, (Option.MESSAGE, _NAK_MESSAGE)]
    if answer.lease:
        head.append((Option.LEASE_TIME, _INFINITE.to_bytes(4, "big")))
    head.append((Option.SUBNET_MASK, _netmask(plan.prefix4)))
    rest = _configuration(plan)
    if plan.search:
        # RFC 3397: the search list gets the room the other options leave (END: 1 byte).
        left = room - 1 - sum(_encoded_len(value) for _, value in head + rest)
        limit = max(left - 2 * -(-left // _MAX_OPTION_LEN), 0)
        search = encode_names(plan.search, compress=True, limit=limit)
        if search:
            rest.append((Option.DOMAIN_SEARCH, search))
    rank: dict[int, int] = {}
    for position, code in enumerate(request.parameters):
        rank.setdefault(code, position)
    unrequested = len(request.parameters)
    rest.sort(key=lambda option: (rank.get(option[0], unrequested), option[0]))
    return head + rest


def _configuration(plan: AddressPlan) -> list[tuple[int, bytes]]:
    """Every option the plan configures besides the search list, in code order."""
    assert plan.gw4 is not None
    options: list[tuple[int, bytes]] = [(Option.ROUTER, plan.gw4)]
    if not _on_link(plan.addr4, plan.gw4, plan.prefix4):
        # A /32 host address (many cloud and VPS hosts) has its gateway off the subnet:
        # a route to the gateway itself, then the default route through it (RFC 3442,
        # which clients then prefer to option 3; as pasta does).
        options.append((Option.CLASSLESS_ROUTES,
                        bytes((32,)) + plan.gw4 + _ON_LINK + bytes((0,)) + plan.gw4))
    if plan.dns4:
        options.append((Option.DNS, b"".join(plan.dns4)))
    if plan.hostname:
        options.append((Option.HOSTNAME, plan.hostname.encode("idna")))
    if plan.search:
        options.append((Option.DOMAIN_NAME, plan.search[0].removesuffix(".").encode("idna")))
    mtu = min(plan.mtu, 0xFFFF)
    if mtu >= _MIN_MTU:
        # RFC 2132 §5.1: 68 is the smallest legal value; plan.mtu 0 means "do not send".
        options.append((Option.MTU, mtu.to_bytes(2, "big")))
    if plan.fqdn:
        options.append((Option.FQDN, _FQDN_HEAD + encode_name(plan.fqdn)))
    return options


_ON_LINK = bytes(4)
"""A router of 0.0.0.0 in option 121: the destination is on the link itself."""


def _on_link(addr: bytes | None, gw: bytes, prefix: int) -> bool:
    """Whether ``gw`` is inside the subnet of ``addr``/``prefix``."""
    if addr is None:
        return True  # no address, no server: nothing to route
    differ = int.from_bytes(addr, "big") ^ int.from_bytes(gw, "big")
    return differ & int.from_bytes(_netmask(prefix), "big") == 0


def _netmask(prefix: int) -> bytes:
    return ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF).to_bytes(4, "big")


def _encoded_len(value: bytes) -> int:
    """Bytes an option takes on the wire, split in 255-byte pieces (RFC 3396)."""
    return len(value) + 2 * max(1, -(-len(value) // _MAX_OPTION_LEN))


def _encode_options(options: list[tuple[int, bytes]], room: int) -> bytes:
    """Options, then END; one that does not fit in ``room`` bytes is left out."""
    out = bytearray()
    for code, value in options:
        if len(out) + _encoded_len(value) + 1 > room:
            log.debug("DHCP: option %d left out, no room", code)
            continue
        for start in range(0, max(len(value), 1), _MAX_OPTION_LEN):
            piece = value[start : start + _MAX_OPTION_LEN]
            out += bytes((code, len(piece))) + piece
    out.append(Option.END)
    return bytes(out)


def _destination(request: DhcpRequest, answer: _Answer) -> tuple[bytes, bytes]:
    """Destination MAC and IP address of a reply (RFC 2131 §4.1, giaddr zero)."""
    if answer.msg_type == MessageType.NAK:
        return BROADCAST_MAC, _BROADCAST4
    if request.ciaddr != _ZERO4:
        return request.mac, request.ciaddr
    if request.flags & _FLAG_BROADCAST or answer.yiaddr == _ZERO4:
        return BROADCAST_MAC, _BROADCAST4
    return request.mac, answer.yiaddr
