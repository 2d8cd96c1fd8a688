"""Namespaces, processes and servers of the bench sandbox.

This module runs inside the private user + net + mount namespaces that
`bench/run` creates with `unshare`: the netns we start in is the sandbox
"host", and every other netns is made here and bound to a file in the work
directory.  Nothing here can reach the machine's own interfaces.

Topology (the reference harness's, so figures can be cross-checked with it):

    container netns (fresh per helper run)        iperf3 -s :5201 (forward target)
        | tap of the helper, or veth "ct0" 192.0.2.2/24 for the baseline
    sandbox host netns                            iperf3 -s :5202 (baseline)
        veth-h 198.51.100.1/24  default via 198.51.100.254
        | veth (MTU --veth-mtu)
        veth-r 198.51.100.254/24
    remote netns ("the internet")                 lo 203.0.113.10/32
        iperf3 -s -B 203.0.113.10 :5201, nbtool serve :5300, nbtool hold :5301
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

HOST_IP, GW_IP, REMOTE_IP = "198.51.100.1", "198.51.100.254", "203.0.113.10"
HOST_IP6, GW_IP6, REMOTE_IP6 = "2001:db8:1::1", "2001:db8:1::fe", "2001:db8:2::10"
BASE_NET, BASE_GW, BASE_CT = "192.0.2.0/24", "192.0.2.1", "192.0.2.2"
IPERF_PORT = 5201  # remote iperf3 server, and the forwarded port into the container
BASE_IPERF_PORT = 5202  # iperf3 in the sandbox host netns (baseline of the forward rows)
ECHO_PORT = 5300  # nbtool echo server on the remote (RR, CRR, startup probe)
HOLD_PORT = 5301  # nbtool idle-flow holder on the remote (scaling)
# Ephemeral ports of the sandbox host stay above the forwarded-port scaling
# range (10000-19999), so a helper's outgoing socket never takes a port that
# the same helper is about to bind for a forward.
HOST_PORT_RANGE = "20000 65535"
NS_PORT_RANGE = "1024 65535"

_procs: list[subprocess.Popen] = []  # everything we started, ended by pid at exit


def log(*parts: object) -> None:
    """Progress goes to stderr so that stdout carries only the Markdown report."""
    print(*parts, file=sys.stderr, flush=True)


def in_ns(ns: str | None, argv: list[str]) -> list[str]:
    """Prefix argv with nsenter; nsenter rather than `ip netns exec`, which
    would remount /sys and needs /run/netns names."""
    return (["nsenter", f"--net={ns}"] if ns else []) + argv


def sh(cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a shell snippet (ip/sysctl set-up) in the sandbox host or in `ns`."""
    return subprocess.run(in_ns(ns, ["sh", "-ec", cmd]), check=check)


def spawn(argv: list[str], ns: str | None = None, **kw) -> subprocess.Popen:
    """Start a long-running process and remember it, so that a failure at
    any point still ends it (by pid) in stop_all()."""
    p = subprocess.Popen(in_ns(ns, argv), **kw)
    _procs.append(p)
    return p


def spawn_group(argv: list[str], **kw) -> subprocess.Popen:
    """Like spawn(), in a new process group: a helper may fork (a Python
    helper may run set-up in a child), and the group holds only its own
    descendants, so the whole of it can be ended by its id."""
    p = spawn(argv, start_new_session=True, **kw)
    _group_leaders.add(p.pid)
    return p


_group_leaders: set[int] = set()


def stop(p: subprocess.Popen, timeout: float = 3.0) -> None:
    """End one of our processes (or its group): SIGTERM, then SIGKILL."""
    if p.poll() is None:
        _signal(p, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(p, signal.SIGKILL)
            p.wait()
    _signal(p, signal.SIGKILL)  # children left behind by a group leader
    _group_leaders.discard(p.pid)
    if p in _procs:
        _procs.remove(p)


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        if p.pid in _group_leaders:
            os.killpg(p.pid, sig)
        elif p.returncode is None:
            p.send_signal(sig)
    except ProcessLookupError:
        pass


def stop_all() -> None:
    """Final clean-up: end every process still registered, newest first."""
    for p in reversed(list(_procs)):
        stop(p)


def tcp_ready(addr: str, port: int, timeout: float = 0.2) -> bool:
    """One connect attempt from the sandbox host netns (where we run)."""
    try:
        with socket.create_connection((addr, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(ns: str | None, addr: str, port: int, nbtool: str, timeout: float = 5.0) -> None:
    """Wait until addr:port accepts connections as seen from netns `ns`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns is None:
            ok = tcp_ready(addr, port)
        else:
            argv = in_ns(ns, [nbtool, "probe", addr, str(port), "0.2"])
            ok = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False).returncode == 0
        if ok:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{addr}:{port} not accepting connections (netns {ns or 'host'})")


def tune_netns(ns: str | None, port_range: str) -> None:
    """lo up, TIME_WAIT reuse and a wide port range: the connect-rate test
    opens tens of thousands of connections per run."""
    sh(
        "ip link set lo up; "
        "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; "
        f"echo '{port_range}' > /proc/sys/net/ipv4/ip_local_port_range",
        ns=ns,
    )


def new_netns(work: str, name: str) -> str:
    """A netns bound to a file (like `ip netns add`), so that helpers can be
    given `--netns FILE` and tools can nsenter it by path."""
    path = os.path.join(work, name)
    open(path, "w").close()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True)
    tune_netns(path, NS_PORT_RANGE)
    return path


def drop_netns(path: str) -> None:
    """Unbind and remove a netns file; the netns dies with its last user."""
    subprocess.run(["umount", path], check=False, stderr=subprocess.DEVNULL)
    if os.path.exists(path):
        os.unlink(path)


class Sandbox:
    """The sandbox host netns (where we run), the remote netns and its servers."""

    def __init__(self, work: str, nbtool: str, veth_mtu: int) -> None:
        self.work, self.nbtool, self.veth_mtu = work, nbtool, veth_mtu
        self.remote = ""
        self.remote_iperf: subprocess.Popen | None = None

    def setup(self) -> None:
        """Build the uplink and start the servers; raises if any is not up."""
        tune_netns(None, HOST_PORT_RANGE)
        self.remote = new_netns(self.work, "remote")
        self._link_host()
        self._link_remote()
        self.restart_remote_iperf()
        quiet = {"stdout": subprocess.DEVNULL}
        spawn([self.nbtool, "serve", str(ECHO_PORT)], ns=self.remote, **quiet)
        spawn([self.nbtool, "hold", str(HOLD_PORT)], ns=self.remote, **quiet)
        quiet["stderr"] = subprocess.DEVNULL  # readiness probes make iperf3 complain
        spawn(["iperf3", "-s", "-p", str(BASE_IPERF_PORT)], **quiet)
        wait_port(self.remote, REMOTE_IP, ECHO_PORT, self.nbtool)
        wait_port(self.remote, REMOTE_IP, HOLD_PORT, self.nbtool)
        wait_port(None, HOST_IP, BASE_IPERF_PORT, self.nbtool)

    def _link_host(self) -> None:
        sh(
            "ip link add veth-h type veth peer name veth-r; "
            f"ip link set veth-r netns {self.remote}; "
            f"ip addr add {HOST_IP}/24 dev veth-h; "
            f"ip -6 addr add {HOST_IP6}/64 dev veth-h nodad; "
            f"ip link set veth-h mtu {self.veth_mtu} up; "
            f"ip route add default via {GW_IP}; "
            f"ip -6 route add default via {GW_IP6}"
        )

    def _link_remote(self) -> None:
        """Replies and remote-initiated traffic must come from the service
        address (route `src`), or UDP replies to a connected client are dropped."""
        sh(
            f"ip addr add {GW_IP}/24 dev veth-r; "
            f"ip -6 addr add {GW_IP6}/64 dev veth-r nodad; "
            f"ip addr add {REMOTE_IP}/32 dev lo; "
            f"ip -6 addr add {REMOTE_IP6}/128 dev lo; "
            f"ip link set veth-r mtu {self.veth_mtu} up; "
            f"ip route replace 198.51.100.0/24 dev veth-r src {REMOTE_IP}; "
            f"ip route add {BASE_NET} via {HOST_IP} src {REMOTE_IP}",
            ns=self.remote,
        )

    def restart_remote_iperf(self) -> None:
        """(Re)start the remote iperf3 server: it serves one test at a time and
        can stay wedged after a client that died mid-test (a broken candidate)."""
        if self.remote_iperf is not None:
            stop(self.remote_iperf)
        self.remote_iperf = spawn(
            ["iperf3", "-s", "-p", str(IPERF_PORT), "-B", REMOTE_IP],
            ns=self.remote,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.remote, REMOTE_IP, IPERF_PORT, self.nbtool)

    def teardown(self) -> None:
        """End all servers and helpers, unbind the remote netns."""
        stop_all()
        if self.remote:
            drop_netns(self.remote)
