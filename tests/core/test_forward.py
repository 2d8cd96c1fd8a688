"""Forwarding policy: the /proc/net scan, what ``auto`` mirrors, where a splice lands."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pasta_net.core.forward import (
    TCP_LISTEN,
    UDP_UNCONNECTED,
    bound_ports,
    ip_version,
    is_loopback,
    mirrored_ports,
    spliced_target,
)
from pasta_net.core.portspec import parse_port_spec

# Recorded from a namespace: sshd on 0.0.0.0:22, a server on 127.0.0.1:8080, one
# established connection from port 8080, and a listener on [::]:5201.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A 00000000
"""
# A DNS server on 0.0.0.0:53, and a connected client socket from port 40000.
UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout
  100: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0
  200: 0100007F:9C40 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0
"""


def test_listening_tcp_ports_v4_and_v6() -> None:
    assert bound_ports(TCP, TCP_LISTEN) == {22, 8080}
    assert bound_ports(TCP6, TCP_LISTEN) == {5201}


def test_udp_servers_but_not_connected_sockets() -> None:
    assert bound_ports(UDP, UDP_UNCONNECTED) == {53}


def test_header_only_empty_and_garbage() -> None:
    header = TCP.splitlines()[0]
    assert bound_ports(header, TCP_LISTEN) == set()
    assert bound_ports("", TCP_LISTEN) == set()
    assert bound_ports(f"{header}\n   0: zz:yy 00:00 0A\n   1: short\n", TCP_LISTEN) == set()


@given(st.sets(st.integers(1, 65535), max_size=20))
def test_any_listening_port_is_found(ports: set[int]) -> None:
    lines = [TCP.splitlines()[0]] + [
        f"{i:4}: 00000000:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 0"
        for i, port in enumerate(sorted(ports))
    ]
    assert bound_ports("\n".join(lines), TCP_LISTEN) == ports


def _mirrored(spec: str, bound: set[int]) -> dict[int, int]:
    """Listening port → target port, for what ``spec`` mirrors when ``bound`` are bound."""
    wanted = mirrored_ports(parse_port_spec(spec).forwards, bound)
    return {port: fwd.target(port) for port, fwd in wanted.items()}


def test_lone_auto_mirrors_bound_ports_but_not_ephemeral_ones() -> None:
    assert _mirrored("auto", {22, 8080, 50000}) == {22: 22, 8080: 8080}


def test_auto_with_ranges_and_exclusions() -> None:
    assert _mirrored("8000-8010,auto", {22, 8000, 8010, 8011}) == {8000: 8000, 8010: 8010}
    assert _mirrored("auto,~22", {22, 80}) == {80: 80}


def test_auto_with_a_remap_follows_the_target_port() -> None:
    """``-t 8000-8001:80-81,auto``: port 8000 while something is bound to 80 over there."""
    assert _mirrored("8000-8001:80-81,auto", {80, 8001}) == {8000: 80}


def test_fixed_rules_are_never_mirrored() -> None:
    assert _mirrored("80,443", {80, 443}) == {}


@given(st.sets(st.integers(1, 65535), max_size=50))
def test_mirrors_only_what_is_bound_and_covered(bound: set[int]) -> None:
    wanted = _mirrored("1000-5000,~2000-2999,auto", bound)
    assert set(wanted) == {p for p in bound if 1000 <= p <= 5000 and not 2000 <= p <= 2999}
    assert all(target == port for port, target in wanted.items())


@pytest.mark.parametrize(("addr", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("198.51.100.2", False), ("::ffff:198.51.100.2", False), ("2001:db8::1", False),
    ("fe80::1%up0", False), ("::", False),
])
def test_loopback_clients(addr: str, loopback: bool) -> None:
    assert is_loopback(addr) is loopback


@given(st.ip_addresses())
def test_loopback_agrees_with_ipaddress_on_kernel_formatted_addresses(ip) -> None:
    assert is_loopback(str(ip)) is ip.is_loopback
    assert ip_version(str(ip)) == ip.version
    mapped = f"::ffff:{ip}" if ip.version == 4 else None
    if mapped is not None:
        assert (is_loopback(mapped), ip_version(mapped)) == (ip.is_loopback, 4)


NS4, NS6 = bytes([198, 51, 100, 2]), bytes.fromhex("20010db8000100000000000000000002")


@pytest.mark.parametrize(("version", "ns_addr", "ns_lo", "target"), [
    (4, NS4, False, "198.51.100.2"),
    (6, NS6, False, "2001:db8:1::2"),
    (4, NS4, True, "127.0.0.1"),
    (6, NS6, True, "::1"),
    (4, None, False, "127.0.0.1"),
    (6, None, False, "::1"),
])
def test_spliced_target(version: int, ns_addr: bytes | None, ns_lo: bool, target: str) -> None:
    """The namespace's own address by default (pasta ≥ 2024), its loopback with
    --host-lo-to-ns-lo or when it has no address of that version."""
    assert spliced_target(version, ns_addr, ns_lo) == target
