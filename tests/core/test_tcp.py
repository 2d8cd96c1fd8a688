"""TCP translation playbooks: segments from the namespace in, actions out.

Frames are built and decoded with scapy; the host side is simulated by calling the
engine methods the shell would call (connected, sent, read_slots/data, eof).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from pasta_net.core.actions import (
    CloseSocket,
    OpenSocket,
    SendFrames,
    SocketKind,
    TcpDiscard,
    TcpRead,
    TcpSend,
    TcpShutdown,
)
from pasta_net.core.tcp import MAX_CONNECTIONS, MIN_WINDOW, OUR_WSCALE, RTO_INITIAL
from tests.core.wire import (
    NS4,
    NS6,
    NS_MAC,
    OUR_MAC,
    REMOTE4,
    REMOTE6,
    checksums_valid,
    decode,
    engine,
    wire,
)

CLIENT_ISN = 1000


def seg(flags: str, seq: int, ack: int = 0, payload: bytes = b"", window: int = 1000,
        options=(), v6: bool = False, sport: int = 40000, dport: int = 80) -> memoryview:
    ip = IPv6(src=NS6, dst=REMOTE6) if v6 else IP(src=NS4, dst=REMOTE4)
    return wire(Ether(src=NS_MAC, dst=OUR_MAC) / ip
                / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window,
                      options=list(options)) / payload)


def frames_of(actions) -> list:
    return [decode(f) for a in actions if isinstance(a, SendFrames) for f in a.frames]


class Playbook:
    """An outbound connection driven through handshake, data and close."""

    def __init__(self, v6: bool = False, offload: bool = False) -> None:
        self.v6 = v6
        self.eng = engine(offload=offload)
        syn = seg("S", CLIENT_ISN, options=[("MSS", 1460), ("WScale", 7)], v6=v6)
        [open_] = self.eng.receive_frames([syn], now=0.0)
        assert isinstance(open_, OpenSocket) and open_.kind is SocketKind.TCP
        self.flow = open_.flow
        self.open = open_
        [synack] = frames_of(self.eng.tcp.connected(self.flow, free=200_000, now=0.01))
        self.synack = synack
        self.isn = synack[TCP].seq
        self.seq = CLIENT_ISN + 1  # next seq the namespace sends
        self.ack = self.isn + 1  # what the namespace acknowledges

    def send(self, flags: str, payload: bytes = b"", now: float = 1.0, window: int = 1000):
        actions = self.eng.receive_frames(
            [seg(flags, self.seq, self.ack, payload, window=window, v6=self.v6)], now)
        self.seq += len(payload) + (1 if "F" in flags else 0)
        return actions

    def peer_sends(self, data: bytes, now: float = 1.0):
        """The host socket has ``data``; run the shell's peek loop once."""
        slots = self.eng.tcp.read_slots(self.flow)
        offset = 0
        for slot in slots:
            chunk = data[offset : offset + len(slot)]
            slot[: len(chunk)] = chunk
            offset += len(chunk)
        return self.eng.tcp.data(self.flow, min(len(data), offset), now)


def test_syn_opens_socket_to_real_destination_and_synack_after_connect():
    pb = Playbook()
    assert pb.open.remote == (REMOTE4, 80) and pb.open.family == 4
    synack = pb.synack
    assert synack[IP].src == REMOTE4 and synack[IP].dst == NS4
    assert synack[TCP].flags == "SA" and synack[TCP].ack == CLIENT_ISN + 1
    options = dict(synack[TCP].options)
    assert options["MSS"] == 65520 - 40 and options["WScale"] == OUR_WSCALE
    assert checksums_valid(synack)


def test_refused_connect_resets_namespace():
    eng = engine()
    [open_] = eng.receive_frames([seg("S", CLIENT_ISN)], now=0.0)
    [rst] = frames_of(eng.socket_failed(open_.flow, 111, now=0.1))
    assert rst[TCP].flags == "RA" and rst[TCP].ack == CLIENT_ISN + 1


def test_data_from_namespace_is_sent_and_acked_only_as_far_as_accepted():
    pb = Playbook()
    pb.send("A")
    [send] = pb.send("PA", b"hello world")
    assert isinstance(send, TcpSend) and b"".join(bytes(p) for p in send.payloads) == b"hello world"
    # the kernel took only 5 bytes: ACK 5, keep the rest, window closed until writable
    [ack] = frames_of(pb.eng.tcp.sent(pb.flow, send.payloads, 5, free=0, now=1.0))
    assert ack[TCP].ack == CLIENT_ISN + 1 + 5 and ack[TCP].window == 0
    # socket writable: the held tail goes first, then the window reopens
    assert pb.eng.tcp.tail_to_send(pb.flow) == b" world"
    [ack2] = frames_of(pb.eng.tcp.tail_sent(pb.flow, 6, free=100_000, now=1.1))
    assert ack2[TCP].ack == CLIENT_ISN + 1 + 11
    assert ack2[TCP].window << 7 * 0 + OUR_WSCALE >= 100_000 - (1 << OUR_WSCALE)


def test_window_advertised_is_socket_free_space_with_floor():
    pb = Playbook()
    pb.send("A")
    [send] = pb.send("PA", b"x" * 100)
    [ack] = frames_of(pb.eng.tcp.sent(pb.flow, send.payloads, 100, free=10, now=1.0))
    assert ack[TCP].window == MIN_WINDOW >> OUR_WSCALE


def test_window_reopens_on_writable_only_after_a_full_socket_not_after_the_syn_ack():
    """A SYN-ACK's window is unscaled, so at most 64 KiB: not a sign of a full socket.
    The first ACK carries the real window; an update of its own was a frame per connect."""
    pb = Playbook()
    assert not pb.eng.tcp.window_starved(pb.flow)
    pb.send("A")
    [send] = pb.send("PA", b"x" * 100)
    pb.eng.tcp.sent(pb.flow, send.payloads, 100, free=10, now=1.0)  # the socket is full
    assert pb.eng.tcp.window_starved(pb.flow)
    [update] = frames_of(pb.eng.tcp.writable(pb.flow, free=1 << 20, now=1.1))
    assert update[TCP].window << OUR_WSCALE >= (1 << 20) - (1 << OUR_WSCALE)


def test_data_arriving_while_tail_held_joins_the_tail_in_order():
    pb = Playbook()
    pb.send("A")
    [send] = pb.send("PA", b"abc")
    pb.eng.tcp.sent(pb.flow, send.payloads, 1, free=0, now=1.0)
    actions = pb.send("PA", b"def")
    assert not any(isinstance(a, TcpSend) for a in actions)
    assert pb.eng.tcp.tail_to_send(pb.flow) == b"bcdef"


def test_out_of_order_segment_gets_immediate_duplicate_ack():
    pb = Playbook()
    pb.send("A")
    actions = pb.eng.receive_frames([seg("PA", pb.seq + 100, pb.ack, b"later")], now=1.0)
    [dup] = frames_of(actions)
    assert dup[TCP].ack == pb.seq
    assert not any(isinstance(a, TcpSend) for a in actions)


def test_retransmitted_segment_is_acked_not_resent():
    pb = Playbook()
    pb.send("A")
    [send] = pb.send("PA", b"data")
    pb.eng.tcp.sent(pb.flow, send.payloads, 4, free=100_000, now=1.0)
    actions = pb.eng.receive_frames([seg("PA", pb.seq - 4, pb.ack, b"data")], now=1.2)
    assert not any(isinstance(a, TcpSend) for a in actions)
    [ack] = frames_of(actions)
    assert ack[TCP].ack == pb.seq


def test_host_data_is_framed_and_discarded_only_when_acked():
    pb = Playbook()
    pb.send("A", window=1000)  # 1000 << 7 bytes of window
    [frames] = [a for a in pb.peer_sends(b"A" * 3000) if isinstance(a, SendFrames)]
    segments = [decode(f) for f in frames.frames]
    assert b"".join(bytes(s[TCP].payload) for s in segments) == b"A" * 3000
    assert all(len(s[TCP].payload) <= 1460 for s in segments)
    assert segments[0][TCP].seq == pb.ack
    assert all(checksums_valid(s) for s in segments)
    pb.ack += 1460
    actions = pb.send("A")
    assert TcpDiscard(pb.flow, 1460) in actions
    assert TcpRead(pb.flow) not in actions  # the socket was drained: wait for readiness


def test_window_limited_read_resumes_when_namespace_acks():
    pb = Playbook()
    pb.send("A", window=10)  # 10 << 7 = 1280 bytes of window
    [frames] = [a for a in pb.peer_sends(b"E" * 3000) if isinstance(a, SendFrames)]
    assert sum(len(decode(f)[TCP].payload) for f in frames.frames) == 1280
    assert pb.eng.tcp.read_slots(pb.flow) == []  # window full
    pb.ack += 1280
    assert TcpRead(pb.flow) in pb.send("A", window=10)


def test_offload_builds_one_gso_frame_with_partial_checksum():
    pb = Playbook(offload=True)
    pb.send("A", window=65535)
    [frames] = [a for a in pb.peer_sends(b"B" * 20000) if isinstance(a, SendFrames)]
    [frame] = frames.frames
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = __import__("struct").unpack_from(
        "<BBHHHH", frame)
    assert (flags, gso_type, gso_size) == (1, 1, 1460)
    assert (csum_start, csum_offset) == (34, 16) and hdr_len == 54
    assert len(decode(frame)[TCP].payload) == 20000


def test_three_duplicate_acks_rewind_to_the_acked_offset():
    pb = Playbook()
    pb.send("A")
    pb.peer_sends(b"C" * 4000)
    for _ in range(2):
        assert TcpRead(pb.flow, rewind=True) not in pb.send("A")
    assert TcpRead(pb.flow, rewind=True) in pb.send("A")
    [frames] = [a for a in pb.peer_sends(b"C" * 4000) if isinstance(a, SendFrames)]
    assert decode(frames.frames[0])[TCP].seq == pb.ack


def test_timeout_retransmits_with_backoff_then_gives_up():
    pb = Playbook()
    pb.send("A")
    pb.peer_sends(b"D" * 100, now=2.0)
    deadline = pb.eng.next_deadline()
    assert deadline == pytest.approx(2.0 + RTO_INITIAL)
    assert TcpRead(pb.flow, rewind=True) in pb.eng.handle_deadline(deadline)
    for _ in range(20):
        actions = pb.eng.handle_deadline(pb.eng.next_deadline())
        if any(isinstance(a, CloseSocket) for a in actions):
            break
    else:
        pytest.fail("connection never given up")
    assert CloseSocket(pb.flow, reset=True) in actions


def test_half_close_both_ways():
    pb = Playbook()
    pb.send("A")
    [send, ] = pb.send("FA", b"bye")
    actions = pb.eng.tcp.sent(pb.flow, send.payloads, 3, free=100_000, now=1.0)
    assert TcpShutdown(pb.flow) in actions
    [ack] = frames_of(actions)
    assert ack[TCP].ack == pb.seq  # FIN acknowledged
    # namespace still receives after its FIN
    [frames] = [a for a in pb.peer_sends(b"reply") if isinstance(a, SendFrames)]
    assert bytes(decode(frames.frames[0])[TCP].payload) == b"reply"
    pb.ack += 5
    pb.send("A")
    [fin] = frames_of(pb.eng.tcp.eof(pb.flow, now=2.0))
    assert "F" in fin[TCP].flags and fin[TCP].seq == pb.ack
    pb.ack += 1
    actions = pb.send("A", now=2.1)
    assert CloseSocket(pb.flow, reset=False) in actions


def test_reset_from_namespace_resets_socket():
    pb = Playbook()
    actions = pb.eng.receive_frames([seg("R", pb.seq)], now=1.0)
    assert actions == [CloseSocket(pb.flow, reset=True)]


def test_segment_for_unknown_connection_gets_rst():
    eng = engine()
    [rst] = frames_of(eng.receive_frames([seg("A", 5, ack=777)], now=0.0))
    assert rst[TCP].flags == "R" and rst[TCP].seq == 777


def test_ipv6_connection():
    pb = Playbook(v6=True)
    assert pb.open.remote == (REMOTE6, 80) and pb.open.family == 6
    assert pb.synack[IPv6].src == REMOTE6 and checksums_valid(pb.synack)


def test_inbound_connection_handshake_keeps_client_address():
    eng = engine()
    flow = eng.new_flow_id()
    [syn] = frames_of(eng.tcp.accepted(flow, ("192.0.2.50", 51000), 8080, now=0.0))
    assert syn[IP].src == "192.0.2.50" and syn[IP].dst == NS4
    assert syn[TCP].sport == 51000 and syn[TCP].dport == 8080 and syn[TCP].flags == "S"
    synack = wire(Ether(src=NS_MAC, dst=OUR_MAC) / IP(src=NS4, dst="192.0.2.50")
                  / TCP(sport=8080, dport=51000, flags="SA", seq=5000, ack=syn[TCP].seq + 1,
                        window=60000, options=[("MSS", 1460), ("WScale", 7)]))
    actions = eng.receive_frames([synack], now=0.1)
    [ack] = frames_of(actions)
    assert ack[TCP].flags == "A" and ack[TCP].ack == 5001
    assert TcpRead(flow) in actions


def test_table_full_of_established_connections_refuses_new_ones(monkeypatch):
    monkeypatch.setattr("pasta_net.core.tcp.MAX_CONNECTIONS", 1)
    eng = engine()
    [open_] = eng.receive_frames([seg("S", 1, sport=1)], now=0.0)
    eng.tcp.connected(open_.flow, 50_000, now=0.0)
    [rst] = frames_of(eng.receive_frames([seg("S", 1, sport=2)], now=0.0))
    assert "R" in rst[TCP].flags
    assert MAX_CONNECTIONS >= 65536


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["S", "A", "PA", "FA", "R", "SA", "F", ""]),
                          st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                          st.binary(max_size=64), st.integers(0, 65535)), max_size=12))
def test_no_sequence_of_well_formed_segments_raises(segments):
    eng = engine()
    now = 0.0
    for flags, s, a, payload, window in segments:
        now += 0.5
        actions = eng.receive_frames([seg(flags, s, a, payload, window)], now)
        for action in actions:
            if isinstance(action, OpenSocket):
                eng.tcp.connected(action.flow, 50_000, now)
            if isinstance(action, TcpSend):
                eng.tcp.sent(action.flow, action.payloads, len(action.payloads) and 1, 0, now)
        eng.handle_deadline(now + 100)


def test_inbound_connection_goes_to_the_address_the_namespace_uses():
    """A namespace that configured itself by SLAAC is reached at its own address."""
    eng = engine()
    slaac = "2001:db8:1:0:1c:2dff:fe00:1"
    eng.receive_frames([wire(Ether(src=NS_MAC, dst=OUR_MAC) / IPv6(src=slaac, dst=REMOTE6)
                             / TCP(sport=1, dport=2, flags="R"))], now=0.0)
    [syn] = frames_of(eng.tcp.accepted(eng.new_flow_id(), ("2001:db8:9::9", 5), 80, now=0.1))
    assert syn[IPv6].dst == slaac
    [syn4] = frames_of(eng.tcp.accepted(eng.new_flow_id(), ("192.0.2.9", 5), 80, now=0.1))
    assert syn4[IP].dst == NS4  # nothing seen yet over IPv4: the planned address


# ----------------------------------------- found by review: liveness and handshakes --
def test_keepalive_and_zero_window_probes_from_the_namespace_are_acked():
    """Linux probes with no data and one below what we expect (Go does every 15 s by
    default); unanswered, the namespace resets the idle connection after 9 probes."""
    pb = Playbook()
    pb.send("A")
    [ack] = frames_of(pb.eng.receive_frames([seg("A", pb.seq - 1, pb.ack)], now=20.0))
    assert ack[TCP].flags == "A" and ack[TCP].ack == pb.seq


def test_an_upload_keeps_a_half_closed_connection_alive():
    """The peer closed its side; the namespace goes on sending for 3 minutes (more than
    the 60 s that fit a connection closed both ways): nothing is reset."""
    pb = Playbook()
    pb.send("A")
    pb.eng.tcp.eof(pb.flow, now=1.0)  # the peer's FIN: ours goes to the namespace
    pb.ack += 1
    for second in range(2, 180):
        [send] = pb.send("PA", b"x" * 100, now=float(second))
        actions = pb.eng.tcp.sent(pb.flow, send.payloads, 100, -1, now=float(second))
        actions += pb.eng.handle_deadline(float(second) + 0.5)
        assert not any(f[TCP].flags & 0x04 for f in frames_of(actions)), f"reset at {second}"


def test_a_half_close_from_the_namespace_waits_for_a_slow_answer():
    """``shutdown(SHUT_WR)`` then a 5-minute wait for the reply, as a batch job's client
    does: Linux keeps such a socket; so do we (60 s is for both sides closed)."""
    pb = Playbook()
    pb.send("A")
    pb.send("FA", now=2.0)
    assert frames_of(pb.eng.handle_deadline(300.0)) == []
    [frame] = frames_of(pb.peer_sends(b"the answer", now=300.0))
    assert bytes(frame[TCP].payload) == b"the answer"


def test_window_is_not_scaled_when_the_namespace_does_not_scale():
    """Our inbound SYN offers a scale; a SYN-ACK without one means neither side scales
    (RFC 7323): windows in our ACKs are then plain bytes, not 1/512 of them."""
    eng = engine()
    [syn] = frames_of(eng.tcp.accepted(7, ("192.0.2.50", 51000), 8080, now=0.0))
    synack = wire(Ether(src=NS_MAC, dst=OUR_MAC) / IP(src=NS4, dst="192.0.2.50")
                  / TCP(sport=8080, dport=51000, flags="SA", seq=5000, ack=syn[TCP].seq + 1,
                        window=60000, options=[("MSS", 1460)]))
    [ack] = frames_of(eng.receive_frames([synack], now=0.1))
    assert ack[TCP].window >= 4096, "unscaled: at least a few KiB"


def test_a_lost_ack_of_the_namespaces_syn_ack_is_sent_again():
    eng = engine()
    [syn] = frames_of(eng.tcp.accepted(7, ("192.0.2.50", 51000), 8080, now=0.0))
    synack = wire(Ether(src=NS_MAC, dst=OUR_MAC) / IP(src=NS4, dst="192.0.2.50")
                  / TCP(sport=8080, dport=51000, flags="SA", seq=5000, ack=syn[TCP].seq + 1,
                        window=60000, options=[("MSS", 1460), ("WScale", 7)]))
    eng.receive_frames([synack], now=0.1)
    [again] = frames_of(eng.receive_frames([synack], now=1.1))  # its retransmission
    assert again[TCP].flags == "A" and again[TCP].ack == 5001


def test_a_lost_syn_ack_is_sent_again_after_a_server_that_spoke_first():
    """Our SYN-ACK was lost and the host's server sent its banner (SMTP, MySQL) at once:
    the namespace's SYN again gets the SYN-ACK, then the banner again from its start."""
    pb = Playbook()
    [banner] = frames_of(pb.peer_sends(b"220 ready\r\n", now=0.02))
    assert bytes(banner[TCP].payload) == b"220 ready\r\n"
    actions = pb.eng.receive_frames([seg("S", CLIENT_ISN, options=[("MSS", 1460),
                                                                   ("WScale", 7)])], now=1.0)
    [synack] = frames_of(actions)
    assert synack[TCP].flags == "SA" and synack[TCP].seq == pb.isn
    assert TcpRead(pb.flow, rewind=True) in actions
    [again] = frames_of(pb.peer_sends(b"220 ready\r\n", now=1.0))
    assert again[TCP].seq == pb.isn + 1 and bytes(again[TCP].payload) == b"220 ready\r\n"


def test_unacked_is_what_a_peek_from_the_head_must_skip():
    """Kernels before 6.9 have no SO_PEEK_OFF on TCP: the hub peeks from the head of the
    socket's queue and skips what the namespace has but has not acknowledged."""
    pb = Playbook()
    pb.send("A")
    assert pb.eng.tcp.unacked(pb.flow) == 0
    pb.peer_sends(b"x" * 3000)
    assert pb.eng.tcp.unacked(pb.flow) == 3000
    pb.ack += 1000
    pb.send("A")
    assert pb.eng.tcp.unacked(pb.flow) == 2000
    pb.eng.tcp.eof(pb.flow, now=1.0)  # the peer's FIN: ours is sent, it is no byte
    assert pb.eng.tcp.unacked(pb.flow) == 2000


def test_inbound_connection_goes_to_the_forwards_target_address():
    """``-t 8080:10.0.0.5/80``: the tap path too opens the connection at 10.0.0.5 (not
    only the splice); a target of the other family cannot serve this client."""
    eng = engine()
    target = bytes([10, 0, 0, 5])
    [syn] = frames_of(eng.tcp.accepted(7, ("192.0.2.50", 51000), 80, now=0.0,
                                       to_addr=target))
    assert (syn[IP].dst, syn[TCP].dport) == ("10.0.0.5", 80)
    actions = eng.tcp.accepted(8, ("2001:db8:9::9", 51000), 80, now=0.0, to_addr=target)
    assert actions == [CloseSocket(8, reset=True)]
