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
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable

from pasta_net import linux

__all__ = ["PrivilegeError", "close_inherited_fds", "drop_privileges"]

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
