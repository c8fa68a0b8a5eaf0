"""Clearing calls made in one event-loop turn share one pipeline, and nothing else changes.

Against a real Redis: concurrent gifts all settle over a few connections; each call keeps its
own reply and its own refusal or error; a node that lost clearing's function library gets
it again in the middle of a batch; a caller cancelled before the batch leaves changes nothing; an outage fails the
whole batch as unavailable. The conservation invariant is checked after each.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from clearing import ClearingUnavailable, GiftRules, GiftState, Refused
from clearing.component import single_topology
from clearing.lua import ScriptRunner
from clearing.pipelining import MAX_BATCH
from clearing.slots import slot_of
from clearing.testing import World
from notecard.local_redis import LocalRedis, free_port

#: Daily limits lifted: these tests send many gifts from one sender to one recipient.
RULES = GiftRules(daily_send_limit=1_000_000, daily_receive_limit=1_000_000)


@pytest.fixture
async def world(redis: aioredis.Redis) -> World:
    w = await World.build(redis, RULES)
    await w.user("ann", cards=400)
    await w.user("bob")
    await w.befriend("ann", "bob")
    return w


async def test_a_turn_of_concurrent_gifts_shares_a_few_connections(redis_server: LocalRedis) -> None:
    """Without the batching, 100 concurrent reserves open up to 100 connections; with it,
    one per pipeline of MAX_BATCH calls."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
        world = await World.build(client, RULES)
        await world.user("ann", cards=200)
        await world.user("bob")
        await world.befriend("ann", "bob")
        pool = client.connection_pool
        before = len(pool._available_connections) + len(pool._in_use_connections)  # type: ignore[attr-defined]
        gifts = await asyncio.gather(*(world.clearing.reserve(f"g{i}", "ann", "bob", "note", 1) for i in range(100)))
        after = len(pool._available_connections) + len(pool._in_use_connections)  # type: ignore[attr-defined]
        assert [g.gift_id for g in gifts] == [f"g{i}" for i in range(100)]
        assert all(g.state is GiftState.PENDING for g in gifts)
        assert after - before <= math.ceil(100 / MAX_BATCH) < 100
        assert (await world.check()).ok
    finally:
        await client.aclose()


async def test_each_call_of_a_batch_keeps_its_own_outcome(world: World) -> None:
    await world.user("cid")  # no friendship: NOT_MUTUAL_3D
    outcomes = await asyncio.gather(
        world.clearing.reserve("ok-1", "ann", "bob", "note", 1),
        world.clearing.reserve("no-1", "ann", "cid", "note", 1),
        world.clearing.reserve("ok-2", "ann", "bob", "note", 2),
        world.clearing.reserve("no-2", "ann", "bob", "note", 1_000),
        return_exceptions=True,
    )
    ok1, refused1, ok2, refused2 = outcomes
    assert not isinstance(ok1, BaseException) and ok1.qty == 1
    assert not isinstance(ok2, BaseException) and ok2.qty == 2
    assert isinstance(refused1, Refused) and refused1.code.value == "NOT_MUTUAL_3D"
    assert isinstance(refused2, Refused) and refused2.code.value == "BAD_QUANTITY"
    assert (await world.check()).ok


async def test_a_redis_error_fails_only_its_own_call(world: World) -> None:
    """A defect (a key of the wrong type) surfaces for its call; the batch's others settle."""
    await world.redis.set(world.keys.inbox("cid"), "not a sorted set")
    good = world.clearing.reserve("fine", "ann", "bob", "note", 1)
    bad = world.clearing.pending_for("cid")  # the same Clearing: the same batch
    result, error = await asyncio.gather(good, bad, return_exceptions=True)
    assert isinstance(error, ResponseError) and "WRONGTYPE" in str(error)
    assert not isinstance(result, BaseException) and result.gift_id == "fine"


async def test_library_flushed_between_batches_is_loaded_once_for_every_call(world: World) -> None:
    first = await asyncio.gather(*(world.clearing.reserve(f"a{i}", "ann", "bob", "note", 1) for i in range(5)))
    await world.redis.function_flush()
    # Two different functions in one batch, both missing from the node.
    sent, *answered = await asyncio.gather(
        world.clearing.reserve("b0", "ann", "bob", "note", 1),
        *(world.clearing.accept(g.gift_id, "bob") for g in first),
    )
    assert sent.state is GiftState.PENDING
    assert [r.gift.state for r in answered] == [GiftState.ACCEPTED] * 5
    assert all(r.changed for r in answered)  # each ran exactly once
    assert (await world.check()).ok


async def test_a_caller_cancelled_before_the_batch_is_sent_changes_nothing(world: World) -> None:
    doomed = asyncio.ensure_future(world.clearing.reserve("cancelled", "ann", "bob", "note", 1))
    kept = asyncio.ensure_future(world.clearing.reserve("kept", "ann", "bob", "note", 1))
    await asyncio.sleep(0)  # both calls are queued, the batch is not sent yet
    doomed.cancel()
    assert (await kept).gift_id == "kept"
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert await world.clearing.get_gift("cancelled") is None
    assert (await world.check()).ok


async def test_more_calls_than_one_batch_holds_all_settle(world: World) -> None:
    n = MAX_BATCH * 2 + 7
    gifts = await asyncio.gather(*(world.clearing.reserve(f"m{i}", "ann", "bob", "note", 1) for i in range(n)))
    assert len({g.gift_id for g in gifts}) == n
    assert (await world.clearing.balances("ann")).held["note"] == n * world.rules.units_per_card
    assert (await world.check()).ok


async def test_an_outage_fails_every_call_of_the_batch_as_unavailable(world: World) -> None:
    down = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        runner = ScriptRunner(single_topology(down, world.keys), world.rules, world.keys)
        calls = [runner.run("pending", slot_of(u), world.keys.inbox(u), world.clock(), {"u": u})
                 for u in ("ann", "bob", "cid")]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, ClearingUnavailable) for o in outcomes)
        assert len({id(o) for o in outcomes}) == 3  # one exception object per caller
    finally:
        await down.aclose()
