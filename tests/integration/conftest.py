"""Fixtures of the integration tests: topology, container, the program under test.

All of them live in the sandbox entered by tests/conftest.py; see sandbox.py for the
topology and the rules. Every test also checks that it left no process behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sandbox


@pytest.fixture(autouse=True)
def _no_stray_processes() -> Iterator[None]:
    """Fail a test whose teardown leaves a process running; end those processes by pid.

    Autouse fixtures are set up first and torn down last, so this looks after every other
    function-scoped fixture has cleaned up; session-scoped servers predate the snapshot.
    """
    known = set(sandbox.descendants())
    yield
    strays = sandbox.end_strays(known)
    if strays:
        pytest.fail(f"processes left behind (now killed): {strays}")


@pytest.fixture(scope="session")
def topology(sandbox_dir: Path) -> Iterator[sandbox.Topology]:
    """Sandbox host uplink up0 + remote netns with its servers, for the whole session."""
    with sandbox.topology(sandbox_dir) as topo:
        yield topo


@pytest.fixture
def container(
    request: pytest.FixtureRequest, sandbox_dir: Path, topology: sandbox.Topology
) -> Iterator[sandbox.Container]:
    """A fresh container netns, as `unshare --net` leaves it (lo down), with a holder process.

    Parametrize indirectly with True for a holder in its own user namespace:
    `@pytest.mark.parametrize("container", [True], indirect=True)`.
    """
    path = sandbox.fresh_path(sandbox_dir, "container-")
    with sandbox.Container.create(path, own_userns=getattr(request, "param", False)) as netns:
        yield netns


@pytest.fixture
def pasta_net_cmd() -> list[str]:
    """The program under test; override this fixture to test a stand-in."""
    return sandbox.program_command()


@pytest.fixture
def pasta_net(
    container: sandbox.Container, pasta_net_cmd: list[str], tmp_path: Path
) -> Iterator[sandbox.ProgramRunner]:
    """Factory: pasta_net.start(args, attach="netns"|"pid"|None, foreground=False).

    Depends on `container` so that the container is torn down after the program stopped.
    Logs and pid files stay in tmp_path for a look after a failure.
    """
    with sandbox.ProgramRunner(pasta_net_cmd, tmp_path, container) as runner:
        yield runner
