"""The harness itself: sandbox, topology, servers, container and program fixtures.

The program under test is Debian's pasta here, so these tests pass before pasta-net does
anything, and a failure in them is a harness failure, not a pasta-net one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
from pathlib import Path

import pytest
import sandbox
import servers
from sandbox import GATEWAY_V4, GATEWAY_V6, HOST_V4, HOST_V6, REMOTE_V4, REMOTE_V6

CONFIG_NET = ["--config-net", "-t", "none", "-u", "none", "-T", "none", "-U", "none"]
HTTP_SIZE = (4 << 20) + 1
"""Odd on purpose: a transfer that stops at a buffer boundary must not look complete."""
TIMEOUT = 10.0

remote_addresses = pytest.mark.parametrize("remote", [REMOTE_V4, REMOTE_V6], ids=["v4", "v6"])


@pytest.fixture
def pasta_net_cmd() -> list[str]:
    """Debian's pasta. As root of a user namespace it would switch to `nobody`, which is not
    mapped in the sandbox, without --runas 0."""
    return ["pasta", "--runas", "0"]


def _exchange(remote: str, port: int, payload: bytes) -> bytes:
    """Send `payload`, half-close, return everything the server sends until it closes."""
    with socket.create_connection((remote, port), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(servers.CHUNK):
            chunks.append(chunk)
    return b"".join(chunks)


def _pattern(size: int) -> bytes:
    return b"".join(servers.pattern_chunks(size))


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def test_sandbox_has_only_its_own_interfaces(topology: sandbox.Topology) -> None:
    links = json.loads(sandbox.run_command(["ip", "-j", "link", "show"]).stdout)
    assert sorted(link["ifname"] for link in links) == ["lo", "up0"]
    assert (os.getuid(), os.getgid()) == (0, 0)
    assert Path("/proc/sys/net/ipv4/ping_group_range").read_text().split() == ["0", "0"]


def test_pattern_is_deterministic_and_aperiodic() -> None:
    data = _pattern(3 * servers.CHUNK + 5)
    assert len(data) == 3 * servers.CHUNK + 5
    assert data[: servers.CHUNK] != data[servers.CHUNK : 2 * servers.CHUNK]
    assert hashlib.sha256(data).hexdigest() == servers.pattern_sha256(len(data))


@remote_addresses
def test_remote_tcp_services_from_host(topology: sandbox.Topology, remote: str) -> None:
    size = 3 * servers.CHUNK + 7
    assert _exchange(remote, servers.ECHO_PORT, b"hello") == b"hello"
    sink_reply = _exchange(remote, servers.SINK_PORT, _pattern(size))
    assert sink_reply.decode() == f"{servers.pattern_sha256(size)} {size}\n"
    source_data = _exchange(remote, servers.SOURCE_PORT, f"{size}\n".encode())
    assert hashlib.sha256(source_data).hexdigest() == servers.pattern_sha256(size)


@remote_addresses
def test_remote_udp_echo_replies_from_service_address(
    topology: sandbox.Topology, remote: str
) -> None:
    family = socket.AF_INET6 if ":" in remote else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect((remote, servers.ECHO_PORT))  # drops replies from any other address
        sock.send(b"ping")
        assert sock.recv(100) == b"ping"


@remote_addresses
def test_remote_http_and_iperf3_from_host(topology: sandbox.Topology, remote: str) -> None:
    connection = http.client.HTTPConnection(remote, servers.HTTP_PORT, timeout=TIMEOUT)
    connection.request("GET", f"/bytes/{HTTP_SIZE}")
    body = connection.getresponse().read()
    connection.close()
    assert hashlib.sha256(body).hexdigest() == servers.pattern_sha256(HTTP_SIZE)
    sandbox.run_command(
        ["iperf3", "--client", remote, "--port", str(sandbox.IPERF3_PORT), "--bytes", "1M"]
    )


def test_pasta_copies_host_addresses_and_routes(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    running = pasta_net.start(CONFIG_NET)
    assert running.pid in sandbox.descendants(), "the daemon is re-parented to pytest"
    v4 = container.wait_for_address(HOST_V4)
    v6 = container.wait_for_address(HOST_V6)
    assert (str(v4.interface), str(v6.interface)) == (f"{HOST_V4}/24", f"{HOST_V6}/64")
    defaults = {r.gateway for r in container.routes() if r.dst == "default"}
    assert defaults == {GATEWAY_V4, GATEWAY_V6}


@remote_addresses
def test_container_pings_remote(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, remote: str
) -> None:
    pasta_net.start(CONFIG_NET)
    container.wait_for_address(HOST_V6)
    container.run(["busybox", "ping", "-c", "1", "-W", str(int(TIMEOUT)), remote])


@remote_addresses
def test_container_fetches_http_file(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, remote: str
) -> None:
    pasta_net.start(CONFIG_NET)
    container.wait_for_address(HOST_V6)
    url = f"http://{_url_host(remote)}:{servers.HTTP_PORT}/bytes/{HTTP_SIZE}"
    fetched = container.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--noproxy",
            "*",
            "--max-time",
            str(TIMEOUT),
            url,
        ]
    ).stdout
    assert hashlib.sha256(fetched).hexdigest() == servers.pattern_sha256(HTTP_SIZE)


@pytest.mark.parametrize("container", [True], indirect=True, ids=["own-userns"])
@pytest.mark.parametrize("attach", ["pid", "netns"])
def test_pasta_attaches_to_a_container_with_its_own_userns(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, attach: sandbox.Attach
) -> None:
    pasta_net.start(CONFIG_NET, attach=attach)
    container.wait_for_address(HOST_V6)
    for remote in (REMOTE_V4, REMOTE_V6):
        container.run(["busybox", "ping", "-c", "1", "-W", str(int(TIMEOUT)), remote])


def test_foreground_program_is_the_started_process(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    running = pasta_net.start(CONFIG_NET, foreground=True)
    container.wait_for_address(HOST_V4)
    assert running.process is not None
    assert running.stop() == 0, "pasta handles SIGTERM and exits 0; stop() reports that"


def test_start_fails_the_test_with_the_program_output(pasta_net: sandbox.ProgramRunner) -> None:
    with pytest.raises(pytest.fail.Exception, match="unrecognized option '--no-such-option'"):
        pasta_net.start(["--no-such-option"])


def test_run_cli_returns_code_and_output(pasta_net: sandbox.ProgramRunner) -> None:
    code, stdout, stderr = pasta_net.run_cli(["--no-such-option"])
    assert (code, stdout) == (1, "")
    assert "pasta: unrecognized option '--no-such-option'" in stderr


def test_teardown_leaves_no_processes(
    sandbox_dir: Path, topology: sandbox.Topology, pasta_net_cmd: list[str], tmp_path: Path
) -> None:
    before = sandbox.descendants().keys()
    path = sandbox.fresh_path(sandbox_dir, "container-")
    with (
        sandbox.Container.create(path) as container,
        sandbox.ProgramRunner(pasta_net_cmd, tmp_path, container) as runner,
    ):
        running = runner.start(CONFIG_NET)
        assert {running.pid, container.pid} <= sandbox.descendants().keys()
    assert sandbox.descendants().keys() == before
    assert running.returncode is not None, "the daemon was reaped by pytest"
    assert not path.exists()
