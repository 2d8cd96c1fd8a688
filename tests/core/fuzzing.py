"""Shared by the hypothesis properties (tests/core/test_fuzz_frames.py) and the atheris
harness (tests/fuzz/fuzz_frames.py): seed frames, one checked entry point per parser,
and a model of the shell that drives an engine the way the hub does.

The property everywhere: hostile bytes end in :class:`MalformedFrame` or in a clean
result; any other exception, or a result that breaks an invariant below, is a bug.

Why a model of the shell rather than the engine alone: the connection code only runs
once sockets "exist". :class:`HostModel` answers every action as the hub would (connects
that succeed or fail, short writes, peeks of random size, EOFs) from a seeded
``random.Random``, and checks what the hub relies on: frames we emit parse, a discard
never exceeds what was peeked, actions name flows that are open.
"""

from __future__ import annotations

import itertools
import random
import socket
import struct
from collections.abc import Callable

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Solicit, DHCP6OptClientId, DHCP6OptIA_NA
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, IPOption_Timestamp
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6ND_RS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether

from pasta_net.core import dhcp, dhcpv6, ndp
from pasta_net.core.actions import (
    Action,
    CloseSocket,
    OpenSocket,
    SendDatagram,
    SendFrames,
    SocketKind,
    TcpDiscard,
    TcpRead,
    TcpSend,
    TcpShutdown,
)
from pasta_net.core.engine import Engine, EngineConfig
from pasta_net.core.frames import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    VNET_HDR_LEN,
    IpPacket,
    MalformedFrame,
    UdpDatagram,
    parse_arp,
    parse_ethernet,
    parse_ip,
    parse_udp,
)
from pasta_net.core.icmp import parse_echo_request
from pasta_net.core.tcpwire import SYN, TCP_HLEN, parse_segment
from pasta_net.shell.qemu import MAX_FRAME, QemuStream
from tests.core import wire

__all__ = [
    "PARSERS",
    "SEEDS",
    "HostModel",
    "InvariantBroken",
    "all_seeds",
    "check_frame",
    "check_stream",
    "crafted_segment",
    "expected_frames",
    "framed",
    "new_engine",
    "parser_seeds",
    "read_stream",
    "syn_seeds",
    "tcp_frame",
]

SPORT, DPORT = 40000, 80
_TCP_OPTIONS = [("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""),
                ("Timestamp", (1, 0))]


class InvariantBroken(AssertionError):
    """The code under test returned something the shell could not use."""


def _eth(payload, dst: str = wire.OUR_MAC) -> bytes:
    return bytes(Ether(src=wire.NS_MAC, dst=dst) / payload)


def _v4(**fields) -> IP:
    return IP(**{"src": wire.NS4, "dst": wire.REMOTE4, **fields})


def _v6(**fields) -> IPv6:
    return IPv6(**{"src": wire.NS6, "dst": wire.REMOTE6, **fields})


def _tcp(flags: str, seq: int = 1000, ack: int = 0, **fields) -> TCP:
    return TCP(sport=SPORT, dport=DPORT, flags=flags, seq=seq, ack=ack, **fields)


def _seeds() -> dict[str, list[bytes]]:
    """Real frames of every kind the engine parses, as the namespace's kernel sends them."""
    dhcp_discover = (_v4(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
                     / BOOTP(chaddr=wire.mac(wire.NS_MAC), xid=7)
                     / DHCP(options=[("message-type", "discover"), "end"]))
    return {
        "ethernet": [
            _eth(ARP(psrc=wire.NS4, pdst=wire.GW4, hwsrc=wire.NS_MAC), "ff:ff:ff:ff:ff:ff"),
            _eth(Dot1Q(vlan=5) / _v4() / _tcp("S")),
            _eth(b"\x00" * 46),
        ],
        "arp": [
            _eth(ARP(psrc=wire.NS4, pdst=wire.GW4, hwsrc=wire.NS_MAC), "ff:ff:ff:ff:ff:ff"),
            _eth(ARP(op=2, psrc=wire.NS4, pdst=wire.GW4, hwsrc=wire.NS_MAC)),
        ],
        "ipv4": [
            _eth(_v4(options=[IPOption_RR(routers=["192.0.2.1"] * 3), IPOption_NOP()])
                 / _tcp("S", options=_TCP_OPTIONS)),
            _eth(_v4(options=[IPOption_Timestamp(flg=0, timestamp=1)]) / UDP(dport=53)
                 / b"query"),
            _eth(_v4(flags="MF", frag=0) / UDP(dport=9) / (b"f" * 64)),
            _eth(_v4(frag=8) / (b"g" * 32)),
        ],
        "ipv6": [
            _eth(_v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                 / IPv6ExtHdrRouting(addresses=[wire.REMOTE6]) / _tcp("S", options=_TCP_OPTIONS)),
            _eth(_v6() / IPv6ExtHdrFragment(m=1, id=3) / UDP(dport=9) / b"fragment"),
            _eth(_v6() / IPv6ExtHdrDestOpt() / UDP(dport=53) / b"query"),
            _eth(_v6(nh=59) / b"no next header"),
        ],
        "tcp": [
            _eth(_v4() / _tcp("S", options=_TCP_OPTIONS)),
            _eth(_v4() / _tcp("A", 1001, 1, window=502)),
            _eth(_v4() / _tcp("PA", 1001, 1, window=502) / (b"d" * 100)),
            _eth(_v4() / _tcp("FA", 1101, 1)),
            _eth(_v4() / _tcp("R", 1101)),
            _eth(_v6() / _tcp("S", options=_TCP_OPTIONS)),
            _eth(_v6() / _tcp("PA", 1001, 1, options=[("Timestamp", (5, 6))]) / b"v6 data"),
        ],
        "udp": [
            _eth(_v4() / UDP(sport=5353, dport=53) / b"\x12\x34\x01\x00\x00\x01"),
            _eth(_v6() / UDP(sport=5353, dport=7) / b"echo"),
            _eth(dhcp_discover, "ff:ff:ff:ff:ff:ff"),
            _eth(IPv6(src="fe80::2", dst="ff02::1:2") / UDP(sport=546, dport=547)
                 / DHCP6_Solicit(trid=1) / DHCP6OptClientId() / DHCP6OptIA_NA(iaid=1),
                 "33:33:00:01:00:02"),
        ],
        "icmp": [
            _eth(_v4() / ICMP(id=7, seq=1) / b"ping"),
            _eth(_v4() / ICMP(type=3, code=3) / bytes(_v4() / UDP())),
            _eth(_v6() / ICMPv6EchoRequest(id=7, seq=1, data=b"ping6")),
            _eth(IPv6(src="fe80::2", dst="ff02::2", hlim=255) / ICMPv6ND_RS()
                 / ICMPv6NDOptSrcLLAddr(lladdr=wire.NS_MAC), "33:33:00:00:00:02"),
            _eth(IPv6(src="fe80::2", dst="ff02::1:ff00:1", hlim=255)
                 / ICMPv6ND_NS(tgt=wire.GW6) / ICMPv6NDOptSrcLLAddr(lladdr=wire.NS_MAC),
                 "33:33:ff:00:00:01"),
        ],
    }


SEEDS = _seeds()


def all_seeds() -> list[bytes]:
    return [frame for frames in SEEDS.values() for frame in frames]


def syn_seeds() -> list[bytes]:
    """The TCP seeds that open a connection."""
    return [frame for frame in SEEDS["tcp"]
            if parse_segment(_ip(frame).l4).flags == SYN]


# ------------------------------------------------------------------ parsers --
def _ip_payload(frame: bytes) -> tuple[int, memoryview]:
    """Ethertype and IP bytes of a seed-shaped input, or the input itself as IPv4."""
    view = memoryview(frame)
    if len(view) >= ETH_HLEN:
        ethertype = int.from_bytes(view[12:14], "big")
        if ethertype in (ETH_P_IP, ETH_P_IPV6):
            return ethertype, view[ETH_HLEN:]
    return ETH_P_IP, view


def _ethernet(data: bytes) -> None:
    view = memoryview(data)
    dst, src, ethertype, payload = parse_ethernet(view)
    _expect(len(dst) == len(src) == 6 and 0 <= ethertype <= 0xFFFF, "ethernet fields")
    _expect(len(payload) == len(view) - ETH_HLEN, "ethernet payload length")


def _arp(data: bytes) -> None:
    arp = parse_arp(memoryview(data)[ETH_HLEN:])
    _expect(len(arp.sender_mac) == len(arp.target_mac) == 6, "arp mac length")
    _expect(len(arp.sender_ip) == len(arp.target_ip) == 4, "arp address length")


def _ip(data: bytes) -> IpPacket:
    ethertype, payload = _ip_payload(data)
    packet = parse_ip(ethertype, payload)
    size = 4 if packet.version == 4 else 16
    _expect(packet.version == (4 if ethertype == ETH_P_IP else 6), "ip version")
    _expect(len(packet.src) == len(packet.dst) == size, "ip address length")
    _expect(0 <= packet.proto <= 255 and 0 <= packet.hop_limit <= 255, "ip fields")
    _expect(len(packet.l4) <= len(payload) - (20 if size == 4 else 40), "ip payload bound")
    _expect(packet.l4.obj is payload.obj, "ip payload is a view, not a copy")
    return packet


def _l4(data: bytes) -> memoryview:
    """The upper layer of a well-formed packet, or the raw input for mutated headers."""
    try:
        return _ip(data).l4
    except MalformedFrame:
        return memoryview(data)


def _tcp_segment(data: bytes) -> None:
    l4 = _l4(data)
    seg = parse_segment(l4)
    _expect(0 <= seg.sport <= 0xFFFF and 0 <= seg.dport <= 0xFFFF, "tcp ports")
    _expect(0 <= seg.seq < 1 << 32 and 0 <= seg.ack < 1 << 32, "tcp sequence numbers")
    _expect(0 <= seg.window <= 0xFFFF and 0 <= seg.flags <= 0xFF, "tcp window and flags")
    _expect(len(seg.payload) <= len(l4) - TCP_HLEN, "tcp payload bound")
    _expect(seg.mss is None or 0 <= seg.mss <= 0xFFFF, "tcp mss")
    _expect(seg.wscale is None or 0 <= seg.wscale <= 14, "tcp window scale")


def _udp(data: bytes) -> None:
    l4 = _l4(data)
    datagram = parse_udp(l4)
    _expect(len(datagram.payload) <= len(l4) - 8, "udp payload bound")
    _expect(0 <= datagram.sport <= 0xFFFF and 0 <= datagram.dport <= 0xFFFF, "udp ports")


def _icmp(data: bytes) -> None:
    for version in (4, 6):
        packet = IpPacket(version, bytes(4 if version == 4 else 16),
                          bytes(4 if version == 4 else 16), 1, 64, _l4(data))
        request = parse_echo_request(packet)
        if request is not None:
            _expect(0 <= request.ident <= 0xFFFF, "echo id")
            _expect(bytes(request.message) == bytes(packet.l4), "echo message")


def _frames_out(frames: list[bytes]) -> None:
    for frame in frames:
        check_frame(frame)


def _ndp(data: bytes) -> None:
    for src in (wire.packed("fe80::2"), bytes(16)):
        packet = IpPacket(6, src, wire.packed("ff02::1:ff00:1"), IPPROTO_ICMPV6, 255,
                          memoryview(data))
        _frames_out(ndp.handle_ndp(wire.mac(wire.NS_MAC), packet, wire.plan()))


def _dhcp(data: bytes) -> None:
    packet = IpPacket(4, bytes(4), b"\xff" * 4, IPPROTO_UDP, 64, memoryview(b""))
    udp = UdpDatagram(68, 67, memoryview(data))
    _frames_out(dhcp.handle_dhcp(wire.mac(wire.NS_MAC), packet, udp, wire.plan()))


def _dhcpv6(data: bytes) -> None:
    packet = IpPacket(6, wire.packed("fe80::2"), wire.packed("ff02::1:2"), IPPROTO_UDP, 1,
                      memoryview(b""))
    udp = UdpDatagram(546, 547, memoryview(data))
    _frames_out(dhcpv6.handle_dhcpv6(wire.mac(wire.NS_MAC), packet, udp, wire.plan()))


PARSERS: dict[str, Callable[[bytes], None]] = {
    "ethernet": _ethernet,
    "arp": _arp,
    "ipv4": _ip,
    "ipv6": _ip,
    "tcp": _tcp_segment,
    "udp": _udp,
    "icmp": _icmp,
    "ndp": _ndp,
    "dhcp": _dhcp,
    "dhcpv6": _dhcpv6,
}
"""Each parser on raw input: returns if the result is clean, raises MalformedFrame if
the input is refused, InvariantBroken if the result is unusable, anything else: bug.
The frame parsers take a frame (or, mutated past recognition, the raw layer); the
address services take their message (the ICMPv6 or UDP payload)."""


def parser_seeds(name: str) -> list[bytes]:
    """Where mutation of ``name``'s input starts: frames, or messages of that service."""
    if name in SEEDS:
        return SEEDS[name]
    from tests.core import test_fuzz_address_services as services

    return {"ndp": services.NDP_SEEDS, "dhcp": services.DHCP_SEEDS,
            "dhcpv6": services.DHCPV6_SEEDS}[name]


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise InvariantBroken(what)


def check_frame(frame: bytes | bytearray | memoryview) -> None:
    """A frame we send to the namespace: virtio-net slot, then Ethernet and a packet our
    own parsers accept whole (lengths agree with the bytes present)."""
    view = memoryview(frame)
    _expect(len(view) >= VNET_HDR_LEN + ETH_HLEN, "frame shorter than its headers")
    _expect(len(view) <= VNET_HDR_LEN + ETH_HLEN + 0xFFFF + 40, "frame longer than IP allows")
    try:
        _dst, _src, ethertype, payload = parse_ethernet(view[VNET_HDR_LEN:])
        if ethertype not in (ETH_P_IP, ETH_P_IPV6):
            return
        packet = parse_ip(ethertype, payload)
        header = 20 if packet.version == 4 else 40
        _expect(len(packet.l4) == len(payload) - header, "ip length disagrees with frame")
        if packet.proto == IPPROTO_TCP:
            parse_segment(packet.l4)
        elif packet.proto == IPPROTO_UDP:
            _expect(len(parse_udp(packet.l4).payload) == len(packet.l4) - 8, "udp length")
    except MalformedFrame as exc:
        raise InvariantBroken(f"we built a malformed frame: {exc}") from exc


# ----------------------------------------------------------- shell model --
def new_engine(offload: bool, variant: int = 0) -> Engine:
    """An engine as the fuzzers use it; ``variant`` picks the address plan."""
    plans = [wire.plan(), wire.plan(addr6=None, gw6=None), wire.plan(addr4=None, gw4=None),
             wire.plan(mtu=1500, dns4=(wire.packed(wire.GW4),), search=("example.org",))]
    plan = plans[variant % len(plans)]
    return Engine(EngineConfig(plan=plan, ns_mac=wire.mac(wire.NS_MAC), offload=offload,
                               udp_timeout=30.0))


_ERRNOS = [111, 113, 101, 24, 23, 104, 32, 110]


def _reraise(_what: str) -> None:
    """Stands in for ``Engine._internal_error``, which runs inside the ``except`` block."""
    raise  # re-raises the exception our caller is handling


class HostModel:
    """The hub's half of the contract, simulated with a seeded random source.

    Executes actions depth-first, as the hub does (a result fed back may refer to the
    buffers of the batch being handled), and checks each one.
    """

    def __init__(self, engine: Engine, rng: random.Random) -> None:
        engine._internal_error = _reraise  # the engine survives its bugs; we must see them
        self.engine = engine
        self.rng = rng
        self.now = 0.0
        self.kinds: dict[int, SocketKind] = {}
        self.connecting: list[int] = []
        self.peeked: dict[int, int] = {}
        """Per TCP flow: bytes handed to the engine and not yet discarded (the peek offset)."""
        self.eof: set[int] = set()
        self.frames_out = 0
        self._dispatch: dict[type, Callable] = {
            SendFrames: self._send_frames,
            OpenSocket: self._open,
            SendDatagram: self._datagram,
            CloseSocket: self._close,
            TcpSend: self._tcp_send,
            TcpRead: self._tcp_read,
            TcpDiscard: self._tcp_discard,
            TcpShutdown: self._tcp_shutdown,
        }

    # ---------------------------------------------------------------- input --
    def frames(self, frames: list[bytes]) -> None:
        """Frames from the namespace, as one tap batch."""
        self.execute(self.engine.receive_frames([memoryview(f) for f in frames], self.now))

    def step(self) -> None:
        """Something happens on the host side: time passes, connects finish, data comes."""
        rng = self.rng
        self.now += rng.choice([0.0, 0.001, 0.2, 1.0, 9.0, 61.0, 200.0])
        self.execute(self.engine.handle_deadline(self.now))
        while self.connecting:
            flow = self.connecting.pop()
            if self.kinds.get(flow) is not SocketKind.TCP:
                continue
            if rng.random() < 0.8:
                self.execute(self.engine.tcp.connected(flow, rng.choice([0, 4096, 1 << 20]),
                                                       self.now))
            else:
                self.execute(self.engine.socket_failed(flow, rng.choice(_ERRNOS), self.now))
        for flow, kind in list(self.kinds.items()):
            if flow not in self.kinds:
                continue  # closed by an earlier flow's actions
            if kind is SocketKind.TCP:
                self._tcp_host_event(flow)
            elif rng.random() < 0.3:
                peer = (wire.REMOTE4, 53) if rng.random() < 0.5 else (wire.REMOTE6, 53, 0, 0)
                data = rng.randbytes(rng.choice([0, 1, 8, 100, 1500]))
                self.execute(self.engine.datagram_received(flow, data, peer, self.now))

    def _tcp_host_event(self, flow: int) -> None:
        rng, tcp = self.rng, self.engine.tcp
        choice = rng.random()
        if choice < 0.3:
            self._tcp_read(TcpRead(flow))
        elif choice < 0.4:
            tail = tcp.tail_to_send(flow)
            if tail is not None:
                accepted = rng.randint(0, len(tail))
                self.execute(tcp.tail_sent(flow, accepted, rng.choice([0, 65536]), self.now))
            else:
                self.execute(tcp.writable(flow, rng.choice([0, 65536, 1 << 22]), self.now))
        elif choice < 0.45:
            self.eof.add(flow)
            self._tcp_read(TcpRead(flow))
        elif choice < 0.47:
            self.execute(self.engine.socket_failed(flow, rng.choice(_ERRNOS), self.now))

    # -------------------------------------------------------------- actions --
    def execute(self, actions: list[Action]) -> None:
        _expect(isinstance(actions, list), "actions are a list")
        for action in actions:
            self._dispatch[type(action)](action)

    def _send_frames(self, action: SendFrames) -> None:
        _expect(bool(action.frames), "SendFrames without frames")
        for frame in action.frames:
            check_frame(frame)
        self.frames_out += len(action.frames)

    def _open(self, action: OpenSocket) -> None:
        _expect(action.flow not in self.kinds, f"flow {action.flow} opened twice")
        host, port = action.remote
        _expect(0 <= port <= 0xFFFF, "remote port")
        family = socket.AF_INET if action.family == 4 else socket.AF_INET6
        socket.inet_pton(family, host)  # the shell hands this string to connect()
        if self.rng.random() < 0.05:  # EMFILE, or a connect refused at once
            self.execute(self.engine.open_failed(action.flow, self.rng.choice(_ERRNOS),
                                                 self.now))
            return
        self.kinds[action.flow] = action.kind
        if action.kind is SocketKind.TCP:
            self.connecting.append(action.flow)
            self.peeked[action.flow] = 0

    def _datagram(self, action: SendDatagram) -> None:
        _expect(all(len(p) <= 0xFFFF for p in action.payloads), "datagram longer than IP allows")
        size = len(action.payloads[0])
        _expect(all(len(p) == size for p in action.payloads[:-1])
                and len(action.payloads[-1]) <= size, "datagrams of a GSO send differ in size")
        if action.flow in self.kinds and self.rng.random() < 0.05:
            self.execute(self.engine.socket_failed(action.flow, 111, self.now))

    def _close(self, action: CloseSocket) -> None:
        self.kinds.pop(action.flow, None)
        self.peeked.pop(action.flow, None)
        self.eof.discard(action.flow)

    def _open_tcp(self, flow: int) -> bool:
        return self.kinds.get(flow) is SocketKind.TCP and flow not in self.connecting

    def _tcp_send(self, action: TcpSend) -> None:
        _expect(self._open_tcp(action.flow), f"TcpSend on flow {action.flow} not connected")
        total = sum(map(len, action.payloads))
        _expect(total > 0, "TcpSend of nothing")
        accepted = self.rng.choice([total, total, 0, self.rng.randint(0, total)])
        free = self.rng.choice([-1, 0, 1 << 16, 1 << 22])
        self.execute(self.engine.tcp.sent(action.flow, action.payloads, accepted, free, self.now))

    def _tcp_read(self, action: TcpRead) -> None:
        flow = action.flow
        if not self._open_tcp(flow):
            return  # as the hub: a read for a socket that is gone or connecting is a no-op
        if action.rewind:
            self.peeked[flow] = 0
        slots = self.engine.tcp.read_slots(flow)
        room = sum(map(len, slots))
        if flow in self.eof and self.rng.random() < 0.5:
            self.execute(self.engine.tcp.eof(flow, self.now))
            return
        if not slots:
            return
        count = self.rng.choice([room, 1, self.rng.randint(1, room)])
        self.peeked[flow] += count
        self.execute(self.engine.tcp.data(flow, count, self.now))

    def _tcp_discard(self, action: TcpDiscard) -> None:
        flow = action.flow
        _expect(action.count > 0, "discard of nothing")
        if flow not in self.peeked:
            return
        _expect(action.count <= self.peeked[flow],
                f"discard {action.count} > {self.peeked[flow]} bytes peeked on flow {flow}")
        self.peeked[flow] -= action.count

    def _tcp_shutdown(self, action: TcpShutdown) -> None:
        _expect(action.flow in self.kinds or action.flow not in self.peeked,
                "shutdown of a closed socket")


# ------------------------------------------------------- crafted segments --
def tcp_frame(src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, flags: int,
              window: int, options: bytes = b"", payload: bytes = b"") -> bytes:
    """A TCP frame from the namespace, built by hand (fast; checksums left zero, which the
    engine never verifies: the tap's offload may leave them partial)."""
    options += b"\x00" * (-len(options) % 4)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq % (1 << 32), ack % (1 << 32),
                      (TCP_HLEN + len(options)) << 2, flags, window, 0, 0) + options + payload
    if len(src) == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, IPPROTO_TCP,
                         0, src, dst)
        ethertype = ETH_P_IP
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), IPPROTO_TCP, 64, src, dst)
        ethertype = ETH_P_IPV6
    return (wire.mac(wire.OUR_MAC) + wire.mac(wire.NS_MAC) + struct.pack("!H", ethertype)
            + ip + tcp)


def crafted_segment(engine: Engine, rng: random.Random) -> bytes | None:
    """A segment for one of the engine's connections, with sequence and acknowledgement
    numbers near (or absurdly far from) what it expects: blind mutation rarely lands
    inside a window, and the connection code is where state can go wrong."""
    conns = list(engine.tcp._by_key.values())
    if not conns:
        return None
    conn = rng.choice(conns)
    near = [0, 0, 1, -1, 2, 100, -100, 1 << 31, (1 << 31) - 1, rng.getrandbits(32)]
    seq = conn.seq_from_ns + rng.choice(near)
    ack = conn.seq_to_ns + rng.choice([0, 0, -1, 1, -rng.randint(0, 1 << 16), 1 << 31])
    flags = rng.choice([0x10, 0x10, 0x18, 0x11, 0x19, 0x04, 0x14, 0x02, 0x12, 0x01, 0x00,
                        rng.getrandbits(8)])
    window = rng.choice([0, 1, 0xFFFF, rng.getrandbits(16)])
    options = rng.choice([b"", b"\x02\x04\x05\xb4\x03\x03\x0e", b"\x03\x03\xff",
                          b"\x01" * 40, b"\x02\x00", b"\x08\x0a" + rng.randbytes(8),
                          rng.randbytes(rng.randint(0, 40))])[:40]
    payload = rng.randbytes(rng.choice([0, 0, 1, 100, 1460, 9000]))
    return tcp_frame(conn.ns_addr, conn.ns_port, conn.peer, conn.peer_port, seq, ack, flags,
                     window, options, payload)


# ------------------------------------------------------------ passt framing --
def framed(frames: list[bytes]) -> bytes:
    """Frames as qemu's stream netdev sends them: a 4-byte big-endian length before each."""
    return b"".join(struct.pack("!I", len(f)) + f for f in frames)


def expected_frames(data: bytes) -> tuple[list[bytes], bool]:
    """What a correct reader cuts from ``data``: the frames before the first length out of
    range, and whether there was one (the reader must then drop the client)."""
    frames, pos = [], 0
    while len(data) - pos >= 4:
        (length,) = struct.unpack_from("!I", data, pos)
        if not ETH_HLEN <= length <= MAX_FRAME:
            return frames, True
        if len(data) - pos - 4 < length:
            break
        frames.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return frames, False


def read_stream(chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """Feed ``chunks`` to a QemuStream through a socketpair, one read pass per chunk; the
    frames it cut, and whether it dropped the client."""
    ours, theirs = socket.socketpair()
    stream = QemuStream(client=ours)
    got: list[bytes] = []
    try:
        for chunk in chunks:
            if not stream.connected:
                break
            if chunk:
                theirs.sendall(chunk)
            while stream.connected:
                frames = stream.read_batch()
                if not frames:
                    break
                got += [bytes(f) for f in frames]
        return got, not stream.connected
    finally:
        stream.close()
        theirs.close()


def check_stream(data: bytes, cuts: list[int]) -> None:
    """``data`` read in pieces split at ``cuts`` yields exactly the frames it holds."""
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    got, dropped = read_stream([data[a:b] for a, b in itertools.pairwise(bounds)])
    expected, bad = expected_frames(data)
    _expect(got == expected, "qemu stream: frames cut wrongly")
    _expect(dropped == bad, "qemu stream: client dropped wrongly")
