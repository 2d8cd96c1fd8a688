"""pasta's command line: every option form, the exact argv of podman and RootlessKit,
glibc getopt_long's rules, and pasta's error wording."""

from __future__ import annotations

import ipaddress
import shlex
from typing import Any

import pytest

from pasta_net import __version__
from pasta_net.core.portspec import PortMode
from pasta_net.options import (
    Action,
    Mode,
    Options,
    RunAs,
    UsageError,
    help_text,
    parse_args,
    resolve_runas,
    version_text,
)


def parse(cmdline: str, *, passt: bool = False) -> Options:
    return parse_args(shlex.split(cmdline), prog="pasta", passt=passt)


def field(opts: object, path: str) -> Any:
    """``field(opts, "ip4.address")``; a number indexes a tuple (``ports.tcp.0``)."""
    for name in path.split("."):
        opts = opts[int(name)] if name.isdigit() else getattr(opts, name)  # type: ignore[index]
    return opts


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def specs(opts: Options, which: str) -> list[str] | None:
    """The texts of -t/-u/-T/-U as stored, or None when never given."""
    found = getattr(opts.ports, which)
    return None if found is None else [spec.text for spec in found]


def usage_error(cmdline: str, *, passt: bool = False) -> UsageError:
    with pytest.raises(UsageError) as info:
        parse(cmdline, passt=passt)
    return info.value


# --- every option ---------------------------------------------------------------------

OPTION_FORMS: list[tuple[str, dict[str, object]]] = [
    ("", {"mode": Mode.PASTA, "action": Action.RUN, "mtu": 65520, "command": (),
          "pid": None, "log.log_size": 1024 * 1024, "dns.dhcp_dns": False}),
    ("-d", {"log.debug": True}),
    ("--debug", {"log.debug": True}),
    ("--trace", {"log.trace": True, "log.debug": True}),
    ("-q", {"log.quiet": True}),
    ("--quiet", {"log.quiet": True}),
    ("-d -q", {"log.quiet": True, "log.debug": False}),
    ("-q -d", {"log.quiet": False, "log.debug": True}),
    ("-q --trace", {"log.quiet": False, "log.trace": True}),
    ("-f", {"log.foreground": True}),
    ("--foreground", {"log.foreground": True}),
    ("-e", {"log.stderr": True}),
    ("--stderr", {"log.stderr": True}),
    ("-l /tmp/log", {"log.log_file": "/tmp/log"}),
    ("--log-file=/tmp/log", {"log.log_file": "/tmp/log"}),
    ("--log-size 65536", {"log.log_size": 65536}),
    ("--log-size 0x100000", {"log.log_size": 0x100000}),
    ("-f --stats 5", {"log.stats": 5}),
    ("--runas 1000", {"runas": RunAs(user=1000)}),
    ("--runas 1000:1001", {"runas": RunAs(user=1000, group=1001)}),
    ("--runas nobody", {"runas": RunAs(user="nobody")}),
    ("--runas nobody:nogroup", {"runas": RunAs(user="nobody", group="nogroup")}),
    ("-I tap0", {"ns.ifname": "tap0"}),
    ("--ns-ifname=eth0", {"ns.ifname": "eth0"}),
    ("-F 3", {"fd": 3, "one_off": True}),
    ("--fd 0x3", {"fd": 3}),
    ("-p /tmp/x.pcap", {"pcap": "/tmp/x.pcap"}),
    ("--pcap /tmp/x.pcap", {"pcap": "/tmp/x.pcap"}),
    ("-P /run/p.pid", {"pid_file": "/run/p.pid"}),
    ("--pid /run/p.pid", {"pid_file": "/run/p.pid"}),
    ("-m 1500", {"mtu": 1500}),
    ("-m1500", {"mtu": 1500}),
    ("--mtu 0", {"mtu": 0}),
    ("--mtu=65520", {"mtu": 65520}),
    ("-a 10.0.2.100", {"ip4.address": ip("10.0.2.100"), "ip4.prefix_len": None}),
    ("-a 10.0.2.100/24", {"ip4.address": ip("10.0.2.100"), "ip4.prefix_len": 24}),
    ("-a 2001:db8::2", {"ip6.address": ip("2001:db8::2"), "ip4.address": None}),
    ("-a 2001:db8::2/64", {"ip6.prefix_len": 64}),
    ("-a 10.0.0.1 -a 2001:db8::2", {"ip4.address": ip("10.0.0.1"),
                                     "ip6.address": ip("2001:db8::2")}),
    ("-a 10.0.0.1 -a 10.0.0.2", {"ip4.address": ip("10.0.0.2")}),
    ("-a ::ffff:10.0.0.1", {"ip4.address": ip("10.0.0.1")}),
    ("-n 24", {"ip4.prefix_len": 24}),
    ("-n 255.255.255.0", {"ip4.prefix_len": 24}),
    ("--netmask 255.255.0.0", {"ip4.prefix_len": 16}),
    ("-n 0.0.0.0", {"ip4.prefix_len": 0}),
    ("-n 24 -a 10.0.0.1", {"ip4.prefix_len": 24}),
    ("-a 10.0.0.1 -n 24", {"ip4.prefix_len": 24}),
    ("-M 02:00:00:00:00:01", {"mac_addr": bytes.fromhex("020000000001")}),
    ("--mac-addr 9A:55:9A:55:9A:55", {"mac_addr": bytes.fromhex("9a559a559a55")}),
    ("--ns-mac-addr 02:00:00:00:00:02", {"ns.mac_addr": bytes.fromhex("020000000002")}),
    ("-g 10.0.2.2", {"ip4.gateway": ip("10.0.2.2")}),
    ("--gateway fe80::1", {"ip6.gateway": ip("fe80::1")}),
    ("-i eth0", {"interface": "eth0"}),
    ("--interface=wlan0", {"interface": "wlan0"}),
    ("-o 192.0.2.1", {"ip4.outbound": ip("192.0.2.1")}),
    ("--outbound 2001:db8::5", {"ip6.outbound": ip("2001:db8::5")}),
    ("--outbound-if4 eth0 --outbound-if6 eth1", {"ip4.outbound_if": "eth0",
                                                 "ip6.outbound_if": "eth1"}),
    ("-D 1.1.1.1 --dns 2606:4700::1111 -D 8.8.8.8",
     {"dns.servers": (ip("1.1.1.1"), ip("2606:4700::1111"), ip("8.8.8.8"))}),
    ("-D none", {"dns.disabled": True, "dns.servers": ()}),
    ("-D 1.1.1.1 -D none", {"dns.disabled": True, "dns.servers": ()}),
    ("-D none -D 1.1.1.1", {"dns.disabled": False, "dns.servers": (ip("1.1.1.1"),)}),
    ("--dns-forward 10.0.2.3 -D none", {"ip4.dns_forward": None}),
    ("-S example.com", {"dns.search": ("example.com",)}),
    ("-S 'a.example b.example' --search c.example",
     {"dns.search": ("a.example", "b.example", "c.example")}),
    ("-S none", {"dns.search_disabled": True, "dns.search": ()}),
    ("--dhcp-dns", {"dns.dhcp_dns": True}),
    ("--dhcp-search", {"dns.dhcp_search": True}),
    ("--dns-forward 169.254.1.1", {"ip4.dns_forward": ip("169.254.1.1")}),
    ("--dns-forward 169.254.1.1 --dns-forward fd00::3",
     {"ip4.dns_forward": ip("169.254.1.1"), "ip6.dns_forward": ip("fd00::3")}),
    ("--dns-host 127.0.0.53", {"ip4.dns_host": ip("127.0.0.53")}),
    ("--dns-host ::1", {"ip6.dns_host": ip("::1")}),
    ("--no-tcp", {"no_tcp": True}),
    ("--no-udp", {"no_udp": True}),
    ("--no-icmp", {"no_icmp": True, "no_ndp": True}),
    ("--no-dhcp", {"no_dhcp": True}),
    ("--no-ndp", {"no_ndp": True, "no_icmp": False}),
    ("--no-dhcpv6", {"no_dhcpv6": True}),
    ("--no-ra", {"no_ra": True}),
    ("--no-map-gw", {"no_map_gw": True}),
    ("--no-map-gw --map-gw", {"no_map_gw": False}),
    ("--map-host-loopback 10.0.2.2", {"ip4.map_host_loopback": ip("10.0.2.2")}),
    ("--map-host-loopback fd00::2", {"ip6.map_host_loopback": ip("fd00::2")}),
    ("--map-host-loopback 10.0.2.2 --map-host-loopback none",
     {"ip4.map_host_loopback": None, "no_map_gw": True}),
    ("--map-guest-addr 169.254.1.2", {"ip4.map_guest_addr": ip("169.254.1.2")}),
    ("--map-guest-addr 169.254.1.2 --map-guest-addr none",
     {"ip4.map_guest_addr": None, "no_map_gw": False}),
    ("-4", {"ipv4_only": True, "ipv6_only": False}),
    ("--ipv4-only", {"ipv4_only": True}),
    ("-6", {"ipv6_only": True}),
    ("--ipv6-only", {"ipv6_only": True}),
    ("--userns /proc/1/ns/user", {"ns.userns": "/proc/1/ns/user", "ns.netns_only": False}),
    ("--netns /run/user/1000/netns/x", {"ns.netns": "/run/user/1000/netns/x",
                                         "ns.netns_only": True}),
    ("--netns ctr1", {"ns.netns": "/run/netns/ctr1"}),
    ("--netns=ctr1 --userns=/proc/9/ns/user", {"ns.netns_only": False}),
    ("--netns-only", {"ns.netns_only": True}),
    ("--userns /u --netns-only", {"ns.netns_only": True, "ns.userns": None}),
    ("--no-netns-quit", {"ns.no_netns_quit": True}),
    ("--config-net", {"ns.config_net": True, "no_ra": True}),
    ("--config-net --no-copy-routes --no-copy-addrs", {"ns.no_copy_routes": True,
                                                        "ns.no_copy_addrs": True}),
    ("-H box", {"hostname": "box"}),
    ("--hostname box --fqdn box.example", {"hostname": "box", "fqdn": "box.example"}),
    ("--host-lo-to-ns-lo", {"host_lo_to_ns_lo": True}),
    ("--splice-only", {"splice_only": True, "host_lo_to_ns_lo": True, "no_icmp": True,
                       "no_ndp": True, "dns.disabled": True, "dns.search_disabled": True}),
    ("--no-splice", {"no_splice": True}),
    ("--freebind", {"freebind": True}),
    ("--chroot-fallback", {"chroot_fallback": True}),
    ("-c /run/pasta.ctl", {"control_path": "/run/pasta.ctl"}),
    ("--conf-path /run/pasta.ctl", {"control_path": "/run/pasta.ctl"}),
    ("--control=/run/pasta.ctl", {"control_path": "/run/pasta.ctl"}),
    ("--api-socket /run/api.sock", {"api_socket": "/run/api.sock"}),
    ("--follow-host", {"follow_host": True}),
]  # fmt: skip


@pytest.mark.parametrize(("cmdline", "expected"), OPTION_FORMS)
def test_option_forms(cmdline: str, expected: dict[str, object]) -> None:
    opts = parse(cmdline)
    for path, value in expected.items():
        assert field(opts, path) == value, path


@pytest.mark.parametrize(
    ("cmdline", "which", "texts"),
    [
        ("-t 22", "tcp", ["22"]),
        ("--tcp-ports 22 -t 25", "tcp", ["22", "25"]),
        ("--tcp-ports=8000-8010,auto", "tcp", ["8000-8010,auto"]),
        ("-u 53", "udp", ["53"]),
        ("--udp-ports=53", "udp", ["53"]),
        ("-T 5432", "tcp_ns", ["5432"]),
        ("--tcp-ns=5432", "tcp_ns", ["5432"]),
        ("-U 53", "udp_ns", ["53"]),
        ("--udp-ns 53", "udp_ns", ["53"]),
        ("-t none -t 80", "tcp", ["none", "80"]),
        ("-t 80 -u 80", "udp", ["80"]),
        ("-t 80 -T 80", "tcp_ns", ["80"]),
        ("-t 127.0.0.1/80 -t 127.0.0.2/80", "tcp", ["127.0.0.1/80", "127.0.0.2/80"]),
        ("-t 80-90,~85 -t 85", "tcp", ["80-90,~85", "85"]),
        ("-4 -t 80:10.0.0.1", "tcp", ["80:10.0.0.1"]),
        ("-6 -t 80:::1", "tcp", ["80:::1"]),
        ("-t 80,~80 -t none", "tcp", ["80,~80", "none"]),  # every port excluded: no rule
        ("-t ~1-65535", "tcp", ["~1-65535"]),
    ],
)
def test_port_options(cmdline: str, which: str, texts: list[str]) -> None:
    assert specs(parse(cmdline), which) == texts


def test_port_options_not_given_stay_none() -> None:
    """pasta defaults to auto for all four; the caller applies that, so "not given" shows."""
    opts = parse("-t 80")
    assert (opts.ports.udp, opts.ports.tcp_ns, opts.ports.udp_ns) == (None, None, None)


def test_port_specs_use_the_ephemeral_range_given() -> None:
    opts = parse_args(["-t", "~22"], ephemeral=(32768, 60999))
    assert opts.ports.tcp is not None
    assert [(f.first, f.last) for f in opts.ports.tcp[0].forwards] == [
        (1, 21), (23, 32767), (61000, 65535)
    ]


# --- the callers' exact command lines --------------------------------------------------


def test_podman_5_3() -> None:
    """containers/common pasta_linux_test.go, the default with no ports."""
    opts = parse(
        "--config-net --dns-forward 169.254.1.1 -t none -u none -T none -U none --no-map-gw "
        "--quiet --netns netns123 --map-guest-addr 169.254.1.2"
    )
    assert opts.ns.config_net and opts.no_map_gw and opts.log.quiet
    assert opts.ns.netns == "/run/netns/netns123"
    assert opts.ns.netns_only
    assert opts.ip4.dns_forward == ip("169.254.1.1")
    assert opts.ip4.map_guest_addr == ip("169.254.1.2")
    for which in ("tcp", "udp", "tcp_ns", "udp_ns"):
        assert specs(opts, which) == ["none"]
    assert opts.command == () and opts.pid is None


def test_podman_5_3_with_ports() -> None:
    opts = parse(
        "--config-net -t 80-80:60-60 -u 100-100:100-100 --dns-forward 169.254.1.1 -T none "
        "-U none --no-map-gw --quiet --netns netns123 --map-guest-addr 169.254.1.2"
    )
    assert opts.ports.tcp is not None and opts.ports.udp is not None
    assert opts.ports.tcp[0].target(80) == 60
    assert opts.ports.udp[0].target(100) == 100


def test_podman_live_process() -> None:
    """A process from podman 5.3 (podman issues #24970, #25152)."""
    opts = parse(
        "--config-net --dns-forward 169.254.1.1 -t none -u none -T none -U none --no-map-gw "
        "--quiet --netns /run/user/1000/netns/netns-ef11a5a8-056d-9e22-cfdc-83fa701bceae "
        "--map-guest-addr 169.254.1.2"
    )
    assert opts.ns.netns == "/run/user/1000/netns/netns-ef11a5a8-056d-9e22-cfdc-83fa701bceae"


def test_podman_published_port() -> None:
    opts = parse(
        "--config-net -t 8080-8080:80-80 --dns-forward 169.254.1.1 -u none -T none -U none "
        "--no-map-gw --quiet --netns /run/user/1000/netns/netns-UUID "
        "--map-guest-addr 169.254.1.2"
    )
    assert opts.ports.tcp is not None
    assert opts.ports.tcp[0].target(8080) == 80
    assert opts.ports.tcp[0].bind_ports() == [8080]


def test_podman_published_port_on_an_address() -> None:
    opts = parse("--config-net -t 127.0.0.1/8080-8080:80-80 -u none -T none -U none "
                 "--no-map-gw --netns /run/user/1000/netns/netns-UUID")
    assert opts.ports.tcp is not None
    assert opts.ports.tcp[0].forwards[0].addr == ip("127.0.0.1")


def test_podman_4() -> None:
    """v4.4-4.9: ports first, no --quiet, no DNS option."""
    opts = parse("--config-net -t 8080-8080:80-80 -u none -T none -U none --no-map-gw "
                 "--netns /run/user/1000/netns/netns-1")
    assert not opts.log.quiet
    assert opts.ip4.dns_forward is None


def test_podman_5_0_dns_none() -> None:
    opts = parse("--config-net -t 80-80:60-60 --dns none -u none -T none -U none --no-map-gw "
                 "--quiet --netns /run/user/1000/netns/netns-1")
    assert opts.dns.disabled


def test_podman_5_1_dns_forward() -> None:
    opts = parse("--config-net --dns-forward 169.254.0.1 -t none -u none -T none -U none "
                 "--no-map-gw --quiet --netns /run/user/1000/netns/netns-1")
    assert opts.ip4.dns_forward == ip("169.254.0.1")


def test_podman_rootless_netns() -> None:
    opts = parse("--config-net --pid /run/user/1000/containers/networks/rootless-netns/"
                 "rootless-netns-conn.pid --dns-forward 169.254.1.1 -t none -u none -T none "
                 "-U none --no-map-gw --quiet --netns /run/user/1000/netns/rootless-netns")
    assert opts.pid_file.endswith("rootless-netns-conn.pid")  # type: ignore[union-attr]


def test_podman_network_pasta_options() -> None:
    """--network pasta:-I,tap0,--ipv4-only,... from podman's network.md."""
    opts = parse(
        "--config-net -I tap0 --ipv4-only -a 10.0.2.0 -n 24 -g 10.0.2.2 --dns-forward 10.0.2.3 "
        "-m 1500 --no-ndp --no-dhcpv6 --no-dhcp -t none -u none -T none -U none --no-map-gw "
        "--quiet --netns /run/user/1000/netns/netns-1 --map-guest-addr 169.254.1.2"
    )
    assert opts.ns.ifname == "tap0"
    assert opts.ipv4_only
    assert (opts.ip4.address, opts.ip4.prefix_len) == (ip("10.0.2.0"), 24)
    assert opts.ip4.gateway == ip("10.0.2.2")
    assert opts.mtu == 1500
    assert opts.no_ndp and opts.no_dhcpv6 and opts.no_dhcp


def test_podman_network_pasta_port_options() -> None:
    opts = parse("--config-net -T 5432 -U 53 --map-host-loopback 10.0.2.2 --outbound-if4 eth0 "
                 "-t 8080-8080:80-80 -u none --no-map-gw --netns /run/user/1000/netns/n")
    assert specs(opts, "tcp_ns") == ["5432"]
    assert opts.ip4.map_host_loopback == ip("10.0.2.2")
    assert opts.ip4.outbound_if == "eth0"


def test_rootlesskit_with_paths() -> None:
    opts = parse(
        "--stderr --ns-ifname=tap0 --mtu=65520 --config-net --address=10.0.2.100 "
        "--netmask=24 --gateway=10.0.2.2 --dns-forward=10.0.2.3 --tcp-ports=auto "
        "--udp-ports=auto --host-lo-to-ns-lo --userns=/proc/4242/ns/user "
        "--netns=/proc/4242/ns/net"
    )
    assert opts.log.stderr and opts.host_lo_to_ns_lo
    assert opts.ns.userns == "/proc/4242/ns/user"
    assert opts.ns.netns == "/proc/4242/ns/net"
    assert not opts.ns.netns_only
    assert opts.ns.ifname == "tap0"
    assert opts.ports.tcp is not None and opts.ports.tcp[0].mode is PortMode.AUTO
    assert specs(opts, "udp") == ["auto"]
    assert (opts.ip4.address, opts.ip4.prefix_len) == (ip("10.0.2.100"), 24)


def test_rootlesskit_with_pid() -> None:
    opts = parse("--stderr --ns-ifname=tap0 --mtu=1500 --config-net --address=10.0.2.100 "
                 "--netmask=24 --gateway=10.0.2.2 --dns-forward=10.0.2.3 --no-map-gw "
                 "--ipv4-only --tcp-ports=none --udp-ports=none 4242")
    assert opts.pid == 4242
    assert opts.ns.netns == "/proc/4242/ns/net"
    assert opts.ns.userns == "/proc/4242/ns/user"
    assert not opts.ns.netns_only


def test_rootlesskit_feature_probe() -> None:
    """RootlessKit runs `pasta --host-lo-to-ns-lo --version` and wants exit 0."""
    assert parse("--host-lo-to-ns-lo --version").action is Action.VERSION


# --- getopt_long -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "path", "value"),
    [
        ("--deb", "log.debug", True),
        ("--fore", "log.foreground", True),
        ("--mt 1400", "mtu", 1400),
        ("--mt=1400", "mtu", 1400),
        ("--no-dhcp", "no_dhcp", True),  # exact match beats the longer names
        ("--no-dhcpv", "no_dhcpv6", True),
        ("--netns-o", "ns.netns_only", True),
        ("--map-h 10.0.2.2", "ip4.map_host_loopback", ip("10.0.2.2")),
        ("--sock /tmp/s", "socket_path", "/tmp/s"),  # --socket and --socket-path: one option
        ("--conf- /tmp/c", "control_path", "/tmp/c"),  # --conf-path only
        ("--contr /tmp/c", "control_path", "/tmp/c"),
    ],
)
def test_abbreviations(cmdline: str, path: str, value: object) -> None:
    assert field(parse(cmdline, passt=path == "socket_path"), path) == value


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("-fq", {"log.foreground": True, "log.quiet": True}),
        ("-fm1500", {"log.foreground": True, "mtu": 1500}),
        ("-fm 1500", {"mtu": 1500}),
        ("-46", None),
        ("-dfe", {"log.debug": True, "log.foreground": True, "log.stderr": True}),
        ("-ta,b", None),
        ("-t80", {"ports.tcp.0.text": "80"}),
        ("-m -5", None),
    ],
)
def test_clustering(cmdline: str, expected: dict[str, object] | None) -> None:
    if expected is None:
        with pytest.raises(UsageError):
            parse(cmdline)
        return
    opts = parse(cmdline)
    for path, value in expected.items():
        assert field(opts, path) == value


def test_option_argument_may_look_like_an_option() -> None:
    assert parse("-l -q").log.log_file == "-q"
    assert parse("--log-file --quiet").log.log_file == "--quiet"
    assert parse("--log-file=").log.log_file == ""


@pytest.mark.parametrize(
    ("cmdline", "command", "pid"),
    [
        ("ls -l", ("ls", "-l"), None),
        ("-f ls -l", ("ls", "-l"), None),
        ("-- -x", ("-x",), None),
        ("-- ls --debug", ("ls", "--debug"), None),
        ("ls -- x", ("ls", "--", "x"), None),
        ("-", ("-",), None),
        ("1234", (), 1234),
        ("-f 1234", (), 1234),
        ("-- 1234", (), 1234),
        ("1234 5678", ("1234", "5678"), None),
        ("12a", ("12a",), None),
        ("sh -c 'echo 1'", ("sh", "-c", "echo 1"), None),
        ("", (), None),
    ],
)
def test_command_or_pid(cmdline: str, command: tuple[str, ...], pid: int | None) -> None:
    opts = parse(cmdline)
    assert (opts.command, opts.pid) == (command, pid)


def test_options_after_the_command_belong_to_it() -> None:
    opts = parse("-d ls -q --foo")
    assert opts.command == ("ls", "-q", "--foo")
    assert opts.log.debug and not opts.log.quiet


def test_pid_keeps_an_explicit_userns() -> None:
    opts = parse("--userns /proc/1/ns/user 42")
    assert opts.ns.userns == "/proc/1/ns/user"
    assert opts.ns.netns == "/proc/42/ns/net"


def test_pid_with_netns_only_joins_no_userns() -> None:
    opts = parse("--netns-only 42")
    assert opts.ns.netns_only
    assert opts.ns.userns is None


@pytest.mark.parametrize(
    ("cmdline", "action"),
    [
        ("-h", Action.HELP),
        ("--help", Action.HELP),
        ("--hel", Action.HELP),
        ("--version", Action.VERSION),
        ("--vers", Action.VERSION),
        ("-h --foo", Action.HELP),  # pasta exits at -h before seeing --foo
        ("-t 8000-7000 -h", Action.HELP),  # port specs are parsed after the loop
        ("-fh", Action.HELP),
        ("--version -4 -6", Action.VERSION),
    ],
)
def test_help_and_version_act_at_once(cmdline: str, action: Action) -> None:
    assert parse(cmdline).action is action


def test_value_errors_before_help_still_count() -> None:
    assert str(usage_error("-m abc -h")) == "Invalid MTU: abc"


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "message"),
    [
        ("--foo", "pasta: unrecognized option '--foo'"),
        ("--foo=bar", "pasta: unrecognized option '--foo=bar'"),
        ("--nets", "pasta: unrecognized option '--nets'"),
        ("--vhost-user", "pasta: unrecognized option '--vhost-user'"),
        ("--map-guest-addr=1.2.3.4 --bogus", "pasta: unrecognized option '--bogus'"),
        ("-x", "pasta: invalid option -- 'x'"),
        ("-fqx", "pasta: invalid option -- 'x'"),
        ("-t", "pasta: option requires an argument -- 't'"),
        ("-dt", "pasta: option requires an argument -- 't'"),
        ("-m", "pasta: option requires an argument -- 'm'"),
        ("-I", "pasta: option requires an argument -- 'I'"),
        ("--mtu", "pasta: option '--mtu' requires an argument"),
        ("--mt", "pasta: option '--mtu' requires an argument"),
        ("--netns", "pasta: option '--netns' requires an argument"),
        ("--debug=1", "pasta: option '--debug' doesn't allow an argument"),
        ("--no-map-gw=1", "pasta: option '--no-map-gw' doesn't allow an argument"),
        ("--ver=1", "pasta: option '--version' doesn't allow an argument"),
        ("--no-d", "pasta: option '--no-d' is ambiguous; possibilities: '--no-dhcp' "
                   "'--no-dhcpv6' '--no-dhcp-dns' '--no-dhcp-search'"),
        ("--no-d=x", "pasta: option '--no-d=x' is ambiguous; possibilities: '--no-dhcp' "
                     "'--no-dhcpv6' '--no-dhcp-dns' '--no-dhcp-search'"),
        ("--h", "pasta: option '--h' is ambiguous; possibilities: '--help' '--hostname' "
                "'--host-lo-to-ns-lo'"),
        ("--dns-", "pasta: option '--dns-' is ambiguous; possibilities: '--dns-forward' "
                   "'--dns-host'"),
        ("--co x", "pasta: option '--co' is ambiguous; possibilities: '--config-net' "
                   "'--conf-path' '--control'"),
    ],
)  # fmt: skip
def test_getopt_errors(cmdline: str, message: str) -> None:
    err = usage_error(cmdline)
    assert str(err) == message
    assert err.usage == help_text("pasta")
    assert err.render() == f"{message}\n{help_text('pasta')}"


def test_getopt_errors_name_the_program() -> None:
    with pytest.raises(UsageError) as info:
        parse_args(["--map-guest-addr", "169.254.1.2", "--foo"])
    assert str(info.value) == "pasta-net: unrecognized option '--foo'"
    assert info.value.message == "unrecognized option '--foo'"


@pytest.mark.parametrize(
    ("cmdline", "message"),
    [
        ("-4 -6", "Options ipv4-only and ipv6-only are mutually exclusive"),
        ("-6 -4", "Options ipv4-only and ipv6-only are mutually exclusive"),
        ("-m abc", "Invalid MTU: abc"),
        ("--mtu=", "Invalid MTU: "),
        ("-m -1", "Invalid MTU: -1"),
        ("-m 70000", "MTU 70000 too large (max 65520)"),
        ("-m 65521", "MTU 65521 too large (max 65520)"),
        ("--log-size 5", "Invalid --log-size: 5"),
        ("--log-size 1M", "Invalid --log-size: 1M"),
        ("--stats 5", "Can't display statistics if not running in foreground"),
        ("--stats 5 -f", "Can't display statistics if not running in foreground"),
        ("-f --stats x", "Invalid --stats: x"),
        ("--runas ''", "Invalid --runas option: "),
        ("--runas 1000:", "Invalid --runas option: 1000:"),
        ("-F x", "Invalid --fd: x"),
        ("-F 4294967296", "Invalid --fd: 4294967296"),
        ("-I ''", "Invalid interface name: "),
        ("-I abcdefghijklmnop", "Invalid interface name: abcdefghijklmnop"),
        ("--outbound-if4 abcdefghijklmnop", "Invalid interface name: abcdefghijklmnop"),
        ("-i ''", "Invalid interface name: "),
        ("-p ''", "Invalid pcap path: "),
        ("-P ''", "Invalid PID file: "),
        ("-c ''", "Invalid configuration path: "),
        (f"-c /{'x' * 107}", f"Invalid configuration path: /{'x' * 107}"),
        ("-a foo", "Invalid guest address: foo"),
        ("-a 10.0.0.1/x", "Invalid guest address: 10.0.0.1/x"),
        ("-a 10.0.0.1/", "Invalid guest address: 10.0.0.1/"),
        ("-a 127.0.0.1", "Invalid guest address: 127.0.0.1"),
        ("-a ::1", "Invalid guest address: ::1"),
        ("-a 0.0.0.0", "Invalid guest address: 0.0.0.0"),
        ("-a 224.0.0.1", "Invalid guest address: 224.0.0.1"),
        ("-a 255.255.255.255", "Invalid guest address: 255.255.255.255"),
        ("-a 010.0.0.1", "Invalid guest address: 010.0.0.1"),
        ("-a fe80::1%eth0", "Invalid guest address: fe80::1%eth0"),
        ("-a 10.0.0.1/33", "Invalid prefix length: 10.0.0.1/33"),
        ("-a 2001:db8::1/129", "Invalid prefix length: 2001:db8::1/129"),
        ("-a 10.0.0.1/24 -n 24", "Redundant prefix length specification"),
        ("-n 24 -a 10.0.0.1/24", "Redundant prefix length specification"),
        ("-n 33", "Invalid prefix length: 33"),
        ("-n 255.0.255.0", "Invalid prefix length: 255.0.255.0"),
        ("-n x", "Invalid prefix length: x"),
        ("-M 1:2:3:4:5:6", "Invalid MAC address: 1:2:3:4:5:6"),
        ("-M 02:00:00:00:00:0g", "Invalid MAC address: 02:00:00:00:00:0g"),
        ("--ns-mac-addr 02-00-00-00-00-01", "Invalid MAC address: 02-00-00-00-00-01"),
        ("-g 0.0.0.0", "Invalid gateway address: 0.0.0.0"),
        ("-g 127.0.0.1", "Invalid gateway address: 127.0.0.1"),
        ("-g ::1", "Invalid gateway address: ::1"),
        ("-g x", "Invalid gateway address: x"),
        ("-o 0.0.0.0", "Invalid or redundant outbound address: 0.0.0.0"),
        ("-o 224.0.0.1", "Invalid or redundant outbound address: 224.0.0.1"),
        ("-o ::1", "Invalid or redundant outbound address: ::1"),
        ("-o ::ffff:1.2.3.4", "Invalid or redundant outbound address: ::ffff:1.2.3.4"),
        ("-o ::1.2.3.4", "Invalid or redundant outbound address: ::1.2.3.4"),
        ("-D foo", "Cannot use DNS address foo"),
        ("-S ''", "Cannot use DNS search domain "),
        (f"-S {'a' * 254}", f"Cannot use DNS search domain {'a' * 254}"),
        ("--dns-forward 127.0.0.1", "Invalid DNS forwarding address: 127.0.0.1"),
        ("--dns-forward ::", "Invalid DNS forwarding address: ::"),
        ("--dns-forward 255.255.255.255", "Invalid DNS forwarding address: 255.255.255.255"),
        ("--dns-host 0.0.0.0", "Invalid host nameserver address: 0.0.0.0"),
        ("--map-host-loopback 127.0.0.1", "Invalid address to remap to host: 127.0.0.1"),
        ("--map-guest-addr ff02::1", "Invalid address to remap to host: ff02::1"),
        ("--map-guest-addr x", "Invalid address to remap to host: x"),
        ("-H ''", "Invalid hostname: "),
        (f"-H {'h' * 64}", f"Invalid hostname: {'h' * 64}"),  # a label over 63 bytes
        ("-H a..b", "Invalid hostname: a..b"),
        (f"--fqdn {'a' * 254}", f"Invalid FQDN: {'a' * 254}"),
        (f"--fqdn x.{'a' * 64}.example", f"Invalid FQDN: x.{'a' * 64}.example"),
        ("-S .", "Cannot use DNS search domain ."),
        ("--userns ''", "Invalid userns: "),
        (f"--netns /{'x' * 4096}", f"Network namespace name/path /{'x' * 4096} too long"),
        ("-s /tmp/s", "-s is for passt / vhost-user mode only"),
        ("--socket-path /tmp/s", "-s is for passt / vhost-user mode only"),
        ("-1", "--one-off is for passt mode only"),
        ("--no-dhcp-dns", "--no-dhcp-dns is for passt mode only"),
        ("--no-dhcp-search", "--no-dhcp-search is for passt mode only"),
        ("--no-splice --host-lo-to-ns-lo", "--host-lo-to-ns-lo is incompatible with --no-splice"),
        ("--splice-only --no-splice", "--splice-only is incompatible with --no-splice"),
        ("--no-copy-routes", "--no-copy-routes needs --config-net"),
        ("--no-copy-addrs", "--no-copy-addrs needs --config-net"),
        ("-4 -a 2001:db8::1", "IPv6 address 2001:db8::1 given with --ipv4-only"),
        ("-g fe80::1 -4", "IPv6 gateway fe80::1 given with --ipv4-only"),
        ("-6 -o 192.0.2.1", "IPv4 outbound address 192.0.2.1 given with --ipv6-only"),
        ("--netns x 123", "Both --netns and PID or command given"),
        ("--netns x ls", "Both --netns and PID or command given"),
        ("99999999999", "Invalid PID 99999999999"),
    ],
)  # fmt: skip
def test_value_errors(cmdline: str, message: str) -> None:
    err = usage_error(cmdline)
    assert str(err) == message
    assert err.usage is None
    assert err.render() == f"{message}\n"


@pytest.mark.parametrize(
    ("cmdline", "message"),
    [
        ("-t 8000-7000", "Invalid port specifier '8000-7000' for -t: range 8000-7000 ends "
                         "before it starts"),
        ("--udp-ports=abc", "Invalid port specifier 'abc' for -u: expected a port, a range, "
                            "'~', 'all' or 'auto' at 'abc'"),
        ("-T 0", "Invalid port specifier '0' for -T: port 0 cannot be forwarded"),
        ("-U 70000", "Invalid port specifier '70000' for -U: port 70000 is out of range "
                     "(1-65535)"),
        ("-t 80,80", "Overlapping port specifier '80,80' for -t: port 80 is given more than "
                     "once"),
        ("-t 80 -u 80 -t 80", "Overlapping port specifier '80' for -t: ports also forwarded "
                              "by '-t 80'"),
        ("-t 80-90 -t 127.0.0.1/85", "Overlapping port specifier '127.0.0.1/85' for -t: "
                                     "ports also forwarded by '-t 80-90'"),
        ("-t auto -t 80", "Overlapping port specifier '80' for -t: ports also forwarded by "
                          "'-t auto'"),
        ("-t none,80", "Invalid port specifier 'none,80' for -t: 'none' cannot be combined "
                       "with other specifiers"),
        ("-t 80 -t none", "-t none conflicts with previous options"),
        ("-u 53 -u none", "-u none conflicts with previous options"),
        ("-T 127.0.0.1/80", "Listening address not allowed for -T 127.0.0.1/80"),
        ("-U %lo/53", "Listening address not allowed for -U %lo/53"),
        ("-T */80", "Listening address not allowed for -T */80"),
        ("--no-tcp -t 80", "Can't use -t 80: TCP is disabled"),
        ("-T 80 --no-tcp", "Can't use -T 80: TCP is disabled"),
        ("--no-udp -u 53", "Can't use -u 53: UDP is disabled"),
        ("-t 80:192.0.2.5", "Dual stack forward to IPv4 address 192.0.2.5 unsupported in "
                            "'80:192.0.2.5': did you mean 0.0.0.0/... instead?"),
        ("-t all:2001:db8::5", "Dual stack forward to IPv6 address 2001:db8::5 unsupported "
                               "in 'all:2001:db8::5': did you mean [::]/... instead?"),
        ("-4 -t 80:::1", "IPv6 forward '80:::1', but IPv6 is disabled by --ipv4-only"),
        ("-6 -t 127.0.0.1/80", "IPv4 forward '127.0.0.1/80', but IPv4 is disabled by "
                               "--ipv6-only"),
        ("-4 -t 80:10.0.0.1,90:::1", "IPv6 forward '80:10.0.0.1,90:::1', but IPv6 is "
                                     "disabled by --ipv4-only"),
        ("-t 8000-7000 -m abc", "Invalid MTU: abc"),  # port specs come after the loop
    ],
)  # fmt: skip
def test_port_errors(cmdline: str, message: str) -> None:
    err = usage_error(cmdline)
    assert str(err) == message
    assert err.usage is None


def test_none_before_ports_is_fine() -> None:
    assert specs(parse("-t none -t 80"), "tcp") == ["none", "80"]


# --- passt mode ------------------------------------------------------------------------


def test_passt_defaults() -> None:
    opts = parse("", passt=True)
    assert opts.mode is Mode.PASST
    assert opts.dns.dhcp_dns and opts.dns.dhcp_search
    assert opts.no_splice


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("-s /tmp/passt.sock", {"socket_path": "/tmp/passt.sock"}),
        ("--socket /tmp/p", {"socket_path": "/tmp/p"}),
        ("--socket-path=/tmp/p", {"socket_path": "/tmp/p"}),
        ("-1", {"one_off": True}),
        ("--one-off", {"one_off": True}),
        ("-s /tmp/p -F 5", {"fd": 5, "socket_path": None, "one_off": True}),
        ("--no-dhcp-dns --no-dhcp-search", {"dns.dhcp_dns": False, "dns.dhcp_search": False}),
        ("-t 22 -u 53", {"ports.tcp.0.text": "22", "ports.udp.0.text": "53"}),
        ("-t all", {"ports.tcp.0.mode": PortMode.ALL}),
        ("-t ~22", {"ports.tcp.0.mode": PortMode.ALL}),
    ],
)
def test_passt_options(cmdline: str, expected: dict[str, object]) -> None:
    opts = parse(cmdline, passt=True)
    for path, value in expected.items():
        assert field(opts, path) == value


@pytest.mark.parametrize(
    ("cmdline", "message"),
    [
        ("-T 22", "-T is for pasta mode only"),
        ("--udp-ns 53", "-U is for pasta mode only"),
        ("-I tap0", "-I is for pasta mode only"),
        ("--netns x", "--netns is for pasta mode only"),
        ("--userns x", "--userns is for pasta mode only"),
        ("--config-net", "--config-net is for pasta mode only"),
        ("--dhcp-dns", "--dhcp-dns is for pasta mode only"),
        ("--ns-mac-addr 02:00:00:00:00:01", "--ns-mac-addr is for pasta mode only"),
        ("--host-lo-to-ns-lo", "--host-lo-to-ns-lo is for pasta mode only"),
        ("--splice-only", "--splice-only is for pasta mode only"),
        ("-t auto", "'auto' port forwarding is only allowed for pasta"),
        ("-u 53,auto", "'auto' port forwarding is only allowed for pasta"),
        ("extra", "Extra non-option argument: extra"),
    ],
)
def test_passt_errors(cmdline: str, message: str) -> None:
    assert str(usage_error(cmdline, passt=True)) == message


def test_passt_getopt_error_prints_passt_usage() -> None:
    err = usage_error("--bogus", passt=True)
    assert err.usage == help_text("pasta", passt=True)


# --- texts and runas -------------------------------------------------------------------


def test_help_text_pasta() -> None:
    text = help_text("pasta")
    assert text.startswith(
        "Usage: pasta [OPTION]... [COMMAND] [ARGS]...\n"
        "       pasta [OPTION]... PID\n"
        "       pasta [OPTION]... --netns [PATH|NAME]\n"
    )
    for option in ("--tcp-ns", "--netns", "--config-net", "--map-guest-addr", "--dns-forward",
                   "-I, --ns-ifname", "'auto'", "--splice-only"):
        assert option in text
    assert "--one-off" not in text


def test_help_text_passt() -> None:
    text = help_text("passt", passt=True)
    assert text.startswith("Usage: passt [OPTION]...\n")
    assert "-s, --socket, --socket-path PATH" in text
    assert "--one-off" in text
    assert "--tcp-ns" not in text
    assert "default: none" in text


def test_version_text() -> None:
    assert version_text("/usr/bin/pasta").splitlines()[0] == f"pasta {__version__} (pasta-net)"


def test_resolve_runas_numbers() -> None:
    assert resolve_runas(RunAs(user=1000)) == (1000, 1000)
    assert resolve_runas(RunAs(user=1000, group=100)) == (1000, 100)


def test_resolve_runas_names() -> None:
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    assert resolve_runas(RunAs(user="nobody")) == (nobody.pw_uid, nobody.pw_gid)
    group = grp.getgrgid(nobody.pw_gid).gr_name
    assert resolve_runas(RunAs(user=1000, group=group)) == (1000, nobody.pw_gid)


@pytest.mark.parametrize(
    ("runas", "text"),
    [
        (RunAs(user="root"), "root"),  # a name must not lead back to root
        (RunAs(user="no-such-user-here"), "no-such-user-here"),
        (RunAs(user=1000, group="no-such-group-here"), "1000:no-such-group-here"),
    ],
)
def test_resolve_runas_refuses(runas: RunAs, text: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve_runas(runas)
    assert str(info.value) == f"Invalid --runas option: {text}"
