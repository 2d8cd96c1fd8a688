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
