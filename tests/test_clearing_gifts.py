"""Gifts against a real Redis: every refusal at its boundary, idempotent retries, the
three ways a gift resolves, races, the quota day, and Redis failures.

Every test runs in a ``World`` whose teardown asserts ``check_invariant(...).ok``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from clearing import (
    Clearing,
    ClearingUnavailable,
    GiftRecord,
    GiftRules,
    GiftState,
    KeySchema,
    Refusal,
    Refused,
    check_invariant,
)
from clearing.guard import guarded_pipeline
from clearing.rules import DAY_MS
from clearing.slots import tag_of
from clearing.testing import ManualClock, World
from clearing.topology import Topology
from notecard.local_redis import LocalRedis, free_port

UNIT = GiftRules().units_per_card
MakeWorld = Callable[..., Awaitable[World]]


@pytest.fixture
async def make_world(store: Topology) -> AsyncIterator[MakeWorld]:
    """Worlds on one Redis, then on a 3-shard cluster (``store``)."""
    built: list[World] = []

    async def make(rules: GiftRules | None = None, **kwargs: object) -> World:
        world = await World.build(store, rules, **kwargs)  # type: ignore[arg-type]
        built.append(world)
        return world

    yield make
    for world in built:
        report = await world.check()
        assert report.ok, report.violations


@pytest.fixture
async def world(make_world: MakeWorld) -> World:
    return await make_world()


_ids = itertools.count(1)


def gift_id() -> str:
    return f"g{next(_ids)}"


async def refusal(call: Awaitable[object]) -> Refused:
    with pytest.raises(Refused) as info:
        await call
    return info.value


async def friends(w: World, sender: str = "ann", recipient: str = "bob", cards: int = 10) -> None:
    """Two users who may gift each other; the sender holds ``cards``."""
    await w.user(sender, cards=cards)
    await w.user(recipient)
    await w.befriend(sender, recipient)


async def send(w: World, sender: str = "ann", recipient: str = "bob", qty: int = 1) -> GiftRecord:
    return await w.clearing.reserve(gift_id(), sender, recipient, "note", qty)


# ------------------------------------------------------------------------- reserve


async def test_reserve_holds_the_cost_and_offers_the_gift(world: World) -> None:
    await friends(world, cards=10)
    gift = await world.clearing.reserve("g-first", "ann", "bob", "note", 3)

    now = world.clock()
    assert gift == GiftRecord(
        gift_id="g-first", sender="ann", recipient="bob", kind="note", qty=3, cost=3 * UNIT,
        amount=3 * UNIT, state=GiftState.PENDING, created_at_ms=now,
        expires_at_ms=now + world.rules.confirm_window_ms,
    )  # fmt: skip
    ann = await world.clearing.balances("ann")
    assert (ann.available["note"], ann.held["note"]) == (7 * UNIT, 3 * UNIT)
    assert await world.clearing.get_gift("g-first") == gift
    assert await world.clearing.pending_for("bob") == [gift]
    assert await world.clearing.pending_for("ann") == []
    day = world.rules.quota_day(now)
    counters = (
        world.keys.send_quota(day, "ann"),
        world.keys.receive_quota(day, "bob"),
        world.keys.pair_receive_quota(day, "bob", "ann"),
    )
    for counter in counters:  # counted, and gone by themselves once the day is long over
        assert await world.redis.get(counter) == b"1"
        assert 0 < await world.redis.pttl(counter) <= 2 * DAY_MS


async def test_refusals_come_in_the_documented_order(world: World) -> None:
    """Start with a request that breaks every rule and fix one rule at a time."""
    a, c = world.accounts, world.clearing

    async def attempt() -> Refusal:
        return (await refusal(c.reserve(gift_id(), "sam", "rex", "note", 2))).code

    assert await attempt() is Refusal.UNKNOWN_USER
    await a.create_user("sam", banned=True)
    assert await attempt() is Refusal.UNKNOWN_USER  # the recipient does not exist either
    await a.create_user("rex", banned=True)
    await a.block("rex", "sam")
    assert await attempt() is Refusal.SENDER_BANNED
    await a.set_flags("sam", banned=False)
    assert await attempt() is Refusal.RECIPIENT_BANNED
    await a.set_flags("rex", banned=False)
    assert await attempt() is Refusal.NOT_VERIFIED
    await a.set_flags("sam", verified=True)
    assert await attempt() is Refusal.BLOCKED
    await a.unblock("rex", "sam")
    assert await attempt() is Refusal.NOT_MUTUAL_3D
    await world.befriend("sam", "rex")
    assert await attempt() is Refusal.INSUFFICIENT_BALANCE
    await a.mint("sam", "note", 2)
    assert await attempt() is Refusal.RECIPIENT_OFFLINE
    await world.presence.connect("rex", world.node)
    assert (await c.reserve(gift_id(), "sam", "rex", "note", 2)).state is GiftState.PENDING


async def test_a_refusal_is_final_for_its_gift_id(world: World) -> None:
    """A duplicate of a refused send (resent after a reconnect, or late from a dying
    connection) must not create the gift the client was told was refused."""
    await world.user("ann", cards=5)
    await world.user("bob", online=False)
    await world.befriend("ann", "bob")
    c = world.clearing
    assert (await refusal(c.reserve("g-once", "ann", "bob", "note", 1))).code is Refusal.RECIPIENT_OFFLINE
    await world.presence.connect("bob", world.node)
    assert (await refusal(c.reserve("g-once", "ann", "bob", "note", 1))).code is Refusal.RECIPIENT_OFFLINE
    assert (await refusal(c.reserve("g-once", "ann", "bob", "note", 2))).code is Refusal.IDEMPOTENCY_CONFLICT
    assert await c.get_gift("g-once") is None
    assert (await c.reserve("g-new", "ann", "bob", "note", 1)).state is GiftState.PENDING


async def test_a_refusal_is_remembered_for_the_configured_time_then_the_id_is_free(make_world: MakeWorld) -> None:
    """The memory only has to outlast the copies of a request (the SDK's retry horizon); an
    hour per refusal let one account fill Redis."""
    world = await make_world(GiftRules(refusal_memory_ms=400))
    await world.user("ann", cards=5)
    await world.user("bob", online=False)
    await world.befriend("ann", "bob")
    c = world.clearing
    assert (await refusal(c.reserve("g-short", "ann", "bob", "note", 2))).code is Refusal.RECIPIENT_OFFLINE
    assert 0 < await world.redis.pttl(world.keys.refused("ann", "g-short")) <= 400
    remembered = await c.refused_send("g-short", "ann")
    assert remembered is not None
    assert (remembered.code, remembered.sender, remembered.recipient, remembered.kind, remembered.qty) == (
        "RECIPIENT_OFFLINE", "ann", "bob", "note", 2)
    await world.presence.connect("bob", world.node)
    deadline = asyncio.get_running_loop().time() + 10
    while await c.refused_send("g-short", "ann") is not None:
        assert asyncio.get_running_loop().time() < deadline, "the refusal outlived its memory"
        await asyncio.sleep(0.05)
    assert (await c.reserve("g-short", "ann", "bob", "note", 2)).state is GiftState.PENDING


async def test_refusals_that_follow_from_the_request_write_nothing(world: World) -> None:
    """SELF_GIFT, UNKNOWN_KIND and BAD_QUANTITY need no memory: every copy of the request is
    refused the same way again. Each stored one cost ~330 bytes that any account could add."""
    await friends(world)
    c = world.clearing
    keys_before = await world.redis.dbsize()
    for gid, recipient, kind, qty in (("g-self", "ann", "note", 1), ("g-kind", "bob", "gold", 1),
                                      ("g-qty", "bob", "note", 0)):
        first = await refusal(c.reserve(gid, "ann", recipient, kind, qty))
        assert (await refusal(c.reserve(gid, "ann", recipient, kind, qty))).code is first.code
    assert await world.redis.dbsize() == keys_before
    assert [k async for k in world.redis.scan_iter(match=world.keys.pattern("refused:*"))] == []
    # and the same ids stay free for a proper gift
    assert (await c.reserve("g-qty", "ann", "bob", "note", 1)).state is GiftState.PENDING


async def test_payload_refusals_need_no_user(world: World) -> None:
    await friends(world)
    c = world.clearing
    assert (await refusal(c.reserve(gift_id(), "ann", "ann", "note", 1))).code is Refusal.SELF_GIFT
    assert (await refusal(c.reserve(gift_id(), "ann", "bob", "gold", 1))).code is Refusal.UNKNOWN_KIND
    assert (await refusal(c.reserve(gift_id(), "ann", "bob", "note", 0))).code is Refusal.BAD_QUANTITY
    too_many = world.rules.max_qty_per_gift + 1
    assert (await refusal(c.reserve(gift_id(), "ann", "bob", "note", too_many))).code is Refusal.BAD_QUANTITY
    assert (await refusal(c.reserve("", "ann", "bob", "note", 1))).code is Refusal.BAD_REQUEST
    assert (await refusal(c.reserve("a b", "ann", "bob", "note", 1))).code is Refusal.BAD_REQUEST


async def test_largest_quantity_is_allowed(world: World) -> None:
    most = world.rules.max_qty_per_gift
    await friends(world, cards=most)
    assert (await send(world, qty=most)).cost == most * UNIT


@pytest.mark.parametrize("who", ["sender", "recipient"])
async def test_unknown_user(world: World, who: str) -> None:
    await world.user("ann", cards=1)
    pair = ("ann", "ghost") if who == "recipient" else ("ghost", "ann")
    assert (await refusal(send(world, *pair))).code is Refusal.UNKNOWN_USER


async def test_banned_sender_and_recipient(world: World) -> None:
    await friends(world)
    await world.accounts.set_flags("ann", banned=True)
    assert (await refusal(send(world))).code is Refusal.SENDER_BANNED
    await world.accounts.set_flags("ann", banned=False)
    await world.accounts.set_flags("bob", banned=True)
    assert (await refusal(send(world))).code is Refusal.RECIPIENT_BANNED
    await world.accounts.set_flags("bob", banned=False)
    await send(world)


async def test_unverified_sender_is_refused_but_may_receive(world: World) -> None:
    await friends(world)
    await world.accounts.set_flags("ann", verified=False)
    assert (await refusal(send(world))).code is Refusal.NOT_VERIFIED
    await world.accounts.set_flags("bob", verified=False)
    await world.accounts.set_flags("ann", verified=True)
    await send(world)


@pytest.mark.parametrize(("blocker", "blocked"), [("ann", "bob"), ("bob", "ann")])
async def test_a_block_either_way_forbids_the_gift(world: World, blocker: str, blocked: str) -> None:
    await friends(world)
    await world.accounts.block(blocker, blocked)
    assert (await refusal(send(world))).code is Refusal.BLOCKED
    ann = await world.clearing.balances("ann")
    assert ann.available["note"] == 10 * UNIT  # a refusal writes nothing


async def test_a_one_way_follow_is_refused(world: World) -> None:
    await world.user("ann", cards=1)
    await world.user("bob")
    old = world.clock() - 30 * DAY_MS
    await world.accounts.follow("ann", "bob", since_ms=old)
    assert (await refusal(send(world))).code is Refusal.NOT_MUTUAL_3D
    await world.accounts.follow("bob", "ann", since_ms=old)
    await send(world)
    await world.accounts.unfollow("bob", "ann")
    assert (await refusal(send(world))).code is Refusal.NOT_MUTUAL_3D


@pytest.mark.parametrize("young", ["ann", "bob"])
async def test_follow_age_boundary_is_exactly_three_days(world: World, young: str) -> None:
    await world.user("ann", cards=2)
    await world.user("bob")
    three_days_ago = world.clock() - 3 * DAY_MS
    other = "bob" if young == "ann" else "ann"
    await world.accounts.follow(other, young, since_ms=three_days_ago - DAY_MS)
    await world.accounts.follow(young, other, since_ms=three_days_ago + 1)  # 3 days minus 1 ms
    assert (await refusal(send(world))).code is Refusal.NOT_MUTUAL_3D
    await world.accounts.follow(young, other, since_ms=three_days_ago)  # exactly 3 days
    await send(world)


async def test_daily_send_limit_fifth_ok_sixth_refused(world: World) -> None:
    await world.user("ann", cards=20)
    for name in ("bob", "cat", "dan"):
        await world.user(name)
        await world.befriend("ann", name)
    for recipient in ("bob", "bob", "bob", "cat", "cat"):
        await send(world, recipient=recipient)
    assert (await refusal(send(world, recipient="dan"))).code is Refusal.LIMIT_DAILY_SEND


async def test_vip_sends_seven_and_not_eight(world: World) -> None:
    await world.user("ann", cards=20, vip=True)
    for name in ("bob", "cat", "dan"):
        await world.user(name)
        await world.befriend("ann", name)
    for recipient in ("bob", "bob", "bob", "cat", "cat", "cat", "dan"):
        await send(world, recipient=recipient)
    assert (await refusal(send(world, recipient="dan"))).code is Refusal.LIMIT_DAILY_SEND


async def test_send_limit_is_checked_before_the_balance(world: World) -> None:
    await world.user("ann", cards=5)
    for name in ("bob", "cat"):
        await world.user(name)
        await world.befriend("ann", name)
    for recipient in ("bob", "bob", "bob", "cat", "cat"):
        await send(world, recipient=recipient)
    assert (await world.clearing.balances("ann")).available["note"] == 0
    assert (await refusal(send(world, recipient="cat"))).code is Refusal.LIMIT_DAILY_SEND


async def test_receive_limit_counts_every_sender(world: World) -> None:
    await world.user("bob")
    for name in ("s1", "s2", "s3", "s4"):
        await world.user(name, cards=1)
        await world.befriend(name, "bob")
    for name in ("s1", "s2", "s3"):
        await send(world, sender=name, recipient="bob")
    assert (await refusal(send(world, sender="s4", recipient="bob"))).code is Refusal.LIMIT_DAILY_RECEIVE


async def test_pair_scope_limits_each_sender_separately(make_world: MakeWorld) -> None:
    world = await make_world(GiftRules(receive_limit_scope="pair"))
    await world.user("bob")
    for name in ("s1", "s2"):
        await world.user(name, cards=5)
        await world.befriend(name, "bob")
    for _ in range(3):
        await send(world, sender="s1", recipient="bob")
    assert (await refusal(send(world, sender="s1", recipient="bob"))).code is Refusal.LIMIT_DAILY_RECEIVE
    await send(world, sender="s2", recipient="bob")  # a fourth gift to bob, from someone else


async def test_insufficient_balance_exact_boundary(world: World) -> None:
    await friends(world, cards=3)
    assert (await refusal(send(world, qty=4))).code is Refusal.INSUFFICIENT_BALANCE
    await send(world, qty=3)
    assert (await refusal(send(world, qty=1))).code is Refusal.INSUFFICIENT_BALANCE


async def test_offline_recipient(world: World) -> None:
    await world.user("ann", cards=5)
    await world.user("bob", online=False)
    await world.befriend("ann", "bob")
    assert (await refusal(send(world))).code is Refusal.RECIPIENT_OFFLINE
    await world.presence.connect("bob", world.node)
    await send(world)
    await world.presence.disconnect("bob", world.node)
    assert (await refusal(send(world))).code is Refusal.RECIPIENT_OFFLINE


async def test_a_node_with_a_stale_heartbeat_does_not_count(world: World) -> None:
    await friends(world)
    ttl = world.rules.node_ttl_ms
    world.clock.advance(ttl - 1)  # the heartbeat is ttl - 1 ms old: still alive
    await send(world)
    world.clock.advance(1)  # exactly ttl old: dead
    assert (await refusal(send(world))).code is Refusal.RECIPIENT_OFFLINE
    await world.presence.heartbeat(world.node)
    await send(world)


# ------------------------------------------------------------------------- idempotency


async def test_a_retry_returns_the_original_even_when_the_quota_is_used_up(world: World) -> None:
    await world.user("ann", cards=10)
    for name in ("bob", "cat", "dan"):
        await world.user(name)
        await world.befriend("ann", name)
    first = await world.clearing.reserve("g-retry", "ann", "bob", "note", 2)
    for recipient in ("bob", "bob", "cat", "cat"):
        await send(world, recipient=recipient)
    assert (await refusal(send(world, recipient="dan"))).code is Refusal.LIMIT_DAILY_SEND
    world.clock.advance(1000)
    assert await world.clearing.reserve("g-retry", "ann", "bob", "note", 2) == first
    assert (await world.clearing.balances("ann")).available["note"] == 4 * UNIT  # charged once


async def test_a_retry_after_resolution_returns_the_record_as_it_is_now(world: World) -> None:
    await friends(world)
    await world.clearing.reserve("g-r", "ann", "bob", "note", 1)
    accepted = (await world.clearing.accept("g-r", "bob")).gift
    assert await world.clearing.reserve("g-r", "ann", "bob", "note", 1) == accepted


@pytest.mark.parametrize(
    ("recipient", "kind", "qty"),
    [("bob", "note", 2), ("cat", "note", 1), ("bob", "gold", 1), ("ann", "note", 1)],
    ids=["qty", "recipient", "unknown-kind", "self"],
)
async def test_the_same_id_with_another_payload_conflicts(world: World, recipient: str, kind: str, qty: int) -> None:
    await friends(world)
    await world.user("cat")
    await world.clearing.reserve("g-c", "ann", "bob", "note", 1)
    refused = await refusal(world.clearing.reserve("g-c", "ann", recipient, kind, qty))
    assert refused.code is Refusal.IDEMPOTENCY_CONFLICT
    assert (await world.clearing.balances("ann")).available["note"] == 9 * UNIT


# ------------------------------------------------------------------------- accept / decline / expire


async def test_accept_moves_the_held_cost_to_the_recipient(world: World) -> None:
    await friends(world, cards=5)
    gift = await send(world, qty=2)
    world.clock.advance(10)
    done = await world.clearing.accept(gift.gift_id, "bob")
    assert done.changed
    assert done.gift.state is GiftState.ACCEPTED
    assert done.gift.resolved_at_ms == world.clock()
    ann, bob = await world.clearing.balances("ann"), await world.clearing.balances("bob")
    assert (ann.available["note"], ann.held["note"]) == (3 * UNIT, 0)
    assert bob.available["note"] == 2 * UNIT
    assert await world.clearing.pending_for("bob") == []
    for half in (world.keys.offer("bob", gift.gift_id), world.keys.gift("ann", gift.gift_id)):
        assert 0 < await world.redis.pttl(half) <= world.rules.gift_retention_ms
    assert await world.redis.zscore(world.keys.expiry(tag_of("bob")), f"bob|{gift.gift_id}") is None

    again = await world.clearing.accept(gift.gift_id, "bob")
    assert (again.changed, again.gift) == (False, done.gift)
    refused = await refusal(world.clearing.decline(gift.gift_id, "bob"))
    assert (refused.code, refused.gift) == (Refusal.ALREADY_RESOLVED, done.gift)


async def test_decline_refunds_and_gives_both_quota_slots_back(world: World) -> None:
    await world.user("ann", cards=10)
    for name in ("bob", "cat"):
        await world.user(name)
        await world.befriend("ann", name)
    gifts = [await send(world, recipient=r) for r in ("bob", "bob", "bob", "cat", "cat")]
    assert (await refusal(send(world, recipient="cat"))).code is Refusal.LIMIT_DAILY_SEND

    done = await world.clearing.decline(gifts[0].gift_id, "bob")
    assert done.changed
    assert done.gift.state is GiftState.DECLINED
    assert (await world.clearing.balances("ann")).available["note"] == 6 * UNIT
    assert (await world.clearing.balances("bob")).available["note"] == 0
    await send(world, recipient="bob")  # the sender's slot and bob's receive slot are back

    again = await world.clearing.decline(gifts[0].gift_id, "bob")
    assert not again.changed
    refused = await refusal(world.clearing.accept(gifts[0].gift_id, "bob"))
    assert refused.code is Refusal.ALREADY_RESOLVED


async def test_only_the_recipient_may_answer(world: World) -> None:
    await friends(world)
    gift = await send(world)
    assert (await refusal(world.clearing.accept(gift.gift_id, "ann"))).code is Refusal.NOT_RECIPIENT
    # anyone else finds no gift of theirs by that id: nothing is told about others' gifts
    assert (await refusal(world.clearing.decline(gift.gift_id, "eve"))).code is Refusal.GIFT_NOT_FOUND
    assert (await refusal(world.clearing.accept("g-none", "bob"))).code is Refusal.GIFT_NOT_FOUND


async def test_accept_inside_and_at_the_end_of_the_window(world: World) -> None:
    await friends(world)
    window = world.rules.confirm_window_ms
    early, late = await send(world), await send(world)
    world.clock.advance(window - 1)
    assert (await world.clearing.accept(early.gift_id, "bob")).changed
    world.clock.advance(1)  # now == expires_at_ms: too late
    refused = await refusal(world.clearing.accept(late.gift_id, "bob"))
    assert refused.code is Refusal.GIFT_EXPIRED
    assert refused.gift is not None
    assert refused.gift.state is GiftState.EXPIRED
    assert (await world.clearing.balances("ann")).available["note"] == 9 * UNIT  # late one refunded
    assert (await world.clearing.balances("bob")).available["note"] == 1 * UNIT

    for answer in (world.clearing.accept, world.clearing.decline):  # retries answer the same
        again = await refusal(answer(late.gift_id, "bob"))
        assert (again.code, again.gift) == (Refusal.GIFT_EXPIRED, refused.gift)
    assert await world.clearing.expire_due() == []  # nothing left to expire


async def test_expire_due_refunds_and_gives_slots_back(world: World) -> None:
    await world.user("ann", cards=10)
    for name in ("bob", "cat"):
        await world.user(name)
        await world.befriend("ann", name)
    first = [await send(world, recipient=r) for r in ("bob", "bob", "bob")]
    world.clock.advance(1000)
    later = [await send(world, recipient="cat") for _ in range(2)]
    assert (await refusal(send(world, recipient="cat"))).code is Refusal.LIMIT_DAILY_SEND

    world.clock.advance(world.rules.confirm_window_ms - 1000)  # first batch due, later not
    expired = await world.clearing.expire_due()
    assert sorted(g.gift_id for g in expired) == sorted(g.gift_id for g in first)
    assert all(g.state is GiftState.EXPIRED for g in expired)
    assert await world.clearing.expire_due() == []
    assert (await world.clearing.balances("ann")).available["note"] == 8 * UNIT
    assert [g.gift_id for g in await world.clearing.pending_for("cat")] == [g.gift_id for g in later]

    await world.tick(0)
    await send(world, recipient="bob")  # slots are back for the sender and for bob


async def test_expire_due_respects_its_limit(world: World) -> None:
    await world.user("ann", cards=10)
    for name in ("bob", "cat"):
        await world.user(name)
        await world.befriend("ann", name)
    for r in ("bob", "bob", "cat"):
        await send(world, recipient=r)
    world.clock.advance(world.rules.confirm_window_ms)
    assert len(await world.clearing.expire_due(limit=2)) == 2
    assert len(await world.clearing.expire_due(limit=2)) == 1
    with pytest.raises(ValueError, match="limit"):
        await world.clearing.expire_due(limit=0)


# ------------------------------------------------------------------------- races


async def test_concurrent_reserves_race_for_the_last_card(make_world: MakeWorld) -> None:
    world = await make_world(GiftRules(daily_send_limit=100, daily_receive_limit=100))
    await friends(world, cards=1)
    results = await asyncio.gather(
        *(world.clearing.reserve(f"race-{i}", "ann", "bob", "note", 1) for i in range(25)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, GiftRecord)]
    losers = [r for r in results if isinstance(r, Refused)]
    assert len(winners) == 1
    assert len(losers) == 24
    assert {r.code for r in losers} == {Refusal.INSUFFICIENT_BALANCE}
    assert (await world.clearing.balances("ann")).available["note"] == 0


async def test_concurrent_sweepers_never_refund_twice(make_world: MakeWorld) -> None:
    world = await make_world(GiftRules(daily_send_limit=100, daily_receive_limit=100))
    await friends(world, cards=12)
    gifts = [await send(world) for _ in range(12)]
    world.clock.advance(world.rules.confirm_window_ms)
    expired: list[str] = []
    sweepers = [Clearing(world.topology, world.rules, clock=world.clock) for _ in range(4)]
    while True:  # rounds of 8 concurrent sweeps, all reading the same queue heads
        batches = await asyncio.gather(*(s.expire_due(limit=5) for s in sweepers for _ in range(2)))
        if not any(batches):
            break
        expired += [g.gift_id for batch in batches for g in batch]
    assert sorted(expired) == sorted(g.gift_id for g in gifts)  # each exactly once
    assert (await world.clearing.balances("ann")).available["note"] == 12 * UNIT


# ------------------------------------------------------------------------- the quota day


async def test_the_quota_day_turns_at_midnight_in_shanghai(make_world: MakeWorld) -> None:
    last_ms_of_march_1 = 1_709_308_799_999  # 2024-03-01 23:59:59.999 +08:00
    world = await make_world(clock=ManualClock(last_ms_of_march_1))
    await world.user("ann", cards=10)
    for name in ("bob", "cat", "dan"):
        await world.user(name)
        await world.befriend("ann", name)
    gifts = [await send(world, recipient=r) for r in ("bob", "bob", "bob", "cat", "cat")]
    assert (await refusal(send(world, recipient="dan"))).code is Refusal.LIMIT_DAILY_SEND

    world.clock.advance(1)  # 2024-03-02 00:00:00.000 in Shanghai, still 16:00 UTC on March 1
    await send(world, recipient="dan")
    await send(world, recipient="bob")  # bob's receive count restarted too

    # Yesterday's gift gives its slot back to yesterday, not to today.
    await world.clearing.decline(gifts[0].gift_id, "bob")
    assert await world.redis.get(world.keys.send_quota("20240301", "ann")) == b"4"
    assert await world.redis.get(world.keys.send_quota("20240302", "ann")) == b"2"


# ------------------------------------------------------------------------- Redis itself


async def test_lost_function_library_is_reloaded(world: World) -> None:
    await friends(world)
    await send(world)
    await world.redis.function_flush()
    gift = await send(world)
    await world.redis.function_flush()
    assert (await world.clearing.accept(gift.gift_id, "bob")).changed


async def test_an_unreachable_redis_is_unavailable() -> None:
    client = aioredis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0), socket_connect_timeout=0.5)
    clearing = Clearing(client, GiftRules())
    try:
        with pytest.raises(ClearingUnavailable):
            await clearing.reserve("g-down", "ann", "bob", "note", 1)
        with pytest.raises(ClearingUnavailable):
            await clearing.balances("ann")
    finally:
        await client.aclose()


async def test_a_pipeline_that_fails_to_open_is_unavailable() -> None:
    """A cluster client's pipeline reads the cluster's map when it opens; a node that refuses
    the connection there (the cluster drill's link cut: the node's Redis user disabled)
    answered INTERNAL. The opening is a Redis call like any other: unavailable, retried by
    the client. A defect (a wrong key type) still passes unchanged. The client is a stand-in:
    this is the mapping of errors, not Redis's behaviour."""

    class Opening:
        def __init__(self, error: Exception) -> None:
            self.error = error

        async def __aenter__(self) -> None:
            raise self.error

        async def __aexit__(self, *exc: object) -> None:
            return None

    class Client:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def pipeline(self, transaction: bool) -> Opening:
            return Opening(self.error)

    refused = Client(rx.AuthenticationError("invalid username-password pair or user is disabled."))
    with pytest.raises(ClearingUnavailable, match="user is disabled"):
        async with guarded_pipeline(refused, transaction=True):  # type: ignore[arg-type]
            pass
    with pytest.raises(rx.ResponseError, match="WRONGTYPE"):
        async with guarded_pipeline(Client(rx.ResponseError("WRONGTYPE")), transaction=True):  # type: ignore[arg-type]
            pass


async def test_a_timeout_is_unavailable_and_a_retry_learns_the_outcome(redis: aioredis.Redis,
                                                                       redis_server: LocalRedis) -> None:
    """One Redis paused (a cluster's node failing over is the cluster drill's business)."""
    world = await World.build(redis)
    await friends(world)
    impatient = aioredis.Redis.from_url(redis_server.url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    try:
        await world.redis.client_pause(10_000, all=False)  # writes (and scripts) wait
        try:
            with pytest.raises(ClearingUnavailable):
                await Clearing(impatient, world.rules, clock=world.clock).reserve("g-t", "ann", "bob", "note", 1)
        finally:
            await world.redis.client_unpause()
    finally:
        await impatient.aclose()
    gift = await world.clearing.reserve("g-t", "ann", "bob", "note", 1)
    assert gift.state is GiftState.PENDING
    assert (await world.clearing.balances("ann")).available["note"] == 9 * UNIT
    assert (await world.check()).ok


async def test_a_custom_prefix_keeps_every_key_under_it(make_world: MakeWorld) -> None:
    keys = KeySchema("test")
    world = await make_world(keys=keys)
    await friends(world)
    gift = await send(world)
    await world.clearing.decline(gift.gift_id, "bob")
    all_keys = [k.decode() async for k in world.redis.scan_iter()]
    assert all_keys
    assert all(k.startswith("test:{") for k in all_keys), all_keys
    assert (await check_invariant(world.redis, world.rules, keys)).ok
    assert (await check_invariant(world.redis, world.rules)).per_kind["note"]["minted"] == 0
