"""Run the whole pytest process inside its own sandbox: user, network and mount namespaces.

Integration tests create veths, addresses, routes and namespaces. Doing that in a private
"host" network namespace means no test can touch the machine's interfaces, and everything
they create disappears with the process, whatever happens.

Why unshare(2) in-process rather than re-exec'ing pytest under
`unshare --user --map-root-user --net --mount`:
- pytest keeps its argv, plugins, output capture, `--pdb` and IDE integration; a re-exec has
  to rebuild a command line that may have been `pytest`, `python -m pytest` or `pytest.main()`.
- Both depend on the same kernel feature. If user namespaces are unavailable, the re-exec
  fails just the same, while in-process the unit tests still run and only the integration
  fixtures report why they cannot.
- `pytest_configure` runs before any thread exists (unshare(CLONE_NEWUSER) needs a
  single-threaded caller); this is checked and reported rather than assumed.
It works the same as real root and as an unprivileged user: in both cases the process maps
only its own uid/gid to 0, because after unshare it holds no capability in the parent user
namespace and so cannot write a wider map.
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
PR_SET_CHILD_SUBREAPER = 36

SANDBOX_ENV = "PASTA_NET_SANDBOX"
"""Set to "<pid> <dir>" once that process is sandboxed, so a second configure is a no-op."""

_created_dir = pytest.StashKey[Path]()
_failure = pytest.StashKey[str]()

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    """Turn a libc -1 return into an OSError that names the call."""
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _write(path: str, text: str) -> None:
    """Write a /proc file and close it here, so the kernel's error is raised and not lost."""
    with open(path, "w") as f:
        f.write(text)


def _sandboxed_dir() -> Path | None:
    """The namespace-file directory, if this very process was sandboxed."""
    pid, _, directory = os.environ.get(SANDBOX_ENV, "").partition(" ")
    return Path(directory) if pid == str(os.getpid()) else None


def _enter_namespaces() -> None:
    """New user+net+mount namespaces, our uid/gid mapped to 0, every mount private."""
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise OSError(f"pytest already runs {threads} threads; unshare(CLONE_NEWUSER) needs one")
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")


def _mount_private_tmpfs() -> Path:
    """A directory only this mount namespace sees, for namespace files and pid files."""
    directory = Path(tempfile.mkdtemp(prefix="pasta-net-sandbox-"))
    _check(
        _libc.mount(b"tmpfs", bytes(directory), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0700"),
        f"mount tmpfs on {directory}",
    )
    return directory


def _configure_host_netns() -> None:
    """lo up, and ICMP echo through ping sockets allowed for the gid we have.

    The kernel rejects a ping_group_range naming gids that are not mapped in our user
    namespace ("0 2147483647" fails with EINVAL here), and only gid 0 is mapped.
    """
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    _write("/proc/sys/net/ipv4/ping_group_range", "0 0")


def _pin_user_name() -> None:
    """Keep pytest's tmp_path under our real user name once we are uid 0.

    pytest names its base directory /tmp/pytest-of-<user> from getpass.getuser(), lazily.
    Without LOGNAME or USER that would say "root" inside the sandbox, and an unprivileged
    run would then refuse the real root's directory ("not owned by the current user").
    """
    with contextlib.suppress(KeyError, OSError):
        os.environ["LOGNAME"] = getpass.getuser()


def _enter_sandbox() -> Path:
    """Enter the sandbox; returns the private tmpfs directory.

    The process also becomes a child subreaper, so daemons started by tests (which
    double-fork away from their parent) are re-parented to pytest: the harness can reap
    them, read their exit status and find any that a test leaked.
    """
    _pin_user_name()
    _enter_namespaces()
    directory = _mount_private_tmpfs()
    _configure_host_netns()
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    os.environ[SANDBOX_ENV] = f"{os.getpid()} {directory}"
    return directory


def pytest_configure(config: pytest.Config) -> None:
    if _sandboxed_dir() is not None:
        return
    try:
        config.stash[_created_dir] = _enter_sandbox()
    except (OSError, subprocess.CalledProcessError) as e:
        config.stash[_failure] = f"cannot enter the test sandbox: {e}"


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_created_dir, None)
    if directory is None:
        return
    _check(_libc.umount2(bytes(directory), MNT_DETACH), f"umount {directory}")
    directory.rmdir()
    del os.environ[SANDBOX_ENV]


@pytest.fixture(scope="session")
def sandbox_dir(pytestconfig: pytest.Config) -> Path:
    """The private tmpfs of the sandbox; fails (never skips) when there is no sandbox."""
    directory = _sandboxed_dir()
    if directory is None:
        pytest.fail(pytestconfig.stash.get(_failure, "pytest is not running in its sandbox"))
    return directory
