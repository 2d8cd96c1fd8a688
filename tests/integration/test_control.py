"""Run-time control of a live instance: forwards added and removed through ``-c``, stats,
slirp4netns' API on ``--api-socket``, and ``--follow-host``.

Forwards are used from the remote test host, as a client on the internet would; the
host changes of the last test are undone by its fixture, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sandbox
import servers
from sandbox import GATEWAY_V4, HOST_V4, HOST_V6, REMOTE_V4, REMOTE_V6

CONFIG_NET = ["--config-net", "-t", "none", "-u", "none", "-T", "none", "-U", "none"]
HOST_PORT = 18081
CONTAINER_PORT = 80
FOLLOW_DEADLINE = 2.0
"""How soon a host address or route change must show in the namespace."""

_SERVE = """\
import socket, sys
with socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6,
                          dualstack_ipv6=True) as srv:
    print("listening", flush=True)
    while True:
        conn, peer = srv.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())
"""

_CONNECT = """\
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as sock:
        sock.sendall(b"hello")
        print(sock.recv(100).decode())
except ConnectionRefusedError:
    print("refused")
"""


@pytest.fixture
def server(container: sandbox.Container) -> subprocess.Popen[bytes]:
    """An upper-casing TCP server on the container's port 80, both families."""
    process = container.popen([sys.executable, "-c", _SERVE, str(CONTAINER_PORT)],
                              stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"listening\n"
    return process


def from_remote(topology: sandbox.Topology, host: str, port: int = HOST_PORT) -> str:
    """Connect from the remote test host, say hello; the answer, or "refused"."""
    return topology.remote.run([sys.executable, "-c", _CONNECT, host, str(port)]
                               ).stdout.decode().strip()


def ctl(pasta_net: sandbox.ProgramRunner, path: Path, *args: str) -> str:
    result = pasta_net.run_cli(["ctl", str(path), *args])
    assert result.returncode == 0, result.stderr
    return result.stdout


def slirp_request(path: Path, request: bytes) -> bytes:
    """``echo -n $json | nc -U PATH``: one request, write side shut, read to EOF."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def test_forwards_added_and_removed_at_run_time(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
    topology: sandbox.Topology, server: subprocess.Popen[bytes], tmp_path: Path,
) -> None:
    control = tmp_path / "control.sock"
    pasta_net.start([*CONFIG_NET, "-c", str(control)])
    assert control.stat().st_mode & 0o777 == 0o600
    container.wait_for_address(HOST_V4)
    assert from_remote(topology, HOST_V4) == "refused"

    fid = ctl(pasta_net, control, "add", "-t", f"{HOST_PORT}:{CONTAINER_PORT}").strip()
    assert ctl(pasta_net, control, "list") == f"ID\tFORWARD\n{fid}\t-t {HOST_PORT}:80\n"
    for host in (HOST_V4, HOST_V6):
        assert from_remote(topology, host) == "HELLO"

    overlap = pasta_net.run_cli(["ctl", str(control), "add", "-t", str(HOST_PORT)])
    assert overlap.returncode == 1
    assert "Overlapping port specifier" in overlap.stderr

    ctl(pasta_net, control, "remove", fid)
    assert json.loads(ctl(pasta_net, control, "list", "--json")) == {"forwards": []}
    assert from_remote(topology, HOST_V4) == "refused"


@pytest.mark.usefixtures("server")
def test_run_time_forwards_with_the_default_auto_forwarding(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
    topology: sandbox.Topology, tmp_path: Path,
) -> None:
    """No -t/-u/-T/-U given: pasta's default, ``auto`` for all four. A fixed forward added
    at run time is not refused as overlapping it; on a port ``auto`` mirrors already, it
    takes the port over, and ``auto`` mirrors it again once it is removed."""
    control = tmp_path / "control.sock"
    pasta_net.start(["--config-net", "-c", str(control)])
    container.wait_for_address(HOST_V4)
    mirrored = CONTAINER_PORT  # the container's server, mirrored by -t auto
    sandbox.wait_until(lambda: from_remote(topology, HOST_V4, mirrored) == "HELLO",
                       sandbox.START_TIMEOUT, "-t auto mirroring the container's port")

    fid = ctl(pasta_net, control, "add", "-t", f"{HOST_PORT}:{CONTAINER_PORT}").strip()
    assert from_remote(topology, HOST_V4) == "HELLO"
    over = ctl(pasta_net, control, "add", "-t", str(mirrored)).strip()
    assert from_remote(topology, HOST_V4, mirrored) == "HELLO"
    ctl(pasta_net, control, "remove", over)
    sandbox.wait_until(lambda: from_remote(topology, HOST_V4, mirrored) == "HELLO",
                       sandbox.START_TIMEOUT, "-t auto mirroring the port again")
    ctl(pasta_net, control, "remove", fid)
    assert from_remote(topology, HOST_V4) == "refused"


@pytest.fixture
def host_server() -> Iterator[subprocess.Popen[bytes]]:
    """The upper-casing server on the sandbox host's port HOST_PORT, both families."""
    process = subprocess.Popen([sys.executable, "-c", _SERVE, str(HOST_PORT)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"listening\n"
        yield process
    finally:
        sandbox.stop_popen(process)


@pytest.mark.usefixtures("host_server")
def test_namespace_to_host_forward_at_run_time(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, tmp_path: Path,
) -> None:
    """-T: the namespace's loopback port spliced to the host's, added and removed live."""
    control = tmp_path / "control.sock"
    pasta_net.start([*CONFIG_NET, "-c", str(control)])
    container.wait_for_address(HOST_V4)
    connect = [sys.executable, "-c", _CONNECT, "127.0.0.1", str(HOST_PORT)]
    assert container.run(connect).stdout.decode().strip() == "refused"
    fid = ctl(pasta_net, control, "add", "-T", str(HOST_PORT)).strip()
    assert container.run(connect).stdout.decode().strip() == "HELLO"
    ctl(pasta_net, control, "remove", fid)
    assert container.run(connect).stdout.decode().strip() == "refused"


def test_stats_change_as_traffic_flows(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
    topology: sandbox.Topology, server: subprocess.Popen[bytes], tmp_path: Path,
) -> None:
    control = tmp_path / "control.sock"
    pasta_net.start([*CONFIG_NET, "-c", str(control), "-t", f"{HOST_PORT}:{CONTAINER_PORT}"])
    container.wait_for_address(HOST_V4)
    before = json.loads(ctl(pasta_net, control, "stats", "--json"))
    assert before["forwards"] == 1
    assert set(before["flows"]) == {"tcp", "udp", "icmp"}

    assert from_remote(topology, HOST_V4) == "HELLO"
    container.run(["ping", "-c", "2", "-i", "0.2", "-W", "5", REMOTE_V6])
    after = json.loads(ctl(pasta_net, control, "stats", "--json"))
    for way in ("from_ns", "to_ns"):
        assert after[way]["frames"] > before[way]["frames"]
        assert after[way]["bytes"] > before[way]["bytes"] + 100
    assert after["uptime"] > before["uptime"]
    assert after["flows"]["icmp"] == 1  # the ping socket lives on for a while
    human = ctl(pasta_net, control, "stats")
    assert human.startswith("uptime    ") and "\nforwards  1\n" in human


def test_silent_and_flooding_control_clients_do_not_stall_traffic(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
    topology: sandbox.Topology, server: subprocess.Popen[bytes], tmp_path: Path,
) -> None:
    """Clients that say nothing, and one that sends requests without reading the replies
    (the server ends up blocked writing to it), while forwarded traffic flows."""
    control = tmp_path / "control.sock"
    pasta_net.start([*CONFIG_NET, "-c", str(control), "-t", f"{HOST_PORT}:{CONTAINER_PORT}"])
    container.wait_for_address(HOST_V4)
    with contextlib.ExitStack() as clients:
        for _ in range(4):
            clients.enter_context(socket.socket(socket.AF_UNIX)).connect(str(control))
        flood = clients.enter_context(socket.socket(socket.AF_UNIX))
        flood.connect(str(control))
        flood.setblocking(False)
        requests, sent = b'{"command": "stats"}\n' * 1000, 0
        with contextlib.suppress(BlockingIOError):
            while sent < 64 << 20:
                sent += flood.send(requests)
        for host in (HOST_V4, HOST_V6):
            assert from_remote(topology, host) == "HELLO"
        assert json.loads(ctl(pasta_net, control, "stats", "--json"))["forwards"] == 1


MAN_ADD = (b'{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0",'
           b' "host_port": 8080, "guest_addr": "10.0.2.100", "guest_port": 80}}')


def test_slirp4netns_man_page_examples(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
    topology: sandbox.Topology, server: subprocess.Popen[bytes], tmp_path: Path,
) -> None:
    """slirp4netns.1's requests, verbatim, against a namespace at slirp4netns' address."""
    api = tmp_path / "slirp4netns.sock"
    pasta_net.start(["--config-net", "-a", "10.0.2.100", "-n", "24", "-g", "10.0.2.2",
                     "-t", "none", "-u", "none", "-T", "none", "-U", "none",
                     "--api-socket", str(api)])
    container.wait_for_address("10.0.2.100")
    assert slirp_request(api, MAN_ADD) == b'{"return":{"id":1}}'
    assert json.loads(slirp_request(api, b'{"execute": "list_hostfwd"}')) == {"return": {
        "entries": [{"id": 1, "proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080,
                     "guest_addr": "10.0.2.100", "guest_port": 80}]}}
    assert from_remote(topology, HOST_V4, 8080) == "HELLO"
    remove = b'{"execute": "remove_hostfwd", "arguments": {"id": 1}}'
    assert slirp_request(api, remove) == b'{"return":{}}'
    assert from_remote(topology, HOST_V4, 8080) == "refused"
    assert slirp_request(api, remove) == (
        b'{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id: '
        b'no forward with id 1"}}')
    assert slirp_request(api, b"badjson") == b'{"error":{"desc":"bad request: cannot parse JSON"}}'


def test_slirp4netns_api_with_ipv6(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
    topology: sandbox.Topology, server: subprocess.Popen[bytes], tmp_path: Path,
) -> None:
    """What slirp4netns cannot do: an IPv6 host address."""
    api = tmp_path / "api.sock"
    pasta_net.start([*CONFIG_NET, "--api-socket", str(api)])
    container.wait_for_address(HOST_V6)
    request = json.dumps({"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": "::", "host_port": HOST_PORT, "guest_port": 80}})
    assert slirp_request(api, request.encode()) == b'{"return":{"id":1}}'
    assert from_remote(topology, HOST_V6) == "HELLO"
    assert from_remote(topology, HOST_V4) == "refused"  # "::" is IPv6 only, as "0.0.0.0" is v4
    entries = json.loads(slirp_request(api, b'{"execute":"list_hostfwd"}'))["return"]["entries"]
    assert entries == [{"id": 1, "proto": "tcp", "host_addr": "::", "host_port": HOST_PORT,
                        "guest_addr": HOST_V6, "guest_port": 80}]


# ----------------------------------------------------------------- follow --
NEW_HOST_V4 = "198.51.100.3"
NEW_GATEWAY_V4 = "198.51.100.254"


PROMOTE = Path("/proc/sys/net/ipv4/conf/up0/promote_secondaries")
MOVES = {
    # without promote_secondaries, deleting the primary address takes the others along
    "delete-first": [["ip", "addr", "del", f"{HOST_V4}/24", "dev", "up0"],
                     ["ip", "addr", "add", f"{NEW_HOST_V4}/24", "dev", "up0"]],
    "add-first": [["sysctl", "-qw", "net.ipv4.conf.up0.promote_secondaries=1"],
                  ["ip", "addr", "add", f"{NEW_HOST_V4}/24", "dev", "up0"],
                  ["ip", "addr", "del", f"{HOST_V4}/24", "dev", "up0"]],
}


@pytest.fixture
def host_moves(topology: sandbox.Topology) -> Iterator[None]:
    """Undo the host's move (and the remote's new gateway address) after the test."""
    promote = PROMOTE.read_text()
    topology.remote.run(["ip", "addr", "add", f"{NEW_GATEWAY_V4}/24", "dev", "rem0"])
    try:
        yield
    finally:
        PROMOTE.write_text(promote)
        for argv in (["ip", "addr", "del", f"{NEW_HOST_V4}/24", "dev", "up0"],
                     ["ip", "addr", "add", f"{HOST_V4}/24", "dev", "up0"],
                     ["ip", "route", "replace", "default", "via", GATEWAY_V4]):
            sandbox.run_command(argv, check=False)
        topology.remote.run(["ip", "addr", "del", f"{NEW_GATEWAY_V4}/24", "dev", "rem0"],
                            check=False)


_KEEP_TALKING = """\
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as sock:
    for line in sys.stdin:
        sock.sendall(line.encode())
        print(sock.recv(100).decode().strip(), flush=True)
"""


@pytest.mark.usefixtures("host_moves")
@pytest.mark.parametrize("order", MOVES)
def test_follow_host_address_and_gateway(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
    topology: sandbox.Topology, server: subprocess.Popen[bytes], order: str,
) -> None:
    """A new address and gateway on the host show in the namespace within 2 s; forwards
    reach the new address; a flow whose addresses did not change (IPv6 here) goes on."""
    pasta_net.start([*CONFIG_NET, "--follow-host", "-t", f"{HOST_PORT}:{CONTAINER_PORT}"])
    container.wait_for_address(HOST_V4)
    container.wait_for_address(HOST_V6)
    container.run(["ping", "-c", "1", "-W", "5", REMOTE_V4])  # from the old address
    talker = container.popen([sys.executable, "-c", _KEEP_TALKING, REMOTE_V6,
                              str(servers.ECHO_PORT)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert talker.stdin is not None and talker.stdout is not None
    talker.stdin.write(b"before\n")
    talker.stdin.flush()
    assert talker.stdout.readline() == b"before\n"

    for argv in [*MOVES[order], ["ip", "route", "replace", "default", "via", NEW_GATEWAY_V4]]:
        sandbox.run_command(argv)

    def moved() -> bool:
        v4 = {str(a.interface) for a in container.addresses() if a.interface.version == 4
              and not a.interface.ip.is_loopback}
        gateways = {r.gateway for r in container.routes() if r.dst == "default"}
        return v4 == {f"{NEW_HOST_V4}/24"} and NEW_GATEWAY_V4 in gateways
    sandbox.wait_until(moved, FOLLOW_DEADLINE, "the namespace following the host")

    assert GATEWAY_V4 not in {r.gateway for r in container.routes() if r.dst == "default"}
    assert from_remote(topology, NEW_HOST_V4) == "HELLO"  # to the new address
    container.run(["ping", "-c", "1", "-W", "5", REMOTE_V4])  # from it
    talker.stdin.write(b"after\n")  # IPv6 did not change: its connection goes on
    talker.stdin.flush()
    assert talker.stdout.readline() == b"after\n"
    talker.stdin.close()
    assert talker.wait(sandbox.STOP_TIMEOUT) == 0
