"""When the engine sends router advertisements: at start, every 300 s, and on solicitation.

A namespace without ``--config-net`` gets its IPv6 address and default route only from
our advertisements, so the first one must not wait for the periodic timer: the Linux
kernel solicits as soon as the link is up, but a guest may not solicit at all
(``router_solicitations=0``), so the engine also advertises at start
(tests/integration/test_address_services.py checks both on a real kernel).
"""

from __future__ import annotations

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import Ether

from pasta_net.core.actions import Action, SendFrames
from tests.core import wire
from tests.core.test_ndp import NS_LL, icmp, solicit

RS = icmp(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=wire.NS_MAC))
NS = solicit(wire.GW6, NS_LL, ICMPv6NDOptSrcLLAddr(lladdr=wire.NS_MAC))


def sent(actions: list[Action]) -> list[Ether]:
    """Every frame the actions write to the namespace, decoded by scapy."""
    return [wire.decode(frame) for action in actions if isinstance(action, SendFrames)
            for frame in action.frames]


def advertisements(actions: list[Action]) -> list[Ether]:
    return [frame for frame in sent(actions) if frame.haslayer(ICMPv6ND_RA)]


def test_advertisement_at_start_then_every_300_seconds() -> None:
    eng = wire.engine(ra=True)
    first = eng.next_deadline()
    assert first is not None and first <= 0, "due at once, whatever the shell's clock"

    [ra] = advertisements(eng.handle_deadline(5000.0))
    assert (ra.dst, ra[IPv6].dst, ra[IPv6].src) == ("33:33:00:00:00:01", "ff02::1", "fe80::1")
    assert eng.next_deadline() == 5300.0
    assert eng.handle_deadline(5299.9) == []
    assert len(advertisements(eng.handle_deadline(5300.0))) == 1
    assert eng.next_deadline() == 5600.0


@pytest.mark.parametrize("config", [
    {"ra": True, "ndp": False},
    {"ra": False},
    {"ra": True, "plan": wire.plan(addr6=None)},
], ids=["no-ndp", "no-ra", "no-ipv6"])
def test_no_unsolicited_advertisement_when_off(config: dict[str, object]) -> None:
    assert wire.engine(**config).next_deadline() is None


def test_solicitation_gets_an_advertisement_at_once() -> None:
    eng = wire.engine(ra=True)
    [ra] = advertisements(eng.receive_frames([wire.wire(RS)], 10.0))
    assert (ra.dst, ra[IPv6].dst) == (wire.NS_MAC, NS_LL)


def test_replan_advertises_the_new_prefix_at_once() -> None:
    eng = wire.engine(ra=True)
    eng.handle_deadline(0.0)
    eng.replan(wire.plan(addr6=wire.packed("2001:db8:7::2")), eng.config.mapping, 42.0)
    assert eng.next_deadline() == 42.0


@pytest.mark.parametrize(("config", "answered"), [
    ({"ra": True}, {"ra", "na"}),
    ({"ra": False}, {"na"}),
    ({"ra": True, "ndp": False}, set()),
], ids=["default", "no-ra", "no-ndp"])
def test_switches_silence_what_they_name(config: dict[str, object], answered: set[str]) -> None:
    eng = wire.engine(**config)
    frames = sent(eng.receive_frames([wire.wire(RS), wire.wire(NS)], 0.0))
    got = {"ra" for f in frames if f.haslayer(ICMPv6ND_RA)}
    got |= {"na" for f in frames if f.haslayer(ICMPv6ND_NA)}
    assert got == answered


def test_no_advertisement_answers_a_solicitation_without_ipv6() -> None:
    """-4, or a host without IPv6: a default router with no prefix would only give the
    namespace a route to nowhere."""
    eng = wire.engine(ra=True, plan=wire.plan(addr6=None))
    assert advertisements(eng.receive_frames([wire.wire(RS)], 10.0)) == []


@pytest.mark.parametrize(("dhcpv6", "flags"), [(True, {"M", "O"}), (False, set())])
def test_managed_and_other_flags_only_when_dhcpv6_answers(dhcpv6: bool, flags: set) -> None:
    """With --no-dhcpv6, M and O would send clients soliciting a server for ever."""
    eng = wire.engine(ra=True, dhcpv6=dhcpv6)
    solicited = advertisements(eng.receive_frames([wire.wire(RS)], 10.0))
    periodic = advertisements(eng.handle_deadline(20.0))
    for ra in solicited + periodic:
        got = {name for name, bit in (("M", ra[ICMPv6ND_RA].M), ("O", ra[ICMPv6ND_RA].O)) if bit}
        assert got == flags


def test_advertisements_stop_when_the_host_loses_ipv6() -> None:
    """--follow-host to a plan without IPv6: no more default-router announcements."""
    eng = wire.engine(ra=True)
    assert advertisements(eng.handle_deadline(0.0))
    eng.replan(wire.plan(addr6=None), eng.config.mapping, 10.0)
    assert advertisements(eng.handle_deadline(301.0)) == []
    assert eng.next_deadline() is None
