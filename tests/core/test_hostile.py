"""A hostile namespace against the engine: forbidden endpoints, SYN floods, resets with
absurd sequence numbers, fragments, and our own bugs contained to one flow."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether

from pasta_net.core import tcp
from pasta_net.core.actions import CloseSocket, OpenSocket, SendDatagram, TcpSend
from pasta_net.core.frames import forwardable
from tests.core.test_tcp import CLIENT_ISN, Playbook, frames_of, seg
from tests.core.wire import NS4, NS6, NS_MAC, OUR_MAC, REMOTE4, REMOTE6, engine, packed, wire

FORBIDDEN = ["0.0.0.0", "127.0.0.1", "127.1.2.3", "224.0.0.251", "239.255.255.250",
             "255.255.255.255", "240.0.0.1", "::", "::1", "::ffff:127.0.0.1", "::ffff:1.2.3.4",
             "::127.0.0.1", "ff02::1", "ff05::fb"]


def _opens(actions) -> list[OpenSocket]:
    return [a for a in actions if isinstance(a, OpenSocket)]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_forwardable_refuses_host_loopback_unspecified_and_multicast(address: str) -> None:
    assert not forwardable(packed(address))


@pytest.mark.parametrize("address", [REMOTE4, REMOTE6, "198.51.100.1", "10.0.0.1",
                                     "64:ff9b::1.2.3.4", "fe80::1", "2001:db8::1"])
def test_forwardable_accepts_unicast(address: str) -> None:
    assert forwardable(packed(address))


@pytest.mark.parametrize("address", FORBIDDEN)
def test_no_socket_is_opened_towards_a_forbidden_address(address: str) -> None:
    """A raw frame to 127.0.0.1 must not reach the host's loopback services."""
    v6 = ":" in address
    ip = IPv6(src=NS6, dst=address) if v6 else IP(src=NS4, dst=address)
    echo = ICMPv6EchoRequest() if v6 else ICMP()
    eng = engine()
    frames = [wire(Ether(src=NS_MAC, dst=OUR_MAC) / ip / layer)
              for layer in (TCP(sport=40000, dport=22, flags="S"),
                            UDP(sport=5353, dport=5353) / b"x", echo)]
    actions = eng.receive_frames(frames, now=0.0)
    assert not _opens(actions) and not [a for a in actions if isinstance(a, SendDatagram)]
    assert eng.drops["bad-address"] == 3


@pytest.mark.parametrize(("sport", "dport"), [(0, 80), (40000, 0)])
def test_port_zero_opens_nothing(sport: int, dport: int) -> None:
    eng = engine()
    syn = seg("S", 1, sport=sport, dport=dport)
    udp = wire(Ether(src=NS_MAC, dst=OUR_MAC) / IP(src=NS4, dst=REMOTE4)
               / UDP(sport=sport, dport=dport) / b"x")
    assert not _opens(eng.receive_frames([syn, udp], now=0.0))
    assert eng.drops["bad-address"] == 2


def test_syn_flood_evicts_the_oldest_half_open_connection(monkeypatch) -> None:
    monkeypatch.setattr(tcp, "MAX_HALF_OPEN", 3)
    eng = engine()
    flows = [_opens(eng.receive_frames([seg("S", 1, sport=p)], now=p))[0].flow
             for p in (1, 2, 3)]
    actions = eng.receive_frames([seg("S", 1, sport=4)], now=4.0)
    [rst] = frames_of(actions)
    assert rst[TCP].dport == 1 and rst[TCP].flags == "RA"  # the oldest, refused late
    assert CloseSocket(flows[0], reset=True) in actions
    assert _opens(actions)[0].remote == (REMOTE4, 80)
    assert len(eng.tcp) == 3 and eng.drops["tcp-half-open-evicted"] == 1


def test_established_connections_are_never_evicted(monkeypatch) -> None:
    monkeypatch.setattr(tcp, "MAX_HALF_OPEN", 2)
    monkeypatch.setattr(tcp, "MAX_CONNECTIONS", 2)
    eng = engine()
    for port in (1, 2):
        [open_] = eng.receive_frames([seg("S", 1, sport=port)], now=0.0)
        eng.tcp.connected(open_.flow, 50_000, now=0.0)
    actions = eng.receive_frames([seg("S", 1, sport=3)], now=1.0)
    [rst] = frames_of(actions)
    assert rst[TCP].dport == 3 and "R" in rst[TCP].flags and not _opens(actions)
    assert len(eng.tcp) == 2 and eng.drops["tcp-table-full"] == 1


def test_half_open_inbound_connections_make_room_too(monkeypatch) -> None:
    monkeypatch.setattr(tcp, "MAX_HALF_OPEN", 1)
    eng = engine()
    eng.tcp.accepted(100, ("192.0.2.50", 51000), 8080, now=0.0)  # the namespace never answers
    actions = eng.tcp.accepted(101, ("192.0.2.50", 51001), 8080, now=1.0)
    assert CloseSocket(100, reset=True) in actions
    [syn] = frames_of(actions)
    assert syn[TCP].flags == "S" and syn[TCP].sport == 51001


@pytest.mark.parametrize("offset", [1 << 31, -1, -(1 << 20), (1 << 26)])
def test_reset_with_absurd_sequence_number_is_ignored(offset: int) -> None:
    pb = Playbook()
    pb.send("A")
    actions = pb.eng.receive_frames([seg("R", (pb.seq + offset) % (1 << 32))], now=1.0)
    assert not [a for a in actions if isinstance(a, CloseSocket)]
    assert pb.eng.drops["tcp-bad-reset"] == 1
    [challenge] = frames_of(actions)  # RFC 5961 §3.2: tells a real peer where we are
    assert challenge[TCP].flags == "A" and challenge[TCP].ack == pb.seq
    [send] = pb.send("PA", b"still here")
    assert isinstance(send, TcpSend)


@pytest.mark.parametrize("offset", [0, 1000])
def test_reset_in_window_ends_the_connection(offset: int) -> None:
    pb = Playbook()
    pb.send("A")
    actions = pb.eng.receive_frames([seg("R", pb.seq + offset)], now=1.0)
    assert CloseSocket(pb.flow, reset=True) in actions


def test_reset_to_our_syn_must_acknowledge_it() -> None:
    eng = engine()
    [syn] = frames_of(eng.tcp.accepted(7, ("192.0.2.50", 51000), 8080, now=0.0))

    def reset(ack: int):
        return wire(Ether(src=NS_MAC, dst=OUR_MAC) / IP(src=NS4, dst="192.0.2.50")
                    / TCP(sport=8080, dport=51000, flags="RA", seq=0, ack=ack))

    assert eng.receive_frames([reset(syn[TCP].seq + 5)], now=0.1) == []
    assert CloseSocket(7, reset=True) in eng.receive_frames([reset(syn[TCP].seq + 1)], now=0.2)


@pytest.mark.parametrize("packet", [
    IP(src=NS4, dst=REMOTE4, flags="MF") / UDP(dport=53) / b"first",
    IP(src=NS4, dst=REMOTE4, frag=100) / b"later",
    IPv6(src=NS6, dst=REMOTE6) / IPv6ExtHdrFragment(m=1) / UDP(dport=53) / b"first",
    IPv6(src=NS6, dst=REMOTE6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(offset=8) / b"x",
], ids=["v4-first", "v4-later", "v6-first", "v6-after-hop-by-hop"])
def test_fragments_are_dropped_with_a_counter(packet) -> None:
    eng = engine()
    assert eng.receive_frames([wire(Ether(src=NS_MAC, dst=OUR_MAC) / packet)], now=0.0) == []
    assert eng.drops["fragment"] == 1


def test_a_bug_in_one_connection_resets_it_and_spares_the_others(monkeypatch, caplog) -> None:
    pb = Playbook()
    pb.send("A")
    other = seg("S", CLIENT_ISN, sport=40001)
    real_ack = tcp.TcpTable._ack

    def broken(self, conn, *args):
        if conn.flow == pb.flow:
            raise RuntimeError("a bug")
        return real_ack(self, conn, *args)

    monkeypatch.setattr(tcp.TcpTable, "_ack", broken)
    data = seg("PA", pb.seq, pb.ack, b"x")
    actions = pb.eng.receive_frames([data, other], now=2.0)
    [rst] = frames_of(actions)
    assert rst[TCP].flags == "RA" and rst[TCP].sport == 80 and rst[TCP].dport == 40000
    assert CloseSocket(pb.flow, reset=True) in actions
    assert [o.remote for o in _opens(actions)] == [(REMOTE4, 80)]  # the new one goes on
    assert pb.eng.drops["internal-error"] == 1
    assert "a bug" in caplog.text


def _udp(sport: int = 5353, dport: int = 53, dst: str = REMOTE4):
    return wire(Ether(src=NS_MAC, dst=OUR_MAC) / IP(src=NS4, dst=dst)
                / UDP(sport=sport, dport=dport) / b"query")


def test_udp_flow_whose_socket_cannot_be_opened_is_refused_and_forgotten() -> None:
    """Out of fds: the namespace hears "administratively prohibited" at once, and the
    next datagram tries again instead of vanishing until the flow would time out."""
    eng = engine()
    [open_, _send] = eng.receive_frames([_udp()], now=0.0)
    [icmp] = frames_of(eng.open_failed(open_.flow, 24, now=0.0))  # EMFILE
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 13) and icmp[IP].src == REMOTE4
    assert len(eng.udp) == 0
    [again, send] = eng.receive_frames([_udp()], now=1.0)
    assert isinstance(again, OpenSocket) and send.flow == again.flow != open_.flow


def test_tcp_connection_whose_socket_cannot_be_opened_is_reset() -> None:
    eng = engine()
    [open_] = eng.receive_frames([seg("S", CLIENT_ISN)], now=0.0)
    [rst] = frames_of(eng.open_failed(open_.flow, 24, now=0.0))
    assert rst[TCP].flags == "RA" and rst[TCP].ack == CLIENT_ISN + 1 and len(eng.tcp) == 0


def test_udp_table_full_refuses_new_flows_and_keeps_old_ones(monkeypatch) -> None:
    monkeypatch.setattr("pasta_net.core.udp.MAX_FLOWS", 2)
    eng = engine()
    for port in (1, 2):
        eng.receive_frames([_udp(sport=port)], now=0.0)
    [icmp] = frames_of(eng.receive_frames([_udp(sport=3)], now=0.0))
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 13)
    assert eng.drops["udp-table-full"] == 1
    [send] = eng.receive_frames([_udp(sport=1)], now=0.0)
    assert isinstance(send, SendDatagram)


def test_data_beyond_the_window_we_advertised_is_not_taken() -> None:
    """A namespace that ignores our window cannot make us hold more than we offered:
    the SYN-ACK offered 65,535 bytes (unscaled), so 2 x 40,000 are cut at that edge."""
    pb = Playbook()
    edge = pb.synack[TCP].window
    frames = [seg("PA", pb.seq + offset, pb.ack, b"x" * 40_000) for offset in (0, 40_000)]
    [send] = [a for a in pb.eng.receive_frames(frames, now=1.0) if isinstance(a, TcpSend)]
    assert sum(map(len, send.payloads)) == edge
    assert pb.eng.drops["tcp-beyond-window"] == 1
    [ack] = frames_of(pb.eng.tcp.sent(pb.flow, send.payloads, edge, free=1 << 20, now=1.0))
    assert ack[TCP].ack == CLIENT_ISN + 1 + edge  # the sender resends the rest
    pb.seq = ack[TCP].ack
    [send] = [a for a in pb.send("PA", b"y" * 1000) if isinstance(a, TcpSend)]
    assert sum(map(len, send.payloads)) == 1000  # within the window we announced since


# --- found by the soak: inbound connections on a reused four-tuple ----------------------
CLIENT = ("192.0.2.50", 51000)


def _from_ns(flags: str, seq: int, ack: int):
    return wire(Ether(src=NS_MAC, dst=OUR_MAC) / IP(src=NS4, dst=CLIENT[0])
                / TCP(sport=8080, dport=CLIENT[1], flags=flags, seq=seq, ack=ack,
                      window=60000))


def test_our_syn_is_sent_again_until_the_handshake_times_out() -> None:
    eng = engine()
    [syn] = frames_of(eng.tcp.accepted(7, CLIENT, 8080, now=0.0))
    resent = []
    for now in (1.0, 3.0, 7.0):
        assert eng.next_deadline() == now
        [again] = frames_of(eng.handle_deadline(now))
        resent.append(again)
    assert all(bytes(a[TCP]) == bytes(syn[TCP]) for a in resent)
    assert eng.next_deadline() == 10.0
    assert CloseSocket(7, reset=True) in eng.handle_deadline(10.0)


def test_a_time_wait_ack_to_our_syn_is_reset_and_the_next_syn_connects() -> None:
    """The namespace's port still holds the last connection in TIME_WAIT and answers our
    SYN with an ACK of that one: we reset it (exactly at what it acknowledges, which is
    what ends a TIME_WAIT), send the SYN again, and the handshake completes."""
    eng = engine()
    [syn] = frames_of(eng.tcp.accepted(7, CLIENT, 8080, now=0.0))
    [rst] = frames_of(eng.receive_frames([_from_ns("A", 900, 4242)], now=0.1))
    assert rst[TCP].flags == "R" and rst[TCP].seq == 4242
    [again] = frames_of(eng.handle_deadline(1.0))
    assert again[TCP].flags == "S" and again[TCP].seq == syn[TCP].seq
    actions = eng.receive_frames([_from_ns("SA", 5000, syn[TCP].seq + 1)], now=1.1)
    [ack] = frames_of(actions)
    assert ack[TCP].flags == "A" and ack[TCP].ack == 5001
    assert eng.tcp._by_flow[7].established


def test_initial_sequence_numbers_of_one_four_tuple_grow_with_the_clock() -> None:
    """RFC 6528: a new connection starts above the last one of the same four-tuple, so
    the namespace's TIME_WAIT takes it as new instead of answering with an old ACK."""
    eng = engine()
    [first] = frames_of(eng.tcp.accepted(7, CLIENT, 8080, now=100.0))
    eng.tcp.failed(7, 0, 100.0, [])
    [second] = frames_of(eng.tcp.accepted(8, CLIENT, 8080, now=101.0))
    assert (second[TCP].seq - first[TCP].seq) % (1 << 32) == 250_000
    [other] = frames_of(eng.tcp.accepted(9, (CLIENT[0], 51001), 8080, now=101.0))
    assert other[TCP].seq != second[TCP].seq
