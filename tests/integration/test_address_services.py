"""Address services end to end: a namespace without --config-net configures itself.

pasta-net only brings the tap up; what the namespace then learns comes from real clients
talking to our DHCP, DHCPv6 and NDP servers, and is checked where those clients put it:

- DHCPv4: busybox ``udhcpc``, whose event script (``CLIENT_SCRIPT``) applies the lease with
  ``ip``, writes a resolv.conf and records the environment udhcpc gave it.
- SLAAC: the container's own kernel (``accept_ra`` on, forwarding off, as in any new
  netns), from the router advertisements we send at start and on solicitation.
- DHCPv6: ISC ``dhclient -6`` (Debian's isc-dhcp-client; busybox-static 1.35 in Debian 12
  has no ``udhcpc6``), with the same script.
- RS/NS by hand: ``rdisc6`` and ``ndisc6`` (Debian's ndisc6), independent decoders of our
  advertisements.

What the namespace's IPv6 address is, and why there are two: as in pasta, the RA
announces the /64 of the host's address with the autonomous flag, so the kernel forms
an EUI-64 address from the tap's MAC in 2001:db8:1::/64 — not 2001:db8:1::2 — and the
RA's managed flag tells a DHCPv6 client that the exact address is to be had by DHCPv6,
where the IA_NA carries 2001:db8:1::2 (which the client adds as a /128). Outgoing
traffic works from either (a flow keeps the source it was opened with); inbound
forwards go to 2001:db8:1::2, which only DHCPv6 gives.

No test reads the machine's resolv.conf: every one points $PASTA_NET_RESOLV_CONF at a
file of its own.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sandbox
from sandbox import GATEWAY_V4, HOST_V4, HOST_V6, REMOTE_V4, REMOTE_V6
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, IPv6
from scapy.utils import rdpcap

NO_FORWARDS = ["-t", "none", "-u", "none", "-T", "none", "-U", "none"]
TAP = "up0"
"""The tap takes the name of the host's default-route interface."""
PING = ["ping", "-c", "2", "-i", "0.2", "-W", "5"]
INFINITE = str(0xFFFFFFFF)

RESOLV_CONF = "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example.org\n"
"""The "host's" resolvers: the loopback one must not be handed out (it is the host's own
stub, unreachable from the namespace)."""

CLIENT_SCRIPT = """#!/bin/sh
# Event script for udhcpc ($1) and dhclient ($reason): apply what the server gave with
# `ip` as a distribution's script would, then record the client's environment.
event=${1:-$reason}
case "$event" in
bound|renew)
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/$mask" dev "$interface"
    [ -z "$mtu" ] || ip link set dev "$interface" mtu "$mtu"
    [ -z "$router" ] || ip -4 route replace default via "${router%% *}" dev "$interface"
    {
        [ -z "$search" ] || echo "search $search"
        for server in $dns; do echo "nameserver $server"; done
    } > "@DIR@/resolv.conf.dhcp"
    ;;
BOUND6|RENEW6|REBIND6)
    ip -6 addr add "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" nodad
    ;;
esac
env > "@DIR@/$event"
"""

DHCLIENT_CONF = "timeout 3;\n"
"""How long `dhclient -1` tries before it gives up (exit 2)."""
RDISC6 = ["rdisc6", "-1", "-r", "2", "-w", "1000"]
NDISC6 = ["ndisc6", "-1", "-r", "2", "-w", "1000"]
"""At most two solicitations a second apart: answers come at once, silence costs 2 s."""

TOOLS = {"busybox": "busybox-static", "dhclient": "isc-dhcp-client", "rdisc6": "ndisc6",
         "ndisc6": "ndisc6"}


@pytest.fixture(autouse=True)
def _tools() -> None:
    """Fail (not skip) with the package to install when a client is missing."""
    missing = sorted({package for tool, package in TOOLS.items() if not shutil.which(tool)})
    if missing:
        pytest.fail(f"missing clients: apt-get install {' '.join(missing)}")


@pytest.fixture(autouse=True)
def _resolv_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "host-resolv.conf"
    path.write_text(RESOLV_CONF)
    monkeypatch.setenv("PASTA_NET_RESOLV_CONF", str(path))


class Clients:
    """The DHCP clients and ND probes of one test, run inside its container."""

    def __init__(self, container: sandbox.Container, workdir: Path) -> None:
        self.container = container
        self.records = workdir / "client"
        self.records.mkdir()
        self.script = workdir / "client.script"
        self.script.write_text(CLIENT_SCRIPT.replace("@DIR@", str(self.records)))
        self.script.chmod(0o755)
        self.dhclient_conf = workdir / "dhclient.conf"
        self.dhclient_conf.write_text(DHCLIENT_CONF)

    def record(self, event: str) -> dict[str, str] | None:
        """The environment the client gave the script for ``event``, if it happened."""
        path = self.records / event
        if not path.exists():
            return None
        lines = path.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def udhcpc(self, tries: int = 3) -> subprocess.CompletedProcess[bytes]:
        """One run of busybox udhcpc: exits 0 with a lease, 1 without (-n)."""
        return self.container.run(
            ["busybox", "udhcpc", "-i", TAP, "-q", "-n", "-f", "-t", str(tries), "-T", "1",
             "-s", str(self.script)], check=False)

    def lease(self) -> dict[str, str]:
        """udhcpc must get a lease; what its script was given."""
        result = self.udhcpc()
        lease = self.record("bound")
        assert result.returncode == 0 and lease is not None, result
        return lease

    def dhclient6(self) -> dict[str, str] | None:
        """`dhclient -6` until it binds (then it is stopped) or gives up; the BOUND6 record.

        In the foreground (-d) dhclient stays to renew once bound, so it is ended by pid.
        """
        process = self.container.popen(
            ["dhclient", "-6", "-1", "-d", "-cf", str(self.dhclient_conf),
             "-sf", str(self.script), "-lf", str(self.records / "leases6"),
             "-pf", str(self.records / "dhclient6.pid"), TAP],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sandbox.wait_until(lambda: process.poll() is not None or bool(self.record("BOUND6")),
                               10.0, "dhclient -6 binding or giving up")
        finally:
            sandbox.stop_popen(process)
        return self.record("BOUND6")

    def rdisc6(self) -> dict[str, str] | None:
        """Solicit a router; the fields of the advertisement as rdisc6 decoded them."""
        return _fields(self.container.run([*RDISC6, TAP], check=False))

    def ndisc6(self, target: str) -> dict[str, str] | None:
        """Solicit ``target``; the fields of the advertisement as ndisc6 decoded them."""
        return _fields(self.container.run([*NDISC6, target, TAP], check=False))


def _fields(result: subprocess.CompletedProcess[bytes]) -> dict[str, str] | None:
    """rdisc6/ndisc6 output as {field: value} ("from" names the sender), None for silence."""
    if result.returncode != 0:
        return None
    fields: dict[str, str] = {}
    for line in result.stdout.decode().splitlines():
        key, colon, value = line.partition(":")
        if line.startswith(" from "):
            fields["from"] = line.split()[1]
        elif colon:
            fields.setdefault(key.strip(), value.strip())
    return fields


@pytest.fixture
def clients(container: sandbox.Container, tmp_path: Path) -> Clients:
    return Clients(container, tmp_path)


def start(pasta_net: sandbox.ProgramRunner, *args: str) -> sandbox.Running:
    return pasta_net.start([*NO_FORWARDS, *args])


def link(netns: sandbox.Netns | None, ifname: str = TAP) -> dict[str, Any]:
    """`ip -j link show` of one interface, in ``netns`` or (None) the sandbox host."""
    argv = ["ip", "-j", "link", "show", ifname]
    result = netns.run(argv) if netns else sandbox.run_command(argv)
    return json.loads(result.stdout)[0]


def our_mac() -> str:
    """The MAC we answer with: copied from the host's interface, as pasta does."""
    return link(None)["address"]


def slaac_address(container: sandbox.Container) -> ipaddress.IPv6Address:
    """The EUI-64 address the kernel forms in 2001:db8:1::/64 from the tap's MAC."""
    mac = bytearray.fromhex(link(container)["address"].replace(":", ""))
    mac[0] ^= 0x02
    iid = bytes(mac[:3]) + b"\xff\xfe" + bytes(mac[3:])
    return ipaddress.IPv6Address(ipaddress.IPv6Address("2001:db8:1::").packed[:8] + iid)


def ipv6_addresses(container: sandbox.Container) -> list[dict[str, Any]]:
    """Global IPv6 addresses of the tap, as `ip -j` gives them (with their flags)."""
    links = json.loads(container.run(["ip", "-j", "-6", "addr", "show", "dev", TAP]).stdout)
    return [a for entry in links for a in entry.get("addr_info", [])
            if a.get("scope") == "global"]


def default_routes(container: sandbox.Container, family: str) -> list[dict[str, Any]]:
    return json.loads(container.run(["ip", "-j", family, "route", "show", "default"]).stdout)


def sysctl(container: sandbox.Container, name: str) -> str:
    return container.run(["sysctl", "-n", name]).stdout.decode().strip()


def wait_for_slaac(container: sandbox.Container, timeout: float = 5.0) -> None:
    sandbox.wait_until(lambda: any(a.get("dynamic") for a in ipv6_addresses(container)),
                       timeout, "an address from the router advertisement")


# -- DHCPv4 -----------------------------------------------------------------------------------

LEASE_FIELDS = ("dns", "search", "domain", "mtu", "hostname", "opt81")
FQDN_OPTION = (bytes((0x0C, 255, 255)) + b"\x06guest1\x07example\x03org\x00").hex()
"""RFC 4702: flags E (wire format) and N (the server updates no DNS), RCODEs 255, name."""


@pytest.mark.parametrize(("args", "expected"), [
    ([], {"mtu": "65520"}),
    (["-D", "192.0.2.10", "-D", "2001:db8:53::10", "-D", "192.0.2.11", "-S", "example.test",
      "-S", "lab.example.test", "--dhcp-dns", "--dhcp-search"],
     {"dns": "192.0.2.10 192.0.2.11", "search": "example.test lab.example.test",
      "domain": "example.test", "mtu": "65520"}),
    (["--dns-forward", "169.254.1.1", "--dhcp-dns"], {"dns": "169.254.1.1", "mtu": "65520"}),
    # the host's loopback resolver (127.0.0.53) is announced at the gateway, which maps
    # to the host's loopback (as pasta does); the other resolver as it is
    (["--dhcp-dns", "--dhcp-search"],
     {"dns": "198.51.100.1 192.0.2.53", "search": "example.org", "domain": "example.org",
      "mtu": "65520"}),
    (["-D", "none", "-S", "none", "--dhcp-dns", "--dhcp-search"], {"mtu": "65520"}),
    (["-D", "192.0.2.10", "-S", "example.test"], {"mtu": "65520"}),
    (["-m", "1500", "-H", "guest1", "--fqdn", "guest1.example.org"],
     {"mtu": "1500", "hostname": "guest1", "opt81": FQDN_OPTION}),
    (["-m", "0"], {}),
], ids=["pasta-defaults", "dns-and-search", "dns-forward", "host-resolv-conf", "none",
        "dns-without-dhcp-dns", "mtu-hostname-fqdn", "mtu-0-not-sent"])
def test_udhcpc_lease(pasta_net: sandbox.ProgramRunner, clients: Clients,
                      args: list[str], expected: dict[str, str]) -> None:
    """The lease is the host's address and gateway, forever; DNS and search domains only
    with --dhcp-dns/--dhcp-search (pasta's defaults), from -D/-S, --dns-forward or the
    host's resolv.conf; option 26 from -m (pasta's 65520 by default, none for -m 0)."""
    start(pasta_net, *args)
    lease = clients.lease()

    assert (lease["ip"], lease["mask"], lease["subnet"]) == (HOST_V4, "24", "255.255.255.0")
    assert (lease["router"], lease["serverid"]) == (GATEWAY_V4, GATEWAY_V4)
    assert lease["lease"] == INFINITE
    assert {k: lease[k] for k in LEASE_FIELDS if k in lease} == expected


def test_udhcpc_configures_the_namespace_and_the_remote_answers_ping(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, clients: Clients
) -> None:
    start(pasta_net, "-D", "192.0.2.10", "-S", "example.test", "--dhcp-dns", "--dhcp-search",
          "-m", "1500")
    clients.lease()

    assert str(container.wait_for_address(HOST_V4).interface) == f"{HOST_V4}/24"
    assert [r["gateway"] for r in default_routes(container, "-4")] == [GATEWAY_V4]
    assert link(container)["mtu"] == 1500
    resolv = (clients.records / "resolv.conf.dhcp").read_text()
    assert resolv == "search example.test\nnameserver 192.0.2.10\n"
    container.run([*PING, REMOTE_V4])


# -- IPv6: router advertisements and SLAAC ----------------------------------------------------

def test_slaac_address_and_default_route_then_the_remote_answers_ping(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    start(pasta_net)
    # The kernel does SLAAC only if the tap accepts RAs and the namespace is not a router;
    # a new netns has accept_ra=1 and forwarding=0 unless net.core.devconf_inherit_init_net
    # copies the machine's settings into it.
    assert sysctl(container, f"net.ipv6.conf.{TAP}.accept_ra") in ("1", "2")
    assert sysctl(container, f"net.ipv6.conf.{TAP}.forwarding") == "0"
    wait_for_slaac(container)

    [address] = ipv6_addresses(container)
    assert ipaddress.IPv6Address(address["local"]) == slaac_address(container)
    assert address["prefixlen"] == 64 and address.get("mngtmpaddr")
    [route] = default_routes(container, "-6")
    assert (route["gateway"], route["dev"], route["protocol"]) == ("fe80::1", TAP, "ra")
    container.run(["ping", "-6", *PING[1:], REMOTE_V6])


def test_advertisement_at_start_needs_no_solicitation(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, tmp_path: Path
) -> None:
    """With router solicitation off in the namespace, only our own advertisement at start
    can configure it: the periodic one would come 300 s later."""
    container.run(["sysctl", "-qw", "net.ipv6.conf.default.router_solicitations=0"])
    capture = tmp_path / "tap.pcap"
    running = start(pasta_net, "-p", str(capture))
    assert sysctl(container, f"net.ipv6.conf.{TAP}.router_solicitations") == "0"
    wait_for_slaac(container)
    running.stop()

    packets = rdpcap(str(capture))
    assert not any(p.haslayer(ICMPv6ND_RS) for p in packets)
    assert any(p.haslayer(ICMPv6ND_RA) and p[IPv6].dst == "ff02::1" for p in packets)


def test_router_solicitation_gets_our_advertisement(
    pasta_net: sandbox.ProgramRunner, clients: Clients
) -> None:
    start(pasta_net, "-D", "2001:db8:53::10", "-D", "192.0.2.10", "-S", "example.test",
          "--dhcp-dns", "--dhcp-search", "-m", "1500")
    ra = clients.rdisc6()

    assert ra is not None, "no advertisement"
    assert ra["from"] == "fe80::1"
    assert ra["Source link-layer address"].lower() == our_mac()
    assert ra["Stateful address conf."] == "Yes", "managed: the address is also in DHCPv6"
    assert ra["Router lifetime"].startswith("65535 ")
    assert (ra["Prefix"], ra["On-link"], ra["Autonomous address conf."]) == (
        "2001:db8:1::/64", "Yes", "Yes")
    assert ra["MTU"].startswith("1500 bytes")
    assert ra["Recursive DNS server"] == "2001:db8:53::10"
    assert ra["DNS search list"] == "example.test"


@pytest.mark.parametrize("target", ["2001:db8:1::1", "fe80::1", "2001:db8:1::99"])
def test_every_neighbour_is_us(pasta_net: sandbox.ProgramRunner, clients: Clients,
                               target: str) -> None:
    start(pasta_net)
    na = clients.ndisc6(target)

    assert na is not None, "no advertisement"
    assert (na["Target link-layer address"].lower(), na["from"]) == (our_mac(), target)


# -- DHCPv6 -----------------------------------------------------------------------------------

def test_dhcpv6_client_gets_the_hosts_address_then_the_remote_answers_ping(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, clients: Clients
) -> None:
    start(pasta_net, "-D", "2001:db8:53::10", "-S", "example.test", "--dhcp-dns",
          "--dhcp-search", "--fqdn", "guest1.example.org")
    lease = clients.dhclient6()

    assert lease is not None, "no DHCPv6 lease"
    assert (lease["new_ip6_address"], lease["new_ip6_prefixlen"]) == (HOST_V6, "128")
    assert (lease["new_preferred_life"], lease["new_max_life"]) == (INFINITE, INFINITE)
    assert lease["new_dhcp6_name_servers"] == "2001:db8:53::10"
    assert lease["new_dhcp6_domain_search"] == "example.test."
    assert lease["new_fqdn_fqdn"] == "guest1.example.org"
    duid = bytes(int(byte, 16) for byte in lease["new_dhcp6_server_id"].split(":"))
    assert duid == b"\x00\x03\x00\x01" + bytes.fromhex(our_mac().replace(":", "")), "DUID-LL"

    container.wait_for_address(HOST_V6)
    wait_for_slaac(container)  # the default route comes from the advertisement
    container.run(["ping", "-6", *PING[1:], "-I", HOST_V6, REMOTE_V6])


# -- switches ---------------------------------------------------------------------------------

SERVICES = ("dhcp", "dhcpv6", "ra", "na", "slaac", "router")


def answered(clients: Clients, container: sandbox.Container) -> set[str]:
    """Which services the namespace got an answer from, each probed once."""
    probes = {
        "dhcp": lambda: clients.udhcpc(tries=2).returncode == 0,
        "dhcpv6": lambda: clients.dhclient6() is not None,
        "ra": lambda: clients.rdisc6() is not None,
        "na": lambda: clients.ndisc6("2001:db8:1::1") is not None,
        # last: by now the startup advertisement and the kernel's solicitations are seconds old
        "slaac": lambda: any(a.get("dynamic") for a in ipv6_addresses(container)),
        "router": lambda: bool(default_routes(container, "-6")),
    }
    return {service for service, probe in probes.items() if probe()}


@pytest.mark.parametrize(("switch", "silenced"), [
    ("--no-dhcp", {"dhcp"}),
    ("--no-dhcpv6", {"dhcpv6"}),
    ("--no-ra", {"ra", "slaac", "router"}),
    ("--no-ndp", {"ra", "na", "slaac", "router"}),
])
def test_switch_silences_only_its_service(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, clients: Clients,
    switch: str, silenced: set[str]
) -> None:
    start(pasta_net, switch)
    assert answered(clients, container) == set(SERVICES) - silenced
