"""Gifts across shards: the saga's steps, stopped between any two as a crash would stop them.

Every test runs on one Redis with the saga forced (each step its own script, as across
shards) and on a 3-shard cluster, where the users below sit on different shards. After each
stop the conservation check must pass (cards in transit between shards included, and the
amount a recipient's slot owes between answer@R and settle@S), and the sweeper, past the step
deadline, must finish or undo what was left.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest

from clearing import GiftRules, GiftState, Refusal, Refused
from clearing.codec import text_hash
from clearing.erasure import Erasure
from clearing.errors import StepRefused
from clearing.gifts import DEFAULT_SAGA_MS
from clearing.ledger import reconcile
from clearing.model import GiftEvent
from clearing.scenes import MentorSaga, Scenes, mentor_args
from clearing.slots import SLOTS, slot_of, tag_of
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


async def test_the_offer_step_completes_the_admitted_half_with_every_field_of_a_whole_write(world: World) -> None:
    # offer@R writes only the fields it sets on the half admit@R stored (gift_send.lua
    # apply_offer); the half must end as the one-script path's whole write leaves it: the
    # admit's fields as they were, the send half's terms, numbers as plain digits.
    saga = await world.clearing.send_saga("g1", "ann", "bob", "note", 2)
    assert await saga.admit() is None
    admitted = text_hash(await world.redis.hgetall(world.keys.offer("bob", "g1")))
    send = await saga.reserve(None)
    await saga.offer(send)
    offered = text_hash(await world.redis.hgetall(world.keys.offer("bob", "g1")))
    sent = text_hash(await world.redis.hgetall(world.keys.gift("ann", "g1")))
    terms = ("cost", "amount", "created_at_ms", "expires_at_ms")
    assert offered == {**admitted, "state": "pending", **{f: sent[f] for f in terms}}
    assert set(offered) == {"sender", "recipient", "kind", "qty", "state", "day", "app", "stag", "rtag", *terms}
    assert offered["qty"] == "2" and offered["amount"] == str(2 * UNIT)
    assert int(offered["expires_at_ms"]) == int(offered["created_at_ms"]) + world.rules.confirm_window_ms


async def test_amounts_near_2_to_the_53_keep_every_digit_through_the_send_and_the_answer(store: Topology) -> None:
    # The scripts hand Redis whole numbers as '%d' text (lib.lua int()), no longer as Lua
    # numbers: a cost, a hold and a total of 9e15 (where "%.14g" would round) must be stored
    # digit for digit, and the books must balance after the accept.
    unit = 10**12
    w = await World.build(store, GiftRules(units_per_card=unit, max_qty_per_gift=9000, daily_send_limit=50,
                                           daily_receive_limit=50), force_saga=True)
    for user in ("ann", "bob"):
        await w.user(user, cards=9001)
    await w.befriend("ann", "bob")
    gift = await w.clearing.reserve("g1", "ann", "bob", "note", 9000)
    assert gift.cost == 9000 * unit
    sent = text_hash(await w.redis.hgetall(w.keys.gift("ann", "g1")))
    offered = text_hash(await w.redis.hgetall(w.keys.offer("bob", "g1")))
    assert sent["cost"] == offered["cost"] == offered["amount"] == "9000000000000000"
    assert await balance(w, "ann") == (unit, 9000 * unit)
    await ok(w)
    await w.clearing.accept("g1", "bob")
    assert await balance(w, "ann") == (unit, 0)
    assert (await w.clearing.balances("bob")).available["note"] == 18001 * unit
    await ok(w)


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


async def last_event(w: World, user: str) -> tuple[int, GiftState]:
    """The head of the user's event stream and the state its last event shows."""
    now = await w.events.replay(user, None, None)
    events = (await w.events.replay(user, now.epoch, now.head - 1)).events
    return now.head, events[-1].gift.state


async def due_entries(w: World, user: str) -> list[str]:
    members = cast("list[bytes]", await w.redis.zrange(w.keys.due(tag_of(user)), 0, -1))
    return [m.decode() for m in members]


async def test_an_accept_stopped_after_the_answer_at_the_recipient_owes_it_and_recovery_settles(
        world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    gift, changed, code = await saga.answer()
    assert (gift["state"], gift["closed"], gift["owed"], changed, code) == ("accepted", 1, 1, True, None)
    # bob is credited at once and told; ann's hold is still held: bob's slot owes the amount
    assert await balance(world, "bob") == (7 * UNIT, 0)
    assert await balance(world, "ann") == (3 * UNIT, 2 * UNIT)
    report = await world.check()
    assert report.ok, report.violations
    assert report.per_kind["note"]["transit"] == -2 * UNIT
    assert await last_event(world, "bob") == (2, GiftState.ACCEPTED)  # after the offer, the outcome
    assert (await world.events.replay("ann", None, None)).head == 0  # ann not told yet
    assert await due_entries(world, "bob") == ["answered|bob|g1"]

    assert await past_deadline(world) == 1
    assert await balance(world, "ann") == (3 * UNIT, 0)
    assert await balance(world, "bob") == (7 * UNIT, 0)  # not credited twice
    assert (await world.events.replay("ann", None, None)).head == 1  # ann was told
    report = await world.check()
    assert report.ok and report.per_kind["note"]["transit"] == 0
    assert await due_entries(world, "bob") == []
    assert await past_deadline(world) == 0


async def test_a_retry_of_the_accept_finishes_an_answer_stopped_before_the_sender_settled(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    await saga.answer()
    again = await world.clearing.accept("g1", "bob")
    assert (again.gift.state, again.changed) == (GiftState.ACCEPTED, False)
    assert await balance(world, "ann") == (3 * UNIT, 0)
    assert await balance(world, "bob") == (7 * UNIT, 0)
    assert await due_entries(world, "bob") == []


async def test_the_fast_path_finishes_an_answer_stopped_at_the_recipient_without_crediting_twice(
        world: World) -> None:
    # On one instance the retry below is resolve.lua (both halves on one node), across shards
    # the saga again: either way only the sender's side is left to do.
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    await saga.answer()
    world.clearing.force_saga = False
    again = await world.clearing.accept("g1", "bob", sender_hint="ann")
    assert (again.gift.state, again.changed) == (GiftState.ACCEPTED, False)
    assert await balance(world, "ann") == (3 * UNIT, 0)
    assert await balance(world, "bob") == (7 * UNIT, 0)
    report = await world.check()
    assert report.ok and report.per_kind["note"]["transit"] == 0
    assert await due_entries(world, "bob") == []
    assert await past_deadline(world) == 0


async def test_an_answer_stopped_before_the_sender_settled_reads_as_closed_to_the_previous_release(
        world: World) -> None:
    # During a rolling update old nodes call the previous release's scripts on the same
    # primaries, and those close again (crediting the recipient again) any offer half whose
    # `closed` is not 1: the answered state is `closed` 1, with an `owed` marker that only
    # this release reads (docs/architecture.md, "Upgrading from the three-step version").
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    await saga.answer()
    offer = await world.redis.hgetall(world.keys.offer("bob", "g1"))
    assert (offer[b"closed"], offer[b"owed"]) == (b"1", b"1")
    # close.lua is the previous release's own (it closes only `closed` 0): run on the stopped
    # gift, as an old node's saga or recovery would, it credits nothing
    args = {**saga.a, "gid": "g1", "s": "ann", "r": "bob", "to": "accepted"}
    await world.clearing.step("close", "bob", world.clearing.now(), args)
    assert await balance(world, "bob") == (7 * UNIT, 0)
    assert await balance(world, "ann") == (3 * UNIT, 2 * UNIT)  # the hold waits for the sweeper
    assert await past_deadline(world) == 1
    assert await balance(world, "ann") == (3 * UNIT, 0)
    assert await balance(world, "bob") == (7 * UNIT, 0)
    assert b"owed" not in await world.redis.hgetall(world.keys.offer("bob", "g1"))  # nothing left to settle
    await ok(world)


async def test_an_answer_not_yet_settled_keeps_its_offer_half_until_the_sender_settles(world: World) -> None:
    # Recovery settles the sender's hold from the offer half: were it to expire (the gift
    # retention) while settle@S is still due (a shard down, a settle refused until repaired),
    # recovery would find nothing, drop the entry, and ann's 2 cards would stay held for ever.
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    await saga.answer()
    offer = world.keys.offer("bob", "g1")
    assert await world.redis.pttl(offer) == -1  # no expiry while its answer is due
    assert await past_deadline(world) == 1
    assert await balance(world, "ann") == (3 * UNIT, 0)
    # settled: kept for the retention from now, as close keeps a three-step answer
    assert 0 < await world.redis.pttl(offer) <= world.rules.gift_retention_ms
    assert await due_entries(world, "bob") == []


async def test_the_clean_up_after_settle_refuses_an_offer_not_yet_answered_and_changes_nothing(
        world: World) -> None:
    # settled.lua drops the marker and the due entry that recovery needs: called on a gift
    # whose offer half is not final, it must leave them (and the offer's lifetime) alone.
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    offer = world.keys.offer("bob", "g1")
    before = (await world.redis.hgetall(offer), await world.redis.pttl(offer))
    args = {"gid": "g1", "r": "bob", "rtag": tag_of("bob"), "retention": "1000"}
    with pytest.raises(StepRefused) as refused:
        await world.clearing.step("settled", "bob", world.clearing.now(), args, emits=False, durable=False)
    assert refused.value.code == "NOT_DUE"
    assert (await world.redis.hgetall(offer), await world.redis.pttl(offer)) == before
    assert (await world.clearing.accept("g1", "bob", sender_hint="ann")).gift.state is GiftState.ACCEPTED
    assert await due_entries(world, "bob") == []
    await ok(world)


async def test_the_fast_path_that_settles_an_answered_gift_starts_its_retention(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    await saga.answer()
    world.clearing.force_saga = False
    await world.clearing.accept("g1", "bob", sender_hint="ann")
    assert 0 < await world.redis.pttl(world.keys.offer("bob", "g1")) <= world.rules.gift_retention_ms


async def test_a_cross_shard_answer_is_two_steps_and_leaves_nothing_due(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    done = await world.clearing.accept("g1", "bob")
    assert (done.gift.state, done.changed) == (GiftState.ACCEPTED, True)
    offer = await world.redis.hgetall(world.keys.offer("bob", "g1"))
    assert offer[b"closed"] == b"1"  # answered at bob's slot in one step; no close step ran
    assert b"owed" not in offer  # the sender's side is settled
    assert await due_entries(world, "bob") == []  # dropped right after the sender settled
    assert await balance(world, "ann") == (4 * UNIT, 0)
    assert await balance(world, "bob") == (6 * UNIT, 0)
    assert await past_deadline(world) == 0


async def test_a_decline_stopped_after_the_answer_gives_the_slots_back_and_recovery_refunds(
        world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 1)
    saga = await world.clearing.answer_saga("g1", "bob", "decline")
    gift, _, _ = await saga.answer()
    assert (gift["state"], gift["closed"], gift["owed"]) == ("declined", 1, 1)
    await ok(world)  # bob's receive slots are back, ann's hold still held
    assert await balance(world, "ann") == (4 * UNIT, UNIT)
    assert await last_event(world, "bob") == (2, GiftState.DECLINED)
    assert await past_deadline(world) == 1
    assert await balance(world, "ann") == (5 * UNIT, 0)
    assert (await world.clearing.get_gift("g1", "ann")).state is GiftState.DECLINED  # type: ignore[union-attr]


async def test_every_step_run_twice_or_by_two_runners_applies_once(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    gift, _, _ = await saga.answer()
    again, changed, _ = await saga.answer()
    assert not changed and (again["closed"], again["owed"]) == (1, 1)
    await world.tick(DEFAULT_SAGA_MS + 1)  # the recovery worker races the node
    await asyncio.gather(saga.finish(gift), saga.finish(again), world.clearing.sweep(ALL_SLOTS),
                         world.clearing.sweep(ALL_SLOTS))
    await asyncio.gather(saga.settle(gift), saga.settle(again))
    await world.tick(DEFAULT_SAGA_MS + 1)
    await world.clearing.sweep(ALL_SLOTS)
    assert await balance(world, "ann") == (3 * UNIT, 0)
    assert await balance(world, "bob") == (7 * UNIT, 0)
    assert await due_entries(world, "bob") == []


async def test_the_conservation_check_sees_an_owed_answer_that_nothing_would_finish(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    await saga.answer()
    await world.redis.zrem(world.keys.due(tag_of("bob")), "answered|bob|g1")  # a lost entry
    report = await world.check()
    assert report.violations == ["an answer stopped half-way is not due: answered|bob|g1"]
    # and an owed amount with no gift to owe it (a credit twice) puts transit below its bound
    await world.redis.hincrby(world.keys.totals(tag_of("bob")), "transit:note", -UNIT)
    await world.redis.hincrby(world.keys.balance("bob"), "note", UNIT)
    report = await world.check()
    assert any("below the accepted gifts in flight" in v for v in report.violations), report.violations
    # put back what the test broke, then let recovery finish
    await world.redis.hincrby(world.keys.totals(tag_of("bob")), "transit:note", UNIT)
    await world.redis.hincrby(world.keys.balance("bob"), "note", -UNIT)
    await saga.finish((await saga.answer())[0])


async def test_erasing_the_recipient_first_finishes_an_answer_the_sender_has_not_settled(world: World) -> None:
    await world.clearing.reserve("g1", "ann", "bob", "note", 2)
    saga = await world.clearing.answer_saga("g1", "bob", "accept")
    await saga.answer()  # bob credited; ann's hold still held, due at bob's slot
    erased = await Erasure(world.clearing).erase("bob")
    assert erased["consumed"] == {"note": 7 * UNIT}
    # the offer half that recovery reads went with bob: ann was settled before, not left held
    assert await balance(world, "ann") == (3 * UNIT, 0)
    assert await due_entries(world, "bob") == []


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
