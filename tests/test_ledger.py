"""The ledger outbox against a real Redis and a real 3-shard cluster: every change of value
leaves its double-entry record in the same script, replaying the records gives back every
account Redis holds, consumer groups deliver each record once to a group even when a
member crashes, and ``notecard feed`` resumes where it stopped."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from clearing import GiftRules
from clearing.gifts import Clearing
from clearing.ledger import GiftEvent, LedgerEntry, StreamConsumer, ledger_streams, read_all, reconcile
from clearing.odds import OddsEntry
from clearing.purchases import Purchases
from clearing.scenes import Scenes
from clearing.shops import Shops, order_gift_id
from clearing.slots import SLOTS, slot_of
from clearing.testing import World
from clearing.topology import Topology
from notecard.local_redis import LocalRedis
from tests.test_campaigns import Shop

UNIT = GiftRules().units_per_card
ALL_SLOTS = range(SLOTS)


def shard_of(user: str) -> int:
    # the test cluster splits the slots evenly over 3 primaries (notecard/local_cluster.py)
    return slot_of(user) * 3 // SLOTS


#: A user on ann's shard and one on another: a same-shard and a cross-shard gift on the cluster.
NEAR = next(f"near{i}" for i in range(1000) if shard_of(f"near{i}") == shard_of("ann"))
FAR = next(f"far{i}" for i in range(1000) if shard_of(f"far{i}") != shard_of("ann"))


@pytest.fixture
async def world(store: Topology) -> AsyncIterator[World]:
    w = await World.build(store, GiftRules(daily_send_limit=50, daily_receive_limit=50))
    yield w
    report = await w.check()
    assert report.ok, report.violations


async def traffic(w: World) -> dict[str, str]:
    """Mint, gifts accepted, declined and expired (same shard and across shards, and the
    saga forced on one Redis too), a festival's priced gift, a newcomer's gift paid by the
    promotion account, lucky bonuses, a mentor binding, a frame bought, cards bought
    through a payment provider and a refund. Returns gift id -> final state."""
    saga = Clearing(w.topology, w.rules, w.keys, w.clock, settings=w.settings, dead_nodes=w.presence.dead_nodes,
                    force_saga=True)
    scenes = Scenes(w.topology, w.rules, w.keys, w.clock, settings=w.settings)
    for user in ("ann", NEAR, FAR):
        await w.user(user, cards=20)
    await w.accounts.create_user("promo", verified=True)
    await w.accounts.mint("promo", "note", 50)
    await w.user("kid")  # a newcomer: the promotion account pays its gifts
    for a, b in (("ann", NEAR), ("ann", FAR), (NEAR, FAR), ("kid", FAR)):
        await w.befriend(a, b)
    await w.befriend("ann", "kid")  # old enough to gift, while kid's account is new
    # FAR is in a region with published odds: each gift it accepts draws a lucky card of one
    # card, paid by the promotion account (across shards: one more saga step)
    await scenes.publish_odds("lucky", [OddsEntry(bonus=1, weight=1)])
    await scenes.put_region("sea", {"lucky_odds": "lucky"})
    await w.accounts.set_flags(FAR, region="sea")

    outcome: dict[str, str] = {}
    plan = [("g1", w.clearing, "ann", NEAR, "accept"), ("g2", w.clearing, "ann", FAR, "accept"),
            ("g3", w.clearing, "ann", NEAR, "decline"), ("g4", w.clearing, NEAR, FAR, "decline"),
            ("g5", saga, "ann", NEAR, "accept"), ("g6", saga, FAR, "ann", "decline"),
            ("g7", w.clearing, "kid", FAR, "accept"), ("g8", saga, "kid", FAR, "decline")]
    for gid, clearing, sender, recipient, answer in plan:
        await clearing.reserve(gid, sender, recipient, "note", 2)
        if answer == "accept":
            await clearing.accept(gid, recipient)
            outcome[gid] = "accepted"
        else:
            await clearing.decline(gid, recipient)
            outcome[gid] = "declined"
    await scenes.put_festival("spring", "Spring", w.clock(), w.clock() + 86_400_000, frame="lantern")
    await w.clearing.reserve("g9", FAR, "ann", "note", 3)  # priced above what ann gets: a consumed share
    await w.clearing.accept("g9", "ann")
    outcome["g9"] = "accepted"
    await scenes.redeem_frame(NEAR, "spring")
    for gid, recipient in (("g10", NEAR), ("g11", FAR)):
        await w.clearing.reserve(gid, "ann", recipient, "note", 1)
        outcome[gid] = "expired"
    await scenes.bind_mentor("kid", "ann")
    # cards bought through a payment provider, and one payment refunded
    purchases = Purchases(w.topology, w.rules, w.keys, w.clock, settings=w.settings)
    await purchases.purchase("ewallet", "pay-1", NEAR, "note", 3)
    await purchases.purchase("ewallet", "pay-2", FAR, "note", 2)
    await purchases.refund("ewallet", "pay-1", NEAR)
    await w.tick(w.rules.confirm_window_ms)
    await w.clearing.sweep(ALL_SLOTS)
    return outcome


async def test_replaying_the_ledger_gives_every_account_redis_holds(world: World) -> None:
    outcome = await traffic(world)
    result = await reconcile(world.redis, world.keys)
    assert result.ok, result.drift
    records, problems = await read_all(world.redis, world.keys)
    assert problems == []
    entries = [r for r in records if isinstance(r, LedgerEntry)]
    assert result.entries == len(entries) > 0
    assert {e.entry_kind for e in entries} == {"mint", "hold", "release", "expire", "consume", "settle", "credit",
                                               "points", "mentor_pay", "mentor_credit", "lucky_pay", "lucky_credit",
                                               "purchase", "refund"}
    lucky = {e.gift_id for e in entries if e.entry_kind == "lucky_credit" and e.credit == f"avail:{FAR}"}
    assert {"g2", "g7"} <= lucky
    assert len({e.id for e in entries}) == len(entries)  # unique ids
    assert all(e.units > 0 for e in entries)

    # the platform's view: each gift sent once, then its one outcome
    events: defaultdict[str, list[str]] = defaultdict(list)
    for r in records:
        if isinstance(r, GiftEvent):
            events[r.gift_id].append(r.event)
    assert {gid: sorted(evs) for gid, evs in events.items()} == {
        gid: sorted(["sent", state]) for gid, state in outcome.items()}

    # the newcomer's gifts were held by the promotion account, not by the newcomer
    holds = {(e.gift_id, e.debit) for e in entries if e.entry_kind == "hold"}
    assert ("g7", "avail:promo") in holds and ("g8", "avail:promo") in holds
    # one stream per Redis server
    streams = await ledger_streams(world.redis, world.keys)
    assert len(streams) == len(world.topology.nodes())


async def test_a_change_made_without_its_entry_is_reported_as_drift(world: World) -> None:
    await traffic(world)
    await world.redis.hincrby(world.keys.balance(FAR), "note", 7)
    await world.redis.hincrby(world.keys.held("ann"), "note", 1)
    result = await reconcile(world.redis, world.keys)
    bal = (await world.clearing.balances(FAR)).available["note"]
    assert result.drift == [f"avail:{FAR} note: ledger {bal - 7}, redis {bal}", "held:ann note: ledger 0, redis 1"]
    await world.redis.hincrby(world.keys.balance(FAR), "note", -7)
    await world.redis.hincrby(world.keys.held("ann"), "note", -1)
    assert (await reconcile(world.redis, world.keys)).ok


async def drain(member: StreamConsumer) -> list[str]:
    """Read and acknowledge until nothing is left; the stream ids delivered."""
    out = []
    while True:
        batch = await member.read()
        if not batch.ids:
            return out
        out += [f"{s}/{i}" for s, ids in batch.ids.items() for i in ids]
        await member.ack(batch)


async def test_a_group_delivers_every_record_once_when_a_member_crashes(world: World) -> None:
    await traffic(world)
    records, _ = await read_all(world.redis, world.keys)
    everything = sorted({f"{r.stream}/{r.stream_id}" for r in records})  # one stream entry per script call

    crashed = StreamConsumer(world.redis, "books", "a", world.keys, count=5)
    taken = await crashed.read()  # delivered to a, never acknowledged: a crashed
    assert taken.records
    survivor = StreamConsumer(world.redis, "books", "b", world.keys, count=7, claim_idle_ms=0)
    delivered = await drain(survivor)
    assert sorted(delivered) == everything  # a's share included, nothing twice
    assert set(await survivor.lag()) == set(await ledger_streams(world.redis, world.keys))
    assert set((await survivor.lag()).values()) == {0}

    # a member that starts again under its name first gets what it had not acknowledged
    first = StreamConsumer(world.redis, "ops", "c", world.keys, count=4)
    unacked = await first.read()
    again = StreamConsumer(world.redis, "ops", "c", world.keys, count=4)
    replayed = await again.read()
    assert [(r.stream, r.stream_id) for r in replayed.records] == [(r.stream, r.stream_id) for r in unacked.records]
    assert sorted(await drain(again)) == everything  # the re-read ones once more, then the rest

    # new records reach every group after what it acknowledged
    await world.clearing.reserve("late", "ann", NEAR, "note", 1)
    late = await drain(survivor)
    # the hold (the sender's, or the promotion account's: ann is new) and the "sent" event
    kinds = Counter(type(r).__name__ for r in (await read_all(world.redis, world.keys))[0]
                    if f"{r.stream}/{r.stream_id}" in late)
    assert kinds == Counter({"LedgerEntry": 1, "GiftEvent": 1})


async def feed(redis_url: str, *extra: str) -> list[dict[str, object]]:
    env = {**os.environ, "NOTECARD_REDIS_URL": redis_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notecard", "feed", "--once", "--consumer", "pytest", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    return [orjson.loads(line) for line in out.splitlines()]


async def test_notecard_feed_prints_gift_events_and_resumes_after_a_restart(
        redis_server: LocalRedis, redis: aioredis.Redis) -> None:
    w = await World.build(redis)
    for user in ("ann", "bob"):
        await w.user(user, cards=5)
    await w.befriend("ann", "bob")
    await w.clearing.reserve("g1", "ann", "bob", "note", 2)
    await w.clearing.accept("g1", "bob")
    await w.clearing.reserve("g2", "ann", "bob", "note", 1)

    lines = await feed(redis_server.url)
    assert [(line["event"], line["gift_id"]) for line in lines] == [("sent", "g1"), ("accepted", "g1"),
                                                                     ("sent", "g2")]
    assert lines[1] | {"id": None} == {
        "type": "gift", "event": "accepted", "gift_id": "g1", "sender": "ann", "recipient": "bob", "kind": "note",
        "qty": 2, "cost": 2 * UNIT, "amount": 2 * UNIT, "payer": "ann", "at_ms": w.clock(), "id": None,
        "stream": lines[1]["stream"], "stream_id": lines[1]["stream_id"]}

    await w.clearing.decline("g2", "bob")
    again = await feed(redis_server.url)  # the same group: only what came since
    assert [(line["event"], line["gift_id"]) for line in again] == [("declined", "g2")]
    assert await feed(redis_server.url) == []

    # another group reads everything, ledger entries too, on its own
    books = await feed(redis_server.url, "--group", "books", "--ledger")
    # entries: two mints; g1's hold, settle, credit and both users' points; g2's hold and release
    assert Counter(str(line["type"]) for line in books) == Counter({"gift": 4, "entry": 9})
    assert (await reconcile(w.redis, w.keys)).ok
    report = await w.check()
    assert report.ok, report.violations


async def test_notecard_feed_without_redis_says_so_without_a_traceback() -> None:
    env = {**os.environ, "NOTECARD_REDIS_URL": "redis://127.0.0.1:1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notecard", "feed", "--once",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 1 and out == b""
    assert b"notecard feed: Redis failed" in err and b"Traceback" not in err


async def test_entries_trimmed_before_a_group_acknowledged_them_are_reported(redis: aioredis.Redis) -> None:
    w = await World.build(redis, GiftRules(daily_send_limit=1000, daily_receive_limit=1000, ledger_maxlen=1))
    for user in ("ann", "bob"):
        await w.user(user, cards=500)
    await w.befriend("ann", "bob")
    slow = StreamConsumer(w.redis, "books", "slow", w.keys, count=3)
    delivered = await slow.read()  # the two mints: delivered, not yet acknowledged
    assert [r.entry_kind for r in delivered.records if isinstance(r, LedgerEntry)] == ["mint", "mint"]
    for i in range(150):  # MAXLEN ~ 1 trims whole stream nodes (100 entries each) as they fill
        await w.clearing.reserve(f"g{i}", "ann", "bob", "note", 1)
    taker = StreamConsumer(w.redis, "books", "taker", w.keys, claim_idle_ms=0)
    claimed = await taker.read()
    assert claimed.trimmed == len(delivered.ids[next(iter(delivered.ids))])  # gone, and said so
    result = await reconcile(w.redis, w.keys)
    assert not result.ok
    (stream,) = await ledger_streams(w.redis, w.keys)
    assert result.drift[0].startswith(f"{stream}: ") and "were trimmed or deleted" in result.drift[0]


async def test_with_the_ledger_off_value_moves_the_same_and_no_entry_is_written(store: Topology) -> None:
    """NOTECARD_LEDGER=off, the bench's baseline (loadtest/ledger_bench.py): the scripts
    change balances, holds and totals exactly as with the ledger on, and append nothing."""
    rules = GiftRules(daily_send_limit=50, daily_receive_limit=50, ledger=False)
    w = await World.build(store, rules)
    for user in ("ann", FAR):
        await w.user(user, cards=20)
    await w.befriend("ann", FAR)
    await w.clearing.reserve("g1", "ann", FAR, "note", 2)
    await w.clearing.accept("g1", FAR)
    await w.clearing.reserve("g2", FAR, "ann", "note", 1)
    await w.clearing.decline("g2", "ann")
    assert await ledger_streams(w.redis, w.keys) == []
    assert (await w.clearing.balances(FAR)).available["note"] == (20 + 2) * UNIT
    report = await w.check()
    assert report.ok, report.violations


async def test_notecard_feed_skips_order_notes_and_keeps_regions_out_of_its_lines(
        redis_server: LocalRedis, redis: aioredis.Redis) -> None:
    shop = Shop(await World.build(redis))
    await shop.brand(budget=5)
    await shop.business.update("acme", operator="ops", shop=True)
    shops = Shops(shop.campaigns)
    await shops.set_rule("acme", kind="acme_star", min_spend=100, qty=1, operator="ops")
    [buyer] = await shop.fans(1)
    await shop.w.accounts.set_flags(buyer, region="north")
    assert (await shops.paid("acme", "o1", buyer, 150)).result == "gifted"
    await shop.w.clearing.accept(order_gift_id("acme", "o1"), buyer)
    records = (await read_all(shop.w.redis, shop.w.keys))[0]
    assert Counter(type(r).__name__ for r in records)["OrderNote"] == 1
    assert [r.region for r in records if isinstance(r, GiftEvent)] == [None, "north"]  # sent, accepted

    lines = await feed(redis_server.url, "--ledger")
    assert {str(line["type"]) for line in lines} == {"gift", "entry"}
    assert len([line for line in lines if line["type"] == "entry"]) == sum(isinstance(r, LedgerEntry) for r in records)
    assert all("region" not in line for line in lines)
    report = await shop.w.check()
    assert report.ok, report.violations
