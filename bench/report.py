"""Markdown tables of medians, with each helper's ratio to pasta.

A missing value (failed test, failed helper) prints as "–"; a helper that
failed gets a "status" row naming its log, so a broken candidate shows up as
a column of dashes with a pointer to why.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from scaling import FLOW_COUNTS, PORT_COUNTS

REF = "pasta"  # ratios are helper / pasta
DASH = "–"

# (key, label, unit): a row of the main table
Row = tuple[str, str, str]

TEST_KEYS = ("fwd_lo", "fwd_tap", "udp_out", "rr_tps", "crr_cps")


def bulk_rows(mtu: int) -> list[Row]:
    """The bulk TCP rows for one container MTU."""
    return [
        (f"tcp_out@{mtu}", f"a. TCP container → remote, MTU {mtu}", "Gbit/s"),
        (f"timeouts@{mtu}", "a. … container RTOs (nstat TcpExtTCPTimeouts Δ)", "count"),
        (f"retrans@{mtu}", "a. … sender retransmitted segments (iperf3)", "count"),
        (f"tcp_in@{mtu}", f"a. TCP remote → container (-R), MTU {mtu}", "Gbit/s"),
    ]


def main_rows(mtus: Sequence[int]) -> list[Row]:
    """Rows of the main table, in the order of the issue's list."""
    rows: list[Row] = []
    for mtu in mtus:
        rows += bulk_rows(mtu)
    rows += [
        ("fwd_lo", "b. TCP host 127.0.0.1:5201 → fwd → container (splice)", "Gbit/s"),
        ("fwd_tap", "b. TCP remote → 198.51.100.1:5201 → fwd → container (tap)", "Gbit/s"),
        ("udp_out", "c. UDP container → remote, received", "Gbit/s"),
        ("udp_loss", "c. UDP loss", "%"),
        ("rr_tps", "d. TCP RR, 1-byte ping-pong", "trans/s"),
        ("crr_cps", "e. TCP connect + 1-byte xact + close", "conn/s"),
        ("startup_ms", "f. startup → first TCP connect from the container", "ms"),
        ("rss_mib", f"g. helper peak RSS (MTU {mtus[0]} run)", "MiB"),
        ("cpu_s", f"g. helper CPU, whole MTU {mtus[0]} run", "s"),
    ]
    keys = [f"tcp_out@{mtus[0]}", f"tcp_in@{mtus[0]}", *TEST_KEYS]
    rows += [(f"cpu%:{k}", f"h. helper CPU during {k}", "% of 1 core") for k in keys]
    return rows


def scaling_rows() -> list[Row]:
    """Rows of the optional scaling table."""
    rows: list[Row] = []
    for n in FLOW_COUNTS:
        what = plural(n, "idle flow")
        rows += [
            (f"flows{n}:rss_mib", f"{what}: helper RSS", "MiB"),
            (f"flows{n}:open_cpu_s", f"{what}: CPU to open them", "s"),
            (f"flows{n}:idle_cpu%", f"{what}: CPU while idle", "% of 1 core"),
        ]
    rows.append(("per_flow_kib", f"RSS per extra flow ({FLOW_COUNTS[-1]:,} vs 1)", "KiB"))
    for n in PORT_COUNTS:
        what = plural(n, "forwarded port")
        rows += [
            (f"ports{n}:rss_mib", f"{what}: helper RSS", "MiB"),
            (f"ports{n}:ready_ms", f"{what}: spawn → last port accepts", "ms"),
            (f"ports{n}:setup_cpu_s", f"{what}: CPU until then", "s"),
            (f"ports{n}:idle_cpu%", f"{what}: CPU while idle", "% of 1 core"),
        ]
    rows.append(("per_port_kib", f"RSS per extra port ({PORT_COUNTS[-1]:,} vs 1)", "KiB"))
    return rows


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def add_derived(rep: dict) -> None:
    """Per-flow and per-port memory cost from the first and last points."""
    for what, counts, key in (("flows", FLOW_COUNTS, "per_flow_kib"),
                              ("ports", PORT_COUNTS, "per_port_kib")):  # fmt: skip
        lo, hi = rep.get(f"{what}{counts[0]}:rss_mib"), rep.get(f"{what}{counts[-1]}:rss_mib")
        if lo is not None and hi is not None:
            rep[key] = (hi - lo) * 1024 / (counts[-1] - counts[0])


def median(reps: list[dict], key: str) -> float | None:
    vals = [r[key] for r in reps if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None) -> str:
    if v is None:
        return DASH
    if abs(v) < 0.005:
        return "0"  # not "-0.00" for a difference that is noise
    if float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


def ratio(v: float | None, ref: float | None) -> str:
    """v / ref; none when either is missing or ref is not positive (a zero
    count or a noise-level difference would give a meaningless ratio)."""
    return f"{v / ref:.2f}×" if v is not None and ref is not None and ref > 0 else DASH


def status(reps: list[dict], prefix: str) -> str:
    """Either "ok", or how many repetitions failed and the first log to read.
    prefix selects the main ("") or the scaling ("scaling_") errors."""
    bad = [r for r in reps if r.get(f"{prefix}errors")]
    if not bad:
        return "ok"
    where = bad[0].get(f"{prefix}log") or bad[0][f"{prefix}errors"][0]
    return f"failed {len(bad)}/{len(reps)}: {where}"


def table(
    results: dict[str, list[dict]], names: list[str], rows: list[Row], prefix: str = ""
) -> str:
    """One Markdown table: medians per helper, then ratio columns to pasta."""
    others = [n for n in names if n not in ("baseline", REF)] if REF in names else []
    head = ["metric", "unit", *names, *(f"{n}/{REF}" for n in others)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    states = [status(results[n], prefix) for n in names]
    if any(s != "ok" for s in states):
        out.append("| " + " | ".join(["status", "", *states, *[""] * len(others)]) + " |")
    for key, label, unit in rows:
        med = {n: median(results[n], key) for n in names}
        cells = [label, unit, *(fmt(med[n]) for n in names)]
        cells += [ratio(med[n], med[REF]) for n in others]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
