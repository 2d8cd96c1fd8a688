"""Reading and writing interface configuration, only inside namespaces the tests create.

``read_host`` is pointed at a stand-in "host" namespace (a tap called ``up0`` with the
sandbox addresses of DESIGN.md §4), never at the machine's own interfaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from pasta_net import netns
from pasta_net.netconf import (
    HostConfig,
    NetconfError,
    NetlinkHelper,
    NoDefaultRoute,
    host_config,
    read_host,
    route_socket,
)
from pasta_net.tun import Tap, open_tap

NSENTER = "/usr/bin/nsenter"
MAC = bytes.fromhex("02aabbccddee")


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def ns_run(pid: int, command: str) -> str:
    return subprocess.run(
        [NSENTER, "-t", str(pid), "-n", *command.split()],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def tap(target: netns.Target) -> Iterator[Tap]:
    with netns.in_netns(target):
        tap = open_tap("pasta0")
    yield tap
    os.close(tap.fd)


@pytest.fixture
def netlink() -> Iterator[NetlinkHelper]:
    """A helper forked here, in the test's netns: as in the program, requests for the
    target netns reach it with a netlink socket opened there."""
    with NetlinkHelper.start() as helper:
        yield helper


@pytest.fixture
def fake_host(holder: subprocess.Popen[str], target: netns.Target) -> Iterator[int]:
    """The holder namespace dressed as the sandbox host: ``up0`` with addresses and routes."""
    with netns.in_netns(target):
        up0 = open_tap("up0")
    try:
        for command in (
            "ip link set up0 address 02:00:00:00:00:02 mtu 1500 up",
            "ip addr add 198.51.100.2/24 dev up0",
            "ip addr add 198.51.100.3/24 dev up0",  # secondary: not the one to copy
            "ip addr add 2001:db8:1::2/64 dev up0 nodad",
            "ip route add default via 198.51.100.1 dev up0",
            "ip -6 route add default via fe80::1 dev up0",
        ):
            ns_run(holder.pid, command)
        yield holder.pid
    finally:
        os.close(up0.fd)


# --- read_host --------------------------------------------------------------------------


def test_read_host_follows_the_default_route(fake_host: int, target: netns.Target) -> None:
    with netns.in_netns(target):
        host = read_host(None, want4=True, want6=True)
    assert host == HostConfig(
        ifname="up0",
        mac=bytes.fromhex("020000000002"),
        mtu=1500,
        addr4=ip("198.51.100.2"),
        prefix4=24,
        gw4=ip("198.51.100.1"),
        addr6=ip("2001:db8:1::2"),
        prefix6=64,
        gw6=ip("fe80::1"),
    )


def test_read_host_ipv4_only_by_name(fake_host: int, target: netns.Target) -> None:
    with netns.in_netns(target):
        host = read_host("up0", want4=True, want6=False)
    assert (host.addr4, host.gw4, host.addr6, host.gw6) == (
        ip("198.51.100.2"),
        ip("198.51.100.1"),
        None,
        None,
    )


@contextlib.contextmanager
def dressed(holder: subprocess.Popen[str], target: netns.Target, taps: list[str],
            commands: list[str]) -> Iterator[None]:
    """The holder namespace with ``taps`` and ``commands`` run in it, for a read_host."""
    with netns.in_netns(target):
        opened = [open_tap(name) for name in taps]
    try:
        for command in commands:
            ns_run(holder.pid, command)
        yield
    finally:
        for tap in opened:
            os.close(tap.fd)


def test_read_host_multipath_takes_the_first_nexthop(
    holder: subprocess.Popen[str], target: netns.Target
) -> None:
    with dressed(holder, target, ["up0", "up1"], [
        "ip link set up0 up",
        "ip link set up1 up",
        "ip addr add 198.51.100.2/24 dev up0",
        "ip addr add 192.0.2.2/24 dev up1",
        "ip route add default nexthop via 198.51.100.1 dev up0 nexthop via 192.0.2.1 dev up1",
    ]), netns.in_netns(target):
        host = read_host(None, want4=True, want6=False)
    assert (host.ifname, host.gw4) == ("up0", ip("198.51.100.1"))


@pytest.mark.parametrize("compat", [1, 0])
def test_read_host_default_route_through_a_nexthop_object(
    holder: subprocess.Popen[str], target: netns.Target, compat: int
) -> None:
    """With nexthop_compat_mode (the default) the route still names its interface; without
    it, it does not, and the host is online: an error asking for -i, not local mode."""
    with dressed(holder, target, ["up0"], [
        f"sysctl -qw net.ipv4.nexthop_compat_mode={compat}",
        "ip link set up0 up",
        "ip addr add 198.51.100.2/24 dev up0",
        "ip nexthop add id 7 via 198.51.100.1 dev up0",
        "ip route add default nhid 7",
    ]), netns.in_netns(target):
        if compat:
            assert read_host(None, want4=True, want6=False).ifname == "up0"
        else:
            with pytest.raises(NetconfError, match="name the interface to copy with -i"):
                read_host(None, want4=True, want6=False)


def test_read_host_without_default_route(target: netns.Target) -> None:
    """The one failure that means local mode, not an error (launch.read_host)."""
    with netns.in_netns(target), pytest.raises(NoDefaultRoute, match="No interfaces with usable"):
        read_host(None, want4=True, want6=True)


def test_read_host_unknown_interface(target: netns.Target) -> None:
    with netns.in_netns(target), pytest.raises(NetconfError, match="No such interface: nope0"):
        read_host("nope0", want4=True, want6=True)


# --- configure_namespace ----------------------------------------------------------------


def test_configure_namespace(holder: subprocess.Popen[str], target: netns.Target, tap: Tap,
                             netlink: NetlinkHelper) -> None:
    with netns.NetnsThread(target) as thread:
        thread.call(
            lambda: netlink.configure(
                "pasta0",
                mac=MAC,
                mtu=65520,
                addr4=ip("198.51.100.2"),
                prefix4=24,
                gw4=ip("198.51.100.1"),
                addr6=ip("2001:db8:1::2"),
                prefix6=64,
                gw6=ip("fe80::1"),
            )
        )
    link = ns_run(holder.pid, "ip link show pasta0")
    assert "state UNKNOWN" in link or ",UP" in link
    assert "mtu 65520" in link
    assert "link/ether 02:aa:bb:cc:dd:ee" in link
    assert "UP" in ns_run(holder.pid, "ip link show lo")
    addrs = ns_run(holder.pid, "ip addr show dev pasta0")
    assert "inet 198.51.100.2/24" in addrs
    assert "inet6 2001:db8:1::2/64" in addrs
    assert "tentative" not in addrs
    assert "default via 198.51.100.1 dev pasta0" in ns_run(holder.pid, "ip -4 route")
    assert "default via fe80::1 dev pasta0" in ns_run(holder.pid, "ip -6 route")


def test_gateway_outside_the_prefix_gets_an_onlink_route(
    holder: subprocess.Popen[str], target: netns.Target, tap: Tap, netlink: NetlinkHelper
) -> None:
    with netns.in_netns(target):
        netlink.configure(
            "pasta0", mac=None, mtu=1500, addr4=ip("192.0.2.10"), prefix4=32, gw4=ip("192.0.2.1")
        )
    routes = ns_run(holder.pid, "ip -4 route")
    assert "192.0.2.1 dev pasta0 proto static scope link" in routes
    assert "default via 192.0.2.1 dev pasta0" in routes


def test_configure_reports_the_failing_step(target: netns.Target, tap: Tap,
                                            netlink: NetlinkHelper) -> None:
    with netns.in_netns(target):
        netlink.configure("pasta0", mac=None, mtu=1500, addr4=ip("198.51.100.2"))
        with pytest.raises(
            NetconfError, match=r"add address 198\.51\.100\.2/24 to pasta0: File exists"
        ):
            netlink.configure("pasta0", mac=None, mtu=1500, addr4=ip("198.51.100.2"))


def test_readdress_from_local_mode_and_again(holder: subprocess.Popen[str],
                                             target: netns.Target, tap: Tap,
                                             netlink: NetlinkHelper) -> None:
    """--follow-host leaving local mode; the same move again (a retry after a move that
    failed half-way) finds the old address gone and the new one there, and succeeds."""
    local = (ip("169.254.2.1"), 16, ip("169.254.2.2"))
    host = (ip("198.51.100.2"), 24, ip("198.51.100.1"))
    with netns.in_netns(target):
        netlink.configure("pasta0", mac=None, mtu=1500, addr4=local[0], prefix4=16,
                          gw4=local[2])
        with route_socket() as nl:
            netlink.readdress(nl, "pasta0", local, host)
            netlink.readdress(nl, "pasta0", local, host)
    addrs = ns_run(holder.pid, "ip -4 addr show dev pasta0")
    assert "inet 198.51.100.2/24" in addrs and "169.254.2.1" not in addrs
    assert "default via 198.51.100.1 dev pasta0" in ns_run(holder.pid, "ip -4 route")


def test_configure_unknown_interface(target: netns.Target, netlink: NetlinkHelper) -> None:
    with netns.in_netns(target), pytest.raises(NetconfError, match="No such interface"):
        netlink.configure("nope0", mac=None, mtu=1500)


# --- the helper process -----------------------------------------------------------------


def test_helper_reads_the_host_and_is_reaped(fake_host: int, target: netns.Target) -> None:
    with netns.in_netns(target):
        helper = NetlinkHelper.start()
    pid = helper._pid
    helper.ask_host("up0", True, False)
    assert host_config(helper).addr4 == ip("198.51.100.2")
    helper.close()
    helper.close()  # again: nothing left to do
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_closing_ends_a_helper_that_would_not_end_by_itself() -> None:
    """``--help`` and usage errors close the helper while it still loads pyroute2: closing
    kills it instead of waiting. A stopped helper could never see the end of its socket,
    so only a kill lets ``close`` return."""
    helper = NetlinkHelper.start()
    pid = helper._pid
    os.kill(pid, signal.SIGSTOP)
    closer = threading.Thread(target=helper.close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    if closer.is_alive():  # do not leave it behind stopped
        os.kill(pid, signal.SIGKILL)
    assert not closer.is_alive()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_the_helper_side_never_loads_attrs() -> None:
    """The helper forks before attrs loads and must not need it (pasta_net.netlink)."""
    code = ("import sys, pasta_net.netlink, pasta_net.rtnl; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('attr', 'attrs')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "[]"


def test_a_dead_helper_is_an_error_not_a_hang(target: netns.Target, tap: Tap) -> None:
    with NetlinkHelper.start() as helper:
        os.kill(helper._pid, 9)
        with netns.in_netns(target), pytest.raises(NetconfError, match="helper died"):
            helper.configure("pasta0", mac=None, mtu=1500)
