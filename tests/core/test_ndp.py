"""Neighbour Discovery playbooks: solicitations in, advertisements decoded by scapy.

Besides scapy-built messages, three were captured from a Linux kernel bringing up one
end of a veth pair (in a user+net namespace) while the other end ran these handlers.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from pasta_net.core import ndp
from pasta_net.core.frames import VNET_HDR_LEN, IpPacket, MalformedFrame, parse_ethernet, parse_ip
from tests.core import wire

NS_LL = "fe80::2"
PLAN = wire.plan(dns6=(wire.packed("2001:db8::53"), wire.packed("2001:db8::54")),
                 search=("eng.example.com", "example.com"), mtu=1500)

# Linux 6.x bringing up a veth end with MAC 02:c7:d2:8d:d5:d2, captured on the peer.
KERNEL_RS = bytes.fromhex(
    "33330000000202c7d28dd5d286dd6000000000103afffe8000000000000000c7d2fffe8dd5d2ff0200000000"
    "00000000000000000002850028df00000000010102c7d28dd5d2"
)
# DAD for its SLAAC address in our prefix, with a nonce option (RFC 7527).
KERNEL_DAD = bytes.fromhex(
    "3333ff8dd5d202c7d28dd5d286dd6000000000203aff00000000000000000000000000000000ff0200000000"
    "000000000001ff8dd5d28700917a0000000020010db80000000000c7d2fffe8dd5d20e01cdbae1867fa2"
)
# Address resolution for an on-link neighbour, 2001:db8::99.
KERNEL_NS = bytes.fromhex(
    "3333ff00009902c7d28dd5d286dd6000000000203aff20010db80000000000c7d2fffe8dd5d2ff0200000000"
    "000000000001ff0000998700c9ab0000000020010db8000000000000000000000099010102c7d28dd5d2"
)
KERNEL_MAC = "02:c7:d2:8d:d5:d2"
SOLICITED_NODE = bytes.fromhex("ff0200000000000000000001ff")
KERNEL_PLAN = wire.plan(addr6=wire.packed("2001:db8::10"), gw6=wire.packed("fe80::1"))


def icmp(message: Packet, src: str = NS_LL, dst: str = "ff02::2", hlim: int = 255) -> Ether:
    return Ether(src=wire.NS_MAC, dst="33:33:00:00:00:02") / IPv6(src=src, dst=dst,
                                                                  hlim=hlim) / message


def solicit(target: str, src: str = NS_LL, *options: Packet) -> Ether:
    """A neighbour solicitation to the target's solicited-node group."""
    group = str(ipaddress.IPv6Address(SOLICITED_NODE + wire.packed(target)[13:]))
    message = ICMPv6ND_NS(tgt=target)
    for option in options:
        message = message / option
    return icmp(message, src=src, dst=group)


def serve(message: Ether | bytes, plan: ndp.AddressPlan = PLAN) -> list[Ether]:
    """Run a namespace frame through the handler; decode and check every reply."""
    _dst, src_mac, ethertype, payload = parse_ethernet(wire.wire(message))
    frames = ndp.handle_ndp(src_mac, parse_ip(ethertype, payload), plan)
    return [checked(frame) for frame in frames]


def checked(frame: bytes) -> Ether:
    assert frame[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
    reply = wire.decode(frame)
    assert wire.checksums_valid(reply)
    assert reply.src == wire.OUR_MAC
    assert reply[IPv6].hlim == 255
    return reply


def only(replies: list[Ether]) -> Ether:
    assert len(replies) == 1
    return replies[0]


# -- Router Solicitation → Router Advertisement ---------------------------------------------

def test_router_solicitation_gets_a_unicast_advertisement() -> None:
    ra = only(serve(icmp(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=wire.NS_MAC))))

    assert (ra.dst, ra[IPv6].dst, ra[IPv6].src) == (wire.NS_MAC, NS_LL, "fe80::1")
    assert (ra[ICMPv6ND_RA].M, ra[ICMPv6ND_RA].O) == (1, 1)
    assert ra[ICMPv6ND_RA].chlim == 255
    assert ra[ICMPv6ND_RA].routerlifetime == 65535
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == wire.OUR_MAC
    assert ra[ICMPv6NDOptMTU].mtu == 1500
    prefix = ra[ICMPv6NDOptPrefixInfo]
    assert (prefix.prefix, prefix.prefixlen, prefix.L, prefix.A) == ("2001:db8:1::", 64, 1, 1)
    assert (prefix.validlifetime, prefix.preferredlifetime) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert ra[ICMPv6NDOptRDNSS].dns == ["2001:db8::53", "2001:db8::54"]
    assert ra[ICMPv6NDOptDNSSL].searchlist == ["eng.example.com.", "example.com."]


def test_solicitation_without_an_address_gets_a_multicast_advertisement() -> None:
    ra = only(serve(icmp(ICMPv6ND_RS(), src="::")))

    assert (ra.dst, ra[IPv6].dst) == ("33:33:00:00:00:01", "ff02::1")


def test_kernel_router_solicitation() -> None:
    ra = only(serve(KERNEL_RS, KERNEL_PLAN))

    assert (ra.dst, ra[IPv6].dst) == (KERNEL_MAC, "fe80::c7:d2ff:fe8d:d5d2")
    assert ra[ICMPv6NDOptPrefixInfo].prefix == "2001:db8::"


@pytest.mark.parametrize("length", [48, 64, 96, 128])
def test_prefix_is_the_64_bits_slaac_needs_whatever_the_host_has(length: int) -> None:
    plan = wire.plan(addr6=wire.packed("2001:db8:1:2:3:4:5:6"), prefix6=length)
    prefix = checked(ndp.build_router_advertisement(plan))[ICMPv6NDOptPrefixInfo]

    assert (prefix.prefix, prefix.prefixlen, prefix.A) == ("2001:db8:1:2::", 64, 1)


def test_periodic_advertisement_goes_to_all_nodes() -> None:
    ra = checked(ndp.build_router_advertisement(PLAN))

    assert (ra.dst, ra[IPv6].dst) == ("33:33:00:00:00:01", "ff02::1")
    assert ra.haslayer(ICMPv6ND_RA)


def test_advertisement_leaves_out_what_is_not_configured() -> None:
    ra = checked(ndp.build_router_advertisement(wire.plan(addr6=None, mtu=0)))

    for option in (ICMPv6NDOptMTU, ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS,
                   ICMPv6NDOptDNSSL):
        assert not ra.haslayer(option)
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == wire.OUR_MAC


def test_mtu_below_the_ipv6_minimum_is_not_announced() -> None:
    assert not checked(ndp.build_router_advertisement(wire.plan(mtu=1000))).haslayer(
        ICMPv6NDOptMTU)


@pytest.mark.parametrize("servers", [20, 100])
def test_advertisement_fits_the_minimum_mtu_whatever_the_plan(servers: int) -> None:
    # DNS servers come first; search domains get the room left, cut on a name boundary.
    plan = wire.plan(dns6=tuple(wire.packed(f"2001:db8::{n + 1:x}") for n in range(servers)),
                     search=tuple(f"site{n}.region{n}.example.org" for n in range(80)))
    ra = checked(ndp.build_router_advertisement(plan))

    assert len(ra[IPv6]) <= 1280
    dns = ra[ICMPv6NDOptRDNSS].dns
    assert dns == [f"2001:db8::{n + 1:x}" for n in range(len(dns))]
    search = ra[ICMPv6NDOptDNSSL].searchlist if ra.haslayer(ICMPv6NDOptDNSSL) else []
    assert search == [f"site{n}.region{n}.example.org." for n in range(len(search))]
    assert (len(dns), len(search) > 0) in ((20, True), (73, False))


# -- Neighbour Solicitation → Neighbour Advertisement -----------------------------------------

@pytest.mark.parametrize("target", [wire.GW6, "fe80::1", "2001:db8:1::77", "fe80::99"])
def test_every_neighbour_is_us(target: str) -> None:
    na = only(serve(solicit(target, NS_LL, ICMPv6NDOptSrcLLAddr(lladdr=wire.NS_MAC))))

    assert (na.dst, na[IPv6].dst, na[IPv6].src) == (wire.NS_MAC, NS_LL, target)
    assert na[ICMPv6ND_NA].tgt == target
    assert (na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (1, 1, 1)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == wire.OUR_MAC


def test_kernel_address_resolution() -> None:
    na = only(serve(KERNEL_NS, KERNEL_PLAN))

    assert (na.dst, na[IPv6].dst) == (KERNEL_MAC, "2001:db8::c7:d2ff:fe8d:d5d2")
    assert na[ICMPv6ND_NA].tgt == "2001:db8::99"


def test_the_namespace_address_is_never_answered() -> None:
    assert serve(solicit(wire.NS6, NS_LL)) == []


def test_kernel_dad_probe_for_its_own_address_gets_silence() -> None:
    assert serve(KERNEL_DAD, KERNEL_PLAN) == []


def test_dad_probe_for_its_link_local_address_gets_silence() -> None:
    assert serve(solicit("fe80::2", "::")) == []


@pytest.mark.parametrize("target", ["fe80::1", wire.GW6])
def test_dad_probe_for_our_address_is_defended_to_all_nodes(target: str) -> None:
    na = only(serve(solicit(target, "::")))

    assert (na.dst, na[IPv6].dst) == ("33:33:00:00:00:01", "ff02::1")
    assert (na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (1, 0, 1)


@pytest.mark.parametrize("message", [
    icmp(ICMPv6EchoRequest()),
    icmp(ICMPv6ND_NA(tgt=NS_LL)),
    icmp(ICMPv6ND_RA()),
], ids=["echo", "na", "ra"])
def test_other_messages_get_nothing(message: Ether) -> None:
    assert serve(message) == []


# -- malformed ------------------------------------------------------------------------------

def _packet(l4: bytes, src: str = NS_LL, dst: str = "ff02::2", hop_limit: int = 255) -> IpPacket:
    return IpPacket(6, wire.packed(src), wire.packed(dst), 58, hop_limit, memoryview(l4))


@pytest.mark.parametrize(("frame", "reason"), [
    (icmp(ICMPv6ND_RS(), hlim=64), "bad-header"),
    (icmp(ICMPv6ND_RS(code=1)), "bad-header"),
    (icmp(ICMPv6ND_RS() / Raw(b"\x01\x00" + bytes(6))), "bad-option"),       # length 0
    (icmp(ICMPv6ND_RS() / Raw(b"\x01\x02" + bytes(6))), "truncated"),        # past the end
    (icmp(ICMPv6ND_RS() / Raw(b"\x01")), "truncated"),                      # half header
    (icmp(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=wire.NS_MAC), src="::"), "bad-option"),
    (solicit(wire.GW6, "::", ICMPv6NDOptSrcLLAddr(lladdr=wire.NS_MAC)), "bad-message"),
    (icmp(ICMPv6ND_NS(tgt=wire.GW6), src="::", dst="ff02::1"), "bad-message"),
    (icmp(ICMPv6ND_NS(tgt="ff02::1")), "bad-address"),
    (icmp(ICMPv6ND_RS() / Raw((b"\x01\x01" + bytes(6)) * 70)), "bad-option"),  # 70 options
], ids=["hop-limit", "code", "zero-length-option", "option-past-end",
        "half-option", "rs-from-unspecified-with-sllao", "dad-with-sllao", "dad-not-solicited",
        "multicast-target", "too-many-options"])
def test_malformed_messages_raise(frame: Ether, reason: str) -> None:
    with pytest.raises(MalformedFrame) as raised:
        serve(frame)
    assert raised.value.reason == reason


@pytest.mark.parametrize("message", [
    bytes(ICMPv6ND_RS())[:0],
    bytes(ICMPv6ND_RS())[:3],
    bytes(ICMPv6ND_RS())[:7],
    bytes(ICMPv6ND_NS(tgt=wire.GW6))[:23],
], ids=["empty", "icmp-header", "rs", "ns"])
def test_truncated_messages_raise(message: bytes) -> None:
    with pytest.raises(MalformedFrame, match="truncated"):
        ndp.handle_ndp(wire.mac(wire.NS_MAC), _packet(message), PLAN)
