"""Fixtures of the shell tests: a namespace to attach to, and a hub without a tap."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import trio

from pasta_net import netns
from pasta_net.shell.hub import Hub
from tests.core.wire import engine

ROOT = Path(__file__).resolve().parents[2]


def run_python(prelude: str, body: str, prefix: Sequence[str] = ()) -> str:
    """Run ``prelude`` (``{root}`` filled in with the checkout) and then ``body`` in a
    child Python, started through ``prefix`` (e.g. ``unshare``): for a case that must
    not disturb the test run (lowered limits, a namespace of its own). Its stdout; the
    test fails with its stderr if it exits non-zero."""
    code = prelude.format(root=str(ROOT)) + textwrap.dedent(body)
    result = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


class NoTap:
    """A frame device that never has frames: the hub then serves sockets only."""

    def __init__(self) -> None:
        self.fd, self._write_end = os.pipe()

    def read_batch(self) -> list[memoryview]:
        return []

    def write_batch(self, _frames: object) -> None:
        pass

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._write_end)


@pytest.fixture
async def hub(nursery: trio.Nursery) -> AsyncIterator[Hub]:
    """A running hub without a tap, for the socket paths that bypass the engine."""
    tap = NoTap()
    hub = Hub(engine(), tap)  # type: ignore[arg-type]
    await nursery.start(hub.run)
    yield hub
    nursery.cancel_scope.cancel()
    tap.close()


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[str]]:
    """A process alone in a new user+net namespace; killed afterwards."""
    proc = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--net", "sh", "-c", "echo ready; exec sleep 60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def target(holder: subprocess.Popen[str]) -> Iterator[netns.Target]:
    target = netns.resolve_target(holder.pid, None, None, False)
    yield target
    target.close()
