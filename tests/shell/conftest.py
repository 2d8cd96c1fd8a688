"""Fixtures of the shell tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import trio

from pasta_net.shell.hub import Hub
from tests.core.wire import engine


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
