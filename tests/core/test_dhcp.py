"""DHCPv4 server playbooks: real client messages in, replies decoded by scapy.

Client messages are built with scapy or were captured from busybox udhcpc; every reply
is decoded by scapy (after the virtio-net slot) and its checksums recomputed by it.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import dns_get_str
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from pasta_net.core import dhcp
from pasta_net.core.dnsname import encode_name, encode_names
from pasta_net.core.frames import (
    VNET_HDR_LEN,
    MalformedFrame,
    parse_ethernet,
    parse_ip,
    parse_udp,
)
from tests.core import wire

CLIENT_MAC = wire.NS_MAC
PLAN = wire.plan(
    dns4=(wire.packed("198.51.100.53"), wire.packed("203.0.113.53")),
    search=("eng.example.com", "example.com"),
    hostname="box", fqdn="box.example.com", mtu=1500,
)
HEAD = ["message-type", "server_id", "lease_time", "subnet_mask"]

# busybox udhcpc 1.35.0 (`udhcpc -i v0 -B -O search -O 81 -x hostname:asker`) on one
# end of a veth pair in a user+net namespace; captured on the other end. It sets the
# broadcast flag and asks for 1, 3, 6, 12, 15, 28, 42, 81, 119.
UDHCPC_DISCOVER = bytes.fromhex(
    "ffffffffffff02c7d28dd5d208004500014800000000401179a600000000ffffffff004400430134aef00101"
    "0600f429ee49000080000000000000000000000000000000000002c7d28dd5d2"
) + bytes(202) + bytes.fromhex(
    "638253633501013902024037090103060c0f1c2a51770c0561736b65723c0c756468637020312e33352e303d"
    "070102c7d28dd5d2ff"
) + bytes(11)
# Its REQUEST after our OFFER of 192.0.2.10 from server 192.0.2.1.
UDHCPC_REQUEST = bytes.fromhex(
    "ffffffffffff02c7d28dd5d208004500014900000000401179a500000000ffffffff00440043013598020101"
    "0600f429ee49000080000000000000000000000000000000000002c7d28dd5d2"
) + bytes(202) + bytes.fromhex(
    "638253633501033204c000020a3604c00002013902024037090103060c0f1c2a51770c0561736b65723c0c75"
    "6468637020312e33352e303d070102c7d28dd5d2ff"
)
CAPTURE_PLAN = wire.plan(addr4=wire.packed("192.0.2.10"), gw4=wire.packed("192.0.2.1"),
                         dns4=(wire.packed("192.0.2.53"),), search=("example.com",))


def client(*options: object, flags: int = 0, ciaddr: str = "0.0.0.0",
           **bootp: object) -> Ether:
    """A client message as the namespace sends it: broadcast, from 0.0.0.0 unless told."""
    return (Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
            / IP(src=ciaddr, dst="255.255.255.255")
            / UDP(sport=68, dport=67)
            / BOOTP(chaddr=wire.mac(CLIENT_MAC), xid=0x1234ABCD, flags=flags, ciaddr=ciaddr,
                    **bootp)
            / DHCP(options=[*options, "end"]))


def serve(message: Ether | bytes, plan: dhcp.AddressPlan = PLAN) -> list[Ether]:
    """Run a client frame through the server; decode and check every reply."""
    _dst, src_mac, ethertype, payload = parse_ethernet(wire.wire(message))
    packet = parse_ip(ethertype, payload)
    frames = dhcp.handle_dhcp(src_mac, packet, parse_udp(packet.l4), plan)
    replies = []
    for frame in frames:
        assert frame[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
        reply = wire.decode(frame)
        assert wire.checksums_valid(reply)
        assert reply[UDP].sport == 67
        assert reply[UDP].dport == 68
        assert reply.src == wire.OUR_MAC
        assert reply[BOOTP].op == 2
        assert len(reply[UDP].payload) >= 300
        replies.append(reply)
    return replies


def only(replies: list[Ether]) -> Ether:
    assert len(replies) == 1
    return replies[0]


def option_names(reply: Ether) -> list[str | int]:
    return [option[0] for option in reply[DHCP].options if isinstance(option, tuple)]


def option(reply: Ether, name: str | int) -> object:
    """The value of an option that appears once (a tuple when it holds several)."""
    values = [opt[1:] for opt in reply[DHCP].options
              if isinstance(opt, tuple) and opt[0] == name]
    assert len(values) == 1, f"option {name}: {values}"
    return values[0][0] if len(values[0]) == 1 else values[0]


def search_list(reply: Ether) -> list[bytes]:
    """Option 119, its pieces concatenated (RFC 3396), decompressed by scapy."""
    data = b"".join(opt[1] for opt in reply[DHCP].options
                    if isinstance(opt, tuple) and opt[0] == 119)
    names, rest = [], data
    while rest:
        name, rest = dns_get_str(rest, full=data)
        names.append(name)
    return names


# -- DISCOVER → OFFER -------------------------------------------------------------------

def test_discover_gets_an_offer_with_the_whole_configuration() -> None:
    offer = only(serve(client(("message-type", "discover"))))

    assert offer.dst == CLIENT_MAC
    assert offer[IP].src == wire.GW4
    assert offer[IP].dst == wire.NS4
    assert offer[BOOTP].xid == 0x1234ABCD
    assert offer[BOOTP].yiaddr == wire.NS4
    assert offer[BOOTP].chaddr[:6] == wire.mac(CLIENT_MAC)
    assert option(offer, "message-type") == 2
    assert option(offer, "server_id") == wire.GW4
    assert option(offer, "lease_time") == 0xFFFFFFFF
    assert option(offer, "subnet_mask") == "255.255.255.0"
    assert option(offer, "router") == wire.GW4
    assert option(offer, "name_server") == ("198.51.100.53", "203.0.113.53")
    assert option(offer, "domain") == b"eng.example.com"
    assert search_list(offer) == [b"eng.example.com.", b"example.com."]
    assert option(offer, "interface-mtu") == 1500
    assert option(offer, "hostname") == b"box"
    assert option(offer, "client_FQDN") == b"\x0c\xff\xff" + encode_name("box.example.com")


def test_parameter_request_list_orders_the_options_after_the_fixed_head() -> None:
    offer = only(serve(client(("message-type", "discover"),
                              ("param_req_list", [119, 6, 3, 26, 1, 15]))))

    assert option_names(offer) == [*HEAD, 119, "name_server", "router", "interface-mtu",
                                   "domain", "hostname", "client_FQDN"]


def test_subnet_mask_precedes_router_even_when_asked_the_other_way() -> None:
    offer = only(serve(client(("message-type", "discover"), ("param_req_list", [3, 1]))))

    names = option_names(offer)
    assert names.index("subnet_mask") < names.index("router")


def test_broadcast_flag_gets_a_broadcast_reply() -> None:
    offer = only(serve(client(("message-type", "discover"), flags=0x8000)))

    assert offer.dst == "ff:ff:ff:ff:ff:ff"
    assert offer[IP].dst == "255.255.255.255"
    assert offer[BOOTP].flags == 0x8000


def test_client_identifier_is_echoed() -> None:
    offer = only(serve(client(("message-type", "discover"),
                              ("client_id", b"\x01" + wire.mac(CLIENT_MAC)))))

    assert option(offer, "client_id") == b"\x01" + wire.mac(CLIENT_MAC)
    assert option_names(offer)[:3] == ["message-type", "server_id", "client_id"]


def test_unset_values_are_not_sent() -> None:
    offer = only(serve(client(("message-type", "discover")), wire.plan(mtu=0)))

    assert option_names(offer) == [*HEAD, "router"]


@pytest.mark.parametrize(("mtu", "sent"), [(65520, 65520), (70000, 65535), (67, None)])
def test_mtu_is_clamped_to_what_option_26_can_say(mtu: int, sent: int | None) -> None:
    offer = only(serve(client(("message-type", "discover")), wire.plan(mtu=mtu)))

    assert dict(o for o in offer[DHCP].options if isinstance(o, tuple)).get(
        "interface-mtu") == sent


# -- the size a client takes -------------------------------------------------------------

LONG_SEARCH = tuple(f"team{n}.department{n}.example.org" for n in range(20))


def test_search_list_is_cut_to_fit_the_default_576_byte_message() -> None:
    offer = only(serve(client(("message-type", "discover")), wire.plan(search=LONG_SEARCH)))

    assert len(offer[IP]) <= 576
    names = search_list(offer)
    assert 0 < len(names) < len(LONG_SEARCH)
    assert names == [f"{n}.".encode() for n in LONG_SEARCH[: len(names)]]


def test_large_max_size_gets_the_whole_list_split_across_options() -> None:
    offer = only(serve(client(("message-type", "discover"), ("max_dhcp_size", 1500)),
                       wire.plan(search=LONG_SEARCH)))

    assert search_list(offer) == [f"{n}.".encode() for n in LONG_SEARCH]
    assert option_names(offer).count(119) >= 2  # RFC 3396: more than 255 bytes
    assert len(offer[IP]) <= 1500


# -- REQUEST → ACK or NAK -------------------------------------------------------------------

def test_request_in_selecting_state_gets_an_ack() -> None:
    ack = only(serve(client(("message-type", "request"), ("server_id", wire.GW4),
                            ("requested_addr", wire.NS4))))

    assert option(ack, "message-type") == 5
    assert ack[BOOTP].yiaddr == wire.NS4
    assert option(ack, "lease_time") == 0xFFFFFFFF


def test_renewing_request_is_unicast_to_ciaddr() -> None:
    ack = only(serve(client(("message-type", "request"), ciaddr=wire.NS4, flags=0x8000)))

    assert ack.dst == CLIENT_MAC
    assert ack[IP].dst == wire.NS4
    assert ack[BOOTP].ciaddr == wire.NS4


@pytest.mark.parametrize("request_options", [
    [("requested_addr", "198.51.100.77")],
    [("server_id", wire.GW4), ("requested_addr", "198.51.100.77")],
])
def test_request_for_another_address_gets_a_broadcast_nak(
        request_options: list[tuple[str, str]]) -> None:
    nak = only(serve(client(("message-type", "request"), *request_options)))

    assert option(nak, "message-type") == 6
    assert nak.dst == "ff:ff:ff:ff:ff:ff"
    assert nak[IP].dst == "255.255.255.255"
    assert nak[BOOTP].yiaddr == "0.0.0.0"
    assert option_names(nak) == ["message-type", "server_id", "error_message"]


def test_renewing_another_address_gets_a_nak() -> None:
    nak = only(serve(client(("message-type", "request"), ciaddr="198.51.100.77")))

    assert option(nak, "message-type") == 6


def test_request_for_another_server_is_left_to_it() -> None:
    assert serve(client(("message-type", "request"), ("server_id", "198.51.100.254"),
                        ("requested_addr", wire.NS4))) == []


# -- INFORM, RELEASE, DECLINE, and what gets nothing -------------------------------------

def test_inform_gets_configuration_without_address_or_lease() -> None:
    ack = only(serve(client(("message-type", "inform"), ciaddr=wire.NS4)))

    assert option(ack, "message-type") == 5
    assert ack[BOOTP].yiaddr == "0.0.0.0"
    assert ack[IP].dst == wire.NS4
    assert "lease_time" not in option_names(ack)
    assert option(ack, "router") == wire.GW4


@pytest.mark.parametrize("message", [
    client(("message-type", "release"), ("server_id", wire.GW4), ciaddr=wire.NS4),
    client(("message-type", "decline"), ("server_id", wire.GW4),
           ("requested_addr", wire.NS4)),
    client(("message-type", 18)),                   # an unknown type
    client(),                                       # plain BOOTP: no option 53
    client(("message-type", "discover"), giaddr="198.51.100.9"),   # relayed
], ids=["release", "decline", "unknown-type", "bootp", "relayed"])
def test_no_reply(message: Ether) -> None:
    assert serve(message) == []


def test_no_ipv4_address_no_server() -> None:
    assert serve(client(("message-type", "discover")), wire.plan(addr4=None)) == []


# -- captured busybox udhcpc -----------------------------------------------------------------

def test_udhcpc_discover_and_request() -> None:
    offer = only(serve(UDHCPC_DISCOVER, CAPTURE_PLAN))
    assert offer.dst == "ff:ff:ff:ff:ff:ff"  # udhcpc -B set the broadcast flag
    assert offer[BOOTP].yiaddr == "192.0.2.10"
    assert option_names(offer) == ["message-type", "server_id", "client_id", "lease_time",
                                   "subnet_mask", "router", "name_server", "domain", 119,
                                   "interface-mtu"]
    assert offer[BOOTP].xid == struct.unpack_from("!I", UDHCPC_DISCOVER, 46)[0]

    ack = only(serve(UDHCPC_REQUEST, CAPTURE_PLAN))
    assert option(ack, "message-type") == 5
    assert ack[BOOTP].yiaddr == "192.0.2.10"
    assert search_list(ack) == [b"example.com."]


def test_pad_options_are_skipped() -> None:
    offer = only(serve(client("pad", ("message-type", "discover"), "pad", "pad",
                              ("param_req_list", [6]))))

    assert option_names(offer)[4] == "name_server"


def test_options_overloaded_into_file_and_sname_are_read() -> None:
    # RFC 2132 §9.3: option 52 = 3 puts options in `file`, then `sname`.
    in_file = bytes((50, 4)) + wire.packed("198.51.100.77") + b"\xff"
    in_sname = bytes((54, 4)) + wire.packed(wire.GW4) + b"\xff"
    nak = only(serve(client(("message-type", "request"), ("dhcp-option-overload", 3),
                            file=in_file, sname=in_sname)))

    assert option(nak, "message-type") == 6


# -- malformed and hostile ----------------------------------------------------------------

def _patched(offset: int, data: bytes) -> bytes:
    """A DISCOVER with ``data`` written at ``offset`` of the DHCP message."""
    frame = bytearray(bytes(client(("message-type", "discover"))))
    frame[42 + offset : 42 + offset + len(data)] = data
    return bytes(frame)


def _raw_options(options: bytes) -> Ether:
    """A client message whose options are exactly ``options`` (after the cookie)."""
    return client(options=b"\x63\x82\x53\x63" + options)


@pytest.mark.parametrize(("message", "reason"), [
    (_patched(0, b"\x02"), "bad-message"),                          # op BOOTREPLY
    (_patched(2, b"\x07"), "unsupported"),                          # hlen 7
    (_patched(1, b"\x06"), "unsupported"),                          # IEEE 802 htype
    (_patched(236, b"\x63\x82\x53\x64"), "bad-message"),            # magic cookie
    (_raw_options(b"\x35\x02\x01\x01\xff"), "bad-option"),        # type option length 2
    (_patched(240, b"\x35\x40"), "truncated"),                      # option past the end
    (client(("message-type", "offer")), "bad-message"),             # server type
    (client(("message-type", "ack")), "bad-message"),
    (client(("message-type", "discover"), ("dhcp-option-overload", 4)), "bad-option"),
    (_raw_options(b"\x35\x01\x01\x39\x01\x05\xff"), "bad-option"),  # max size length 1
    (_raw_options(b"\x35\x01\x01\x36\x02\x01\x02\xff"), "bad-option"),  # server id length 2
    (_raw_options(b"\x35\x01\x01" + (b"\xe0\xff" + bytes(255)) * 16), "oversized"),
], ids=["op", "hlen", "htype", "cookie", "type-length", "past-end", "offer", "ack",
        "overload", "max-size-length", "server-id-length", "oversized"])
def test_malformed_messages_raise(message: Ether | bytes, reason: str) -> None:
    with pytest.raises(MalformedFrame) as raised:
        serve(message)
    assert raised.value.reason == reason


@pytest.mark.parametrize("length", [0, 1, 100, 235, 239])
def test_truncated_header_raises(length: int) -> None:
    with pytest.raises(MalformedFrame, match="truncated"):
        dhcp.parse_request(memoryview(bytes(client(("message-type", "discover"))[BOOTP])
                                      [:length]))


def test_too_many_options_raise() -> None:
    options = [(200, b"")] * 300
    with pytest.raises(MalformedFrame, match="bad-option"):
        serve(client(("message-type", "discover"), *options))


def test_small_max_size_is_taken_as_576() -> None:
    request = dhcp.parse_request(memoryview(bytes(
        client(("message-type", "discover"), ("max_dhcp_size", 300))[BOOTP])))

    assert request.max_size == 576


# -- domain names (shared with DHCPv6 and NDP) ----------------------------------------------

_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_NAME = st.lists(_LABEL, min_size=1, max_size=5).map(".".join)


@given(names=st.lists(_NAME, min_size=1, max_size=12), compress=st.booleans())
def test_name_lists_decode_back_with_scapy(names: list[str], compress: bool) -> None:
    data = encode_names(names, compress=compress)
    decoded, rest = [], data
    while rest:
        name, rest = dns_get_str(rest, full=data)
        decoded.append(name)

    assert decoded == [f"{name}.".encode() for name in names]
    assert len(data) <= len(encode_names(names))


def test_compression_points_at_earlier_suffixes() -> None:
    assert encode_names(["a.example.com", "b.Example.com"], compress=True) == (
        b"\x01a\x07example\x03com\x00\x01b\xc0\x02")


@given(names=st.lists(_NAME, min_size=1, max_size=12), limit=st.integers(0, 200))
def test_lists_are_cut_on_name_boundaries(names: list[str], limit: int) -> None:
    data = encode_names(names, compress=True, limit=limit)

    assert len(data) <= limit


@pytest.mark.parametrize("name", ["", ".", "a..b", "x" * 64 + ".com", ".".join(["abc"] * 64)])
def test_bad_configured_names_are_our_mistake(name: str) -> None:
    with pytest.raises(ValueError, match="domain name"):
        encode_name(name)


def test_non_ascii_names_go_through_idna() -> None:
    assert encode_name("bücher.example") == b"\x0dxn--bcher-kva\x07example\x00"


def test_a_gateway_outside_a_32_address_comes_with_classless_routes() -> None:
    """A /32 host address (cloud and VPS hosts): the router is off the subnet, and
    udhcpc's `route add default gw` fails. Option 121 gives a route to the gateway and
    the default route through it (RFC 3442); a gateway inside the subnet needs none."""
    plan = wire.plan(addr4=wire.packed("192.0.2.10"), prefix4=32,
                     gw4=wire.packed("198.51.100.1"))
    offer = only(serve(client(("message-type", "discover")), plan))
    assert option(offer, "subnet_mask") == "255.255.255.255"
    routes = option(offer, "classless_static_routes")
    assert routes == ["198.51.100.1/32:0.0.0.0", "0.0.0.0/0:198.51.100.1"]
    plain = only(serve(client(("message-type", "discover"))))
    assert "classless_static_routes" not in option_names(plain)
