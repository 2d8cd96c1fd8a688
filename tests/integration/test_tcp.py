"""TCP translation end to end: integrity both ways, concurrency, half-close, resets,
zero windows, IPv4 and IPv6. Every transfer is compared by SHA-256 at both ends."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sandbox
import servers
from sandbox import HOST_V4, HOST_V6, REMOTE_V4, REMOTE_V6

TRANSFER = str(Path(__file__).with_name("transfer.py"))
BIG = 256 << 20
FORWARDED = 8700
NO_AUTO = ["-u", "none", "-T", "none", "-U", "none"]
families = pytest.mark.parametrize(("remote", "host"), [(REMOTE_V4, HOST_V4),
                                                        (REMOTE_V6, HOST_V6)], ids=["v4", "v6"])


def transfer(netns: sandbox.Netns, *args: object, timeout: float = 120) -> dict:
    result = netns.run([sys.executable, TRANSFER, *map(str, args)], timeout=timeout)
    return json.loads(result.stdout.decode().splitlines()[-1])


def serve(netns: sandbox.Netns, *args: object) -> sandbox.subprocess.Popen[bytes]:
    """Start a transfer.py server inside ``netns`` and wait until it listens."""
    process = netns.popen([sys.executable, TRANSFER, *map(str, args)],
                          stdout=sandbox.subprocess.PIPE)
    assert b"listening" in process.stdout.readline()
    return process


@pytest.fixture
def remote_servers(topology: sandbox.Topology) -> Iterator[list]:
    """Servers a test starts on the (session-wide) remote; ended when the test ends."""
    started: list[sandbox.subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        sandbox.stop_popen(process)


def start(pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
          *forwards: str) -> None:
    tcp = [arg for port in forwards for arg in ("-t", port)] or ["-t", "none"]
    pasta_net.start(["--config-net", *tcp, *NO_AUTO])
    container.wait_for_address(HOST_V6)


@pytest.fixture(params=["6.9+", "before-6.9"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Peeking with SO_PEEK_OFF, or as on kernels before 6.9, whose TCP sockets lack it
    (Debian 12's 6.1, Ubuntu 22.04's 5.15): the program reads the switch at start."""
    if request.param == "before-6.9":
        monkeypatch.setenv("PASTA_NET_NO_PEEK_OFFSET", "1")
    return request.param


@families
@pytest.mark.usefixtures("kernel")
def test_256_mib_each_way_outbound(pasta_net, container, remote, host) -> None:
    start(pasta_net, container)
    up = transfer(container, "upload", remote, servers.SINK_PORT, BIG)
    assert (up["peer_got"], up["peer_sha"]) == (BIG, up["sent_sha"])
    down = transfer(container, "download", remote, servers.SOURCE_PORT, BIG)
    assert (down["got"], down["got_sha"]) == (BIG, down["expected_sha"])


@families
@pytest.mark.usefixtures("kernel")
def test_256_mib_each_way_through_inbound_forward(pasta_net, container, topology, remote,
                                                   host) -> None:
    start(pasta_net, container, f"{FORWARDED}", f"{FORWARDED + 1}")
    serve(container, "serve", FORWARDED, "sink")
    serve(container, "serve", FORWARDED + 1, "source")
    up = transfer(topology.remote, "upload", host, FORWARDED, BIG)
    assert (up["peer_got"], up["peer_sha"]) == (BIG, up["sent_sha"])
    down = transfer(topology.remote, "download", host, FORWARDED + 1, BIG)
    assert (down["got"], down["got_sha"]) == (BIG, down["expected_sha"])


def test_inbound_forward_keeps_client_address_and_remaps_port(pasta_net, container,
                                                              topology) -> None:
    start(pasta_net, container, f"{FORWARDED}:{FORWARDED + 5}")
    echo = container.popen(["socat", f"TCP-LISTEN:{FORWARDED + 5},reuseaddr",
                            "SYSTEM:'echo $SOCAT_PEERADDR'"], stdout=sandbox.subprocess.PIPE)
    sandbox.wait_until(
        lambda: any(e.port == FORWARDED + 5 for e in container.listening()), 10, "socat")
    seen = topology.remote.run(["socat", "-", f"TCP:{HOST_V4}:{FORWARDED}"], timeout=20)
    assert seen.stdout.decode().strip() == REMOTE_V4
    echo.wait(10)


@pytest.mark.usefixtures("kernel")
def test_200_concurrent_connections_random_sizes_both_directions(pasta_net, container) -> None:
    start(pasta_net, container)
    result = transfer(container, "many", REMOTE_V4, servers.SINK_PORT, servers.SOURCE_PORT,
                      200, 1234, timeout=300)
    assert result["connections"] == 200 and result["mismatches"] == 0


@pytest.mark.usefixtures("kernel")
def test_half_close_namespace_still_receives_after_its_fin(pasta_net, container) -> None:
    """upload() shuts its write side, then reads the sink's reply on the same connection."""
    start(pasta_net, container)
    up = transfer(container, "upload", REMOTE_V6, servers.SINK_PORT, 12345)
    assert up["peer_sha"] == up["sent_sha"]


@pytest.mark.usefixtures("kernel")
def test_reset_from_remote_reaches_namespace(pasta_net, container, topology,
                                             remote_servers) -> None:
    start(pasta_net, container)
    remote_servers.append(serve(topology.remote, "rst-server", FORWARDED + 2))
    result = transfer(container, "expect-reset", REMOTE_V4, FORWARDED + 2, timeout=60)
    assert result["outcome"] in ("ConnectionResetError", "BrokenPipeError")


def test_reset_from_namespace_reaches_remote_client(pasta_net, container, topology) -> None:
    start(pasta_net, container, f"{FORWARDED + 3}")
    serve(container, "rst-server", FORWARDED + 3)
    result = transfer(topology.remote, "expect-reset", HOST_V4, FORWARDED + 3, timeout=60)
    assert result["outcome"] in ("ConnectionResetError", "BrokenPipeError")


@pytest.mark.usefixtures("kernel")
def test_server_that_never_reads_does_not_stall_other_flows(pasta_net, container, topology,
                                                            remote_servers) -> None:
    start(pasta_net, container)
    remote_servers.append(serve(topology.remote, "idle", FORWARDED + 4))
    holder = container.popen([sys.executable, TRANSFER, "hold", REMOTE_V4, str(FORWARDED + 4)],
                             stdout=sandbox.subprocess.PIPE)
    up = transfer(container, "upload", REMOTE_V4, servers.SINK_PORT, 64 << 20)
    assert up["peer_sha"] == up["sent_sha"]
    held = json.loads(holder.stdout.read().decode().splitlines()[-1])
    assert held["sent_before_stall"] > 0


def test_refused_connection_is_reset_quickly(pasta_net, container) -> None:
    start(pasta_net, container)
    result = container.run([sys.executable, "-c", f"""
import socket, time
t = time.monotonic()
try:
    socket.create_connection(("{REMOTE_V4}", 9), timeout=5)
except ConnectionRefusedError:
    print("refused", time.monotonic() - t)
"""], timeout=20)
    verdict, seconds = result.stdout.decode().split()
    assert verdict == "refused" and float(seconds) < 2


_KEEPALIVE_CLIENT = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
time.sleep(6)  # idle: about 6 probes, any 2 unanswered in a row end the connection
sock.sendall(b"still there")
print(sock.recv(100).decode())
"""


def test_an_idle_connection_with_keepalive_survives(pasta_net, container) -> None:
    """Keepalive probes from the namespace (Go turns them on for every connection) are
    acknowledged; unanswered, its kernel resets the connection itself."""
    start(pasta_net, container)
    result = container.run([sys.executable, "-c", _KEEPALIVE_CLIENT, REMOTE_V4,
                            str(servers.ECHO_PORT)], timeout=30)
    assert result.stdout.decode().strip() == "still there"


_WHO = """
import socket, sys
with socket.create_server((sys.argv[1], int(sys.argv[2]))) as srv:
    print("listening", flush=True)
    conn, peer = srv.accept()
    print(peer[0], flush=True)
    conn.close()
"""


@pytest.fixture
def second_host_address(topology: sandbox.Topology) -> Iterator[str]:
    """198.51.100.3 on the sandbox host's uplink too, for -o to pick."""
    sandbox.run_command(["ip", "addr", "add", "198.51.100.3/24", "dev", "up0"])
    try:
        yield "198.51.100.3"
    finally:
        sandbox.run_command(["ip", "addr", "del", "198.51.100.3/24", "dev", "up0"],
                            check=False)


def test_outbound_address(pasta_net, container, topology, second_host_address) -> None:
    """-o picks the source address of connections out."""
    pasta_net.start(["--config-net", "-t", "none", *NO_AUTO, "-o", second_host_address])
    container.wait_for_address(HOST_V4)
    server = topology.remote.popen([sys.executable, "-c", _WHO, REMOTE_V4,
                                    str(FORWARDED + 5)], stdout=sandbox.subprocess.PIPE)
    try:
        assert server.stdout.readline() == b"listening\n"
        container.run([sys.executable, "-c", "import socket, sys; socket.create_connection("
                       "(sys.argv[1], int(sys.argv[2])), timeout=5).close()",
                       REMOTE_V4, str(FORWARDED + 5)])
        assert server.stdout.readline().decode().strip() == second_host_address
    finally:
        sandbox.stop_popen(server)


def test_outbound_interface(pasta_net, container) -> None:
    """--outbound-if4 binds connections out to that interface: one the remote cannot
    be reached through makes them fail, where they would succeed."""
    pasta_net.start(["--config-net", "-t", "none", *NO_AUTO, "--outbound-if4", "lo"])
    container.wait_for_address(HOST_V4)
    result = container.run([sys.executable, "-c", f"""
import socket
try:
    socket.create_connection(("{REMOTE_V4}", {servers.ECHO_PORT}), timeout=5)
    print("connected")
except OSError as exc:
    print("failed", exc.errno)
"""])
    assert result.stdout.decode().startswith("failed")
    result = container.run([sys.executable, "-c", f"""
import socket
socket.create_connection(("{REMOTE_V6}", {servers.ECHO_PORT}), timeout=5).close()
print("connected")
"""])
    assert result.stdout.decode().strip() == "connected", "IPv6 is not bound to lo"
