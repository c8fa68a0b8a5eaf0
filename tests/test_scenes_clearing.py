"""Scenes against a real Redis (gift-rules.md sections 2 and 3): festival windows at their
instants, newcomers' free gifts at the 5th/6th gift and the 7th day, mentor binding, app
perks in the points ledger, the avatar frame, and live rooms (viewer tiers, quotes that
lapse, leaderboard ties, one viewer on two devices and two nodes, a dead node's viewers).

Every test runs in a ``World`` whose teardown asserts ``check_invariant(...).ok``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable

import pytest

from clearing import GiftRules, GiftState, Refusal, Refused
from clearing.rooms import Rooms
from clearing.rules import DAY_MS
from clearing.scene_config import LiveTier, SceneConfig, SceneConfigError
from clearing.scenes import Scenes
from clearing.testing import World
from clearing.topology import Topology

UNIT = GiftRules().units_per_card
_ids = itertools.count(1)


class SceneWorld:
    def __init__(self, w: World) -> None:
        self.w = w
        self.scenes = Scenes(w.topology, w.rules, w.keys, w.clock, settings=w.settings)
        self.rooms = Rooms(w.topology, w.rules, w.keys, w.clock, settings=w.settings)


@pytest.fixture
async def sw(store: Topology) -> AsyncIterator[SceneWorld]:
    """On one Redis, then on a 3-shard cluster (the promotion account, streamers and fans on
    different shards: newcomer gifts and mentor bindings take the saga)."""
    # Daily limits are section 1's business; lifted here so a scenario can give freely.
    world = SceneWorld(await World.build(store, GiftRules(daily_send_limit=50, daily_receive_limit=50)))
    yield world
    report = await world.w.check()
    assert report.ok, report.violations


async def refusal(call: Awaitable[object]) -> Refusal:
    with pytest.raises(Refused) as info:
        await call
    return info.value.code


async def old_friends(w: World, *users: str, cards: int = 10) -> None:
    """Users older than the newcomer window, all befriended, each with ``cards``."""
    for u in users:
        await w.accounts.create_user(u, verified=True, created_at_ms=w.clock() - 30 * DAY_MS)
        if cards:
            await w.accounts.mint(u, "note", cards)
        await w.presence.connect(u, w.node)
    for a in users:
        for b in users:
            if a < b:
                await w.befriend(a, b)


async def give(w: World, sender: str = "ann", recipient: str = "bob", qty: int = 1, **kw: str):  # type: ignore[no-untyped-def]
    return await w.clearing.reserve(f"g{next(_ids)}", sender, recipient, "note", qty, **kw)


async def available(w: World, user: str) -> int:
    return (await w.clearing.balances(user)).available["note"]


# ---------------------------------------------------------------- festivals


async def test_festival_window_prices_from_its_first_instant_to_before_its_end(sw: SceneWorld) -> None:
    w = sw.w
    await old_friends(w, "ann", "bob")
    start, end = w.clock() + 1000, w.clock() + 5000
    await sw.scenes.put_festival("spring", "Spring Festival", start, end, frame="lantern")
    before = await give(w)
    assert (before.cost, before.amount, before.festival) == (UNIT, UNIT, None)
    w.clock.now_ms = start - 1
    assert (await give(w)).cost == UNIT
    w.clock.now_ms = start
    first = await give(w)
    assert (first.cost, first.amount, first.festival) == (12, UNIT, "spring")
    w.clock.now_ms = end - 1
    last = await give(w, qty=3)
    assert (last.cost, last.amount) == (36, 30)
    w.clock.now_ms = end
    assert (await give(w)).cost == UNIT


async def test_festival_gift_consumes_the_extra_on_accept_and_refunds_all_otherwise(sw: SceneWorld) -> None:
    w = sw.w
    await old_friends(w, "ann", "bob")
    await sw.scenes.put_festival("qixi", "Qixi", w.clock(), w.clock() + DAY_MS)
    accepted, declined = await give(w), await give(w)
    assert await available(w, "ann") == 100 - 24
    await w.clearing.accept(accepted.gift_id, "bob")
    await w.clearing.decline(declined.gift_id, "bob")
    assert await available(w, "ann") == 100 - 12
    assert await available(w, "bob") == 100 + 10
    expiring = await give(w)
    await w.tick(w.rules.confirm_window_ms)
    assert [g.gift_id for g in await w.clearing.expire_due()] == [expiring.gift_id]
    assert await available(w, "ann") == 100 - 12
    report = await w.check()
    assert report.per_kind["note"]["consumed"] == 2


async def test_multiplier_rounds_up_to_a_whole_unit(sw: SceneWorld) -> None:
    w = sw.w
    await old_friends(w, "ann", "bob")
    await sw.scenes.put_festival("odd", "Odd", w.clock(), w.clock() + DAY_MS, multiplier=1.25)
    assert (await give(w)).cost == 13  # 10 * 1.25 = 12.5 -> 13


async def test_festival_configuration_is_validated(sw: SceneWorld) -> None:
    now = sw.w.clock()
    await sw.scenes.put_festival("a", "A", now, now + 1000)
    with pytest.raises(SceneConfigError, match="overlaps"):
        await sw.scenes.put_festival("b", "B", now + 999, now + 2000)
    await sw.scenes.put_festival("b", "B", now + 1000, now + 2000)  # back to back is fine
    with pytest.raises(SceneConfigError, match="end after"):
        await sw.scenes.put_festival("c", "C", now + 5000, now + 5000)
    with pytest.raises(SceneConfigError, match="3 decimals"):
        await sw.scenes.put_festival("c", "C", now + 5000, now + 6000, multiplier=1.2345)
    with pytest.raises(SceneConfigError, match="multiplier"):
        await sw.scenes.put_festival("c", "C", now + 5000, now + 6000, multiplier=0.5)
    assert [f.festival_id for f in await sw.scenes.festivals()] == ["a", "b"]


async def test_avatar_frame_once_per_user_only_inside_the_window(sw: SceneWorld) -> None:
    w = sw.w
    await old_friends(w, "ann")
    await sw.scenes.set_config({"frame_price_units": 5})
    start = w.clock() + 1000
    await sw.scenes.put_festival("spring", "Spring", start, start + 1000, frame="lantern")
    assert await refusal(sw.scenes.redeem_frame("ann", "spring")) is Refusal.NO_FESTIVAL
    w.clock.now_ms = start
    got = await sw.scenes.redeem_frame("ann", "spring")
    assert (got.item, got.frame, got.expires_at_ms) == ("frame:spring", "lantern", start + 1000)
    assert await refusal(sw.scenes.redeem_frame("ann", "spring")) is Refusal.ALREADY_REDEEMED
    assert await available(w, "ann") == 95
    assert await sw.scenes.inventory("ann") == {"frame:spring": start + 1000}
    w.clock.now_ms = start + 1000
    assert await sw.scenes.inventory("ann") == {}


# ---------------------------------------------------------------- newcomers


async def newcomer_world(w: World, age_ms: int, promo_cards: int = 100) -> None:
    await old_friends(w, "bob", cards=0)
    await w.accounts.create_user("promo", verified=True, created_at_ms=0)
    if promo_cards:
        await w.accounts.mint("promo", "note", promo_cards)
    await w.accounts.create_user("newbie", verified=True, created_at_ms=w.clock() - age_ms)
    await w.accounts.mint("newbie", "note", 10)
    await w.presence.connect("newbie", w.node)
    await w.befriend("newbie", "bob")


async def test_first_five_gifts_are_free_the_sixth_is_paid(sw: SceneWorld) -> None:
    w = sw.w
    await newcomer_world(w, age_ms=DAY_MS)
    await sw.scenes.set_config({"newcomer_free_gifts": 5})
    gifts = []
    for _ in range(6):
        gifts.append(await give(w, "newbie", "bob"))
        await w.clearing.accept(gifts[-1].gift_id, "bob")
    assert [g.payer for g in gifts] == ["promo"] * 5 + [None]
    assert await available(w, "newbie") == 90
    assert await available(w, "promo") == 1000 - 50
    assert await available(w, "bob") == 60


async def test_a_declined_free_gift_gives_the_slot_and_the_card_back_to_the_promotion(sw: SceneWorld) -> None:
    w = sw.w
    await newcomer_world(w, age_ms=DAY_MS)
    await sw.scenes.set_config({"newcomer_free_gifts": 1})
    first = await give(w, "newbie", "bob")
    assert (first.payer, await available(w, "promo")) == ("promo", 990)
    assert (await w.clearing.balances("promo")).held["note"] == 10
    await w.clearing.decline(first.gift_id, "bob")
    assert await available(w, "promo") == 1000
    assert (await give(w, "newbie", "bob")).payer == "promo"  # the slot came back
    assert await available(w, "newbie") == 100


@pytest.mark.parametrize(("age_ms", "free"), [(7 * DAY_MS - 1, True), (7 * DAY_MS, False)])
async def test_the_seventh_day_ends_the_newcomer_window(sw: SceneWorld, age_ms: int, free: bool) -> None:
    await newcomer_world(sw.w, age_ms=age_ms)
    gift = await give(sw.w, "newbie", "bob")
    assert gift.payer == ("promo" if free else None)


async def test_an_empty_promotion_account_means_the_sender_pays(sw: SceneWorld) -> None:
    await newcomer_world(sw.w, age_ms=DAY_MS, promo_cards=0)
    gift = await give(sw.w, "newbie", "bob")
    assert gift.payer is None
    assert await available(sw.w, "newbie") == 90


async def test_mentor_binding_once_rewards_both_from_the_promotion(sw: SceneWorld) -> None:
    w = sw.w
    await newcomer_world(w, age_ms=DAY_MS)
    bound = await sw.scenes.bind_mentor("newbie", "bob")
    assert (bound.mentor_reward, bound.apprentice_reward) == (20, 10)
    assert await available(w, "bob") == 20
    assert await available(w, "newbie") == 110
    assert await available(w, "promo") == 1000 - 30
    assert await refusal(sw.scenes.bind_mentor("newbie", "bob")) is Refusal.ALREADY_BOUND
    assert await refusal(sw.scenes.bind_mentor("bob", "newbie")) is Refusal.ALREADY_BOUND
    assert await refusal(sw.scenes.bind_mentor("newbie", "newbie")) is Refusal.BAD_REQUEST


async def test_only_a_newcomer_can_be_an_apprentice_and_the_promotion_must_pay(sw: SceneWorld) -> None:
    w = sw.w
    await newcomer_world(w, age_ms=7 * DAY_MS, promo_cards=0)
    assert await refusal(sw.scenes.bind_mentor("newbie", "bob")) is Refusal.NOT_NEWCOMER
    await w.accounts.create_user("fresh", verified=True, created_at_ms=w.clock())
    assert await refusal(sw.scenes.bind_mentor("fresh", "bob")) is Refusal.PROMOTION_EXHAUSTED


# ---------------------------------------------------------------- linked apps


@pytest.mark.parametrize(
    ("sender_app", "recipient_app", "sender_points", "recipient_points", "joint"),
    [
        ("main", "main", 20, 20, False),
        ("toutiao", "main", 23, 20, False),  # +15% to the sender, rounded down: 20 + 3
        ("main", "huoshan", 20, 40, False),  # the recipient earns double
        ("duoshan", "main", 20, 20, True),  # both become eligible for the joint campaign
        ("toutiao", "huoshan", 23, 40, False),  # across apps: each side's own perk
    ],
)
async def test_app_perks_are_recorded_in_the_points_ledger(
    sw: SceneWorld, sender_app: str, recipient_app: str, sender_points: int, recipient_points: int, joint: bool
) -> None:
    w = sw.w
    await old_friends(w, "ann", "bob")
    gift = await give(w, qty=2, app=sender_app)
    assert gift.app == sender_app
    assert (await sw.scenes.points("ann")).points == 0  # points only when accepted
    await w.clearing.accept(gift.gift_id, "bob", app=recipient_app)
    ann, bob = await sw.scenes.points("ann"), await sw.scenes.points("bob")
    assert (ann.points, bob.points) == (sender_points, recipient_points)
    assert ann.joint_campaign is joint and bob.joint_campaign is joint
    declined = await give(w, app=sender_app)
    await w.clearing.decline(declined.gift_id, "bob", app=recipient_app)
    assert (await sw.scenes.points("ann")).points == sender_points


async def test_a_saga_answer_retried_from_another_app_settles_with_the_gifts_own_apps(sw: SceneWorld) -> None:
    """answer@R gets only the answering app's perks (and the joint ones); the steps after it
    get those of the apps the gift itself records. An answer from huoshan stopped after
    answer@R (bob credited with its multiplier), then retried from main, still settles the
    sender's side with toutiao's bonus and leaves bob's credit as it was."""
    w = sw.w
    await old_friends(w, "ann", "bob")
    gift = await give(w, qty=2, app="toutiao")
    first = await w.clearing.answer_saga(gift.gift_id, "bob", "accept", app="huoshan")
    decided, changed, _ = await first.answer()  # stops here, as a crash would
    assert changed and decided["rapp"] == "huoshan"
    assert (await sw.scenes.points("ann")).points == 0
    retry = await w.clearing.answer_saga(gift.gift_id, "bob", "accept", app="main")
    resolution = await retry.run()
    assert not resolution.changed and resolution.gift.state.value == "accepted"
    ann, bob = await sw.scenes.points("ann"), await sw.scenes.points("bob")
    assert (ann.points, bob.points) == (23, 40)  # toutiao's +15% to ann, huoshan's double to bob


async def test_a_send_retried_from_another_app_earns_the_send_halfs_app_bonus_on_every_path(
        sw: SceneWorld) -> None:
    """A send stopped after admit@R (the offer half records the first try's app) and retried
    from toutiao: the send half, which settle@S reads, records toutiao. The sender's bonus is
    the send half's app's, on the saga (settle@S) as on the fast path (resolve.lua), so it
    may not depend on which apps' perks the saga's steps are handed."""
    w = sw.w
    await old_friends(w, "ann", "bob")
    first = await w.clearing.send_saga("g-app", "ann", "bob", "note", 2, app="main")
    assert await first.admit() is None  # stops here, as a crash would
    retry = await w.clearing.send_saga("g-app", "ann", "bob", "note", 2, app="toutiao")
    await retry.run()
    sent = await w.redis.hget(w.keys.gift("ann", "g-app"), "app")
    assert sent in (b"toutiao", "toutiao")
    resolution = await (await w.clearing.answer_saga("g-app", "bob", "accept", app="main")).run()
    assert resolution.changed and resolution.gift.state is GiftState.ACCEPTED
    ann, bob = await sw.scenes.points("ann"), await sw.scenes.points("bob")
    assert (ann.points, bob.points) == (23, 20)  # toutiao's +15% to ann, as resolve.lua gives it


async def test_an_answer_finished_by_a_retry_from_another_app_keeps_the_first_apps_joint_flag(
        sw: SceneWorld) -> None:
    """An accept from duoshan (a joint campaign) stopped after answer@R: bob is credited and
    flagged. The client's retry from main finishes it, by the saga or (both users on one
    Redis) by resolve.lua; either way the sender's side is settled as the gift records it
    was answered, from duoshan, so ann is flagged too, as an uninterrupted answer flags her."""
    w = sw.w
    await old_friends(w, "ann", "bob")
    gift = await give(w, qty=2)
    first = await w.clearing.answer_saga(gift.gift_id, "bob", "accept", app="duoshan")
    decided, changed, _ = await first.answer()  # stops here, as a crash would
    assert changed and decided["rapp"] == "duoshan"
    assert (await sw.scenes.points("bob")).joint_campaign
    resolution = await w.clearing.accept(gift.gift_id, "bob", app="main", sender_hint="ann")
    assert not resolution.changed and resolution.gift.state is GiftState.ACCEPTED
    ann, bob = await sw.scenes.points("ann"), await sw.scenes.points("bob")
    assert (ann.points, bob.points) == (20, 20)
    assert ann.joint_campaign and bob.joint_campaign


async def test_scene_settings_are_validated_as_a_whole(sw: SceneWorld) -> None:
    with pytest.raises(SceneConfigError, match="unknown"):
        await sw.scenes.set_config({"newcomer_days": 3})
    with pytest.raises(SceneConfigError, match="permille must not decrease"):
        await sw.scenes.set_config({"live_tiers": [{"min_viewers": 0, "permille": 1500},
                                                   {"min_viewers": 5, "permille": 1000}]})
    with pytest.raises(SceneConfigError, match="newcomer_free_gifts"):
        await sw.scenes.set_config({"newcomer_free_gifts": -1})
    with pytest.raises(SceneConfigError, match="promo_account"):
        await sw.scenes.set_config({"promo_account": None})
    config = await sw.scenes.set_config({"newcomer_free_gifts": 3})
    assert config.newcomer_free_gifts == 3 and config.festival_permille == 1200
    assert (await sw.scenes.config()) == config


# ---------------------------------------------------------------- live rooms

TIERS = SceneConfig().live_tiers


async def room_world(sw: SceneWorld, viewers: int) -> None:
    w = sw.w
    await old_friends(w, "ann", "star", cards=100)
    await sw.rooms.open_wish("star", "note", 10)
    await sw.rooms.join("star", "ann", w.node)
    for i in range(viewers - 1):
        await sw.rooms.join("star", f"v{i}", w.node)


@pytest.mark.parametrize(
    ("viewers", "permille"),
    [(1, 1000), (9, 1000), (10, 1100), (99, 1100), (100, 1250), (999, 1250), (1000, 1500)],
)
async def test_each_viewer_tier_prices_the_quote(sw: SceneWorld, viewers: int, permille: int) -> None:
    await room_world(sw, viewers)
    quote = await sw.rooms.quote("ann", "star", "note", 2)
    assert (quote.viewers, quote.permille, quote.amount) == (viewers, permille, 20)
    assert quote.cost == -(-20 * permille // 1000)
    assert SceneConfig().tier_permille(viewers) == permille


async def test_a_quoted_gift_pays_the_quote_and_credits_the_leaderboard_and_the_wish(sw: SceneWorld) -> None:
    w = sw.w
    await room_world(sw, 10)
    quote = await sw.rooms.quote("ann", "star", "note", 3)
    gift = await give(w, "ann", "star", qty=3, quote_id=quote.quote_id)
    assert (gift.cost, gift.amount, gift.room) == (33, 30, "star")
    assert await refusal(give(w, "ann", "star", qty=3, quote_id=quote.quote_id)) is Refusal.QUOTE_EXPIRED
    await w.clearing.accept(gift.gift_id, "star")
    state = await sw.rooms.state("star", "ann")
    assert (state.wish_kind, state.wish_target, state.wish_progress) == ("note", 10, 3)
    assert (state.points, state.rank) == (33, 1)
    assert [(e.user, e.points, e.rank) for e in state.top] == [("ann", 33, 1)]


async def test_a_lapsed_quote_is_refused_and_a_mismatched_one_too(sw: SceneWorld) -> None:
    w = sw.w
    await room_world(sw, 1)
    quote = await sw.rooms.quote("ann", "star", "note", 1)
    assert await refusal(give(w, "ann", "star", qty=2, quote_id=quote.quote_id)) is Refusal.QUOTE_MISMATCH
    w.clock.now_ms = quote.expires_at_ms - 1
    fresh = await sw.rooms.quote("ann", "star", "note", 1)
    assert (await give(w, "ann", "star", quote_id=quote.quote_id)).cost == quote.cost
    w.clock.now_ms = fresh.expires_at_ms
    assert await refusal(give(w, "ann", "star", quote_id=fresh.quote_id)) is Refusal.QUOTE_EXPIRED


async def test_quotes_need_an_open_wish_and_a_viewer(sw: SceneWorld) -> None:
    w = sw.w
    await old_friends(w, "ann", "star")
    assert await refusal(sw.rooms.quote("ann", "star", "note", 1)) is Refusal.NO_WISH
    await sw.rooms.open_wish("star", "note", 5)
    assert await refusal(sw.rooms.quote("ann", "star", "note", 1)) is Refusal.NOT_IN_ROOM


async def test_leaderboard_ties_share_a_rank_and_list_by_user_id(sw: SceneWorld) -> None:
    w = sw.w
    await old_friends(w, "cat", "ann", "bea", "star", cards=100)
    await sw.rooms.open_wish("star", "note", 10)
    for user, qty in (("cat", 2), ("ann", 2), ("bea", 1)):
        await sw.rooms.join("star", user, w.node)
        quote = await sw.rooms.quote(user, "star", "note", qty)
        gift = await give(w, user, "star", qty=qty, quote_id=quote.quote_id)
        await w.clearing.accept(gift.gift_id, "star")
    state = await sw.rooms.state("star", "cat", top=1)
    assert [(e.user, e.points, e.rank) for e in state.top] == [("ann", 20, 1)]
    assert (state.points, state.rank) == (20, 1)
    full = await sw.rooms.state("star", "bea", top=3)
    assert [(e.user, e.rank) for e in full.top] == [("ann", 1), ("cat", 1), ("bea", 3)]
    assert full.rank == 3


async def test_a_viewer_on_two_devices_and_two_nodes_counts_once_and_a_dead_node_is_reaped(
    sw: SceneWorld,
) -> None:
    w = sw.w
    await old_friends(w, "ann", "bob", "star")
    await sw.rooms.open_wish("star", "note", 5)
    await w.presence.heartbeat("node-2")
    assert await sw.rooms.join("star", "ann", w.node) == 1
    assert await sw.rooms.join("star", "ann", w.node) == 1  # second device, same node
    assert await sw.rooms.join("star", "ann", "node-2") == 1  # third device, other node
    assert await sw.rooms.join("star", "bob", "node-2") == 2
    assert await sw.rooms.leave("star", "ann", w.node) == 2
    # node-2 dies: it stops beating, and the reaper drops its viewers.
    await w.tick(w.rules.node_ttl_ms)
    assert await w.presence.reap_dead_nodes() == ["node-2"]
    assert (await sw.rooms.state("star")).viewers == 1  # ann's remaining device on node-1
    assert await sw.rooms.leave("star", "ann", w.node) == 0
    assert await sw.rooms.leave("star", "ann", w.node) == 0  # a duplicate leave changes nothing


async def test_tier_table_must_be_monotone() -> None:
    with pytest.raises(SceneConfigError):
        SceneConfig(live_tiers=(LiveTier(0, 1000), LiveTier(10, 900)))
    with pytest.raises(SceneConfigError):
        SceneConfig(live_tiers=(LiveTier(5, 1000),))
    assert SceneConfig().festival_permille == 1200
    assert GiftState.ACCEPTED.value == "accepted"


async def test_a_stored_null_promotion_account_is_reported_and_can_be_repaired(sw: SceneWorld) -> None:
    """A hand edit storing ``null`` keeps the default and is listed; the API still writes."""
    await sw.w.redis.hset(sw.w.keys.scene_settings(), "promo_account", "null")
    sw.w.settings.invalidate()
    snapshot = await sw.w.settings.get()
    assert snapshot.scenes.promo_account == "promo"
    assert any("promo_account" in p for p in snapshot.problems)
    config = await sw.scenes.set_config({"points_per_card": 3})
    assert config.points_per_card == 3 and config.promo_account == "promo"
