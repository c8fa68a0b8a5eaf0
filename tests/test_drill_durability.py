"""Durability settings: a gift write acknowledged only once replicas hold it (Redis WAIT),
and a ledger entry written to PostgreSQL only once they hold it too.

Against a real primary with one real replica: enough replicas acknowledges; too few raises
ClearingUnavailable although the write is on the primary (outcome unknown), and the
client's retry with the same gift id then settles it; a node without clearing's function
library (FUNCTION FLUSH, a failover to a replica without it) gets it inside the waited
pipeline; the settings are read from the environment and refuse a WAIT timeout that the Redis timeout would cut short.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import redis.asyncio as aioredis

from clearing import ClearingUnavailable, GiftRules, GiftState
from clearing.gifts import Clearing
from clearing.lua import Durability, NotReplicated
from clearing.testing import World
from gateway.config import ConfigError, GatewaySettings
from ledger.consumer import BooksConsumer
from ledger.reconcile import reconcile_books
from notecard.local_redis import LocalRedis


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRedis, LocalRedis]]:
    base = Path(tmp_path_factory.mktemp("replicated"))
    primary = LocalRedis(base / "primary").start()
    replica = LocalRedis(base / "replica", extra_args=("--replicaof", primary.host, str(primary.port)),
                         password=primary.password)  # a replica authenticates with its own password
    try:
        replica.start()
        _wait_linked(replica)
    except BaseException:
        replica.stop()
        primary.stop()
        raise
    yield primary, replica
    replica.stop()
    primary.stop()


def _wait_linked(replica: LocalRedis, timeout_s: float = 10.0) -> None:
    import redis

    deadline = time.monotonic() + timeout_s
    with redis.Redis.from_url(replica.url) as client:
        while time.monotonic() < deadline:
            if client.info("replication").get("master_link_status") == "up":
                return
            time.sleep(0.05)
    raise RuntimeError("the replica did not link to its primary in time")


@pytest.fixture
async def world(replicated: tuple[LocalRedis, LocalRedis]) -> AsyncIterator[World]:
    primary, _ = replicated
    client = aioredis.Redis.from_url(primary.url)
    await client.flushall()
    w = await World.build(client)
    await w.user("ann", cards=5)
    await w.user("bob")
    await w.befriend("ann", "bob")
    yield w
    await client.aclose()


def _clearing(world: World, replicas: int, timeout_ms: int = 200) -> Clearing:
    return Clearing(world.redis, world.rules, world.keys, world.clock, durability=Durability(replicas, timeout_ms))


async def test_enough_replicas_acknowledge(world: World) -> None:
    gift = await _clearing(world, 1).reserve("g1", "ann", "bob", "note", 1)
    assert gift.state is GiftState.PENDING
    resolution = await _clearing(world, 1).accept("g1", "bob")
    assert resolution.gift.state is GiftState.ACCEPTED
    assert (await world.check()).ok


async def test_too_few_replicas_is_unknown_and_the_retry_settles_it(world: World) -> None:
    with pytest.raises(NotReplicated) as caught:
        await _clearing(world, 2).reserve("g2", "ann", "bob", "note", 2)
    assert isinstance(caught.value, ClearingUnavailable)  # the gateway answers UNAVAILABLE
    # The write did happen on the primary: it was not "failed", only not yet durable.
    stored = await world.clearing.get_gift("g2")
    assert stored is not None and stored.state is GiftState.PENDING
    # The SDK's retry (same id, same payload) writes nothing and is acknowledged once the
    # replicas hold the original write: the fence makes WAIT cover it.
    again = await _clearing(world, 1).reserve("g2", "ann", "bob", "note", 2)
    assert again == stored
    assert (await world.check()).ok


async def test_refusals_wait_for_replicas_too(world: World) -> None:
    """A refusal is remembered for its gift id; one that a failover could forget would let
    a late duplicate create the gift, so under WAIT it is unknown until replicated."""
    with pytest.raises(NotReplicated):
        await _clearing(world, 2).reserve("g3", "ann", "bob", "note", 50)
    from clearing import Refused

    with pytest.raises(Refused) as caught:  # the retry answers the remembered refusal
        await _clearing(world, 1).reserve("g3", "ann", "bob", "note", 50)
    assert caught.value.code.value == "INSUFFICIENT_BALANCE"
    await world.accounts.mint("ann", "note", 100)  # ann can afford it now; g3 stays refused
    with pytest.raises(Refused) as again:
        await _clearing(world, 1).reserve("g3", "ann", "bob", "note", 50)
    assert again.value.code.value == "INSUFFICIENT_BALANCE"
    assert (await world.check()).ok


async def test_function_library_lost_after_failover_is_reloaded(world: World) -> None:
    clearing = _clearing(world, 1)
    await clearing.reserve("g4", "ann", "bob", "note", 1)
    await world.redis.function_flush()
    resolution = await clearing.decline("g4", "bob")
    assert resolution.gift.state is GiftState.DECLINED


async def test_a_batch_of_concurrent_writes_shares_one_wait(world: World) -> None:
    """Calls of one loop turn go as one pipeline ending in one WAIT (clearing/pipelining.py):
    enough replicas acknowledges them all; too few fails each with its own error."""
    await world.accounts.mint("ann", "note", 10)
    waited = _clearing(world, 1)
    gifts = await asyncio.gather(*(waited.reserve(f"b{i}", "ann", "bob", "note", 1) for i in range(3)))
    assert [g.state for g in gifts] == [GiftState.PENDING] * 3
    short = _clearing(world, 2)
    outcomes = await asyncio.gather(*(short.accept(g.gift_id, "bob") for g in gifts), return_exceptions=True)
    assert all(isinstance(o, NotReplicated) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3
    # On the primary all three were accepted; the retries say so once replicated.
    retried = await asyncio.gather(*(waited.accept(g.gift_id, "bob") for g in gifts))
    assert [r.gift.state for r in retried] == [GiftState.ACCEPTED] * 3
    assert (await world.check()).ok


def test_settings_from_environment() -> None:
    s = GatewaySettings.from_env({"NOTECARD_WAIT_REPLICAS": "1", "NOTECARD_WAIT_TIMEOUT_MS": "250"})
    assert s.durability == Durability(1, 250)
    assert GatewaySettings.from_env({}).durability == Durability(0, 1000)
    with pytest.raises(ConfigError, match="WAIT_TIMEOUT_MS"):
        GatewaySettings.from_env({"NOTECARD_WAIT_REPLICAS": "1", "NOTECARD_WAIT_TIMEOUT_MS": "9000"})
    with pytest.raises(ConfigError, match="WAIT_REPLICAS"):
        GatewaySettings(wait_replicas=-1)
    with pytest.raises(ValueError, match="wait_timeout_ms"):
        Durability(1, 0)
    assert GiftRules()  # the rules are untouched by durability


async def test_the_ledger_consumer_writes_only_what_enough_replicas_hold(world: World, postgres_url: str) -> None:
    """An entry read from a primary is written to PostgreSQL only once as many replicas as
    the nodes wait for hold it: one a failover loses (its client retries the gift under a
    new call id on the new primary) would otherwise be counted twice by the book of record."""
    await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    too_many = BooksConsumer(world.redis, postgres_url, consumer="m", durability=Durability(2, 50))
    try:
        await too_many.connect()
        await too_many.member.streams()
        task = asyncio.create_task(too_many.step())
        deadline = time.monotonic() + 10
        while too_many.progress.unreplicated < 2:  # one replica only: read again, never written
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert too_many.progress.entries == 0
    finally:
        await too_many.close()
    enough = BooksConsumer(world.redis, postgres_url, consumer="m", durability=Durability(1, 1000))
    try:
        progress = await enough.run(once=True)  # the same member: its unacknowledged entries first
    finally:
        await enough.close()
    assert progress.unreplicated == 0 and progress.entries > 0
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        assert (await reconcile_books(conn, world.redis)).ok
    report = await world.check()
    assert report.ok, report.violations
