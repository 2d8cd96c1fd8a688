"""The hub's datagram sends: several datagrams of a flow in one UDP GSO call, and the
fallback to one call each where the kernel refuses segmentation.

Each case runs in a child process alone in a new user + net namespace whose loopback
has an MTU of 1280, so that a segment too large for the path exists (and nothing of
the machine's own network is touched).
"""

from __future__ import annotations

from tests.shell.conftest import run_python

_PRELUDE = """
import os, socket, subprocess, sys
sys.path.insert(0, {root!r})
subprocess.run(["ip", "link", "set", "lo", "mtu", "1280", "up"], check=True)
from pasta_net.core.actions import SendDatagram
from pasta_net.shell.hub import Hub
from tests.core.wire import engine
from tests.shell.conftest import NoTap

receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 0))
receiver.settimeout(5)
hub = Hub(engine(), NoTap())

def flow_socket(flow, connect):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    if connect:
        sock.connect(receiver.getsockname())
    hub.sockets[flow] = sock

def received(count):
    return [receiver.recv(65536) for _ in range(count)]
"""


def run_child(body: str) -> list[str]:
    return run_python(_PRELUDE, body, ["unshare", "--user", "--map-root-user", "--net"]).split()


def test_datagrams_of_one_flow_go_in_one_segmented_send_and_arrive_whole() -> None:
    out = run_child("""
        payloads = [bytes([n]) * 1000 for n in range(5)] + [b"last"]
        flow_socket(1, connect=True)
        hub.execute([SendDatagram(1, None, [memoryview(p) for p in payloads])])
        print(received(6) == payloads, 1 in hub._no_gso)
        flow_socket(2, connect=False)  # a -u listener's socket: the address goes along
        hub.execute([SendDatagram(2, receiver.getsockname(), payloads[:3])])
        print(received(3) == payloads[:3], 2 in hub._no_gso)
    """)
    assert out == ["True", "False", "True", "False"]


def test_segments_too_large_for_the_path_are_sent_one_by_one_from_then_on() -> None:
    out = run_child("""
        payloads = [bytes([n]) * 1260 for n in range(3)]  # 1260 + 28 > 1280
        flow_socket(1, connect=True)
        hub.execute([SendDatagram(1, None, payloads)])
        print(received(3) == payloads, 1 in hub._no_gso)
        hub.execute([SendDatagram(1, None, payloads[:2])])
        print(received(2) == payloads[:2], dict(hub.engine.drops))
    """)
    assert out == ["True", "True", "True", "{}"]
