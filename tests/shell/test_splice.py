"""The loopback splice on plain loopback sockets, in the hub's epoll: integrity both ways,
half-close, reset, refused connects, and the edge cases of edge-triggered pumping."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from collections.abc import Iterator

import pytest
import trio

from pasta_net.shell import splice
from pasta_net.shell.hub import Hub
from pasta_net.shell.splice import SpliceTable, host_socket


@pytest.fixture
def table(hub: Hub) -> Iterator[SpliceTable]:
    table = SpliceTable(hub)
    yield table
    table.close()


async def spliced(table: SpliceTable, family: int = socket.AF_INET
                  ) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """(client, server) of a TCP connection spliced through ``table`` on loopback."""
    loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    front = trio.socket.socket(family)
    back = trio.socket.socket(family)
    for listener in (front, back):
        await listener.bind((loopback, 0))
        listener.listen()
    client = trio.socket.socket(family)
    await client.connect(front.getsockname())
    accepted, _ = await front.accept()
    table.splice(socket.socket(fileno=accepted.detach()), back.getsockname()[:2], host_socket)
    server, _ = await back.accept()
    front.close()
    back.close()
    return client, server


async def send_all_then_eof(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view):]
    sock.shutdown(socket.SHUT_WR)


async def read_to_eof(sock: trio.socket.SocketType) -> bytes:
    chunks = []
    while chunk := await sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])
async def test_both_ways_at_once_with_equal_hashes(table: SpliceTable, family: int) -> None:
    client, server = await spliced(table, family)
    up, down = os.urandom(24 << 20), os.urandom(16 << 20)
    received: dict[str, bytes] = {}

    async def side(sock: trio.socket.SocketType, data: bytes, name: str) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all_then_eof, sock, data)
            received[name] = await read_to_eof(sock)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, client, up, "client")
            nursery.start_soon(side, server, down, "server")
    assert hashlib.sha256(received["server"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received["client"]).digest() == hashlib.sha256(down).digest()
    await trio.sleep(0.1)
    assert len(table) == 0, "both directions ended: the pair is closed"


async def test_half_close_and_data_after_it(table: SpliceTable) -> None:
    client, server = await spliced(table)
    with trio.fail_after(10):
        await server.send(b"last words")
        server.shutdown(socket.SHUT_WR)
        assert await read_to_eof(client) == b"last words"
        await client.send(b"still here")
        assert await server.recv(100) == b"still here"
        client.shutdown(socket.SHUT_WR)
        assert await server.recv(100) == b""


async def test_data_and_fin_in_one_event_both_arrive(table: SpliceTable) -> None:
    """A small reply and its FIN often land together: the FIN must not be left behind
    (a short read alone would look like an empty socket)."""
    for _ in range(50):
        client, server = await spliced(table)
        with trio.fail_after(10):
            await send_all_then_eof(server, b"ok\n")
            assert await read_to_eof(client) == b"ok\n"
        client.close()
        server.close()


@pytest.mark.parametrize("pipe_size", [splice.PIPE_SIZE, 4096], ids=["1MiB", "1page"])
async def test_many_tiny_segments_beyond_the_pipe_buffers(
    table: SpliceTable, monkeypatch: pytest.MonkeyPatch, pipe_size: int
) -> None:
    """Many 1-byte segments can fill the pipe's buffers long before its bytes (the
    kernel's default pipe, which we get past pipe-user-pages-soft, has 16): a short read
    then does not mean an empty socket."""
    monkeypatch.setattr(splice, "PIPE_SIZE", pipe_size)
    client, server = await spliced(table)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw = socket.socket(fileno=os.dup(client.fileno()))
    for i in range(5000):  # no checkpoint: all queued before the hub looks
        raw.send(bytes([i % 256]))
    raw.close()
    with trio.fail_after(20):
        got = b""
        while len(got) < 5000:
            got += await server.recv(1 << 20)
    assert got == bytes(i % 256 for i in range(5000))


async def test_a_stalled_reader_holds_back_the_writer(table: SpliceTable) -> None:
    """Backpressure: while the server does not read, the client's sends stop succeeding
    (the pipe and both socket buffers fill), and everything arrives once it reads."""
    client, server = await spliced(table)
    sent = 0
    block = b"x" * 65536
    with trio.move_on_after(1):
        while True:
            sent += await client.send(block)
    assert sent < 256 << 20
    client.shutdown(socket.SHUT_WR)
    with trio.fail_after(20):
        assert len(await read_to_eof(server)) == sent


def _abort(sock: trio.socket.SocketType) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("who", ["client", "server"])
async def test_reset_travels(table: SpliceTable, who: str) -> None:
    client, server = await spliced(table)
    aborted, other = (client, server) if who == "client" else (server, client)
    await aborted.send(b"x")
    with trio.fail_after(10):
        assert await other.recv(1) == b"x"
        _abort(aborted)
        with pytest.raises(ConnectionResetError):
            await other.recv(10)
    await trio.sleep(0.1)
    assert len(table) == 0


async def test_refused_target_resets_the_client(table: SpliceTable) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    front = socket.create_server(("127.0.0.1", 0))
    client = trio.socket.socket()
    await client.connect(front.getsockname())
    accepted, _ = front.accept()
    table.splice(accepted, ("127.0.0.1", closed_port), host_socket)
    with trio.fail_after(10), pytest.raises(ConnectionResetError):
        await client.recv(10)
    front.close()


async def test_close_resets_what_is_still_spliced(table: SpliceTable) -> None:
    client, server = await spliced(table)
    table.close()
    with trio.fail_after(10):
        for sock in (client, server):
            with pytest.raises(ConnectionResetError):
                await sock.recv(10)
