"""``pasta-net ctl PATH COMMAND``: talk to a running instance's ``-c/--control`` socket.

::

    pasta-net ctl PATH add -t 8080:80     prints the new forward's id
    pasta-net ctl PATH remove ID
    pasta-net ctl PATH list [--json]
    pasta-net ctl PATH stats [--json]

Any spec the command line accepts works with ``add`` (``-t``, ``-u``, ``-T``, ``-U``).
One request line, one reply line (core/control.py); exit status 0 on success, 1 with
the server's reason on stderr otherwise. Without ``--json`` the output is for people;
with it, the reply's ``return`` value as JSON, for scripts.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence

__all__ = ["main"]

PROG = "pasta-net ctl"
TIMEOUT = 10.0
_MAX_REPLY = 1 << 24


class CtlError(Exception):
    """The request failed; the message is for stderr."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Control a running pasta-net.")
    parser.add_argument("path", metavar="PATH", help="the instance's -c/--control socket")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser("add", help="add a forward, print its id")
    option = add.add_mutually_exclusive_group(required=True)
    for letter, what in (("t", "TCP, host to namespace"), ("u", "UDP, host to namespace"),
                         ("T", "TCP, namespace to host"), ("U", "UDP, namespace to host")):
        option.add_argument(f"-{letter}", dest="spec", metavar="SPEC",
                            action=_OptionSpec, help=what)
    remove = commands.add_parser("remove", help="remove a forward by id")
    remove.add_argument("id", type=int, metavar="ID")
    for name, text in (("list", "list the forwards"), ("stats", "show statistics")):
        commands.add_parser(name, help=text).add_argument(
            "--json", action="store_true", help="print the reply as JSON")
    return parser


class _OptionSpec(argparse.Action):
    """Keep which of -t/-u/-T/-U carried the spec."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        namespace.option = option_string
        namespace.spec = values


def _request(args: argparse.Namespace) -> dict[str, object]:
    if args.command == "add":
        return {"command": "add", "option": args.option, "spec": args.spec}
    if args.command == "remove":
        return {"command": "remove", "id": args.id}
    return {"command": args.command}


def call(path: str, request: dict[str, object]) -> dict:
    """Send one request; the reply's ``return`` object, or :class:`CtlError`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while (chunk := sock.recv(65536)) and len(data) < _MAX_REPLY:
                data += chunk
    except OSError as exc:
        raise CtlError(f"{path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        raise CtlError(str(reply["error"].get("desc")))
    if not isinstance(reply, dict) or not isinstance(reply.get("return"), dict):
        raise CtlError(f"{path}: not a pasta-net control socket (bad reply)")
    return reply["return"]


def _show_list(result: dict) -> str:
    rows = [f"{f['id']}\t{f['option']} {f['spec']}" for f in result["forwards"]]
    return "\n".join(["ID\tFORWARD", *rows])


def _show_stats(s: dict) -> str:
    flows = ", ".join(f"{proto} {n}" for proto, n in s["flows"].items())
    drops = ", ".join(f"{why} {n}" for why, n in s["drops"].items()) or "none"
    lines = [
        ("uptime", f"{s['uptime']:.1f} s"),
        ("flows", flows),
        ("from ns", f"{s['from_ns']['frames']} frames, {s['from_ns']['bytes']} bytes"),
        ("to ns", f"{s['to_ns']['frames']} frames, {s['to_ns']['bytes']} bytes"),
        ("drops", drops),
        ("forwards", str(s["forwards"])),
    ]
    return "\n".join(f"{name:<10}{value}" for name, value in lines)


def _render(args: argparse.Namespace, result: dict) -> str | None:
    if getattr(args, "json", False):
        return json.dumps(result, indent=2)
    if args.command == "add":
        return str(result["id"])
    if args.command == "list":
        return _show_list(result)
    if args.command == "stats":
        return _show_stats(result)
    return None


def main(argv: Sequence[str]) -> int:
    """``argv``: what follows ``ctl``."""
    args = _parser().parse_args(argv)
    try:
        result = call(args.path, _request(args))
    except CtlError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    text = _render(args, result)
    if text is not None:
        sys.stdout.write(text + "\n")
    return 0
