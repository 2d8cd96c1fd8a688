"""The remote's services: what the "internet" of the integration topology answers.

Run as a program inside the remote netns (`nsenter --net=FILE python3 servers.py --address A
--address B`); it serves until killed. Tests import it for the ports and for the reference
data the servers send, so both ends agree on the bytes without shipping files around.

Every listener binds the service addresses explicitly: a server bound to the wildcard
would answer UDP from the link address, and a connected client drops such replies.

Services (the same on every --address):
- TCP ECHO_PORT: echoes everything until EOF.
- UDP ECHO_PORT: returns each datagram to its sender.
- TCP SINK_PORT: reads until EOF, then replies "<sha256 hex> <byte count>\\n".
- TCP SOURCE_PORT: reads one decimal line N, sends pattern(N), closes.
- HTTP HTTP_PORT: GET /bytes/N answers pattern(N) (HTTP/1.0, then close).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
from collections.abc import Iterator
from typing import cast

ECHO_PORT = 10007
SINK_PORT = 10009
SOURCE_PORT = 10019
HTTP_PORT = 8080

CHUNK = 1 << 16
_BLOCK = hashlib.shake_128(b"pasta-net test pattern").digest(1 << 20)
_WRAPPED = _BLOCK + _BLOCK[:CHUNK]
_STRIDE = 65539
_REQUEST = re.compile(rb"GET /bytes/(\d+) HTTP/1\.[01]\r?\n")


def pattern_chunks(size: int) -> Iterator[bytes]:
    """The first `size` bytes of the test pattern, in chunks of at most CHUNK bytes.

    Chunk i is the 64 KiB window at offset i * 65539 (mod 1 MiB) of a 1 MiB shake_128
    block, read with wrap-around. Slicing keeps it at memory speed (shake_128 of the whole
    stream would run at ~160 MB/s), and since the stride is odd the offsets do not repeat
    before 64 GiB, so a lost, duplicated or reordered chunk always changes the stream.
    """
    for index, start in enumerate(range(0, size, CHUNK)):
        offset = index * _STRIDE % len(_BLOCK)
        yield _WRAPPED[offset : offset + min(CHUNK, size - start)]


def pattern_sha256(size: int) -> str:
    """Hex SHA-256 of pattern(size): what a client compares a received stream against."""
    digest = hashlib.sha256()
    for chunk in pattern_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


async def _send_pattern(writer: asyncio.StreamWriter, size: int) -> None:
    for chunk in pattern_chunks(size):
        writer.write(chunk)
        await writer.drain()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest, count = hashlib.sha256(), 0
    while data := await reader.read(CHUNK):
        digest.update(data)
        count += len(data)
    writer.write(f"{digest.hexdigest()} {count}\n".encode())
    await writer.drain()
    writer.close()


async def _source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _send_pattern(writer, int(await reader.readline()))
    writer.close()


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = _REQUEST.match(await reader.readline())
    while (await reader.readline()).strip():
        pass  # headers: nothing in them changes the answer
    if request is None:
        writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    else:
        size = int(request[1])
        writer.write(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size
        )
        await _send_pattern(writer, size)
    await writer.drain()
    writer.close()


class _UdpEcho(asyncio.DatagramProtocol):
    """Returns every datagram to where it came from."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def serve(addresses: list[str]) -> None:
    """Open every listener on every address, then serve forever."""
    handlers = {ECHO_PORT: _echo, SINK_PORT: _sink, SOURCE_PORT: _source, HTTP_PORT: _http}
    servers = [
        await asyncio.start_server(handler, host=addresses, port=port)
        for port, handler in handlers.items()
    ]
    loop = asyncio.get_running_loop()
    for address in addresses:
        await loop.create_datagram_endpoint(_UdpEcho, local_addr=(address, ECHO_PORT))
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--address", action="append", required=True, help="address to bind")
    asyncio.run(serve(parser.parse_args().address))


if __name__ == "__main__":
    main()
