"""Accounts against a real Redis, and the invariant check itself (it must be able to fail).

Every test runs in a ``World`` whose teardown asserts ``check_invariant(...).ok``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from clearing import Balances, GiftRules, Refusal, Refused, UserRecord, check_invariant
from clearing.accounts import MAX_CLOCK_SKEW_MS
from clearing.lua import MAX_SAFE_INT
from clearing.rules import DAY_MS
from clearing.slots import tag_of
from clearing.testing import World
from clearing.topology import Topology

UNIT = GiftRules().units_per_card


@pytest.fixture
async def world(store: Topology) -> AsyncIterator[World]:
    """On one Redis, then on a 3-shard cluster."""
    world = await World.build(store)
    yield world
    report = await world.check()
    assert report.ok, report.violations


async def refusal(call: Awaitable[object]) -> Refused:
    with pytest.raises(Refused) as info:
        await call
    return info.value


async def test_create_and_read_a_user(world: World) -> None:
    made = await world.accounts.create_user("ann", verified=True, vip=True, created_at_ms=5, app="news")
    expected = UserRecord(
        user_id="ann", verified=True, vip=True, banned=False, created_at_ms=5, app="news",
        balances=Balances(available={"note": 0}, held={"note": 0}),
    )  # fmt: skip
    assert made == expected
    assert await world.accounts.get_user("ann") == expected
    assert await world.accounts.get_user("nobody") is None
    plain = await world.accounts.create_user("bob")
    assert (plain.verified, plain.vip, plain.banned, plain.app) == (False, False, False, "main")
    assert plain.created_at_ms == world.clock()


async def test_create_user_refusals(world: World) -> None:
    await world.accounts.create_user("ann")
    assert (await refusal(world.accounts.create_user("ann", vip=True))).code is Refusal.USER_EXISTS
    for bad in ("", "a b", "x" * 65, "a*"):
        assert (await refusal(world.accounts.create_user(bad))).code is Refusal.BAD_REQUEST
    assert (await refusal(world.accounts.create_user("cat", app="no app"))).code is Refusal.BAD_REQUEST
    ann = await world.accounts.get_user("ann")
    assert ann is not None
    assert not ann.vip  # the refused second create changed nothing


async def test_instants_and_apps_out_of_range_are_refused(world: World) -> None:
    """Before the epoch or in the future (a newcomer for ever, a follow that never ages),
    or an app no client token can carry: refused before anything is written."""
    now = world.clock()
    await world.user("ann")
    await world.user("bob")
    for created in (-1, 2**53, now + MAX_CLOCK_SKEW_MS + 1):
        assert (await refusal(world.accounts.create_user("cat", created_at_ms=created))).code is Refusal.BAD_REQUEST
    for app in ("Main", "Main:x", "x" * 33, ""):
        assert (await refusal(world.accounts.create_user("cat", app=app))).code is Refusal.BAD_REQUEST
    for since in (-5, now + MAX_CLOCK_SKEW_MS + 1):
        assert (await refusal(world.accounts.follow("ann", "bob", since_ms=since))).code is Refusal.BAD_REQUEST
    assert await world.accounts.get_user("cat") is None
    assert await world.redis.hget(world.keys.follows("ann"), "bob") is None
    # The edges: the epoch, and a clock a little ahead of this one.
    assert (await world.accounts.create_user("cat", created_at_ms=0, app="a_1")).created_at_ms == 0
    await world.accounts.follow("ann", "bob", since_ms=now + MAX_CLOCK_SKEW_MS)


async def test_set_flags_changes_only_what_is_given(world: World) -> None:
    await world.accounts.create_user("ann", verified=True)
    changed = await world.accounts.set_flags("ann", banned=True)
    assert (changed.verified, changed.vip, changed.banned) == (True, False, True)
    changed = await world.accounts.set_flags("ann", verified=False, vip=True, banned=False)
    assert (changed.verified, changed.vip, changed.banned) == (False, True, False)
    assert (await refusal(world.accounts.set_flags("ghost", vip=True))).code is Refusal.UNKNOWN_USER


async def test_mint_credits_whole_cards(world: World) -> None:
    await world.accounts.create_user("ann")
    assert await world.accounts.mint("ann", "note", 3) == Balances(available={"note": 3 * UNIT}, held={"note": 0})
    assert (await world.accounts.mint("ann", "note", 2)).available["note"] == 5 * UNIT
    report = await world.check()
    assert report.per_kind["note"] == {"minted": 5 * UNIT, "available": 5 * UNIT, "held": 0, "consumed": 0,
                                       "transit": 0}


async def test_mint_refusals(world: World) -> None:
    await world.accounts.create_user("ann")
    assert (await refusal(world.accounts.mint("ghost", "note", 1))).code is Refusal.UNKNOWN_USER
    assert (await refusal(world.accounts.mint("ann", "gold", 1))).code is Refusal.UNKNOWN_KIND
    assert (await refusal(world.accounts.mint("ann", "note", 0))).code is Refusal.BAD_QUANTITY
    assert (await refusal(world.accounts.mint("ann", "note", -1))).code is Refusal.BAD_QUANTITY
    most = MAX_SAFE_INT // UNIT
    await world.accounts.mint("ann", "note", most)
    # the total would pass 2**53, where Lua's doubles stop counting single units
    assert (await refusal(world.accounts.mint("ann", "note", 1))).code is Refusal.BAD_QUANTITY
    assert (await refusal(world.accounts.mint("ann", "note", most + 1))).code is Refusal.BAD_QUANTITY
    assert (await world.clearing.balances("ann")).available["note"] == most * UNIT


async def test_follow_again_keeps_the_start_unless_given(world: World) -> None:
    await world.user("ann")
    await world.user("bob")
    follows = world.keys.follows("ann")
    start = world.clock()
    await world.accounts.follow("ann", "bob")
    world.clock.advance(DAY_MS)
    await world.accounts.follow("ann", "bob")
    assert await world.redis.hget(follows, "bob") == str(start).encode()
    await world.accounts.follow("ann", "bob", since_ms=7)
    assert await world.redis.hget(follows, "bob") == b"7"
    await world.accounts.unfollow("ann", "bob")
    assert await world.redis.hget(follows, "bob") is None


async def test_relations_need_two_existing_users(world: World) -> None:
    await world.accounts.create_user("ann")
    a = world.accounts
    calls: list[Callable[[str, str], Awaitable[None]]] = [a.follow, a.unfollow, a.block, a.unblock]
    for call in calls:
        assert (await refusal(call("ann", "ghost"))).code is Refusal.UNKNOWN_USER
        assert (await refusal(call("ghost", "ann"))).code is Refusal.UNKNOWN_USER
        assert (await refusal(call("ann", "ann"))).code is Refusal.BAD_REQUEST


async def test_unblock_allows_gifts_again(world: World) -> None:
    await world.user("ann", cards=1)
    await world.user("bob")
    await world.befriend("ann", "bob")
    await world.accounts.block("ann", "bob")
    assert await world.redis.sismember(world.keys.blocks("ann"), "bob")
    await world.accounts.unblock("ann", "bob")
    await world.clearing.reserve("g1", "ann", "bob", "note", 1)


# ------------------------------------------------------------------------- the check can fail


async def _busy_world(world: World) -> str:
    """Two users, a pending gift and an accepted one; returns the pending gift's id."""
    await world.user("ann", cards=10)
    await world.user("bob")
    await world.befriend("ann", "bob")
    await world.clearing.reserve("g-done", "ann", "bob", "note", 2)
    await world.clearing.accept("g-done", "bob")
    await world.clearing.reserve("g-open", "ann", "bob", "note", 3)
    assert (await world.check()).ok
    return "g-open"


Corruption = Callable[[World], Awaitable[object]]
CORRUPTIONS: dict[str, tuple[Corruption, Corruption, str]] = {
    # name: (break, repair, a word the violation must contain)
    "balance": (
        lambda w: w.redis.hincrby(w.keys.balance("bob"), "note", 1),
        lambda w: w.redis.hincrby(w.keys.balance("bob"), "note", -1),
        "minted",
    ),
    "negative": (
        lambda w: w.redis.hincrby(w.keys.balance("cat"), "note", -1),
        lambda w: w.redis.delete(w.keys.balance("cat")),
        "negative",
    ),
    "held": (
        lambda w: w.redis.hincrby(w.keys.held("ann"), "note", -5),
        lambda w: w.redis.hincrby(w.keys.held("ann"), "note", 5),
        "held",
    ),
    "queue": (
        lambda w: w.redis.zrem(w.keys.expiry(tag_of("bob")), "bob|g-open"),
        lambda w: w.redis.zadd(w.keys.expiry(tag_of("bob")), {"bob|g-open": w.clock() + w.rules.confirm_window_ms}),
        "expiry",
    ),
    "inbox": (
        lambda w: w.redis.zrem(w.keys.inbox("bob"), "g-open"),
        lambda w: w.redis.zadd(w.keys.inbox("bob"), {"g-open": w.clock() + w.rules.confirm_window_ms}),
        "inbox",
    ),
    "state": (
        lambda w: w.redis.hset(w.keys.offer("bob", "g-done"), "state", "lost"),
        lambda w: w.redis.hset(w.keys.offer("bob", "g-done"), "state", "accepted"),
        "malformed",
    ),
    "transit": (
        lambda w: w.redis.hincrby(w.keys.totals(tag_of("ann")), "transit:note", 10),
        lambda w: w.redis.hincrby(w.keys.totals(tag_of("ann")), "transit:note", -10),
        "transit",
    ),
    "quota": (
        lambda w: w.redis.incr(w.keys.send_quota("20240301", "ann")),
        lambda w: w.redis.decr(w.keys.send_quota("20240301", "ann")),
        "quota",
    ),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
async def test_check_invariant_detects_a_corruption(world: World, name: str) -> None:
    await _busy_world(world)
    corrupt, repair, word = CORRUPTIONS[name]
    await corrupt(world)
    report = await check_invariant(world.redis, world.rules, world.keys)
    assert not report.ok
    assert any(word in v for v in report.violations), report.violations
    await repair(world)  # so that the fixture's final check passes again
    assert (await world.check()).ok
