"""Gifts across shards: the saga's steps, stopped between any two as a crash would stop them.

Every test runs on one Redis with the saga forced (each step its own script, as across
shards) and on a 3-shard cluster, where the users below sit on different shards. After each
stop the conservation check must pass (cards in transit between shards included), and the
sweeper, past the step deadline, must finish or undo what was left.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from clearing import GiftRules, GiftState, Refusal, Refused
from clearing.gifts import DEFAULT_SAGA_MS
from clearing.ledger import reconcile
from clearing.model import GiftEvent
from clearing.scenes import MentorSaga, Scenes, mentor_args
from clearing.slots import SLOTS, slot_of
from clearing.testing import World
from clearing.topology import Topology

UNIT = GiftRules().units_per_card
ALL_SLOTS = range(SLOTS)


@pytest.fixture
async def world(store: Topology) -> AsyncIterator[World]:
    w = await World.build(store, GiftRules(daily_send_limit=50, daily_receive_limit=50), force_saga=True)
    for user in ("ann", "bob"):
        await w.user(user, cards=5)
    await w.befriend("ann", "bob")
    yield w
    await ok(w)


async def ok(w: World) -> None:
    report = await w.check()
    assert report.ok, report.violations
    # every stop leaves a ledger whose replay equals what Redis holds, per account
    ledger = await reconcile(w.redis, w.keys)
    assert ledger.ok, ledger.drift


async def past_deadline(w: World) -> int:
    """Move past every step's deadline (keeping the node alive) and sweep the slots that the
    sweep index lists as due, as a node's sweeper does."""
    await w.tick(DEFAULT_SAGA_MS + 1)
    return (await w.clearing.sweep_due()).recovered


async def balance(w: World, user: str) -> tuple[int, int]:
    b = await w.clearing.balances(user)
    return b.available["note"], b.held["note"]


def test_the_users_of_these_tests_sit_on_different_shards_of_a_3_shard_cluster() -> None:
    # slots 0-5460, 5461-10921, 10922-16383 (notecard/local_cluster.py splits evenly)
    assert len({slot_of(u) * 3 // SLOTS for u in ("ann", "bob")}) == 2


async def test_a_send_stopped_after_admission_is_voided_and_its_id_spent(world: World) -> None:
    saga = await world.clearing.send_saga("g1", "ann", "bob", "note", 1)
    assert await saga.admit() is None
    await ok(world)  # bob's receive slot is taken, nothing else moved
    assert await balance(world, "ann") == (5 * UNIT, 0)

    assert await past_deadline(world) == 1
    await ok(world)
    with pytest.raises(Refused) as refused:
        await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    assert refused.value.code is Refusal.SEND_ABORTED
    assert await world.clearing.pending_for("bob") == []
    # bob's slot came back: a new gift (new id) goes through
    gift = await world.clearing.reserve("g2", "ann", "bob", "note", 1)
    assert gift.state is GiftState.PENDING


async def test_a_send_stopped_after_reserve_is_offered_by_recovery(world: World) -> None:
    saga = await world.clearing.send_saga("g1", "ann", "bob", "note", 2)
    await saga.reserve(await saga.admit())
    await ok(world)  # the cost is held; bob has no offer yet
    assert await balance(world, "ann") == (3 * UNIT, 2 * UNIT)
    assert await world.clearing.pending_for("bob") == []

    assert await past_deadline(world) == 1
    (offer,) = await world.clearing.pending_for("bob")
    assert (offer.gift_id, offer.sender, offer.cost) == ("g1", "ann", 2 * UNIT)
    replay = await world.events.replay("bob", None, None)
    assert replay.head == 1  # the offer event reached bob's stream
    done = await world.clearing.accept("g1", "bob")
    assert done.gift.state is GiftState.ACCEPTED
    assert await balance(world, "bob") == (7 * UNIT, 0)


async def test_a_retry_of_the_client_finishes_a_send_stopped_half_way(world: World) -> None:
    saga = await world.clearing.send_saga("g1", "ann", "bob", "note", 1)
    await saga.reserve(await saga.admit())
    again = await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    assert again.state is GiftState.PENDING
    assert [g.gift_id for g in await world.clearing.pending_for("bob")] == ["g1"]
    assert await past_deadline(world) == 0  # nothing was left for recovery
    assert await balance(world, "ann") == (4 * UNIT, UNIT)


async def test_a_sender_refused_after_the_admission_gives_the_recipient_slot_back(world: World) -> None:
    await world.accounts.set_flags("ann", banned=True)
    saga = await world.clearing.send_saga("g1", "ann", "bob", "note", 1)
    assert await saga.admit() is None  # bob's side has nothing against it
    with pytest.raises(Refused) as refused:
        await saga.reserve(None)
    assert refused.value.code is Refusal.SENDER_BANNED
    await ok(world)  # the admission is void and bob's counters are back
    assert await past_deadline(world) == 0


async def test_an_answer_stopped_after_the_decision_is_settled_by_recovery(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    gift, changed, code = await saga.decide()
    assert (gift["state"], changed, code) == ("accepted", True, None)
    await ok(world)  # decided, but the cards are still held by ann
    assert await balance(world, "ann") == (3 * UNIT, 2 * UNIT)

    assert await past_deadline(world) == 1
    assert await balance(world, "ann") == (3 * UNIT, 0)
    assert await balance(world, "bob") == (7 * UNIT, 0)
    outcome = (await world.events.replay("ann", None, None)).head
    assert outcome == 1  # ann was told


async def test_an_accept_stopped_after_settling_has_cards_in_transit_and_still_balances(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 3)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    gift, _, _ = await saga.decide()
    await saga.settle(gift)
    report = await world.check()
    assert report.ok, report.violations
    assert report.per_kind["note"]["transit"] == 3 * UNIT  # left ann's slot, not yet at bob's
    assert await balance(world, "bob") == (5 * UNIT, 0)

    assert await past_deadline(world) == 1
    report = await world.check()
    assert report.ok and report.per_kind["note"]["transit"] == 0
    assert await balance(world, "bob") == (8 * UNIT, 0)


async def test_a_decline_stopped_after_the_decision_refunds_through_recovery(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    saga = await world.clearing.answer_saga("g1", "bob", "decline")
    await saga.decide()
    await ok(world)
    assert await past_deadline(world) == 1
    assert await balance(world, "ann") == (5 * UNIT, 0)
    # both slots came back: three more gifts fit the (raised) limits as before
    assert (await world.clearing.get_gift("g1", "ann")).state is GiftState.DECLINED  # type: ignore[union-attr]


async def test_every_step_run_twice_or_by_two_runners_applies_once(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    gift, _, _ = await saga.decide()
    again, changed, _ = await saga.decide()
    assert not changed
    await asyncio.gather(saga.settle(gift), saga.settle(again), world.clearing.sweep(ALL_SLOTS))
    await asyncio.gather(saga.close(gift), saga.close(again))
    await world.tick(DEFAULT_SAGA_MS + 1)
    await world.clearing.sweep(ALL_SLOTS)
    assert await balance(world, "ann") == (3 * UNIT, 0)
    assert await balance(world, "bob") == (7 * UNIT, 0)


async def test_an_expiry_across_shards_refunds_the_sender(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    await world.tick(world.rules.confirm_window_ms)
    swept = await world.clearing.sweep_due()
    assert [g.gift_id for g in swept.expired] == ["g1"]
    assert await balance(world, "ann") == (5 * UNIT, 0)
    with pytest.raises(Refused) as refused:
        await world.clearing.accept("g1", "bob")
    assert refused.value.code is Refusal.GIFT_EXPIRED


async def test_a_promotion_hold_whose_send_never_finished_goes_back(world: World) -> None:
    await world.accounts.create_user("promo", verified=True)
    await world.accounts.mint("promo", "note", 10)
    await world.accounts.create_user("kid", verified=True)  # a newcomer: the promotion pays
    await world.presence.connect("kid", world.node)
    await world.befriend("kid", "bob")
    saga = await world.clearing.send_saga("g1", "kid", "bob", "note", 1)
    rcode = await saga.admit()
    reply = await world.clearing.step("reserve", "kid", saga.now, {**saga.a, "rcode": rcode}, emits=False)
    assert reply["need_sponsor"]
    await world.clearing.step("sponsor", "promo", saga.now, {**saga.a, "cost": UNIT, "hold": True}, emits=False)
    await ok(world)  # promo holds the cost of a gift that has no send half yet
    assert await balance(world, "promo") == (9 * UNIT, UNIT)

    await world.tick(world.rules.confirm_window_ms)
    await past_deadline(world)
    await ok(world)
    assert await balance(world, "promo") == (10 * UNIT, 0)
    with pytest.raises(Refused) as refused:
        await world.clearing.reserve("g1", "kid", "bob", "note", 1)
    assert refused.value.code is Refusal.SEND_ABORTED


async def test_a_newcomer_gift_paid_by_the_promotion_across_shards(world: World) -> None:
    await world.accounts.create_user("promo", verified=True)
    await world.accounts.mint("promo", "note", 10)
    await world.user("kid")
    await world.befriend("kid", "bob")
    gift = await world.clearing.reserve("g1", "kid", "bob", "note", 2)
    assert gift.payer == "promo"
    await ok(world)
    await world.clearing.decline("g1", "bob")
    assert await balance(world, "promo") == (10 * UNIT, 0)
    await world.clearing.reserve("g2", "kid", "bob", "note", 2)
    await world.clearing.accept("g2", "bob")
    assert await balance(world, "promo") == (8 * UNIT, 0)
    assert await balance(world, "bob") == (7 * UNIT, 0)


async def test_a_mentor_binding_stopped_after_binding_is_paid_by_recovery(world: World) -> None:
    await world.accounts.create_user("promo", verified=True)
    await world.accounts.mint("promo", "note", 10)
    await world.user("kid")
    scenes = Scenes(world.topology, world.rules, world.keys, world.clock, settings=world.settings)
    config = await scenes.config()
    a = mentor_args(scenes, config, "kid", "ann")
    saga = MentorSaga(scenes, a)
    check = await scenes.step("ann", world.clock(), {**a, "step": "check"})
    await scenes.step("kid", world.clock(), {**a, "step": "bind", "mcode": check.get("code")})
    await ok(world)
    assert await past_deadline(world) == 1
    assert await balance(world, "kid") == (config.apprentice_reward_units, 0)
    assert await balance(world, "ann") == (5 * UNIT + config.mentor_reward_units, 0)
    with pytest.raises(Refused) as refused:
        await saga.run(world.clock())
    assert refused.value.code is Refusal.ALREADY_BOUND


async def test_the_state_table_of_the_model_is_the_one_the_scripts_obey(world: World,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove a move from clearing/model.py's table and the scripts refuse it."""
    from clearing import lua, model

    await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    moves = {k: v for k, v in model.MOVES.items() if k != (GiftState.PENDING, GiftEvent.DECLINE)}
    monkeypatch.setattr(lua, "MOVES", moves)
    lua.generated_tables.cache_clear()
    lua.library.cache_clear()
    try:
        with pytest.raises(Refused) as refused:
            await world.clearing.decline("g1", "bob")
        assert refused.value.code is Refusal.ALREADY_RESOLVED
        assert (await world.clearing.get_gift("g1", "bob")).state is GiftState.PENDING  # type: ignore[union-attr]
    finally:
        monkeypatch.undo()
        lua.generated_tables.cache_clear()
        lua.library.cache_clear()
    assert (await world.clearing.decline("g1", "bob")).gift.state is GiftState.DECLINED
