"""ARP and ICMP echo through the engine: real frames in, actions out."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether

from pasta_net.core.actions import CloseSocket, OpenSocket, SendDatagram, SendFrames, SocketKind
from tests.core.wire import (
    GW4,
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


def arp_request(target: str, sender: str = NS4) -> memoryview:
    return wire(Ether(src=NS_MAC, dst="ff:ff:ff:ff:ff:ff")
                / ARP(op=1, hwsrc=NS_MAC, psrc=sender, pdst=target))


def test_arp_request_for_gateway_answered_with_our_mac():
    [action] = engine().receive_frames([arp_request(GW4)], now=0.0)
    assert isinstance(action, SendFrames)
    reply = decode(action.frames[0])
    assert reply[Ether].dst == NS_MAC and reply[Ether].src == OUR_MAC
    assert reply[ARP].op == 2
    assert (reply[ARP].hwsrc, reply[ARP].psrc) == (OUR_MAC, GW4)
    assert (reply[ARP].hwdst, reply[ARP].pdst) == (NS_MAC, NS4)


def test_arp_for_any_other_address_is_answered():
    [action] = engine().receive_frames([arp_request("198.51.100.77")], now=0.0)
    assert decode(action.frames[0])[ARP].psrc == "198.51.100.77"


def test_arp_for_namespace_own_address_gets_no_answer():
    # duplicate address detection must not find a conflict
    assert engine().receive_frames([arp_request(NS4, sender="0.0.0.0")], now=0.0) == []


def test_address_probes_are_answered_only_for_the_gateway():
    """RFC 5227 probes (sender 0.0.0.0): a client trying an IPv4 link-local or a static
    address must not find it taken; the gateway is taken."""
    eng = engine()
    assert eng.receive_frames([arp_request("169.254.3.4", sender="0.0.0.0")], now=0.0) == []
    [reply] = eng.receive_frames([arp_request(GW4, sender="0.0.0.0")], now=0.0)
    assert decode(reply.frames[0])[ARP].op == 2


def test_truncated_arp_is_dropped_and_counted():
    eng = engine()
    assert eng.receive_frames([arp_request(GW4)[:30]], now=0.0) == []
    assert eng.drops["truncated"] == 1


def echo4(ident: int, seq: int = 1) -> memoryview:
    return wire(Ether(src=NS_MAC, dst=OUR_MAC) / IP(src=NS4, dst=REMOTE4)
                / ICMP(type=8, id=ident, seq=seq) / b"ping-payload")


def test_echo_request_opens_one_ping_socket_per_id_and_sends():
    eng = engine()
    open_, send = eng.receive_frames([echo4(0x1234)], now=0.0)
    assert isinstance(open_, OpenSocket) and open_.kind is SocketKind.PING
    assert open_.remote == (REMOTE4, 0)
    assert isinstance(send, SendDatagram) and send.flow == open_.flow
    assert ICMP(bytes(send.payloads[0])).id == 0x1234
    # same id again: same flow, no new socket
    [again] = eng.receive_frames([echo4(0x1234, seq=2)], now=1.0)
    assert isinstance(again, SendDatagram) and again.flow == open_.flow
    # another id: its own flow
    other_open, _ = eng.receive_frames([echo4(0x9999)], now=1.0)
    assert other_open.flow != open_.flow


def test_echo_reply_gets_namespace_id_back_and_valid_checksum():
    eng = engine()
    open_, _ = eng.receive_frames([echo4(0x1234, seq=7)], now=0.0)
    # the kernel's ping socket answers with its own id (say 0x4242)
    from_socket = bytes(ICMP(type=0, id=0x4242, seq=7) / b"ping-payload")
    [frames] = eng.datagram_received(open_.flow, from_socket, (REMOTE4, 0), now=0.1)
    reply = decode(frames.frames[0])
    assert reply[IP].src == REMOTE4 and reply[IP].dst == NS4
    assert reply[ICMP].type == 0 and reply[ICMP].id == 0x1234 and reply[ICMP].seq == 7
    assert checksums_valid(reply)


def test_icmpv6_echo_round_trip():
    eng = engine()
    request = wire(Ether(src=NS_MAC, dst=OUR_MAC) / IPv6(src=NS6, dst=REMOTE6)
                   / ICMPv6EchoRequest(id=77, seq=3, data=b"v6"))
    open_, _send = eng.receive_frames([request], now=0.0)
    assert open_.family == 6 and open_.remote == (REMOTE6, 0)
    from_socket = bytes(ICMPv6EchoReply(id=5, seq=3, data=b"v6"))
    [frames] = eng.datagram_received(open_.flow, from_socket, (REMOTE6, 0), now=0.1)
    reply = decode(frames.frames[0])
    assert reply[IPv6].src == REMOTE6 and reply[ICMPv6EchoReply].id == 77
    assert checksums_valid(reply)


def test_ping_flow_expires_and_closes_its_socket():
    eng = engine()
    open_, _ = eng.receive_frames([echo4(1)], now=0.0)
    assert eng.next_deadline() == 60.0
    assert eng.handle_deadline(59.0) == []
    assert CloseSocket(open_.flow) in eng.handle_deadline(60.0)


def test_icmp_disabled_drops():
    eng = engine(icmp=False)
    assert eng.receive_frames([echo4(1)], now=0.0) == []
    assert eng.drops["disabled"] == 1
