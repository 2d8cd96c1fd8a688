"""Namespaces, processes and the program under test, for the integration tests.

The pytest process already runs in its own user+net+mount namespaces (tests/conftest.py):
its network namespace is the "host" of DESIGN.md §4. This module builds the rest of that
topology, gives each test a fresh container namespace, and starts pasta-net (or a stand-in
such as Debian's pasta) against it:

    [sandbox host: this process]  lo; up0 198.51.100.2/24 2001:db8:1::2/64, default via .1/::1
        │ veth
    [remote]  rem0 198.51.100.1/24 2001:db8:1::1/64; lo 203.0.113.1 2001:db8:2::1 + servers
    [container]  empty netns bound to a file, plus a holder process for PID attach

Rules it keeps:
- Namespaces are bound to files (`unshare --net=FILE`) in the sandbox's private tmpfs and
  entered with `nsenter --net=FILE`, never `ip netns exec` (which remounts /sys and hides
  cgroups from the runtimes later tests start).
- Every process is started through an object that ends it by pid (SIGTERM, then SIGKILL)
  when it is closed; pytest is a child subreaper, so daemons that double-fork stay its
  descendants and `descendants()` finds anything a test leaked.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self

import attrs
import pytest
import servers

HOST_V4, HOST_V6 = "198.51.100.2", "2001:db8:1::2"
GATEWAY_V4, GATEWAY_V6 = "198.51.100.1", "2001:db8:1::1"
REMOTE_V4, REMOTE_V6 = "203.0.113.1", "2001:db8:2::1"
REMOTE_ADDRESSES = (REMOTE_V4, REMOTE_V6)
IPERF3_PORT = 5201

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVERS_PY = Path(servers.__file__).resolve()

RUN_TIMEOUT = 30.0
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.02

NSENTER = shutil.which("nsenter", path=os.defpath) or "/usr/bin/nsenter"
"""util-linux nsenter. Looked up in the system path only: the `nsenter` package from PyPI
(a project dependency) installs a script of the same name, with other options, on PATH."""

Attach = Literal["netns", "pid"] | None


class CommandFailed(subprocess.CalledProcessError):
    """A command exited non-zero; unlike CalledProcessError, its message shows the output."""

    def __str__(self) -> str:
        output = [
            f"{name}:\n{data.decode(errors='replace')}"
            for name, data in (("stdout", self.stdout), ("stderr", self.stderr))
            if data
        ]
        return "\n".join([super().__str__(), *output])


def run_command(
    argv: Sequence[str],
    timeout: float = RUN_TIMEOUT,
    check: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run to completion, capturing bytes (payloads are bytes; decode where text is meant)."""
    result = subprocess.run(
        argv,
        input=input,
        capture_output=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
    return result


def stop_popen(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, wait, SIGKILL if it does not go; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def wait_pid(pid: int, timeout: float) -> int | None:
    """Wait for a process that need not be our child; its exit code if we could reap it.

    Daemons are re-parented to pytest (a child subreaper), so we normally can: the exit
    code is then negative for a signal, as in subprocess. The pid cannot be reused in the
    meantime, because an unreaped zombie keeps it.
    """
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise TimeoutError(f"process {pid} still running after {timeout}s")
    finally:
        os.close(pidfd)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


class Proc(NamedTuple):
    state: str
    cmdline: str


def descendants(root: int | None = None) -> dict[int, Proc]:
    """Every live or zombie process below `root` (default: pytest itself), from /proc."""
    children: dict[int, list[int]] = {}
    procs: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited while we looked
        comm_end = stat.rindex(")")
        state, ppid = stat[comm_end + 2 :].split()[:2]
        pid = int(entry.name)
        procs[pid] = Proc(state, cmdline.decode(errors="replace") or stat[: comm_end + 1])
        children.setdefault(int(ppid), []).append(pid)
    found: dict[int, Proc] = {}
    todo = [os.getpid() if root is None else root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = procs[child]
            todo.append(child)
    return found


def end_strays(known: set[int]) -> list[str]:
    """Kill (by pid) and reap every descendant not in `known`; describes those that lived."""
    strays = []
    for pid, proc in descendants().items():
        if pid in known:
            continue
        if proc.state != "Z":
            strays.append(f"{pid} {proc.cmdline}")
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return strays


@attrs.frozen
class Address:
    ifname: str
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    tentative: bool
    """IPv6 duplicate address detection still running: the address cannot be used yet."""
    link_up: bool
    """The interface is administratively up."""


@attrs.frozen
class Route:
    dst: str
    """A prefix, or "default"."""
    gateway: str | None
    dev: str | None


@attrs.frozen
class Endpoint:
    proto: Literal["tcp", "udp"]
    address: str
    port: int


def _parse_endpoint(line: str) -> Endpoint:
    """One line of `ss -Hlntu`: "tcp LISTEN 0 128 [2001:db8:2::1]:8080 [::]:*"."""
    fields = line.split()
    address, _, port = fields[4].rpartition(":")
    return Endpoint(fields[0], address.strip("[]").partition("%")[0], int(port))


def fresh_path(directory: Path, prefix: str) -> Path:
    """A new file name in `directory`, created empty (a bind mount needs its target)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
    os.close(fd)
    return Path(name)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s")
        time.sleep(POLL_INTERVAL)


@attrs.define(eq=False)
class Netns:
    """A network namespace bound to a file; commands run in it through nsenter --net=FILE.

    Processes started with popen() belong to it and are ended, by pid, by close().
    """

    path: Path
    _processes: list[subprocess.Popen[bytes]] = attrs.field(factory=list)

    @classmethod
    def create(cls, path: Path) -> Self:
        """A fresh netns owned by the sandbox's user namespace (lo down, nothing else)."""
        path.touch()
        try:
            run_command(["unshare", f"--net={path}", "true"])
        except BaseException:
            path.unlink()
            raise
        return cls(path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside this namespace."""
        return [NSENTER, f"--net={self.path}", *argv]

    def run(
        self,
        argv: Sequence[str],
        timeout: float = RUN_TIMEOUT,
        check: bool = True,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run inside; raises CommandFailed (with the output) on a non-zero exit if `check`."""
        return run_command(self.command(argv), timeout, check, input)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start inside (stdin from /dev/null unless given); ended by close()."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen(self.command(argv), **kwargs)
        self._processes.append(process)
        return process

    def addresses(self) -> list[Address]:
        """Every address of every interface, from `ip -j addr`."""
        links = json.loads(self.run(["ip", "-j", "addr", "show"]).stdout)
        return [
            Address(
                link["ifname"],
                ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}"),
                a.get("tentative", False),
                "UP" in link["flags"],
            )
            for link in links
            for a in link.get("addr_info", [])
        ]

    def routes(self) -> list[Route]:
        """IPv4 then IPv6 routes of the main table."""
        return [
            Route(r["dst"], r.get("gateway"), r.get("dev"))
            for family in ("-4", "-6")
            for r in json.loads(self.run(["ip", "-j", family, "route", "show"]).stdout)
        ]

    def listening(self) -> set[Endpoint]:
        """TCP listeners and bound UDP sockets."""
        lines = self.run(["ss", "-Hlntu"]).stdout.decode().splitlines()
        return {_parse_endpoint(line) for line in lines}

    def wait_for_address(self, address: str, timeout: float = START_TIMEOUT) -> Address:
        """Wait until `address` is on an interface that is up and settled; returns it.

        Settled: no address of the interface is tentative. Until duplicate address
        detection of its link-local address is over, the kernel sends MLD reports from
        `::`; Debian's pasta takes that for the container's new address and sends the
        replies of open connections to `::` (seen here as stalled downloads), so traffic
        must not start before.
        """
        wanted = ipaddress.ip_address(address)
        found: list[Address] = []

        def settled() -> bool:
            addresses = self.addresses()
            found[:] = [a for a in addresses if a.interface.ip == wanted and a.link_up]
            return bool(found) and not any(
                a.tentative for a in addresses if a.ifname == found[0].ifname
            )

        wait_until(settled, timeout, f"address {address} in {self.path}")
        return found[0]

    def remove(self) -> None:
        """Unbind and delete the file, as podman does; idempotent.

        The namespace itself lives on while a process is in it.
        """
        if self.path.exists():
            run_command(["umount", str(self.path)], check=False)
            self.path.unlink()

    def close(self) -> None:
        for process in reversed(self._processes):
            stop_popen(process)
        self._processes.clear()
        self.remove()


@attrs.define(eq=False)
class Container(Netns):
    """A container's netns: attach by `path` (--netns FILE) or by `pid` (its holder process).

    By default the netns is owned by the sandbox's user namespace, like the one a rootless
    runtime creates and passes to pasta with --netns. With `own_userns`, the holder is
    `unshare --user --map-root-user --net sleep infinity`, the usual target of `pasta PID`,
    and the file is a bind mount of its netns. Debian's pasta attaches by PID only to the
    latter: it drops capabilities before it opens /proc/PID/ns/*, so for a holder in our
    user namespace the open fails (EACCES from the ptrace access check) or, if the holder
    has no capabilities either, joining what is already its own user namespace does (EINVAL).
    """

    holder: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, path: Path, own_userns: bool = False) -> Self:
        """A fresh container netns, with its holder running inside."""
        if own_userns:
            path.touch()
            container = cls(path)
        else:
            container = super().create(path)
        try:
            container._start_holder(own_userns)
        except BaseException:
            container.close()
            raise
        return container

    def _start_holder(self, own_userns: bool) -> None:
        """Start the holder; once it runs `sleep`, nsenter/unshare have done their part."""
        if own_userns:
            self.holder = subprocess.Popen(
                ["unshare", "--user", "--map-root-user", "--net", "sleep", "infinity"],
                stdin=subprocess.DEVNULL,
            )
            self._processes.append(self.holder)
        else:
            self.holder = self.popen(["sleep", "infinity"])
        sleep = os.path.realpath(shutil.which("sleep") or "sleep")
        wait_until(lambda: self._holder_exe() == sleep, START_TIMEOUT, "holder starting")
        if own_userns:
            run_command(["mount", "--bind", f"/proc/{self.pid}/ns/net", str(self.path)])

    def _holder_exe(self) -> str:
        assert self.holder is not None
        if self.holder.poll() is not None:
            raise RuntimeError(f"holder {self.holder.args} exited {self.holder.returncode}")
        return os.readlink(f"/proc/{self.pid}/exe")

    @property
    def pid(self) -> int:
        """Pid of a process inside the namespace (for `pasta PID`-style attach)."""
        assert self.holder is not None
        return self.holder.pid


@attrs.define(eq=False)
class Topology:
    """The sandbox host's uplink, and the remote netns ("the internet") with its servers."""

    remote: Netns
    log: Path
    """Output of the remote's servers and iperf3."""


def _link_remote(remote: Netns) -> None:
    """veth up0 (sandbox host) ↔ rem0 (remote), addresses and routes per DESIGN.md §4.

    The remote routes the link prefixes with the service addresses as source, so whatever
    it sends towards the host (replies included) comes from 203.0.113.1 / 2001:db8:2::1.
    """
    for command in (
        f"ip link add up0 type veth peer name rem0 netns {remote.path}",
        f"ip addr add {HOST_V4}/24 dev up0",
        f"ip addr add {HOST_V6}/64 dev up0 nodad",
        "ip link set up0 up",
    ):
        run_command(command.split())
    for command in (
        "ip link set lo up",
        f"ip addr add {GATEWAY_V4}/24 dev rem0",
        f"ip addr add {GATEWAY_V6}/64 dev rem0 nodad",
        f"ip addr add {REMOTE_V4}/32 dev lo",
        f"ip addr add {REMOTE_V6}/128 dev lo",
        "ip link set rem0 up",
        f"ip route replace 198.51.100.0/24 dev rem0 src {REMOTE_V4}",
        # metric 256: replace the kernel's prefix route, not add a second one behind it
        f"ip route replace 2001:db8:1::/64 dev rem0 src {REMOTE_V6} metric 256",
    ):
        remote.run(command.split())
    run_command(["ip", "route", "add", "default", "via", GATEWAY_V4])
    run_command(["ip", "-6", "route", "add", "default", "via", GATEWAY_V6])


def _start_servers(remote: Netns, log: Path) -> None:
    """servers.py and one iperf3 per service address; returns once all are listening."""
    with log.open("ab") as out:
        addresses = itertools.chain.from_iterable(("--address", a) for a in REMOTE_ADDRESSES)
        remote.popen([sys.executable, str(SERVERS_PY), *addresses], stdout=out, stderr=out)
        for address in REMOTE_ADDRESSES:
            remote.popen(
                ["iperf3", "--server", "--bind", address, "--port", str(IPERF3_PORT)],
                stdout=out,
                stderr=out,
            )
    tcp_ports = (servers.ECHO_PORT, servers.SINK_PORT, servers.SOURCE_PORT, servers.HTTP_PORT)
    wanted = {Endpoint("tcp", a, p) for a in REMOTE_ADDRESSES for p in (*tcp_ports, IPERF3_PORT)}
    wanted |= {Endpoint("udp", a, servers.ECHO_PORT) for a in REMOTE_ADDRESSES}
    try:
        wait_until(lambda: wanted <= remote.listening(), START_TIMEOUT, "remote servers")
    except TimeoutError as e:
        missing = sorted(map(str, wanted - remote.listening()))
        raise TimeoutError(f"{e}; missing {missing}; log:\n{log.read_text()}") from None


@contextlib.contextmanager
def topology(directory: Path) -> Iterator[Topology]:
    """Build the topology in the sandbox; tear all of it down on exit, even half-built."""
    with contextlib.ExitStack() as stack:
        remote = stack.enter_context(Netns.create(directory / "remote"))
        stack.callback(run_command, ["ip", "link", "del", "up0"], check=False)
        _link_remote(remote)
        log = directory / "remote.log"
        _start_servers(remote, log)
        yield Topology(remote, log)


def program_command() -> list[str]:
    """The program under test: $PASTA_NET_CMD (shell words), else this checkout's pasta_net."""
    override = os.environ.get("PASTA_NET_CMD")
    return shlex.split(override) if override else [sys.executable, "-m", "pasta_net"]


def program_env() -> dict[str, str]:
    """Our environment with the checkout first on PYTHONPATH, so `-m pasta_net` is this one."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@attrs.define(eq=False)
class Running:
    """A started instance of the program; stop() ends it by pid."""

    pid: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    """Only in foreground mode, where the process we started is the program itself."""
    returncode: int | None = None
    """Exit code once reaped (negative: killed by that signal)."""
    exited: bool = False

    @property
    def stderr(self) -> str:
        """Everything it wrote so far, stdout merged in (the daemon's parent's included)."""
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Wait for it to exit by itself; TimeoutError if it does not."""
        if not self.exited:
            if self.process is None:
                self.returncode = wait_pid(self.pid, timeout)
            else:
                try:
                    self.returncode = self.process.wait(timeout)
                except subprocess.TimeoutExpired as e:
                    raise TimeoutError(str(e)) from None
            self.exited = True
        return self.returncode

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code (None if not ours to reap)."""
        if not self.exited:
            self._signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except TimeoutError:
                self._signal(signal.SIGKILL)
        return self.wait(timeout)

    def _signal(self, signum: int) -> None:
        """Signal by pid; a test may have reaped it through `process` already."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def _attach_arguments(attach: Attach, container: Container) -> tuple[list[str], list[str]]:
    """(options before the caller's arguments, positional arguments after them)."""
    match attach:
        case "netns":
            return ["--netns", str(container.path)], []
        case "pid":
            return [], [str(container.pid)]
        case None:
            return [], []


@attrs.define(eq=False)
class ProgramRunner:
    """Starts the program under test against a container, and ends every instance by pid."""

    command: list[str]
    workdir: Path
    container: Container
    _running: list[Running] = attrs.field(factory=list)
    _names: Iterator[int] = attrs.field(factory=itertools.count)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self,
        args: Sequence[str],
        attach: Attach = "netns",
        foreground: bool = False,
        timeout: float = START_TIMEOUT,
    ) -> Running:
        """Run `command [-f | -P PIDFILE] [--netns FILE] args [PID]`.

        Daemon mode (the default, as podman runs pasta) waits for the parent to exit, fails
        the test unless that is with 0 within `timeout`, and reads the daemon's pid from
        the pid file. Foreground mode returns at once; readiness is the test's to check.
        """
        name = next(self._names)
        log = self.workdir / f"program-{name}.log"
        pidfile = self.workdir / f"program-{name}.pid"
        options, positional = _attach_arguments(attach, self.container)
        mode = ["-f"] if foreground else ["-P", str(pidfile)]
        argv = [*self.command, *mode, *options, *args, *positional]
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=program_env()
            )
        if foreground:
            return self._track(Running(process.pid, log, process))
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_popen(process)
            pytest.fail(
                f"{shlex.join(argv)} did not return within {timeout}s:\n"
                f"{log.read_text(errors='replace')}"
            )
        if code != 0:
            pytest.fail(f"{shlex.join(argv)} exited {code}:\n{log.read_text(errors='replace')}")
        return self._track(Running(int(pidfile.read_text()), log))

    def _track(self, running: Running) -> Running:
        self._running.append(running)
        return running

    def run_cli(self, args: Sequence[str], timeout: float = START_TIMEOUT) -> CliResult:
        """Run to completion with captured output, for usage and bad-input tests."""
        result = subprocess.run(
            [*self.command, *args],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=program_env(),
            encoding="utf-8",
            errors="replace",
        )
        return CliResult(result.returncode, result.stdout, result.stderr)

    def close(self) -> None:
        for running in reversed(self._running):
            running.stop()
        self._running.clear()
