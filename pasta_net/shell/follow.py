"""``--follow-host``: keep the namespace's addresses and routes in step with the host's.

The namespace copies the host's address and default gateway at start (pasta's model, no
NAT). When the host's change (DHCP renewal, VPN, suspend and resume, a new network),
pasta leaves the namespace with stale ones; with ``--follow-host`` we copy them again.

How: a netlink socket in our own namespace (the host's; the data path never enters the
target netns), subscribed to address and route changes, says only *that* something
changed. What changed comes from reading the host again with the code that read it at
start (``netconf.read_host``, pyroute2, in a worker thread so the trio loop never waits
on netlink), once a burst of changes has settled (:data:`SETTLE`): "add the new
address, delete the old, add the route" is three notifications and one update. We do
not parse the notifications: a dump is the truth, and a lost notification (``ENOBUFS``)
then costs nothing.

What an update does, in this order: the engine takes the new address plan and map
(``Engine.replan``: ARP, NDP, DHCP, DHCPv6 answers and address mapping use them from
the next frame on; open flows keep theirs, so flows whose addresses did not change go
on), then, with ``--config-net``, the namespace interface gets the new address and
default route through the netns thread, one family at a time, only where they changed.
A host without a usable default route (the moment between deleting an address and
adding the next) is not a change: we wait for the next notification.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import socket
from collections.abc import Callable

import attrs
import trio

from pasta_net.core.engine import Engine
from pasta_net.core.mapping import AddressMap
from pasta_net.core.plan import AddressPlan
from pasta_net.netconf import Addressing, HostConfig, NetconfError, NoDefaultRoute

__all__ = ["RETRY", "SETTLE", "Follow", "follow_host"]

log = logging.getLogger("pasta_net.follow")

SETTLE = 0.1
"""Seconds to let a burst of netlink notifications finish before reading the host."""
RETRY = 10.0
"""Seconds before a move of the namespace that failed is tried again, if nothing changes."""
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_IFADDR = 0x100
_RTMGRP_IPV6_ROUTE = 0x400
_GROUPS = _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_IFADDR | _RTMGRP_IPV6_ROUTE


@attrs.frozen
class Follow:
    """What following needs from setup; the callables may block (they run in threads)."""

    read_host: Callable[[], HostConfig]
    """The host's interface now; raises ``NetconfError`` when it has none usable."""
    replan: Callable[[HostConfig, AddressPlan], tuple[AddressPlan, AddressMap]]
    """The plan and map for a host, given the current plan (whose MAC stays)."""
    reconfigure: Callable[[Addressing, Addressing], None] | None = None
    """Move one family of the namespace interface (``--config-net``), or None."""


async def follow_host(follow: Follow, engine: Engine,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Watch the host until cancelled; started once the netlink socket is subscribed."""
    # What the namespace interface has, per family. The engine takes a new plan at once;
    # a move of the interface that failed is tried again, at the next change or after
    # RETRY, whichever comes first (a stable host sends no change).
    applied = [_v4(engine.plan), _v6(engine.plan)]
    with _monitor() as sock:
        task_status.started()
        # What changed between our start-up read and the subscription (the network
        # coming up while we started, local mode's case) sends no notification now.
        await _update(follow, engine, applied)
        while True:
            pending = follow.reconfigure is not None and applied != [_v4(engine.plan),
                                                                      _v6(engine.plan)]
            with trio.move_on_after(RETRY if pending else math.inf):
                await trio.lowlevel.wait_readable(sock)
                await trio.sleep(SETTLE)
                _drain(sock)
            await _update(follow, engine, applied)


def _monitor() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                         | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, _GROUPS))
    except OSError:
        sock.close()
        raise
    return sock


def _drain(sock: socket.socket) -> None:
    """Discard what is queued: a change after this makes the socket readable again."""
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:  # overrun: notifications lost, nothing else
                raise


async def _update(follow: Follow, engine: Engine, applied: list[Addressing]) -> None:
    try:
        host = await trio.to_thread.run_sync(follow.read_host)
    except NoDefaultRoute as exc:
        log.debug("host not usable now (%s); waiting for the next change", exc)
        return
    except NetconfError as exc:
        log.warning("cannot read the host: %s; waiting for the next change", exc)
        return
    plan, mapping = follow.replan(host, engine.plan)
    if plan != engine.plan or mapping != engine.config.mapping:
        engine.replan(plan, mapping, trio.current_time())
        log.info("host changed: namespace now %s", _describe(plan))
    if follow.reconfigure is None:
        return
    for family, wanted in enumerate((_v4(plan), _v6(plan))):
        if applied[family] != wanted:
            try:
                await trio.to_thread.run_sync(follow.reconfigure, applied[family], wanted)
            except NetconfError as exc:
                log.warning("cannot follow the host in the namespace: %s", exc)
            else:
                applied[family] = wanted


def _v4(plan: AddressPlan) -> Addressing:
    return Addressing(plan.addr4, plan.prefix4, plan.gw4)


def _v6(plan: AddressPlan) -> Addressing:
    return Addressing(plan.addr6, plan.prefix6, plan.gw6)


def _describe(plan: AddressPlan) -> str:
    parts = []
    for family in (_v4(plan), _v6(plan)):
        if family.addr is not None:
            via = f" via {ipaddress.ip_address(family.gw)}" if family.gw else ""
            parts.append(f"{ipaddress.ip_address(family.addr)}/{family.prefix}{via}")
    return ", ".join(parts) or "no addresses"
