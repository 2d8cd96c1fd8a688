"""Hostile input for DHCP, DHCPv6 and NDP: every handler answers or raises MalformedFrame.

Real messages (captured from busybox udhcpc and the Linux kernel, or built by scapy) are
mutated — bytes flipped, overwritten, inserted, deleted, the message cut short — or
followed by random options, and handed to the handler the way the engine hands them
over. The property: the handler returns a list of well-formed frames (scapy decodes
them and agrees with every checksum) or raises :class:`MalformedFrame`; any other
exception is a bug.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP
from scapy.layers.dhcp6 import (
    DHCP6_Confirm,
    DHCP6_InfoRequest,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptRapidCommit,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr
from scapy.layers.l2 import Ether

from pasta_net.core import dhcp, dhcpv6, ndp
from pasta_net.core.frames import (
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    VNET_HDR_LEN,
    IpPacket,
    MalformedFrame,
    UdpDatagram,
)
from pasta_net.core.plan import AddressPlan
from tests.core import test_dhcp, test_dhcpv6, test_ndp, wire

PLANS = [
    test_dhcp.PLAN,
    test_dhcp.CAPTURE_PLAN,
    test_ndp.KERNEL_PLAN,
    wire.plan(search=test_dhcp.LONG_SEARCH, mtu=0, dns6=test_dhcpv6.PLAN.dns6),
    wire.plan(addr4=None, addr6=None),
]
EXAMPLES = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _payload(frame: Ether) -> bytes:
    return bytes(frame[UDP].payload)


DHCP_SEEDS = [
    bytes(Ether(test_dhcp.UDHCPC_DISCOVER)[BOOTP]),
    bytes(Ether(test_dhcp.UDHCPC_REQUEST)[BOOTP]),
    _payload(test_dhcp.client(("message-type", "inform"), ("client_id", b"\x01abcdef"),
                              ("param_req_list", [119, 1, 3]), ciaddr=wire.NS4)),
    _payload(test_dhcp.client(("message-type", "request"), ("dhcp-option-overload", 3),
                              ("max_dhcp_size", 1500),
                              file=b"\x32\x04" + wire.packed(wire.NS4) + b"\xff",
                              sname=b"\x36\x04" + wire.packed(wire.GW4) + b"\xff")),
    _payload(test_dhcp.client(("message-type", "request"),
                              ("requested_addr", "198.51.100.77"))),  # gets a NAK
]
# ISC dhclient 4.4.3 (`dhclient -6 -1 -d up0`, Debian 12) soliciting without Rapid
# Commit, captured (-p) on the tap of a namespace set up as in
# tests/integration/test_address_services.py; the UDP payload only.
DHCLIENT_SOLICIT = bytes.fromhex(
    "01edc9420001000e0001000132973453f21961e3682c0006000400170018000800020000"
    "0003000c61e3682c00000e1000001518"
)
DHCPV6_SEEDS = [DHCLIENT_SOLICIT] + [
    _payload(test_dhcpv6.client(message, test_dhcpv6.CLIENT_ID, *options))
    for message, options in [
        (DHCP6_Solicit(), [DHCP6OptRapidCommit(), DHCP6OptIA_NA(iaid=1)]),
        (DHCP6_Request(), [test_dhcpv6.OUR_ID, DHCP6OptIA_NA(
            iaid=1, ianaopts=[DHCP6OptIAAddress(addr=wire.NS6)]), DHCP6OptIA_NA(iaid=2)]),
        (DHCP6_Renew(), [test_dhcpv6.OUR_ID, DHCP6OptIA_NA(
            iaid=1, ianaopts=[DHCP6OptIAAddress(addr="2001:db8:9::1")])]),
        (DHCP6_Confirm(), [DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr=wire.NS6)])]),
        (DHCP6_Release(), [test_dhcpv6.OUR_ID, DHCP6OptIA_NA(iaid=1)]),
        (DHCP6_InfoRequest(), []),
    ]
]
NDP_SEEDS = [
    bytes(Ether(test_ndp.KERNEL_RS)[ICMPv6ND_RS]),
    bytes(Ether(test_ndp.KERNEL_NS)[ICMPv6ND_NS]),
    bytes(ICMPv6ND_NS(tgt=wire.GW6) / ICMPv6NDOptSrcLLAddr(lladdr=wire.NS_MAC)),
    # Without options: from "::" (one of SRC6) these are a DAD probe and an RS of a
    # node with no address yet.
    bytes(ICMPv6ND_NS(tgt=wire.GW6)),
    bytes(ICMPv6ND_RS()),
]
NS_LL = wire.packed(test_dhcpv6.NS_LL)


def run_dhcp(message: bytes, plan: AddressPlan) -> list[bytes]:
    """The DHCP handler on ``message``, wrapped as the engine would (addresses unused)."""
    packet = IpPacket(4, bytes(4), b"\xff" * 4, IPPROTO_UDP, 64, memoryview(b""))
    udp = UdpDatagram(68, 67, memoryview(message))
    return dhcp.handle_dhcp(wire.mac(wire.NS_MAC), packet, udp, plan)


def run_dhcpv6(message: bytes, plan: AddressPlan, src: bytes = NS_LL) -> list[bytes]:
    packet = IpPacket(6, src, wire.packed("ff02::1:2"), IPPROTO_UDP, 1, memoryview(b""))
    udp = UdpDatagram(546, 547, memoryview(message))
    return dhcpv6.handle_dhcpv6(wire.mac(wire.NS_MAC), packet, udp, plan)


def run_ndp(message: bytes, plan: AddressPlan, src: bytes = NS_LL,
            dst: bytes = wire.packed("ff02::1:ff00:1"), hop_limit: int = 255) -> list[bytes]:
    packet = IpPacket(6, src, dst, IPPROTO_ICMPV6, hop_limit, memoryview(message))
    return ndp.handle_ndp(wire.mac(wire.NS_MAC), packet, plan)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed message with a few random edits."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate"]))
        if edit == "overwrite":
            data[at : at + 1] = draw(st.binary(min_size=1, max_size=4))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=300))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


def _tail(seeds: list[bytes], fixed: int) -> st.SearchStrategy[bytes]:
    """A seed's fixed part followed by random bytes where its options were."""
    return st.tuples(st.sampled_from(seeds), st.binary(max_size=600)).map(
        lambda pair: pair[0][:fixed] + pair[1])


def answers_or_raises_malformed(handle: Callable[[], list[bytes]]) -> None:
    try:
        frames = handle()
    except MalformedFrame:
        return
    assert isinstance(frames, list)
    for frame in frames:
        assert isinstance(frame, bytes)
        assert frame[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
        assert wire.checksums_valid(wire.decode(frame))


SRC6 = st.sampled_from([test_dhcpv6.NS_LL, wire.NS6, "::", "ff02::1"]).map(wire.packed)


def test_seeds_are_answered() -> None:
    """Unmutated, every seed gets a reply under some plan: the properties start from
    messages the handlers accept, not from ones they reject at the first byte."""
    for message in DHCP_SEEDS:
        assert any(run_dhcp(message, plan) for plan in PLANS)
    for message in DHCPV6_SEEDS:
        assert any(run_dhcpv6(message, plan) for plan in PLANS)
    for message in NDP_SEEDS:
        assert any(run_ndp(message, plan) for plan in PLANS)


@EXAMPLES
@given(message=st.one_of(mutated(DHCP_SEEDS), _tail(DHCP_SEEDS, 240)),
       plan=st.sampled_from(PLANS))
def test_dhcp_answers_or_raises_malformed(message: bytes, plan: AddressPlan) -> None:
    answers_or_raises_malformed(lambda: run_dhcp(message, plan))


@EXAMPLES
@given(message=st.one_of(mutated(DHCPV6_SEEDS), _tail(DHCPV6_SEEDS, 4)),
       src=SRC6, plan=st.sampled_from(PLANS))
def test_dhcpv6_answers_or_raises_malformed(message: bytes, src: bytes,
                                            plan: AddressPlan) -> None:
    answers_or_raises_malformed(lambda: run_dhcpv6(message, plan, src))


@EXAMPLES
@given(message=st.one_of(mutated(NDP_SEEDS), _tail(NDP_SEEDS, 8), _tail(NDP_SEEDS, 24)),
       src=SRC6, dst=st.sampled_from(["ff02::2", "ff02::1:ff00:1", "fe80::1"]).map(wire.packed),
       hop_limit=st.sampled_from([255, 255, 64, 0]), plan=st.sampled_from(PLANS))
def test_ndp_answers_or_raises_malformed(message: bytes, src: bytes, dst: bytes,
                                         hop_limit: int, plan: AddressPlan) -> None:
    answers_or_raises_malformed(lambda: run_ndp(message, plan, src, dst, hop_limit))
