"""TCP transfer client and servers for the integration tests, run inside a namespace.

Each command prints one line of JSON: byte counts and SHA-256 digests of what was sent
and received, so the test compares hashes of both ends instead of trusting either.

    transfer.py upload HOST PORT SIZE          # to the remote's sink: send, half-close, read reply
    transfer.py download HOST PORT SIZE        # from the remote's source
    transfer.py many HOST SINK SOURCE COUNT SEED   # COUNT concurrent uploads+downloads
    transfer.py serve PORT sink|source         # container-side sink or source server
    transfer.py rst-server PORT                # accept, read a little, abort with RST
    transfer.py expect-reset HOST PORT         # send until the peer's RST arrives
    transfer.py hold HOST PORT                 # send to a server that never reads, until stalled
    transfer.py idle PORT                      # a server that accepts and never reads
    transfer.py reset HOST PORT SIZE           # send, then close with RST (SO_LINGER 0)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import struct
import sys
import time

from servers import pattern_chunks, pattern_sha256


async def upload(host: str, port: int, size: int) -> dict[str, object]:
    reader, writer = await asyncio.open_connection(host, port)
    for chunk in pattern_chunks(size):
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    digest, count = (await reader.read()).decode().split()
    writer.close()
    return {"sent": size, "sent_sha": pattern_sha256(size), "peer_got": int(count),
            "peer_sha": digest}


async def download(host: str, port: int, size: int, request: bytes | None = None) -> dict:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request or f"{size}\n".encode())
    await writer.drain()
    digest, count = hashlib.sha256(), 0
    while chunk := await reader.read(1 << 16):
        digest.update(chunk)
        count += len(chunk)
    writer.close()
    return {"expected": size, "expected_sha": pattern_sha256(size), "got": count,
            "got_sha": digest.hexdigest()}


async def many(host: str, sink: int, source: int, count: int, seed: int) -> dict:
    rng = random.Random(seed)
    sizes = [rng.choice([1, rng.randrange(1, 8 << 20)]) for _ in range(count)]
    jobs = [upload(host, sink, n) if i % 2 else download(host, source, n)
            for i, n in enumerate(sizes)]
    results = await asyncio.gather(*jobs)
    bad = [r for r in results if r.get("sent_sha", r.get("expected_sha"))
           != r.get("peer_sha", r.get("got_sha"))]
    return {"connections": count, "bytes": sum(sizes), "mismatches": len(bad)}


async def serve(port: int, role: str) -> None:
    """A container-side server: ``sink`` (read to EOF, reply "<sha256> <count>") or
    ``source`` (read a line N, send pattern(N), close); the remote's servers do the same."""

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest, total = hashlib.sha256(), 0
        while chunk := await reader.read(1 << 16):
            digest.update(chunk)
            total += len(chunk)
        writer.write(f"{digest.hexdigest()} {total}\n".encode())
        await writer.drain()
        writer.close()

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in pattern_chunks(int(await reader.readline())):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server({"sink": sink, "source": source}[role], None, port)
    print(json.dumps({"listening": port}), flush=True)
    await server.serve_forever()


def rst_server(port: int) -> None:
    """Accept, read a little, then abort the connection with RST (SO_LINGER 0)."""
    server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        conn = server.accept()[0]
        conn.recv(1024)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def expect_reset(host: str, port: int) -> dict:
    """Send until the peer's reset arrives; report how it ended."""
    sock = socket.create_connection((host, port), timeout=10)
    try:
        for chunk in pattern_chunks(256 << 20):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        outcome = "eof" if sock.recv(1) == b"" else "data"
    except (ConnectionResetError, BrokenPipeError) as exc:
        outcome = type(exc).__name__
    except TimeoutError:
        outcome = "timeout"
    sock.close()
    return {"outcome": outcome}


def hold(host: str, port: int) -> dict:
    """Push into a server that never reads until the path stalls; report how much got in."""
    sock = socket.create_connection((host, port), timeout=5)
    sock.setblocking(False)
    sent, block = 0, b"h" * 65536
    stalled_since = time.monotonic()
    while time.monotonic() - stalled_since < 1.0:
        try:
            sent += sock.send(block)
            stalled_since = time.monotonic()
        except BlockingIOError:
            time.sleep(0.05)
    sock.close()
    return {"sent_before_stall": sent}


def idle(port: int) -> None:
    """Accept connections and never read from them (the peer sees a zero window)."""
    server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    print(json.dumps({"listening": port}), flush=True)
    held = []
    while True:
        held.append(server.accept()[0])


def reset(host: str, port: int, size: int) -> dict:
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(next(pattern_chunks(size)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return {"reset": True}


def main(argv: list[str]) -> None:
    command, *args = argv
    forever = {"idle": idle, "rst-server": rst_server}
    if command == "serve":
        asyncio.run(serve(int(args[0]), args[1]))
        return
    if command in forever:
        forever[command](int(args[0]))
        return
    if command == "hold":
        result = hold(args[0], int(args[1]))
    elif command == "expect-reset":
        result = expect_reset(args[0], int(args[1]))
    elif command == "reset":
        result = reset(args[0], int(args[1]), int(args[2]))
    else:
        coroutine = {"upload": upload, "download": download, "many": many}[command]
        result = asyncio.run(coroutine(args[0], *map(int, args[1:])))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
