"""The risk engine's actions as the send scripts read them: in the same step as the gift
rules, on one Redis and on a 3-shard cluster, on the fast path and through the saga.

Every refusal changes nothing (balances, holds, counters) and the conservation check holds
after every test (``make_world``'s teardown)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from clearing import GiftRules, Refusal, Refused
from clearing.testing import World
from clearing.topology import Topology
from risk.actions import FREEZE_MS, RiskActions, Tier

MakeWorld = Callable[..., Awaitable[World]]
_ids = itertools.count(1)


@pytest.fixture(params=["fast", "saga"])
async def world(request: pytest.FixtureRequest, store: Topology) -> AsyncIterator[World]:
    w = await World.build(store, GiftRules(), force_saga=request.param == "saga")
    await w.user("ann", cards=10)
    await w.user("bob", cards=10)
    await w.befriend("ann", "bob")
    yield w
    report = await w.check()
    assert report.ok, report.violations


def actions(w: World) -> RiskActions:
    return RiskActions(w.redis, w.keys)


async def refused(w: World, gid: str, sender: str = "ann", recipient: str = "bob", device: str | None = None
                  ) -> Refused:
    before = await w.clearing.balances(sender)
    offers = await w.clearing.pending_for(recipient)
    with pytest.raises(Refused) as info:
        await w.clearing.reserve(gid, sender, recipient, "note", 1, device=device)
    after = await w.clearing.balances(sender)
    assert (after.available, after.held) == (before.available, before.held), "a refusal moves nothing"
    assert await w.clearing.pending_for(recipient) == offers
    return info.value


async def test_a_frozen_sender_is_refused_with_the_freeze_end_and_a_retry_says_the_same(world: World) -> None:
    now = world.clock()
    assert await actions(world).apply("ann", Tier.FREEZE, device="-", reason="ip_ring", at_ms=now)
    first = await refused(world, "g-frozen")
    assert (first.code, first.until_ms) == (Refusal.ACCOUNT_FROZEN, now + FREEZE_MS)
    again = await refused(world, "g-frozen")
    assert (again.code, again.until_ms) == (Refusal.ACCOUNT_FROZEN, now + FREEZE_MS)


async def test_a_freeze_ends_by_itself(world: World) -> None:
    await actions(world).apply("ann", Tier.FREEZE, device="-", reason="ip_ring", at_ms=world.clock())
    await refused(world, f"g{next(_ids)}")
    await world.tick(FREEZE_MS)
    gift = await world.clearing.reserve(f"g{next(_ids)}", "ann", "bob", "note", 1)
    assert gift.sender == "ann"


async def test_a_frozen_recipient_receives_nothing_and_the_sender_is_not_told_until_when(world: World) -> None:
    await actions(world).apply("bob", Tier.FREEZE, device="-", reason="ip_ring", at_ms=world.clock())
    refusal = await refused(world, "g-to-frozen")
    assert (refusal.code, refusal.until_ms) == (Refusal.RECIPIENT_FROZEN, None)


async def test_the_limited_tier_allows_one_gift_a_day_instead_of_refusing_all(world: World) -> None:
    await actions(world).apply("ann", Tier.LIMIT, device="-", reason="device_farm")
    await world.clearing.reserve("g-one", "ann", "bob", "note", 1)
    assert (await refused(world, "g-two")).code is Refusal.RISK_LIMITED


async def test_a_banned_device_is_refused_for_its_sends_only(world: World) -> None:
    await world.redis.hset(world.keys.risk("ann"), "dev:phone-1", "1")
    assert (await refused(world, "g-dev", device="phone-1")).code is Refusal.DEVICE_BANNED
    gift = await world.clearing.reserve("g-other-dev", "ann", "bob", "note", 1, device="phone-2")
    assert gift.sender == "ann"


async def test_a_risk_ban_refuses_both_directions_as_for_a_banned_account(world: World) -> None:
    await actions(world).apply("ann", Tier.BAN, device="-", reason="script")
    assert (await refused(world, "g-from-banned")).code is Refusal.SENDER_BANNED
    assert (await refused(world, "g-to-banned", sender="bob", recipient="ann")).code is Refusal.RECIPIENT_BANNED


async def test_the_refusal_order_puts_the_risk_codes_where_documented(world: World) -> None:
    # DEVICE_BANNED comes before ACCOUNT_FROZEN, which comes before the recipient's codes.
    await actions(world).apply("ann", Tier.FREEZE, device="-", reason="ip_ring")
    await actions(world).apply("bob", Tier.FREEZE, device="-", reason="ip_ring")
    assert (await refused(world, "g-order-1")).code is Refusal.ACCOUNT_FROZEN
    await world.redis.hset(world.keys.risk("ann"), "dev:phone-9", "1")
    assert (await refused(world, "g-order-2", device="phone-9")).code is Refusal.DEVICE_BANNED


async def test_lifting_restores_the_limits(world: World) -> None:
    await actions(world).apply("ann", Tier.FREEZE, device="-", reason="ip_ring")
    await refused(world, "g-before-lift")
    assert await actions(world).lift("ann") is Tier.FREEZE
    gift = await world.clearing.reserve("g-after-lift", "ann", "bob", "note", 1)
    assert gift.sender == "ann"


async def test_a_hand_edited_freeze_end_keeps_the_account_frozen(world: World) -> None:
    await world.redis.hset(world.keys.risk("ann"), "frozen_until", "soon")
    refusal = await refused(world, "g-edited")
    assert (refusal.code, refusal.until_ms) == (Refusal.ACCOUNT_FROZEN, None)
