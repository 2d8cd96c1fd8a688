"""Sockets in the test's namespaces, opened by the test process itself, and tiny servers.

A socket belongs to the network namespace it was created in, whichever thread uses it
later. So instead of a helper program per client (a process, JSON on stdout, a timeout
to guess), the test switches its own thread into a namespace with setns(2), creates the
socket, and switches back: thousands of datagrams then cost no process at all, and the
test sees every address and errno first hand. The test process is root in the user
namespace that owns every namespace of the sandbox, so setns is allowed.

:class:`Responder` answers on such sockets from a thread, for servers the tests need
beside the remote's standard ones (a DNS server, "who is asking" servers on the sandbox
host's loopback and global address).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Self

__all__ = ["Handler", "Responder", "entered", "socket_in", "whoami"]

CLONE_NEWNET = 0x40000000
_LENGTH = struct.Struct("!H")
_libc = ctypes.CDLL(None, use_errno=True)

Handler = Callable[[bytes, tuple[str, int]], bytes]
"""(request, client address) -> reply."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(netns: Path | None) -> Iterator[None]:
    """Run the body with this thread in the network namespace bound at ``netns``
    (None: stay in the sandbox host's)."""
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def socket_in(
    netns: Path | None,
    family: int,
    kind: int = socket.SOCK_DGRAM,
    bind: tuple[str, int] | None = None,
    timeout: float | None = 5.0,
) -> socket.socket:
    """A socket of the namespace at ``netns`` (None: the sandbox host), bound if asked;
    a TCP socket bound this way also listens."""
    with entered(netns):
        sock = socket.socket(family, kind)
    try:
        if bind is not None and kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(bind)
            sock.listen()
        elif bind is not None:
            sock.bind(bind)  # no SO_REUSEADDR: two sockets bound to port 0 could share one
    except BaseException:
        sock.close()
        raise
    sock.settimeout(timeout)
    return sock


def whoami(_request: bytes, client: tuple[str, int]) -> bytes:
    """A reply that tells the client which address and port the server saw."""
    return f"{client[0]} {client[1]}".encode()


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Responder:
    """Serves ``handler`` on bound sockets from one thread until the ``with`` block ends.

    UDP: every datagram gets the handler's reply. TCP (listening sockets): each
    connection carries messages with a 2-byte length before each (DNS over TCP, RFC
    1035 §4.2.2), answered the same way, until the client closes.
    """

    def __init__(self, handler: Handler, sockets: Sequence[socket.socket]) -> None:
        self.handler = handler
        self.sockets = list(sockets)
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_w.send(b"x")
        self._thread.join(10)
        for sock in (*self.sockets, self._stop_r, self._stop_w):
            sock.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._stop_r, selectors.EVENT_READ)
            for sock in self.sockets:
                selector.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._stop_r:
                        return
                    self._ready(key.fileobj)  # type: ignore[arg-type]

    def _ready(self, sock: socket.socket) -> None:
        if sock.type == socket.SOCK_DGRAM:
            request, client = sock.recvfrom(1 << 16)
            sock.sendto(self.handler(request, client[:2]), client)
            return
        conn, client = sock.accept()
        with conn, contextlib.suppress(OSError):  # a client that vanished or went quiet
            conn.settimeout(5)
            while (header := _recv_exactly(conn, _LENGTH.size)) is not None:
                request = _recv_exactly(conn, _LENGTH.unpack(header)[0]) or b""
                reply = self.handler(request, client[:2])
                conn.sendall(_LENGTH.pack(len(reply)) + reply)
