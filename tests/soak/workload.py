"""The soak's client: TCP bulk both ways, many short connections and UDP, every byte
checked, for a given time. Runs inside a namespace against the servers of
tests/integration/servers.py (on the remote, or in the container through forwards).

    workload.py HOST DURATION SEED

Prints one line of JSON: bytes verified per kind, counts, and every failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import sys
import time

from servers import ECHO_PORT, SINK_PORT, SOURCE_PORT, pattern_chunks, pattern_sha256

BULK = 32 << 20
SHORT_WORKERS = 16
UDP_WORKERS = 4
UDP_FLOW_LENGTH = 100
"""Datagrams per source port: then a new socket, so flows are opened and expire all along."""


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.failures: list[str] = []

    def add(self, name: str, amount: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + amount

    def fail(self, what: str) -> None:
        self.failures.append(what)
        self.add("failures")


async def bulk_upload(host: str, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, SINK_PORT)
            for chunk in pattern_chunks(BULK):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            digest, count = (await reader.read()).decode().split()
            writer.close()
        except (OSError, ValueError) as exc:
            tally.fail(f"upload: {exc!r}")
            continue
        if (digest, int(count)) == (pattern_sha256(BULK), BULK):
            tally.add("tcp_up_bytes", BULK)
        else:
            tally.fail(f"upload: sink got {count} bytes, sha {digest}")


async def bulk_download(host: str, deadline: float, tally: Tally) -> None:
    expected = pattern_sha256(BULK)
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, SOURCE_PORT)
            writer.write(f"{BULK}\n".encode())
            await writer.drain()
            digest, got = hashlib.sha256(), 0
            while chunk := await reader.read(1 << 16):
                digest.update(chunk)
                got += len(chunk)
            writer.close()
        except OSError as exc:
            tally.fail(f"download: {exc!r}")
            continue
        if (digest.hexdigest(), got) == (expected, BULK):
            tally.add("tcp_down_bytes", BULK)
        else:
            tally.fail(f"download: got {got} bytes")


async def short_connections(host: str, deadline: float, rng: random.Random,
                            tally: Tally) -> None:
    while time.monotonic() < deadline:
        payload = rng.randbytes(rng.randint(1, 8192))
        try:
            reader, writer = await asyncio.open_connection(host, ECHO_PORT)
            writer.write(payload)
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(), 30)
            writer.close()
        except (OSError, TimeoutError) as exc:
            tally.fail(f"short: {exc!r}")
            continue
        if echoed == payload:
            tally.add("short_connections")
            tally.add("short_bytes", len(payload))
        else:
            tally.fail(f"short: sent {len(payload)}, echoed {len(echoed)} different bytes")


def _udp_worker(host: str, deadline: float, rng: random.Random, tally: Tally) -> None:
    """Blocking, in a thread: send, wait for the echo, compare; lost datagrams are
    counted (UDP may lose), wrong ones are failures."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.connect((host, ECHO_PORT))
            for sequence in range(UDP_FLOW_LENGTH):
                payload = sequence.to_bytes(4, "big") + rng.randbytes(rng.randint(0, 1400))
                try:
                    sock.send(payload)
                    reply = sock.recv(2048)
                    while reply[:4] < payload[:4]:  # a late echo of one counted as lost
                        reply = sock.recv(2048)
                except TimeoutError:
                    tally.add("udp_lost")
                    continue
                except OSError as exc:
                    tally.fail(f"udp: {exc!r}")
                    break
                if reply == payload:
                    tally.add("udp_datagrams")
                    tally.add("udp_bytes", len(payload))
                else:
                    tally.fail("udp: echo differs")
            tally.add("udp_flows")


async def main(host: str, duration: float, seed: int) -> dict:
    rng = random.Random(seed)
    tally = Tally()
    deadline = time.monotonic() + duration
    tasks = [bulk_upload(host, deadline, tally), bulk_download(host, deadline, tally)]
    tasks += [short_connections(host, deadline, random.Random(rng.random()), tally)
              for _ in range(SHORT_WORKERS)]
    tasks += [asyncio.to_thread(_udp_worker, host, deadline, random.Random(rng.random()),
                                tally) for _ in range(UDP_WORKERS)]
    await asyncio.gather(*tasks)
    return {"host": host, **tally.counts, "failure_list": tally.failures[:20]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))),
          flush=True)
