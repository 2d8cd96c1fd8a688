"""pasta's port forwarding specifiers: the argument of -t/-u/-T/-U, parsed into rules.

Grammar (upstream passt.1 and ``fwd_rule.c``, which this module follows; the Debian 2023
build knows only a subset)::

    SPEC    := "none" | [LISTEN "/"] CHUNK ("," CHUNK)*
    LISTEN  := ADDR ["%" IFNAME] | ["*"] ["%" IFNAME]
    CHUNK   := RANGE [":" TARGET] | "~" RANGE | "all" [":" ADDR] | "auto"
    TARGET  := ADDR "/" RANGE | ADDR | RANGE
    RANGE   := PORT ["-" PORT]

IPv6 addresses may be written in brackets (``[::1]/22``), which a target needs only for
readability: ``22:::1`` already means "port 22 to ::1, port 22".

Theory of operation: a spec becomes a tuple of :class:`PortForward` rules, each a range of
listening ports with a fixed offset to the target ports. Exclusions (``~``) take
precedence wherever they appear in the list and split the ranges they cut. A spec with no
plain ranges ("exclusions only", ``all`` or ``auto`` alone) means every port from 1 to
65535 that is not ephemeral and not excluded (``all`` next to plain ranges adds nothing,
as in pasta); those rules are *weak*: the listener shell skips ports it cannot bind, and
only fails when none could be bound. ``auto`` anywhere in the list makes every rule of
the spec *auto*: forward a port only while something is bound to it on the other side
(pasta scans /proc/net/tcp and friends every second).

Checks that need more than the spec itself (``auto`` in passt mode, a listening address
for -T/-U, conflicts between repeated options, a target address on a dual-stack rule)
belong to ``options.py``; :meth:`PortSpec.overlap` serves the conflict check.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
from collections.abc import Iterable, Iterator
from typing import TypeAlias

import attrs

__all__ = [
    "EPHEMERAL_PORTS",
    "IPAddress",
    "PortForward",
    "PortMode",
    "PortRange",
    "PortSpec",
    "PortSpecError",
    "parse_ephemeral_range",
    "parse_port_spec",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
PortRange: TypeAlias = tuple[int, int]
"""(first, last), both included."""

MAX_PORT = 65535
IFNAMSIZ = 16
EPHEMERAL_PORTS: PortRange = (49152, 65535)
"""RFC 6335's dynamic range: pasta's fallback when /proc/sys/net/ipv4/ip_local_port_range
cannot be read. Linux itself defaults to 32768-60999."""

_ADDR_CHARS = frozenset("0123456789abcdefABCDEF:.")
_IFNAME_STOP = frozenset("/ \f\n\r\t\v")


class PortSpecError(ValueError):
    """A port specifier that pasta would refuse.

    The message starts the way pasta's does (``Invalid port specifier '8000-7000'``, or
    ``Overlapping port specifier ...`` for ports given twice) and adds the reason, so a
    user sees what to fix and a script matching pasta's text still matches.
    """

    def __init__(self, spec: str, reason: str, *, overlapping: bool = False) -> None:
        self.spec = spec
        self.reason = reason
        self.overlapping = overlapping
        super().__init__(self.describe())

    def describe(self, option: str | None = None) -> str:
        """The message, naming the option (``-t``) when the caller knows it."""
        kind = "Overlapping" if self.overlapping else "Invalid"
        where = f" for {option}" if option else ""
        return f"{kind} port specifier '{self.spec}'{where}: {self.reason}"


class PortMode(enum.Enum):
    """What a spec asks for, as a whole."""

    NONE = "none"
    """Forward nothing."""
    EXPLICIT = "explicit"
    """The listed ports, always."""
    AUTO = "auto"
    """The listed ports (all non-ephemeral ones if none are listed) while bound on the
    other side."""
    ALL = "all"
    """Every non-ephemeral port but the excluded ones, best effort."""


def _addrs_collide(a: IPAddress | None, b: IPAddress | None) -> bool:
    """Whether two listening addresses can receive the same connection."""
    if a is None or b is None:
        return True
    if a.version != b.version:
        return False
    return a.is_unspecified or b.is_unspecified or a == b


@attrs.frozen(kw_only=True)
class PortForward:
    """One rule: listening ports ``first..last`` go to ``to_first..to_last``."""

    addr: IPAddress | None = None
    """Listening address; None means every address of both families (dual stack)."""
    iface: str | None = None
    """Listening interface (SO_BINDTODEVICE), or None."""
    first: int
    last: int
    to_addr: IPAddress | None = None
    """Target address on the other side; None means pasta's usual one (the namespace's
    address, or its loopback for spliced connections)."""
    to_first: int
    auto: bool = False
    """Forward a port only while it is bound on the other side."""
    weak: bool = False
    """Best effort: a port that cannot be bound is skipped, not an error."""

    @property
    def to_last(self) -> int:
        return self.to_first + self.last - self.first

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def ports(self) -> range:
        """The listening ports of this rule."""
        return range(self.first, self.last + 1)

    def target(self, port: int) -> int | None:
        """The target port for listening ``port``, or None when this rule does not cover it."""
        return self.to_first + port - self.first if port in self else None

    def collides(self, other: PortForward) -> bool:
        """Whether both rules would listen on some same port and address (pasta refuses)."""
        return (
            self.first <= other.last
            and other.first <= self.last
            and _addrs_collide(self.addr, other.addr)
        )


@attrs.frozen(kw_only=True)
class PortSpec:
    """One parsed -t/-u/-T/-U argument."""

    text: str
    """The argument as given, for messages."""
    mode: PortMode
    forwards: tuple[PortForward, ...] = ()
    prefix: str | None = None
    """The ``ADDR%IF`` text before '/', or None when the spec has no listening prefix
    (-T and -U allow none)."""

    def target(self, port: int) -> int | None:
        """The target port for listening ``port``, or None when the spec does not forward it."""
        for fwd in self.forwards:
            if port in fwd:
                return fwd.target(port)
        return None

    def bind_ports(self) -> list[int]:
        """Listening ports, ascending. With ``auto``, these are the candidates: only those
        bound on the other side are forwarded."""
        return sorted(port for fwd in self.forwards for port in fwd.ports())

    def overlap(self, other: PortSpec) -> tuple[PortForward, PortForward] | None:
        """The first pair of colliding rules between two specs of one protocol and direction."""
        for mine in self.forwards:
            for theirs in other.forwards:
                if mine.collides(theirs):
                    return mine, theirs
        return None


class _Cursor:
    """A position in the spec, with pasta's ``parse.c`` convention: a ``take_*`` either
    consumes what it parsed and returns it, or leaves the position alone and returns None
    (or raises, when the text cannot mean anything else)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, reason: str) -> PortSpecError:
        return PortSpecError(self.text, reason)

    def at_end(self) -> bool:
        return self.pos == len(self.text)

    def rest(self) -> str:
        return self.text[self.pos :]

    def where(self) -> str:
        """Where parsing stopped, for messages."""
        return f"at '{self.rest()}'" if self.rest() else "at the end"

    def literal(self, word: str) -> bool:
        if self.text.startswith(word, self.pos):
            self.pos += len(word)
            return True
        return False

    def _span(self, chars: frozenset[str]) -> str:
        end = self.pos
        while end < len(self.text) and self.text[end] in chars:
            end += 1
        return self.text[self.pos : end]

    def take_addr(self) -> IPAddress | None:
        """An IPv4 or IPv6 address, bare or in brackets; IPv4-mapped IPv6 becomes IPv4."""
        if self.text.startswith("[", self.pos):
            close = self.text.find("]", self.pos)
            if close < 0:
                return None
            token, end = self.text[self.pos + 1 : close], close + 1
        else:
            token = self._span(_ADDR_CHARS)
            end = self.pos + len(token)
        try:
            addr = ipaddress.ip_address(token)
        except ValueError:
            return None
        self.pos = end
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            return addr.ipv4_mapped
        return addr

    def take_ifspec(self) -> str | None:
        """``%IFNAME``: anything up to '/' or whitespace, as the kernel allows."""
        if not self.literal("%"):
            return None
        chars = []
        for ch in self.rest():
            if ch in _IFNAME_STOP:
                break
            chars.append(ch)
        name = "".join(chars)
        if not name:
            raise self.fail("empty interface name after '%'")
        if len(name) >= IFNAMSIZ:
            raise self.fail(f"interface name '{name}' is longer than {IFNAMSIZ - 1} characters")
        if name in (".", ".."):
            raise self.fail(f"invalid interface name '{name}'")
        self.pos += len(name)
        return name

    def take_port(self) -> int | None:
        digits = self._span(frozenset("0123456789"))
        if not digits:
            return None
        port = int(digits)
        if port > MAX_PORT:
            raise self.fail(f"port {digits} is out of range (1-{MAX_PORT})")
        if port == 0:
            raise self.fail("port 0 cannot be forwarded")
        self.pos += len(digits)
        return port

    def take_range(self) -> PortRange | None:
        first = self.take_port()
        if first is None:
            return None
        last = first
        if self.literal("-"):
            last = self.take_port()
            if last is None:
                raise self.fail(f"missing last port after '{first}-'")
            if last < first:
                raise self.fail(f"range {first}-{last} ends before it starts")
        return first, last

    def need_range(self, what: str) -> PortRange:
        taken = self.take_range()
        if taken is None:
            raise self.fail(f"expected {what} {self.where()}")
        return taken


@attrs.frozen
class _Include:
    listen: PortRange
    target: PortRange
    to_addr: IPAddress | None


@attrs.frozen
class _Chunks:
    """The comma list, sorted by kind."""

    includes: tuple[_Include, ...]
    excludes: tuple[PortRange, ...]
    auto: bool
    all_to_addr: IPAddress | None
    """Target address of ``all:ADDR`` (used only when there are no plain ranges)."""


def _parse_listen(cur: _Cursor) -> tuple[IPAddress | None, str | None, str | None]:
    """``ADDR[%IF]/`` or ``[*][%IF]/``: (address, interface, prefix text), or all None."""
    addr = cur.take_addr()
    if addr is None:
        cur.literal("*")
    iface = cur.take_ifspec()
    if cur.literal("/"):
        return addr, iface, cur.text[: cur.pos - 1]
    cur.pos = 0
    return None, None, None


def _parse_target(cur: _Cursor, listen: PortRange) -> tuple[IPAddress | None, PortRange]:
    """After ':': ``ADDR/RANGE``, ``ADDR`` (same ports) or ``RANGE``."""
    to_addr = cur.take_addr()
    if to_addr is None:
        return None, cur.need_range("a target port or address after ':'")
    if cur.literal("/"):
        return to_addr, cur.need_range(f"a target port after '{to_addr}/'")
    return to_addr, listen


def _parse_include(cur: _Cursor, listen: PortRange) -> _Include:
    if not cur.literal(":"):
        return _Include(listen, listen, None)
    to_addr, target = _parse_target(cur, listen)
    if target[1] - target[0] != listen[1] - listen[0]:
        raise cur.fail(
            f"{_fmt(listen)} ({_count(listen)}) and its target {_fmt(target)} "
            f"({_count(target)}) differ in size"
        )
    return _Include(listen, target, to_addr)


def _parse_chunks(cur: _Cursor) -> _Chunks:
    includes: list[_Include] = []
    excludes: list[PortRange] = []
    auto = False
    all_to_addr: IPAddress | None = None
    while True:
        if cur.literal("none"):
            raise cur.fail("'none' cannot be combined with other specifiers")
        if cur.literal("auto"):
            auto = True
        elif cur.literal("all"):
            if cur.literal(":"):
                all_to_addr = cur.take_addr()
                if all_to_addr is None:
                    raise cur.fail(f"expected a target address after 'all:' {cur.where()}")
        elif cur.literal("~"):
            excludes.append(cur.need_range("a port or range after '~'"))
        else:
            listen = cur.need_range("a port, a range, '~', 'all' or 'auto'")
            includes.append(_parse_include(cur, listen))
        if cur.at_end():
            return _Chunks(tuple(includes), tuple(excludes), auto, all_to_addr)
        if not cur.literal(","):
            raise cur.fail(f"unexpected '{cur.rest()}'")


def _fmt(rng: PortRange) -> str:
    return str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}-{rng[1]}"


def _count(rng: PortRange) -> str:
    n = rng[1] - rng[0] + 1
    return "1 port" if n == 1 else f"{n} ports"


def _subtract(first: int, last: int, holes: Iterable[PortRange]) -> Iterator[PortRange]:
    """The parts of ``first..last`` that no hole covers, ascending."""
    start = first
    for lo, hi in sorted(holes):
        if hi < start or lo > last:
            continue
        if lo > start:
            yield start, lo - 1
        start = max(start, hi + 1)
    if start <= last:
        yield start, last


def _check_target(spec: str, addr: IPAddress | None, to_addr: IPAddress | None) -> None:
    if to_addr is None:
        return
    if to_addr.is_multicast:
        raise PortSpecError(spec, f"target address {to_addr} is multicast")
    if addr is not None and addr.version != to_addr.version:
        raise PortSpecError(
            spec,
            f"forward from IPv{addr.version} ({addr}) to IPv{to_addr.version} "
            f"({to_addr}) is unsupported",
        )


def _mode(chunks: _Chunks) -> PortMode:
    if chunks.auto:
        return PortMode.AUTO
    return PortMode.EXPLICIT if chunks.includes else PortMode.ALL


def parse_port_spec(text: str, *, ephemeral: PortRange = EPHEMERAL_PORTS) -> PortSpec:
    """Parse one -t/-u/-T/-U argument.

    ``ephemeral`` is the host's ephemeral port range (``parse_ephemeral_range`` of
    /proc/sys/net/ipv4/ip_local_port_range): "all other ports" never includes those, or
    the host could not open outgoing connections. Raises :class:`PortSpecError`.
    """
    if text == "none":
        return PortSpec(text=text, mode=PortMode.NONE)
    cur = _Cursor(text)
    if not text:
        raise cur.fail("empty specifier")
    addr, iface, prefix = _parse_listen(cur)
    chunks = _parse_chunks(cur)
    template = PortForward(addr=addr, iface=iface, first=1, last=1, to_first=1, auto=chunks.auto)
    rules: list[PortForward] = []
    for inc in chunks.includes:
        _check_target(text, addr, inc.to_addr)
        rules += _split(template, inc.listen, inc.target[0], inc.to_addr, chunks.excludes)
    if not chunks.includes:
        # pasta's "exclusions only" case, which also covers a lone "all" or "auto"
        _check_target(text, addr, chunks.all_to_addr)
        holes = (*chunks.excludes, ephemeral)
        rules += _split(template, (1, MAX_PORT), 1, chunks.all_to_addr, holes, weak=True)
    _check_overlap(text, rules)
    return PortSpec(text=text, mode=_mode(chunks), forwards=tuple(rules), prefix=prefix)


def _split(
    template: PortForward,
    listen: PortRange,
    to_first: int,
    to_addr: IPAddress | None,
    holes: Iterable[PortRange],
    *,
    weak: bool = False,
) -> Iterator[PortForward]:
    """The rules for one range once the holes are cut out, keeping the port offset."""
    for lo, hi in _subtract(*listen, holes):
        yield attrs.evolve(
            template,
            first=lo,
            last=hi,
            to_addr=to_addr,
            to_first=to_first + lo - listen[0],
            weak=weak,
        )


def _check_overlap(spec: str, rules: list[PortForward]) -> None:
    ordered = sorted(rules, key=lambda r: r.first)
    for prev, cur in itertools.pairwise(ordered):
        if cur.first <= prev.last:
            both = _fmt((cur.first, min(prev.last, cur.last)))
            raise PortSpecError(spec, f"port {both} is given more than once", overlapping=True)


def parse_ephemeral_range(sysctl: str) -> PortRange:
    """Parse the text of /proc/sys/net/ipv4/ip_local_port_range ("32768\\t60999\\n").

    Falls back to :data:`EPHEMERAL_PORTS`, as pasta does, when the text makes no sense.
    """
    fields = sysctl.split()
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        low, high = int(fields[0]), int(fields[1])
        if low <= high <= MAX_PORT:
            return low, high
    return EPHEMERAL_PORTS
