"""What podman ≥ 5.3 does with ``pasta``, step by step, with pasta-net in its place.

podman binds a fresh network namespace to a file, runs ``pasta <argv> --netns FILE``
through ``exec.Command(...).CombinedOutput()`` (one pipe for stdout and stderr, read to
EOF), reads the container's addresses the moment that returns, and at teardown only
unmounts and removes the file ("the pasta process will automatically exit when the netns
path is deleted"). A restarted container binds the same ports again at once, so the
daemon must be gone, and its listeners closed, promptly (podman #23737, #24365).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sandbox
from sandbox import GATEWAY_V4, GATEWAY_V6, HOST_V4, HOST_V6, REMOTE_V4

from tests.programs import pasta_symlink

HOST_PORT = 18080
CONTAINER_PORT = 80
EXIT_DEADLINE = 1.0
"""How soon after the netns file is gone pasta-net must have exited (pasta: ~1 s)."""

_ACCEPT_ONE = """\
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.create_server((sys.argv[1], int(sys.argv[2])), family=family) as srv:
    print("listening", flush=True)
    for _ in range(int(sys.argv[3])):
        conn, peer = srv.accept()
        with conn:
            request = conn.recv(100)
            conn.sendall(request.upper() + b" from " + peer[0].encode())
"""

_CONNECT = """\
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as sock:
    sock.sendall(b"hello")
    sock.shutdown(socket.SHUT_WR)
    print(sock.recv(200).decode(), sock.getsockname()[0])
"""


_ANSWER_ONE = """\
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.bind((sys.argv[1], 53))
    print("bound", flush=True)
    query, peer = sock.recvfrom(512)
    sock.sendto(b"answer to " + query, peer)
"""

_ASK = """\
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.settimeout(10)
    sock.sendto(b"query", (sys.argv[1], 53))
    print(sock.recv(512).decode())
"""

CONTAINERS_CONF_OPTIONS = ("--dns-host", REMOTE_V4)
"""``[network] pasta_options`` in containers.conf: the resolver behind 169.254.1.1 is
the remote test host, not whatever /etc/resolv.conf of the machine names."""


def podman_argv(netns: Path, *ports: str) -> list[str]:
    """``createPastaArgs`` of podman 5.3–5.8 for ``podman run --network pasta -p ...``."""
    return [
        "--config-net",
        *CONTAINERS_CONF_OPTIONS,
        *(arg for port in ports for arg in ("-t", port)),
        "--dns-forward", "169.254.1.1",
        *([] if ports else ["-t", "none"]),
        "-u", "none", "-T", "none", "-U", "none",
        "--no-map-gw", "--quiet",
        "--netns", str(netns),
        "--map-guest-addr", "169.254.1.2",
    ]  # fmt: skip


def combined_output(argv: list[str], timeout: float = sandbox.START_TIMEOUT) -> tuple[int, str]:
    """Go's ``CombinedOutput()``: returns only once the process exited *and* the pipe is at
    EOF, so a daemon that kept stdout or stderr open makes this time out."""
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        sandbox.stop_popen(process)
        pytest.fail(f"no exit and EOF within {timeout}s (a daemon holds the pipe?): {argv}")
    return process.returncode, output.decode(errors="replace")


def daemons_for(netns: Path) -> list[int]:
    """pasta-net processes serving `netns` (pytest is their subreaper, so they are ours)."""
    return [
        pid
        for pid, proc in sandbox.descendants().items()
        if proc.state != "Z" and str(netns) in proc.cmdline and "pasta" in proc.cmdline
    ]


@pytest.fixture
def pasta(tmp_path: Path) -> Path:
    return pasta_symlink(tmp_path)


@pytest.fixture
def started(pasta: Path, container: sandbox.Container, topology: sandbox.Topology) -> Iterator[int]:
    """pasta-net started exactly as podman starts it, with one forward; its daemon's pid."""
    port = f"{HOST_PORT}-{HOST_PORT}:{CONTAINER_PORT}-{CONTAINER_PORT}"
    code, output = combined_output([str(pasta), *podman_argv(container.path, port)])
    assert (code, output) == (0, "")  # --quiet: podman logs any output as warnings
    (pid,) = daemons_for(container.path)
    try:
        yield pid
    finally:
        if daemons_for(container.path):
            sandbox.Running(pid, Path("/dev/null")).stop()


def test_namespace_is_configured_when_the_parent_exits(
    started: int, container: sandbox.Container
) -> None:
    """podman reads the addresses straight away: no waiting, nothing tentative."""
    found = {(a.ifname, a.interface, a.tentative) for a in container.addresses()}
    assert ("up0", ipaddress.ip_interface(f"{HOST_V4}/24"), False) in found
    assert ("up0", ipaddress.ip_interface(f"{HOST_V6}/64"), False) in found
    routes = {(r.dst, r.gateway) for r in container.routes()}
    assert {("default", GATEWAY_V4), ("default", GATEWAY_V6)} <= routes
    (link,) = json.loads(container.run(["ip", "-j", "link", "show", "up0"]).stdout)
    assert (link["mtu"], link["operstate"] in ("UP", "UNKNOWN")) == (65520, True)
    with socket.socket() as sock, pytest.raises(OSError) as taken:
        sock.bind(("0.0.0.0", HOST_PORT))  # the forward is bound before the parent exits
    assert taken.value.errno == errno.EADDRINUSE


@pytest.mark.parametrize("host", [HOST_V4, HOST_V6], ids=["v4", "v6"])
def test_published_port_from_the_remote_keeps_the_source(
    started: int, container: sandbox.Container, topology: sandbox.Topology, host: str
) -> None:
    """``-p 18080:80`` reached from "the internet"; the container sees the real client."""
    wildcard = "::" if ":" in host else "0.0.0.0"
    server = container.popen(
        [sys.executable, "-c", _ACCEPT_ONE, wildcard, str(CONTAINER_PORT), "1"],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    assert server.stdout.readline() == b"listening\n"
    reply = topology.remote.run([sys.executable, "-c", _CONNECT, host, str(HOST_PORT)])
    answer, client = reply.stdout.decode().rsplit(maxsplit=1)
    assert answer == f"HELLO from {client}"
    assert client not in (HOST_V4, HOST_V6)  # the remote's own address, not rewritten
    assert not ipaddress.ip_address(client).is_loopback
    assert server.wait(sandbox.STOP_TIMEOUT) == 0


def test_dns_forward_address_reaches_the_resolver(
    started: int, container: sandbox.Container, topology: sandbox.Topology
) -> None:
    """podman writes ``nameserver 169.254.1.1`` into the container's resolv.conf."""
    resolver = topology.remote.popen(
        [sys.executable, "-c", _ANSWER_ONE, REMOTE_V4], stdout=subprocess.PIPE
    )
    assert resolver.stdout is not None
    assert resolver.stdout.readline() == b"bound\n"
    reply = container.run([sys.executable, "-c", _ASK, "169.254.1.1"])
    assert reply.stdout.decode().strip() == "answer to query"


def test_map_guest_addr_reaches_the_host(started: int, container: sandbox.Container) -> None:
    """podman ≥ 5.3 maps host.containers.internal to 169.254.1.2: the host's own address,
    which the container cannot reach directly because it holds that address itself."""
    with socket.create_server((HOST_V4, HOST_PORT + 1)) as server:
        server.settimeout(10)
        client = container.popen(
            [sys.executable, "-c", _CONNECT, "169.254.1.2", str(HOST_PORT + 1)],
            stdout=subprocess.PIPE,
        )
        conn, _peer = server.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())
    assert client.communicate(timeout=10)[0].decode().split()[0] == "HELLO"


def test_exits_within_a_second_of_the_netns_file_going(
    started: int, container: sandbox.Container
) -> None:
    """podman's teardown: ``umount -l`` and unlink; then the port must be free again."""
    sandbox.run_command(["umount", "--lazy", str(container.path)])
    container.path.unlink()
    gone_at = time.monotonic()
    assert sandbox.wait_pid(started, EXIT_DEADLINE + 1.0) == 0
    assert time.monotonic() - gone_at <= EXIT_DEADLINE
    for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As the restarted pasta binds: SO_REUSEADDR passes over TIME-WAIT leftovers of
            # earlier connections, but not over a listener still holding the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((wildcard, HOST_PORT))
            sock.listen()


def test_port_in_use_fails_before_exiting_0(
    pasta: Path, container: sandbox.Container, topology: sandbox.Topology
) -> None:
    """Exit 0 promises bound ports: a taken one is status 1, pasta's words, nothing left."""
    with socket.create_server(("0.0.0.0", HOST_PORT)):
        port = f"{HOST_PORT}-{HOST_PORT}:{CONTAINER_PORT}-{CONTAINER_PORT}"
        code, output = combined_output([str(pasta), *podman_argv(container.path, port)])
    assert code == 1
    assert f"Failed to bind port {HOST_PORT}" in output
    assert daemons_for(container.path) == []


def test_missing_netns_fails_with_status_1(pasta: Path, tmp_path: Path) -> None:
    code, output = combined_output([str(pasta), *podman_argv(tmp_path / "gone")])
    assert code == 1
    assert output.startswith(f"pasta: Couldn't open network namespace {tmp_path / 'gone'}")
