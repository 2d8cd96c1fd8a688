"""The trio main: the hub, the watch on the target namespace, signals, the ready signal.

Everything long-lived is a task of one nursery, so that any of them ending (the netns
deleted, SIGTERM, the spawned command exiting) cancels the rest and the ``finally``
blocks close the tap, every socket and every listener before the process exits: a
container restarted at once must be able to bind the same ports again.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import trio

from pasta_net.shell.hub import Hub

__all__ = ["serve"]

log = logging.getLogger("pasta_net")


async def serve(
    hub: Hub,
    gone: Callable[[], Awaitable[object]],
    ready: Callable[[], None],
    setup: Callable[[Hub, trio.Nursery], Awaitable[None]] | None = None,
    forward: Callable[[int], None] | None = None,
) -> str:
    """Run until ``gone()`` returns or a terminating signal arrives; return why we stopped.

    ``setup`` runs once the hub is serving (listeners, auto-forward scanners) and before
    ``ready()``, which tells whoever started us that the namespace is usable.

    ``forward`` (a command we spawned): SIGTERM and SIGHUP go to the command instead,
    whose exit ends us through ``gone()``; a second one ends us (an interactive shell
    ignores SIGTERM). SIGINT is the command's alone, since a terminal's Ctrl-C reaches
    its whole foreground group: a shell that ignores it at its prompt must not lose its
    network.
    """
    reason = "cancelled"
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(hub.run)
                if setup is not None:
                    await setup(hub, nursery)
                ready()

                async def watch_target() -> None:
                    nonlocal reason
                    why = await gone()  # a str says why, when it is not the namespace
                    reason = why if isinstance(why, str) else "target namespace gone"
                    nursery.cancel_scope.cancel()

                async def watch_signals() -> None:
                    nonlocal reason
                    forwarded = False
                    async for signum in signals:
                        if forward is not None:
                            if signum == signal.SIGINT:
                                continue  # the command's alone
                            if not forwarded:
                                forward(signum)
                                forwarded = True
                                continue
                        reason = f"signal {signal.Signals(signum).name}"
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch_target)
                nursery.start_soon(watch_signals)
    finally:
        hub.close()
    log.info("exiting: %s", reason)
    return reason
