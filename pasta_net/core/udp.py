"""UDP flows between the namespace and host sockets.

Theory of operation
-------------------
A flow is one (namespace address, namespace port, peer address, peer port) four-tuple.
Outbound (the namespace sends first): the engine opens a host UDP socket for the flow,
asking the shell to bind the namespace's source port when it is free on the host (any
port otherwise) and to connect it to the peer, so that only that peer's replies arrive
on it and ICMP errors come back as ``ECONNREFUSED`` (or ``EHOSTUNREACH``...). Inbound
(``-u`` forwards): the shell's listener reports a datagram from a client; the flow then
sends through the listener socket, so replies leave from the forwarded port, and ICMP
errors come from the listener's error queue, which names the client. Either way the
namespace gets the matching ICMP/ICMPv6 destination unreachable from the peer.

Replies are framed with the address the namespace used as source (not the mapped host
address), so DNS forwarding and loopback mapping are invisible to the namespace.
A flow lives :attr:`UdpTable.timeout` seconds (pasta: 180) after its last datagram in
either direction; expiry closes its socket.

Limits (DESIGN.md §6): at most :data:`MAX_FLOWS` flows. A datagram that would open one
more, or whose socket cannot be opened (``EMFILE``: out of fds), is refused with an
ICMP "administratively prohibited", and a flow whose socket could not be opened is
forgotten at once, so the next datagram tries again instead of vanishing for the
flow's lifetime. Existing flows are never evicted.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

import attrs

from pasta_net.core.actions import (
    Action,
    CloseSocket,
    OpenSocket,
    SendDatagram,
    SendFrames,
    SocketKind,
)
from pasta_net.core.checksum import checksum
from pasta_net.core.frames import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IpPacket,
    UdpDatagram,
    build_ip,
    build_ip_frame,
    build_udp,
    forwardable,
    l4_checksum,
)

if TYPE_CHECKING:
    from pasta_net.core.engine import Engine

__all__ = ["IDLE_TIMEOUT", "MAX_FLOWS", "UdpFlow", "UdpTable"]

IDLE_TIMEOUT = 180.0
"""Seconds a flow lives after its last datagram (pasta's default)."""
MAX_FLOWS = 1 << 17
"""Flows at once, each with its own socket when outbound (passt's flow table holds 128 Ki)."""
GSO_SEGMENTS = 64
"""Datagrams per GSO send: ``UDP_MAX_SEGMENTS`` of Linux 4.18, which brought
``UDP_SEGMENT``, so every kernel that has the option takes this many."""
GSO_BYTES = 65535 - 60 - 8
"""UDP payload of one GSO send: its IP packet, before segmentation, has a 16-bit length."""

_ICMP_UNREACH = struct.Struct("!BBHI")
_UNREACHABLE_CODES = {
    errno.ECONNREFUSED: (3, 4),  # port unreachable (ICMPv6: port unreachable)
    errno.EHOSTUNREACH: (1, 3),  # host unreachable (ICMPv6: address unreachable)
    errno.ENETUNREACH: (0, 0),  # network unreachable (ICMPv6: no route)
    errno.EMFILE: (13, 1),  # ours, at open: administratively prohibited (both)
    errno.ENFILE: (13, 1),
}
"""The ICMP and ICMPv6 destination-unreachable codes that the kernel turned into errno."""


@attrs.define(eq=False, slots=True)
class UdpFlow:
    flow: int
    version: int
    ns_addr: bytes
    ns_port: int
    peer: bytes
    """The peer as the namespace sees it (before any mapping)."""
    peer_port: int
    remote: tuple[str, int]
    """Where datagrams really go on the host side."""
    socket: int
    """Id of the socket datagrams leave through (the flow's own, or a listener's)."""
    last_used: float


def _joins(payloads: list[memoryview], length: int) -> bool:
    """Whether a datagram of ``length`` bytes may follow ``payloads`` in one GSO send:
    every segment as long as the first but the last, at most :data:`GSO_SEGMENTS`
    of them, and all in one IP packet's worth of payload before segmentation."""
    size = len(payloads[0])
    return (0 < length <= size and len(payloads[-1]) == size
            and len(payloads) < GSO_SEGMENTS and size * len(payloads) + length <= GSO_BYTES)


class UdpTable:
    def __init__(self, engine: Engine, timeout: float) -> None:
        self.engine = engine
        self.timeout = timeout
        self._by_key: dict[tuple[bytes, int, bytes, int], UdpFlow] = {}
        self._by_socket: dict[int, UdpFlow] = {}
        self._inbound: dict[tuple[int, str, int], UdpFlow] = {}
        self._by_id: dict[int, UdpFlow] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def from_namespace(
        self, packet: IpPacket, datagram: UdpDatagram, now: float, actions: list[Action]
    ) -> None:
        key = (packet.src, datagram.sport, packet.dst, datagram.dport)
        flow = self._by_key.get(key)
        if flow is None:
            flow = self._open(packet, datagram, now, actions)
            if flow is None:
                return
        flow.last_used = now
        # The flow's own socket is connected; a listener's is not, so it needs the client.
        remote = None if flow.socket == flow.flow else flow.remote
        payload = datagram.payload
        last = actions[-1] if actions else None
        if (type(last) is SendDatagram and last.flow == flow.socket and last.remote == remote
                and _joins(last.payloads, len(payload))):
            last.payloads.append(payload)
        else:
            actions.append(SendDatagram(flow.socket, remote, [payload]))

    def _open(
        self, packet: IpPacket, datagram: UdpDatagram, now: float, actions: list[Action]
    ) -> UdpFlow | None:
        """A new outbound flow, or None if its addresses or the table's size forbid it.

        The addresses are checked here, once per flow, not per datagram: a flow's key
        holds both, so every later datagram of the flow names the same ones.
        """
        engine = self.engine
        if not (forwardable(packet.src) and forwardable(packet.dst) and datagram.sport
                and datagram.dport):
            # mDNS, SSDP and other multicast, broadcast, loopback: never onto the host
            engine.drop("bad-address", f"udp {packet.dst.hex()}:{datagram.dport}")
            return None
        if len(self._by_key) >= MAX_FLOWS:
            self._refuse(packet, datagram, actions)
            return None
        remote = engine.config.mapping.outbound(packet.dst, datagram.dport)
        flow_id = engine.new_flow_id()
        flow = UdpFlow(
            flow_id,
            packet.version,
            packet.src,
            datagram.sport,
            packet.dst,
            datagram.dport,
            remote,
            flow_id,
            now,
        )
        self._add(flow)
        local = ("", datagram.sport)
        actions.append(OpenSocket(flow_id, SocketKind.UDP, packet.version, remote, local))
        return flow

    def _refuse(self, packet: IpPacket, datagram: UdpDatagram, actions: list[Action]) -> None:
        self.engine.drop("udp-table-full", f"{len(self._by_key)} flows")
        flow = UdpFlow(0, packet.version, packet.src, datagram.sport, packet.dst,
                       datagram.dport, ("", 0), 0, 0.0)
        actions.append(SendFrames([self._unreachable(flow, *_UNREACHABLE_CODES[errno.EMFILE])]))

    def _add(self, flow: UdpFlow) -> None:
        """Enter a new flow, and its idle timer.

        Datagrams only note their time in ``last_used``; the timer is moved when it
        fires (:meth:`deadline`), not per datagram: a heap push per datagram was a tenth
        of the engine's time on a UDP stream.
        """
        self.engine.timers.schedule(("udp", flow.flow), flow.last_used + self.timeout)
        self._by_key[(flow.ns_addr, flow.ns_port, flow.peer, flow.peer_port)] = flow
        self._by_id[flow.flow] = flow
        if flow.socket == flow.flow:
            self._by_socket[flow.flow] = flow

    def from_listener(
        self,
        listener: int,
        ns_port: int,
        data: bytes,
        client: tuple[str, int],
        now: float,
        actions: list[Action],
        to_addr: bytes | None = None,
    ) -> None:
        """A datagram from ``client`` arrived on the ``-u`` listener socket ``listener``
        (whose forward goes to ``to_addr``, if it names a target address)."""
        key = (listener, client[0], client[1])
        flow = self._inbound.get(key)
        if flow is None:
            flow = self._open_inbound(listener, ns_port, client, now, to_addr)
            if flow is None:
                self.engine.drop("unmappable", f"udp source {client[0]}")
                return
        flow.last_used = now
        self._to_namespace(flow, data, actions)

    def _open_inbound(
        self, listener: int, ns_port: int, client: tuple[str, int], now: float,
        to_addr: bytes | None,
    ) -> UdpFlow | None:
        engine = self.engine
        peer = engine.config.mapping.apparent_source(client[0])
        if peer is None:
            return None
        ns_addr = engine.inbound_target(peer, to_addr)
        if ns_addr is None:
            return None
        # The namespace may have a flow with this client already, from its own port
        # ns_port (peers that both start, as WireGuard's do): that one carries it too,
        # rather than a second flow under the same key.
        existing = self._by_key.get((ns_addr, ns_port, peer, client[1]))
        if existing is not None or len(self._by_key) >= MAX_FLOWS:
            return existing
        flow = UdpFlow(
            engine.new_flow_id(),
            4 if len(peer) == 4 else 6,
            ns_addr,
            ns_port,
            peer,
            client[1],
            client,
            listener,
            now,
        )
        self._add(flow)
        self._inbound[(listener, client[0], client[1])] = flow
        return flow

    def from_socket(
        self, socket: int, data: bytes, peer: tuple[str, int], now: float, actions: list[Action]
    ) -> None:
        flow = self._by_socket.get(socket)
        if flow is None:
            self.engine.drop("stale", f"udp datagram for closed flow {socket}")
            return
        flow.last_used = now
        self._to_namespace(flow, data, actions)

    def _to_namespace(self, flow: UdpFlow, data: bytes, actions: list[Action]) -> None:
        engine = self.engine
        l4 = build_udp(flow.peer, flow.ns_addr, flow.peer_port, flow.ns_port, data)
        frame = build_ip_frame(engine.ns_mac, engine.plan.our_mac, flow.peer, flow.ns_addr, 17, l4)
        actions.append(SendFrames([frame]))

    def failed(self, socket: int, err: int, now: float, actions: list[Action]) -> None:
        """The socket of a flow reported ``err``: reflect unreachability, keep the flow."""
        flow = self._by_socket.get(socket)
        if flow is not None:
            self._reflect(flow, err, actions)

    def open_failed(self, socket: int, err: int, now: float, actions: list[Action]) -> None:
        """The socket of a new flow could not be opened (out of fds, no route): answer
        the namespace as for a later error, and forget the flow."""
        flow = self._by_socket.get(socket)
        if flow is not None:
            self._reflect(flow, err, actions)
            self.engine.timers.cancel(("udp", socket))
            self._forget(flow)

    def listener_error(
        self, listener: int, client: tuple[str, int], err: int, actions: list[Action]
    ) -> None:
        """The ``-u`` listener's error queue holds ``err`` for a datagram sent to ``client``:
        reflect it on the inbound flow of that client (a listener is never connected, so
        this is the only way an error names whom it is about)."""
        flow = self._inbound.get((listener, client[0], client[1]))
        if flow is not None:
            self._reflect(flow, err, actions)

    def _reflect(self, flow: UdpFlow, err: int, actions: list[Action]) -> None:
        codes = _UNREACHABLE_CODES.get(err)
        if codes is not None:
            actions.append(SendFrames([self._unreachable(flow, *codes)]))

    def _unreachable(self, flow: UdpFlow, code4: int, code6: int) -> bytes:
        """ICMP(v6) destination unreachable from the peer, quoting a minimal copy of the
        offending datagram (what the namespace's kernel needs to find its socket)."""
        quoted_udp = struct.pack("!HHHH", flow.ns_port, flow.peer_port, 8, 0)
        quoted = build_ip(flow.ns_addr, flow.peer, 17, quoted_udp)
        plan = self.engine.plan
        if flow.version == 4:
            message = bytearray(_ICMP_UNREACH.pack(3, code4, 0, 0) + quoted)
            struct.pack_into("!H", message, 2, checksum(message))
            proto = IPPROTO_ICMP
        else:
            message = bytearray(_ICMP_UNREACH.pack(1, code6, 0, 0) + quoted)
            struct.pack_into(
                "!H", message, 2, l4_checksum(flow.peer, flow.ns_addr, IPPROTO_ICMPV6, message)
            )
            proto = IPPROTO_ICMPV6
        return build_ip_frame(
            self.engine.ns_mac, plan.our_mac, flow.peer, flow.ns_addr, proto, bytes(message)
        )

    def deadline(self, flow_id: int, now: float, actions: list[Action]) -> None:
        flow = self._by_id.get(flow_id)
        if flow is None:
            return
        if now - flow.last_used < self.timeout:
            self.engine.timers.schedule(("udp", flow_id), flow.last_used + self.timeout)
            return
        self._forget(flow)
        if flow.socket == flow_id:
            actions.append(CloseSocket(flow_id))

    def _forget(self, flow: UdpFlow) -> None:
        del self._by_id[flow.flow]
        del self._by_key[(flow.ns_addr, flow.ns_port, flow.peer, flow.peer_port)]
        if flow.socket == flow.flow:
            del self._by_socket[flow.flow]
        else:
            del self._inbound[(flow.socket, flow.remote[0], flow.remote[1])]
