"""Local mode: a host with no default route (offline, or before its network came up).

pasta used to refuse to start there ("External interface not usable", podman #23566),
which kept rootless containers from starting on an offline laptop; since 2024 it gives
the namespace link-local addresses instead. So do we: 169.254.2.1/16 via 169.254.2.2,
the gateway leading to the host's loopback, forwarded ports working, and with
``--follow-host`` the namespace moves to the host's addresses once the host has some.

The fixture takes the sandbox host's default routes away and puts them back, whatever
happens; the remote stays reachable on-link but cannot be answered, so every transfer
here runs between the namespace and the host's loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sandbox
from sandbox import GATEWAY_V4, GATEWAY_V6, HOST_V4, HOST_V6, REMOTE_V4

LOCAL_V4, LOCAL_GATEWAY_V4 = "169.254.2.1", "169.254.2.2"
CONFIG_NET = ["--config-net", "-u", "none", "-U", "none", "-T", "none"]
PORT = 47100
SIZE = 8 << 20
TRANSFER = str(Path(__file__).with_name("transfer.py"))
FOLLOW_DEADLINE = 2.0


@pytest.fixture
def offline_host(topology: sandbox.Topology) -> Iterator[None]:
    """The sandbox host without its default routes for the test."""
    sandbox.run_command(["ip", "route", "del", "default"])
    sandbox.run_command(["ip", "-6", "route", "del", "default"])
    try:
        yield
    finally:
        sandbox.run_command(["ip", "route", "replace", "default", "via", GATEWAY_V4])
        sandbox.run_command(["ip", "-6", "route", "replace", "default", "via", GATEWAY_V6])


@pytest.fixture
def serve() -> Iterator[Callable[[sandbox.Netns | None, int, str], None]]:
    """Factory: a transfer.py sink or source server in a netns (None: the sandbox host)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(netns: sandbox.Netns | None, port: int, role: str) -> None:
        argv = [sys.executable, TRANSFER, "serve", str(port), role]
        process = (netns.popen(argv, stdout=subprocess.PIPE) if netns is not None else
                   subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE))
        processes.append(process)
        assert process.stdout is not None
        assert b"listening" in process.stdout.readline()

    yield start
    for process in processes:
        sandbox.stop_popen(process)


def both_ways(host: str, port: int, netns: sandbox.Netns | None) -> None:
    """SIZE bytes to the sink at ``port`` and from the source at ``port + 1``, hashed."""
    def transfer(*argv: str) -> dict:
        command = [sys.executable, TRANSFER, *argv]
        result = (netns.run(command, timeout=60) if netns is not None
                  else sandbox.run_command(command, timeout=60))
        return json.loads(result.stdout.decode().splitlines()[-1])

    up = transfer("upload", host, str(port), str(SIZE))
    assert (up["peer_got"], up["peer_sha"]) == (SIZE, up["sent_sha"])
    down = transfer("download", host, str(port + 1), str(SIZE))
    assert (down["got"], down["got_sha"]) == (SIZE, down["expected_sha"])


def local_addressing(container: sandbox.Container) -> None:
    address = container.wait_for_address(LOCAL_V4)
    assert str(address.interface) == f"{LOCAL_V4}/16"
    assert address.ifname == "tap0", "pasta's name when there is no host interface to copy"
    assert {r.gateway for r in container.routes() if r.dst == "default"} == {LOCAL_GATEWAY_V4}
    assert not [a for a in container.addresses()
                if a.interface.version == 6 and a.interface.is_global]


@pytest.mark.usefixtures("offline_host")
def test_offline_host_gives_link_local_addresses_that_reach_the_host(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, serve: Callable
) -> None:
    """The gateway address is the host's loopback; an inbound forward reaches the
    namespace's local address, spliced and through the tap."""
    running = pasta_net.start([*CONFIG_NET, "-t", f"{PORT}-{PORT + 1}"])
    local_addressing(container)
    assert "switch to local mode" in running.stderr

    serve(None, PORT + 10, "sink")
    serve(None, PORT + 11, "source")
    both_ways(LOCAL_GATEWAY_V4, PORT + 10, container)  # namespace → host loopback, tap

    serve(container, PORT, "sink")
    serve(container, PORT + 1, "source")
    both_ways("127.0.0.1", PORT, None)  # host loopback → forward → namespace, spliced


@pytest.mark.usefixtures("offline_host")
def test_forwards_without_splice_reach_the_local_address(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container, serve: Callable
) -> None:
    pasta_net.start([*CONFIG_NET, "--no-splice", "-t", f"{PORT}-{PORT + 1}"])
    local_addressing(container)
    serve(container, PORT, "sink")
    serve(container, PORT + 1, "source")
    both_ways("127.0.0.1", PORT, None)


@pytest.mark.usefixtures("offline_host")
def test_a_named_interface_is_not_replaced_by_local_mode(
    pasta_net: sandbox.ProgramRunner,
) -> None:
    """-i names the template: missing, it is an error (pasta's too); present, it is
    copied even without a default route."""
    result = pasta_net.run_cli([*CONFIG_NET, "-i", "eth9", "--", "true"], timeout=30)
    assert result.returncode == 1
    assert "External interface not usable: No such interface: eth9" in result.stderr
    script = f"ip -o addr show up0 | grep -q {HOST_V4}/24"
    result = pasta_net.run_cli([*CONFIG_NET, "-i", "up0", "--", "sh", "-c", script],
                               timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("offline_host")
def test_follow_host_leaves_local_mode_when_the_network_comes(
    pasta_net: sandbox.ProgramRunner, container: sandbox.Container
) -> None:
    """A late network (boot, resume, a cable): the host's default route appears and the
    namespace takes the host's address and gateway, and reaches the remote."""
    pasta_net.start([*CONFIG_NET, "-t", "none", "--follow-host"])
    local_addressing(container)

    sandbox.run_command(["ip", "route", "replace", "default", "via", GATEWAY_V4])
    sandbox.run_command(["ip", "-6", "route", "replace", "default", "via", GATEWAY_V6])

    def online() -> bool:
        addresses = {str(a.interface.ip) for a in container.addresses()}
        gateways = {r.gateway for r in container.routes() if r.dst == "default"}
        return {HOST_V4, HOST_V6} <= addresses and GATEWAY_V4 in gateways
    sandbox.wait_until(online, FOLLOW_DEADLINE, "the namespace leaving local mode")

    assert LOCAL_V4 not in {str(a.interface.ip) for a in container.addresses()}
    container.run(["ping", "-c", "1", "-W", "5", REMOTE_V4])
