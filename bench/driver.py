"""pasta-net bench driver.  Do not run directly: `bench/run` puts it in a
private user + net + mount namespace (the sandbox "host") first.

For each repetition and helper (baseline, pasta, slirp4netns, the pasta-net
candidate) it launches the helper into a fresh container netns, runs the
work of workloads.py, ends the helper, and at the end prints one Markdown
table of medians with ratios to pasta (stdout); progress goes to stderr,
logs and raw.json stay in the work directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile

import report
from helpers import PASTA_ARGS, Baseline, Helper, PastaLike, Slirp4netns
from sandbox import IPERF_PORT, Sandbox, log
from scaling import run_scaling
from workloads import TESTS, run_bulk, run_full

NOFILE = 65536  # 10,000 idle flows / forwarded ports need more than 1024 fds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nbtool", required=True, help="compiled nbtool (bench/run builds it)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the candidate")
    ap.add_argument("--repo", default="", help="PYTHONPATH and cwd of the candidate")
    ap.add_argument("--helpers", help="comma list (default: baseline,pasta,slirp4netns,NAME)")
    ap.add_argument("--candidate", default="{PYTHON} -m pasta_net", help="candidate command")
    ap.add_argument("--candidate-name", default="pasta-net")
    ap.add_argument("--candidate-args", default=PASTA_ARGS, help="default: pasta's argv")
    ap.add_argument("--pasta-args", default=PASTA_ARGS)
    ap.add_argument("--reps", type=int, default=3, help="repetitions; the median is reported")
    ap.add_argument("--time", type=int, default=5, help="seconds per throughput/rate test")
    ap.add_argument("--udp-rate", default="0", help="iperf3 -b for UDP (0: unlimited)")
    ap.add_argument("--veth-mtu", type=int, default=1500, help="MTU of the uplink veth")
    ap.add_argument("--mtus", default="65520,1500", help="container MTUs; all rows at the first")
    ap.add_argument(
        "--tests",
        default=",".join(TESTS),
        help=f"comma list of main rows to run (default: all of {','.join(TESTS)})",
    )
    ap.add_argument("--startup-timeout", type=float, default=20.0)
    ap.add_argument("--scaling", action="store_true", help="add the flows/ports section")
    ap.add_argument("--scaling-only", action="store_true", help="only the scaling section")
    ap.add_argument("--idle", type=float, default=3.0, help="idle window of scaling points, s")
    return ap.parse_args(argv)


def make_helpers(a: argparse.Namespace, work: str) -> dict[str, Helper]:
    """All helpers by name; the candidate runs the working tree's pasta_net."""
    cmd = shlex.split(a.candidate.format(PYTHON=a.python))
    env = {"PYTHONPATH": a.repo, "PYTHONUNBUFFERED": "1"} if a.repo else {"PYTHONUNBUFFERED": "1"}
    return {
        "baseline": Baseline("baseline", work, a.nbtool),
        "pasta": PastaLike("pasta", work, a.nbtool, ["pasta"], a.pasta_args),
        "slirp4netns": Slirp4netns("slirp4netns", work, a.nbtool),
        a.candidate_name: PastaLike(
            a.candidate_name, work, a.nbtool, cmd, a.candidate_args, env=env, cwd=a.repo or None
        ),
    }


def run_helper(h: Helper, sb: Sandbox, a: argparse.Namespace, rep: int) -> dict:
    """One repetition of the main rows for one helper: all rows at the first
    MTU, then the bulk TCP rows at each further MTU, each in a fresh launch."""
    mtus = [int(m) for m in a.mtus.split(",")]
    res: dict = {}
    for i, mtu in enumerate(mtus):
        started = None
        try:
            started = h.start(sb, mtu, str(IPERF_PORT), f"mtu{mtu}-rep{rep}", a.startup_timeout)
            if i == 0:
                res["startup_ms"] = started.get("startup_ms")
                tests = tuple(a.tests.split(","))
                res.update(run_full(h, sb, a.time, a.nbtool, mtu, a.udp_rate, tests))
            else:
                res.update(run_bulk(h, sb, a.time, a.nbtool, mtu))
        except Exception as e:  # the helper failed: its cells stay "–"
            log(f"  {h.name} FAILED: {e}")
            _note_error(res, h, str(e))
        finally:
            stopped = h.stop()
        if "exited_early" in stopped and started is not None:
            _note_error(res, h, f"exited early, status {stopped['exited_early']}")
        if i == 0 and started is not None:  # RSS/CPU of a failed start mean nothing
            res.update({k: stopped.get(k) for k in ("cpu_s", "rss_mib")})
    return res


def _note_error(res: dict, h: Helper, msg: str) -> None:
    res.setdefault("errors", []).append(msg)
    if h.log_path:
        res.setdefault("log", h.log_path)


def versions(a: argparse.Namespace) -> str:
    """One line naming what was measured, for the report's header."""

    def first_line(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "?"
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"

    passt = first_line(["dpkg-query", "-W", "-f", "${Version}", "passt"])
    slirp = first_line(["slirp4netns", "--version"]).replace("slirp4netns version ", "")
    iperf = first_line(["iperf3", "--version"]).split(" (")[0]
    commit = os.environ.get("BENCH_COMMIT", "?")
    return (
        f"kernel {platform.release()}, {os.cpu_count()} CPUs; pasta (passt) {passt}, "
        f"slirp4netns {slirp}, {iperf}; {a.candidate_name} at {commit}"
    )


def print_report(results: dict, names: list[str], a: argparse.Namespace, work: str) -> None:
    """The Markdown report on stdout."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    mtus = [int(m) for m in a.mtus.split(",")]
    print(f"## pasta-net bench, {now}\n")
    print(
        f"Median of {a.reps} repetition(s), {a.time} s per test; uplink veth MTU {a.veth_mtu}; "
        f"container MTU {mtus[0]} unless the row says otherwise; UDP rate {a.udp_rate} "
        f"(0 = unlimited). Ratios: helper / pasta of the medians (higher is better for "
        f"Gbit/s and rates, lower for loss, RTOs, retransmissions, RSS, CPU, startup). "
        f"{versions(a)}. Logs and raw.json: {work}\n"
    )
    if not a.scaling_only:
        print(report.table(results, names, report.main_rows(mtus)))
    if a.scaling or a.scaling_only:
        hn = [n for n in names if n != "baseline"]
        title = "Scaling: helper cost per idle flow and per forwarded port"
        print(f"\n### {title} ({a.idle:g} s idle windows)\n")
        print(report.table({n: results[n] for n in hn}, hn, report.scaling_rows(), "scaling_"))


def raise_nofile() -> None:
    """Children inherit the soft limit: slirp4netns and the flow tools need
    more than 1024 descriptors for the 10,000-flow and 10,000-port points."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run_all(a: argparse.Namespace, names: list[str], helpers: dict, sb: Sandbox) -> dict:
    """Repetitions outermost, so that a slow drift of the machine spreads
    over all helpers instead of biasing one."""
    results: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(1, a.reps + 1):
        for n in names:
            h = helpers[n]
            log(f"[rep {rep}/{a.reps}] {n}")
            r = {} if a.scaling_only else run_helper(h, sb, a, rep)
            if (a.scaling or a.scaling_only) and n != "baseline":
                r.update(run_scaling(h, sb, rep, a.idle, max(a.startup_timeout, 60)))
                report.add_derived(r)
            results[n].append(r)
    return results


def main() -> None:
    a = parse_args()
    os.environ["PATH"] += ":/usr/sbin:/sbin"
    raise_nofile()
    work = tempfile.mkdtemp(prefix="pasta-net-bench.")
    os.chmod(work, 0o755)
    log(f"work dir (logs, raw.json): {work}")
    helpers = make_helpers(a, work)
    names = (a.helpers or f"baseline,pasta,slirp4netns,{a.candidate_name}").split(",")
    unknown = [n for n in names if n not in helpers]
    if unknown:
        sys.exit(f"unknown helper(s) {unknown}; known: {sorted(helpers)}")
    sb = Sandbox(work, a.nbtool, a.veth_mtu)
    results: dict = {}
    try:
        sb.setup()
        results = run_all(a, names, helpers, sb)
    finally:
        for h in helpers.values():
            h.stop()
        sb.teardown()
        with open(os.path.join(work, "raw.json"), "w") as f:
            json.dump(results, f, indent=1)
    print_report(results, names, a, work)


if __name__ == "__main__":
    main()
