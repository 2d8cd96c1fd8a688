"""TCP translation: a minimal TCP endpoint towards the namespace, a kernel socket outside.

Theory of operation
-------------------
The host kernel socket is the real TCP endpoint; towards the namespace we keep only
sequence numbers, windows and timers (no reassembly, no send buffer of our own).

Host → namespace: data is *peeked* from the socket (``MSG_PEEK`` with ``SO_PEEK_OFF``,
so each peek continues where the last stopped; kernels before 6.9 have no
``SO_PEEK_OFF`` on TCP, and the shell then peeks past :meth:`TcpTable.unacked` bytes
into a scratch buffer instead) straight into frame slots of
:attr:`TcpTable.pool`, and is dropped from the socket (:class:`TcpDiscard`) only when
the namespace acknowledges it. The socket's receive queue *is* our retransmission
buffer: on a timeout or three duplicate ACKs we rewind the peek offset to 0 and send
everything unacknowledged again.

Namespace → host: in-order payloads of a batch go to the socket in one ``sendmsg``
(:class:`TcpSend`) and are acknowledged only once the kernel accepted them. The window
we advertise is the socket's free send space, so the namespace is never invited to
send more than the socket can take (C pasta's collapse on this machine came from
inviting more and throwing the rest away). If the socket still takes less than it was
offered (its accounting is not byte-exact), the refused bytes are kept in a small
per-connection ``tail`` (bounded by what we advertised) and pushed as soon as the socket
is writable again, followed by a window update: nothing invited is ever discarded, so
no retransmission timeout is ever needed to recover. Out-of-order segments (loss inside
the namespace's tap queue) are answered with an immediate duplicate ACK each, which
drives the sender's fast retransmit.

Connection lifecycle, as events rather than a big state machine (like passt's tcp.c):
``syn_from_ns`` / ``accepted`` → ``established`` → each direction closes on its own:
``ns_fin`` (namespace sent FIN: shut the socket's write side) and ``sock_eof`` (the peer
closed: send FIN once all data is out, ``fin_acked`` when the namespace acknowledges
it). Both closed, or a reset from either side, removes the connection and its socket.

Limits against a hostile namespace (DESIGN.md §6): at most :data:`MAX_CONNECTIONS`
connections and :data:`MAX_HALF_OPEN` of them half-open (handshake not complete: a host
connect pending, or our SYN to the namespace unanswered). A SYN flood to many
destinations therefore holds at most :data:`MAX_HALF_OPEN` sockets: each new connection
beyond either bound evicts the oldest half-open one (reset both ways), and only when
every connection is established is the new one refused with a reset, so established
connections are never sacrificed. A SYN must name unicast addresses that are not
loopback and non-zero ports (as passt); anything else is dropped with a counter, so
no frame can open a socket to the host's own loopback services. A reset is accepted
only with a sequence number inside the window (RFC 9293 §3.10.7.4, RFC 5961 §3):
one with an absurd sequence number cannot end a connection. It gets a challenge ACK
instead, so that a genuine reset that merely raced with our ACKs (a closed socket
answers with the acknowledgement number it saw) comes back with the right one. Data
beyond the furthest right edge we ever advertised is cut off (RFC 9293 §3.10.7.4
again): a namespace that ignores our window cannot make us hold more than we offered.

Our SYN towards the namespace (``-t``) is sent again after :data:`SYN_RTO`, doubling,
until :data:`SYN_TIMEOUT`. If the namespace answers it with a bare ACK (its port still
holds the previous connection in TIME_WAIT, and our SYN looked old to it), we reset
that with the sequence number it acknowledged (RFC 9293 §3.10.7.3), which ends the
TIME_WAIT, and the next SYN gets through. Initial sequence numbers follow RFC 6528 (a
4 µs clock plus a keyed hash of the four-tuple), so a new connection on a reused
four-tuple starts above the old one, as TIME_WAIT expects.

Timers (one per connection, :class:`Timers` key ``("tcp", flow)``): handshake
:data:`SYN_TIMEOUT`; retransmission of unacknowledged data from :data:`RTO_INITIAL`,
doubling up to :data:`RTO_MAX`, reset after :data:`MAX_RETRIES`; zero-window probes;
:data:`FIN_TIMEOUT` after one side closed; :data:`IDLE_TIMEOUT` otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import random
import struct
from typing import TYPE_CHECKING

import attrs

from pasta_net.core.actions import (
    Action,
    CloseSocket,
    OpenSocket,
    SendFrames,
    SocketKind,
    TcpDiscard,
    TcpRead,
    TcpSend,
    TcpShutdown,
)
from pasta_net.core.frames import IpPacket, forwardable
from pasta_net.core.tcpwire import ACK, FIN, PSH, RST, SYN, FrameTemplate, Segment, parse_segment

if TYPE_CHECKING:
    from pasta_net.core.engine import Engine

__all__ = ["MAX_CONNECTIONS", "MAX_HALF_OPEN", "TcpConn", "TcpTable"]

log = logging.getLogger("pasta_net.tcp")

MAX_CONNECTIONS = 1 << 17
MAX_HALF_OPEN = 1024
"""Connections whose handshake is not complete (the kernel's own SYN backlog default)."""
SYN_TIMEOUT = 10.0
SYN_RTO = 1.0
"""First retransmission of our SYN to the namespace (RFC 6298 §2.1)."""
RTO_INITIAL = 0.2
RTO_MAX = 8.0
MAX_RETRIES = 10
FIN_TIMEOUT = 60.0
IDLE_TIMEOUT = 7200.0
OUR_WSCALE = 9
"""Our window scale shift: up to 32 MiB of advertised window (a socket's largest send buffer)."""
MIN_WINDOW = 64 << 10
MAX_TAIL = 8 << 20
"""Bytes we hold when the socket takes less than we advertised (never reached in practice)."""
_MAX_WINDOW = 0xFFFF << OUR_WSCALE
_SEGMENT_MAX = 65535 - 60 - 20
"""Largest payload of one (GSO) frame: the IP length fields are 16 bits."""
_READ_FRAMES = 4
_POOL_SIZE = 16
_MOD = 1 << 32
_HALF = 1 << 31


def seq_sub(a: int, b: int) -> int:
    """``a - b`` in 32-bit sequence space, as a signed distance (RFC 9293 §3.4)."""
    return ((a - b + _HALF) % _MOD) - _HALF


def _quiet_limit(conn: TcpConn) -> float:
    """How long ``conn`` may go without progress. Half-closed, it still carries data the
    other way, and Linux keeps such a socket as long as its application holds it: only
    once both sides have closed is it :data:`FIN_TIMEOUT` (a last ACK that got lost)."""
    return FIN_TIMEOUT if conn.ns_fin and conn.fin_sent else IDLE_TIMEOUT


@attrs.define(eq=False, slots=True)
class TcpConn:
    flow: int
    version: int
    ns_addr: bytes
    ns_port: int
    peer: bytes
    peer_port: int
    template: FrameTemplate
    # towards the namespace
    seq_to_ns: int = 0
    """Next sequence number we send."""
    seq_acked_by_ns: int = 0
    """Everything before this the namespace has acknowledged (and we discarded)."""
    wnd_from_ns: int = 0
    ws_from_ns: int = 0
    mss: int = 536
    # from the namespace
    seq_from_ns: int = 0
    """Next sequence number expected from the namespace (tail bytes included)."""
    ws_to_ns: int = 0
    tail: bytearray = attrs.field(factory=bytearray)
    free: int = 0
    """Free send space of the host socket at the last report."""
    last_ack_sent: int = -1
    last_wnd_sent: int = -1
    rcv_edge: int = -1
    """The furthest sequence number a window we advertised let the namespace reach
    (-1 before the first): data beyond it was never invited, and is not taken."""
    syn_ack_seq: int = -1
    more_to_read: bool = False
    """The last peek was cut short by the namespace's window, not by an empty socket."""
    # lifecycle
    established: bool = False
    inbound: bool = False
    ns_fin: bool = False
    sock_shut: bool = False
    sock_eof: bool = False
    fin_sent: bool = False
    fin_acked: bool = False
    # retransmission
    rto: float = RTO_INITIAL
    retries: int = 0
    dup_acks: int = 0
    last_progress: float = 0.0


class TcpTable:
    """All TCP connections of one engine, keyed by their namespace-side four-tuple."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._by_key: dict[tuple[bytes, int, bytes, int], TcpConn] = {}
        self._by_flow: dict[int, TcpConn] = {}
        self._half_open: dict[int, TcpConn] = {}
        """Connections whose handshake is not complete, oldest first (insertion order)."""
        self._isn_key = random.getrandbits(128).to_bytes(16, "big")
        self.pool = [bytearray(65536 + 128) for _ in range(_POOL_SIZE)]
        self._pool_next = 0
        self._pending: list[tuple[memoryview, int]] = []
        self._pending_bytes = 0
        """The total size of the slots in ``_pending``."""

    def __len__(self) -> int:
        return len(self._by_flow)

    # ------------------------------------------------------------ from the ns --
    def classify(self, packet: IpPacket, batch: dict) -> None:
        """Parse a segment and queue it under its connection for :meth:`segments`."""
        seg = parse_segment(packet.l4)
        batch[(packet.src, seg.sport, packet.dst, seg.dport)].append(seg)

    def segments(
        self,
        key: tuple[bytes, int, bytes, int],
        segs: list[Segment],
        now: float,
        actions: list[Action],
    ) -> None:
        conn = self._by_key.get(key)
        if conn is None:
            self._no_connection(key, segs[0], now, actions)
            return
        payloads: list[memoryview] = []
        must_ack = want_read = False
        for seg in segs:
            if seg.flags & RST:
                if self._reset_acceptable(conn, seg):
                    self._remove(conn, actions, reset=True)
                    return
                self.engine.drop("tcp-bad-reset", f"flow {conn.flow} seq {seg.seq}")
                must_ack |= conn.established  # challenge ACK (RFC 5961 §3.2)
                continue
            if seg.flags & SYN:
                must_ack |= self._syn_in_connection(conn, seg, now, actions)
                continue
            if conn.inbound and not conn.established:
                self._reset_stray_ack(conn, seg, actions)
                continue
            if seg.flags & ACK:
                want_read |= self._ack(conn, seg, now, actions)
            must_ack |= self._payload(conn, seg, payloads)
        if conn.flow not in self._by_flow:
            return
        if want_read:
            actions.append(TcpRead(conn.flow))
        if payloads:
            if conn.tail:
                self._hold(conn, payloads)
            else:
                actions.append(TcpSend(conn.flow, payloads))
                return  # acked from sent(), once the kernel said how much it took
        if conn.ns_fin and not conn.tail and not conn.sock_shut:
            self._shutdown(conn, actions)
            must_ack = True
        if must_ack:
            self._send_ack(conn, actions, force=True)
        self._maybe_close(conn, now, actions)

    def _no_connection(
        self, key: tuple[bytes, int, bytes, int], seg: Segment, now: float, actions: list[Action]
    ) -> None:
        if seg.flags & RST:
            return
        if seg.flags & SYN and not seg.flags & ACK:
            self._open_outbound(key, seg, now, actions)
            return
        # RFC 9293 §3.10.7.1: a segment for no connection gets a reset.
        ns_addr, ns_port, peer, peer_port = key
        template = self._template(ns_addr, ns_port, peer, peer_port)
        if seg.flags & ACK:
            frame = self._frame(template, seg.ack, 0, RST)
        else:
            frame = self._frame(template, 0, (seg.seq + len(seg.payload)) % _MOD, RST | ACK)
        actions.append(SendFrames([frame]))

    def _open_outbound(
        self, key: tuple[bytes, int, bytes, int], seg: Segment, now: float, actions: list[Action]
    ) -> None:
        engine = self.engine
        ns_addr, ns_port, peer, peer_port = key
        if not (forwardable(ns_addr) and forwardable(peer) and ns_port and peer_port):
            engine.drop("bad-address", f"tcp syn {ns_addr.hex()}:{ns_port} -> "
                                       f"{peer.hex()}:{peer_port}")
            return
        if not self._make_room(now, actions):
            template = self._template(ns_addr, ns_port, peer, peer_port)
            actions.append(SendFrames([self._frame(template, 0, (seg.seq + 1) % _MOD, RST | ACK)]))
            return
        conn = self._new_conn(engine.new_flow_id(), ns_addr, ns_port, peer, peer_port)
        self._learn_syn(conn, seg)
        conn.seq_from_ns = (seg.seq + 1) % _MOD
        remote = engine.config.mapping.outbound(peer, peer_port)
        self._add(conn)
        actions.append(OpenSocket(conn.flow, SocketKind.TCP, conn.version, remote))
        self._schedule(conn, now + SYN_TIMEOUT)

    def _syn_in_connection(
        self, conn: TcpConn, seg: Segment, now: float, actions: list[Action]
    ) -> bool:
        """SYN-ACK to our SYN (inbound), or a retransmitted SYN or SYN-ACK (ours to it, or
        our ACK of its, was lost); True if an ACK is due."""
        if not conn.inbound:
            same_syn = (seg.seq + 1) % _MOD == conn.seq_from_ns
            if conn.established and not seg.flags & ACK and same_syn:
                actions.append(SendFrames([self._syn_ack(conn)]))
                if conn.seq_to_ns != conn.syn_ack_seq:
                    self._rewind(conn, actions)  # a server that spoke first: again, after
            return False
        if conn.established:
            return bool(seg.flags & ACK)  # its SYN-ACK again: our ACK was lost
        if seg.flags & ACK:
            if seg.ack != conn.seq_to_ns:
                self._reset_stray_ack(conn, seg, actions)
                return False
            self._learn_syn(conn, seg)
            conn.seq_from_ns = (seg.seq + 1) % _MOD
            conn.seq_acked_by_ns = seg.ack
            conn.established = True
            self._half_open.pop(conn.flow, None)
            conn.rto = RTO_INITIAL
            conn.last_progress = now
            self._schedule(conn, now + IDLE_TIMEOUT)
            actions.append(TcpRead(conn.flow))
            return True
        return False

    def _reset_stray_ack(self, conn: TcpConn, seg: Segment, actions: list[Action]) -> None:
        """Our SYN is unanswered and the namespace acknowledges something else: most
        likely a TIME_WAIT socket on the same four-tuple. Reset what it acknowledged
        (RFC 9293 §3.10.7.3); our SYN goes again at its next retransmission."""
        if seg.flags & ACK:
            self.engine.drop("tcp-stray-ack", f"flow {conn.flow} before the handshake")
            actions.append(SendFrames([self._frame(conn.template, seg.ack, 0, RST)]))

    def _isn(self, conn: TcpConn, now: float) -> int:
        """RFC 6528: a 4 µs clock plus a keyed hash of the four-tuple."""
        tuple_ = conn.ns_addr + conn.peer + struct.pack("!HH", conn.ns_port, conn.peer_port)
        offset = hashlib.blake2s(tuple_, key=self._isn_key, digest_size=4).digest()
        return (int(now * 250_000) + int.from_bytes(offset, "big")) % _MOD

    def _make_room(self, now: float, actions: list[Action]) -> bool:
        """Whether a new connection fits, evicting the oldest half-open one if needed."""
        if len(self._half_open) < MAX_HALF_OPEN and len(self._by_flow) < MAX_CONNECTIONS:
            return True
        if not self._half_open:
            self.engine.drop("tcp-table-full", f"{len(self._by_flow)} connections")
            log.warning("TCP connection table full (%d): refusing new connection",
                        len(self._by_flow))
            return False
        oldest = next(iter(self._half_open.values()))
        self.engine.drop("tcp-half-open-evicted", f"flow {oldest.flow}")
        self.failed(oldest.flow, 0, now, actions)
        return True

    def _reset_acceptable(self, conn: TcpConn, seg: Segment) -> bool:
        """A reset from the namespace ends ``conn`` only if it belongs to it.

        Before the namespace answered our SYN (inbound), it must acknowledge the SYN, as
        the kernel's reply to a SYN for a closed port does (RFC 9293 §3.10.7.3).
        Otherwise its sequence number must lie between what we acknowledged and the
        largest window we can have offered (§3.10.7.4): the namespace may have sent
        that much that we never saw.
        """
        if conn.inbound and not conn.established:
            return bool(seg.flags & ACK) and seg.ack == conn.seq_to_ns
        return 0 <= seq_sub(seg.seq, self._ack_value(conn)) <= _MAX_WINDOW + len(conn.tail)

    def _learn_syn(self, conn: TcpConn, seg: Segment) -> None:
        default_mss = 536 if conn.version == 4 else 1220
        conn.mss = max(64, seg.mss or default_mss)
        # Both sides scale, or neither does (RFC 7323 §1.3): our offer in an inbound SYN
        # is void when the namespace's SYN-ACK carries no scale of its own.
        conn.ws_from_ns = seg.wscale or 0
        conn.ws_to_ns = OUR_WSCALE if seg.wscale is not None else 0
        conn.wnd_from_ns = seg.window  # never scaled in a SYN (RFC 7323 §2.2)

    def _ack(self, conn: TcpConn, seg: Segment, now: float, actions: list[Action]) -> bool:
        """Process the acknowledgement and window of ``seg``; True if we may read more."""
        window = seg.window << conn.ws_from_ns
        acked = seq_sub(seg.ack, conn.seq_acked_by_ns)
        in_flight = seq_sub(conn.seq_to_ns, conn.seq_acked_by_ns)
        if acked > in_flight or acked < 0:
            return False  # acks what we never sent, or old: ignore (RFC 9293 §3.10.7.4)
        if acked > 0:
            data = acked - 1 if conn.fin_sent and acked == in_flight else acked
            if conn.fin_sent and acked == in_flight:
                conn.fin_acked = True
            conn.seq_acked_by_ns = seg.ack
            if data:
                actions.append(TcpDiscard(conn.flow, data))
            conn.dup_acks = 0
            conn.retries = 0
            conn.rto = RTO_INITIAL
            conn.last_progress = now
            conn.wnd_from_ns = window
            self._arm(conn, now)
            if conn.sock_eof and not conn.fin_sent:
                self._send_fin(conn, now, actions)
            return conn.more_to_read and not conn.sock_eof
        if window != conn.wnd_from_ns:
            opened = window > conn.wnd_from_ns
            conn.wnd_from_ns = window
            return opened and conn.more_to_read and not conn.sock_eof
        if in_flight > 0 and not seg.payload and not seg.flags & FIN:
            conn.dup_acks += 1
            if conn.dup_acks == 3:  # RFC 5681 §3.2 fast retransmit
                self._rewind(conn, actions)
        return False

    def _payload(self, conn: TcpConn, seg: Segment, payloads: list[memoryview]) -> bool:
        """Take in-order payload (and FIN); True if the segment needs an immediate ACK."""
        if not conn.established:
            return False
        data = seg.payload
        offset = seq_sub(conn.seq_from_ns, seg.seq)
        if offset < 0:
            self.engine.drop("tcp-out-of-order", f"flow {conn.flow}")
            return True  # duplicate ACK: lets the sender fast-retransmit
        if offset > 0:
            if offset >= len(data) + (1 if seg.flags & FIN else 0):
                # All old: a retransmission, a keepalive or a zero-window probe (no data,
                # one below what we expect). Each gets an ACK (RFC 9293 §3.10.7.4), or
                # the namespace's keepalive gives up and resets an idle connection.
                return True
            data = data[offset:] if offset < len(data) else data[len(data) :]
        if conn.ns_fin:
            return bool(data)
        room = seq_sub(conn.rcv_edge, conn.seq_from_ns) if conn.rcv_edge >= 0 else len(data)
        beyond = len(data) > room
        if beyond:  # a FIN after the data is beyond too
            self.engine.drop("tcp-beyond-window", f"flow {conn.flow}")
            data = data[: max(room, 0)]
        if data:
            if len(conn.tail) + len(data) > MAX_TAIL:
                self.engine.drop("tcp-window-overrun", f"flow {conn.flow}")
                return True
            payloads.append(data)
            conn.seq_from_ns = (conn.seq_from_ns + len(data)) % _MOD
        if seg.flags & FIN and not beyond:
            conn.ns_fin = True
            conn.seq_from_ns = (conn.seq_from_ns + 1) % _MOD
            return True
        return beyond

    def _hold(self, conn: TcpConn, payloads: list[memoryview]) -> None:
        for data in payloads:
            conn.tail += data

    # ------------------------------------------------------- socket results --
    def sent(
        self, flow: int, payloads: list[memoryview], accepted: int, free: int, now: float
    ) -> list[Action]:
        """The kernel took ``accepted`` bytes of the :class:`TcpSend` of ``payloads``."""
        conn = self._by_flow.get(flow)
        if conn is None:
            return []
        conn.free = free if free >= 0 else max(0, conn.free - accepted)
        if accepted:
            conn.last_progress = now  # an upload is progress as much as a download
        actions: list[Action] = []
        self._keep_refused(conn, payloads, accepted)
        if conn.ns_fin and not conn.tail and not conn.sock_shut:
            self._shutdown(conn, actions)
        self._send_ack(conn, actions)
        self._maybe_close(conn, now, actions)
        return actions

    @staticmethod
    def _keep_refused(conn: TcpConn, payloads: list[memoryview], accepted: int) -> None:
        """Copy what the socket refused out of the tap buffers (they are reused)."""
        skip = accepted
        for data in payloads:
            if skip >= len(data):
                skip -= len(data)
                continue
            conn.tail += data[skip:]
            skip = 0

    def tail_to_send(self, flow: int) -> bytes | None:
        """The socket of ``flow`` is writable: the held tail to push, if any."""
        conn = self._by_flow.get(flow)
        if conn is None or not conn.tail:
            return None
        return bytes(conn.tail)

    def tail_sent(self, flow: int, accepted: int, free: int, now: float) -> list[Action]:
        conn = self._by_flow.get(flow)
        if conn is None:
            return []
        del conn.tail[:accepted]
        conn.free = free
        if accepted:
            conn.last_progress = now
        actions: list[Action] = []
        if conn.ns_fin and not conn.tail and not conn.sock_shut:
            self._shutdown(conn, actions)
        self._send_ack(conn, actions)
        self._maybe_close(conn, now, actions)
        return actions

    def window_starved(self, flow: int) -> bool:
        """True if our last advertised window was at the floor because the socket was
        full: worth a look when writable. (A SYN-ACK's window is small too, but only
        because it cannot be scaled: the first ACK we send anyway carries the real one,
        and a window update of its own after every connect cost a frame per connection.)
        """
        conn = self._by_flow.get(flow)
        if conn is None or not conn.established:
            return False
        return conn.last_wnd_sent << conn.ws_to_ns <= MIN_WINDOW and conn.free <= MIN_WINDOW

    def writable(self, flow: int, free: int, now: float) -> list[Action]:
        """The socket has room again and no tail: reopen the window if it grew a lot.

        Smaller changes wait for the next ACK we send anyway (RFC 1122 §4.2.3.3: no window
        updates for small openings).
        """
        conn = self._by_flow.get(flow)
        if conn is None or not conn.established:
            return []
        conn.free = free
        advertised = max(conn.last_wnd_sent, 0) << conn.ws_to_ns
        if self._window_bytes(conn) < 2 * max(advertised, 1):
            return []
        actions: list[Action] = []
        self._send_ack(conn, actions)
        return actions

    def connected(self, flow: int, free: int, now: float) -> list[Action]:
        """The host connect of an outbound connection completed: SYN-ACK the namespace."""
        conn = self._by_flow.get(flow)
        if conn is None or conn.established:
            return []
        conn.free = free
        conn.established = True
        self._half_open.pop(flow, None)
        isn = self._isn(conn, now)
        # Our SYN counts as acknowledged from the start: a lost SYN-ACK shows up as a
        # retransmitted SYN, answered in _syn_in_connection.
        conn.seq_acked_by_ns = conn.seq_to_ns = conn.syn_ack_seq = (isn + 1) % _MOD
        conn.last_progress = now
        conn.last_ack_sent = conn.seq_from_ns
        self._schedule(conn, now + IDLE_TIMEOUT)
        return [SendFrames([self._syn_ack(conn)])]

    def _syn_ack(self, conn: TcpConn) -> bytes:
        window = min(self._window_bytes(conn), 0xFFFF)  # never scaled in a SYN
        self._advertise(conn, conn.seq_from_ns, window)
        # In later segments' units, so that the first writable edge does not look like
        # a window that opened from nothing (it cost one useless ACK per connection).
        conn.last_wnd_sent = window >> conn.ws_to_ns
        return self._frame(
            conn.template,
            (conn.syn_ack_seq - 1) % _MOD,
            conn.seq_from_ns,
            SYN | ACK,
            window,
            self._syn_options(conn),
        )

    def failed(self, flow: int, err: int, now: float, actions: list[Action]) -> bool:
        """The socket of ``flow`` failed (refused, unreachable, reset): reset the namespace."""
        conn = self._by_flow.get(flow)
        if conn is None:
            return False
        log.debug("tcp flow %d: socket error %d", flow, err)
        if conn.established or not conn.inbound:
            seq = conn.seq_to_ns if conn.established else 0
            actions.append(
                SendFrames([self._frame(conn.template, seq, conn.seq_from_ns, RST | ACK)])
            )
        self._remove(conn, actions, reset=True)
        return True

    def abort(self, key: tuple[bytes, int, bytes, int], actions: list[Action]) -> None:
        """Reset the connection of ``key`` both ways: handling its segments hit a bug, and
        its state can no longer be trusted (the engine logged the traceback)."""
        conn = self._by_key.get(key)
        if conn is not None:
            self.failed(conn.flow, 0, conn.last_progress, actions)

    def accepted(
        self, flow: int, client: tuple[str, int], ns_port: int, now: float,
        to_addr: bytes | None = None,
    ) -> list[Action]:
        """A ``-t`` listener accepted ``client``: open the connection towards the namespace,
        at ``to_addr`` if the forward names one."""
        engine = self.engine
        peer = engine.config.mapping.apparent_source(client[0])
        ns_addr = engine.inbound_target(peer, to_addr) if peer is not None else None
        actions: list[Action] = []
        if peer is None or ns_addr is None or not self._make_room(now, actions):
            log.info("cannot forward TCP connection from %s:%d", *client)
            actions.append(CloseSocket(flow, reset=True))
            return actions
        conn = self._new_conn(flow, ns_addr, ns_port, peer, client[1])
        conn.inbound = True
        isn = self._isn(conn, now)
        conn.seq_acked_by_ns = isn
        conn.seq_to_ns = (isn + 1) % _MOD
        conn.ws_to_ns = OUR_WSCALE
        conn.last_progress = now
        conn.rto = SYN_RTO
        self._add(conn)
        self._schedule(conn, now + SYN_RTO)
        actions.append(SendFrames([self._syn(conn)]))
        return actions

    def _syn(self, conn: TcpConn) -> bytes:
        return self._frame(conn.template, conn.seq_acked_by_ns, 0, SYN, 0xFFFF,
                           self._syn_options(conn))

    # --------------------------------------------------- host → namespace data --
    def unacked(self, flow: int) -> int:
        """Bytes peeked and sent to the namespace but not acknowledged yet: the head of
        the socket's receive queue, which the next peek must skip."""
        conn = self._by_flow.get(flow)
        if conn is None:
            return 0
        fin = 1 if conn.fin_sent and not conn.fin_acked else 0
        return seq_sub(conn.seq_to_ns, conn.seq_acked_by_ns) - fin

    def read_slots(self, flow: int) -> list[memoryview]:
        """Payload slots to peek into now, sized by the namespace's free window."""
        conn = self._by_flow.get(flow)
        if conn is None or not conn.established or conn.sock_eof:
            return []
        budget = conn.wnd_from_ns - seq_sub(conn.seq_to_ns, conn.seq_acked_by_ns)
        if budget <= 0:
            conn.more_to_read = True
            return []
        mss = min(conn.mss, _SEGMENT_MAX)
        # A GSO frame is cut into gso_size pieces: make it a whole number of them.
        size = (_SEGMENT_MAX // mss) * mss if conn.template.offload else mss
        hlen = conn.template.hlen
        slots: list[memoryview] = []
        self._pending.clear()
        frames = _READ_FRAMES if conn.template.offload else _POOL_SIZE
        while budget > 0 and len(slots) < frames:
            buf = self.pool[self._pool_next]
            self._pool_next = (self._pool_next + 1) % _POOL_SIZE
            n = min(size, budget)
            view = memoryview(buf)
            slots.append(view[hlen : hlen + n])
            self._pending.append((view, n))
            budget -= n
        self._pending_bytes = sum(map(len, slots))
        return slots

    def data(self, flow: int, count: int, now: float) -> list[Action]:
        """``count`` bytes were peeked into the slots from :meth:`read_slots`: frame them."""
        conn = self._by_flow.get(flow)
        if conn is None or count <= 0:
            return []
        template = conn.template
        ack = self._ack_value(conn)
        window = self._window_field(conn)
        frames: list[memoryview] = []
        # Slots filled to the last byte: the socket may hold more than the window let us
        # take, and no new readiness edge will say so. Read again when the window opens.
        conn.more_to_read = count >= self._pending_bytes
        for view, size in self._pending:
            n = min(size, count)
            if n <= 0:
                break
            count -= n
            flags = ACK | PSH if count == 0 else ACK
            length = template.fill(view, n, conn.seq_to_ns, ack, flags, window, conn.mss)
            frames.append(view[:length])
            conn.seq_to_ns = (conn.seq_to_ns + n) % _MOD
        conn.last_ack_sent = ack
        conn.last_wnd_sent = window
        self._advertise(conn, ack, window << conn.ws_to_ns)
        self._arm(conn, now)
        return [SendFrames(frames)]

    def eof(self, flow: int, now: float) -> list[Action]:
        """The peer closed its side and every byte before that has been peeked."""
        conn = self._by_flow.get(flow)
        if conn is None or conn.sock_eof:
            return []
        conn.sock_eof = True
        actions: list[Action] = []
        self._send_fin(conn, now, actions)
        return actions

    def _send_fin(self, conn: TcpConn, now: float, actions: list[Action]) -> None:
        if conn.fin_sent or not conn.established:
            return
        frame = self._frame(
            conn.template,
            conn.seq_to_ns,
            self._ack_value(conn),
            FIN | ACK,
            self._scaled_window(conn),
        )
        conn.seq_to_ns = (conn.seq_to_ns + 1) % _MOD
        conn.fin_sent = True
        actions.append(SendFrames([frame]))
        self._arm(conn, now)

    # -------------------------------------------------------------- timers --
    def deadline(self, flow: int, now: float, actions: list[Action]) -> None:
        conn = self._by_flow.get(flow)
        if conn is None:
            return
        if not conn.established:
            if conn.inbound and now - conn.last_progress < SYN_TIMEOUT:
                actions.append(SendFrames([self._syn(conn)]))
                conn.rto *= 2
                self._schedule(conn, min(now + conn.rto, conn.last_progress + SYN_TIMEOUT))
                return
            log.debug("tcp flow %d: handshake timed out", flow)
            self.failed(flow, 0, now, actions)
            return
        in_flight = seq_sub(conn.seq_to_ns, conn.seq_acked_by_ns)
        if in_flight > 0:
            conn.retries += 1
            if conn.retries > MAX_RETRIES:
                log.debug("tcp flow %d: namespace stopped acknowledging", flow)
                self.failed(flow, 0, now, actions)
                return
            conn.rto = min(conn.rto * 2, RTO_MAX)
            self._rewind(conn, actions)
            self._schedule(conn, now + conn.rto)
            return
        if conn.wnd_from_ns == 0 and not conn.sock_eof:
            self._probe(conn, actions)
            conn.rto = min(conn.rto * 2, RTO_MAX)
            self._schedule(conn, now + conn.rto)
            return
        if now - conn.last_progress >= _quiet_limit(conn):
            self.failed(flow, 0, now, actions)
            return
        self._arm(conn, now)

    def _arm(self, conn: TcpConn, now: float) -> None:
        in_flight = seq_sub(conn.seq_to_ns, conn.seq_acked_by_ns)
        if in_flight > 0 or conn.wnd_from_ns == 0:
            self._schedule(conn, now + conn.rto)
        else:
            self._schedule(conn, conn.last_progress + _quiet_limit(conn))

    def _schedule(self, conn: TcpConn, when: float) -> None:
        self.engine.timers.schedule(("tcp", conn.flow), when)

    def _rewind(self, conn: TcpConn, actions: list[Action]) -> None:
        """Send everything unacknowledged again, from the socket's head."""
        conn.seq_to_ns = conn.seq_acked_by_ns
        conn.dup_acks = 0
        if conn.fin_sent and not conn.fin_acked:
            conn.fin_sent = False
            conn.sock_eof = False  # the re-peek reaches the end of data again, then FIN
        actions.append(TcpRead(conn.flow, rewind=True))

    def _probe(self, conn: TcpConn, actions: list[Action]) -> None:
        """Zero-window probe: an old sequence number makes the namespace re-announce."""
        frame = self._frame(
            conn.template,
            (conn.seq_to_ns - 1) % _MOD,
            self._ack_value(conn),
            ACK,
            self._scaled_window(conn),
        )
        actions.append(SendFrames([frame]))

    # ------------------------------------------------------------- helpers --
    def _ack_value(self, conn: TcpConn) -> int:
        return (conn.seq_from_ns - len(conn.tail)) % _MOD

    @staticmethod
    def _window_bytes(conn: TcpConn) -> int:
        """The socket's free send space, but at least :data:`MIN_WINDOW` unless we hold a tail.

        The floor keeps the connection self-clocked: the kernel signals "writable" only
        after a send of ours was refused, so a window that shrank to nothing on a socket we
        never filled would never be reopened. Whatever the floor invites beyond the real
        space lands in the tail, and the refused send arms the writable notification.
        """
        if conn.tail:
            return 0
        return min(max(conn.free, MIN_WINDOW), _MAX_WINDOW)

    def _window_field(self, conn: TcpConn) -> int:
        return min(self._window_bytes(conn) >> conn.ws_to_ns, 0xFFFF)

    def _scaled_window(self, conn: TcpConn) -> int:
        """The window field for a frame sent now, its right edge noted."""
        window = self._window_field(conn)
        self._advertise(conn, self._ack_value(conn), window << conn.ws_to_ns)
        return window

    @staticmethod
    def _advertise(conn: TcpConn, ack: int, window: int) -> None:
        """Note the right edge of a window of ``window`` bytes from ``ack`` that we send."""
        edge = (ack + window) % _MOD
        if conn.rcv_edge < 0 or seq_sub(edge, conn.rcv_edge) > 0:
            conn.rcv_edge = edge

    def _send_ack(self, conn: TcpConn, actions: list[Action], force: bool = False) -> None:
        ack = self._ack_value(conn)
        window = self._window_field(conn)
        if not force and ack == conn.last_ack_sent and window == conn.last_wnd_sent:
            return
        conn.last_ack_sent = ack
        conn.last_wnd_sent = window
        self._advertise(conn, ack, window << conn.ws_to_ns)
        actions.append(SendFrames([self._frame(conn.template, conn.seq_to_ns, ack, ACK, window)]))

    def _shutdown(self, conn: TcpConn, actions: list[Action]) -> None:
        conn.sock_shut = True
        actions.append(TcpShutdown(conn.flow))

    def _maybe_close(self, conn: TcpConn, now: float, actions: list[Action]) -> None:
        if conn.sock_shut and conn.fin_acked:
            self._remove(conn, actions, reset=False)
        elif conn.ns_fin or conn.fin_sent:
            self._arm(conn, now)

    def _syn_options(self, conn: TcpConn) -> bytes:
        mtu = self.engine.plan.mtu or 65520
        mss = min(mtu, 65535) - (40 if conn.version == 4 else 60)
        options = struct.pack("!BBH", 2, 4, mss)
        if conn.ws_to_ns:
            options += struct.pack("!BBBB", 1, 3, 3, conn.ws_to_ns)
        return options

    def _frame(
        self,
        template: FrameTemplate,
        seq: int,
        ack: int,
        flags: int,
        window: int = 0,
        options: bytes = b"",
    ) -> bytes:
        buf = bytearray(template.hlen + len(options))
        template.fill(buf, 0, seq, ack, flags, window, 0, options)
        return bytes(buf)

    def _template(self, ns_addr: bytes, ns_port: int, peer: bytes, peer_port: int) -> FrameTemplate:
        engine = self.engine
        return FrameTemplate(
            engine.ns_mac,
            engine.plan.our_mac,
            peer,
            ns_addr,
            peer_port,
            ns_port,
            engine.config.offload,
        )

    def _new_conn(
        self, flow: int, ns_addr: bytes, ns_port: int, peer: bytes, peer_port: int
    ) -> TcpConn:
        template = self._template(ns_addr, ns_port, peer, peer_port)
        return TcpConn(
            flow, 4 if len(peer) == 4 else 6, ns_addr, ns_port, peer, peer_port, template
        )

    def _add(self, conn: TcpConn) -> None:
        self._by_key[(conn.ns_addr, conn.ns_port, conn.peer, conn.peer_port)] = conn
        self._by_flow[conn.flow] = conn
        self._half_open[conn.flow] = conn

    def _remove(self, conn: TcpConn, actions: list[Action], reset: bool) -> None:
        self._by_key.pop((conn.ns_addr, conn.ns_port, conn.peer, conn.peer_port), None)
        self._by_flow.pop(conn.flow, None)
        self._half_open.pop(conn.flow, None)
        self.engine.timers.cancel(("tcp", conn.flow))
        actions.append(CloseSocket(conn.flow, reset=reset))
