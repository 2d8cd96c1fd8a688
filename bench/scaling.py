"""Cost per flow and per forwarded port (optional: `--scaling`).

Each point launches the helper afresh, so that memory freed by an earlier
point cannot hide in the allocator and be counted (or not) twice:
* flows: N idle TCP connections container → remote (nbtool flows/hold),
  opened one after another; helper RSS with all of them open, CPU seconds to
  open them, CPU % while they sit idle;
* ports: the helper forwards N TCP ports (`-t 10000-10999` etc.; slirp4netns
  gets N add_hostfwd calls); RSS, CPU seconds from spawn until the last port
  accepts, that time itself, and idle CPU %.
"""

from __future__ import annotations

import selectors
import subprocess
import time

from helpers import DEFAULT_MTU, Helper
from sandbox import HOLD_PORT, IPERF_PORT, REMOTE_IP, Sandbox, log, spawn, stop

FLOW_COUNTS = (1, 100, 10_000)
PORT_COUNTS = (1, 1_000, 10_000)
PORT_BASE = 10_000


def port_spec(n: int) -> str:
    """pasta's -t argument for n ports starting at PORT_BASE."""
    return str(PORT_BASE) if n == 1 else f"{PORT_BASE}-{PORT_BASE + n - 1}"


def _read_line(p: subprocess.Popen, timeout: float) -> str:
    """One line from p's stdout, or "" on timeout (a stalled helper)."""
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    return p.stdout.readline() if sel.select(timeout) else ""


def _idle(h: Helper, seconds: float) -> float:
    """Helper CPU as % of one core over an idle window."""
    c0, t0 = h.mon.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return 100 * (h.mon.cpu_seconds() - c0) / (time.monotonic() - t0)


def flows_point(h: Helper, sb: Sandbox, n: int, idle: float, tag: str, timeout: float) -> dict:
    """Open n idle flows through a fresh helper; measure while they are open."""
    h.start(sb, DEFAULT_MTU, str(IPERF_PORT), tag, timeout)
    time.sleep(0.5)  # let start-up work settle before the CPU baseline
    c0 = h.mon.cpu_seconds()
    client = spawn(
        [sb.nbtool, "flows", REMOTE_IP, str(HOLD_PORT), str(n)],
        ns=h.ns,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(client, 30 + n / 50)
        kv = dict(item.split("=", 1) for item in line.split() if "=" in item)
        opened = int(kv.get("open", 0))
        if opened < n:
            raise RuntimeError(f"{opened} of {n} flows opened ({line.strip() or 'timeout'})")
        out = {f"flows{n}:open_cpu_s": h.mon.cpu_seconds() - c0}
        out[f"flows{n}:idle_cpu%"] = _idle(h, idle)
        out[f"flows{n}:rss_mib"] = h.mon.rss_now_mib()
        h.check_alive()  # figures of a helper that died meanwhile mean nothing
        return out
    finally:
        client.stdin.close()
        stop(client)


def ports_point(h: Helper, sb: Sandbox, n: int, idle: float, tag: str, timeout: float) -> dict:
    """Launch a fresh helper forwarding n ports; start() already waits until
    the last one accepts connections on the host's loopback."""
    started = h.start(sb, DEFAULT_MTU, port_spec(n), tag, timeout)
    out = {
        f"ports{n}:ready_ms": started["fwd_ready_ms"],
        f"ports{n}:setup_cpu_s": h.mon.cpu_seconds(),
    }
    out[f"ports{n}:idle_cpu%"] = _idle(h, idle)
    out[f"ports{n}:rss_mib"] = h.mon.rss_now_mib()
    h.check_alive()
    return out


def run_scaling(h: Helper, sb: Sandbox, rep: int, idle: float, timeout: float) -> dict:
    """All points for one helper; a failed point leaves its values missing."""
    res: dict = {}
    points = [("flows", n, flows_point) for n in FLOW_COUNTS]
    points += [("ports", n, ports_point) for n in PORT_COUNTS]
    for what, n, fn in points:
        tag = f"{what}{n}-rep{rep}"
        log(f"  scaling: {n} {what}")
        try:
            res.update(fn(h, sb, n, idle, tag, timeout))
        except Exception as e:  # report as missing, keep going
            log(f"  scaling {what} {n}: FAILED {e}")
            res.setdefault("scaling_errors", []).append(f"{what} {n}: {e}")
            res.setdefault("scaling_log", h.log_path)
        finally:
            h.stop()
    return res
