"""Give up what we do not need once the namespaces are open (DESIGN.md §6).

Order matters, and is the caller's: open the namespace fds (``netns.resolve_target``),
join the user namespace, create the tap and configure the namespace (or start a
``NetnsThread``, which keeps its place in the target netns), *then* drop privileges and
close inherited fds. ``/proc/PID/ns/*`` of a more privileged process cannot be opened
afterwards (``EACCES``), and a uid change is process-wide.

Real root (uid 0 in the initial user namespace, where ``/proc/self/uid_map`` is the
identity map) never keeps its identity: it becomes ``nobody`` or ``--runas``. Root
inside a user namespace is already unprivileged towards the host and keeps its uid
unless ``--runas`` is given. ``PR_SET_NO_NEW_PRIVS`` is always set, so no later
``execve`` (there should be none) can regain anything through setuid bits or file
capabilities.

Capabilities: whoever we run as, :func:`lock_thread` empties every set but what the
run still needs: ``CAP_NET_BIND_SERVICE`` (forwarded low ports are bound after the
switch, and at run time: ``auto``, the control socket) and, with ``--follow-host``
only, ``CAP_NET_ADMIN`` (re-addressing the namespace's interface). A uid change away
from 0 would clear them all, so :func:`keep_capabilities_across_uid_change` asks the
kernel to keep the permitted set over it, before any thread exists (the flag is
inherited by threads, and cleared by ``execve``). Capabilities and no_new_privs belong to
threads, not processes: the caller runs :func:`lock_thread` in every thread that exists
(the namespace thread too); threads started later inherit both.

File descriptors: :func:`close_inherited_fds` runs first thing, before we open any
(as passt's ``close_open_files``): nothing a caller leaked to us survives into the
daemon, except what the options name (``--fd``).
"""

from __future__ import annotations

import os
import pwd
import resource
from collections.abc import Iterable

from pasta_net import linux

__all__ = [
    "PrivilegeError",
    "close_inherited_fds",
    "drop_capabilities",
    "drop_privileges",
    "keep_capabilities_across_uid_change",
    "lock_thread",
    "needed_capabilities",
    "raise_fd_limit",
]

_IDENTITY_MAP = ["0", "0", "4294967295"]
_NOBODY = 65534


class PrivilegeError(Exception):
    """We could not become the requested user; the message is ready for the user."""


def drop_privileges(runas: tuple[int, int] | None) -> tuple[int, int] | None:
    """Switch to ``runas`` (uid, gid), or to ``nobody`` if we are real root; set no_new_privs.

    Returns the ids switched to, or None if we kept ours (for a "changing to nobody" note).
    """
    if runas is None and os.geteuid() == 0 and _outside_user_namespaces():
        runas = _nobody()
    if runas is not None:
        _switch_ids(*runas)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    return runas


def _outside_user_namespaces() -> bool:
    with open("/proc/self/uid_map") as uid_map:
        return uid_map.read().split() == _IDENTITY_MAP


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return _NOBODY, _NOBODY
    return entry.pw_uid, entry.pw_gid


def _switch_ids(uid: int, gid: int) -> None:
    """Supplementary groups first, then gid, then uid: afterwards we could not."""
    try:
        if _setgroups_allowed():
            os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeError(f"Can't change to UID {uid}, GID {gid}: {exc.strerror}") from exc


def _setgroups_allowed() -> bool:
    """False in a user namespace whose creator wrote ``deny`` (as unprivileged ones must)."""
    with open("/proc/self/setgroups") as setgroups:
        return setgroups.read().strip() == "allow"


def needed_capabilities(follow_host: bool) -> frozenset[int]:
    """The capabilities the serving process may keep (if it has them at all)."""
    keep = {linux.CAP_NET_BIND_SERVICE}
    if follow_host:
        keep.add(linux.CAP_NET_ADMIN)
    return frozenset(keep)


def drop_capabilities(keep: frozenset[int]) -> None:
    """Reduce the calling thread's capabilities to ``keep`` (those it has of them):
    effective and permitted; inheritable and ambient emptied."""
    _effective, permitted, _inheritable = linux.capabilities()
    mask = sum(1 << cap for cap in keep) & permitted
    linux.set_capabilities(mask, mask, 0)
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)


def keep_capabilities_across_uid_change() -> None:
    """Real root switching to nobody keeps its permitted capabilities (not its effective
    ones), so that :func:`lock_thread` can keep what is needed and drop the rest."""
    linux.prctl(linux.PR_SET_KEEPCAPS, 1)


def lock_thread(keep: frozenset[int]) -> None:
    """What every thread gives up on its own (all per-thread state in Linux):
    capabilities but ``keep``, any later gain through ``execve`` (no_new_privs), and the
    keep-capabilities flag, whose work is done."""
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    drop_capabilities(keep)
    linux.prctl(linux.PR_SET_KEEPCAPS, 0)


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (as pasta): large forwarded port
    ranges and many flows need fds, and a low soft limit is only a default. Returns the
    limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            return soft
    return hard


def close_inherited_fds(keep: Iterable[int]) -> None:
    """Close every fd above stderr except ``keep`` (the namespace fds, the tap, ...).

    Python objects still holding a closed fd must not be used afterwards: call this
    before creating anything but what ``keep`` lists.
    """
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, max(os.sysconf("SC_OPEN_MAX"), low))
