"""The networking helpers under test, and the no-helper baseline.

Each helper is launched fresh (new container netns) for every group of
tests, in the foreground (`-f`), so that the process we start is the helper:
its pid is what the monitor reads and what we end.  Startup is timed from
just before the spawn to the first TCP connect that succeeds from inside the
container, by a probe that is already looping there.
"""

from __future__ import annotations

import json
import os
import selectors
import shlex
import socket
import subprocess
import time

from procmon import Monitor
from sandbox import (
    BASE_CT,
    BASE_GW,
    BASE_IPERF_PORT,
    ECHO_PORT,
    IPERF_PORT,
    REMOTE_IP,
    Sandbox,
    drop_netns,
    log,
    new_netns,
    sh,
    spawn,
    spawn_group,
    stop,
    tcp_ready,
)

# pasta's own argv, which the candidate gets too.  {NETNS}: the container's
# netns file; {PID}: a process in it; {TCP_FWD}: the forwarded port spec.
# --runas 0: as root of a user namespace pasta would switch to nobody.
# -u/-T/-U none: pasta's default "auto" would scan and bind ports in both
# directions; only the measured forward should exist.
PASTA_ARGS = "-f --runas 0 -t {TCP_FWD} -u none -T none -U none --config-net --netns {NETNS}"
DEFAULT_MTU = 65520  # pasta's default; other MTUs add "-m MTU" / "--mtu=MTU"


class HelperFailed(RuntimeError):
    """The helper could not be started or died; the message names its log."""


def port_list(spec: str) -> list[int]:
    """Ports of a pasta-style spec: "5201" or "10000-10999" (comma lists too)."""
    ports: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        ports += range(int(lo), int(hi or lo) + 1)
    return ports


class Helper:
    """Common launch logic: container netns, probe, spawn, monitor."""

    kind = "helper"

    def __init__(self, name: str, work: str, nbtool: str) -> None:
        self.name, self.work, self.nbtool = name, work, nbtool
        self.ns: str | None = None
        self.mon: Monitor | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = ""
        self.fwd_port = IPERF_PORT
        self._aux: list[subprocess.Popen] = []

    # -- to be filled in by each kind
    def argv(self, mtu: int, fwd: str, holder_pid: int) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def cwd(self) -> str | None:
        return None

    def after_start(self, fwd: str) -> None:
        """Set-up that the helper does not do from its command line."""

    # -- life cycle
    def start(self, sb: Sandbox, mtu: int, fwd: str, tag: str, timeout: float) -> dict:
        """Launch into a fresh container netns; returns startup figures.
        Raises HelperFailed (with the log path) if the container never gets
        connectivity or the forward never opens."""
        self.ns = new_netns(self.work, f"c-{self.name}")
        holder = self._aux_spawn(["sleep", "infinity"])
        self._aux_spawn(
            ["iperf3", "-s", "-p", str(IPERF_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = self._aux_spawn(
            [self.nbtool, "probe", REMOTE_IP, str(ECHO_PORT), str(timeout)],
            stdout=subprocess.PIPE,
            text=True,
        )
        if probe.stdout.readline().strip() != "ready":
            raise HelperFailed("startup probe did not start")
        argv = self.argv(mtu, fwd, holder.pid)
        self.log_path = os.path.join(self.work, f"{self.name}-{tag}.log")
        log(f"  start: {shlex.join(argv)}")
        with open(self.log_path, "w") as logf:
            t0 = time.monotonic()
            self.proc = spawn_group(
                argv, stdout=logf, stderr=subprocess.STDOUT, env=self.env(), cwd=self.cwd()
            )
        self.mon = Monitor(self.proc.pid)
        connected_at = self._await_probe(probe, timeout)
        self.after_start(fwd)
        last = port_list(fwd)[-1]
        self._await_forward(last, timeout)
        return {
            "startup_ms": (connected_at - t0) * 1000,
            "fwd_ready_ms": (time.monotonic() - t0) * 1000,
        }

    def _aux_spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        p = spawn(argv, ns=self.ns, **kw)
        self._aux.append(p)
        return p

    def _failed(self, what: str) -> HelperFailed:
        return HelperFailed(f"{self.name}: {what}; log: {self.log_path}")

    def check_alive(self) -> None:
        """Raise HelperFailed if the helper has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise self._failed(f"exited with status {self.proc.returncode}")

    def _await_probe(self, probe: subprocess.Popen, timeout: float) -> float:
        """CLOCK_MONOTONIC of the probe's first connect; fails at once if the
        helper exits instead of waiting out the probe's timeout."""
        sel = selectors.DefaultSelector()
        sel.register(probe.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout + 1
        while time.monotonic() < deadline:
            if sel.select(0.05):
                line = probe.stdout.readline()
                if line.startswith("connected_at="):
                    return float(line.split()[0].split("=")[1])
                self.check_alive()
                raise self._failed(f"container never connected ({line.strip()})")
            self.check_alive()
        raise self._failed("startup probe timed out")

    def _await_forward(self, port: int, timeout: float) -> None:
        """The forwarded port (the last of a range) accepts on the host's loopback."""
        deadline = time.monotonic() + timeout
        while not tcp_ready("127.0.0.1", port):
            self.check_alive()
            if time.monotonic() > deadline:
                raise self._failed(f"forwarded port {port} never opened")
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> dict:
        """End the helper and its container; returns CPU and RSS of the run."""
        out: dict = {}
        if self.mon is not None:
            out = {"cpu_s": self.mon.cpu_seconds(), "rss_mib": self.mon.peak_rss_mib()}
            self.mon.close()
        if self.proc is not None:
            if self.proc.poll() is not None:
                out["exited_early"] = self.proc.returncode
                log(f"  WARNING: {self.name} exited early, status {self.proc.returncode}")
            stop(self.proc)
        for p in reversed(self._aux):
            stop(p)
        if self.ns:
            drop_netns(self.ns)
        self.proc, self.mon, self.ns, self._aux = None, None, None, []
        return out


class PastaLike(Helper):
    """pasta itself, or a candidate that takes pasta's command line."""

    kind = "pasta"

    def __init__(
        self,
        name: str,
        work: str,
        nbtool: str,
        cmd: list[str],
        args: str,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        super().__init__(name, work, nbtool)
        self.cmd, self.args, self._env, self._cwd = cmd, args, env, cwd

    def argv(self, mtu: int, fwd: str, holder_pid: int) -> list[str]:
        """-m goes first, so that a template ending in a positional PID still works."""
        mtu_args = [] if mtu == DEFAULT_MTU else ["-m", str(mtu)]
        fields = {"NETNS": self.ns, "PID": holder_pid, "TCP_FWD": fwd}
        return self.cmd + mtu_args + [a.format(**fields) for a in shlex.split(self.args)]

    def env(self) -> dict[str, str] | None:
        return None if self._env is None else {**os.environ, **self._env}

    def cwd(self) -> str | None:
        return self._cwd


class Slirp4netns(Helper):
    """slirp4netns: configures the tap itself; forwards come through its API."""

    kind = "slirp4netns"

    def argv(self, mtu: int, fwd: str, holder_pid: int) -> list[str]:
        self.api = os.path.join(self.work, f"{self.name}.api")
        if os.path.exists(self.api):
            os.unlink(self.api)
        return [
            "slirp4netns", "--configure", f"--mtu={mtu}", "--disable-host-loopback",
            "--api-socket", self.api, str(holder_pid), "tap0",
        ]  # fmt: skip

    def after_start(self, fwd: str) -> None:
        """One add_hostfwd call per port: slirp4netns has no port ranges."""
        deadline = time.monotonic() + 5
        while not os.path.exists(self.api):
            self.check_alive()
            if time.monotonic() > deadline:
                raise self._failed("API socket never appeared")
            time.sleep(0.01)
        for port in port_list(fwd):
            self._hostfwd(port)

    def _hostfwd(self, port: int) -> None:
        req = {
            "execute": "add_hostfwd",
            "arguments": {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": port,
                          "guest_port": port},
        }  # fmt: skip
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.api)
            s.sendall(json.dumps(req).encode())
            reply = s.recv(4096).decode()
        if "error" in reply:
            raise self._failed(f"add_hostfwd {port}: {reply}")


class Baseline(Helper):
    """No helper: a container netns on a veth, routed by the sandbox host's
    kernel.  This is the machine's ceiling for the same clients, not a helper;
    it has no forward (the forward rows use an iperf3 server in the sandbox
    host instead), no startup, RSS or CPU."""

    kind = "baseline"

    def start(self, sb: Sandbox, mtu: int, fwd: str, tag: str, timeout: float) -> dict:
        self.ns = new_netns(self.work, "c-baseline")
        self.fwd_port = BASE_IPERF_PORT
        sh(
            "ip link add veth-c type veth peer name ct0; "
            f"ip link set ct0 netns {self.ns}; "
            f"ip addr add {BASE_GW}/24 dev veth-c; "
            f"ip link set veth-c mtu {mtu} up; "
            "echo 1 > /proc/sys/net/ipv4/ip_forward"
        )
        sh(
            f"ip addr add {BASE_CT}/24 dev ct0; ip link set ct0 mtu {mtu} up; "
            f"ip route add default via {BASE_GW}",
            ns=self.ns,
        )
        return {}

    def stop(self) -> dict:
        """The veth pair goes first (a dying netns frees it only later, and the
        next baseline run reuses the name); forwarding goes off again so that
        helper runs see an ordinary, non-router sandbox host."""
        sh("ip link del veth-c 2>/dev/null || true; echo 0 > /proc/sys/net/ipv4/ip_forward")
        if self.ns:
            drop_netns(self.ns)
        self.ns = None
        return {}
