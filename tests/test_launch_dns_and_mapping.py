"""What launch makes of resolv.conf, the DNS options and the host mappings, and its test
hooks (PASTA_NET_RESOLV_CONF, PASTA_NET_UDP_TIMEOUT). No namespace needed."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pasta_net import launch, netconf
from pasta_net.core.mapping import AddressMap
from pasta_net.core.plan import AddressPlan
from pasta_net.options import parse_args


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


HOST = netconf.HostConfig(
    ifname="eth0", mac=bytes.fromhex("020000000001"), mtu=1500,
    addr4=packed("198.51.100.2"), prefix4=24, gw4=packed("198.51.100.1"),
    addr6=packed("2001:db8:1::2"), prefix6=64, gw6=packed("2001:db8:1::1"))


@pytest.fixture(autouse=True)
def resolv_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_text("search example.test\nnameserver 203.0.113.53\nnameserver 2001:db8:2::53\n")
    monkeypatch.setenv(launch.RESOLV_CONF_ENV, str(path))
    return path


ANNOUNCE = ("--dhcp-dns", "--dhcp-search")
"""In pasta mode, DHCP/DHCPv6/NDP announce DNS servers and domains only when asked."""


def configure(*argv: str) -> tuple[AddressPlan, AddressMap]:
    options = parse_args(argv)
    plan = launch.address_plan(options, HOST)
    return plan, launch.address_map(options, plan, HOST)


def test_nothing_is_announced_unless_asked() -> None:
    plan = configure("--dns-forward", "169.254.1.1")[0]
    assert (plan.dns4, plan.dns6, plan.search) == ((), (), ())


def test_resolvers_and_search_come_from_the_named_file() -> None:
    plan, mapping = configure(*ANNOUNCE)
    assert (plan.dns4, plan.dns6) == ((packed("203.0.113.53"),), (packed("2001:db8:2::53"),))
    assert plan.search == ("example.test",)
    assert mapping.dns_forward == ()


def test_unreadable_resolv_conf_means_no_resolvers(resolv_conf: Path) -> None:
    resolv_conf.unlink()
    plan, mapping = configure(*ANNOUNCE)
    assert (plan.dns4, plan.dns6, plan.search) == ((), (), ())
    assert (mapping.dns_host4, mapping.dns_host6) == (None, None)


def test_dns_forward_is_announced_and_leads_to_the_first_resolver() -> None:
    plan, mapping = configure(*ANNOUNCE, "--dns-forward", "169.254.1.1")
    assert (plan.dns4, plan.dns6) == ((packed("169.254.1.1"),), ())
    assert mapping.outbound(packed("169.254.1.1"), 53) == ("203.0.113.53", 53)
    assert mapping.outbound(packed("169.254.1.1"), 80) == ("169.254.1.1", 80)


def test_dns_host_replaces_the_resolver() -> None:
    _plan, mapping = configure("--dns-forward", "fd00::53", "--dns-host", "2001:db8:9::9")
    assert mapping.outbound(packed("fd00::53"), 53) == ("2001:db8:9::9", 53)


def test_dns_option_is_announced_instead() -> None:
    plan, _mapping = configure(*ANNOUNCE, "--dns-forward", "169.254.1.1", "-D", "192.0.2.1",
                               "-S", "a.test")
    assert (plan.dns4, plan.search) == ((packed("192.0.2.1"),), ("a.test",))


@pytest.mark.parametrize(("argv", "loopback"), [
    ((), ("198.51.100.1", "2001:db8:1::1")),
    (("--no-map-gw",), ()),
    (("--map-host-loopback", "169.254.1.3"), ("169.254.1.3",)),
    (("--map-host-loopback", "none"), ()),
])
def test_host_loopback_is_the_gateway_unless_told_otherwise(argv: tuple[str, ...],
                                                            loopback: tuple[str, ...]) -> None:
    assert configure(*argv)[1].host_loopback == tuple(map(packed, loopback))


def test_guest_addr_leads_to_the_hosts_address() -> None:
    mapping = configure("--map-guest-addr", "169.254.1.2")[1]
    assert mapping.outbound(packed("169.254.1.2"), 8080) == ("198.51.100.2", 8080)


@pytest.mark.parametrize(("value", "timeout"), [(None, 180.0), ("", 180.0), ("2.5", 2.5)])
def test_udp_timeout_hook(monkeypatch: pytest.MonkeyPatch, value: str | None,
                          timeout: float) -> None:
    if value is not None:
        monkeypatch.setenv(launch.UDP_TIMEOUT_ENV, value)
    assert launch._udp_timeout() == timeout


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_bad_udp_timeout_is_a_startup_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(launch.UDP_TIMEOUT_ENV, value)
    with pytest.raises(launch.StartupError, match=launch.UDP_TIMEOUT_ENV):
        launch._udp_timeout()


def test_loopback_resolver_is_reached_at_the_gateway(resolv_conf: Path) -> None:
    """systemd-resolved's 127.0.0.53: pasta announces the gateway instead and sends the
    gateway's port 53 to the real resolver (port 53 of 127.0.0.1 would be nobody)."""
    resolv_conf.write_text("nameserver 127.0.0.53\nnameserver ::1\nnameserver 203.0.113.53\n")
    plan, mapping = configure(*ANNOUNCE)
    gw4, gw6 = packed("198.51.100.1"), packed("2001:db8:1::1")
    assert (plan.dns4, plan.dns6) == ((gw4, packed("203.0.113.53")), (gw6,))
    assert mapping.outbound(gw4, 53) == ("127.0.0.53", 53)
    assert mapping.outbound(gw6, 53) == ("::1", 53)
    assert mapping.outbound(gw4, 80) == ("127.0.0.1", 80)


def test_loopback_resolver_without_host_loopback_mapping_is_left_out(resolv_conf: Path) -> None:
    resolv_conf.write_text("nameserver 127.0.0.53\n")
    plan, mapping = configure(*ANNOUNCE, "--no-map-gw")
    assert plan.dns4 == ()
    assert mapping.outbound(packed("198.51.100.1"), 53) == ("198.51.100.1", 53)


def test_explicit_dns_forward_keeps_the_gateway_plain(resolv_conf: Path) -> None:
    resolv_conf.write_text("nameserver 127.0.0.53\n")
    mapping = configure("--dns-forward", "169.254.1.1")[1]
    assert mapping.outbound(packed("169.254.1.1"), 53) == ("127.0.0.53", 53)
    assert mapping.outbound(packed("198.51.100.1"), 53) == ("127.0.0.1", 53)


# --------------------------------------------------------------- local mode --
class FailingHelper:
    """The netlink helper's answer when the host cannot be read."""

    def __init__(self, error: netconf.NetconfError) -> None:
        self.error = error

    def host(self) -> dict[str, object]:
        raise self.error


NO_ROUTE = netconf.NoDefaultRoute("No interfaces with usable default routes")


def offline(*argv: str, error: netconf.NetconfError = NO_ROUTE
            ) -> tuple[AddressPlan, AddressMap]:
    options = parse_args(argv)
    host = launch.read_host(options, FailingHelper(error))  # type: ignore[arg-type]
    plan = launch.address_plan(options, host)
    return plan, launch.address_map(options, plan, host)


def test_offline_host_gives_pastas_local_mode() -> None:
    """169.254.2.1/16 via 169.254.2.2, which leads to the host's loopback; no IPv6, and
    no "host's own address" to map to (the local address is not the host's)."""
    plan, mapping = offline("--map-guest-addr", "169.254.1.2")
    assert (plan.addr4, plan.prefix4, plan.gw4) == (packed("169.254.2.1"), 16,
                                                    packed("169.254.2.2"))
    assert (plan.addr6, plan.gw6) == (None, None)
    assert mapping.outbound(packed("169.254.2.2"), 8080) == ("127.0.0.1", 8080)
    assert mapping.outbound(packed("169.254.1.2"), 8080) == ("169.254.1.2", 8080)
    assert mapping.apparent_source("127.0.0.1") == packed("169.254.2.2")
    assert (mapping.host_addr4, mapping.host_addr6) == (None, None)


def test_offline_host_keeps_given_addresses() -> None:
    """podman's custom-network argv (-a, -n, -g) on an offline host: the options win."""
    plan = offline("-a", "10.0.2.100", "-n", "24", "-g", "10.0.2.2")[0]
    assert (plan.addr4, plan.prefix4, plan.gw4) == (packed("10.0.2.100"), 24, packed("10.0.2.2"))


@pytest.mark.parametrize("error", [
    netconf.NetconfError("No such interface: eth0"),
    netconf.NetconfError("netlink helper died before read_host"),
])
def test_other_failures_to_read_the_host_are_errors(error: netconf.NetconfError) -> None:
    """Only "no default route" means local mode: a fault must not put an online host
    there."""
    with pytest.raises(launch.StartupError, match=f"External interface not usable: {error}"):
        offline("-i", "eth0", error=error)
