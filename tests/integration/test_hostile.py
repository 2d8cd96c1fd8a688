"""Hostile traffic from the namespace cannot harm the host or other flows (DESIGN.md §6).

A process inside the container writes raw frames on its tap interface (AF_PACKET): SYN
floods to many destinations, frames whose length fields claim more than they carry,
TCP segments with absurd sequence numbers, windows and options (also injected into a
live connection), IP fragments, IPv6 extension-header chains, broadcast storms, and
packets aimed at the host's own loopback services. After each, the drop counters (read
through the control socket) show what was refused, pasta-net holds no more sockets than
its limits allow, and a normal transfer through it still arrives intact (SHA-256).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import sandbox
import servers
from sandbox import GATEWAY_V4, HOST_V4, HOST_V6, REMOTE_V4, REMOTE_V6
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Ether

TOOL = str(Path(__file__).with_name("hostile_tool.py"))
TRANSFER = str(Path(__file__).with_name("transfer.py"))
IFNAME = "up0"
START = ["--config-net", "-t", "none", "-u", "none", "-T", "none", "-U", "none"]
CHECK_SIZE = 8 << 20
MAX_HALF_OPEN = 1024
"""core/tcp.py's bound, as the daemon's fd count must show it."""
FD_SLACK = 64
"""Fds of a pasta-net at rest (interpreter, epoll, tap, netns, control, pipes), generously."""


@attrs.define
class Target:
    """A running pasta-net and the container it serves, seen by an attacker inside."""

    container: sandbox.Container
    running: sandbox.Running
    control: Path
    runner: sandbox.ProgramRunner
    ns_mac: str
    our_mac: str

    def eth(self, dst: str | None = None) -> Ether:
        return Ether(src=self.ns_mac, dst=dst or self.our_mac)

    def inject(self, frames: list) -> dict:
        data = b"".join(struct.pack("!I", len(raw)) + raw for raw in map(bytes, frames))
        result = self.container.run([sys.executable, TOOL, "send", IFNAME], input=data,
                                    timeout=120)
        return json.loads(result.stdout.decode().splitlines()[-1])

    @staticmethod
    def delivered(sent: dict) -> int:
        """Frames of an :meth:`inject` that reached pasta-net (the tap's queue may drop
        some of a storm when pasta-net is busy)."""
        assert sent["errors"] == 0
        return sent["sent"] - sent["tap_dropped"]

    def stats(self) -> dict:
        result = self.runner.run_cli(["ctl", str(self.control), "stats", "--json"])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def frames_seen(self) -> int:
        return self.stats()["from_ns"]["frames"]

    def drops(self) -> dict[str, int]:
        return self.stats()["drops"]

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.running.pid}/fd"))

    def settle(self, what: str, condition, timeout: float = 20.0) -> None:
        sandbox.wait_until(condition, timeout, what)

    def transfer_still_works(self) -> None:
        """A normal upload and download through pasta-net, compared by SHA-256."""
        run = self.container.run
        up = json.loads(run([sys.executable, TRANSFER, "upload", REMOTE_V4,
                             str(servers.SINK_PORT), str(CHECK_SIZE)], timeout=120)
                        .stdout.decode().splitlines()[-1])
        assert (up["peer_got"], up["peer_sha"]) == (CHECK_SIZE, up["sent_sha"])
        down = json.loads(run([sys.executable, TRANSFER, "download", REMOTE_V6,
                               str(servers.SOURCE_PORT), str(CHECK_SIZE)], timeout=120)
                          .stdout.decode().splitlines()[-1])
        assert (down["got"], down["got_sha"]) == (CHECK_SIZE, down["expected_sha"])
        assert self.running.process is None and not self.running.exited


def _link_mac(netns: sandbox.Netns | None, ifname: str) -> str:
    argv = ["ip", "-j", "link", "show", ifname]
    out = netns.run(argv).stdout if netns else sandbox.run_command(argv).stdout
    return json.loads(out)[0]["address"]


@pytest.fixture
def target(pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
           tmp_path: Path) -> Target:
    control = tmp_path / "control"
    running = pasta_net.start([*START, "-c", str(control)])
    container.wait_for_address(HOST_V6)
    return Target(container, running, control, pasta_net, _link_mac(container, IFNAME),
                  _link_mac(None, IFNAME))


@pytest.fixture
def loopback_servers() -> Iterator[list[socket.socket]]:
    """TCP and UDP servers on the sandbox host's loopback: what no frame may reach."""
    made = []
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            sock = socket.socket(family, kind)
            sock.bind((addr, 7777))
            if kind == socket.SOCK_STREAM:
                sock.listen(16)
            sock.setblocking(False)
            made.append(sock)
    yield made
    for sock in made:
        sock.close()


# ------------------------------------------------------------------ the cases --
def test_syn_flood_to_many_destinations_is_bounded(target: Target) -> None:
    """3,000 SYNs to addresses that never answer: at most MAX_HALF_OPEN sockets at a
    time, the oldest half-open connections evicted first, and the table empties."""
    rng = random.Random(1)
    before = target.fds()
    syns = [target.eth() / IP(src=HOST_V4, dst=f"203.0.113.{rng.randrange(2, 255)}")
            / TCP(sport=20000 + i, dport=rng.randrange(1, 65536), flags="S", seq=i)
            for i in range(3000)]
    seen = target.frames_seen()
    arrived = target.delivered(target.inject(syns))
    assert arrived > 2 * MAX_HALF_OPEN
    target.settle("SYNs handled", lambda: target.frames_seen() - seen >= arrived)
    peak = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        peak = max(peak, target.fds())
        time.sleep(0.1)
    assert peak <= before + MAX_HALF_OPEN + 8
    assert target.stats()["flows"]["tcp"] <= MAX_HALF_OPEN
    assert target.drops()["tcp-half-open-evicted"] == arrived - MAX_HALF_OPEN
    target.transfer_still_works()
    target.settle("half-open connections time out", lambda: target.stats()["flows"]["tcp"]
                  == 0, timeout=30)
    assert target.fds() <= before + 2


def test_frames_claiming_more_than_they_carry_are_dropped(target: Target) -> None:
    base = target.eth() / IP(src=HOST_V4, dst=REMOTE_V4)
    v6 = target.eth() / IPv6(src=HOST_V6, dst=REMOTE_V6)
    frames = [
        bytes(base / UDP(dport=9) / b"x")[:-1] + b"",  # IPv4 total length > frame
        _patch(base / UDP(dport=9) / b"abc", 16, 0xFFFF),  # total length 65535
        _patch(base / UDP(dport=9) / b"abc", 14, 0x4F00),  # IHL 60 > total length
        _patch(base / UDP(dport=9) / b"abc", 38, 0xFFFF),  # UDP length 65535
        _patch(base / TCP(dport=80, flags="S"), 46, 0xF000),  # TCP data offset 60
        _patch(v6 / UDP(dport=9) / b"abc", 18, 0xFFFF),  # IPv6 payload length 65535
        _patch(v6 / IPv6ExtHdrDestOpt() / UDP(dport=9), 55, 0xFF00),  # ext header 2 KiB
        bytes(Ether(src=target.ns_mac, dst=target.our_mac, type=0x0800)),  # no IP at all
        bytes(base)[:20],  # IPv4 header cut short
    ]
    before = target.drops()
    arrived = target.delivered(target.inject(frames * 50))

    def refused() -> int:
        drops = target.drops()
        return sum(drops.get(k, 0) - before.get(k, 0) for k in ("truncated", "bad-header"))

    target.settle("length errors counted", lambda: refused() == arrived)
    assert target.stats()["flows"] == {"tcp": 0, "udp": 0, "icmp": 0}
    target.transfer_still_works()


def _patch(packet, offset: int, value: int) -> bytes:
    """``packet`` as bytes with a 16-bit big-endian field overwritten (checksums stale)."""
    raw = bytearray(bytes(packet))
    struct.pack_into("!H", raw, offset, value)
    return bytes(raw)


def test_absurd_tcp_segments_open_nothing_and_answer_nothing_harmful(target: Target) -> None:
    """SYNs with absurd options, segments for no connection with absurd numbers."""
    base = target.eth() / IP(src=HOST_V4, dst=REMOTE_V4)
    sink = servers.SINK_PORT
    syns = [
        base / TCP(sport=30001, dport=sink, flags="S", options=[("MSS", 0)]),
        base / TCP(sport=30002, dport=sink, flags="S", options=[("MSS", 1), ("WScale", 255)]),
        base / TCP(sport=30003, dport=sink, flags="S", options=[("NOP", None)] * 40),
        base / TCP(sport=30004, dport=sink, flags="S", window=0, seq=0xFFFFFFFF),
        _patch(base / TCP(sport=30005, dport=sink, flags="S", options=[("MSS", 1460)]),
               54, 0x0200),  # MSS option with length 0: malformed
    ]
    stray = [base / TCP(sport=30100 + i, dport=sink, flags=flags, seq=seq, ack=ack,
                        window=window)
             for i, (flags, seq, ack, window) in enumerate(
                 [("A", 0, 0xFFFFFFFF, 0), ("R", 0x80000000, 0, 65535), ("FA", 1, 1, 1),
                  ("PA", 0x7FFFFFFF, 0x7FFFFFFF, 0xFFFF), ("", 0, 0, 0), ("SA", 5, 5, 5)])]
    before = target.drops()
    target.inject(syns + stray)
    # The namespace's own kernel resets our SYN-ACKs (it never sent those SYNs): the
    # connections end, and the sink sees four empty uploads, never garbage.
    target.settle("connections reset by the namespace",
                  lambda: target.stats()["flows"]["tcp"] == 0)
    assert target.drops().get("bad-header", 0) > before.get("bad-header", 0)
    target.transfer_still_works()


def test_absurd_segments_injected_into_a_live_connection_do_not_corrupt_it(
        target: Target) -> None:
    size = 32 << 20
    result = json.loads(target.container.run(
        [sys.executable, TOOL, "live-abuse", IFNAME, REMOTE_V4, str(servers.SINK_PORT),
         str(size)], timeout=120).stdout.decode().splitlines()[-1])
    assert result["injected"] > 10
    assert (result["peer_got"], result["peer_sha"]) == (size, result["sent_sha"])
    assert target.drops().get("tcp-bad-reset", 0) >= 3
    target.transfer_still_works()


def test_ip_fragments_are_dropped_with_a_counter(target: Target) -> None:
    """pasta does not reassemble, and neither do we: every fragment is counted."""
    v4 = target.eth() / IP(src=HOST_V4, dst=REMOTE_V4)
    v6 = target.eth() / IPv6(src=HOST_V6, dst=REMOTE_V6)
    frames = [
        v4.copy() / UDP(sport=4000, dport=servers.ECHO_PORT) / (b"a" * 64),
        v4.copy() / UDP(sport=4001, dport=servers.ECHO_PORT) / (b"b" * 64),
        v6 / IPv6ExtHdrFragment(m=1, id=7) / UDP(dport=servers.ECHO_PORT) / b"first",
        v6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(offset=2, id=7) / b"later",
    ]
    frames[0][IP].flags = "MF"
    frames[1][IP].frag = 185
    before = target.drops().get("fragment", 0)
    arrived = target.delivered(target.inject(frames * 25))
    target.settle("fragments counted",
                  lambda: target.drops().get("fragment", 0) - before == arrived)
    assert target.stats()["flows"]["udp"] == 0
    target.transfer_still_works()


def test_ipv6_extension_header_chains(target: Target) -> None:
    """A chain of six headers is walked to the UDP datagram, which reaches the remote's
    echo server and comes back; a chain longer than eight, or one running past the
    packet, is dropped."""
    listener = target.container.popen([sys.executable, "-c", _UDP_LISTEN],
                                      stdout=sandbox.subprocess.PIPE)
    port = int(listener.stdout.readline())
    chain = (IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(segleft=0)
             / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt())
    good = (target.eth() / IPv6(src=HOST_V6, dst=REMOTE_V6) / chain
            / UDP(sport=port, dport=servers.ECHO_PORT) / b"through six headers")
    too_long = target.eth() / IPv6(src=HOST_V6, dst=REMOTE_V6)
    for _ in range(9):
        too_long = too_long / IPv6ExtHdrDestOpt()
    too_long = too_long / UDP(sport=port, dport=servers.ECHO_PORT) / b"nine"
    before = target.drops()
    target.inject([good, too_long, too_long])
    assert listener.stdout.readline().strip() == b"through six headers"
    target.settle("long chains dropped", lambda: target.drops().get("bad-header", 0)
                  - before.get("bad-header", 0) == 2)
    sandbox.stop_popen(listener)
    target.transfer_still_works()


_UDP_LISTEN = """\
import socket
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.bind(("::", 0))
print(sock.getsockname()[1], flush=True)
data, peer = sock.recvfrom(100)
print(data.decode(), flush=True)
"""


def test_broadcast_storm_opens_nothing(target: Target) -> None:
    """ARP, DHCP and UDP broadcast and multicast by the thousand: ARP and DHCP get their
    one answer each, nothing reaches a host socket, and pasta-net stays responsive."""
    rng = random.Random(2)
    before_fds = target.fds()
    bcast = "ff:ff:ff:ff:ff:ff"
    storm = []
    for i in range(1500):
        storm.append(target.eth(bcast) / ARP(psrc=HOST_V4, pdst=f"198.51.100.{i % 250 + 3}",
                                             hwsrc=target.ns_mac))
        storm.append(target.eth(bcast) / IP(src=HOST_V4, dst="255.255.255.255")
                     / UDP(sport=rng.randrange(1024, 65536), dport=9) / b"storm")
        storm.append(target.eth("01:00:5e:00:00:fb") / IP(src=HOST_V4, dst="224.0.0.251")
                     / UDP(sport=5353, dport=5353) / b"mdns")
        storm.append(target.eth("33:33:00:00:00:01") / IPv6(src=HOST_V6, dst="ff02::1")
                     / UDP(sport=rng.randrange(1024, 65536), dport=9) / b"storm6")
    before = target.drops().get("bad-address", 0)
    seen = target.frames_seen()
    started = time.monotonic()
    arrived = target.delivered(target.inject(storm))
    assert arrived > len(storm) * 0.9
    # ARP requests are answered, everything else is refused: count those
    target.settle("storm handled", lambda: target.frames_seen() - seen >= arrived)
    refused = target.drops().get("bad-address", 0) - before
    assert 4500 - (len(storm) - arrived) <= refused <= 4500
    assert time.monotonic() - started < 30
    assert target.stats()["flows"]["udp"] == 0
    assert target.fds() <= before_fds + 2
    target.container.run(["ping", "-c", "1", "-W", "5", GATEWAY_V4])
    target.transfer_still_works()


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "::1", "::",
                                     "::ffff:127.0.0.1"])
def test_no_frame_reaches_the_hosts_loopback_services(target: Target, loopback_servers,
                                                      address: str) -> None:
    """A SYN or datagram to 127.0.0.1 (or a spelling of it) would connect a host socket
    to the host's own loopback: only the explicit mappings may offer that."""
    ip = IPv6(src=HOST_V6, dst=address) if ":" in address else IP(src=HOST_V4, dst=address)
    frames = [target.eth() / ip / TCP(sport=31000, dport=7777, flags="S"),
              target.eth() / ip / UDP(sport=31001, dport=7777) / b"knock"]
    before = target.drops().get("bad-address", 0)
    target.inject(frames)
    target.settle("refused", lambda: target.drops().get("bad-address", 0) - before == 2)
    time.sleep(0.5)
    for sock in loopback_servers:
        with pytest.raises(BlockingIOError):
            sock.accept() if sock.type == socket.SOCK_STREAM else sock.recv(100)
    target.transfer_still_works()


def test_stats_lines_in_the_log_count_drops_by_reason(pasta_net: sandbox.ProgramRunner,
                                                      container: sandbox.Container) -> None:
    """``--stats 1``: a line a second while counters move — flows, bytes each way,
    drops by reason — so a flood shows in the log without a control socket."""
    running = pasta_net.start([*START, "--stats", "1"], foreground=True)
    container.wait_for_address(HOST_V6)
    target = Target(container, running, Path("/nonexistent"), pasta_net,
                    _link_mac(container, IFNAME), _link_mac(None, IFNAME))
    fragment = target.eth() / IP(src=HOST_V4, dst=REMOTE_V4, flags="MF") / UDP() / b"x"
    arrived = target.delivered(target.inject([fragment] * 3))
    sandbox.wait_until(lambda: f"fragment {arrived}" in running.stderr, 10, "a stats line")
    line = next(line for line in running.stderr.splitlines() if f"fragment {arrived}" in line)
    assert re.search(r"stats: flows: tcp \d+ udp \d+ icmp \d+; from ns: \d+ frames \d+ bytes; "
                     r"to ns: \d+ frames \d+ bytes; drops: .*fragment", line), line
