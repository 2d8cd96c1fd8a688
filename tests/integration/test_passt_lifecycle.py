"""passt mode's process lifecycle: -1, -F, and clients that break the framing.

The "VM" is the container netns' kernel behind vm_relay.py (see test_conformance.py).
"""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import sandbox
from scapy.layers.dhcp import DHCP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap
from test_conformance import dhcp, start_relay

EXIT_TIMEOUT = 10.0


def passt_command(*args: str) -> list[str]:
    return [*sandbox.program_command(), "--passt", "-f", *args]


def test_one_off_exits_when_the_client_leaves(
        topology: sandbox.Topology, container: sandbox.Container, tmp_path: Path) -> None:
    path, pcap = tmp_path / "passt.socket", tmp_path / "frames.pcap"
    with sandbox.ProgramRunner(passt_command("-1"), tmp_path, container) as runner:
        running = runner.start(["-s", str(path), "-p", str(pcap)], attach=None,
                               foreground=True)
        start_relay(container, "--socket", str(path))
        assert dhcp(container, "vm0")["ip"] == sandbox.HOST_V4
        container.close()  # ends the relay: the VM is gone
        assert running.wait(EXIT_TIMEOUT) == 0
    assert "client disconnected" in running.stderr
    assert not path.exists()
    dhcp_senders = {frame[Ether].src for frame in rdpcap(str(pcap)) if DHCP in frame}
    assert len(dhcp_senders) == 2  # both directions recorded, without the vnet header


def test_fd_serves_an_inherited_socket(
        topology: sandbox.Topology, container: sandbox.Container, tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    log = tmp_path / "program.log"
    with ours, theirs, log.open("wb") as out:
        program = subprocess.Popen(passt_command("-F", str(ours.fileno())),
                                   pass_fds=[ours.fileno()], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=out, env=sandbox.program_env())
        try:
            start_relay(container, "--fd", str(theirs.fileno()), pass_fds=[theirs.fileno()])
        except BaseException:
            sandbox.stop_popen(program)
            raise
    try:
        assert dhcp(container, "vm0")["router"] == sandbox.GATEWAY_V4
        container.run(["ping", "-c", "1", "-W", "5", sandbox.REMOTE_V4])
        container.close()
        assert program.wait(EXIT_TIMEOUT) == 0
    finally:
        sandbox.stop_popen(program)


def test_bad_frame_length_closes_only_that_client(
        topology: sandbox.Topology, container: sandbox.Container, tmp_path: Path) -> None:
    path = tmp_path / "passt.socket"
    with sandbox.ProgramRunner(passt_command(), tmp_path, container) as runner:
        running = runner.start(["-s", str(path)], attach=None, foreground=True)
        sandbox.wait_until(path.exists, EXIT_TIMEOUT, "the passt socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as broken:
            broken.connect(str(path))
            broken.settimeout(EXIT_TIMEOUT)
            broken.sendall(struct.pack("!I", 65536) + bytes(64))
            assert broken.recv(1) == b""  # closed on us
        start_relay(container, "--socket", str(path))  # the next client is served
        assert dhcp(container, "vm0")["ip"] == sandbox.HOST_V4
        assert running.process is not None and running.process.poll() is None
    assert "frame length 65536" in running.stderr
