"""Command line entry points: ``pasta-net`` (and ``pasta``/``passt`` by argv[0]).

Invoked under a name containing "passt" (``passt-net``, a ``passt`` link) the program
behaves as passt; under any other name as pasta, and it prints its errors under that
name (podman matches ``pasta: unrecognized option '--map-guest-addr'`` to retry without
that option). ``--passt`` as the very first argument also selects passt mode: the mode
decides which options exist, so it is chosen before getopt runs, like argv[0].
``pasta-net ctl PATH ...`` is the control client (ctl.py); only under the name
pasta-net, because ``pasta ctl`` must run a command named ctl, as pasta would.
Usage errors exit 1, as glibc getopt does for pasta.

Start-up order: ``main`` forks the netlink helper (:mod:`pasta_net.netlink`) before
anything else loads, so that pyroute2 loads in the child on one core while we load
options, attrs, trio and the engine on the other (this is why :func:`_run` imports what
it needs itself). Forked after the options had loaded, the helper finished about 50 ms
after our imports, and we waited for it.
The garbage collector is off until we serve (``launch.serve_frames`` turns it back on):
start-up makes no garbage cycles, and collecting while it creates a few hundred classes
cost about 8% of its imports.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

from pasta_net.netlink import NetconfError, NetlinkHelper

__all__ = ["main"]


def program_name(argv0: str) -> tuple[str, bool]:
    """``(name for messages, passt mode?)`` from how we were invoked."""
    name = os.path.basename(argv0)
    if name in ("__main__.py", "") or name.startswith("python"):
        name = "pasta-net"
    return name, "passt" in name


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog, passt = program_name(argv[0] if argv else "pasta-net")
    args = argv[1:]
    if prog == "pasta-net" and args[:1] == ["ctl"]:
        from pasta_net import ctl

        return ctl.main(args[1:])
    if args[:1] == ["--passt"]:
        passt, args = True, args[1:]
    gc.disable()
    try:
        netlink = NetlinkHelper.start()
    except NetconfError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    try:
        return _run(args, prog, passt, netlink)
    finally:
        netlink.close()  # done already, unless we did not get that far
        gc.enable()


def _run(args: list[str], prog: str, passt: bool, netlink: NetlinkHelper) -> int:
    from pasta_net.options import (
        Action,
        Mode,
        UsageError,
        ephemeral_ports,
        help_text,
        parse_args,
        version_text,
    )

    try:
        options = parse_args(args, prog=prog, passt=passt, ephemeral=ephemeral_ports())
    except UsageError as exc:
        sys.stderr.write(exc.render())
        return 1
    if options.action is Action.HELP:
        sys.stdout.write(help_text(prog, passt=passt))
        return 0
    if options.action is Action.VERSION:
        sys.stdout.write(version_text(prog))
        return 0
    netlink.ask_host(*options.host_query)
    if options.mode is Mode.PASST:
        from pasta_net import passt as passt_mode

        return passt_mode.run(options, prog, netlink)
    from pasta_net import launch

    return launch.run(options, prog, netlink)
