"""Scenes end to end over real WebSocket connections: a festival gift from one linked app
to another, the admin API's validation, and a live room with a quote, a pushed leaderboard
and one viewer on two devices. The node_factory fixture checks the invariant at teardown.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from clearing.keys import DEFAULT_KEYS
from gateway import GatewayNode
from notecard.admin_client import AdminApiError, AdminClient
from notecard_sdk import GiftRefused, NotecardClient
from tests.gateway_fixtures import ClientFactory, NodeFactory, befriend_all, now_ms, token_for


async def test_festival_gift_across_apps_pays_perks_and_consumes_the_extra(
    admin: AdminClient, node: GatewayNode
) -> None:
    await befriend_all(admin, "alice", "bob", cards=10, age_days=30)
    start = now_ms() - 1000
    festival = await admin.put_festival("spring", start=start, end=start + 3_600_000, frame="lantern")
    assert festival["permille"] == 1200
    async with NotecardClient(node.url, token_for("alice", app="toutiao")) as alice, \
            NotecardClient(node.url, token_for("bob", app="huoshan")) as bob:
        await _festival_flow(alice, bob)
    assert (await admin.invariant())["ok"]


async def _festival_flow(alice: NotecardClient, bob: NotecardClient) -> None:
    gift = await alice.send_gift("bob", qty=1)
    assert (gift.cost, gift.amount, gift.festival) == (12, 10, "spring")
    await bob.accept((await bob.next_offer(5)).gift_id)
    alice_balance, bob_balance = await alice.balance(), await bob.balance()
    assert (alice_balance.available["note"], alice_balance.points) == (88, 11)
    assert (bob_balance.available["note"], bob_balance.points) == (110, 20)
    frame = await alice.redeem_frame("spring")
    assert frame.item == "frame:spring"
    with pytest.raises(GiftRefused) as again:
        await alice.redeem_frame("spring")
    assert again.value.code == "ALREADY_REDEEMED"


async def test_admin_validates_scene_settings_with_clear_errors(admin: AdminClient) -> None:
    with pytest.raises(AdminApiError) as unknown:
        await admin.set_scenes(newcomer_days=3)
    assert (unknown.value.status, unknown.value.code) == (400, "BAD_REQUEST")
    assert "newcomer_days" in unknown.value.message
    with pytest.raises(AdminApiError) as bad_time:
        await admin.put_festival("x", start="tomorrow", end="2026-02-18T00:00")
    assert "ISO" in bad_time.value.message
    ok = await admin.put_festival("qixi", start="2026-08-19T00:00", end="2026-08-20T00:00", multiplier=1.5)
    assert ok["start_ms"] == 1_787_068_800_000  # midnight in Asia/Shanghai
    with pytest.raises(AdminApiError) as overlap:
        await admin.put_festival("qixi2", start="2026-08-19T12:00", end="2026-08-21T00:00")
    assert "overlaps" in overlap.value.message
    assert (await admin.set_scenes(quote_ttl_ms=5000))["config"]["quote_ttl_ms"] == 5000
    assert [f["festival_id"] for f in (await admin.scenes())["festivals"]] == ["qixi"]


async def test_scene_settings_are_bounded_and_a_broken_document_is_shown_as_applied_and_repaired(
    admin: AdminClient, redis: aioredis.Redis
) -> None:
    with pytest.raises(AdminApiError) as too_many:
        await admin.set_scenes(points_per_card=1_000_001)
    assert (too_many.value.status, too_many.value.code) == (400, "BAD_REQUEST")
    assert "points_per_card" in too_many.value.message
    # an older version's settings without a field, and a hand edit with a string in it
    await redis.hset(DEFAULT_KEYS.scene_settings(), mapping={"frame_price_units": '"3"', "quote_ttl_ms": "5000"})
    shown = await admin.scenes()
    config = shown["config"]
    assert (config["points_per_card"], config["frame_price_units"], config["quote_ttl_ms"]) == (10, 0, 5000)
    assert [p.split(":")[0] for p in shown["problems"]] == ["scene setting frame_price_units"]
    repaired = await admin.set_scenes(frame_price_units=3)
    assert (repaired["config"]["frame_price_units"], repaired["config"]["quote_ttl_ms"]) == (3, 5000)
    assert (await admin.scenes())["problems"] == []


async def test_a_settings_change_through_one_node_applies_on_another_at_once(
    node: GatewayNode, node_factory: NodeFactory, admin: AdminClient
) -> None:
    """The write is announced over pub/sub; the other node reads the settings again on its
    next gift instead of when its cache ages (NOTECARD_SETTINGS_REFRESH_S, made long here)."""
    other = await node_factory(settings_refresh_s=3600)
    assert (await other.settings_cache.get()).scenes.points_per_card == 10
    await admin.set_scenes(points_per_card=7)  # through `node`
    deadline = asyncio.get_running_loop().time() + 10
    while (await other.settings_cache.get()).scenes.points_per_card != 7:
        assert asyncio.get_running_loop().time() < deadline, "the other node never applied the change"
        await asyncio.sleep(0.02)


async def test_a_request_failing_inside_the_node_answers_internal_is_counted_and_changes_nothing(
    admin: AdminClient, node: GatewayNode, connect: ClientFactory, redis: aioredis.Redis
) -> None:
    await befriend_all(admin, "alice", "bob", cards=10, age_days=30)
    alice, _ = await connect("alice"), await connect("bob")
    held = DEFAULT_KEYS.held("alice")
    await redis.hset(held, "note", "not a number")  # corrupted outside the scripts
    with pytest.raises(GiftRefused) as failed:
        await alice.send_gift("bob", gift_id="g-internal")
    assert failed.value.code == "INTERNAL" and "not a number" not in failed.value.message
    assert node.metrics.refusals.labels(code="INTERNAL")._value.get() == 1
    assert "notecard_refusals_total{code=\"INTERNAL\"} 1.0" in node.metrics.render().decode()
    await redis.hdel(held, "note")
    assert (await alice.balance()).available["note"] == 100  # nothing was taken
    assert (await alice.send_gift("bob", gift_id="g-internal")).state == "pending"


async def test_live_room_quote_gift_and_pushed_leaderboard(admin: AdminClient, connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "star", cards=10, age_days=30)
    star = await connect("star")
    wish = await star.open_wish("note", 5)
    assert (wish.wish_kind, wish.wish_target, wish.wish_progress) == ("note", 5, 0)
    phone, tablet = await connect("alice"), await connect("alice")
    assert (await phone.join_room("star")).viewers == 1
    assert (await tablet.join_room("star")).viewers == 1  # one viewer on two devices
    quote = await phone.quote("star", qty=2)
    assert (quote.cost, quote.amount, quote.viewers) == (20, 20, 1)
    gift = await phone.send_gift("star", qty=2, quote=quote.quote_id)
    assert gift.room == "star"
    with pytest.raises(GiftRefused) as used:
        await phone.send_gift("star", qty=2, quote=quote.quote_id)
    assert used.value.code == "QUOTE_EXPIRED"
    await star.accept((await star.next_offer(5)).gift_id)
    for _ in range(10):
        update = await tablet.next_room_update(5)
        if update.top:
            break
    assert [(e.user, e.points, e.rank) for e in update.top] == [("alice", 20, 1)]
    assert update.wish_progress == 2
    mine = await phone.room("star")
    assert (mine.points, mine.rank) == (20, 1)
    assert (await phone.leave_room("star")).viewers == 1
    assert (await tablet.leave_room("star")).viewers == 0


async def test_a_room_without_a_wish_reaches_the_client_without_one(admin: AdminClient, connect: ClientFactory) -> None:
    """A room whose streamer never opened a wish used to come back with wish_kind "False"
    and wish_target 0 (Lua's false for a missing hash field), a frame the SDK refused as
    malformed: nobody could look at such a room."""
    await befriend_all(admin, "streamer", "fan", cards=5, age_days=30)
    fan = await connect("fan")
    room = await fan.room("streamer")
    assert (room.room, room.viewers) == ("streamer", 0)
    assert (room.wish_kind, room.wish_target, room.wish_progress) == (None, None, None)
