"""Run-time control requests: bytes in, commands out; results in, reply bytes out.

Two dialects reach the same commands, so that one executor serves both sockets:

- **native** (``-c/--control``): one JSON object per line, e.g.
  ``{"command": "add", "option": "-t", "spec": "8080:80"}``; commands ``list``, ``add``,
  ``remove`` (``"id"``) and ``stats``. A line with ``"execute"`` is read as slirp4netns'
  dialect, so a slirp4netns client also works on this socket.
- **slirp4netns** (``--api-socket``): one QMP-like request per connection (slirp4netns.1,
  "API SOCKET"): ``{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr":
  "0.0.0.0", "host_port": 8080, "guest_addr": "10.0.2.100", "guest_port": 80}}``, then
  ``list_hostfwd`` and ``remove_hostfwd``. Unlike slirp4netns, ``host_addr`` may be IPv6.

Replies use slirp4netns' envelope in both dialects: ``{"return": {...}}`` or
``{"error": {"desc": "..."}}``, compact, as slirp4netns writes them. slirp4netns' own error
texts (``bad request: add_hostfwd: bad arguments.proto``) are kept word for word, because
its clients (and its test suite) match them. One deliberate choice: ``list_hostfwd``
replies ``{"return": {"entries": [...]}}`` as the manual and upstream's test suite say;
the 1.2.0 binary on Debian 12 leaves the ``return`` envelope out.

Rules this file keeps: parsing raises nothing but :class:`RequestError`, whatever the
bytes (deep nesting, bad UTF-8, huge numbers included); sizes are bounded by the shell
before parsing (:data:`MAX_LINE`, :data:`SLIRP_MAX_REQUEST`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

import attrs

from pasta_net.core.portspec import (
    EPHEMERAL_PORTS,
    IPAddress,
    PortMode,
    PortRange,
    PortSpec,
    PortSpecError,
    parse_port_spec,
)

__all__ = [
    "MAX_LINE",
    "MAX_RUNTIME_PORTS",
    "SLIRP_MAX_REQUEST",
    "AddForward",
    "Command",
    "Forward",
    "ListForwards",
    "ListHostfwd",
    "ReadStats",
    "RemoveForward",
    "Request",
    "RequestError",
    "Stats",
    "check_new_forward",
    "check_runtime_spec",
    "error_reply",
    "forward_json",
    "hostfwd_json",
    "parse_line",
    "parse_slirp",
    "reply",
]

MAX_LINE = 65536
"""Longest native request line; a longer one closes the connection."""
SLIRP_MAX_REQUEST = 4096
"""slirp4netns: "A request must be less than 4096 bytes"."""
MAX_RUNTIME_PORTS = 4096
"""Listening ports one run-time ``add`` may bind: binding is synchronous work on the data
path's thread, so ``-t all`` belongs on the command line, not on the control socket."""
MAX_SPEC = 1024

OPTIONS = {"-t": ("tcp", "host-to-ns"), "-u": ("udp", "host-to-ns"),
           "-T": ("tcp", "ns-to-host"), "-U": ("udp", "ns-to-host")}
"""Forwarding options, as on the command line: (protocol, direction)."""
_SLIRP_OPTION = {"tcp": "-t", "udp": "-u"}


class RequestError(Exception):
    """The request cannot be carried out; ``str()`` is the reply's ``desc``."""


@attrs.frozen
class Forward:
    """One forwarding option of a running instance, with the id clients remove it by."""

    id: int
    option: str
    """``-t``, ``-u``, ``-T`` or ``-U``."""
    spec: PortSpec


@attrs.frozen
class ListForwards:
    pass


@attrs.frozen
class ListHostfwd:
    """slirp4netns' view of the forwards (single host→namespace ports only)."""


@attrs.frozen
class AddForward:
    option: str
    spec: PortSpec
    guest_addr: IPAddress | None = None
    """slirp4netns' ``guest_addr``: must be the namespace's address, the only one we reach."""


@attrs.frozen
class RemoveForward:
    id: int


@attrs.frozen
class ReadStats:
    pass


Command: TypeAlias = ListForwards | ListHostfwd | AddForward | RemoveForward | ReadStats


@attrs.frozen
class Request:
    command: Command
    error_prefix: str = ""
    """Put before the reason of a failure: slirp4netns says ``bad request: add_hostfwd: ``."""


@attrs.frozen
class Stats:
    """What ``stats`` reports; counted by the hub and the engine, collected by the shell."""

    uptime: float
    flows: Mapping[str, int]
    """Open flows by protocol."""
    frames_from_ns: int
    bytes_from_ns: int
    frames_to_ns: int
    bytes_to_ns: int
    drops: Mapping[str, int]
    """Dropped frames and events by reason."""
    forwards: int

    def to_json(self) -> dict[str, object]:
        return {
            "uptime": round(self.uptime, 3),
            "flows": dict(self.flows),
            "from_ns": {"frames": self.frames_from_ns, "bytes": self.bytes_from_ns},
            "to_ns": {"frames": self.frames_to_ns, "bytes": self.bytes_to_ns},
            "drops": dict(sorted(self.drops.items())),
            "forwards": self.forwards,
        }


# ------------------------------------------------------------------ replies --
def _dump(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def reply(value: object) -> bytes:
    """A success reply (no line end: the native shell adds one, slirp4netns has none)."""
    return _dump({"return": value})


def error_reply(desc: str) -> bytes:
    return _dump({"error": {"desc": desc}})


def forward_json(forward: Forward) -> dict[str, object]:
    """A native ``list`` entry."""
    proto, direction = OPTIONS[forward.option]
    return {"id": forward.id, "option": forward.option, "proto": proto,
            "direction": direction, "spec": forward.spec.text}


def hostfwd_json(forward: Forward, ns_addr4: bytes | None,
                 ns_addr6: bytes | None) -> dict[str, object] | None:
    """A ``list_hostfwd`` entry, or None for what slirp4netns cannot express (ranges,
    namespace→host forwards). ``host_addr`` is "" for a rule listening on both families."""
    rules = forward.spec.forwards
    if forward.option not in ("-t", "-u") or len(rules) != 1 or rules[0].first != rules[0].last:
        return None
    rule = rules[0]
    version = rule.addr.version if rule.addr is not None else 4 if ns_addr4 else 6
    ns_addr = ns_addr4 if version == 4 else ns_addr6
    guest = rule.to_addr or (ipaddress.ip_address(ns_addr) if ns_addr else "")
    return {"id": forward.id, "proto": OPTIONS[forward.option][0],
            "host_addr": str(rule.addr) if rule.addr is not None else "",
            "host_port": rule.first, "guest_addr": str(guest), "guest_port": rule.to_first}


# ------------------------------------------------------------------ checks --
def check_new_forward(option: str, spec: PortSpec, existing: Iterable[Forward]) -> None:
    """What the command line refuses in a forwarding option, given the ones before it,
    but for one thing: a fixed forward may overlap an ``auto`` one (pasta mode's default
    when no -t/-u/-T/-U is given, which would refuse every add), and takes its ports
    over; ``auto`` then mirrors the rest."""
    if spec.mode is PortMode.NONE:
        raise RequestError(f"'{spec.text}' forwards nothing")
    if spec.prefix is not None and option in ("-T", "-U"):
        raise RequestError(f"Listening address not allowed for {option} {spec.text}")
    for other in existing:
        one_auto = (spec.mode is PortMode.AUTO) != (other.spec.mode is PortMode.AUTO)
        if other.option == option and not one_auto and spec.overlap(other.spec):
            raise RequestError(f"Overlapping port specifier '{spec.text}' for {option}: "
                               f"ports also forwarded by '{option} {other.spec.text}' "
                               f"(id {other.id})")


def check_runtime_spec(spec: PortSpec, *, auto: bool) -> None:
    """What only a live instance refuses: ``auto`` where nothing mirrors ports (``auto``
    false: passt mode), and more fixed ports than :data:`MAX_RUNTIME_PORTS` (``auto``
    rules bind only what they mirror, so they do not count)."""
    if spec.mode is PortMode.AUTO and not auto:
        raise RequestError(f"'auto' forwarding is only available in pasta mode ('{spec.text}')")
    ports = sum(rule.last - rule.first + 1 for rule in spec.forwards if not rule.auto)
    if ports > MAX_RUNTIME_PORTS:
        raise RequestError(f"'{spec.text}' has {ports} ports; at most {MAX_RUNTIME_PORTS} "
                           "can be added at run time")


# ---------------------------------------------------------- native dialect --
def _load(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise RequestError("cannot parse JSON") from None


def parse_line(line: bytes, ephemeral: PortRange = EPHEMERAL_PORTS) -> Request:
    """One native request line (slirp4netns requests accepted too)."""
    obj = _load(line)
    if not isinstance(obj, dict):
        raise RequestError("a request must be a JSON object")
    if "execute" in obj:
        return _slirp_request(obj, ephemeral)
    name = obj.get("command")
    parser = _NATIVE.get(name) if isinstance(name, str) else None
    if parser is None:
        raise RequestError(f"unknown command {json.dumps(name)}; "
                           f"known: {', '.join(sorted(_NATIVE))}")
    return Request(parser(obj, ephemeral))


def _native_add(obj: dict, ephemeral: PortRange) -> Command:
    option, text = obj.get("option"), obj.get("spec")
    if not isinstance(option, str) or option not in OPTIONS:
        raise RequestError(f"\"option\" must be one of {', '.join(OPTIONS)}")
    if not isinstance(text, str) or len(text) > MAX_SPEC:
        raise RequestError(f"\"spec\" must be a port specifier of at most {MAX_SPEC} "
                           "characters")
    try:
        spec = parse_port_spec(text, ephemeral=ephemeral)
    except PortSpecError as exc:
        raise RequestError(exc.describe(option)) from None
    return AddForward(option, spec)


def _native_remove(obj: dict, _ephemeral: PortRange) -> Command:
    fid = obj.get("id")
    if not _is_int(fid) or fid < 1:
        raise RequestError("\"id\" must be the positive integer id of a forward")
    return RemoveForward(fid)


_NATIVE: dict[str, Callable[[dict, PortRange], Command]] = {
    "add": _native_add,
    "list": lambda _obj, _eph: ListForwards(),
    "remove": _native_remove,
    "stats": lambda _obj, _eph: ReadStats(),
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------- slirp4netns dialect --
def parse_slirp(data: bytes, ephemeral: PortRange = EPHEMERAL_PORTS) -> Request:
    """One slirp4netns API request (the whole connection's input)."""
    if len(data) >= SLIRP_MAX_REQUEST:
        raise RequestError("bad request: too large message")
    try:
        obj = _load(data)
    except RequestError:
        raise RequestError("bad request: cannot parse JSON") from None
    if not isinstance(obj, dict):
        raise RequestError("bad request: json_object() failed")
    return _slirp_request(obj, ephemeral)


def _slirp_request(obj: dict, ephemeral: PortRange) -> Request:
    execute = obj.get("execute")
    if not isinstance(execute, str):
        raise RequestError("bad request: no execute found")
    parser = _SLIRP.get(execute)
    if parser is None:
        raise RequestError("bad request: unknown execute")
    arguments = obj.get("arguments")
    return parser(arguments if isinstance(arguments, dict) else {}, ephemeral)


def _slirp_port(arguments: dict, name: str, prefix: str) -> int:
    """slirp4netns casts JSON numbers to int and refuses 0; we also refuse the impossible."""
    value = arguments.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value) or not 0 < value <= 65535:
        raise RequestError(f"{prefix}bad arguments.{name}")
    return value


def _slirp_addr(arguments: dict, name: str, prefix: str) -> IPAddress | None:
    """An address argument; None when absent or empty (slirp4netns' default applies).
    A zone index (``fe80::1%eth0``) is refused here, as slirp4netns refuses it, rather
    than failing later as a bind error."""
    text = arguments.get(name)
    if text is None or text == "":
        return None
    if isinstance(text, str) and "%" not in text:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            pass
    raise RequestError(f"{prefix}bad arguments.{name}")


def _slirp_add(arguments: dict, ephemeral: PortRange) -> Request:
    prefix = "bad request: add_hostfwd: "
    proto = arguments.get("proto")
    option = _SLIRP_OPTION.get(proto) if isinstance(proto, str) else None
    if option is None:
        raise RequestError(f"{prefix}bad arguments.proto")
    host_addr = _slirp_addr(arguments, "host_addr", prefix) or ipaddress.IPv4Address(0)
    host_port = _slirp_port(arguments, "host_port", prefix)
    guest_addr = _slirp_addr(arguments, "guest_addr", prefix)
    if guest_addr is not None and guest_addr.version != host_addr.version:
        raise RequestError(f"{prefix}bad arguments.guest_addr")
    guest_port = _slirp_port(arguments, "guest_port", prefix)
    listen = f"[{host_addr}]" if host_addr.version == 6 else str(host_addr)
    try:
        spec = parse_port_spec(f"{listen}/{host_port}:{guest_port}", ephemeral=ephemeral)
    except PortSpecError:  # a spec the command line would refuse too
        raise RequestError(f"{prefix}bad arguments.host_addr") from None
    return Request(AddForward(option, spec, guest_addr), prefix)


def _slirp_remove(arguments: dict, _ephemeral: PortRange) -> Request:
    prefix = "bad request: remove_hostfwd: bad arguments.id"
    fid = arguments.get("id")
    if isinstance(fid, float) and fid.is_integer():
        fid = int(fid)
    if not _is_int(fid):
        raise RequestError(prefix)
    return Request(RemoveForward(fid), prefix + ": ")


_SLIRP: dict[str, Callable[[dict, PortRange], Request]] = {
    "add_hostfwd": _slirp_add,
    "list_hostfwd": lambda _arguments, _eph: Request(ListHostfwd()),
    "remove_hostfwd": _slirp_remove,
}
