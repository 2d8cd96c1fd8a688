"""One protocol suite, run against both frame backends of the same engine.

- ``tap``: pasta mode, a tap device in the container netns (virtio-net offloads on).
- ``passt``: passt mode, ``--passt -s SOCK``; the container netns holds a plain tap whose
  frames vm_relay.py carries over the socket, so the container's kernel is the "VM"
  (software checksums, MSS-sized segments, no splice).

Neither guest gets ``--config-net``: each configures itself the way a VM does, with
udhcpc (udhcpc.script) and the router advertisements, and then talks to the remote test
host and is reached from it through ``-t``/``-u`` forwards. Payloads are servers.py's
pattern, compared by SHA-256 at both ends.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import sandbox
import servers

GUEST_TOOL = Path(__file__).with_name("guest_tool.py")
VM_RELAY = Path(__file__).with_name("vm_relay.py")
UDHCPC_SCRIPT = Path(__file__).with_name("udhcpc.script")
TCP_PORT, UDP_PORT = 18080, 18081
FORWARDS = ("-t", str(TCP_PORT), "-u", str(UDP_PORT))
TRANSFER = 8 << 20


@attrs.define
class Guest:
    """A configured guest: its netns, interface, DHCP lease and the program serving it."""

    netns: sandbox.Netns
    ifname: str
    program: sandbox.Running
    lease: dict[str, str] = attrs.field(factory=dict)

    def tool(self, *args: object, timeout: float = 60.0) -> str:
        """Run guest_tool.py inside the guest; its one result line."""
        argv = [sys.executable, str(GUEST_TOOL), *map(str, args)]
        return self.netns.run(argv, timeout=timeout).stdout.decode().strip()

    def serve(self, *args: object) -> subprocess.Popen[bytes]:
        """Start a one-shot guest_tool.py server; returns once it listens."""
        process = self.netns.popen([sys.executable, str(GUEST_TOOL), *map(str, args)],
                                   stdout=subprocess.PIPE)
        assert process.stdout is not None
        assert process.stdout.readline() == b"listening\n"
        return process


def dhcp(netns: sandbox.Netns, ifname: str) -> dict[str, str]:
    """Run udhcpc once on ``ifname``; the lease as udhcpc.script printed it."""
    out = netns.run(["udhcpc", "-i", ifname, "-f", "-q", "-n", "-t", "5", "-T", "1",
                     "-s", str(UDHCPC_SCRIPT)]).stdout.decode()
    line = next(line for line in out.splitlines() if line.startswith("lease "))
    return dict(field.split("=", 1) for field in line.split()[1:])


def start_relay(netns: sandbox.Netns, *endpoint: str, **popen: object) -> None:
    """vm_relay.py in ``netns`` (ended by the netns' close()); returns once it is ready."""
    relay = netns.popen([sys.executable, str(VM_RELAY), "--ifname", "vm0", *endpoint],
                        stdout=subprocess.PIPE, **popen)
    assert relay.stdout is not None
    assert relay.stdout.readline() == b"ready\n"


@contextlib.contextmanager
def tap_backend(container: sandbox.Container, tmp_path: Path) -> Iterator[Guest]:
    with sandbox.ProgramRunner(sandbox.program_command(), tmp_path, container) as runner:
        running = runner.start(["-I", "pasta0", "-T", "none", "-U", "none", *FORWARDS])
        yield Guest(container, "pasta0", running)


@contextlib.contextmanager
def passt_backend(container: sandbox.Container, tmp_path: Path) -> Iterator[Guest]:
    command = [*sandbox.program_command(), "--passt"]
    with sandbox.ProgramRunner(command, tmp_path, container) as runner:
        path = tmp_path / "passt.socket"
        running = runner.start(["-s", str(path), *FORWARDS], attach=None)
        start_relay(container, "--socket", str(path))
        yield Guest(container, "vm0", running)


BACKENDS = {"tap": tap_backend, "passt": passt_backend}


@pytest.fixture(params=sorted(BACKENDS))
def guest(request: pytest.FixtureRequest, container: sandbox.Container,
          tmp_path: Path) -> Iterator[Guest]:
    """A guest on either backend, configured by DHCP; the remote's servers are up."""
    request.getfixturevalue("topology")
    with BACKENDS[request.param](container, tmp_path) as guest:
        guest.lease = dhcp(guest.netns, guest.ifname)
        yield guest


def test_dhcp_lease_has_the_hosts_address(guest: Guest) -> None:
    assert guest.lease["ip"] == sandbox.HOST_V4
    assert guest.lease["mask"] == "24"
    assert guest.lease["router"] == sandbox.GATEWAY_V4
    assert guest.lease["mtu"] == "65520"


def test_arp_reply_for_the_gateway(guest: Guest) -> None:
    mac, address = guest.tool("arp", guest.ifname, sandbox.HOST_V4, sandbox.GATEWAY_V4).split()
    assert address == sandbox.GATEWAY_V4
    assert mac not in ("ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00")


def test_ping_the_remote_host(guest: Guest) -> None:
    guest.netns.run(["ping", "-c", "2", "-W", "5", sandbox.REMOTE_V4])


def test_ipv6_from_router_advertisements(guest: Guest) -> None:
    """SLAAC from our RA (prefix of the host's /64), then ICMPv6 echo to the remote."""
    sandbox.wait_until(
        lambda: any(a.ifname == guest.ifname and a.interface.version == 6
                    and not a.interface.ip.is_link_local and not a.tentative
                    for a in guest.netns.addresses()),
        15.0, "a global IPv6 address from the router advertisement")
    guest.netns.run(["ping", "-6", "-c", "2", "-W", "5", sandbox.REMOTE_V6])


def test_tcp_transfer_both_ways(guest: Guest) -> None:
    expected = f"{servers.pattern_sha256(TRANSFER)} {TRANSFER}"
    assert guest.tool("sink", sandbox.REMOTE_V4, servers.SINK_PORT, TRANSFER) == expected
    assert guest.tool("fetch", sandbox.REMOTE_V4, servers.SOURCE_PORT, TRANSFER) == expected


def test_gateway_address_reaches_host_loopback(guest: Guest) -> None:
    """The gateway's address maps to the host's loopback (pasta's default, no --no-map-gw)."""
    size = 1 << 20
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)

        def serve_once() -> None:
            conn, _ = server.accept()
            with conn:
                for chunk in servers.pattern_chunks(size):
                    conn.sendall(chunk)

        thread = threading.Thread(target=serve_once)
        thread.start()
        try:
            got = guest.tool("fetch", sandbox.GATEWAY_V4, server.getsockname()[1])
        finally:
            thread.join(30)
    assert got == f"{servers.pattern_sha256(size)} {size}"


def test_udp_echo(guest: Guest) -> None:
    assert guest.tool("udp", sandbox.REMOTE_V4, servers.ECHO_PORT, 1400) == "echoed 1400"


def test_tcp_forward_into_the_guest(guest: Guest, topology: sandbox.Topology) -> None:
    server = guest.serve("serve-tcp", TCP_PORT, TRANSFER)
    got = topology.remote.run([sys.executable, str(GUEST_TOOL), "fetch", sandbox.HOST_V4,
                               str(TCP_PORT)], timeout=60).stdout.decode().strip()
    assert got == f"{servers.pattern_sha256(TRANSFER)} {TRANSFER}"
    assert server.wait(10) == 0


def test_udp_forward_into_the_guest(guest: Guest, topology: sandbox.Topology) -> None:
    server = guest.serve("serve-udp", UDP_PORT)
    got = topology.remote.run([sys.executable, str(GUEST_TOOL), "udp", sandbox.HOST_V4,
                               str(UDP_PORT), "1000"]).stdout.decode().strip()
    assert got == "echoed 1000"
    assert server.wait(10) == 0
