"""Out of file descriptors: new flows are refused at once (RST, ICMP), the transfers
already running complete intact, and pasta-net recovers when fds are free again.

The daemon's soft RLIMIT_NOFILE is lowered from outside (``prlimit``) to a few fds above
what it holds once the long transfers are under way: lowering needs no privilege, and
the soft limit can be put back without CAP_SYS_RESOURCE.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sandbox
import servers
from sandbox import HOST_V4, HOST_V6, REMOTE_V4, REMOTE_V6
from test_hostile import IFNAME, START, TOOL, Target, _link_mac

FORWARDED = 8770
BIG = 64 << 20
SPARE_FDS = 4
"""Free fds left to the daemon: a few new flows get through, the rest must be refused."""


@pytest.fixture
def target(pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
           tmp_path: Path) -> Target:
    control = tmp_path / "control"
    running = pasta_net.start(["--config-net", "-t", str(FORWARDED), "-u", "none", "-T",
                               "none", "-U", "none", "-c", str(control)])
    container.wait_for_address(HOST_V6)
    return Target(container, running, control, pasta_net, _link_mac(container, IFNAME),
                 _link_mac(None, IFNAME))


def _paused(container: sandbox.Container, command: str, host: str, port: int
            ) -> subprocess.Popen[bytes]:
    process = container.popen([sys.executable, TOOL, command, host, str(port), str(BIG)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert json.loads(process.stdout.readline()) == {"paused": True}
    return process


def _resume(process: subprocess.Popen[bytes]) -> dict:
    process.stdin.write(b"go\n")
    process.stdin.flush()
    out, _ = process.communicate(timeout=120)
    return json.loads(out.decode().splitlines()[-1])


def _from_remote(topology: sandbox.Topology, host: str, port: int) -> str:
    """Connect from the remote and read: what happened to the connection."""
    return topology.remote.run([sys.executable, "-c", _KNOCK, host, str(port)],
                               timeout=30).stdout.decode().strip()


_KNOCK = """\
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as sock:
        sock.settimeout(5)
        print("eof" if sock.recv(10) == b"" else "data")
except ConnectionResetError:
    print("reset")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


def test_out_of_fds_refuses_new_flows_and_finishes_old_ones(target: Target,
                                                           topology: sandbox.Topology) -> None:
    container = target.container
    upload = _paused(container, "paused-upload", REMOTE_V4, servers.SINK_PORT)
    download = _paused(container, "paused-download", REMOTE_V6, servers.SOURCE_PORT)
    pid = target.running.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    assert soft == hard, "the daemon raised its soft limit to the hard one at start"
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (target.fds() + SPARE_FDS, hard))
    holder = container.popen([sys.executable, TOOL, "hold-many", REMOTE_V4,
                              str(servers.ECHO_PORT), "40"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        held = json.loads(holder.stdout.readline())
        # A few fit; every other connect is refused at once, none hangs.
        assert held["connected"] <= SPARE_FDS
        assert held["refused"] + held["reset"] >= 40 - SPARE_FDS
        assert held["timeout"] == 0 and held["slowest"] < 3
        udp = json.loads(container.run([sys.executable, TOOL, "udp-ask", REMOTE_V4,
                                        str(servers.ECHO_PORT)]).stdout.decode())
        assert udp.get("error") == "OSError" and udp["errno"] == 113  # EHOSTUNREACH
        assert udp["seconds"] < 2
        # Inbound, a -t connection we cannot accept is reset, not left in the backlog.
        assert _from_remote(topology, HOST_V4, FORWARDED) in ("reset", "eof")
        # What was running before goes on, byte for byte.
        up = _resume(upload)
        assert (up["peer_got"], up["peer_sha"]) == (BIG, up["sent_sha"])
        down = _resume(download)
        assert (down["got"], down["got_sha"]) == (BIG, down["expected_sha"])
    finally:
        holder.stdin.close()
        holder.wait(30)
    # fds again: new flows work, and pasta-net never stopped
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
    time.sleep(0.5)
    udp = json.loads(container.run([sys.executable, TOOL, "udp-ask", REMOTE_V4,
                                    str(servers.ECHO_PORT)]).stdout.decode())
    assert udp.get("reply") == "hello"
    target.transfer_still_works()
    assert target.drops().get("internal-error", 0) == 0


class TestStartedWithALowSoftLimit:
    """``prlimit --nofile=64:HARD -- pasta-net``: the soft limit goes up to the hard one
    at start, as pasta's does, so a large forwarded range can be bound."""

    @pytest.fixture
    def pasta_net_cmd(self) -> list[str]:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return ["prlimit", f"--nofile=64:{hard}", "--", *sandbox.program_command()]

    def test_soft_limit_raised_and_a_range_of_500_ports_bound(
            self, pasta_net: sandbox.ProgramRunner, container: sandbox.Container) -> None:
        running = pasta_net.start(["--config-net", "-t", "9000-9499", "-u", "none", "-T",
                                   "none", "-U", "none"])
        soft, hard = resource.prlimit(running.pid, resource.RLIMIT_NOFILE)
        assert soft == hard > 64
        lines = sandbox.run_command(["ss", "-Hlntu"]).stdout.decode().splitlines()
        listening = {sandbox._parse_endpoint(line).port for line in lines}
        assert set(range(9000, 9500)) <= listening


class TestInheritedFds:
    """A careless starter leaks an fd (no close-on-exec) into pasta-net."""

    @pytest.fixture
    def leaked(self, tmp_path: Path) -> Path:
        return tmp_path / "leaked"

    @pytest.fixture
    def pasta_net_cmd(self, leaked: Path) -> list[str]:
        return ["sh", "-c", 'exec 7>>"$0"; exec "$@"', str(leaked), *sandbox.program_command()]

    def test_are_closed_and_stdio_is_on_dev_null(self, pasta_net: sandbox.ProgramRunner,
                                                container: sandbox.Container,
                                                leaked: Path) -> None:
        running = pasta_net.start(START)
        fds = Path(f"/proc/{running.pid}/fd")
        assert leaked not in {fd.readlink() for fd in fds.iterdir()}
        for fd in (0, 1, 2):
            assert (fds / str(fd)).readlink() == Path("/dev/null")
        assert "NoNewPrivs:\t1" in Path(f"/proc/{running.pid}/status").read_text()


def test_the_daemon_keeps_no_capability_but_net_bind_service(
        pasta_net: sandbox.ProgramRunner, container: sandbox.Container) -> None:
    """Root in the sandbox's user namespace keeps uid 0 there, but not its capabilities:
    in every thread, only CAP_NET_BIND_SERVICE (bit 10) is left, and no_new_privs is set
    (both are per-thread state)."""
    running = pasta_net.start(START)
    for task in Path(f"/proc/{running.pid}/task").iterdir():
        lines = dict(line.split(":\t", 1) for line in (task / "status").read_text()
                     .splitlines() if ":\t" in line)
        assert int(lines["CapEff"], 16) == 1 << 10, task
        assert int(lines["CapPrm"], 16) == 1 << 10, task
        assert int(lines["CapInh"], 16) == 0 and int(lines["CapAmb"], 16) == 0
        assert lines["NoNewPrivs"] == "1", task


@pytest.mark.skipif(
    Path("/proc/self/uid_map").read_text().split() != ["0", "0", "4294967295"],
    reason="pytest runs in a user namespace (tests/conftest.py), so never as real root: "
           "check the switch to nobody by hand with tests/manual/real_root.py",
)
def test_real_root_becomes_nobody(pasta_net: sandbox.ProgramRunner,
                                  container: sandbox.Container) -> None:
    running = pasta_net.start(START)
    status = Path(f"/proc/{running.pid}/status").read_text()
    assert "Uid:\t65534\t65534\t65534\t65534" in status
    assert "CapEff:\t0000000000000400" in status  # CAP_NET_BIND_SERVICE only

