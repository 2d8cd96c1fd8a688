"""Loopback UDP: datagrams between the two loopbacks, without the tap.

The datagram twin of shell/splice.py (pasta's spliced UDP flows). A listener's clients
on a loopback (host-loopback clients of a ``-u`` port, every client of a ``-U`` port)
each get a *flow*: a socket in the other namespace, connected to the target, bound to the
client's source port when that port is free there (pasta keeps it: some protocols
answer to it). Datagrams from the client go out through the flow's socket; what comes
back on it goes to the client from the listener, so the client sees replies from the
address and port it sent to.

A flow ends after ``idle_timeout`` seconds without traffic either way (pasta's UDP flow
timeout), when its socket fails, or with its listener. New flows beyond
:data:`MAX_FLOWS` per listener are refused (the datagram is dropped), never old ones.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Callable

from pasta_net.shell.hub import Hub
from pasta_net.shell.splice import SocketFactory

__all__ = ["MAX_FLOWS", "UdpRelay"]

log = logging.getLogger("pasta_net.udprelay")

MAX_FLOWS = 1024
_MAX_DATAGRAM = 65536

Source = Callable[[tuple[str, int]], tuple[str, int]]
"""The client's address → where its flow's socket binds (the port is only a wish)."""


class _Flow:
    __slots__ = ("client", "last", "sock")

    def __init__(self, sock: socket.socket, client: tuple[str, int], now: float) -> None:
        self.sock = sock
        self.client = client
        self.last = now


class UdpRelay:
    """The loopback flows of one UDP listener."""

    def __init__(self, hub: Hub, listener: socket.socket, target: tuple[str, int],
                 new_socket: SocketFactory, source: Source, idle_timeout: float) -> None:
        self.hub = hub
        self.listener = listener
        self.target = target
        self.new_socket = new_socket
        self.source = source
        self.idle_timeout = idle_timeout
        self._flows: dict[tuple[str, int], _Flow] = {}

    def __len__(self) -> int:
        return len(self._flows)

    def forward(self, data: bytes, client: tuple[str, int]) -> None:
        """A datagram from ``client`` arrived on the listener: send it on to the target."""
        flow = self._flows.get(client) or self._open(client)
        if flow is None:
            return
        flow.last = self.hub.now()
        try:
            flow.sock.send(data)
        except BlockingIOError:
            log.debug("udp relay to %s:%d: socket busy, datagram dropped", *self.target)
        except OSError as exc:  # e.g. ECONNREFUSED from an earlier datagram's ICMP
            log.debug("udp relay to %s:%d: %s", *self.target, exc.strerror)

    def _open(self, client: tuple[str, int]) -> _Flow | None:
        if len(self._flows) >= MAX_FLOWS:
            log.debug("udp relay to %s:%d: too many flows, datagram dropped", *self.target)
            return None
        family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        try:
            sock = self.new_socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("udp relay to %s:%d: %s", *self.target, exc.strerror)
            return None
        try:
            _bind_source(sock, self.source(client))
            sock.connect(self.target)
        except OSError as exc:
            log.debug("udp relay to %s:%d: %s", *self.target, exc.strerror)
            sock.close()
            return None
        flow = _Flow(sock, client, self.hub.now())
        self._flows[client] = flow
        self.hub.add_fd(sock.fileno(), select.EPOLLIN | select.EPOLLET,
                        lambda _mask: self._reply(flow))
        return flow

    def _reply(self, flow: _Flow) -> None:
        """Datagrams from the target on ``flow``'s socket: back to its client.

        Read until ``EAGAIN``: the socket is edge-triggered, so what is left now would
        wait for the next datagram to be noticed.
        """
        while True:
            try:
                data = flow.sock.recv(_MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:  # ICMP unreachable from the target: keep the flow, as pasta
                continue
            flow.last = self.hub.now()
            try:
                self.listener.sendto(data, flow.client)
            except OSError as exc:
                log.debug("udp relay reply to %s:%d: %s", *flow.client[:2], exc.strerror)

    def expire(self, now: float) -> None:
        """Close the flows idle for ``idle_timeout`` seconds."""
        for client, flow in list(self._flows.items()):
            if now - flow.last >= self.idle_timeout:
                self._close(client)

    def _close(self, client: tuple[str, int]) -> None:
        flow = self._flows.pop(client)
        self.hub.remove_fd(flow.sock.fileno())
        flow.sock.close()

    def close(self) -> None:
        """Close every flow (the listener is its owner's to close)."""
        for client in list(self._flows):
            self._close(client)


def _bind_source(sock: socket.socket, source: tuple[str, int]) -> None:
    """Bind to ``source``; to its address alone when the port is taken there."""
    try:
        sock.bind(source)
    except OSError:
        sock.bind((source[0], 0))
