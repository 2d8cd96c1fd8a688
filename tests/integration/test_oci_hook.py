"""The OCI hook: its reading of the runtime's state, its refusals, and a real runtime.

The runtime tests run Debian's crun and runc on a busybox-static bundle whose config.json
carries our hook; inside, the container downloads a file from the remote test host and serves
it back through the hook's ``-t`` forward, and the test fetches it from the remote.

Two facts of this machine shape the runtime command (contrib/oci/README.md):
- cgroup v1 and v2 are mounted side by side ("hybrid"), and crun refuses that outright
  ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"): the
  runtime runs in a private mount namespace where /sys/fs/cgroup/unified is bound over
  /sys/fs/cgroup, and crun with ``--cgroup-manager=disabled``.
- busybox's ``wget -T`` crashes, so wget's deadline is busybox ``timeout``.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import sandbox
import servers
from sandbox import HOST_V4, REMOTE_V4

from pasta_net import oci_hook
from pasta_net.oci_hook import HookError, State
from tests.programs import hook_program

RUNTIMES = {name: shutil.which(name, path=f"{os.defpath}:/usr/sbin") for name in ("crun", "runc")}
BUSYBOX = shutil.which("busybox", path=os.defpath)
HOST_PORT = 18081
CONTAINER_PORT = 8000
FILE_SIZE = (1 << 20) + 3
APPLETS = ("sh", "wget", "httpd", "timeout", "sleep")
RUN_DEADLINE = 60.0


# ------------------------------------------------------------------ the state --
def state_json(**fields: Any) -> bytes:
    doc = {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "bundle": "/b", "pid": 1}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_state_fields_are_read() -> None:
    state = oci_hook.parse_state(
        state_json(pid=4422, bundle="/run/b", annotations={"io.pasta-net.options": "-t 80"})
    )
    assert state == State(
        pid=4422, bundle="/run/b", annotations={"io.pasta-net.options": "-t 80"}, id="c1"
    )


BAD_STATES = [
    (b"{", "malformed OCI state on stdin"),
    (b"\xff\xfe", "malformed OCI state on stdin"),
    (b"[1, 2]", "not a JSON object"),
    (state_json(pid=None), "OCI state has no 'pid'"),
    (state_json(pid="4422"), "invalid 'pid': '4422'"),
    (state_json(pid=True), "invalid 'pid': True"),
    (state_json(pid=-1), "invalid 'pid': -1"),
    (state_json(bundle=None), "no absolute 'bundle' path"),
    (state_json(bundle="relative/dir"), "no absolute 'bundle' path"),
    (state_json(annotations=["x"]), "'annotations' must map strings to strings"),
    (state_json(annotations={"a": 1}), "'annotations' must map strings to strings"),
    (b" " * (oci_hook.MAX_STATE_BYTES + 1), "larger than"),
    (b"[" * 50_000 + b"]" * 50_000, "malformed OCI state on stdin"),  # too deep to parse
    (b'{"pid": ' + b"9" * 5000 + b"}", "malformed OCI state on stdin"),  # too long an int
]


@pytest.mark.parametrize(("data", "message"), BAD_STATES, ids=[b[1] for b in BAD_STATES])
def test_unusable_state_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(HookError, match=re.escape(message)):
        oci_hook.parse_state(data)


def write_config(bundle: Path, namespaces: list[dict[str, str]]) -> None:
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps({"linux": {"namespaces": namespaces}}))


def test_netns_path_from_config(tmp_path: Path) -> None:
    write_config(tmp_path, [{"type": "pid"}, {"type": "network", "path": "/run/netns/c1"}])
    assert oci_hook.network_namespace_path(str(tmp_path)) == "/run/netns/c1"


def test_new_netns_in_config_means_no_path(tmp_path: Path) -> None:
    write_config(tmp_path, [{"type": "network"}, {"type": "mount"}])
    assert oci_hook.network_namespace_path(str(tmp_path)) is None


def test_unreadable_config_means_no_path(tmp_path: Path) -> None:
    assert oci_hook.network_namespace_path(str(tmp_path / "missing")) is None


def test_container_without_its_own_netns_is_refused(tmp_path: Path) -> None:
    write_config(tmp_path, [{"type": "pid"}, {"type": "mount"}])
    with pytest.raises(HookError, match="no network namespace of its own"):
        oci_hook.network_namespace_path(str(tmp_path))


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_dead_pid_is_refused(dead_pid: int, tmp_path: Path) -> None:
    with pytest.raises(HookError, match=f"container process {dead_pid} is not running"):
        oci_hook.target_args(State(pid=dead_pid, bundle=str(tmp_path)))


def test_pid_in_our_own_netns_is_refused(tmp_path: Path) -> None:
    """No config.json to tell: the namespace itself shows it is ours, not the container's."""
    with pytest.raises(HookError, match="shares the runtime's network namespace"):
        oci_hook.target_args(State(pid=os.getpid(), bundle=str(tmp_path)))


def test_pid_in_its_own_netns_is_the_target(container: sandbox.Container, tmp_path: Path) -> None:
    assert oci_hook.target_args(State(pid=container.pid, bundle=str(tmp_path))) == [
        str(container.pid)
    ]


def test_undumpable_init_gets_an_explanation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What a rootless hook meets at createRuntime: EACCES on /proc/PID/ns/net."""

    def refuse(path: str, *_args: object) -> int:
        raise PermissionError(13, "Permission denied", path)

    with monkeypatch.context() as patched:
        patched.setattr(oci_hook.os, "open", refuse)
        with pytest.raises(HookError) as refused:
            oci_hook.target_args(State(pid=os.getpid(), bundle=str(tmp_path)))
    assert "Permission denied. A rootless runtime" in str(refused.value)
    assert '[{"type": "network", "path": ' in str(refused.value)


def test_default_options_configure_the_namespace_file() -> None:
    opts = oci_hook.build_options(State(pid=77, bundle="/b"), ["--netns", "/n"])
    assert (opts.ns.config_net, opts.ns.netns, opts.pid) == (True, "/n", None)


def test_annotation_options_replace_the_default() -> None:
    state = State(pid=77, bundle="/b", annotations={"io.pasta-net.options": "-t '8080:80' -q"})
    opts = oci_hook.build_options(state, ["77"])
    assert (opts.ns.config_net, opts.ns.netns, opts.pid) == (False, "/proc/77/ns/net", 77)
    assert (opts.log.quiet, [s.text for s in opts.ports.tcp or ()]) == (True, ["8080:80"])


BAD_OPTIONS = [
    ("--bogus", "unrecognized option '--bogus'"),
    ("-t '8080", "No closing quotation"),
    ("-f", "--foreground would keep the runtime waiting"),
    ("--version", "--help and --version do not attach"),
    ("--netns /other", "Both --netns and PID or command given"),
    ("-- sh -c true", "give options only"),
    ("1234", "give options only"),
]


@pytest.mark.parametrize(("text", "message"), BAD_OPTIONS, ids=[b[0] for b in BAD_OPTIONS])
def test_bad_annotation_options_are_refused(text: str, message: str) -> None:
    state = State(pid=77, bundle="/b", annotations={oci_hook.OPTIONS_ANNOTATION: text})
    with pytest.raises(HookError, match=re.escape(message)):
        oci_hook.build_options(state, ["77"])


# ------------------------------------------------------------ as a program --
@pytest.fixture
def hook(tmp_path: Path) -> Path:
    return hook_program(tmp_path)


def run_hook(hook: Path, data: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(hook)], input=data, capture_output=True, timeout=60, check=False)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "pasta-net-oci-hook: malformed OCI state on stdin"),
        (state_json(pid=None), "pasta-net-oci-hook: OCI state has no 'pid'"),
    ],
    ids=["malformed", "no-pid"],
)
def test_hook_program_fails_clearly(hook: Path, data: bytes, message: str) -> None:
    result = run_hook(hook, data)
    assert result.returncode == 1
    assert result.stderr.decode().startswith(message)
    assert result.stdout == b""


def test_hook_program_dead_pid(hook: Path, dead_pid: int, tmp_path: Path) -> None:
    result = run_hook(hook, state_json(pid=dead_pid, bundle=str(tmp_path)))
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"pasta-net-oci-hook: container process {dead_pid} is not running\n"
    )


def test_hook_program_failing_pasta_net_leaves_nothing(
    hook: Path, container: sandbox.Container, tmp_path: Path
) -> None:
    """Past the hook's checks, pasta-net itself fails (no such interface): status 1, its
    message on stderr, and no daemon (the harness fails a test that leaves one)."""
    state = state_json(
        pid=container.pid,
        bundle=str(tmp_path),
        annotations={oci_hook.OPTIONS_ANNOTATION: "--config-net -i nosuch0"},
    )
    result = run_hook(hook, state)
    assert result.returncode == 1
    assert result.stderr.decode().startswith("pasta-net: ")


# ------------------------------------------------------------ a real runtime --
def make_rootfs(rootfs: Path) -> None:
    """busybox-static and the applet links the container uses; nothing else."""
    assert BUSYBOX is not None
    (rootfs / "bin").mkdir(parents=True)
    for name in ("proc", "dev", "srv", "tmp"):
        (rootfs / name).mkdir()
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")


def container_config(
    hook: Path, stage: str, netns: Path | None, options: str, script: str
) -> dict[str, Any]:
    """A minimal OCI config: busybox sh, a network namespace (``netns`` if given), the
    hook at ``stage``, pasta-net's options as the annotation."""
    network: dict[str, str] = {"type": "network"}
    if netns is not None:
        network["path"] = str(netns)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "oci-hook-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ],
        "linux": {"namespaces": [*({"type": t} for t in ("pid", "mount", "ipc", "uts")), network]},
        "hooks": {stage: [{"path": str(hook), "args": [hook.name], "timeout": 30}]},
        "annotations": {"io.pasta-net.enable": "true", oci_hook.OPTIONS_ANNOTATION: options},
    }


def runtime_command(runtime: str, state_dir: Path, *args: str) -> list[str]:
    """The runtime in a private mount namespace with the cgroup v2 tree as /sys/fs/cgroup
    (see the module docstring); crun without cgroup management."""
    program = RUNTIMES[runtime]
    assert program is not None
    extra = ["--cgroup-manager=disabled"] if runtime == "crun" else []
    command = [program, f"--root={state_dir}", *extra, *args]
    if not os.path.ismount("/sys/fs/cgroup/unified"):
        return command
    return [
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        'mount --bind /sys/fs/cgroup/unified /sys/fs/cgroup && exec "$@"', "sh", *command,
    ]  # fmt: skip


_FETCH = """\
import hashlib, http.client, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while True:  # until the container's httpd is up
    try:
        conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
        conn.request("GET", "/got")
        response = conn.getresponse()
        if response.status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("no answer from the container")
    time.sleep(0.2)
body = response.read()
print(hashlib.sha256(body).hexdigest(), len(body))
"""

SCRIPT = (
    f"timeout 10 wget -q -O /srv/got http://{REMOTE_V4}:{servers.HTTP_PORT}/bytes/{FILE_SIZE}"
    f" || exit 11; exec httpd -f -p {CONTAINER_PORT} -h /srv"
)
"""The container: download from the remote, then serve what it got."""


@attrs.define(eq=False)
class Runtime:
    """``crun run`` (or ``runc run``) on fresh bundles. A container's init is PID 1 of its
    PID namespace and ignores SIGTERM, so containers are ended with ``kill NAME KILL``,
    never by signalling the runtime (the container would keep its output pipe open)."""

    name: str
    workdir: Path
    hook: Path
    _started: dict[str, subprocess.Popen[bytes]] = attrs.field(factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.workdir / f"{self.name}-state"

    def command(self, *args: str) -> list[str]:
        return runtime_command(self.name, self.state_dir, *args)

    def start(self, stage: str, netns: Path | None, options: str) -> str:
        """Create and start a container running SCRIPT; returns its name."""
        name = f"pasta-net-hook-{len(self._started)}"
        bundle = self.workdir / name
        make_rootfs(bundle / "rootfs")
        config = container_config(self.hook, stage, netns, options, SCRIPT)
        config["annotations"]["run.oci.hooks.stderr"] = str(self.hook_stderr(name))
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        self._started[name] = subprocess.Popen(
            self.command("run", f"--bundle={bundle}", name),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return name

    def hook_stderr(self, name: str) -> Path:
        """Where crun sends the hooks' stderr (it reports only the exit code otherwise;
        runc has no such annotation and puts a failing hook's stderr in its message)."""
        return self.workdir / f"{name}.hook-stderr"

    def wait(self, name: str, timeout: float) -> tuple[int, str]:
        """Wait for ``run`` to end by itself; (exit status, everything it printed)."""
        output, _ = self._started[name].communicate(timeout=timeout)
        return self._started[name].returncode, output.decode(errors="replace")

    def stop(self, name: str) -> str:
        """Kill the container, delete it; everything ``run`` printed."""
        process = self._started[name]
        if process.poll() is None:
            sandbox.run_command(self.command("kill", name, "KILL"), check=False)
        try:
            output = self.wait(name, sandbox.STOP_TIMEOUT)[1]
        except subprocess.TimeoutExpired:
            process.kill()
            output = f"({self.name} run did not end after {self.name} kill)"
        sandbox.run_command(self.command("delete", "--force", name), check=False)
        return output

    def close(self) -> None:
        for name in self._started:
            self.stop(name)


@pytest.fixture(params=sorted(RUNTIMES))
def runtime(request: pytest.FixtureRequest, tmp_path: Path, hook: Path) -> Iterator[Runtime]:
    """Every container it starts is killed and deleted afterwards, whatever happened."""
    if RUNTIMES[request.param] is None or BUSYBOX is None:
        pytest.skip(f"needs Debian's {request.param} and busybox-static (.ci/run installs them)")
    runtime = Runtime(request.param, tmp_path, hook)
    try:
        yield runtime
    finally:
        runtime.close()


def hook_daemons() -> list[int]:
    return [
        pid
        for pid, proc in sandbox.descendants().items()
        if proc.state != "Z" and "pasta-net-oci-hook" in proc.cmdline
    ]


@pytest.mark.parametrize(
    ("stage", "by_file"),
    [("createRuntime", True), ("prestart", False)],
    ids=["createRuntime-netns-file", "prestart-pid"],
)
def test_container_fetches_and_serves_through_the_hook(
    runtime: Runtime,
    container: sandbox.Container,
    topology: sandbox.Topology,
    stage: str,
    by_file: bool,
) -> None:
    """The hook attaches pasta-net before the container starts: its first command already
    reaches the remote, and what it serves is reachable from the remote through -t."""
    netns = container.path if by_file else None
    name = runtime.start(stage, netns, f"--config-net -t {HOST_PORT}:{CONTAINER_PORT}")
    fetch = [sys.executable, "-c", _FETCH, HOST_V4, str(HOST_PORT), str(RUN_DEADLINE)]
    fetched = topology.remote.run(fetch, timeout=RUN_DEADLINE + 10, check=False)
    if fetched.returncode != 0:
        pytest.fail(f"{fetched.stderr.decode()}; {runtime.name} said:\n{runtime.stop(name)}")
    assert fetched.stdout.decode().split() == [servers.pattern_sha256(FILE_SIZE), str(FILE_SIZE)]

    (daemon,) = hook_daemons()
    pidfd = os.pidfd_open(daemon)  # crun may reap it: watch it by pidfd, not by exit code
    try:
        output = runtime.stop(name)  # a PID-attached pasta-net ends with the container
        if by_file:  # a namespace file outlives the container: pasta-net goes with the file
            sandbox.run_command(["umount", "--lazy", str(container.path)])
            container.path.unlink()
        stopped = time.monotonic()
        assert select.select([pidfd], [], [], 5.0)[0], f"pasta-net still running; {output}"
        assert time.monotonic() - stopped < 1.5
    finally:
        os.close(pidfd)


def test_failing_hook_aborts_the_container(
    runtime: Runtime, container: sandbox.Container, topology: sandbox.Topology
) -> None:
    """A hook that cannot attach stops the container's creation with its message (crun:
    in the file of ``run.oci.hooks.stderr``; runc: in its own error); nothing is left."""
    name = runtime.start("createRuntime", container.path, "--config-net --bogus")
    code, output = runtime.wait(name, RUN_DEADLINE)
    assert code != 0
    hook_said = runtime.hook_stderr(name)
    reported = hook_said.read_text() if hook_said.exists() else output
    assert (
        "pasta-net-oci-hook: io.pasta-net.options '--config-net --bogus': "
        "unrecognized option '--bogus'"
    ) in reported, output
    assert hook_daemons() == []
