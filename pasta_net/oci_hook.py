"""OCI runtime hook: connect a container's network namespace with pasta-net.

An OCI runtime (crun, runc) runs a ``createRuntime`` (or the older ``prestart``) hook
after it has created the container's namespaces and before the container's process
starts, with the container's state as JSON on stdin (runtime-spec ``runtime.md``,
"State")::

    {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 4422,
     "bundle": "/abs/path", "annotations": {"io.pasta-net.options": "--config-net -t 8080:80"}}

The hook starts pasta-net for that namespace, waits until it is ready (tap configured,
ports bound) and exits 0, or exits 1 with the reason on stderr, leaving nothing running.
What it is built on:

- **Which namespace.** A ``linux.namespaces`` entry ``{"type": "network", "path": P}`` in
  ``<bundle>/config.json`` names a namespace file the runtime joined: pasta-net then
  attaches with ``--netns P`` and lives until that file is removed (``ip netns del``),
  as pasta does for podman. Otherwise the runtime made a new one for the container's
  init, reached as ``/proc/PID/ns/net``: pasta-net attaches by PID and exits with the
  container. A container without a network entry shares the runtime's namespace; the
  hook refuses it rather than put a tap into the host's network.
- **Rootless runtimes.** The container's init is not dumpable until it execs the
  container's program, so an unprivileged hook gets ``EACCES`` on ``/proc/PID/ns/*`` at
  ``createRuntime`` and ``prestart`` time; only a namespace path in config.json works
  there, and the hook says so. As root, pasta-net opens the namespace files before it
  drops to ``nobody`` (see :mod:`pasta_net.launch`).
- **Detaching.** runc captures a hook's stdout and stderr and waits for EOF on them, and
  crun waits for the hook's children too: pasta-net's daemon starts a new session and
  replaces its stdio with ``/dev/null`` before it reports ready, so the runtime sees
  EOF the moment this hook exits. The hook also leaves its working directory (often
  the bundle) for ``/``, so the daemon keeps no mount busy.
- **Options** come from the annotation ``io.pasta-net.options``, a shell-quoted
  argument string parsed exactly like pasta's command line; the default is
  ``--config-net``. The hook adds the target itself, so the annotation may name none.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

import attrs

from pasta_net.options import Action, Options, UsageError, parse_args

__all__ = [
    "DEFAULT_OPTIONS",
    "OPTIONS_ANNOTATION",
    "HookError",
    "State",
    "build_options",
    "main",
    "network_namespace_path",
    "parse_state",
    "target_args",
]

PROG = "pasta-net-oci-hook"
OPTIONS_ANNOTATION = "io.pasta-net.options"
DEFAULT_OPTIONS = "--config-net"
MAX_STATE_BYTES = 1 << 20
"""A state document is a few hundred bytes; bound what we read from a hostile stdin."""


class HookError(Exception):
    """The hook cannot attach pasta-net; the message is ready for the user (exit 1)."""


@attrs.frozen(kw_only=True)
class State:
    """The fields of the runtime's state document this hook uses."""

    pid: int
    """The container's init, as seen from the runtime's PID namespace."""
    bundle: str
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    id: str = ""


def parse_state(data: bytes) -> State:
    """Check and decode the OCI state JSON; anything unusable is a :class:`HookError`."""
    if len(data) > MAX_STATE_BYTES:
        raise HookError(f"OCI state on stdin is larger than {MAX_STATE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, too deep, a huge int
        raise HookError(f"malformed OCI state on stdin: {exc}") from None
    if not isinstance(doc, dict):
        raise HookError("malformed OCI state on stdin: not a JSON object")
    pid = doc.get("pid")
    if pid is None:
        raise HookError("OCI state has no 'pid': the hook must run at createRuntime or prestart")
    if type(pid) is not int or pid <= 0:
        raise HookError(f"OCI state has an invalid 'pid': {pid!r}")
    bundle = doc.get("bundle")
    if not isinstance(bundle, str) or not os.path.isabs(bundle):
        raise HookError(f"OCI state has no absolute 'bundle' path: {bundle!r}")
    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise HookError("OCI state 'annotations' must map strings to strings")
    container_id = doc.get("id")
    return State(
        pid=pid,
        bundle=bundle,
        annotations=annotations,
        id=container_id if isinstance(container_id, str) else "",
    )


def network_namespace_path(bundle: str) -> str | None:
    """``linux.namespaces[type=network].path`` from ``<bundle>/config.json``, or None.

    None means "the runtime created a fresh namespace for the container"; a config that
    gives the container no network namespace of its own is refused, and an unreadable
    config counts as "no path" (the PID check below still catches a shared namespace).
    """
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            config = json.load(f)
        namespaces = config["linux"]["namespaces"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(namespaces, list):
        return None
    for entry in namespaces:
        if isinstance(entry, dict) and entry.get("type") == "network":
            path = entry.get("path")
            return path if isinstance(path, str) and path else None
    raise HookError(
        f"{bundle}/config.json gives the container no network namespace of its own "
        "(no linux.namespaces entry of type network): refusing to attach to ours"
    )


def target_args(state: State) -> list[str]:
    """pasta-net's target for this container: ``--netns PATH`` or the PID.

    Checks what can be checked before forking, so that the common failures come with a
    message about the container rather than about a namespace file.
    """
    _check_alive(state.pid)
    path = network_namespace_path(state.bundle)
    if path is not None:
        return ["--netns", path]
    _check_pid_netns(state.pid)
    return [str(state.pid)]


def _check_alive(pid: int) -> None:
    try:
        os.close(os.pidfd_open(pid))
    except ProcessLookupError:
        raise HookError(f"container process {pid} is not running") from None


def _check_pid_netns(pid: int) -> None:
    """``/proc/PID/ns/net`` must open, and must not be the namespace we are in."""
    path = f"/proc/{pid}/ns/net"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise HookError(
            f"cannot attach to the container's network namespace: {path}: Permission "
            "denied. A rootless runtime keeps the container's init undumpable until it "
            "execs, so its namespaces cannot be opened from a hook; give the container a "
            "namespace file instead (config.json linux.namespaces "
            '[{"type": "network", "path": "/run/user/UID/netns/NAME"}]) or run the '
            "runtime as root"
        ) from None
    except OSError as exc:
        raise HookError(f"cannot open {path}: {exc.strerror}") from None
    try:
        theirs, ours = os.fstat(fd), os.stat("/proc/self/ns/net")
    finally:
        os.close(fd)
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        raise HookError(
            f"container process {pid} shares the runtime's network namespace: "
            "refusing to attach to it"
        )


def build_options(state: State, target: Sequence[str]) -> Options:
    """pasta-net's options: the annotation (or the default) plus the target."""
    text = state.annotations.get(OPTIONS_ANNOTATION, DEFAULT_OPTIONS)
    try:
        args = shlex.split(text)
    except ValueError as exc:
        raise HookError(f"{OPTIONS_ANNOTATION}: {exc}: {text!r}") from None
    try:
        options = parse_args([*args, *target], prog="pasta-net")
    except UsageError as exc:
        raise HookError(f"{OPTIONS_ANNOTATION} {text!r}: {exc.message}") from None
    _check_hook_options(options, text, target)
    return options


def _check_hook_options(options: Options, text: str, target: Sequence[str]) -> None:
    """Refuse what would make the hook do something other than attach and return."""
    if options.action is not Action.RUN:
        raise HookError(f"{OPTIONS_ANNOTATION} {text!r}: --help and --version do not attach")
    if options.log.foreground:
        raise HookError(
            f"{OPTIONS_ANNOTATION} {text!r}: -f/--foreground would keep the runtime waiting"
        )
    expected = target[1] if target[0] == "--netns" else f"/proc/{target[0]}/ns/net"
    if options.command or options.ns.netns != expected:
        raise HookError(
            f"{OPTIONS_ANNOTATION} {text!r}: give options only; the hook attaches to the "
            "container's namespace itself (no PID, command or --netns)"
        )


def run(state: State) -> int:
    """Start pasta-net for the container; 0 once it is ready, 1 if it failed."""
    options = build_options(state, target_args(state))
    os.chdir("/")
    from pasta_net import launch  # the runtime stack is only needed past the checks

    return launch.run(options, "pasta-net")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``pasta-net-oci-hook``: state JSON on stdin, no arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        sys.stderr.write(f"{PROG}: no arguments expected (the OCI state comes on stdin)\n")
        return 1
    try:
        state = parse_state(sys.stdin.buffer.read(MAX_STATE_BYTES + 1))
        return run(state)
    except HookError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
