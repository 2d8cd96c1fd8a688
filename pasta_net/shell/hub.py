"""The hub: one epoll set for the tap and every host socket, and the action executor.

Why one private epoll instead of a trio task per socket: a TCP socket we read with
``MSG_PEEK`` stays readable as long as the namespace has not acknowledged its data, so
level-triggered readiness (what ``trio.lowlevel.wait_readable`` offers) would spin. We
register sockets edge-triggered (``EPOLLET``) in our own ``select.epoll`` and let trio
wait for *that* fd to become readable. Each wake-up drains every ready fd in one pass:
one engine call per tap batch, one task switch for any number of sockets.

Edge-triggered rules this file keeps: after an event, a socket is read or written until
``EAGAIN`` or until the engine has no room (it then asks again with :class:`TcpRead`
when the namespace opens its window); a write that was refused is retried only on the
next ``EPOLLOUT`` edge, which the refusal itself arms. Datagram sockets are consumed as
they are read, so they are level-triggered instead: each wake-up reads a bounded batch
per socket, and a socket with more waiting is simply reported again.

Kernels before 6.9 have no ``SO_PEEK_OFF`` on TCP sockets (:func:`peek_offset_works`
says which kind this is): each peek then starts at the head of the socket's queue, and
the bytes the namespace has not acknowledged yet (:meth:`TcpTable.unacked`) go into a
scratch buffer ahead of the frame slots, as passt does there. That copies the unacked
data again at every peek, and the end of the stream shows only once all of it is
acknowledged and discarded, so a discard on a closed stream peeks once more, after the
tap batch (whose ACKs the engine has all taken before the first discard runs).

Rule for the executor (as mitmproxy's server loop): it is synchronous. Actions run in
order; results fed back to the engine return more actions, which run at once
(depth-first), because they may refer to buffers that the next read reuses.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import mmap
import select
import socket
import struct
import termios
from collections.abc import Callable, Iterable

import attrs
import trio

from pasta_net.core.actions import (
    Action,
    CloseSocket,
    OpenSocket,
    SendDatagram,
    SendFrames,
    SocketKind,
    TcpDiscard,
    TcpRead,
    TcpSend,
    TcpShutdown,
)
from pasta_net.core.engine import Engine
from pasta_net.core.frames import VNET_HDR_LEN
from pasta_net.shell.pcap import PcapWriter
from pasta_net.shell.reserve import SpareFd
from pasta_net.shell.tap import FrameDevice

__all__ = ["Hub", "Traffic", "peek_offset_works"]

log = logging.getLogger("pasta_net.hub")

SO_PEEK_OFF = 42
_ET = select.EPOLLET
_TCP_EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | _ET
_DGRAM_EVENTS = select.EPOLLIN
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_PING_PROTO = {4: socket.IPPROTO_ICMP, 6: socket.IPPROTO_ICMPV6}
_KIND_TYPE = {
    SocketKind.TCP: socket.SOCK_STREAM,
    SocketKind.UDP: socket.SOCK_DGRAM,
    SocketKind.PING: socket.SOCK_DGRAM,
}
_LINGER_RESET = struct.pack("ii", 1, 0)
_DISCARD_CHUNK = 1 << 22
_MAX_EVENTS = 256
_BUSY_PASSES = 8
_DGRAM_BATCH = 64
IP_RECVERR, IPV6_RECVERR = 11, 25  # <linux/in.h>, <linux/in6.h>; not in Python's socket
_ERRQUEUE_CMSG = frozenset({(socket.SOL_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)})
_EE_ERRNO = struct.Struct("=I")  # struct sock_extended_err starts with ee_errno
_FREE_SPACE_QUERY = 16384
UDP_SEGMENT = 103  # <linux/udp.h>; not in Python's socket module
IP_BIND_ADDRESS_NO_PORT = 24  # <linux/in.h>; not in Python's socket module
_GSO_SIZE = struct.Struct("=H")


@attrs.define
class Traffic:
    """Frames and bytes through the frame device each way (run-time ``stats``).

    Counted once per batch, never per byte: ``sum(map(len, batch))`` runs in C.
    """

    frames_from_ns: int = 0
    bytes_from_ns: int = 0
    frames_to_ns: int = 0
    bytes_to_ns: int = 0


class Hub:
    """Owns the tap and the host sockets of one engine; runs until cancelled."""

    def __init__(self, engine: Engine, tap: FrameDevice, pcap: PcapWriter | None = None,
                 peek_offset: bool = True,
                 outbound: dict[int, tuple[str | None, str | None]] | None = None) -> None:
        self.engine = engine
        self.tap = tap
        self.pcap = pcap
        self.peek_offset = peek_offset
        """TCP sockets take ``SO_PEEK_OFF`` (:func:`peek_offset_works`)."""
        self.outbound = outbound or {}
        """``-o`` and ``--outbound-if4/6`` by IP version: (source address, interface)
        of the sockets we open towards anything but the host's loopback."""
        self.traffic = Traffic()
        self.epoll = select.epoll()
        self.epoll.register(tap.fd, select.EPOLLIN)
        self.sockets: dict[int, socket.socket] = {}
        self._connecting: set[int] = set()
        self._peer_closed: set[int] = set()
        self._peek_after_batch: set[int] = set()
        self._fd_handlers: dict[int, Callable[[int], None]] = {tap.fd: self._tap_ready}
        self._fd_flow: dict[int, int] = {}
        # An anonymous mapping never touched by MSG_TRUNC reads: costs no memory. Without
        # SO_PEEK_OFF, peeks skip unacknowledged bytes into it (then it is resident).
        self._discard = mmap.mmap(-1, _DISCARD_CHUNK)
        self._scratch = memoryview(self._discard)
        self._ping_warned = False
        self.spare = SpareFd()
        """Lets listeners refuse connections when we are out of fds (shell/reserve.py)."""
        self._udp_listeners: dict[int, tuple[int, bytes | None]] = {}
        self.now: Callable[[], float] = trio.current_time
        """The time on trio's clock; :meth:`run` binds the clock's own method, since
        ``trio.current_time()`` is three calls deep and the hot path asks several times
        per wake-up."""
        self._no_gso: set[int] = set()
        self._udp_diverts: dict[int, Callable[[bytes, tuple], bool]] = {}
        self._dispatch: dict[type, Callable] = {
            SendFrames: self._send_frames,
            OpenSocket: self._open_socket,
            SendDatagram: self._send_datagram,
            CloseSocket: self._close_socket,
            TcpSend: self._tcp_send,
            TcpRead: self._tcp_read,
            TcpDiscard: self._tcp_discard,
            TcpShutdown: self._tcp_shutdown,
        }

    # ------------------------------------------------------------- the loop --
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.now = trio.lowlevel.current_clock().current_time
        task_status.started()
        while True:
            # One cancel scope serves every wait until its deadline fires. Entering a
            # scope per wait, or moving its deadline at every pass, was 5-8% of a
            # request/response profile: most passes push a timer *later* (a
            # retransmission timer re-armed), which needs no change, since waking up
            # early for nothing costs one pass.
            with trio.CancelScope() as waiting:
                await self._serve_until_a_deadline(waiting)  # returns or is cancelled
            # What arrived by now goes first: after a late wake-up, an ACK waiting in the
            # tap must stop a retransmission before its timer fires.
            self._serve_ready()
            self.execute(self.engine.handle_deadline(self.now()))

    async def _serve_until_a_deadline(self, waiting: trio.CancelScope) -> None:
        """Drain ready fds; between passes wait for our epoll fd, ``waiting`` cancelled no
        later than the engine's next deadline; return when that one is due."""
        epoll = self.epoll
        engine = self.engine
        now = self.now
        busy = 0
        while True:
            deadline = engine.next_deadline()
            if deadline is not None:
                if now() >= deadline:
                    return
                if deadline < waiting.deadline:
                    waiting.deadline = deadline
            if not self._serve_ready():
                busy = 0
                await trio.lowlevel.wait_readable(epoll.fileno())
                continue
            # Waiting above is a checkpoint already; only a run of busy passes needs an
            # explicit one, so other tasks (splices, control clients) are not starved.
            # Yielding after every pass cost two extra syscalls per request/response.
            busy += 1
            if busy == _BUSY_PASSES:
                busy = 0
                await trio.lowlevel.checkpoint()

    def _serve_ready(self) -> bool:
        """One pass over the fds that are ready now; False if none was."""
        events = self.epoll.poll(0, _MAX_EVENTS)
        handlers = self._fd_handlers
        for fd, mask in events:
            handler = handlers.get(fd)
            if handler is not None:
                handler(mask)
        return bool(events)

    def add_fd(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        """Watch another fd (listeners, control sockets) in the same epoll set."""
        self.epoll.register(fd, events)
        self._fd_handlers[fd] = handler

    def remove_fd(self, fd: int) -> None:
        self._fd_handlers.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        for flow in list(self.sockets):
            self._close_socket(CloseSocket(flow))
        self.spare.close()
        self.epoll.close()

    # ------------------------------------------------------------ executor --
    def execute(self, actions: Iterable[Action]) -> None:
        dispatch = self._dispatch
        for action in actions:
            dispatch[type(action)](action)

    # ----------------------------------------------------------------- tap --
    def _tap_ready(self, _mask: int) -> None:
        frames = self.tap.read_batch()
        if not frames:
            return
        self.traffic.frames_from_ns += len(frames)
        self.traffic.bytes_from_ns += sum(map(len, frames))
        if self.pcap is not None:
            for frame in frames:
                self.pcap.write(frame, vnet=False)
        self.execute(self.engine.receive_frames(frames, self.now()))
        while self._peek_after_batch:
            self._tcp_read(TcpRead(self._peek_after_batch.pop()))

    def _send_frames(self, action: SendFrames) -> None:
        self.tap.write_batch(action.frames)
        count = len(action.frames)  # each frame starts with its virtio-net header slot
        self.traffic.frames_to_ns += count
        self.traffic.bytes_to_ns += sum(map(len, action.frames)) - VNET_HDR_LEN * count
        if self.pcap is not None:
            for frame in action.frames:
                self.pcap.write(frame)

    # -------------------------------------------------------------- sockets --
    def _open_socket(self, action: OpenSocket) -> None:
        family = _FAMILY[action.family]
        proto = _PING_PROTO[action.family] if action.kind is SocketKind.PING else 0
        try:
            sock = socket.socket(family, _KIND_TYPE[action.kind] | socket.SOCK_NONBLOCK, proto)
        except OSError as exc:
            self._open_failed(action, exc)
            return
        self.sockets[action.flow] = sock
        self._fd_flow[sock.fileno()] = action.flow
        try:
            source = self._bind_outbound(sock, action)
            opener = _OPENERS[action.kind]
            opener(self, sock, action, source)
        except OSError as exc:
            self._forget(action.flow)
            sock.close()
            self._open_failed(action, exc)

    def _open_failed(self, action: OpenSocket, exc: OSError) -> None:
        if action.kind is SocketKind.PING and exc.errno in (errno.EACCES, errno.EPERM):
            if not self._ping_warned:
                log.warning(
                    "ICMP echo unavailable: ping sockets not permitted (net.ipv4.ping_group_range)"
                )
                self._ping_warned = True
        else:
            log.debug("flow %d: cannot open %s socket: %s", action.flow, action.kind.value, exc)
        self.execute(self.engine.open_failed(action.flow, exc.errno or 0, self.now()))

    def _bind_outbound(self, sock: socket.socket, action: OpenSocket) -> str:
        """Apply ``-o``/``--outbound-if*`` to a new socket; the source address to bind
        ("" for any). Not towards the host's loopback (``--map-host-loopback``), which
        no other interface reaches."""
        addr, iface = self.outbound.get(action.family, (None, None))
        if not (addr or iface) or ipaddress.ip_address(action.remote[0]).is_loopback:
            return ""  # the common case first: no address to parse per connection
        if iface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        if addr and action.kind is not SocketKind.UDP:  # UDP binds with its port below
            # the port comes with connect(), per destination: a bind alone would take
            # one from the ephemeral range for every connection
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((addr, 0))
        return addr or ""

    def _open_tcp(self, sock: socket.socket, action: OpenSocket, _source: str) -> None:
        if self.peek_offset:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(action.remote)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, errno.errorcode.get(err, str(err)))
        self._connecting.add(action.flow)
        self._watch(sock, _TCP_EVENTS, self._tcp_event)

    def _open_dgram(self, sock: socket.socket, action: OpenSocket, source: str) -> None:
        if action.local is not None:
            try:
                sock.bind((source, action.local[1]))
            except OSError:
                sock.bind((source, 0))
        if action.kind is SocketKind.UDP:
            sock.connect(action.remote)
        self._watch(sock, _DGRAM_EVENTS, self._dgram_event)

    def _watch(self, sock: socket.socket, events: int, handler: Callable) -> None:
        fd = sock.fileno()
        self.add_fd(fd, events, lambda mask: handler(self._fd_flow.get(fd), mask))

    def adopt(self, flow: int, sock: socket.socket, kind: SocketKind) -> None:
        """Take over a socket the listeners accepted (already connected)."""
        sock.setblocking(False)
        if kind is SocketKind.TCP:
            if self.peek_offset:
                sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sockets[flow] = sock
        self._fd_flow[sock.fileno()] = flow
        self._watch(
            sock,
            _TCP_EVENTS if kind is SocketKind.TCP else _DGRAM_EVENTS,
            self._tcp_event if kind is SocketKind.TCP else self._dgram_event,
        )

    def register_udp_listener(self, flow: int, sock: socket.socket, ns_port: int,
                              divert: Callable[[bytes, tuple], bool] | None = None,
                              to_addr: bytes | None = None) -> None:
        """A ``-u`` listener: datagrams from clients start inbound UDP flows (to
        ``to_addr`` if given, else the namespace's address), except those
        ``divert(data, client)`` takes (returns True for: the loopback relay's)."""
        self.sockets[flow] = sock
        self._udp_listeners[flow] = (ns_port, to_addr)
        if divert is not None:
            self._udp_diverts[flow] = divert
        # ICMP errors about what we send to clients: unconnected, it gets them queued
        # (with the client's address) only if asked to.
        sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        self._fd_flow[sock.fileno()] = flow
        self._watch(sock, _DGRAM_EVENTS, self._dgram_event)

    def _forget(self, flow: int) -> socket.socket | None:
        sock = self.sockets.pop(flow, None)
        self._udp_listeners.pop(flow, None)
        self._peer_closed.discard(flow)
        self._no_gso.discard(flow)
        self._udp_diverts.pop(flow, None)
        self._connecting.discard(flow)
        if sock is not None:
            fd = sock.fileno()
            self._fd_flow.pop(fd, None)
            self.remove_fd(fd)
        return sock

    def _close_socket(self, action: CloseSocket) -> None:
        sock = self._forget(action.flow)
        if sock is None:
            return
        if action.reset and self._is_stream(sock):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        sock.close()

    @staticmethod
    def _is_stream(sock: socket.socket) -> bool:
        return sock.type == socket.SOCK_STREAM

    # ------------------------------------------------------------ datagrams --
    def _send_datagram(self, action: SendDatagram) -> None:
        sock = self.sockets.get(action.flow)
        payloads = action.payloads
        if sock is None:
            self.engine.drop("stale", f"datagram for closed socket {action.flow}", len(payloads))
            return
        try:
            if len(payloads) > 1 and action.flow not in self._no_gso:
                self._send_segmented(action.flow, sock, payloads, action.remote)
            else:
                self._send_each(sock, payloads, action.remote)
        except BlockingIOError:
            self.engine.drop("socket-busy", f"datagrams on flow {action.flow}", len(payloads))
        except OSError as exc:
            self.execute(self.engine.socket_failed(action.flow, exc.errno or 0, self.now()))

    def _send_segmented(self, flow: int, sock: socket.socket, payloads: list,
                        remote: tuple[str, int] | None) -> None:
        """Datagrams of one size (the last maybe shorter) in one call: UDP GSO. The
        kernel then routes and builds one packet for up to 46 datagrams of 1400 bytes,
        and splits it only where it leaves.

        It refuses where a segment would not fit the path MTU (``EINVAL``) or
        segmentation is not available (``EIO``); the flow then sends one datagram per
        call from now on.
        """
        segment = ((socket.SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(len(payloads[0]))),)
        try:
            if remote is None:
                sock.sendmsg(payloads, segment)
            else:
                sock.sendmsg(payloads, segment, 0, remote)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOPROTOOPT):
                raise
            log.debug("flow %d: no UDP segmentation offload (%s)", flow, exc)
            self._no_gso.add(flow)
            self._send_each(sock, payloads, remote)

    @staticmethod
    def _send_each(sock: socket.socket, payloads: list, remote: tuple[str, int] | None) -> None:
        for payload in payloads:
            if remote is None:
                sock.send(payload)
            else:
                sock.sendto(payload, remote)

    def _dgram_event(self, flow: int | None, mask: int) -> None:
        sock = self.sockets.get(flow) if flow is not None else None
        if sock is None:
            return
        engine = self.engine
        listener = self._udp_listeners.get(flow)  # (ns_port, to_addr) of a -u listener
        divert = self._udp_diverts.get(flow)
        if listener is not None and mask & select.EPOLLERR:
            self._listener_errors(flow, sock)
        for _ in range(_DGRAM_BATCH):
            try:
                data, peer = sock.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                self.execute(engine.socket_failed(flow, exc.errno or 0, self.now()))
                if flow not in self.sockets:  # a ping flow ends with its error
                    return
                continue
            if divert is not None and divert(data, peer[:2]):
                continue
            if listener is not None:
                actions: list[Action] = []
                engine.udp.from_listener(flow, listener[0], data, peer[:2], self.now(),
                                         actions, listener[1])
                self.execute(actions)
            else:
                self.execute(engine.datagram_received(flow, data, peer, self.now()))
            if flow not in self.sockets:
                return

    def _listener_errors(self, flow: int, sock: socket.socket) -> None:
        """Drain a ``-u`` listener's error queue (``IP_RECVERR``): each entry names the
        client a datagram of ours could not reach, and the errno of the ICMP error."""
        for _ in range(_DGRAM_BATCH):
            try:
                _data, ancdata, _flags, client = sock.recvmsg(0, 512, socket.MSG_ERRQUEUE)
            except OSError:  # EAGAIN: drained
                return
            for level, kind, data in ancdata:
                if (level, kind) in _ERRQUEUE_CMSG and len(data) >= _EE_ERRNO.size:
                    actions: list[Action] = []
                    err = _EE_ERRNO.unpack_from(data)[0]
                    self.engine.udp.listener_error(flow, client[:2], err, actions)
                    self.execute(actions)

    # ------------------------------------------------------------------ TCP --
    def _tcp_event(self, flow: int | None, mask: int) -> None:
        sock = self.sockets.get(flow) if flow is not None else None
        if sock is None:
            return
        if flow in self._connecting:
            if not mask & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                return
            self._connecting.discard(flow)
            # A connect that failed says so with EPOLLERR; nothing is queued on one that
            # did: two syscalls per connection fewer than asking SO_ERROR and SIOCOUTQ.
            if mask & select.EPOLLERR:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.execute(self.engine.socket_failed(flow, err, self.now()))
                    return
            sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            self.execute(self.engine.tcp.connected(flow, sndbuf, self.now()))
        if mask & select.EPOLLERR:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.execute(self.engine.socket_failed(flow, err, self.now()))
                return
        if mask & select.EPOLLOUT:
            self._tcp_writable(flow, sock)
        if mask & (select.EPOLLRDHUP | select.EPOLLHUP):
            self._peer_closed.add(flow)
        if mask & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP):
            self._tcp_read(TcpRead(flow))

    def _tcp_writable(self, flow: int, sock: socket.socket) -> None:
        tcp = self.engine.tcp
        tail = tcp.tail_to_send(flow)
        if tail is None:
            if tcp.window_starved(flow):
                self.execute(tcp.writable(flow, self._free_space(sock), self.now()))
            return
        try:
            accepted = sock.send(tail)
        except BlockingIOError:
            return
        except OSError as exc:
            self.execute(self.engine.socket_failed(flow, exc.errno or 0, self.now()))
            return
        self.execute(tcp.tail_sent(flow, accepted, self._free_space(sock), self.now()))

    def _tcp_read(self, action: TcpRead) -> None:
        flow = action.flow
        sock = self.sockets.get(flow)
        if sock is None or flow in self._connecting:
            return
        tcp = self.engine.tcp
        if action.rewind and self.peek_offset:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        while True:
            slots = tcp.read_slots(flow)
            if not slots:
                return
            skip = 0 if self.peek_offset else tcp.unacked(flow)
            try:
                if skip:
                    count = sock.recvmsg_into(self._skipping(skip) + slots, 0,
                                              socket.MSG_PEEK)[0] - skip
                else:
                    count = sock.recvmsg_into(slots, 0, socket.MSG_PEEK)[0]
            except BlockingIOError:
                return
            except OSError as exc:
                self.execute(self.engine.socket_failed(flow, exc.errno or 0, self.now()))
                return
            if count == 0 and not skip:
                self.execute(tcp.eof(flow, self.now()))
                return
            if count <= 0:  # only what the namespace has already: nothing new yet
                return
            self.execute(tcp.data(flow, count, self.now()))
            if flow not in self.sockets:
                return
            # A short peek drained the socket. If the peer's FIN was already queued, its
            # readiness edge is spent: peek once more to see the end of the stream.
            if count < sum(map(len, slots)) and flow not in self._peer_closed:
                return

    def _skipping(self, count: int) -> list[memoryview]:
        """Scratch buffers for ``count`` bytes of a peek (no SO_PEEK_OFF): the same
        mapping as often as needed, since what lands there is never read."""
        whole, rest = divmod(count, _DISCARD_CHUNK)
        return [self._scratch] * whole + ([self._scratch[:rest]] if rest else [])

    def _tcp_send(self, action: TcpSend) -> None:
        sock = self.sockets.get(action.flow)
        if sock is None:
            return
        try:
            accepted = sock.sendmsg(action.payloads)
        except BlockingIOError:
            accepted = 0
        except OSError as exc:
            self.execute(self.engine.socket_failed(action.flow, exc.errno or 0, self.now()))
            return
        # Two syscalls to learn the free space pay off for bulk sends; a small send taken
        # whole only lowers the engine's last figure (free = -1: "estimate it").
        small = accepted < _FREE_SPACE_QUERY and accepted == sum(map(len, action.payloads))
        free = -1 if small else self._free_space(sock)
        self.execute(self.engine.tcp.sent(action.flow, action.payloads, accepted, free,
                                          self.now()))

    def _tcp_discard(self, action: TcpDiscard) -> None:
        sock = self.sockets.get(action.flow)
        if sock is None:
            return
        remaining = action.count
        while remaining > 0:
            try:
                got = sock.recv_into(
                    self._discard, min(remaining, _DISCARD_CHUNK), socket.MSG_TRUNC
                )
            except BlockingIOError:
                log.warning(
                    "flow %d: %d acknowledged bytes not in the socket", action.flow, remaining
                )
                return
            except OSError as exc:
                self.execute(self.engine.socket_failed(action.flow, exc.errno or 0, self.now()))
                return
            if got == 0:
                return
            remaining -= got
        if not self.peek_offset and action.flow in self._peer_closed:
            # The end of the stream shows to a peek from the head only once everything
            # before it is gone: this discard may have been the last of it. Peek after
            # the batch, not now: the engine has taken every ACK of the batch already,
            # and a peek now would skip what the discards still to run will remove.
            self._peek_after_batch.add(action.flow)

    def _tcp_shutdown(self, action: TcpShutdown) -> None:
        sock = self.sockets.get(action.flow)
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                self.execute(self.engine.socket_failed(action.flow, exc.errno or 0, self.now()))

    @staticmethod
    def _free_space(sock: socket.socket) -> int:
        """Free send space: ``SO_SNDBUF`` minus what is queued (``SIOCOUTQ``)."""
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        return max(0, sndbuf - queued)


_OPENERS: dict[SocketKind, Callable[[Hub, socket.socket, OpenSocket, str], None]] = {
    SocketKind.TCP: Hub._open_tcp,
    SocketKind.UDP: Hub._open_dgram,
    SocketKind.PING: Hub._open_dgram,
}


def peek_offset_works() -> bool:
    """Whether TCP sockets take ``SO_PEEK_OFF`` (Linux 6.9 and later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        except OSError:
            return False
    return True
