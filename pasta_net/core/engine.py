"""The engine: frames from the namespace and socket events in, actions out.

Theory of operation
-------------------
The shell calls :meth:`Engine.receive_frames` with a batch of Ethernet frames read from
the tap (or the qemu socket) and the current time, and executes the returned actions.
Results of those actions (data read from host sockets, bytes accepted by ``sendmsg``,
connects that completed) come back through the other public methods. Time is always an
argument: the engine never reads a clock, and :meth:`next_deadline` tells the shell
when to call :meth:`handle_deadline`.

Rules this file keeps:

1. Hostile input is dropped here and only here: any :class:`MalformedFrame` raised by
   a parser or handler becomes a counter (``drops[reason]``) and one debug line; it
   never escapes to the shell and never affects another flow. Any other exception is
   our bug, not the namespace's: it is logged with its traceback and counted
   (``internal-error``); the frame is dropped, or the TCP connection whose segments
   raised it is reset, and every other flow goes on (a crash would end them all).
2. Dispatch is by table (ethertype, then IP protocol, then UDP port), not by if-ladder.
3. TCP segments of one batch are grouped per connection before they are handled, so a
   connection gets one ``sendmsg`` and one ACK per batch (passt's "sequences").
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import ClassVar

import attrs

from pasta_net.core import dhcp, dhcpv6, ndp
from pasta_net.core.actions import (
    Action,
    CloseSocket,
    OpenSocket,
    SendDatagram,
    SendFrames,
    SocketKind,
)
from pasta_net.core.arp import handle_arp
from pasta_net.core.frames import (
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IpPacket,
    MalformedFrame,
    forwardable,
    parse_ethernet,
    parse_ip,
    parse_udp,
)
from pasta_net.core.icmp import ECHO_TIMEOUT, PingFlow, echo_reply_frame, parse_echo_request
from pasta_net.core.mapping import AddressMap
from pasta_net.core.plan import AddressPlan
from pasta_net.core.tcp import TcpTable
from pasta_net.core.timers import Timers
from pasta_net.core.udp import IDLE_TIMEOUT, UdpTable

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger("pasta_net.engine")

_ND_TYPES = frozenset({133, 135})
_RA_FIRST_DELAY = 1.0
_RA_INTERVAL = 300.0


@attrs.frozen
class EngineConfig:
    plan: AddressPlan
    ns_mac: bytes = b"\xff" * 6
    """The namespace's MAC until we learn it from its frames (broadcast until then)."""
    offload: bool = True
    """Frames to the namespace may use virtio-net checksum offload and GSO (tap mode)."""
    tcp: bool = True
    udp: bool = True
    icmp: bool = True
    dhcp: bool = True
    dhcpv6: bool = True
    ndp: bool = True
    ra: bool = True
    udp_timeout: float = IDLE_TIMEOUT
    mapping: AddressMap = attrs.field(factory=AddressMap)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.plan = config.plan
        self.ns_mac = config.ns_mac
        self.drops: Counter[str] = Counter()
        self._seen: dict[int, bytes] = {}
        self.timers = Timers()
        self._ids = itertools.count(1)
        self._pings: dict[tuple[int, bytes, bytes, int], PingFlow] = {}
        self._ping_by_id: dict[int, PingFlow] = {}
        self.tcp = TcpTable(self)
        self.udp = UdpTable(self, config.udp_timeout)
        self._ethertypes: dict[int, Callable[[memoryview, float, list[Action]], None]] = {
            ETH_P_ARP: self._arp,
        }
        self._protocols: dict[int, Callable[[bytes, IpPacket, float, list[Action]], None]] = {
            IPPROTO_ICMP: self._icmp,
            IPPROTO_ICMPV6: self._icmpv6,
            IPPROTO_UDP: self._udp,
        }
        self._tcp_batch: defaultdict[tuple, list] = defaultdict(list)
        if config.ra and config.ndp and self.plan.addr6 is not None:
            self.timers.schedule("ra", -1.0)

    # ---------------------------------------------------------------- identities --
    def ns_address(self, version: int) -> bytes | None:
        """Where inbound flows of this family go: the address the namespace last used
        as a source (it may have configured itself by SLAAC), else the planned one."""
        return self._seen.get(version) or (self.plan.addr4 if version == 4 else self.plan.addr6)

    def inbound_target(self, peer: bytes, to_addr: bytes | None) -> bytes | None:
        """Where an inbound flow from ``peer`` goes: the forward's target address
        (``-t 8080:10.0.0.5/80``), else :meth:`ns_address`; None across families."""
        if to_addr is not None:
            return to_addr if len(to_addr) == len(peer) else None
        return self.ns_address(4 if len(peer) == 4 else 6)

    def new_flow_id(self) -> int:
        return next(self._ids)

    def flow_counts(self) -> dict[str, int]:
        """Open flows by protocol (run-time ``stats``)."""
        return {"tcp": len(self.tcp), "udp": len(self.udp), "icmp": len(self._ping_by_id)}

    def replan(self, plan: AddressPlan, mapping: AddressMap, now: float) -> None:
        """Take new addresses (``--follow-host``) without touching existing flows.

        Flows keep the addresses they were opened with (handlers read ``self.plan`` and
        ``self.config.mapping`` per frame, never a copy), so a flow whose addresses did
        not change goes on; one whose did dies as it would on a real host. A router
        advertisement goes out at once, so SLAAC learns a new prefix now, not in minutes.
        The source address last seen is forgotten for a family whose address changed:
        inbound flows then go to the new address, not to the one that went away.
        """
        for version, old, new in ((4, self.plan.addr4, plan.addr4),
                                  (6, self.plan.addr6, plan.addr6)):
            if old != new:
                self._seen.pop(version, None)
        self.plan = plan
        self.config = attrs.evolve(self.config, plan=plan, mapping=mapping)
        if self.config.ra and self.config.ndp and plan.addr6 is not None:
            self.timers.schedule("ra", now)

    # ---------------------------------------------------------- frames from the ns --
    def receive_frames(self, frames: Sequence[memoryview], now: float) -> list[Action]:
        """Handle a batch of frames read from the namespace."""
        actions: list[Action] = []
        batch = self._tcp_batch
        for frame in frames:
            try:
                self._frame(frame, now, actions, batch)
            except MalformedFrame as exc:
                self.drop(exc.reason, str(exc))
            except Exception:
                self._internal_error("frame")
        if batch:
            for key, segments in batch.items():
                try:
                    self.tcp.segments(key, segments, now, actions)
                except Exception:
                    self._internal_error("tcp segments")
                    self.tcp.abort(key, actions)
            batch.clear()
        return actions

    def _internal_error(self, what: str) -> None:
        self.drops["internal-error"] += 1
        log.exception("internal error handling %s: dropped", what)

    def _frame(
        self, frame: memoryview, now: float, actions: list[Action], batch: defaultdict[tuple, list]
    ) -> None:
        _dst, src_mac, ethertype, payload = parse_ethernet(frame)
        if src_mac != self.ns_mac and not src_mac[0] & 1:
            self.ns_mac = src_mac
        if ethertype in (ETH_P_IP, ETH_P_IPV6):
            packet = parse_ip(ethertype, payload)
            if self._seen.get(packet.version) != packet.src and _routable(packet.src):
                self._seen[packet.version] = packet.src
            if packet.proto == IPPROTO_TCP:
                if self.config.tcp:
                    self.tcp.classify(packet, batch)
                else:
                    self.drop("disabled", "tcp")
                return
            handler = self._protocols.get(packet.proto)
            if handler is None:
                self.drop("unsupported", f"ip protocol {packet.proto}")
                return
            handler(src_mac, packet, now, actions)
            return
        handler = self._ethertypes.get(ethertype)
        if handler is None:
            self.drop("unsupported", f"ethertype {ethertype:#06x}")
            return
        handler(payload, now, actions)

    def drop(self, reason: str, detail: str, count: int = 1) -> None:
        """Count ``count`` dropped frames or events; one debug line per call."""
        self.drops[reason] += count
        log.debug("dropped (%s): %s", reason, detail)

    def _arp(self, payload: memoryview, _now: float, actions: list[Action]) -> None:
        self._reply(handle_arp(payload, self.plan), actions)

    @staticmethod
    def _reply(frames: list[bytes], actions: list[Action]) -> None:
        if frames:
            actions.append(SendFrames(list(frames)))

    # ----------------------------------------------------------------- ICMP/NDP --
    def _icmp(self, src_mac: bytes, packet: IpPacket, now: float, actions: list[Action]) -> None:
        if packet.version != 4:
            raise MalformedFrame("bad-header", "icmp over ipv6")
        self._echo(packet, now, actions)

    def _icmpv6(self, src_mac: bytes, packet: IpPacket, now: float, actions: list[Action]) -> None:
        if packet.version != 6:
            raise MalformedFrame("bad-header", "icmpv6 over ipv4")
        if len(packet.l4) and packet.l4[0] in _ND_TYPES:
            if self.config.ndp and (packet.l4[0] == 135 or self.config.ra):
                self._reply(ndp.handle_ndp(src_mac, packet, self.plan, self.config.dhcpv6),
                            actions)
            return
        self._echo(packet, now, actions)

    def _echo(self, packet: IpPacket, now: float, actions: list[Action]) -> None:
        if not self.config.icmp:
            self.drop("disabled", "icmp")
            return
        request = parse_echo_request(packet)
        if request is None:
            self.drop("unsupported", "icmp type")
            return
        if not (forwardable(packet.src) and forwardable(packet.dst)):
            self.drop("bad-address", f"echo request to {packet.dst.hex()}")
            return
        key = (packet.version, packet.src, packet.dst, request.ident)
        flow = self._pings.get(key)
        if flow is None:
            flow = PingFlow(
                self.new_flow_id(), packet.version, packet.src, packet.dst, request.ident, now
            )
            self._pings[key] = flow
            self._ping_by_id[flow.flow] = flow
            actions.append(
                OpenSocket(
                    flow.flow,
                    SocketKind.PING,
                    packet.version,
                    self.config.mapping.outbound(packet.dst, 0),
                )
            )
        flow.last_used = now
        self.timers.schedule(("ping", flow.flow), now + ECHO_TIMEOUT)
        actions.append(
            SendDatagram(
                flow.flow, self.config.mapping.outbound(packet.dst, 0), [request.message]
            )
        )

    # ---------------------------------------------------------------------- UDP --
    def _udp(self, src_mac: bytes, packet: IpPacket, now: float, actions: list[Action]) -> None:
        datagram = parse_udp(packet.l4)
        if datagram.dport == 67 and packet.version == 4:
            if self.config.dhcp:
                self._reply(dhcp.handle_dhcp(src_mac, packet, datagram, self.plan), actions)
            return
        if datagram.dport == 547 and packet.version == 6:
            if self.config.dhcpv6:
                self._reply(dhcpv6.handle_dhcpv6(src_mac, packet, datagram, self.plan), actions)
            return
        if not self.config.udp:
            self.drop("disabled", "udp")
            return
        self.udp.from_namespace(packet, datagram, now, actions)

    # ----------------------------------------------------------- socket events --
    def datagram_received(
        self, flow: int, data: bytes, peer: tuple[str, int], now: float
    ) -> list[Action]:
        """A datagram arrived on the UDP or ping socket of ``flow``."""
        ping = self._ping_by_id.get(flow)
        if ping is not None:
            frame = echo_reply_frame(ping, data, self.ns_mac, self.plan.our_mac)
            return [SendFrames([frame])] if frame else []
        actions: list[Action] = []
        self.udp.from_socket(flow, data, peer, now, actions)
        return actions

    def open_failed(self, flow: int, err: int, now: float) -> list[Action]:
        """The socket an :class:`OpenSocket` asked for could not be opened or connected
        (``EMFILE``, no route...): the new flow is refused, and forgotten."""
        if flow in self._ping_by_id:
            return self.socket_failed(flow, err, now)
        actions: list[Action] = []
        if not self.tcp.failed(flow, err, now, actions):
            self.udp.open_failed(flow, err, now, actions)
        return actions

    def socket_failed(self, flow: int, err: int, now: float) -> list[Action]:
        """A socket of ``flow`` could not be opened or failed for good."""
        ping = self._ping_by_id.pop(flow, None)
        if ping is not None:
            del self._pings[(ping.version, ping.ns_addr, ping.peer, ping.ident)]
            self.timers.cancel(("ping", flow))
            return [CloseSocket(flow)]
        actions: list[Action] = []
        if not self.tcp.failed(flow, err, now, actions):
            self.udp.failed(flow, err, now, actions)
        return actions

    # ------------------------------------------------------------------- time --
    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def handle_deadline(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for key in self.timers.pop_due(now):
            kind, *rest = key if isinstance(key, tuple) else (key,)
            try:
                self._deadline_handlers[kind](self, rest, now, actions)
            except Exception:  # one flow's fault must not end every other flow
                self._internal_error(f"{kind} deadline")
        return actions

    def _ping_expired(self, rest: list, now: float, actions: list[Action]) -> None:
        flow = self._ping_by_id.get(rest[0])
        if flow is None:
            return
        if now - flow.last_used < ECHO_TIMEOUT:
            self.timers.schedule(("ping", flow.flow), flow.last_used + ECHO_TIMEOUT)
            return
        actions.extend(self.socket_failed(flow.flow, 0, now))

    def _ra_due(self, _rest: list, now: float, actions: list[Action]) -> None:
        if self.plan.addr6 is None:  # gone with --follow-host: no router to announce
            return
        self.timers.schedule("ra", now + _RA_INTERVAL)  # first: one bad RA stops no other
        actions.append(SendFrames([ndp.build_router_advertisement(
            self.plan, managed=self.config.dhcpv6)]))

    def _tcp_due(self, rest: list, now: float, actions: list[Action]) -> None:
        self.tcp.deadline(rest[0], now, actions)

    def _udp_due(self, rest: list, now: float, actions: list[Action]) -> None:
        self.udp.deadline(rest[0], now, actions)

    _deadline_handlers: ClassVar[dict[str, Callable]] = {
        "ping": _ping_expired,
        "ra": _ra_due,
        "tcp": _tcp_due,
        "udp": _udp_due,
    }


def _routable(addr: bytes) -> bool:
    """Not unspecified, multicast or IPv6 link-local: an address inbound flows can use."""
    if len(addr) == 4:
        return addr != b"\0\0\0\0" and addr[0] < 224
    return addr[0] != 0xFF and not (addr[0] == 0xFE and addr[1] & 0xC0 == 0x80) and any(addr)
