"""CPU time and memory of a helper's process tree, read from /proc.

A helper may fork (a Python helper could do set-up in a child), so every
figure is the sum over the helper and all its descendants.  CPU includes
cutime/cstime, so children that already exited still count.
"""

from __future__ import annotations

import os
import threading
import time

CLK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_tree(root: int) -> list[int]:
    """Pids of root and all its descendants."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            kids.setdefault(int(_stat_fields(int(d))[1]), []).append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """Selected kB fields of /proc/PID/status (VmRSS, VmHWM)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in keys:
                out[key] = int(line.split()[1])
    return out


class Monitor(threading.Thread):
    """Samples the tree every 50 ms: the peak of summed VmRSS is only visible
    while it happens, and pids that exit must keep their last CPU figure."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.cpu: dict[int, float] = {}
        self.hwm: dict[int, int] = {}
        self.rss_kib = 0
        self.peak_rss_kib = 0
        self.running = True
        self._lock = threading.Lock()
        self.start()

    def sample(self) -> None:
        """One pass over the tree; updates CPU per pid, RSS and its peak."""
        rss = 0
        for pid in proc_tree(self.pid):
            try:
                st = _stat_fields(pid)
                vm = _status_kib(pid, ("VmRSS", "VmHWM"))
            except (OSError, IndexError, ValueError):
                continue
            with self._lock:
                # utime stime cutime cstime: fields 14-17 of stat
                self.cpu[pid] = sum(int(x) for x in st[11:15]) / CLK
                self.hwm[pid] = vm.get("VmHWM", 0)
            rss += vm.get("VmRSS", 0)
        self.rss_kib = rss
        self.peak_rss_kib = max(self.peak_rss_kib, rss)

    def run(self) -> None:
        while self.running:
            self.sample()
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the tree (a fresh sample first)."""
        self.sample()
        with self._lock:
            return sum(self.cpu.values())

    def rss_now_mib(self) -> float:
        """Current summed VmRSS of the tree."""
        self.sample()
        return self.rss_kib / 1024

    def peak_rss_mib(self) -> float:
        """Peak summed RSS; VmHWM catches peaks between two samples."""
        self.sample()
        with self._lock:
            hwm = sum(self.hwm.values())
        return max(self.peak_rss_kib, hwm) / 1024

    def close(self) -> None:
        self.running = False
