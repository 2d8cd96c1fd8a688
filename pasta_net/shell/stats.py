"""Statistics in the log: ``--stats DELAY`` (pasta's option), and the debug log.

The counters are those of the control socket's ``stats`` (shell/control.py): flows by
protocol, frames and bytes each way, dropped frames and events by reason. A line is
written at most every ``DELAY`` seconds and only when a counter moved since the last
one, so an idle instance stays quiet; with ``--debug`` and no ``--stats``, every
:data:`DEBUG_INTERVAL` seconds at debug level.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from pasta_net.shell.control import Controller

__all__ = ["DEBUG_INTERVAL", "format_stats", "log_stats"]

log = logging.getLogger("pasta_net.stats")

DEBUG_INTERVAL = 60.0


def format_stats(stats: Mapping) -> str:
    """One line from the ``stats`` JSON of the control socket."""
    flows = " ".join(f"{proto} {count}" for proto, count in stats["flows"].items())
    drops = ", ".join(f"{why} {count}" for why, count in stats["drops"].items()) or "none"
    return (f"flows: {flows}; from ns: {stats['from_ns']['frames']} frames "
            f"{stats['from_ns']['bytes']} bytes; to ns: {stats['to_ns']['frames']} frames "
            f"{stats['to_ns']['bytes']} bytes; drops: {drops}")


async def log_stats(controller: Controller, every: float, level: int) -> None:
    """Log a statistics line every ``every`` seconds while counters change; runs until
    cancelled with the rest of the serving nursery."""
    last: dict | None = None
    while True:
        await trio.sleep(every)
        stats = controller.stats().to_json()
        del stats["uptime"]
        if stats != last:
            last = stats
            log.log(level, "stats: %s", format_stats(stats))
