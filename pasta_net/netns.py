"""Attach to the target network namespace, as pasta does.

Kernel facts this module is built on (``setns(2)``, ``user_namespaces(7)``, ``ioctl_ns(2)``):

- A namespace is held by an fd on its nsfs file (``/proc/PID/ns/net``, or a bind mount
  of one such as ``/run/netns/NAME``). We open every fd first, in
  :func:`resolve_target`: later the PID may be gone or reused, and after privileges are
  dropped ``/proc/PID/ns/*`` of a more privileged process fails with ``EACCES``.
- ``setns(fd, CLONE_NEWNET)`` moves only the calling *thread*, and needs
  ``CAP_SYS_ADMIN`` both in the user namespace that owns the target netns and in our
  own user namespace. A process holds every capability in user namespaces that descend
  from its own, provided it holds it in its own; the owner of a child user namespace
  is otherwise powerless in it from outside. So an unprivileged user cannot enter the
  netns of ``unshare -rUn`` directly, but can after joining that user namespace.
- ``setns(fd, CLONE_NEWUSER)`` moves the whole process, is refused (``EINVAL``) once it
  has a second thread, gives every capability in the joined namespace, and is one-way:
  our original netns is owned by an ancestor user namespace, in which we then hold no
  capability, so a thread that enters the target netns can never come back. Hence
  :class:`NetnsThread`, a thread that stays in the target netns for the whole run.
- ``NS_GET_USERNS`` on a netns fd returns its owning user namespace, ``NS_GET_PARENT`` on
  a user namespace its parent, and both fail with ``EPERM`` outside our own subtree.
- A ``pidfd`` becomes readable when its process exits, and pins the identity of the
  process, which a PID number does not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any, NoReturn, TypeVar

import attrs
import trio

from pasta_net import linux

__all__ = [
    "NetnsError",
    "NetnsThread",
    "Spawned",
    "Target",
    "in_netns",
    "join_userns_if_needed",
    "resolve_target",
    "spawn_in_new_namespace",
    "wait_gone",
]

log = logging.getLogger("pasta_net.netns")
T = TypeVar("T")
_Call = tuple[Future[Any], Callable[..., Any], tuple[object, ...]]

_NETNS_RUN_DIR = "/run/netns"
_CAP_SYS_ADMIN = 21
_GO = b"g"


class NetnsError(Exception):
    """The target namespace cannot be used; the message is ready for the user."""


@attrs.define(eq=False)
class Target:
    """Open fds on the namespace we serve, and what tells us when it is gone."""

    netns_fd: int
    name: str
    """The path the netns was opened from, for messages."""
    userns_fd: int | None = None
    """``--userns``, or the target PID's user namespace; None: the netns owner is used."""
    netns_only: bool = False
    """``--netns-only``: never join a user namespace."""
    pidfd: int | None = None
    """For a PID target: readable once the process has exited."""
    path: str | None = None
    """For a ``--netns`` target: the file whose removal ends our run."""

    def close(self) -> None:
        for fd in (self.netns_fd, self.userns_fd, self.pidfd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.netns_fd, self.userns_fd, self.pidfd = -1, None, None


def resolve_target(
    pid: int | None, netns: str | None, userns: str | None, netns_only: bool
) -> Target:
    """Open the namespaces named by exactly one of ``pid`` and ``netns`` (``--userns`` too).

    A ``netns`` without ``/`` is a name under ``/run/netns``, as for ``ip netns``.
    """
    if (pid is None) == (netns is None):
        raise ValueError("give exactly one of pid and netns")
    fds: list[int] = []
    try:
        if pid is not None:
            target = _open_pid_target(pid, not netns_only and userns is None, fds)
        else:
            assert netns is not None
            path = netns if "/" in netns else f"{_NETNS_RUN_DIR}/{netns}"
            target = Target(_open_ns(path, "network", linux.CLONE_NEWNET, fds), path, path=path)
        if userns is not None:
            target.userns_fd = _open_ns(userns, "user", linux.CLONE_NEWUSER, fds)
        target.netns_only = netns_only
        return target
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _open_pid_target(pid: int, with_userns: bool, fds: list[int]) -> Target:
    """Pin the process with a pidfd, open its namespaces, then check it is still the same one."""
    path = f"/proc/{pid}/ns/net"
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        raise NetnsError(f"Couldn't open network namespace {path}: {exc.strerror}") from exc
    fds.append(pidfd)
    target = Target(_open_ns(path, "network", linux.CLONE_NEWNET, fds), path, pidfd=pidfd)
    if with_userns:
        target.userns_fd = _open_ns(f"/proc/{pid}/ns/user", "user", linux.CLONE_NEWUSER, fds)
    if select.select([pidfd], [], [], 0)[0]:
        # It exited while we opened /proc/PID: the PID may now name another process.
        raise NetnsError(f"Couldn't open network namespace {path}: No such process")
    return target


def _open_ns(path: str, kind: str, nstype: int, fds: list[int]) -> int:
    """Open ``path`` and check (``NS_GET_NSTYPE``) that it is a namespace of type ``nstype``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(f"Couldn't open {kind} namespace {path}: {exc.strerror}") from exc
    fds.append(fd)
    try:
        is_ns = linux.ioctl(fd, linux.NS_GET_NSTYPE) == nstype
    except OSError:  # ENOTTY: not an nsfs file at all
        is_ns = False
    if not is_ns:
        raise NetnsError(f"Couldn't open {kind} namespace {path}: not a {kind} namespace")
    return fd


def join_userns_if_needed(target: Target) -> bool:
    """Join the target's user namespace if that is the only way into its netns.

    Must run before any other thread exists. Only the user namespace changes: the
    process stays in its own netns, where host sockets belong. Returns True if it joined.
    """
    if target.netns_only or _can_enter(target.netns_fd):
        return False
    if threading.active_count() > 1:
        raise RuntimeError("join_userns_if_needed() must run before any thread is started")
    userns = _owner_userns(target) if target.userns_fd is None else os.dup(target.userns_fd)
    try:
        if _ns_id(os.fstat(userns)) == _ns_id(os.stat("/proc/thread-self/ns/user")):
            raise NetnsError(
                f"Couldn't switch to network namespace {target.name}: Operation not permitted"
            )
        linux.setns(userns, linux.CLONE_NEWUSER)
    except OSError as exc:
        raise NetnsError(f"Couldn't join user namespace of {target.name}: {exc.strerror}") from exc
    finally:
        os.close(userns)
    return True


def _owner_userns(target: Target) -> int:
    try:
        return linux.ioctl(target.netns_fd, linux.NS_GET_USERNS)
    except OSError as exc:
        raise NetnsError(
            f"Couldn't find the user namespace owning {target.name}: {exc.strerror}"
        ) from exc


def _can_enter(netns_fd: int) -> bool:
    """Whether this thread may ``setns()`` into ``netns_fd`` (see the module docstring)."""
    if not _has_cap_sys_admin():
        return False
    try:
        owner = linux.ioctl(netns_fd, linux.NS_GET_USERNS)
    except PermissionError:
        return False
    return _descends_from_ours(owner)


def _has_cap_sys_admin() -> bool:
    with open("/proc/thread-self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False


def _descends_from_ours(userns_fd: int) -> bool:
    """Walk up from ``userns_fd`` (which this closes) until our user namespace or ``EPERM``."""
    ours = _ns_id(os.stat("/proc/thread-self/ns/user"))
    fd = userns_fd
    try:
        while _ns_id(os.fstat(fd)) != ours:
            try:
                parent = linux.ioctl(fd, linux.NS_GET_PARENT)
            except PermissionError:
                return False
            os.close(fd)
            fd = parent
        return True
    finally:
        os.close(fd)


def _ns_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _enter(target: Target) -> None:
    try:
        linux.setns(target.netns_fd, linux.CLONE_NEWNET)
    except OSError as exc:
        raise NetnsError(f"Couldn't enter network namespace {target.name}: {exc.strerror}") from exc


@contextlib.contextmanager
def in_netns(target: Target) -> Iterator[None]:
    """Run the body with the current thread in the target netns, then come back.

    Only possible while we hold ``CAP_SYS_ADMIN`` over our own netns, that is, not
    after :func:`join_userns_if_needed` joined (checked first, so we never get stranded);
    use :class:`NetnsThread` then. ``nsenter.Namespace`` is not used: it reopens the
    namespace by PID or path on every entry (which fails after privileges are dropped
    and races with PID reuse) and returns to ``/proc/self/ns/net``, the main thread's
    namespace rather than the calling thread's.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not _can_enter(home):
            raise NetnsError(
                f"Couldn't enter network namespace {target.name} and come back: no "
                "CAP_SYS_ADMIN over our own (use NetnsThread after join_userns_if_needed)"
            )
        _enter(target)
        try:
            yield
        finally:
            linux.setns(home, linux.CLONE_NEWNET)
    finally:
        os.close(home)


class NetnsThread:
    """A thread that enters the target netns once and runs calls there until closed.

    This works in every case :func:`in_netns` cannot: after joining a user namespace,
    and after privileges were dropped (the thread entered before). Sockets and taps
    created here belong to the target netns wherever they are used afterwards. From
    trio, call it as ``await trio.to_thread.run_sync(ns.call, fn)`` if ``fn`` may block.
    """

    def __init__(self, target: Target) -> None:
        self._calls: SimpleQueue[_Call | None] = SimpleQueue()
        entered: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(target, entered), name="netns", daemon=True
        )
        self._thread.start()
        entered.result()

    def _run(self, target: Target, entered: Future[None]) -> None:
        try:
            _enter(target)
        except NetnsError as exc:
            entered.set_exception(exc)
            return
        entered.set_result(None)
        while (item := self._calls.get()) is not None:
            future, fn, args = item
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def call(self, fn: Callable[..., T], /, *args: object) -> T:
        """Run ``fn(*args)`` in the target netns and return its result (or raise its error)."""
        future: Future[T] = Future()
        self._calls.put((future, fn, args))
        return future.result()

    def close(self) -> None:
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join()

    def __enter__(self) -> NetnsThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@attrs.define(eq=False)
class Spawned:
    """A command waiting in its new user+net namespace for :meth:`release`."""

    pid: int
    target: Target
    _go_fd: int

    def release(self) -> None:
        """The network is ready: let the command run."""
        os.write(self._go_fd, _GO)
        os.close(self._go_fd)
        self._go_fd = -1

    def wait(self) -> int:
        """Wait for the command; its exit status as a shell reports it (128+N for signal N)."""
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code


def spawn_in_new_namespace(argv: list[str]) -> Spawned:
    """Fork ``argv`` into a new user and network namespace, held until released.

    The child maps our uid and gid to root in its user namespace (``setgroups`` denied
    first, or an unprivileged ``gid_map`` write fails) and reports back through a pipe;
    we then open its namespaces like any PID target. The command runs with our stdio.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            _child(argv, ready_w, go_r)
        finally:
            os._exit(1)  # never run the parent's code in the child
    os.close(ready_w)
    os.close(go_r)
    try:
        with os.fdopen(ready_r, "rb") as ready:
            failure = ready.read().decode(errors="replace")
        if failure:
            raise NetnsError(failure)
        return Spawned(pid, resolve_target(pid, None, None, False), go_w)
    except BaseException:
        os.close(go_w)
        os.waitpid(pid, 0)
        raise


def _child(argv: list[str], ready_w: int, go_r: int) -> NoReturn:
    """In the forked child: unshare, map ids, say so, wait for the go, exec. Never returns."""
    try:
        uid, gid = os.geteuid(), os.getegid()
        # After a uid change (root → nobody) a process is not dumpable: its /proc files
        # belong to root, so neither it nor our parent could write its maps or open its
        # namespaces. execve() resets the flag for the command anyway.
        linux.prctl(linux.PR_SET_DUMPABLE, 1)
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNET)
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"0 {uid} 1")
        _write_file("/proc/self/gid_map", f"0 {gid} 1")
    except OSError as exc:
        os.write(ready_w, f"Couldn't create namespaces for the command: {exc}".encode())
        os._exit(1)
    os.close(ready_w)
    if os.read(go_r, 1) != _GO:  # our parent gave up or died
        os._exit(1)
    # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across execve.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"{argv[0]}: {exc.strerror}\n".encode())
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


async def wait_gone(target: Target, poll: float = 0.2) -> None:
    """Return once the target namespace is gone: its process exited or its file went away.

    A PID target waits on its pidfd (no delay). A ``--netns`` file is polled with
    ``stat()`` every ``poll`` seconds, and counts as gone once the path is missing or
    names another inode (unmounted). Polling, not inotify on the directory, because an
    unmount without unlink sends no directory event, and because reading the netns
    directory may be refused where stat on the file is not (pasta's "netns dir open:
    Permission denied").
    """
    if target.pidfd is not None:
        await trio.lowlevel.wait_readable(target.pidfd)
        return
    assert target.path is not None
    ident = _ns_id(os.fstat(target.netns_fd))
    warned = False
    while True:
        try:
            if _ns_id(os.stat(target.path)) != ident:
                return
        except FileNotFoundError:
            return
        except OSError as exc:  # e.g. EACCES after dropping to nobody: keep serving
            if not warned:
                log.warning("Can't watch %s (%s): won't quit when it is deleted",
                            target.path, exc.strerror)
                warned = True
        await trio.sleep(poll)
