"""Attaching to namespaces the tests create: by PID, by file, spawned; and their end.

The privilege tests run in a forked child, since they change the whole process.
"""

from __future__ import annotations

import os
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from pasta_net import netns
from pasta_net.privileges import close_inherited_fds, drop_privileges

NOBODY = (65534, 65534)


def ns_ino(path: str) -> int:
    return os.stat(path).st_ino


@pytest.fixture
def netns_file(tmp_path: Path) -> Iterator[Path]:
    """A network namespace bound to a file (``unshare --net=FILE``); unmounted afterwards."""
    path = tmp_path / "netns"
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True)
    yield path
    subprocess.run(["umount", "--lazy", str(path)], check=False, stderr=subprocess.DEVNULL)


def run_forked(body: Callable[[int], None]) -> None:
    """Run ``body(report_fd)`` in a forked child; fail with its traceback if it raised."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            body(write_fd)
            status = 0
        except BaseException:
            os.write(write_fd, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as report:
        output = report.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output


# --- resolve_target ---------------------------------------------------------------------


def test_pid_target_opens_net_and_user_namespaces(holder: subprocess.Popen[str]) -> None:
    target = netns.resolve_target(holder.pid, None, None, False)
    try:
        assert os.fstat(target.netns_fd).st_ino == ns_ino(f"/proc/{holder.pid}/ns/net")
        assert target.userns_fd is not None
        assert os.fstat(target.userns_fd).st_ino == ns_ino(f"/proc/{holder.pid}/ns/user")
        assert target.pidfd is not None
        assert target.path is None
    finally:
        target.close()


def test_netns_only_opens_no_user_namespace(holder: subprocess.Popen[str]) -> None:
    target = netns.resolve_target(holder.pid, None, None, True)
    try:
        assert target.userns_fd is None
        assert netns.join_userns_if_needed(target) is False
    finally:
        target.close()


def test_nonexistent_pid() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    with pytest.raises(
        netns.NetnsError,
        match=rf"^Couldn't open network namespace /proc/{gone.pid}/ns/net: No such process$",
    ):
        netns.resolve_target(gone.pid, None, None, False)


def test_regular_file_is_not_a_network_namespace(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_text("")
    with pytest.raises(netns.NetnsError, match=f"^Couldn't open network namespace {path}: not a"):
        netns.resolve_target(None, str(path), None, False)


def test_netns_name_is_looked_up_in_run_netns() -> None:
    with pytest.raises(
        netns.NetnsError,
        match=r"^Couldn't open network namespace /run/netns/pasta-net-test-none: No such file",
    ):
        netns.resolve_target(None, "pasta-net-test-none", None, False)


def test_userns_option_must_be_a_user_namespace(holder: subprocess.Popen[str]) -> None:
    net = f"/proc/{holder.pid}/ns/net"
    with pytest.raises(netns.NetnsError, match=f"^Couldn't open user namespace {net}: not a user"):
        netns.resolve_target(None, net, net, False)


def test_netns_file_target(netns_file: Path) -> None:
    target = netns.resolve_target(None, str(netns_file), None, False)
    try:
        assert target.path == str(netns_file)
        assert os.fstat(target.netns_fd).st_ino == ns_ino(str(netns_file))
        assert target.userns_fd is None
    finally:
        target.close()


# --- entering ---------------------------------------------------------------------------


def test_in_netns_enters_and_returns(holder: subprocess.Popen[str], target: netns.Target) -> None:
    ours = ns_ino("/proc/thread-self/ns/net")
    assert netns.join_userns_if_needed(target) is False  # we hold CAP_SYS_ADMIN over it
    with netns.in_netns(target):
        assert ns_ino("/proc/thread-self/ns/net") == ns_ino(f"/proc/{holder.pid}/ns/net")
    assert ns_ino("/proc/thread-self/ns/net") == ours


def test_netns_thread_runs_calls_in_the_namespace(
    holder: subprocess.Popen[str], target: netns.Target
) -> None:
    with netns.NetnsThread(target) as thread:
        assert thread.call(ns_ino, "/proc/thread-self/ns/net") == ns_ino(
            f"/proc/{holder.pid}/ns/net"
        )
        with pytest.raises(FileNotFoundError):
            thread.call(ns_ino, "/nonexistent")
    assert ns_ino("/proc/thread-self/ns/net") == ns_ino("/proc/self/ns/net")


@pytest.mark.skipif(
    os.geteuid() != 0 or Path("/proc/self/uid_map").read_text().split() != ["0", "0", "4294967295"],
    reason="needs real root, to become an unprivileged user in a child",
)
def test_unprivileged_user_joins_the_user_namespace() -> None:
    """As ``nobody``: spawn, join the command's user namespace, work in its netns."""

    def body(report_fd: int) -> None:
        assert drop_privileges(NOBODY) == NOBODY
        spawned = netns.spawn_in_new_namespace(["sh", "-c", "exit 0"])
        target_ino = ns_ino(f"/proc/{spawned.pid}/ns/net")
        assert netns.join_userns_if_needed(spawned.target) is True
        with (
            pytest.raises(netns.NetnsError, match="and come back"),
            netns.in_netns(spawned.target),
        ):
            pass
        with netns.NetnsThread(spawned.target) as thread:
            assert thread.call(ns_ino, "/proc/thread-self/ns/net") == target_ino
        assert ns_ino("/proc/thread-self/ns/net") != target_ino, "host sockets stay outside"
        spawned.release()
        assert spawned.wait() == 0

    run_forked(body)


# --- spawn_in_new_namespace --------------------------------------------------------------


def spawn_and_run(argv: list[str]) -> int:
    spawned = netns.spawn_in_new_namespace(argv)
    try:
        spawned.release()
        return spawned.wait()
    finally:
        spawned.target.close()


def test_spawned_exit_status() -> None:
    assert spawn_and_run(["sh", "-c", "exit 3"]) == 3


def test_spawned_killed_by_signal_is_128_plus_signal() -> None:
    assert spawn_and_run(["sh", "-c", "kill -TERM $$"]) == 128 + 15


def test_spawned_command_not_found() -> None:
    assert spawn_and_run(["/nonexistent/command"]) == 127


def test_spawned_waits_for_release_and_runs_in_its_namespace(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spawned = netns.spawn_in_new_namespace(["sh", "-c", f"readlink /proc/self/ns/net > {out}"])
    try:
        target_ino = os.fstat(spawned.target.netns_fd).st_ino
        assert target_ino != ns_ino("/proc/self/ns/net")
        assert spawned.target.userns_fd is not None
        time.sleep(0.2)
        assert not out.exists(), "the command must wait for release()"
        spawned.release()
        assert spawned.wait() == 0
        assert out.read_text() == f"net:[{target_ino}]\n"
    finally:
        spawned.target.close()


# --- wait_gone --------------------------------------------------------------------------


async def test_wait_gone_notices_deleted_netns_file(netns_file: Path) -> None:
    target = netns.resolve_target(None, str(netns_file), None, False)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remove_after, netns_file, 0.3)
            with trio.fail_after(1.3):
                await netns.wait_gone(target)
    finally:
        target.close()


async def test_wait_gone_notices_unmount_alone(netns_file: Path) -> None:
    target = netns.resolve_target(None, str(netns_file), None, False)
    try:
        await trio.run_process(["umount", "--lazy", str(netns_file)])
        assert await trio.Path(netns_file).exists()
        with trio.fail_after(1):
            await netns.wait_gone(target)
    finally:
        target.close()


async def remove_after(path: Path, delay: float) -> None:
    await trio.sleep(delay)
    await trio.run_process(["umount", "--lazy", str(path)])  # as `ip netns del`
    await trio.Path(path).unlink()


async def test_wait_gone_notices_death_of_pid(
    holder: subprocess.Popen[str], target: netns.Target
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_after, holder, 0.3)
        with trio.fail_after(1.3):
            await netns.wait_gone(target)


async def kill_after(proc: subprocess.Popen[str], delay: float) -> None:
    await trio.sleep(delay)
    proc.kill()


async def test_wait_gone_waits_while_present(target: netns.Target) -> None:
    with trio.move_on_after(0.5) as scope:
        await netns.wait_gone(target)
    assert scope.cancelled_caught


# --- privileges -------------------------------------------------------------------------


def test_drop_privileges() -> None:
    """Real root becomes nobody; root in a user namespace stays itself. Always no_new_privs."""
    real_root = Path("/proc/self/uid_map").read_text().split() == ["0", "0", "4294967295"]

    def body(report_fd: int) -> None:
        uid = os.getuid()
        switched = drop_privileges(None)
        if uid == 0 and real_root:
            assert switched is not None
            assert os.getresuid() == (switched[0],) * 3
            assert os.getuid() != 0
            assert os.getgroups() == []
        else:
            assert switched is None
            assert os.getuid() == uid
        assert "NoNewPrivs:\t1" in Path("/proc/self/status").read_text()

    run_forked(body)


def test_close_inherited_fds() -> None:
    def body(report_fd: int) -> None:
        kept = os.open("/dev/null", os.O_RDONLY)
        dropped = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        close_inherited_fds([kept, report_fd])
        os.fstat(kept)
        os.fstat(report_fd)
        for fd in dropped:
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.fstat(fd)

    run_forked(body)
