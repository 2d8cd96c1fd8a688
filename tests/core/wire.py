"""Frames for core tests: built and decoded with scapy, independently of our codecs."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import TCP, UDP
from scapy.layers.l2 import Ether

from pasta_net.core.engine import Engine, EngineConfig
from pasta_net.core.frames import VNET_HDR_LEN
from pasta_net.core.plan import AddressPlan

NS_MAC = "02:00:00:00:00:01"
OUR_MAC = "02:00:00:00:00:fe"
NS4, GW4, REMOTE4 = "198.51.100.2", "198.51.100.1", "203.0.113.1"
NS6, GW6, REMOTE6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1"


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def plan(**changes: object) -> AddressPlan:
    fields = dict(our_mac=mac(OUR_MAC), addr4=packed(NS4), prefix4=24, gw4=packed(GW4),
                  addr6=packed(NS6), prefix6=64, gw6=packed(GW6), mtu=65520)
    fields.update(changes)
    return AddressPlan(**fields)


def engine(offload: bool = False, **config: object) -> Engine:
    """An engine whose namespace MAC is known; RA scheduling off unless asked."""
    config.setdefault("ra", False)
    return Engine(EngineConfig(plan=config.pop("plan", plan()), ns_mac=mac(NS_MAC),
                               offload=offload, **config))


def wire(pkt) -> memoryview:
    """A scapy packet as the engine receives it from the tap."""
    return memoryview(bytes(pkt))


def decode(frame: bytes | memoryview) -> Ether:
    """An outgoing frame (virtio-net slot first) decoded by scapy."""
    return Ether(bytes(frame)[VNET_HDR_LEN:])


def checksums_valid(pkt: Ether) -> bool:
    """True if scapy, recomputing every checksum up to the transport layer, produces
    the same bytes. Not beyond it: scapy reads some ports as tunnels (UDP 4754 as GRE),
    and a payload is not ours to checksum."""
    rebuilt = pkt.copy()
    for layer in rebuilt.layers():
        if hasattr(rebuilt[layer], "chksum"):
            del rebuilt[layer].chksum
        if hasattr(rebuilt[layer], "cksum"):
            del rebuilt[layer].cksum
        if layer in (UDP, TCP):
            break
    return bytes(rebuilt.__class__(bytes(rebuilt))) == bytes(pkt)
