"""UDP flows through the engine: datagrams from the namespace in, socket actions out;
datagrams and errors from host sockets in, frames out.

Frames are built and decoded with scapy; the host side is simulated by calling what the
shell calls (``datagram_received``, ``socket_failed``, ``udp.from_listener``,
``udp.listener_error``, ``handle_deadline``).
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether

from pasta_net.core.actions import CloseSocket, OpenSocket, SendDatagram, SendFrames, SocketKind
from pasta_net.core.mapping import AddressMap
from tests.core.wire import (
    GW4,
    GW6,
    NS4,
    NS6,
    NS_MAC,
    OUR_MAC,
    REMOTE4,
    REMOTE6,
    checksums_valid,
    decode,
    engine,
    packed,
    wire,
)

TIMEOUT = 180.0
DNS_FORWARD4, DNS_FORWARD6 = "169.254.1.1", "fd00::53"
RESOLVER4, RESOLVER6 = "203.0.113.53", "2001:db8:2::53"
GUEST_ADDR4, GUEST_ADDR6 = "169.254.1.2", "fd00::2"
LISTENER = 1000
"""Engine id of a ``-u`` listener socket (the shell allocates it with new_flow_id)."""

PEER = {4: REMOTE4, 6: REMOTE6}
NS = {4: NS4, 6: NS6}
families = pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])


def datagram(payload: bytes = b"hello", sport: int = 40000, dport: int = 7, version: int = 4,
             src: str | None = None, dst: str | None = None) -> memoryview:
    ip_layer = IP if version == 4 else IPv6
    ip = ip_layer(src=src or NS[version], dst=dst or PEER[version])
    return wire(Ether(src=NS_MAC, dst=OUR_MAC) / ip / UDP(sport=sport, dport=dport) / payload)


def frames_of(actions) -> list[Ether]:
    return [decode(f) for a in actions if isinstance(a, SendFrames) for f in a.frames]


def mapped_engine(**config):
    """An engine with every mapping of upstream pasta configured."""
    mapping = AddressMap(
        host_loopback=(packed(GW4), packed(GW6)),
        guest_addr=(packed(GUEST_ADDR4), packed(GUEST_ADDR6)),
        host_addr4=packed(NS4), host_addr6=packed(NS6),
        dns_forward=(packed(DNS_FORWARD4), packed(DNS_FORWARD6)),
        dns_host4=packed(RESOLVER4), dns_host6=packed(RESOLVER6))
    return engine(mapping=mapping, **config)


class Flow:
    """One outbound flow: the namespace's first datagram has opened its socket."""

    def __init__(self, eng=None, version: int = 4, **datagram_fields) -> None:
        self.eng = eng or engine()
        self.version = version
        self.fields = datagram_fields
        self.open, self.send = self.eng.receive_frames(
            [datagram(version=version, **datagram_fields)], now=0.0)
        self.id = self.open.flow

    def reply(self, payload: bytes, now: float = 0.1) -> Ether:
        """The peer answers on the flow's host socket; the frame the namespace gets."""
        [frame] = frames_of(self.eng.datagram_received(self.id, payload, self.open.remote, now))
        return frame

    def error(self, err: int, now: float = 0.1) -> list[Ether]:
        return frames_of(self.eng.socket_failed(self.id, err, now))


# ----------------------------------------------------------------- outbound --
@families
def test_first_datagram_opens_a_connected_socket_on_the_same_port(version) -> None:
    flow = Flow(version=version, sport=40000, dport=7)
    assert isinstance(flow.open, OpenSocket) and flow.open.kind is SocketKind.UDP
    assert flow.open.family == version
    assert flow.open.remote == (PEER[version], 7)
    assert flow.open.local == ("", 40000), "the namespace's port, if the host has it free"
    assert flow.send == SendDatagram(flow.id, None, flow.send.payloads), "on the connected socket"
    assert bytes(flow.send.payloads[0]) == b"hello"


def test_one_flow_per_four_tuple() -> None:
    flow = Flow()
    [again] = flow.eng.receive_frames([datagram(b"again")], now=1.0)
    assert again == SendDatagram(flow.id, None, again.payloads)
    other_port, _ = flow.eng.receive_frames([datagram(sport=40001)], now=1.0)
    other_peer, _ = flow.eng.receive_frames([datagram(dport=8)], now=1.0)
    assert len({flow.id, other_port.flow, other_peer.flow}) == 3
    assert len(flow.eng.udp) == 3


def sends(actions) -> list[tuple[int, list[bytes]]]:
    return [(a.flow, [bytes(p) for p in a.payloads]) for a in actions
            if isinstance(a, SendDatagram)]


@families
def test_datagrams_of_a_flow_in_one_batch_become_one_segmentable_send(version) -> None:
    """Each as long as the first, the last maybe shorter: one UDP GSO send's worth."""
    flow = Flow(version=version)
    payloads = [bytes([n]) * 1400 for n in range(5)] + [b"end"]
    actions = flow.eng.receive_frames([datagram(p, version=version) for p in payloads], 1.0)
    assert sends(actions) == [(flow.id, payloads)]


def test_a_batch_splits_where_sizes_or_flows_change() -> None:
    flow = Flow()
    other = Flow(flow.eng, sport=40001)
    big, small = b"b" * 1000, b"s" * 10
    batch = [big, big, small, big, small, small]
    actions = flow.eng.receive_frames([datagram(p) for p in batch], 1.0)
    assert sends(actions) == [(flow.id, [big, big, small]), (flow.id, [big, small]),
                              (flow.id, [small])]
    mixed = [datagram(big), datagram(big, sport=40001), datagram(big)]
    assert sends(flow.eng.receive_frames(mixed, 2.0)) == [
        (flow.id, [big]), (other.id, [big]), (flow.id, [big])]


def test_a_send_holds_no_more_than_one_ip_packet_of_payload() -> None:
    """46 datagrams of 1400 bytes fit under the 16-bit IP length before segmentation; and
    never more than the kernel's 64 segments."""
    flow = Flow()
    actions = flow.eng.receive_frames([datagram(b"x" * 1400)] * 50, 1.0)
    assert [len(payloads) for _, payloads in sends(actions)] == [46, 4]
    actions = flow.eng.receive_frames([datagram(b"x" * 100)] * 70, 2.0)
    assert [len(payloads) for _, payloads in sends(actions)] == [64, 6]


def test_empty_datagrams_are_sent_alone() -> None:
    flow = Flow()
    actions = flow.eng.receive_frames([datagram(b"")] * 2 + [datagram(b"x")] * 2, 1.0)
    assert sends(actions) == [(flow.id, [b""]), (flow.id, [b""]), (flow.id, [b"x", b"x"])]


@families
def test_reply_comes_from_the_peer_to_the_namespace_port(version) -> None:
    flow = Flow(version=version, sport=40000, dport=7)
    reply = flow.reply(b"world")
    ip = reply[IP] if version == 4 else reply[IPv6]
    assert (reply[Ether].src, reply[Ether].dst) == (OUR_MAC, NS_MAC)
    assert (ip.src, ip.dst) == (PEER[version], NS[version])
    assert (reply[UDP].sport, reply[UDP].dport) == (7, 40000)
    assert bytes(reply[UDP].payload) == b"world"
    assert checksums_valid(reply)


@families
def test_largest_datagrams_pass_whole(version) -> None:
    """What the namespace's MTU lets it send, and whatever a host socket can receive."""
    sent = bytes(range(256)) * 255 + b"tail"
    flow = Flow(version=version, payload=sent)
    assert bytes(flow.send.payloads[0]) == sent
    largest = bytes(65535 - (20 if version == 4 else 0) - 8)
    reply = flow.reply(largest)
    assert len(reply[UDP].payload) == len(largest) and checksums_valid(reply)


@given(payload=st.binary(max_size=3000), sport=st.integers(1, 65535),
       dport=st.integers(1, 65535).filter(lambda port: port not in (67, 547)),  # DHCP(v6)
       version=st.sampled_from([4, 6]))
def test_any_datagram_round_trips(payload: bytes, sport: int, dport: int, version: int) -> None:
    flow = Flow(version=version, payload=payload, sport=sport, dport=dport)
    assert bytes(flow.send.payloads[0]) == payload
    reply = flow.reply(payload[::-1])
    assert bytes(reply[UDP].payload) == payload[::-1]
    assert (reply[UDP].sport, reply[UDP].dport) == (dport, sport)
    assert checksums_valid(reply)


def test_datagram_for_a_closed_flow_is_dropped_and_counted() -> None:
    eng = engine()
    assert eng.datagram_received(77, b"late", (REMOTE4, 7), now=0.0) == []
    assert eng.drops["stale"] == 1


def test_udp_disabled_opens_nothing() -> None:
    eng = engine(udp=False)
    assert eng.receive_frames([datagram()], now=0.0) == []
    assert eng.drops["disabled"] == 1


def test_bad_udp_length_is_dropped() -> None:
    frame = bytearray(datagram())
    frame[14 + 20 + 4 : 14 + 20 + 6] = (4000).to_bytes(2, "big")  # longer than the packet
    eng = engine()
    assert eng.receive_frames([memoryview(bytes(frame))], now=0.0) == []
    assert eng.drops["bad-header"] == 1


# ------------------------------------------------------------------- expiry --
def test_idle_flow_expires_and_closes_its_socket() -> None:
    flow = Flow()
    assert flow.eng.next_deadline() == TIMEOUT
    assert flow.eng.handle_deadline(TIMEOUT - 1) == []
    assert flow.eng.handle_deadline(TIMEOUT) == [CloseSocket(flow.id)]
    assert len(flow.eng.udp) == 0
    reopen, _ = flow.eng.receive_frames([datagram()], now=TIMEOUT + 1)
    assert isinstance(reopen, OpenSocket) and reopen.flow != flow.id


def test_traffic_either_way_keeps_the_flow() -> None:
    flow = Flow()
    flow.eng.receive_frames([datagram()], now=100.0)  # from the namespace
    flow.reply(b"x", now=200.0)  # from the peer
    assert flow.eng.handle_deadline(TIMEOUT) == []
    assert flow.eng.handle_deadline(279.0) == []
    assert flow.eng.handle_deadline(380.0) == [CloseSocket(flow.id)]


def test_timeout_is_configurable() -> None:
    flow = Flow(engine(udp_timeout=2.0))
    assert flow.eng.handle_deadline(2.0) == [CloseSocket(flow.id)]


# ------------------------------------------------------------------- errors --
def icmp_checksums_valid(frame: Ether, layer: type) -> bool:
    """The outer IP and ICMP checksums, recomputed by scapy, match. (The quoted UDP
    header's checksum is 0 on purpose, so wire.checksums_valid does not apply.)"""
    rebuilt = frame.copy()
    for field_owner in (rebuilt.getlayer(IP), rebuilt[layer]):
        if field_owner is not None:
            for name in ("chksum", "cksum"):
                if name in field_owner.fields:
                    delattr(field_owner, name)
    return bytes(Ether(bytes(rebuilt))) == bytes(frame)


@pytest.mark.parametrize(("err", "code"), [
    (errno.ECONNREFUSED, 3), (errno.EHOSTUNREACH, 1), (errno.ENETUNREACH, 0)])
def test_icmp_error_is_reflected_with_its_code(err: int, code: int) -> None:
    flow = Flow(sport=40000, dport=7)
    [icmp] = flow.error(err)
    assert (icmp[IP].src, icmp[IP].dst) == (REMOTE4, NS4)
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, code)
    quoted = icmp[ICMP].payload
    assert (quoted.src, quoted.dst) == (NS4, REMOTE4)
    assert (quoted[UDPerror].sport, quoted[UDPerror].dport) == (40000, 7)
    assert icmp_checksums_valid(icmp, ICMP)
    assert len(flow.eng.udp) == 1, "the flow stays: the peer may come back"


@pytest.mark.parametrize(("err", "code"), [
    (errno.ECONNREFUSED, 4), (errno.EHOSTUNREACH, 3), (errno.ENETUNREACH, 0)])
def test_icmpv6_error_is_reflected_with_its_code(err: int, code: int) -> None:
    flow = Flow(version=6, sport=40000, dport=7)
    [icmp] = flow.error(err)
    assert (icmp[IPv6].src, icmp[IPv6].dst) == (REMOTE6, NS6)
    assert (icmp[ICMPv6DestUnreach].type, icmp[ICMPv6DestUnreach].code) == (1, code)
    quoted = icmp[ICMPv6DestUnreach].payload
    assert (quoted.src, quoted.dst) == (NS6, REMOTE6)
    assert (quoted[UDPerror].sport, quoted[UDPerror].dport) == (40000, 7)
    assert icmp_checksums_valid(icmp, ICMPv6DestUnreach)


def test_other_errors_are_not_reflected() -> None:
    assert Flow().error(errno.EMSGSIZE) == []


# ------------------------------------------------------------------ mapping --
@pytest.mark.parametrize(("version", "forward", "resolver"), [
    (4, DNS_FORWARD4, RESOLVER4), (6, DNS_FORWARD6, RESOLVER6)], ids=["v4", "v6"])
def test_dns_forward_goes_to_the_resolver_and_answers_from_the_forward_address(
        version: int, forward: str, resolver: str) -> None:
    flow = Flow(mapped_engine(), version=version, dst=forward, dport=53)
    assert flow.open.remote == (resolver, 53)
    reply = flow.reply(b"answer")
    ip = reply[IP] if version == 4 else reply[IPv6]
    assert (ip.src, reply[UDP].sport) == (forward, 53)


def test_dns_forward_address_on_another_port_is_not_forwarded() -> None:
    flow = Flow(mapped_engine(), dst=DNS_FORWARD4, dport=5353)
    assert flow.open.remote == (DNS_FORWARD4, 5353)


@pytest.mark.parametrize(("version", "gateway", "loopback"), [
    (4, GW4, "127.0.0.1"), (6, GW6, "::1")], ids=["v4", "v6"])
def test_gateway_means_host_loopback(version: int, gateway: str, loopback: str) -> None:
    flow = Flow(mapped_engine(), version=version, dst=gateway, dport=8000)
    assert flow.open.remote == (loopback, 8000)
    reply = flow.reply(b"from the host")
    assert (reply[IP] if version == 4 else reply[IPv6]).src == gateway


@pytest.mark.parametrize(("version", "mapped", "host"), [
    (4, GUEST_ADDR4, NS4), (6, GUEST_ADDR6, NS6)], ids=["v4", "v6"])
def test_guest_addr_means_the_hosts_own_address(version: int, mapped: str, host: str) -> None:
    flow = Flow(mapped_engine(), version=version, dst=mapped, dport=8000)
    assert flow.open.remote == (host, 8000)
    assert (flow.reply(b"x")[IP] if version == 4 else flow.reply(b"x")[IPv6]).src == mapped


def test_without_mapping_the_gateway_is_just_the_gateway() -> None:
    assert Flow(dst=GW4, dport=8000).open.remote == (GW4, 8000)


# ------------------------------------------------------------------ inbound --
def inbound(eng, client: tuple[str, int], data: bytes = b"request", now: float = 0.0,
            ns_port: int = 5301) -> list[Ether]:
    actions: list = []
    eng.udp.from_listener(LISTENER, ns_port, data, client, now, actions)
    return frames_of(actions)


@families
def test_inbound_datagram_shows_the_real_client_and_the_reply_leaves_by_the_listener(
        version) -> None:
    eng = engine()
    client = (PEER[version], 33333)
    [frame] = inbound(eng, client)
    ip = frame[IP] if version == 4 else frame[IPv6]
    assert (ip.src, ip.dst) == (PEER[version], NS[version])
    assert (frame[UDP].sport, frame[UDP].dport) == (33333, 5301)
    assert checksums_valid(frame)
    [reply] = eng.receive_frames(
        [datagram(b"response", sport=5301, dport=33333, version=version)], now=1.0)
    assert reply == SendDatagram(LISTENER, client, reply.payloads)


def test_inbound_client_mapped_to_ipv4_keeps_its_ipv4_address() -> None:
    """A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d."""
    [frame] = inbound(engine(), (f"::ffff:{REMOTE4}", 33333))
    assert frame[IP].src == REMOTE4


@pytest.mark.parametrize(("client", "seen"), [
    ("127.0.0.1", GW4), ("::1", GW6), (NS4, GUEST_ADDR4), (NS6, GUEST_ADDR6)])
def test_inbound_from_the_host_itself_appears_from_the_mapped_address(client: str,
                                                                       seen: str) -> None:
    [frame] = inbound(mapped_engine(), (client, 33333))
    assert (frame[IP] if ":" not in seen else frame[IPv6]).src == seen


def test_inbound_from_loopback_without_mapping_is_dropped() -> None:
    eng = engine()
    assert inbound(eng, ("127.0.0.1", 33333)) == []
    assert eng.drops["unmappable"] == 1


def test_inbound_flow_expires_without_closing_the_listener() -> None:
    eng = engine()
    inbound(eng, (REMOTE4, 33333))
    assert eng.handle_deadline(TIMEOUT) == []
    assert len(eng.udp) == 0
    assert len(inbound(eng, (REMOTE4, 33333), now=TIMEOUT + 1)) == 1


def test_listener_error_reaches_the_clients_flow() -> None:
    eng = engine()
    inbound(eng, (REMOTE4, 33333))
    actions: list = []
    eng.udp.listener_error(LISTENER, (REMOTE4, 33333), errno.ECONNREFUSED, actions)
    [icmp] = frames_of(actions)
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 3)
    assert (icmp[UDPerror].sport, icmp[UDPerror].dport) == (5301, 33333)
    unknown: list = []
    eng.udp.listener_error(LISTENER, (REMOTE4, 44444), errno.ECONNREFUSED, unknown)
    assert unknown == []


def test_client_the_namespace_already_talks_to_shares_that_flow() -> None:
    """WireGuard-style peers, both on port 51820 with ``-u 51820``: the namespace's own
    flow to the client also carries what the client sends to the listener. Two flows
    under one key made the second expiry fail, and that took every flow down."""
    eng = engine()
    [opened] = [a for a in eng.receive_frames(
        [datagram(b"handshake", sport=5301, dport=33333)], now=0.0) if isinstance(a, OpenSocket)]
    [frame] = inbound(eng, (REMOTE4, 33333), b"handshake too", now=1.0)
    assert (frame[IP].src, frame[UDP].sport, frame[UDP].dport) == (REMOTE4, 33333, 5301)
    assert len(eng.udp) == 1
    assert eng.handle_deadline(TIMEOUT + 2) == [CloseSocket(opened.flow)]
    assert len(eng.udp) == 0 and eng.drops["internal-error"] == 0


def test_a_failing_deadline_is_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """One flow's timer fault must not end the others: the hub would die with it."""
    eng = engine()
    eng.receive_frames([datagram(sport=40001)], now=0.0)
    eng.receive_frames([datagram(sport=40002)], now=0.0)
    calls = []

    def deadline(flow_id: int, now: float, actions: list) -> None:
        calls.append(flow_id)
        if len(calls) == 1:
            raise KeyError(flow_id)

    monkeypatch.setattr(eng.udp, "deadline", deadline)
    eng.handle_deadline(TIMEOUT)
    assert len(calls) == 2 and eng.drops["internal-error"] == 1


def test_inbound_datagram_goes_to_the_forwards_target_address() -> None:
    actions: list = []
    eng = engine()
    eng.udp.from_listener(LISTENER, 53, b"query", (REMOTE4, 33333), 0.0, actions,
                          bytes([10, 0, 0, 5]))
    [frame] = frames_of(actions)
    assert (frame[IP].dst, frame[UDP].dport) == ("10.0.0.5", 53)
