"""Foundation: attach modes, addresses and routes, ping, lifecycle, pcap, bad input.

Everything runs the real program against namespaces the fixtures create; the remote
test host answers at 203.0.113.1 / 2001:db8:2::1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest
import sandbox
from sandbox import GATEWAY_V4, GATEWAY_V6, HOST_V4, HOST_V6, REMOTE_V4, REMOTE_V6
from scapy.layers.inet import ICMP
from scapy.layers.l2 import ARP
from scapy.utils import rdpcap

CONFIG_NET = ["--config-net", "-t", "none", "-u", "none", "-T", "none", "-U", "none"]
PING = ["ping", "-c", "3", "-i", "0.2", "-W", "5"]


def _pings(container: sandbox.Container) -> None:
    for remote in (REMOTE_V4, REMOTE_V6):
        output = container.run([*PING, remote]).stdout.decode()
        assert " 0% packet loss" in output


@pytest.mark.parametrize("attach", ["netns", "pid"])
def test_attached_namespace_gets_host_addresses_routes_and_pings(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, attach: sandbox.Attach
) -> None:
    pasta_net.start(CONFIG_NET, attach=attach)
    v4 = container.wait_for_address(HOST_V4)
    v6 = container.wait_for_address(HOST_V6)
    assert str(v4.interface) == f"{HOST_V4}/24"
    assert str(v6.interface) == f"{HOST_V6}/64"
    assert v4.ifname == "up0", "the tap is named after the host's default-route interface"
    defaults = {r.gateway for r in container.routes() if r.dst == "default"}
    assert defaults == {GATEWAY_V4, GATEWAY_V6}
    _pings(container)


def test_interface_name_mtu_and_mac_options(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    pasta_net.start([*CONFIG_NET, "-I", "eth7", "-m", "1500", "--ns-mac-addr",
                     "02:11:22:33:44:55"])
    container.wait_for_address(HOST_V4)
    link = container.run(["ip", "-o", "link", "show", "eth7"]).stdout.decode()
    assert "mtu 1500" in link and "02:11:22:33:44:55" in link
    _pings(container)


def test_spawned_command_gets_network_and_its_exit_status(
    pasta_net: sandbox.ProgramRunner,
) -> None:
    script = (f"ip -o addr show up0 | grep -q {HOST_V4}/24 || exit 90; "
              f"ping -c 1 -W 5 {REMOTE_V4} >/dev/null || exit 91; "
              f"ping -c 1 -W 5 {REMOTE_V6} >/dev/null || exit 92; exit 7")
    result = pasta_net.run_cli([*CONFIG_NET, "--", "sh", "-c", script], timeout=30)
    assert result.returncode == 7, result.stderr


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 3), (signal.SIGTERM, 143)])
def test_signals_in_command_mode_are_the_commands(
    pasta_net: sandbox.ProgramRunner, signum: int, status: int
) -> None:
    """Ctrl-C reaches the terminal's whole foreground group: a command that ignores it
    (a shell at its prompt) keeps its network. SIGTERM goes on to the command, and its
    end is ours, with its status."""
    script = ("import signal, socket, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "time.sleep(1.5)\n"
              "try:\n    socket.if_nametoindex('up0')\nexcept OSError:\n    sys.exit(90)\n"
              "sys.exit(3)")
    process = subprocess.Popen([*pasta_net.command, *CONFIG_NET, "--", sys.executable, "-c",
                                script],
                               stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=sandbox.program_env())
    try:
        time.sleep(0.8)
        process.send_signal(signum)
        assert process.wait(timeout=10) == status
    finally:
        sandbox.stop_popen(process)


def test_a_second_sigterm_ends_us_when_the_command_ignores_the_first(
    pasta_net: sandbox.ProgramRunner,
) -> None:
    """An interactive shell ignores SIGTERM: `kill pasta-net` twice still ends pasta-net
    (the command goes on without network, as the user asked)."""
    script = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "print(os.getpid(), flush=True); time.sleep(30)")
    process = subprocess.Popen([*pasta_net.command, *CONFIG_NET, "--", sys.executable, "-c",
                                script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=sandbox.program_env())
    assert process.stdout is not None
    command = int(process.stdout.readline())
    try:
        process.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 1
    finally:
        os.kill(command, signal.SIGKILL)
        sandbox.stop_popen(process)


def test_address_and_gateway_options(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    pasta_net.start([*CONFIG_NET, "-4", "-a", "198.51.100.77", "-n", "24"])
    container.wait_for_address("198.51.100.77")
    assert not [a for a in container.addresses() if a.interface.version == 6
                and a.interface.is_global]
    container.run([*PING, REMOTE_V4])


def test_daemon_writes_pid_file_closes_stdio_and_exits_when_netns_deleted(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    running = pasta_net.start(CONFIG_NET)
    fds = {os.readlink(f"/proc/{running.pid}/fd/{fd}") for fd in (0, 1, 2)}
    assert fds == {"/dev/null"}
    container.wait_for_address(HOST_V4)
    # as `ip netns del` and podman do: lazy unmount (our own fd keeps the mount busy), unlink
    subprocess.run(["umount", "-l", str(container.path)], check=True)
    container.path.unlink()
    start = time.monotonic()
    running.wait(timeout=3)
    assert time.monotonic() - start <= 1.2


def test_no_netns_quit_keeps_serving_a_deleted_netns_file(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    running = pasta_net.start([*CONFIG_NET, "--no-netns-quit"])
    container.wait_for_address(HOST_V4)
    subprocess.run(["umount", "-l", str(container.path)], check=True)
    container.path.unlink()
    with pytest.raises(TimeoutError):  # still serving
        running.wait(timeout=2)
    assert running.stop() in (0, None)


@pytest.mark.parametrize("container", [True], indirect=True)
def test_userns_with_a_pid_is_the_user_namespace_joined(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, tmp_path: Path
) -> None:
    """--userns overrides the PID's own user namespace: the right one attaches, one
    that is no user namespace is an error (it used to be ignored)."""
    bogus = pasta_net.run_cli([*CONFIG_NET, "--userns", "/etc/hostname", str(container.pid)])
    assert bogus.returncode == 1 and "not a user namespace" in bogus.stderr
    pasta_net.start([*CONFIG_NET, "--userns", f"/proc/{container.pid}/ns/user"],
                    attach="pid")
    container.wait_for_address(HOST_V4)


def test_daemon_exits_when_target_pid_dies(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    running = pasta_net.start(CONFIG_NET, attach="pid")
    container.wait_for_address(HOST_V4)
    os.kill(container.pid, signal.SIGKILL)
    start = time.monotonic()
    running.wait(timeout=3)
    assert time.monotonic() - start <= 1.2


def test_sigterm_ends_the_daemon_cleanly(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    running = pasta_net.start(CONFIG_NET)
    container.wait_for_address(HOST_V4)
    assert running.stop() in (0, None)
    assert not [a for a in container.addresses() if a.ifname == "up0"], "the tap went with us"


def test_pcap_records_frames_both_ways(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, tmp_path: Path
) -> None:
    capture = tmp_path / "tap.pcap"
    running = pasta_net.start([*CONFIG_NET, "-p", str(capture)])
    container.wait_for_address(HOST_V4)
    container.run(["ping", "-c", "2", "-W", "5", REMOTE_V4])
    running.stop()
    packets = rdpcap(str(capture))
    icmp_types = [p[ICMP].type for p in packets if p.haslayer(ICMP)]
    assert icmp_types.count(8) >= 2 and icmp_types.count(0) >= 2
    assert any(p.haslayer(ARP) and p[ARP].op == 2 for p in packets)
    with capture.open("rb") as f:  # a second, independent reader of the file format
        assert sum(1 for _ in dpkt.pcap.Reader(f)) == len(packets)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config-net", "4194304"], "No such process"),
        (["--netns", "/etc/hostname"], "not a network namespace"),
        (["--netns", "/nonexistent/netns"], "No such file or directory"),
        (["-a", "300.1.2.3", "--netns", "/nonexistent"], "300.1.2.3"),
        (["-m", "70000"], "MTU"),
        (["--no-such-option"], "unrecognized option '--no-such-option'"),
        (["-t"], "requires an argument"),
        (["-t", "8000-7000"], "8000-7000"),
        (["-F", "0", "--netns", "/nonexistent"], "not supported in pasta mode"),
    ],
)
def test_bad_input_gets_a_message_and_exit_1(
    pasta_net: sandbox.ProgramRunner, args: list[str], message: str
) -> None:
    result = pasta_net.run_cli(args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_no_user_namespaces_for_the_command_is_a_clear_error(
    pasta_net: sandbox.ProgramRunner,
) -> None:
    """As on hosts that forbid unprivileged user namespaces (a sysctl, or AppArmor's
    restriction): the command cannot be spawned, and we say so in one line."""
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh",
         *pasta_net.command, *CONFIG_NET, "--", "true"],
        capture_output=True, text=True, timeout=30, env=sandbox.program_env())
    assert result.returncode == 1
    assert result.stderr.startswith("pasta-net: ") and "Traceback" not in result.stderr


def test_missing_tun_device_is_a_clear_error(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, tmp_path: Path
) -> None:
    """In a private mount namespace /dev/net/tun is hidden under an empty directory."""
    empty = tmp_path / "empty"
    empty.mkdir()
    script = (f"mount --bind {empty} /dev/net && exec \"$@\"")
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", *pasta_net.command, "-f",
         "--netns", str(container.path), *CONFIG_NET],
        capture_output=True, text=True, timeout=30, env=sandbox.program_env())
    assert result.returncode == 1
    assert "/dev/net/tun" in result.stderr and "Traceback" not in result.stderr
