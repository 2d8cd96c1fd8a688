"""Capabilities and the fd limit, each in a forked child (they are process-wide or
per-thread state the test run must not lose). The sandbox makes us root in a user
namespace, with every capability: the case where uid 0 stays and capabilities must go."""

from __future__ import annotations

import resource
import threading
from pathlib import Path

from pasta_net import linux, privileges
from tests.shell.test_netns import run_forked

NET_BIND, NET_ADMIN = 1 << linux.CAP_NET_BIND_SERVICE, 1 << linux.CAP_NET_ADMIN


def cap_line(name: str, task: str = "self") -> int:
    for line in Path(f"/proc/{task}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1], 16)
    raise AssertionError(name)


def test_everything_but_net_bind_service_is_dropped() -> None:
    def body(_report: int) -> None:
        assert linux.capabilities()[1] & NET_BIND, "the sandbox gives us every capability"
        privileges.drop_capabilities(privileges.needed_capabilities(follow_host=False))
        assert linux.capabilities() == (NET_BIND, NET_BIND, 0)
        assert cap_line("CapEff") == NET_BIND and cap_line("CapAmb") == 0

    run_forked(body)


def test_follow_host_keeps_net_admin_too() -> None:
    def body(_report: int) -> None:
        privileges.drop_capabilities(privileges.needed_capabilities(follow_host=True))
        assert linux.capabilities() == (NET_BIND | NET_ADMIN, NET_BIND | NET_ADMIN, 0)

    run_forked(body)


def test_capabilities_are_per_thread_so_each_thread_drops_its_own() -> None:
    """Why launch also drops them in the namespace thread."""

    def body(_report: int) -> None:
        keep = privileges.needed_capabilities(follow_host=False)
        ready, done, seen = threading.Event(), threading.Event(), []

        def other() -> None:
            ready.set()
            done.wait()
            seen.append(linux.capabilities()[0])
            privileges.drop_capabilities(keep)
            seen.append(linux.capabilities()[0])

        thread = threading.Thread(target=other)
        thread.start()
        ready.wait()
        privileges.drop_capabilities(keep)
        done.set()
        thread.join()
        assert seen[0] != NET_BIND and seen[1] == NET_BIND

    run_forked(body)


def test_soft_fd_limit_is_raised_to_the_hard_one() -> None:
    def body(_report: int) -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        assert privileges.raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)

    run_forked(body)
