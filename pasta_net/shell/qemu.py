"""The VM side of passt mode: qemu's UNIX stream socket, cut into frames and back.

qemu's ``-netdev stream`` sends every Ethernet frame preceded by its length as a 4-byte
big-endian integer, and expects the same from us. No virtio-net header travels on this
socket, so the engine runs without offloads (full checksums, MSS-sized segments), and
each frame is written without the header slot the core reserves at its start.

Reading: a stream has no frame boundaries, so we read big chunks into one buffer until
``EAGAIN`` (or the buffer is full) and cut frames out of it as views, as TapDevice hands
out views of its buffers. A frame cut by the end of a read stays in the buffer and moves
to the front before the next read; the frames of the previous batch are dead by then
(the hub runs every action of a batch before it reads again). A length outside
14..65,535 means the peer is broken or hostile, and the stream can never be
resynchronised: that client is closed with a log line, and the next one may connect.

Writing: one ``sendmsg`` carries many frames ([length, frame, length, frame, ...],
views, no copies). What the socket refuses (``EAGAIN``, or the rest of a short write) is
copied into a bounded queue, because the frames are views into buffers the engine
reuses, and goes out when the socket is writable again. A frame is queued whole or not
at all: dropping a whole frame is what a full tap does too (TCP retransmits), dropping
part of one would desynchronise the stream.

One fd for the hub: the listening socket and the current client sit in a private epoll
set whose fd the hub watches, so a new client, incoming data and room to write all
arrive as "fd readable" and the hub treats this backend exactly like TapDevice.
As passt, one client at a time is served: a second connection is accepted and closed.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import select
import socket
import struct
from collections.abc import Sequence

import trio

from pasta_net.core.frames import ETH_HLEN, VNET_HDR_LEN
from pasta_net.shell.reserve import SpareFd

__all__ = ["MAX_FRAME", "QemuStream"]

log = logging.getLogger("pasta_net.qemu")

MAX_FRAME = 65535
"""The largest frame qemu's stream netdev carries (its length field is checked against it)."""
_LENGTH = struct.Struct("!I")
_BUFFER_SIZE = 1 << 20
"""Read buffer: many frames per wake-up; always room for a whole frame after compaction."""
_QUEUE_LIMIT = 4 << 20
"""Bytes of refused output we keep before dropping whole frames."""
_IOV_MAX = 1024
_PEERCRED = struct.Struct("3i")
_CLIENT_EVENTS = select.EPOLLIN


class QemuStream:
    """A passt-mode frame device: ``listener`` accepts qemu, or ``client`` is connected.

    ``finished`` is set when serving is over: the client left and there is no listener
    to wait on, or ``one_off`` says the first client is the only one.
    """

    def __init__(self, listener: socket.socket | None = None,
                 client: socket.socket | None = None, *, one_off: bool = False) -> None:
        self._epoll = select.epoll()
        self.fd = self._epoll.fileno()
        self.one_off = one_off
        self.finished = trio.Event()
        self.drops = 0
        """Frames dropped because no client was connected or the output queue was full."""
        self._listener = listener
        self._client: socket.socket | None = None
        self._buffer = bytearray(_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._start = 0
        """Start of the bytes read but not yet cut into frames."""
        self._end = 0
        self._queue: collections.deque[bytes] = collections.deque()
        """Length-prefixed frames waiting for the socket; the first is partly sent."""
        self._offset = 0
        """Bytes of ``_queue[0]`` already sent."""
        self._queued = 0
        self._want_out = False
        self._spare = SpareFd()
        if listener is not None:
            listener.setblocking(False)
            self._epoll.register(listener.fileno(), select.EPOLLIN)
        if client is not None:
            self._attach(client)

    @property
    def connected(self) -> bool:
        return self._client is not None

    # ---------------------------------------------------------------- reading --
    def read_batch(self) -> list[memoryview]:
        """Frames from the VM (maybe none); also accepts a client and flushes output,
        since those events arrive on the same fd."""
        ready = {fd for fd, _mask in self._epoll.poll(0)}
        if self._listener is not None and self._listener.fileno() in ready:
            self._accept()
        if self._client is None:
            return []
        if self._queue:
            self._flush()
        return self._read_frames()

    def _read_frames(self) -> list[memoryview]:
        self._compact()
        problem = self._fill()
        frames = self._cut()
        if problem is not None and self._client is not None:
            self._disconnect(problem)
        return frames

    def _compact(self) -> None:
        """Move the unfinished frame to the front of the buffer."""
        start, end = self._start, self._end
        if start:
            self._buffer[: end - start] = self._buffer[start:end]
            self._start, self._end = 0, end - start

    def _fill(self) -> str | None:
        """Read until ``EAGAIN`` or a full buffer; why the client is gone, if it is."""
        assert self._client is not None
        recv_into = self._client.recv_into
        view = self._view
        while self._end < _BUFFER_SIZE:
            try:
                count = recv_into(view[self._end :])
            except BlockingIOError:
                return None
            except OSError as exc:
                return f"read error: {exc.strerror}"
            if count == 0:
                return "client closed the connection"
            self._end += count
        return None

    def _cut(self) -> list[memoryview]:
        """Complete frames between ``_start`` and ``_end``, as views into the buffer."""
        frames = []
        view, pos, end = self._view, self._start, self._end
        while end - pos >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(view, pos)
            if not ETH_HLEN <= length <= MAX_FRAME:
                log.warning("frame length %d from the client is out of range "
                            "(%d..%d): closing the connection", length, ETH_HLEN, MAX_FRAME)
                self._disconnect("framing error")
                return frames
            if end - pos - _LENGTH.size < length:
                break
            pos += _LENGTH.size
            frames.append(view[pos : pos + length])
            pos += length
        self._start = pos
        return frames

    # ---------------------------------------------------------------- writing --
    def write_batch(self, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send frames (each starting with the virtio-net header slot, which is skipped)."""
        if self._client is None:
            self.drops += len(frames)
            return
        iov: list[bytes | memoryview] = []
        for frame in frames:
            data = memoryview(frame)[VNET_HDR_LEN:]
            iov += (_LENGTH.pack(len(data)), data)
        if self._queue:  # behind what is already waiting, to keep the order
            self._park(iov, 0)
            return
        sent = self._sendmsg(iov)
        if sent is not None:
            self._park(iov, sent)

    def _sendmsg(self, iov: list[bytes | memoryview]) -> int | None:
        """Send as much of ``iov`` as the socket takes; None if the client is gone."""
        assert self._client is not None
        total = 0
        for first in range(0, len(iov), _IOV_MAX):
            chunk = iov[first : first + _IOV_MAX]
            try:
                sent = self._client.sendmsg(chunk)
            except BlockingIOError:
                return total
            except OSError as exc:
                self._disconnect(f"write error: {exc.strerror}")
                return None
            total += sent
            if sent < sum(len(piece) for piece in chunk):
                break
        return total

    def _park(self, iov: list[bytes | memoryview], sent: int) -> None:
        """Queue (copied) what ``sendmsg`` left of ``iov``, given as length/frame pairs."""
        for index in range(0, len(iov), 2):
            wire = len(iov[index]) + len(iov[index + 1])
            if sent >= wire:
                sent -= wire
                continue
            if sent:  # partly on the wire (so the queue was empty): it must follow
                self._offset = sent
                sent = 0
            elif self._queued + wire > _QUEUE_LIMIT:
                self.drops += 1
                continue
            self._queue.append(b"".join(iov[index : index + 2]))
            self._queued += wire
        self._arm(bool(self._queue))

    def _flush(self) -> None:
        """The socket may take more: send the queue until it refuses or is empty."""
        assert self._client is not None
        queue = self._queue
        while queue:
            head = memoryview(queue[0])[self._offset :]
            try:
                sent = self._client.sendmsg([head, *itertools.islice(queue, 1, _IOV_MAX)])
            except BlockingIOError:
                return
            except OSError as exc:
                self._disconnect(f"write error: {exc.strerror}")
                return
            self._consume(sent)
        self._arm(False)

    def _consume(self, sent: int) -> None:
        queue = self._queue
        while sent and queue:
            left = len(queue[0]) - self._offset
            if sent < left:
                self._offset += sent
                return
            sent -= left
            self._queued -= len(queue.popleft())
            self._offset = 0

    def _arm(self, want_out: bool) -> None:
        """Ask for ``EPOLLOUT`` only while output waits (level-triggered: it would spin)."""
        if want_out != self._want_out and self._client is not None:
            events = _CLIENT_EVENTS | (select.EPOLLOUT if want_out else 0)
            self._epoll.modify(self._client.fileno(), events)
            self._want_out = want_out

    # ------------------------------------------------------------ connections --
    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _address = self._listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("cannot accept a client: %s", exc.strerror)
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._spare.refuse(self._listener)  # or the listener stays readable: a spin
            return
        if self._client is not None:
            log.info("another client is connected: refusing the one from pid %d", _pid(conn))
            conn.close()
            return
        log.info("client connected (pid %d)", _pid(conn))
        self._attach(conn)

    def _attach(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._epoll.register(conn.fileno(), _CLIENT_EVENTS)
        self._client = conn
        self._want_out = False

    def _disconnect(self, why: str) -> None:
        assert self._client is not None
        self._epoll.unregister(self._client.fileno())
        self._client.close()
        self._client = None
        self._start = self._end = 0
        self._queue.clear()
        self._queued = self._offset = 0
        last = self.one_off or self._listener is None
        log.info("client connection closed (%s)%s", why, ", exiting" if last else "")
        if last:
            self.finished.set()

    def close(self) -> None:
        for sock in (self._client, self._listener):
            if sock is not None:
                sock.close()
        self._client = self._listener = None
        self._spare.close()
        self._epoll.close()


def _pid(conn: socket.socket) -> int:
    """The peer's pid, for log lines (0 when the kernel cannot tell)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return 0
    return _PEERCRED.unpack(creds)[0]
