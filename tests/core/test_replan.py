"""``Engine.replan`` (``--follow-host``): new addresses in, stale ones forgotten."""

from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tests.core import wire

SLAAC6 = "2001:db8:1::5054:ff:fe00:1"
NEW4 = "198.51.100.3"


def from_ns(layer3: IP | IPv6) -> memoryview:
    return wire.wire(Ether(src=wire.NS_MAC, dst=wire.OUR_MAC) / layer3
                     / UDP(sport=40000, dport=9) / b"x")


def test_inbound_flows_follow_the_new_address_not_the_last_one_seen() -> None:
    eng = wire.engine()
    eng.receive_frames([from_ns(IP(src=wire.NS4, dst=wire.REMOTE4)),
                        from_ns(IPv6(src=SLAAC6, dst=wire.REMOTE6))], 0.0)
    assert eng.ns_address(4) == wire.packed(wire.NS4)
    eng.replan(wire.plan(addr4=wire.packed(NEW4)), eng.config.mapping, 1.0)
    assert eng.ns_address(4) == wire.packed(NEW4)
    assert eng.ns_address(6) == wire.packed(SLAAC6)  # its family did not change
    assert eng.plan.addr4 == eng.config.plan.addr4 == wire.packed(NEW4)
