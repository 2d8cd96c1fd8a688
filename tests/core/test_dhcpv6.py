"""DHCPv6 server playbooks: scapy-built client messages in, replies decoded by scapy."""

from __future__ import annotations

import pytest
from scapy.layers.dhcp6 import (
    DHCP6,
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_Decline,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientFQDN,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIA_PD,
    DHCP6OptIA_TA,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
    DHCP6OptPref,
    DHCP6OptRapidCommit,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from pasta_net.core import dhcpv6
from pasta_net.core.frames import (
    VNET_HDR_LEN,
    IpPacket,
    MalformedFrame,
    UdpDatagram,
    parse_ethernet,
    parse_ip,
    parse_udp,
)
from tests.core import wire

NS_LL = "fe80::2"
DNS6 = "2001:db8::53"
PLAN = wire.plan(dns6=(wire.packed(DNS6),), search=("eng.example.com", "example.com"),
                 fqdn="box.example.com")
CLIENT_ID = DHCP6OptClientId(duid=DUID_LL(lladdr=wire.NS_MAC))
OUR_ID = DHCP6OptServerId(duid=DUID_LL(lladdr=wire.OUR_MAC))
OTHER_ID = DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:99"))
INFINITY = 0xFFFFFFFF


def client(message: Packet, *options: Packet, src: str = NS_LL,
           dst: str = "ff02::1:2") -> Ether:
    """A client message as the namespace sends it: from link-local, to ff02::1:2."""
    body = message
    for option in options:
        body = body / option
    return (Ether(src=wire.NS_MAC, dst="33:33:00:01:00:02") / IPv6(src=src, dst=dst)
            / UDP(sport=546, dport=547) / body)


def serve(message: Ether | bytes, plan: dhcpv6.AddressPlan = PLAN) -> list[Ether]:
    """Run a client frame through the server; decode and check every reply."""
    _dst, src_mac, ethertype, payload = parse_ethernet(wire.wire(message))
    packet = parse_ip(ethertype, payload)
    frames = dhcpv6.handle_dhcpv6(src_mac, packet, parse_udp(packet.l4), plan)
    replies = []
    for frame in frames:
        assert frame[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
        reply = wire.decode(frame)
        assert wire.checksums_valid(reply)
        assert (reply.src, reply.dst) == (wire.OUR_MAC, wire.NS_MAC)
        assert (reply[IPv6].src, reply[IPv6].dst) == ("fe80::1", packet_src(message))
        assert (reply[UDP].sport, reply[UDP].dport) == (547, 546)
        assert reply[UDP].payload.trid == Ether(bytes(message))[UDP].payload.trid
        assert bytes(reply[DHCP6OptServerId].duid) == bytes(OUR_ID.duid)
        replies.append(reply)
    return replies


def packet_src(message: Ether | bytes) -> str:
    return Ether(bytes(message))[IPv6].src


def only(replies: list[Ether]) -> Ether:
    assert len(replies) == 1
    return replies[0]


def ia_addresses(reply: Ether, index: int = 0) -> list[tuple[str, int, int]]:
    ia = reply.getlayer(DHCP6OptIA_NA, index + 1)
    return [(a.addr, a.preflft, a.validlft) for a in ia.ianaopts
            if isinstance(a, DHCP6OptIAAddress)]


def ia_status(reply: Ether, index: int) -> int | None:
    ia = reply.getlayer(DHCP6OptIA_NA, index + 1)
    codes = [o.statuscode for o in ia.ianaopts if isinstance(o, DHCP6OptStatusCode)]
    return codes[0] if codes else None


def assert_configuration(reply: Ether) -> None:
    assert reply[DHCP6OptDNSServers].dnsservers == [DNS6]
    assert reply[DHCP6OptDNSDomains].dnsdomains == ["eng.example.com.", "example.com."]
    assert reply[DHCP6OptClientFQDN].fqdn == b"box.example.com."
    assert reply[DHCP6OptClientFQDN].flags == 0x04   # N: we do no DNS updates


# -- SOLICIT → ADVERTISE, REQUEST → REPLY ----------------------------------------------------

def test_solicit_gets_an_advertise_with_our_address() -> None:
    advertise = only(serve(client(DHCP6_Solicit(trid=0x123456), DHCP6OptElapsedTime(),
                                  CLIENT_ID, DHCP6OptIA_NA(iaid=0xCAFE, T1=0, T2=0),
                                  DHCP6OptOptReq(reqopts=[23, 24]))))

    assert isinstance(advertise[UDP].payload, DHCP6_Advertise)
    assert bytes(advertise[DHCP6OptClientId].duid) == bytes(CLIENT_ID.duid)
    assert advertise[DHCP6OptPref].prefval == 255
    ia = advertise[DHCP6OptIA_NA]
    assert (ia.iaid, ia.T1, ia.T2) == (0xCAFE, INFINITY, INFINITY)
    assert ia_addresses(advertise) == [(wire.NS6, INFINITY, INFINITY)]
    assert_configuration(advertise)


def test_solicit_with_rapid_commit_gets_a_committed_reply() -> None:
    reply = only(serve(client(DHCP6_Solicit(), CLIENT_ID, DHCP6OptRapidCommit(),
                              DHCP6OptIA_NA(iaid=1))))

    assert isinstance(reply[UDP].payload, DHCP6_Reply)
    assert reply.haslayer(DHCP6OptRapidCommit)
    assert ia_addresses(reply) == [(wire.NS6, INFINITY, INFINITY)]


def test_request_gets_a_reply_with_the_address() -> None:
    reply = only(serve(client(DHCP6_Request(), CLIENT_ID, OUR_ID, DHCP6OptIA_NA(
        iaid=7, ianaopts=[DHCP6OptIAAddress(addr=wire.NS6)]))))

    assert isinstance(reply[UDP].payload, DHCP6_Reply)
    assert reply[DHCP6OptIA_NA].iaid == 7
    assert ia_addresses(reply) == [(wire.NS6, INFINITY, INFINITY)]
    assert_configuration(reply)


def test_renew_of_a_stale_address_returns_it_with_zero_lifetimes() -> None:
    reply = only(serve(client(DHCP6_Renew(), CLIENT_ID, OUR_ID, DHCP6OptIA_NA(
        iaid=7, ianaopts=[DHCP6OptIAAddress(addr="2001:db8:9::5")]), src=wire.NS6,
        dst="fe80::1")))

    assert ia_addresses(reply) == [(wire.NS6, INFINITY, INFINITY), ("2001:db8:9::5", 0, 0)]


def test_rebind_is_answered_like_renew() -> None:
    reply = only(serve(client(DHCP6_Rebind(), CLIENT_ID, DHCP6OptIA_NA(iaid=7))))

    assert ia_addresses(reply) == [(wire.NS6, INFINITY, INFINITY)]


def test_second_ia_na_gets_no_address() -> None:
    reply = only(serve(client(DHCP6_Request(), CLIENT_ID, OUR_ID, DHCP6OptIA_NA(iaid=1),
                              DHCP6OptIA_NA(iaid=2))))

    assert ia_addresses(reply, 0) == [(wire.NS6, INFINITY, INFINITY)]
    assert ia_addresses(reply, 1) == []
    assert ia_status(reply, 1) == dhcpv6.StatusCode.NO_ADDRS_AVAIL


def test_without_an_ipv6_address_every_ia_has_no_address() -> None:
    advertise = only(serve(client(DHCP6_Solicit(), CLIENT_ID, DHCP6OptIA_NA(iaid=1)),
                           wire.plan(addr6=None)))

    assert ia_status(advertise, 0) == dhcpv6.StatusCode.NO_ADDRS_AVAIL
    assert advertise[DHCP6OptIA_NA].T1 == 0


def test_ia_pd_and_ia_ta_get_their_status_not_silence() -> None:
    """A client asking only for a prefix (odhcp6c, networkd) must hear that none comes."""
    advertise = only(serve(client(DHCP6_Solicit(), CLIENT_ID, DHCP6OptIA_PD(iaid=7),
                                  DHCP6OptIA_TA(iaid=8))))

    assert not advertise.haslayer(DHCP6OptIA_NA)
    pd, ta = advertise[DHCP6OptIA_PD], advertise[DHCP6OptIA_TA]
    assert (pd.iaid, pd.T1, pd.T2, ta.iaid) == (7, 0, 0, 8)
    assert pd[DHCP6OptStatusCode].statuscode == dhcpv6.StatusCode.NO_PREFIX_AVAIL
    assert ta[DHCP6OptStatusCode].statuscode == dhcpv6.StatusCode.NO_ADDRS_AVAIL


# -- CONFIRM, RELEASE, DECLINE, INFORMATION-REQUEST ----------------------------------------

@pytest.mark.parametrize(("address", "status"), [
    (wire.NS6, dhcpv6.StatusCode.SUCCESS),
    ("2001:db8:1::1234", dhcpv6.StatusCode.SUCCESS),       # same /64
    ("2001:db8:2::2", dhcpv6.StatusCode.NOT_ON_LINK),
])
def test_confirm_says_whether_the_address_is_on_link(address: str, status: int) -> None:
    reply = only(serve(client(DHCP6_Confirm(), CLIENT_ID, DHCP6OptIA_NA(
        iaid=1, ianaopts=[DHCP6OptIAAddress(addr=address)]))))

    assert reply[DHCP6OptStatusCode].statuscode == status
    assert not reply.haslayer(DHCP6OptIA_NA)


def test_confirm_without_an_ipv6_address_is_not_on_link() -> None:
    reply = only(serve(client(DHCP6_Confirm(), CLIENT_ID, DHCP6OptIA_NA(
        iaid=1, ianaopts=[DHCP6OptIAAddress(addr=wire.NS6)])), wire.plan(addr6=None)))

    assert reply[DHCP6OptStatusCode].statuscode == dhcpv6.StatusCode.NOT_ON_LINK


def test_confirm_without_addresses_gets_nothing() -> None:
    assert serve(client(DHCP6_Confirm(), CLIENT_ID, DHCP6OptIA_NA(iaid=1))) == []


@pytest.mark.parametrize("message", [DHCP6_Release(), DHCP6_Decline()])
def test_release_and_decline_get_success(message: Packet) -> None:
    reply = only(serve(client(message, CLIENT_ID, OUR_ID, DHCP6OptIA_NA(
        iaid=1, ianaopts=[DHCP6OptIAAddress(addr=wire.NS6)]))))

    assert reply[DHCP6OptStatusCode].statuscode == dhcpv6.StatusCode.SUCCESS
    assert not reply.haslayer(DHCP6OptIA_NA)


def test_information_request_gets_configuration_only() -> None:
    reply = only(serve(client(DHCP6_InfoRequest(), DHCP6OptElapsedTime())))

    assert isinstance(reply[UDP].payload, DHCP6_Reply)
    assert not reply.haslayer(DHCP6OptClientId)
    assert not reply.haslayer(DHCP6OptIA_NA)
    assert_configuration(reply)


def test_empty_configuration_is_not_sent() -> None:
    reply = only(serve(client(DHCP6_InfoRequest(), CLIENT_ID), wire.plan()))

    assert not reply.haslayer(DHCP6OptDNSServers)
    assert not reply.haslayer(DHCP6OptDNSDomains)
    assert not reply.haslayer(DHCP6OptClientFQDN)


# -- messages for someone else, and malformed ones -------------------------------------------

@pytest.mark.parametrize("message", [
    client(DHCP6_Request(), CLIENT_ID, OTHER_ID, DHCP6OptIA_NA(iaid=1)),
    client(DHCP6_Renew(), CLIENT_ID, OTHER_ID, DHCP6OptIA_NA(iaid=1)),
    client(DHCP6_InfoRequest(), OTHER_ID),
    client(DHCP6(msgtype=12)),            # RELAY-FORW: no relays on our link
    client(DHCP6(msgtype=99)),            # unknown
], ids=["request-other", "renew-other", "inform-other", "relay-forw", "unknown"])
def test_no_reply(message: Ether) -> None:
    assert serve(message) == []


def _message(payload: bytes, src: str = NS_LL) -> tuple[IpPacket, UdpDatagram]:
    """Records as the engine hands them over, around a raw DHCPv6 message."""
    packet = IpPacket(6, wire.packed(src), wire.packed("ff02::1:2"), 17, 1,
                      memoryview(bytes(8) + payload))
    return packet, UdpDatagram(546, 547, memoryview(payload))


CLIENT_ID_RAW = bytes(CLIENT_ID)
SOLICIT = b"\x01\x00\x00\x01"


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\x01\x00", "truncated"),
    (SOLICIT + b"\x00\x01\x00\x20\x00\x03", "truncated"),        # option past the end
    (SOLICIT + b"\x00\x01", "truncated"),                        # half an option header
    (SOLICIT + CLIENT_ID_RAW * 2, "bad-option"),                 # client id twice
    (SOLICIT + b"\x00\x01\x00\x01\x00", "bad-option"),           # one-byte DUID
    (SOLICIT + CLIENT_ID_RAW + b"\x00\x03\x00\x04\x00\x00\x00\x01", "truncated"),  # IA_NA
    (SOLICIT + CLIENT_ID_RAW + b"\x00\x03\x00\x10" + bytes(12) + b"\x00\x05\x00\x00",
     "truncated"),                                               # IA Address too short
    (SOLICIT + b"\x00\x08\x00\x00" * 65, "bad-option"),          # 65 options
    (SOLICIT + CLIENT_ID_RAW + b"\x00\x08\x00\x00" * 1100, "oversized"),
    (SOLICIT, "bad-message"),                                    # no client id
    (SOLICIT + CLIENT_ID_RAW + bytes(OUR_ID), "bad-message"),    # server id in a solicit
    (b"\x03\x00\x00\x01" + CLIENT_ID_RAW, "bad-message"),        # request, no server id
    (b"\x06\x00\x00\x01" + CLIENT_ID_RAW + bytes(OUR_ID), "bad-message"),  # rebind + id
    (b"\x02\x00\x00\x01" + CLIENT_ID_RAW, "bad-message"),        # ADVERTISE from client
    (b"\x07\x00\x00\x01" + CLIENT_ID_RAW, "bad-message"),        # REPLY from client
], ids=["header", "past-end", "half-header", "client-id-twice", "short-duid", "short-ia",
        "short-ia-address", "too-many", "oversized", "no-client-id", "solicit-server-id",
        "request-no-server-id", "rebind-server-id", "advertise", "reply"])
def test_malformed_messages_raise(payload: bytes, reason: str) -> None:
    packet, udp = _message(payload)
    with pytest.raises(MalformedFrame) as raised:
        dhcpv6.handle_dhcpv6(wire.mac(wire.NS_MAC), packet, udp, PLAN)
    assert raised.value.reason == reason


@pytest.mark.parametrize("src", ["::", "ff02::1"])
def test_a_source_we_cannot_answer_raises(src: str) -> None:
    packet, udp = _message(SOLICIT + CLIENT_ID_RAW, src=src)
    with pytest.raises(MalformedFrame, match="bad-address"):
        dhcpv6.handle_dhcpv6(wire.mac(wire.NS_MAC), packet, udp, PLAN)


def test_server_duid_is_link_layer_of_our_mac() -> None:
    assert dhcpv6.server_duid(PLAN) == b"\x00\x03\x00\x01" + wire.mac(wire.OUR_MAC)
