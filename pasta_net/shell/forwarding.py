"""The forwards of one instance: -t/-u/-T/-U listeners, their loopback paths, ``auto``.

Theory of operation
-------------------
Four options, two directions (pasta's ``fwd_in`` and ``fwd_out``):

=====  ==================  ===========================  ===================================
opt    listens             a loopback client goes       any other client goes
=====  ==================  ===========================  ===================================
-t     host, every addr    spliced into the namespace   through the tap (engine), keeping
                           (shell/splice.py)            its source address
-u     host, every addr    relayed into the namespace   through the tap (engine)
                           (shell/udprelay.py)
-T     namespace 127.0.0.1  spliced to the host's same   (none: loopback only)
       and ::1             loopback address
-U     namespace 127.0.0.1  relayed to the host's        (none)
       and ::1
=====  ==================  ===========================  ===================================

``--no-splice`` sends -t/-u loopback clients through the tap as well (their source then
appears as the --map-host-loopback address); ``--splice-only`` has no tap path, so other
clients are refused (TCP reset, datagram dropped). Where a spliced -t/-u connection lands
in the namespace is core/forward.py's :func:`spliced_target`.

Sockets of the namespace are created by the :class:`~pasta_net.netns.NetnsThread` (a
socket belongs to the namespace it was created in) and used from here afterwards: a
listener, a connect or a datagram then costs no thread switch.

``auto`` rules are mirrored once a second (:meth:`Forwarding.scan`, core/forward.py):
the other side's /proc/net files, opened once, are read again, our own listeners on that
side are taken out (so a -t mirror never comes back as a -T mirror of itself), and the
difference with what is bound is applied. A port that cannot be bound here (taken by
someone else) is skipped quietly and tried again at the next scan.

Everything this class opened is closed by :meth:`Forwarding.close`, which :meth:`run`
calls on its way out: the listeners are gone before the process exits.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable, Iterable

import attrs
import trio

from pasta_net.core.actions import SocketKind
from pasta_net.core.forward import (
    TCP_LISTEN,
    UDP_UNCONNECTED,
    bound_ports,
    ip_version,
    is_loopback,
    mirrored_ports,
    spliced_target,
)
from pasta_net.core.plan import AddressPlan
from pasta_net.core.portspec import EPHEMERAL_PORTS, PortForward, PortMode, PortRange, PortSpec
from pasta_net.core.portspec import parse_port_spec as parse_spec
from pasta_net.netns import NetnsThread
from pasta_net.options import Options
from pasta_net.shell.forwards import ForwardTable
from pasta_net.shell.hub import Hub
from pasta_net.shell.listeners import (
    Binding,
    Divert,
    Listener,
    bind_forwards,
    bind_port,
    close_listeners,
    to_tap,
)
from pasta_net.shell.splice import SocketFactory, SpliceTable, host_socket, reset
from pasta_net.shell.udprelay import UdpRelay

__all__ = ["SCAN_INTERVAL", "Forwarding"]

log = logging.getLogger("pasta_net.forwarding")

SCAN_INTERVAL = 1.0
"""Seconds between two ``auto`` scans (pasta's FWD_PORT_SCAN_INTERVAL)."""
_PROC_NET = "/proc/thread-self/net/"
_TABLES = {SocketKind.TCP: ("tcp", "tcp6"), SocketKind.UDP: ("udp", "udp6")}
_READ_CHUNK = 1 << 16
_NS_BATCH = 8
_OPTIONS = {"-t": "tcp", "-u": "udp", "-T": "tcp_ns", "-U": "udp_ns"}
"""Option → its field of :class:`~pasta_net.options.PortOptions`."""


_KINDS = {"-t": SocketKind.TCP, "-u": SocketKind.UDP, "-T": SocketKind.TCP,
          "-U": SocketKind.UDP}
_INBOUND = ("-t", "-u")
"""Listening on the host, mirroring the namespace's ports; -T/-U do the reverse."""


@attrs.define(eq=False)
class _Entry:
    """One bound spec: its fixed listeners, and its rules for the auto scan."""

    spec: PortSpec
    listeners: list[Listener]
    auto: tuple[PortForward, ...]
    fixed_ports: frozenset[int]
    """Listening ports of its other rules (bound or, for a weak rule, tried)."""


class _ProcNet:
    """/proc/net/{tcp,tcp6,udp,udp6} of one side, opened once and read again at each scan."""

    def __init__(self, open_file: Callable[[str], int]) -> None:
        self._open_file = open_file
        self._fds: dict[str, int] = {}

    def ports(self, kind: SocketKind, state: int) -> set[int]:
        ports: set[int] = set()
        for table in _TABLES[kind]:
            ports |= bound_ports(self._read(table), state)
        return ports

    def _read(self, table: str) -> str:
        fd = self._fds.get(table)
        if fd is None:
            fd = self._fds[table] = self._open_file(_PROC_NET + table)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks).decode("latin-1")

    def bound(self, own: dict[SocketKind, set[int]]) -> dict[SocketKind, set[int]]:
        """Bound ports by kind, ours (``own``) left out; UDP also counts TCP listeners."""
        tcp = self.ports(SocketKind.TCP, TCP_LISTEN) - own[SocketKind.TCP]
        udp = self.ports(SocketKind.UDP, UDP_UNCONNECTED) - own[SocketKind.UDP]
        return {SocketKind.TCP: tcp, SocketKind.UDP: udp | tcp}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _open_proc(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _sockets(family: int, sock_type: int, count: int) -> list[socket.socket]:
    return [host_socket(family, sock_type) for _ in range(count)]


class Forwarding:
    """Every forward of one instance, on ``hub``; ``ns`` is None in passt mode (no
    namespace: no -T/-U, no splice, no ``auto``)."""

    def __init__(self, hub: Hub, ns: NetnsThread | None, options: Options,
                 ephemeral: PortRange = EPHEMERAL_PORTS) -> None:
        self.hub = hub
        self.options = options
        self.ephemeral = ephemeral
        self._ns = ns
        self._ns_stock: dict[tuple[int, int], list[socket.socket]] = {}
        self._want4, self._want6 = not options.ipv6_only, not options.ipv4_only
        self._splice = ns is not None and not options.no_splice
        self.splices = SpliceTable(hub)
        self._ns_targets: tuple[AddressPlan, dict[int, str]] | None = None
        """Where spliced -t/-u clients of each IP version go in the namespace, and the
        address plan that says so (--follow-host may replace it)."""
        self._entries: dict[str, list[_Entry]] = {name: [] for name in _KINDS}
        self._mirrors: dict[str, dict[int, list[Listener]]] = {name: {} for name in _KINDS}
        self._relays: dict[int, dict[str, UdpRelay]] = {}
        """UDP listener flow → its relays by target address (one per client family)."""
        self._proc = {True: _ProcNet(self._ns_open), False: _ProcNet(_open_proc)}
        """The side an option mirrors: the namespace's for -t/-u (inbound), ours for -T/-U."""
        self._bindings = {
            "-t": Binding(accept=self._accept_inbound if self._splice_paths else None,
                          freebind=options.freebind),
            "-u": Binding(divert=self._inbound_divert if self._splice_paths else None,
                          freebind=options.freebind),
            "-T": Binding(new_socket=self._ns_socket, loopback=True,
                          accept=self._accept_outbound),
            "-U": Binding(new_socket=self._ns_socket, loopback=True,
                          divert=self._outbound_divert),
        }

    @property
    def _splice_paths(self) -> bool:
        """Whether -t/-u clients need sorting (loopback ones spliced, or others refused)."""
        return self._splice or self.options.splice_only

    # ------------------------------------------------------------ binding --
    def bind_command_line(self, table: ForwardTable) -> None:
        """Offer every enabled option to ``table`` (which the control sockets change at run
        time), bind -t/-u/-T/-U as given through it (``auto`` for those not given, in pasta
        mode), then mirror what ``auto`` finds bound now; :class:`ListenError` closes all
        of it."""
        try:
            for name, field in _OPTIONS.items():
                if self._enabled(name):
                    table.register(name, functools.partial(self.bind, name))
                    for spec in self._specs(getattr(self.options.ports, field)):
                        if spec.mode is not PortMode.NONE:
                            table.add(name, spec)
            self.scan()
        except BaseException:
            self.close()
            raise

    def _enabled(self, name: str) -> bool:
        kind = _KINDS[name]
        if self.options.no_tcp if kind is SocketKind.TCP else self.options.no_udp:
            return False
        return name in _INBOUND or self._ns is not None

    def _specs(self, given: tuple[PortSpec, ...] | None) -> tuple[PortSpec, ...]:
        if given is not None:
            return given
        if self._ns is None:
            return ()  # passt: nothing unless asked
        return (parse_spec("auto", ephemeral=self.ephemeral),)

    def bind(self, name: str, spec: PortSpec) -> Callable[[], None]:
        """Set up one spec of option ``name``; returns what undoes it (a binder, as
        shell/forwards.py's table wants). Raises ListenError for a port that cannot be bound."""
        kind = _KINDS[name]
        fixed = frozenset(p for f in spec.forwards if not f.auto for p in f.ports())
        mirrors = self._mirrors[name]
        for port in fixed & mirrors.keys():  # a fixed forward takes a mirrored port over
            self._close_listeners(mirrors.pop(port))
        listeners = bind_forwards(self.hub, [spec], kind, name, self._want4, self._want6,
                                  self._bindings[name])
        entry = _Entry(spec, listeners, tuple(f for f in spec.forwards if f.auto), fixed)
        self._entries[name].append(entry)
        return lambda: self._unbind(name, entry)

    def _unbind(self, name: str, entry: _Entry) -> None:
        self._entries[name].remove(entry)
        self._close_listeners(entry.listeners)
        if entry.auto:
            self._sync(name, self._side_bound(name in _INBOUND)[_KINDS[name]])

    def _close_listeners(self, listeners: Iterable[Listener]) -> None:
        listeners = list(listeners)
        for listener in listeners:
            for relay in self._relays.pop(listener.flow, {}).values():
                relay.close()
        close_listeners(self.hub, listeners)

    # -------------------------------------------------------------- auto --
    def scan(self) -> None:
        """Mirror the ports the ``auto`` rules want now, and release those they no longer do.

        Both directions see the listeners as they were before this scan changed any, so
        the listener one direction adds is not taken for a server by the other.
        """
        names = [name for name, entries in self._entries.items()
                 if any(e.auto for e in entries) or self._mirrors[name]]
        bound = {inbound: self._side_bound(inbound) for inbound in {n in _INBOUND for n in names}}
        for name in names:
            self._sync(name, bound[name in _INBOUND][_KINDS[name]])

    def _side_bound(self, inbound: bool) -> dict[SocketKind, set[int]]:
        """What the side -t/-u (``inbound``) or -T/-U mirror has bound, by kind, without
        our own listeners there."""
        own = {kind: self._own_ports(not inbound, kind) for kind in _TABLES}
        return self._proc[inbound].bound(own)

    def _own_ports(self, host: bool, kind: SocketKind) -> set[int]:
        """Ports our listeners of ``kind`` hold on the host (``host``) or in the namespace."""
        ports: set[int] = set()
        for name in (_INBOUND if host else ("-T", "-U")):
            if _KINDS[name] is not kind:
                continue
            ports.update(self._mirrors[name])
            for entry in self._entries[name]:
                ports |= entry.fixed_ports
        return ports

    def _sync(self, name: str, bound: set[int]) -> None:
        forwards = [f for entry in self._entries[name] for f in entry.auto]
        fixed = {p for entry in self._entries[name] for p in entry.fixed_ports}
        wanted = {port: forward for port, forward in mirrored_ports(forwards, bound).items()
                  if port not in fixed}
        mirrors = self._mirrors[name]
        for port in mirrors.keys() - wanted.keys():
            log.debug("auto %s: releasing port %d", name, port)
            self._close_listeners(mirrors.pop(port))
        for port in wanted.keys() - mirrors.keys():
            try:
                mirrors[port] = bind_port(self.hub, wanted[port], port, _KINDS[name],
                                          self._want4, self._want6, self._bindings[name])
            except OSError as exc:  # taken here: not ours to report, retried next scan
                log.debug("auto %s: port %d not bound: %s", name, port, exc.strerror)
                continue
            log.debug("auto %s: forwarding port %d", name, port)

    # ------------------------------------------------------------ serving --
    async def run(self) -> None:
        """Scan for ``auto`` and expire idle UDP flows once a second, until cancelled;
        then close everything."""
        try:
            while True:
                await trio.sleep(SCAN_INTERVAL)
                try:
                    self.scan()
                except OSError as exc:  # /proc unreadable: auto pauses, the rest goes on
                    log.warning("auto forwarding: cannot scan ports: %s", exc)
                now = self.hub.now()
                for relays in self._relays.values():
                    for relay in relays.values():
                        relay.expire(now)
        finally:
            self.close()

    def close(self) -> None:
        """Close every listener, spliced connection, relay flow and /proc file."""
        for name in _KINDS:
            for entry in self._entries[name]:
                self._close_listeners(entry.listeners)
            self._entries[name].clear()
            for listeners in self._mirrors[name].values():
                self._close_listeners(listeners)
            self._mirrors[name].clear()
        self.splices.close()
        for proc in self._proc.values():
            proc.close()
        for stock in self._ns_stock.values():
            for sock in stock:
                sock.close()
        self._ns_stock.clear()

    # -------------------------------------------------------- the namespace --
    def _ns_socket(self, family: int, sock_type: int) -> socket.socket:
        """A socket of the namespace, from a stock made :data:`_NS_BATCH` at a time.

        Each trip to the namespace thread blocks the event loop for two thread switches
        and the GIL hand-over; on a busy machine that was 0.2-0.6 ms, as much as the
        rest of a spliced connect-and-close. A batch pays it once for eight connections.
        """
        assert self._ns is not None
        stock = self._ns_stock.setdefault((family, sock_type), [])
        if not stock:
            stock.extend(self._ns.call(_sockets, family, sock_type, _NS_BATCH))
        return stock.pop()

    def _ns_open(self, path: str) -> int:
        assert self._ns is not None
        return self._ns.call(_open_proc, path)

    # ---------------------------------------------------- connection paths --
    def _accept_inbound(self, listener: Listener, conn: socket.socket,
                        client: tuple[str, int]) -> None:
        """-t: a loopback client is spliced into the namespace, others take the tap."""
        if self._splice and is_loopback(client[0]):
            self.splices.splice(conn, (self._ns_target(listener, client), listener.ns_port),
                                self._ns_socket)
        elif self.options.splice_only:
            reset(conn)
        else:
            to_tap(self.hub, listener, conn, client)

    def _accept_outbound(self, listener: Listener, conn: socket.socket,
                         _client: tuple[str, int]) -> None:
        """-T: to the host's loopback address the client used (or the rule's target)."""
        target = listener.to_addr or conn.getsockname()[0]
        self.splices.splice(conn, (target, listener.ns_port), host_socket)

    def _ns_target(self, listener: Listener, client: tuple[str, int]) -> str:
        if listener.to_addr is not None:
            return listener.to_addr
        plan = self.hub.engine.plan
        if self._ns_targets is None or self._ns_targets[0] is not plan:
            ns_lo = self.options.host_lo_to_ns_lo
            self._ns_targets = plan, {version: spliced_target(version, addr, ns_lo)
                                      for version, addr in ((4, plan.addr4), (6, plan.addr6))}
        return self._ns_targets[1][ip_version(client[0])]

    def _inbound_divert(self, listener: Listener) -> Divert:
        """-u: loopback clients to the relay; others to the tap, or nowhere (splice-only)."""

        def divert(data: bytes, client: tuple[str, int]) -> bool:
            if self._splice and is_loopback(client[0]):
                target = self._ns_target(listener, client)
                self._relay(listener, target, self._ns_socket, _any_port).forward(data, client)
                return True
            return self.options.splice_only

        return divert

    def _outbound_divert(self, listener: Listener) -> Divert:
        """-U: every datagram to the host's loopback address the client used (the one the
        listener is bound to)."""
        target = listener.to_addr or listener.sock.getsockname()[0]

        def divert(data: bytes, client: tuple[str, int]) -> bool:
            self._relay(listener, target, host_socket, _same_source).forward(data, client)
            return True

        return divert

    def _relay(self, listener: Listener, target: str, new_socket: SocketFactory,
               source: Callable[[tuple[str, int]], tuple[str, int]]) -> UdpRelay:
        relays = self._relays.setdefault(listener.flow, {})
        relay = relays.get(target)
        if relay is None:
            relay = relays[target] = UdpRelay(
                self.hub, listener.sock, (target, listener.ns_port), new_socket, source,
                self.hub.engine.config.udp_timeout)
        return relay


def _any_port(client: tuple[str, int]) -> tuple[str, int]:
    """-u: the kernel picks the address (as pasta); the client's port, if free."""
    return "", client[1]


def _same_source(client: tuple[str, int]) -> tuple[str, int]:
    """-U: the client's own loopback address and port, on the host."""
    return client
