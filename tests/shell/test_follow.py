"""``follow_host`` without namespaces: what it does with the host reads it is given.

The netlink subscription is real (a NETLINK_ROUTE socket needs no privilege); the host
reads and the engine are stand-ins that record what following did to them."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import attrs
import pytest
import trio

from pasta_net.core.mapping import AddressMap
from pasta_net.core.plan import AddressPlan
from pasta_net.netconf import LOCAL_MODE, Addressing, HostConfig, NetconfError, NoDefaultRoute
from pasta_net.shell import follow as follow_module
from pasta_net.shell.follow import Follow, _update, follow_host

ONLINE = HostConfig(ifname="up0", mac=None, mtu=1500, addr4=bytes([198, 51, 100, 2]),
                    prefix4=24, gw4=bytes([198, 51, 100, 1]))


def plan_for(host: HostConfig) -> AddressPlan:
    return AddressPlan(our_mac=b"\x9a\x55\x9a\x55\x9a\x55", addr4=host.addr4,
                       prefix4=host.prefix4 or 24, gw4=host.gw4)


@attrs.define
class RecordingEngine:
    plan: AddressPlan
    config: SimpleNamespace = attrs.field(factory=lambda: SimpleNamespace(mapping=None))
    replans: list[AddressPlan] = attrs.field(factory=list)

    def replan(self, plan: AddressPlan, mapping: AddressMap, now: float) -> None:
        self.plan = plan
        self.config.mapping = mapping
        self.replans.append(plan)


async def follow_for_a_moment(read_host: Callable[[], HostConfig]) -> RecordingEngine:
    engine = RecordingEngine(plan_for(LOCAL_MODE))
    follow = Follow(read_host=read_host,
                    replan=lambda host, old: (plan_for(host), AddressMap()))
    async with trio.open_nursery() as nursery:
        await nursery.start(follow_host, follow, engine)
        await trio.sleep(0.5)  # no netlink notification comes in a test's own namespace
        nursery.cancel_scope.cancel()
    return engine


async def test_a_change_before_the_subscription_is_seen_at_once() -> None:
    """The network came up while we started (we began in local mode): no notification
    will say so, so following reads the host once when it starts."""
    engine = await follow_for_a_moment(lambda: ONLINE)
    assert engine.replans == [plan_for(ONLINE)]


@pytest.mark.parametrize("error", [NoDefaultRoute("offline"), NetconfError("helper died")])
async def test_an_unreadable_host_changes_nothing(error: NetconfError) -> None:
    def read_host() -> HostConfig:
        raise error

    engine = await follow_for_a_moment(read_host)
    assert engine.replans == []


def failing_once() -> tuple[Follow, list[tuple[Addressing, Addressing]]]:
    """Following an online host with a namespace move that fails the first time; the
    moves tried."""
    moves: list[tuple[Addressing, Addressing]] = []

    def reconfigure(old: Addressing, new: Addressing) -> None:
        moves.append((old, new))
        if len(moves) == 1:
            raise NetconfError("Failed to add address 198.51.100.2/24 to tap0: busy")

    return Follow(read_host=lambda: ONLINE, reconfigure=reconfigure,
                  replan=lambda host, old: (plan_for(host), AddressMap())), moves


async def test_a_failed_move_of_the_namespace_is_tried_again() -> None:
    """The engine takes the new plan at once; the interface, whose move failed, is moved
    at the next update, from the addressing it still has."""
    engine = RecordingEngine(plan_for(LOCAL_MODE))
    follow, moves = failing_once()
    local = Addressing(LOCAL_MODE.addr4, 16, LOCAL_MODE.gw4)
    online = Addressing(ONLINE.addr4, 24, ONLINE.gw4)
    applied = [local, Addressing(None, 64, None)]
    await _update(follow, engine, applied)
    assert engine.replans == [plan_for(ONLINE)] and applied[0] == local
    await _update(follow, engine, applied)
    assert engine.replans == [plan_for(ONLINE)], "the engine had it already"
    assert moves == [(local, online), (local, online)] and applied[0] == online
    await _update(follow, engine, applied)
    assert len(moves) == 2, "nothing left to do"


async def test_a_failed_move_is_tried_again_on_a_quiet_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No netlink notification comes on a stable host: the retry comes from a timer."""
    monkeypatch.setattr(follow_module, "RETRY", 0.2)
    engine = RecordingEngine(plan_for(LOCAL_MODE))
    follow, moves = failing_once()
    async with trio.open_nursery() as nursery:
        await nursery.start(follow_host, follow, engine)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert len(moves) == 2, "tried again once, then settled"
