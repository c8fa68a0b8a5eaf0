"""Presence (nodes, heartbeats, reaping) and the per-user event streams with their pub/sub
delivery and replay, against a real Redis.

Every test runs in a ``World`` whose teardown asserts ``check_invariant(...).ok``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from clearing import EventKind, GiftState, Refusal, Refused, UserEvent, decode_published
from clearing.slots import tag_of
from clearing.testing import World


@pytest.fixture
async def world(redis: aioredis.Redis) -> AsyncIterator[World]:
    world = await World.build(redis)
    yield world
    report = await world.check()
    assert report.ok, report.violations


@pytest.fixture
async def subscriber(redis: aioredis.Redis) -> AsyncIterator[PubSub]:
    pubsub = redis.pubsub()
    yield pubsub
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def friends(world: World) -> None:
    await world.user("ann", cards=10)
    await world.user("bob")
    await world.befriend("ann", "bob")


async def subscribe(pubsub: PubSub, world: World, node: str) -> None:
    """Subscribe to the node's channel on the Redis server (events are published in its home
    slot) and wait for the confirmation, so nothing published next can be missed."""
    (server,) = world.topology.nodes()
    await pubsub.ssubscribe(world.keys.node_channel(server.home, node))
    confirmation = await pubsub.get_message(timeout=2.0)
    assert confirmation is not None
    assert confirmation["type"] == "ssubscribe"


async def received(pubsub: PubSub, expected: int, wait_s: float = 2.0) -> list[UserEvent]:
    """The events published on the subscribed channels: ``expected`` of them, or fewer
    if no more arrive within ``wait_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    events: list[UserEvent] = []
    while len(events) < expected and (left := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            events.append(decode_published(message["data"]))
    return events


# ------------------------------------------------------------------------- presence


async def test_connections_are_counted_per_node(world: World) -> None:
    p = world.presence
    assert await p.heartbeat("n2")  # first beat: announce your connections
    assert not await p.heartbeat("n2")
    await p.connect("bob", "n2")
    await p.connect("bob", "n2")
    await p.connect("bob", world.node)
    assert sorted(await p.nodes_of("bob")) == sorted(["n2", world.node])
    await p.disconnect("bob", "n2")
    assert sorted(await p.nodes_of("bob")) == sorted(["n2", world.node])
    await p.disconnect("bob", "n2")
    await p.disconnect("bob", "n2")  # one too many: ignored, never negative
    assert await p.nodes_of("bob") == [world.node]
    assert await world.redis.hgetall(world.keys.presence("bob")) == {world.node.encode(): b"1"}
    assert not await world.redis.sismember(world.keys.node_users(tag_of("bob"), "n2"), "bob")


async def test_a_node_is_dead_once_its_heartbeat_is_node_ttl_old(world: World) -> None:
    await world.presence.connect("bob", world.node)
    world.clock.advance(world.rules.node_ttl_ms - 1)
    assert await world.presence.nodes_of("bob") == [world.node]
    assert await world.presence.reap_dead_nodes() == []
    world.clock.advance(1)
    assert await world.presence.nodes_of("bob") == []


async def test_reaping_drops_the_dead_nodes_presence_only(world: World) -> None:
    p = world.presence
    await p.connect("ann", world.node)
    await p.connect("bob", world.node)
    world.clock.advance(world.rules.node_ttl_ms)
    await p.heartbeat("n2")
    await p.connect("bob", "n2")
    assert await p.reap_dead_nodes() == [world.node]
    assert await p.reap_dead_nodes() == []  # idempotent
    assert await world.redis.hgetall(world.keys.presence("ann")) == {}
    assert await world.redis.hgetall(world.keys.presence("bob")) == {b"n2": b"1"}
    assert not await world.redis.exists(world.keys.node_users(tag_of("ann"), world.node))
    assert await p.nodes_of("bob") == ["n2"]
    assert await p.heartbeat(world.node)  # the paused node comes back and learns it was reaped


async def test_leave_takes_the_nodes_presence_with_it(world: World) -> None:
    await world.presence.connect("bob", world.node)
    await world.presence.leave(world.node)
    assert await world.presence.nodes_of("bob") == []
    assert await world.redis.zscore(world.keys.nodes(), world.node) is None
    await world.presence.leave(world.node)


# ------------------------------------------------------------------------- streams and pub/sub


async def test_offers_and_outcomes_get_offsets_one_two_three(world: World) -> None:
    await friends(world)
    first = await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    await world.clearing.accept("g1", "bob")
    await world.clearing.reserve("g2", "ann", "bob", "note", 2)

    start = await world.events.replay("bob", None, None)
    assert (start.head, start.events, start.recovered) == (3, [], True)
    bob = await world.events.replay("bob", start.epoch, 0)
    assert bob.recovered
    assert [(e.offset, e.kind, e.gift.gift_id) for e in bob.events] == [
        (1, EventKind.OFFER, "g1"),
        (2, EventKind.OUTCOME, "g1"),
        (3, EventKind.OFFER, "g2"),
    ]
    assert bob.events[0] == UserEvent("bob", start.epoch, 1, EventKind.OFFER, first)
    assert bob.events[1].gift.state is GiftState.ACCEPTED
    ann = await world.events.replay("ann", "", None)
    assert ann.head == 1  # the sender hears the outcome only
    tail = await world.events.replay("bob", bob.epoch, 2)
    assert ([e.offset for e in tail.events], tail.recovered) == ([3], True)
    assert await world.redis.xrange(world.keys.events("bob"), "1-0", "1-0")  # explicit entry ids


async def test_events_are_published_to_the_users_live_nodes(world: World, subscriber: PubSub) -> None:
    await friends(world)
    await world.presence.heartbeat("n-stale")
    await world.presence.connect("bob", "n-stale")
    world.clock.advance(world.rules.node_ttl_ms)
    await world.presence.heartbeat(world.node)
    stale = world.redis.pubsub()
    try:
        await subscribe(subscriber, world, world.node)
        await subscribe(stale, world, "n-stale")
        gift = await world.clearing.reserve("g1", "ann", "bob", "note", 1)
        [offer] = await received(subscriber, 1)
        assert offer == UserEvent("bob", offer.epoch, 1, EventKind.OFFER, gift)
        assert (await world.events.replay("bob", offer.epoch, 0)).events == [offer]

        await world.clearing.decline("g1", "bob")
        outcomes = await received(subscriber, 2)
        assert sorted((e.user, e.offset) for e in outcomes) == [("ann", 1), ("bob", 2)]
        assert {e.gift.state for e in outcomes} == {GiftState.DECLINED}
        assert await received(stale, 1, wait_s=0.2) == []  # a dead node gets nothing
    finally:
        await stale.aclose()  # type: ignore[no-untyped-call]


async def test_an_expiry_is_told_to_both_users(world: World, subscriber: PubSub) -> None:
    await friends(world)
    await world.presence.connect("ann", world.node)
    await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    await world.tick(world.rules.confirm_window_ms)
    await subscribe(subscriber, world, world.node)
    await world.clearing.expire_due()
    outcomes = await received(subscriber, 2)
    assert sorted(e.user for e in outcomes) == ["ann", "bob"]
    assert {e.gift.state for e in outcomes} == {GiftState.EXPIRED}


async def test_a_trimmed_stream_is_not_recovered(world: World) -> None:
    await friends(world)
    for n in range(3):
        await world.clearing.reserve(f"g{n}", "ann", "bob", "note", 1)
    await world.redis.xtrim(world.keys.events("bob"), maxlen=1, approximate=False)  # keeps offset 3
    epoch = (await world.events.replay("bob", None, None)).epoch
    gap = await world.events.replay("bob", epoch, 1)
    assert ([e.offset for e in gap.events], gap.recovered) == ([3], False)
    whole = await world.events.replay("bob", epoch, 2)
    assert ([e.offset for e in whole.events], whole.recovered) == ([3], True)


async def test_a_lost_history_starts_a_new_epoch(world: World) -> None:
    await friends(world)
    await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    await world.clearing.reserve("g2", "ann", "bob", "note", 1)
    old = (await world.events.replay("bob", None, None)).epoch
    await world.redis.delete(world.keys.event_meta("bob"))  # as if Redis lost it

    await world.clearing.accept("g2", "bob")
    replay = await world.events.replay("bob", old, 2)
    assert replay.epoch != old
    assert not replay.recovered
    assert [(e.offset, e.gift.gift_id) for e in replay.events] == [(1, "g2")]  # old entries went too
    assert replay.head == 1


async def test_an_offset_beyond_the_head_is_not_recovered(world: World) -> None:
    await friends(world)
    await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    epoch = (await world.events.replay("bob", None, None)).epoch
    replay = await world.events.replay("bob", epoch, 5)
    assert ([e.offset for e in replay.events], replay.recovered) == ([1], False)


async def test_a_user_without_events_gets_an_epoch(world: World) -> None:
    first = await world.events.replay("zoe", None, None)
    assert (first.head, first.events, first.recovered) == (0, [], True)
    assert first.epoch
    again = await world.events.replay("zoe", first.epoch, 0)
    assert (again.epoch, again.events, again.recovered) == (first.epoch, [], True)
    with pytest.raises(Refused) as info:
        await world.events.replay("zoe", first.epoch, -1)
    assert info.value.code is Refusal.BAD_REQUEST
