"""The loopback UDP relay on plain loopback sockets: replies come back from the listener's
address, the client's port is kept when free, flows expire, and their number is bounded."""

from __future__ import annotations

import socket

import pytest
import trio

from pasta_net.shell import udprelay
from pasta_net.shell.hub import Hub
from pasta_net.shell.splice import host_socket
from pasta_net.shell.udprelay import UdpRelay

TIMEOUT = 30.0


def udp(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def same_source(client: tuple[str, int]) -> tuple[str, int]:
    return client


async def test_round_trip_keeps_the_client_port_and_answers_from_the_listener(
    hub: Hub,
) -> None:
    listener, server, client = udp(), udp(), udp()
    relay = UdpRelay(hub, listener, server.getsockname(), host_socket,
                     lambda c: ("127.0.0.1", c[1] + 1), TIMEOUT)
    relay.forward(b"ping", client.getsockname())
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(server)
    data, flow_addr = server.recvfrom(100)
    assert (data, flow_addr[1]) == (b"ping", client.getsockname()[1] + 1)
    server.sendto(b"pong", flow_addr)
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(client)
    assert client.recvfrom(100) == (b"pong", listener.getsockname())
    relay.close()
    for sock in (listener, server, client):
        sock.close()


async def test_a_taken_source_port_falls_back_to_any_port(hub: Hub) -> None:
    listener, server, client = udp(), udp(), udp()
    relay = UdpRelay(hub, listener, server.getsockname(), host_socket, same_source, TIMEOUT)
    relay.forward(b"x", client.getsockname())  # the client itself holds that port
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(server)
    assert server.recvfrom(100)[0] == b"x"
    assert len(relay) == 1
    relay.close()
    for sock in (listener, server, client):
        sock.close()


async def test_idle_flows_expire_and_new_ones_are_bounded(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(udprelay, "MAX_FLOWS", 3)
    listener, server = udp(), udp()
    relay = UdpRelay(hub, listener, server.getsockname(), host_socket,
                     lambda c: ("127.0.0.1", 0), TIMEOUT)
    for port in range(40000, 40005):
        relay.forward(b"x", ("127.0.0.1", port))
    assert len(relay) == 3
    relay.expire(hub.now() + TIMEOUT / 2)
    assert len(relay) == 3
    relay.expire(hub.now() + TIMEOUT)
    assert len(relay) == 0
    listener.close()
    server.close()
