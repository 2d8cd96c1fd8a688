"""pasta-net as podman's and RootlessKit's ``pasta``: their exact argv, and getopt's words.

Each form below is one that ../shared/reference/peers-and-podman-contract.md §2.3 lists
(podman 4.4–4.9, 5.0, 5.1–5.2, 5.3+, rootless-netns, ``--network pasta:...``, RootlessKit).
The table says what each must mean; then the real program, started through a symlink
named ``pasta`` as podman finds it, must accept every form, and must fail on unknown
options with glibc's wording and status 1: podman retries without ``--map-guest-addr``
only when it reads ``unrecognized option '--map-guest-addr`` from an exit status of 1.
Where Debian's C ``pasta`` is installed, its first line is the oracle for that wording.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pasta_net.options import Action, Options, parse_args
from tests.programs import pasta_symlink

NETNS = "/run/user/1000/netns/netns-ef11a5a8-056d-9e22-cfdc-83fa701bceae"
MISSING_NETNS = "/nonexistent/pasta-net-test/netns"
MISSING_PID = "2147483647"
DEBIAN_PASTA = "/usr/bin/pasta"

NONE: list[tuple[Any, ...]] = []
"""``-t none``: given, and forwarding nothing."""


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def forwards(opts: Options, which: str) -> list[tuple[Any, ...]] | None:
    """-t/-u/-T/-U as (listen address, first, last, target first); None if never given."""
    specs = getattr(opts.ports, which)
    if specs is None:
        return None
    return [
        (None if f.addr is None else str(f.addr), f.first, f.last, f.to_first)
        for spec in specs
        for f in spec.forwards
    ]


def field(opts: Options, path: str) -> Any:
    if path.startswith("ports."):
        return forwards(opts, path.removeprefix("ports."))
    value: Any = opts
    for name in path.split("."):
        value = getattr(value, name)
    return value


PODMAN_DEFAULTS = {
    "ns.config_net": True,
    "ns.netns": NETNS,
    "ns.netns_only": True,
    "no_map_gw": True,
    "ports.tcp_ns": NONE,
    "ports.udp_ns": NONE,
}

# (id, argv, expected fields beyond PODMAN_DEFAULTS where "podman" is in the id)
FORMS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "podman-4.4-no-ports",
        f"--config-net -t none -u none -T none -U none --no-map-gw --netns {NETNS}",
        {"ports.tcp": NONE, "ports.udp": NONE, "log.quiet": False, "dns.disabled": False},
    ),
    (
        "podman-4.4-ports",
        "--config-net -t 8080-8080:80-80 -u 127.0.0.1/8081-8081:81-81 "
        f"-T none -U none --no-map-gw --netns {NETNS}",
        {"ports.tcp": [(None, 8080, 8080, 80)], "ports.udp": [("127.0.0.1", 8081, 8081, 81)]},
    ),
    (
        "podman-4.4-network-pasta-T",  # --network pasta:-T,5432: no "-T none" then
        f"--config-net -T 5432 -t none -u none -U none --no-map-gw --netns {NETNS}",
        {"ports.tcp_ns": [(None, 5432, 5432, 5432)], "ports.tcp": NONE},
    ),
    (
        "podman-4.4-map-gw",  # the user's --map-gw pseudo-option removed, no --no-map-gw
        f"--config-net -t none -u none -T none -U none --netns {NETNS}",
        {"no_map_gw": False},
    ),
    (
        "podman-5.0",
        "--config-net -t 8080-8080:80-80 -u none -T none -U none --no-map-gw "
        f"--dns none --quiet --netns {NETNS}",
        {"ports.tcp": [(None, 8080, 8080, 80)], "dns.disabled": True, "log.quiet": True},
    ),
    (
        "podman-5.1",
        "--config-net -t none -u none -T none -U none --no-map-gw "
        f"--dns-forward 169.254.0.1 --quiet --netns {NETNS}",
        {"ip4.dns_forward": ip("169.254.0.1"), "dns.disabled": False, "log.quiet": True},
    ),
    (
        "podman-5.3-default",
        "--config-net --dns-forward 169.254.1.1 -t none -u none -T none -U none --no-map-gw "
        f"--quiet --netns {NETNS} --map-guest-addr 169.254.1.2",
        {
            "ip4.dns_forward": ip("169.254.1.1"),
            "ip4.map_guest_addr": ip("169.254.1.2"),
            "ports.tcp": NONE,
            "ports.udp": NONE,
            "log.quiet": True,
        },
    ),
    (
        "podman-5.3-tcp-and-udp",  # -p 80:60/tcp -p 100:100/udp
        "--config-net -t 80-80:60-60 -u 100-100:100-100 --dns-forward 169.254.1.1 "
        f"-T none -U none --no-map-gw --quiet --netns {NETNS} --map-guest-addr 169.254.1.2",
        {"ports.tcp": [(None, 80, 80, 60)], "ports.udp": [(None, 100, 100, 100)]},
    ),
    (
        "podman-5.3-host-ip-and-range",  # -p 127.0.0.1:8080:80 -p [::1]:9000-9009:7000-7009
        "--config-net -t 127.0.0.1/8080-8080:80-80 -t ::1/9000-9009:7000-7009 "
        "--dns-forward 169.254.1.1 -u none -T none -U none --no-map-gw --quiet "
        f"--netns {NETNS} --map-guest-addr 169.254.1.2",
        {"ports.tcp": [("127.0.0.1", 8080, 8080, 80), ("::1", 9000, 9009, 7000)]},
    ),
    (
        "podman-5.3-network-pasta-options",  # pasta:-I,tap0,--ipv4-only,...,--no-dhcp
        "--config-net -I tap0 --ipv4-only -a 10.0.2.0 -n 24 -g 10.0.2.2 "
        "--dns-forward 10.0.2.3 -m 1500 --no-ndp --no-dhcpv6 --no-dhcp "
        f"-t none -u none -T none -U none --no-map-gw --quiet --netns {NETNS} "
        "--map-guest-addr 169.254.1.2",
        {
            "ns.ifname": "tap0",
            "ipv4_only": True,
            "ip4.address": ip("10.0.2.0"),
            "ip4.prefix_len": 24,
            "ip4.gateway": ip("10.0.2.2"),
            "ip4.dns_forward": ip("10.0.2.3"),
            "mtu": 1500,
            "no_ndp": True,
            "no_dhcpv6": True,
            "no_dhcp": True,
        },
    ),
    (
        "podman-5.3-containers-conf-options",  # pasta_options = [...] in containers.conf
        "--config-net --map-host-loopback 169.254.1.3 --outbound-if4 up0 -T 5432 -U 53 "
        "-t 8080-8080:80-80 --dns-forward 169.254.1.1 -u none --no-map-gw --quiet "
        f"--netns {NETNS} --map-guest-addr 169.254.1.2",
        {
            "ip4.map_host_loopback": ip("169.254.1.3"),
            "ip4.outbound_if": "up0",
            "ports.tcp_ns": [(None, 5432, 5432, 5432)],
            "ports.udp_ns": [(None, 53, 53, 53)],
        },
    ),
    (
        "podman-5.3-debug",  # -d given by the user: podman leaves out --quiet
        "--config-net -d --dns-forward 169.254.1.1 -t none -u none -T none -U none "
        f"--no-map-gw --netns {NETNS} --map-guest-addr 169.254.1.2",
        {"log.debug": True, "log.quiet": False},
    ),
    (
        "podman-rootless-netns",
        "--config-net --pid /run/user/1000/containers/networks/rootless-netns/conn.pid "
        "--dns-forward 169.254.1.1 -t none -u none -T none -U none --no-map-gw --quiet "
        f"--netns {NETNS} --map-guest-addr 169.254.1.2",
        {"pid_file": "/run/user/1000/containers/networks/rootless-netns/conn.pid"},
    ),
    (
        "rootlesskit-pid",
        "--stderr --ns-ifname=tap0 --mtu=65520 --config-net --address=10.0.2.100 "
        "--netmask=24 --gateway=10.0.2.2 --dns-forward=10.0.2.3 --no-map-gw --ipv4-only "
        "--tcp-ports=none --udp-ports=none 4242",
        {
            "pid": 4242,
            "ns.netns": "/proc/4242/ns/net",
            "ns.userns": "/proc/4242/ns/user",
            "ns.ifname": "tap0",
            "ip4.address": ip("10.0.2.100"),
            "ip4.prefix_len": 24,
            "log.stderr": True,
            "ports.tcp": NONE,
            "ports.tcp_ns": None,
        },
    ),
    (
        "rootlesskit-netns",
        "--stderr --ns-ifname=tap0 --mtu=1500 --config-net --address=10.0.2.100 "
        "--netmask=24 --gateway=10.0.2.2 --dns-forward=10.0.2.3 --tcp-ports=auto "
        "--udp-ports=auto --host-lo-to-ns-lo --userns=/proc/4242/ns/user "
        "--netns=/run/user/1000/rootlesskit/netns",
        {
            "ns.netns": "/run/user/1000/rootlesskit/netns",
            "ns.userns": "/proc/4242/ns/user",
            "ns.netns_only": False,
            "host_lo_to_ns_lo": True,
            "mtu": 1500,
            "no_map_gw": False,
        },
    ),
]


@pytest.mark.parametrize(("name", "argv", "expected"), FORMS, ids=[f[0] for f in FORMS])
def test_form_means_what_its_caller_intends(name: str, argv: str, expected: dict[str, Any]) -> None:
    opts = parse_args(shlex.split(argv), prog="pasta")
    wanted = {**(PODMAN_DEFAULTS if name.startswith("podman") else {}), **expected}
    assert opts.action is Action.RUN
    assert opts.command == ()
    assert {path: field(opts, path) for path in wanted} == wanted


# ---------------------------------------------------------------- as a program --
@pytest.fixture(scope="module")
def pasta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pasta_symlink(tmp_path_factory.mktemp("bin"))


def run(program: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run as podman does (``exec.Command(path, args...).CombinedOutput()``), argv[0] "pasta"."""
    return subprocess.run(
        ["pasta", *args],
        executable=program,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )


def first_line(output: str) -> str:
    """The first line a user sees; Debian's pasta also reports its failed syslog writes."""
    return next(line for line in output.splitlines() if "to syslog" not in line)


@pytest.mark.parametrize("argv", [f[1] for f in FORMS], ids=[f[0] for f in FORMS])
def test_program_named_pasta_accepts_form(pasta: Path, argv: str) -> None:
    """The form gets past the parser into attaching, which fails on a missing target."""
    args = shlex.split(argv.replace(NETNS, MISSING_NETNS))
    args = [MISSING_PID if a == "4242" else a for a in args]
    args = [a.replace("/run/user/1000/rootlesskit/netns", MISSING_NETNS) for a in args]
    result = run(pasta, *args)
    assert result.returncode == 1
    assert first_line(result.stdout).startswith("pasta: Couldn't open "), result.stdout
    assert "Usage:" not in result.stdout


UNKNOWN = [
    (["--bogus"], "pasta: unrecognized option '--bogus'"),
    (["--ipv6-src", "::1"], "pasta: unrecognized option '--ipv6-src'"),
    (["--map-guest-address", "169.254.1.2"], "pasta: unrecognized option '--map-guest-address'"),
    (["--config-net", "--netns", NETNS, "--bogus=1"], "pasta: unrecognized option '--bogus=1'"),
    (["-x"], "pasta: invalid option -- 'x'"),
    (["--config-net", "--netns"], "pasta: option '--netns' requires an argument"),
    (["--no-map-gw=yes"], "pasta: option '--no-map-gw' doesn't allow an argument"),
]


@pytest.mark.parametrize(("args", "message"), UNKNOWN, ids=[u[1] for u in UNKNOWN])
def test_unknown_option_wording_and_status(pasta: Path, args: list[str], message: str) -> None:
    result = run(pasta, *args)
    assert (result.returncode, first_line(result.stdout)) == (1, message)
    assert "Usage: pasta [OPTION]..." in result.stdout  # glibc's error, then pasta's usage


@pytest.mark.skipif(not os.access(DEBIAN_PASTA, os.X_OK), reason="Debian's pasta not installed")
@pytest.mark.parametrize(("args", "message"), UNKNOWN, ids=[u[1] for u in UNKNOWN])
def test_debian_pasta_words_it_the_same(args: list[str], message: str) -> None:
    """The oracle: the C pasta (glibc getopt) prints the same first line, with status 1."""
    result = run(DEBIAN_PASTA, *args)
    assert (result.returncode, first_line(result.stdout)) == (1, message)


def test_version_first_line(pasta: Path) -> None:
    """``podman info`` shows the first line: ``pasta VERSION``, as pasta prints it."""
    result = run(pasta, "--version")
    assert result.returncode == 0
    name, version, *_ = first_line(result.stdout).split()
    assert (name, bool(version)) == ("pasta", True)


def test_rootlesskit_feature_probe(pasta: Path) -> None:
    """RootlessKit runs ``pasta --host-lo-to-ns-lo --version``: exit 0 means supported."""
    result = run(pasta, "--host-lo-to-ns-lo", "--version")
    assert result.returncode == 0
    assert first_line(result.stdout).startswith("pasta ")
