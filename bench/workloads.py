"""The measured work: iperf3 bulk TCP/UDP, 1-byte RR and CRR, through a helper.

Every client runs in the helper's container netns (the baseline's veth
container for "baseline"), except the forward rows, whose clients run in the
sandbox host (to 127.0.0.1, pasta's splice path) and in the remote (to the
host's address, pasta's tap path).  A failed test is recorded as missing and
the run goes on: a broken candidate must not stop the others.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

from helpers import Helper
from sandbox import ECHO_PORT, HOST_IP, IPERF_PORT, REMOTE_IP, Sandbox, in_ns, log

TIMEOUT_COUNTER = "TcpExtTCPTimeouts"


def iperf(ns: str | None, args: list[object], secs: int) -> dict:
    """Run an iperf3 client, return the "end" section of its JSON report.
    --connect-timeout keeps a dead path from hanging on SYN retries."""
    argv = ["iperf3", "-J", "-t", str(secs), "--connect-timeout", "3000"]
    r = subprocess.run(
        in_ns(ns, argv + [str(a) for a in args]),
        capture_output=True,
        text=True,
        timeout=secs + 30,
        check=False,
    )
    try:
        report = json.loads(r.stdout)
    except ValueError:
        raise RuntimeError(r.stderr.strip() or r.stdout.strip() or "no output") from None
    if "error" in report:
        raise RuntimeError(report["error"])
    return report["end"]


def nbtool_kv(nbtool: str, ns: str | None, *args: object, timeout: float) -> dict[str, str]:
    """Run an nbtool client and parse its key=value line."""
    r = subprocess.run(
        in_ns(ns, [nbtool] + [str(a) for a in args]),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    kv = dict(item.split("=", 1) for item in r.stdout.split() if "=" in item)
    if r.returncode != 0 or not kv:
        raise RuntimeError(f"nbtool {args[0]} failed: {r.stdout.strip()} {r.stderr.strip()}")
    return kv


def nstat(ns: str | None, counter: str) -> int:
    """Absolute value of a kernel counter in netns `ns` (-a: no history
    file, -s: do not write one, -z: print it even when zero)."""
    r = subprocess.run(
        in_ns(ns, ["nstat", "-azs", counter]), capture_output=True, text=True, check=True
    )
    for line in r.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == counter:
            return int(fields[1])
    raise RuntimeError(f"nstat: no {counter}")


def gbps(end: dict, key: str = "sum_received") -> float:
    return end[key]["bits_per_second"] / 1e9


class Runner:
    """Runs tests for one launched helper and collects {metric: value}."""

    def __init__(self, h: Helper, sb: Sandbox, secs: int, nbtool: str) -> None:
        self.h, self.sb, self.secs, self.nbtool = h, sb, secs, nbtool
        self.res: dict[str, float | None] = {}

    def measure(self, key: str, fn: Callable[[], float]) -> None:
        """Run one test; record its value (None on failure) and the helper's
        CPU use over it, as % of one core."""
        mon = self.h.mon
        c0, t0 = (mon.cpu_seconds() if mon else 0.0), time.monotonic()
        value = None
        if self.h.mon is not None and not self.h.alive():
            log(f"  {key}: skipped, helper is not running")
        else:
            try:
                value = fn()
            except Exception as e:  # any failure: report as missing, go on
                log(f"  {key}: FAILED {e}")
                self.sb.restart_remote_iperf()
        if mon:
            self.res["cpu%:" + key] = 100 * (mon.cpu_seconds() - c0) / (time.monotonic() - t0)
        self.res[key] = value
        log(f"  {key}: {value if value is None else round(value, 3)}")
        time.sleep(0.5)  # let queues drain between tests

    # -- the tests
    def tcp_out(self, mtu: int) -> None:
        """Container → remote; also the container's RTO count (nstat delta)
        and iperf3's sender retransmissions, which show a stalling helper."""

        def run() -> float:
            before = nstat(self.h.ns, TIMEOUT_COUNTER)
            end = iperf(self.h.ns, ["-c", REMOTE_IP, "-p", IPERF_PORT], self.secs)
            self.res[f"timeouts@{mtu}"] = nstat(self.h.ns, TIMEOUT_COUNTER) - before
            self.res[f"retrans@{mtu}"] = end["sum_sent"].get("retransmits")
            return gbps(end)

        self.measure(f"tcp_out@{mtu}", run)

    def tcp_in(self, mtu: int) -> None:
        """Remote → container (-R: the remote sends)."""
        args = ["-c", REMOTE_IP, "-p", IPERF_PORT, "-R"]
        self.measure(f"tcp_in@{mtu}", lambda: gbps(iperf(self.h.ns, args, self.secs)))

    def fwd_lo(self) -> None:
        """Sandbox host 127.0.0.1 → forwarded port (pasta: spliced sockets)."""
        args = ["-c", "127.0.0.1", "-p", self.h.fwd_port]
        self.measure("fwd_lo", lambda: gbps(iperf(None, args, self.secs)))

    def fwd_tap(self) -> None:
        """Remote → host address → forwarded port (pasta: the tap path)."""
        args = ["-c", HOST_IP, "-p", self.h.fwd_port]
        self.measure("fwd_tap", lambda: gbps(iperf(self.sb.remote, args, self.secs)))

    def udp_out(self, rate: str) -> None:
        """Container → remote UDP at a saturating rate, 1400-byte datagrams
        (no IP fragments on a 1500 uplink); received rate and loss."""

        def run() -> float:
            args = ["-c", REMOTE_IP, "-p", IPERF_PORT, "-u", "-b", rate, "-l", "1400"]
            s = iperf(self.h.ns, args, self.secs)["sum"]
            self.res["udp_loss"] = s["lost_percent"]
            return s["bits_per_second"] / 1e9 * (1 - s["lost_percent"] / 100)

        self.measure("udp_out", run)

    def rr(self) -> None:
        """1-byte request/response on one connection (netperf TCP_RR-like)."""
        self.measure("rr_tps", lambda: self._nbtool_rate("rr", "tps"))

    def crr(self) -> None:
        """Connect, 1-byte request/response, close; repeat (TCP_CRR-like)."""
        self.measure("crr_cps", lambda: self._nbtool_rate("crr", "cps"))

    def _nbtool_rate(self, test: str, key: str) -> float:
        kv = nbtool_kv(
            self.nbtool, self.h.ns, test, REMOTE_IP, ECHO_PORT, self.secs,
            timeout=self.secs + 20,
        )  # fmt: skip
        return float(kv[key])


TESTS = ("tcp_out", "tcp_in", "fwd_lo", "fwd_tap", "udp_out", "rr", "crr")
"""Every row of the main table, in the order they run (``--tests`` picks some)."""


def run_full(
    h: Helper,
    sb: Sandbox,
    secs: int,
    nbtool: str,
    mtu: int,
    udp_rate: str,
    tests: tuple[str, ...] = TESTS,
) -> dict:
    """The chosen rows (default: every row), at the main MTU."""
    r = Runner(h, sb, secs, nbtool)
    steps = {
        "tcp_out": lambda: r.tcp_out(mtu),
        "tcp_in": lambda: r.tcp_in(mtu),
        "fwd_lo": r.fwd_lo,
        "fwd_tap": r.fwd_tap,
        "udp_out": lambda: r.udp_out(udp_rate),
        "rr": r.rr,
        "crr": r.crr,
    }
    for test in tests:
        steps[test]()
    return r.res


def run_bulk(h: Helper, sb: Sandbox, secs: int, nbtool: str, mtu: int) -> dict:
    """Only the bulk TCP rows, at another container MTU."""
    r = Runner(h, sb, secs, nbtool)
    r.tcp_out(mtu)
    r.tcp_in(mtu)
    return r.res
