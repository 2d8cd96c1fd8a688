"""What the core asks the shell to do.

The engine never touches a socket or the tap: every handler returns a list of these
records and the shell's executor (``shell/hub.py``) carries them out in order. Results
that matter to the core (bytes accepted by ``sendmsg``, a connect that completed, data
peeked) come back as calls on the :class:`~pasta_net.core.engine.Engine`.

Flows are named by an integer ``flow`` id that the engine allocates; the shell keeps
the socket for each id. Payloads are ``memoryview``s into the buffers they arrived in or
into the engine's frame pool; the executor uses them before it returns, so nothing is
copied on the way through.

The records are slotted ``attrs.define`` classes rather than frozen ones, as are the
parsed packets they are made from (``frames.IpPacket``, ``tcpwire.Segment``): a frozen
attrs ``__init__`` sets each field through ``object.__setattr__``, 0.65 µs more per
record on this machine, and the per-frame path builds several per frame. Nothing
changes a record after it is made.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "Action",
    "CloseSocket",
    "OpenSocket",
    "SendDatagram",
    "SendFrames",
    "SocketKind",
    "TcpDiscard",
    "TcpRead",
    "TcpSend",
    "TcpShutdown",
]


class SocketKind(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    PING = "ping"


@attrs.define(slots=True)
class SendFrames:
    """Write frames to the namespace. Each starts with the 12-byte virtio-net header slot."""

    frames: list[bytes | memoryview]


@attrs.define(slots=True)
class OpenSocket:
    """Create a host socket for ``flow``.

    TCP: connect (non-blocking) to ``remote``; the shell reports the outcome with
    ``Engine.tcp_connected`` or ``Engine.tcp_failed``. UDP/ping: bind ``local`` when
    given (port 0 = any) and keep the socket for ``SendDatagram``; the shell reports
    replies with ``Engine.datagram_received``.
    """

    flow: int
    kind: SocketKind
    family: int
    """4 or 6."""
    remote: tuple[str, int]
    local: tuple[str, int] | None = None


@attrs.define(slots=True)
class SendDatagram:
    """Send datagrams, one per payload, on the UDP or ping socket of ``flow`` to
    ``remote``, or, with ``remote`` None, to the peer that socket is connected to.

    Several payloads are datagrams of one flow that arrived together, each as long as
    the first but the last, which may be shorter: what one UDP GSO send takes
    (``UDP_SEGMENT``), so the shell may hand them to the kernel in a single call.
    """

    flow: int
    remote: tuple[str, int] | None
    payloads: list[bytes | memoryview]


@attrs.define(slots=True)
class CloseSocket:
    """Close the socket of ``flow``; ``reset`` makes a TCP socket send RST (SO_LINGER 0)."""

    flow: int
    reset: bool = False


@attrs.define(slots=True)
class TcpSend:
    """``sendmsg`` these payloads on the TCP socket of ``flow`` and report the count.

    The shell calls ``Engine.tcp_sent(flow, accepted, free_space, now)``; the engine acks
    the namespace only for what the host kernel accepted.
    """

    flow: int
    payloads: list[memoryview]


@attrs.define(slots=True)
class TcpRead:
    """Peek more data from the socket of ``flow`` into the engine's frame slots.

    ``rewind`` resets ``SO_PEEK_OFF`` to 0 first: the namespace lost data and everything
    not yet acknowledged is sent again.
    """

    flow: int
    rewind: bool = False


@attrs.define(slots=True)
class TcpDiscard:
    """Drop ``count`` acknowledged bytes from the head of the socket (``MSG_TRUNC``)."""

    flow: int
    count: int


@attrs.define(slots=True)
class TcpShutdown:
    """The namespace sent FIN: ``shutdown(SHUT_WR)`` the host socket."""

    flow: int


Action = (
    SendFrames
    | OpenSocket
    | SendDatagram
    | CloseSocket
    | TcpSend
    | TcpRead
    | TcpDiscard
    | TcpShutdown
)
