"""Guardian confirmation across shards (docs/architecture.md, "A gift that waits for a
guardian"): each step stopped where a crash would stop it, on one Redis with the saga forced
and on a 3-shard cluster where the sender, the ward and the guardian each sit on another
shard. After each stop the conservation check and the ledger replay must pass, and the
recovery worker, past the step deadline, must finish what was left, once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from clearing import GiftRules, GiftState
from clearing.gifts import DEFAULT_SAGA_MS
from clearing.ledger import reconcile
from clearing.model import EventKind
from clearing.slots import SLOTS, slot_of
from clearing.testing import World
from clearing.topology import Topology

UNIT = GiftRules().units_per_card
SENDER, WARD, GUARDIAN = "ann", "bob", "gabe"
GUARDIAN_WINDOW_MS = 30_000


@pytest.fixture
async def world(store: Topology) -> AsyncIterator[World]:
    w = await World.build(store, GiftRules(daily_send_limit=50, daily_receive_limit=50), force_saga=True)
    for user in (SENDER, WARD, GUARDIAN):
        await w.user(user, cards=5)
    await w.befriend(SENDER, WARD)
    await w.redis.hset(w.keys.regions(), "mena", orjson.dumps(
        {"guardian_rule": "male_to_female", "guardian_window_ms": GUARDIAN_WINDOW_MS}))
    w.settings.invalidate()
    await w.accounts.set_flags(SENDER, gender="male")
    await w.accounts.set_flags(WARD, gender="female", region="mena")
    await w.accounts.link_guardian(WARD, GUARDIAN, operator="ops")
    yield w
    await ok(w)


async def ok(w: World) -> None:
    report = await w.check()
    assert report.ok, report.violations
    ledger = await reconcile(w.redis, w.keys)
    assert ledger.ok, ledger.drift


async def past_deadline(w: World) -> int:
    await w.tick(DEFAULT_SAGA_MS + 1)
    return (await w.clearing.sweep_due()).recovered


async def guardian_events(w: World) -> list[str]:
    replay = await w.events.replay(GUARDIAN, "none", 0)
    return [e.gift.gift_id for e in replay.events if e.kind is EventKind.GUARDIAN]


async def available(w: World, user: str) -> tuple[int, int]:
    b = await w.clearing.balances(user)
    return b.available["note"], b.held["note"]


def test_the_three_parties_sit_on_three_shards() -> None:
    assert len({slot_of(u) * 3 // SLOTS for u in (SENDER, WARD, GUARDIAN)}) == 3


async def test_a_send_stopped_before_the_guardian_was_asked_is_asked_by_recovery_once(world: World) -> None:
    saga = await world.clearing.send_saga("g1", SENDER, WARD, "note", 1)
    gift = await saga.offer(await saga.reserve(await saga.admit()))
    assert gift.state is GiftState.AWAITING_GUARDIAN and gift.guardian == GUARDIAN
    await ok(world)
    assert await available(world, SENDER) == (4 * UNIT, UNIT)
    assert await world.clearing.pending_for(WARD) == []  # not offered to the ward
    epoch = (await world.events.replay(GUARDIAN, None, None)).epoch
    assert [e for e in (await world.events.replay(GUARDIAN, epoch, 0)).events] == []

    assert await past_deadline(world) == 1  # the ask step, driven by the ward's due entry
    replay = await world.events.replay(GUARDIAN, epoch, 0)
    assert [(e.kind, e.gift.gift_id, e.gift.state) for e in replay.events] == [
        (EventKind.GUARDIAN, "g1", GiftState.PENDING)]
    assert replay.events[0].gift.expires_at_ms == gift.created_at_ms + GUARDIAN_WINDOW_MS
    assert await past_deadline(world) == 0  # nothing left due: asked once
    assert len((await world.events.replay(GUARDIAN, epoch, 0)).events) == 1
    # asking again (a node that retries) changes nothing either
    assert await world.clearing.ask_guardian(gift, gift.created_at_ms + GUARDIAN_WINDOW_MS) is False


async def test_a_rejection_stopped_after_its_decision_is_refunded_by_recovery(world: World) -> None:
    gift = await world.clearing.reserve("g1", SENDER, WARD, "note", 2)
    assert gift.state is GiftState.PENDING  # as the sender is shown it
    saga = await world.clearing.answer_saga("g1", WARD, "reject", by=GUARDIAN)
    decided, changed, code = await saga.answer()
    assert (decided["state"], changed, code) == ("declined", True, None)
    await ok(world)
    assert await available(world, SENDER) == (3 * UNIT, 2 * UNIT)  # not settled yet
    assert await past_deadline(world) == 1
    assert await available(world, SENDER) == (5 * UNIT, 0)
    again = await world.clearing.guardian_answer("g1", GUARDIAN, WARD, approve=False)
    assert (again.gift.state, again.changed) == (GiftState.DECLINED, False)


async def test_an_approval_makes_the_offer_whose_accept_crosses_three_shards(world: World) -> None:
    await world.clearing.reserve("g1", SENDER, WARD, "note", 2)
    approved = await world.clearing.guardian_answer("g1", GUARDIAN, WARD, approve=True)
    assert (approved.gift.state, approved.changed) == (GiftState.PENDING, True)
    assert approved.gift.expires_at_ms == world.clock() + world.rules.confirm_window_ms
    assert [g.gift_id for g in await world.clearing.pending_for(WARD)] == ["g1"]
    saga = await world.clearing.answer_saga("g1", WARD, "accept")
    gift, _, _ = await saga.answer()
    assert await available(world, WARD) == (7 * UNIT, 0)  # credited at once
    await ok(world)  # the ward's shard owes the amount the sender's hold still holds
    await saga.finish(gift)
    assert await available(world, WARD) == (7 * UNIT, 0)
    assert await available(world, SENDER) == (3 * UNIT, 0)


async def test_the_guardian_window_expires_by_the_sweeper_and_refunds(world: World) -> None:
    await world.clearing.reserve("g1", SENDER, WARD, "note", 1)
    await world.tick(GUARDIAN_WINDOW_MS - 1)
    assert await world.clearing.expire_due() == []  # not due yet
    await world.tick(1)
    expired = await world.clearing.expire_due()
    assert [(g.gift_id, g.state) for g in expired] == [("g1", GiftState.EXPIRED)]
    assert await available(world, SENDER) == (5 * UNIT, 0)
    assert await world.clearing.pending_for(WARD) == []
