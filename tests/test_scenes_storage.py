"""How the gift scripts read scene settings and festivals, against a real Redis.

The scripts read the few settings they need straight off the settings document's text and
decode it whole only when it is not in SceneConfig.to_json()'s layout; festivals come from a
schedule (a sorted set by start) that clearing/scenes.py rebuilds on every festival write,
with a scan of the festivals hash for data stored before the schedule existed. Every path
must give what decoding everything would: these tests compare them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from clearing import Clearing, GiftRules
from clearing.rules import DAY_MS
from clearing.scene_config import AppPerk, SceneConfig, SceneConfigError
from clearing.scenes import Scenes
from clearing.testing import World
from tests.test_drill_findings import promote_as_after_a_failover

_ids = itertools.count(1)


@pytest.fixture
async def w(redis: aioredis.Redis) -> AsyncIterator[World]:
    world = await World.build(redis, GiftRules(daily_send_limit=50, daily_receive_limit=50))
    yield world
    report = await world.check()
    assert report.ok, report.violations


async def users(w: World, *names: str, age_ms: int = 30 * DAY_MS) -> None:
    for u in names:
        await w.accounts.create_user(u, verified=True, created_at_ms=w.clock() - age_ms)
        await w.accounts.mint(u, "note", 10)
        await w.presence.connect(u, w.node)
    for a in names:
        for b in names:
            if a < b:
                await w.befriend(a, b)


async def give(clearing: Clearing, sender: str, recipient: str, qty: int = 1, app: str = "main") -> str:
    return (await clearing.reserve(f"g{next(_ids)}", sender, recipient, "note", qty, app=app)).gift_id


def expected_points(config: SceneConfig, qty: int, sender_app: str, recipient_app: str) -> tuple[int, int, bool]:
    base = qty * config.points_per_card
    sender, recipient = config.apps.get(sender_app, AppPerk()), config.apps.get(recipient_app, AppPerk())
    return (base + base * sender.sender_bonus_permille // 1000, base * recipient.recipient_multiplier_permille // 1000,
            sender.joint_campaign or recipient.joint_campaign)


#: App names that are also field names of the document, at both of its levels.
TRICKY_APPS = {
    "apps": AppPerk(sender_bonus_permille=10),
    "joint_campaign": AppPerk(recipient_multiplier_permille=3000),
    "points_per_card": AppPerk(sender_bonus_permille=500, joint_campaign=True),
    "sender_bonus_permille": AppPerk(recipient_multiplier_permille=1500),
    "main": AppPerk(sender_bonus_permille=250),
}
CONFIGS = {
    "defaults": SceneConfig(),
    "tricky apps": SceneConfig(points_per_card=7, apps=TRICKY_APPS),
    "no apps": SceneConfig(points_per_card=3, apps={}),
}
APP_PAIRS = [(s, r) for s in [*TRICKY_APPS, "toutiao", "huoshan", "duoshan", "nowhere"]
             for r in ("main", "huoshan", "joint_campaign", "apps", "nowhere")]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_scalars_the_scripts_read_come_before_the_first_nested_value(name: str) -> None:
    """The layout lib.lua's readers rely on (anything else is decoded whole, slower).
    quote_ttl_ms comes last: quote.lua decodes the document for the tiers anyway."""
    doc = CONFIGS[name].to_json()
    nested = min(doc.index("{", 1), doc.index("[", 1))
    assert doc[:nested].endswith('"apps":')
    for field, value in CONFIGS[name].to_plain().items():
        if not isinstance(value, dict | list | tuple) and field != "quote_ttl_ms":
            assert doc.index(f'"{field}":') < nested, field


async def store(w: World, config: SceneConfig, source: str) -> Clearing:
    """Make ``config`` the settings the scripts see, from ``source``; the clearing to use."""
    if source == "stored":
        await Scenes(w.redis, w.rules, w.keys, w.clock).set_config(config.to_plain())
    elif source == "foreign layout":
        # Another key order and spacing: read by decoding it whole.
        await w.redis.set(w.keys.scene_config(), json.dumps(config.to_plain(), sort_keys=True, indent=1))
    else:  # the caller's defaults, nothing stored
        return Clearing(w.redis, w.rules, w.keys, w.clock, scenes=config)
    return w.clearing


@pytest.mark.parametrize("source", ["stored", "defaults", "foreign layout"])
@pytest.mark.parametrize("name", list(CONFIGS))
async def test_points_and_perks_match_the_settings_whatever_the_document(w: World, name: str, source: str) -> None:
    config = CONFIGS[name]
    clearing = await store(w, config, source)
    senders = [f"s{i}" for i in range(len(APP_PAIRS))]
    await users(w, "rcp", *senders)
    totals = {"rcp": 0}
    for sender, (sender_app, recipient_app) in zip(senders, APP_PAIRS, strict=True):
        gift = await give(clearing, sender, "rcp", qty=2, app=sender_app)
        await clearing.accept(gift, "rcp", app=recipient_app)
        sent, received, joint = expected_points(config, 2, sender_app, recipient_app)
        view = await Scenes(w.redis, w.rules, w.keys, w.clock).points(sender)
        assert (view.points, view.joint_campaign) == (sent, joint), (sender_app, recipient_app)
        totals["rcp"] += received
    assert (await Scenes(w.redis, w.rules, w.keys, w.clock).points("rcp")).points == totals["rcp"]


@pytest.mark.parametrize("source", ["stored", "defaults", "foreign layout"])
async def test_newcomer_settings_match_whatever_the_document(w: World, source: str) -> None:
    config = SceneConfig(newcomer_age_ms=2 * DAY_MS, newcomer_free_gifts=2, promo_account="promo.v2:x-1")
    clearing = await store(w, config, source)
    await w.accounts.create_user("promo.v2:x-1", verified=True, created_at_ms=0)
    await w.accounts.mint("promo.v2:x-1", "note", 10)
    await users(w, "old", "bob")
    await w.accounts.create_user("new", verified=True, created_at_ms=w.clock() - 2 * DAY_MS + 1)
    await w.accounts.mint("new", "note", 10)
    await w.befriend("new", "bob")
    payers = [(await clearing.reserve(f"g{next(_ids)}", "new", "bob", "note", 1)).payer for _ in range(3)]
    assert payers == ["promo.v2:x-1", "promo.v2:x-1", None]
    assert (await clearing.reserve(f"g{next(_ids)}", "old", "bob", "note", 1)).payer is None


async def test_frame_price_and_mentor_rewards_come_from_a_foreign_layout_too(w: World) -> None:
    await w.redis.set(w.keys.scene_config(), json.dumps(
        {"frame_price_units": 3, "mentor_reward_units": 4, "apprentice_reward_units": 5, "promo_account": "pr",
         "newcomer_age_ms": DAY_MS, "live_tiers": [{"min_viewers": 0, "permille": 1000}]}, indent=2))
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    await users(w, "ann", "pr")
    await w.accounts.create_user("kid", verified=True)
    await scenes.put_festival("f", "F", w.clock(), w.clock() + 1000, frame="lantern")
    await scenes.redeem_frame("ann", "f")
    assert (await w.clearing.balances("ann")).available["note"] == 100 - 3
    bound = await scenes.bind_mentor("kid", "ann")
    assert (bound.mentor_reward, bound.apprentice_reward) == (4, 5)


# ---------------------------------------------------------------- festivals


async def cost_now(w: World) -> int:
    gift = await give(w.clearing, "ann", "bob")
    await w.clearing.decline(gift, "bob")
    return (await w.clearing.get_gift(gift)).cost  # type: ignore[union-attr]


async def test_festivals_stored_before_the_schedule_still_price_until_the_next_write_adds_it(w: World) -> None:
    await users(w, "ann", "bob")
    now = w.clock()
    old = {"name": "Old", "start_ms": now - 1000, "end_ms": now + 1000, "permille": 1500, "frame": None}
    await w.redis.hset(w.keys.festivals(), "old", orjson.dumps(old))
    assert await cost_now(w) == 15
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    await scenes.put_festival("later", "Later", now + 5000, now + 6000, multiplier=2)
    assert await w.redis.zrange(w.keys.festival_schedule(), 0, -1) == [
        b"", f"{now + 1000}:1500:old".encode(), f"{now + 6000}:2000:later".encode()]
    assert await cost_now(w) == 15
    w.clock.now_ms = now + 1000
    assert await cost_now(w) == 10
    w.clock.now_ms = now + 5000
    assert await cost_now(w) == 20


async def test_the_schedule_follows_every_write_and_delete(w: World) -> None:
    await users(w, "ann", "bob")
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    now = w.clock()
    await scenes.put_festival("a", "A", now - 5000, now - 1000)  # over: the latest start, but ended
    assert await cost_now(w) == 10
    await scenes.put_festival("b", "B", now - 10_000, now - 5000)
    await scenes.put_festival("a", "A", now - 5000, now + 1, multiplier=1.1)  # replaced: runs again
    assert await cost_now(w) == 11
    assert await scenes.delete_festival("a")
    assert not await scenes.delete_festival("a")
    assert await cost_now(w) == 10
    assert [f.festival_id for f in await scenes.festivals()] == ["b"]
    assert await scenes.delete_festival("b")
    # no festival left: the schedule still exists, so the hash is not scanned
    assert await w.redis.zrange(w.keys.festival_schedule(), 0, -1, withscores=True) == [(b"", -math.inf)]
    assert await cost_now(w) == 10


async def test_concurrent_overlapping_festivals_store_one(w: World) -> None:
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    now = w.clock()
    results = await asyncio.gather(
        *(scenes.put_festival(f"f{i}", "F", now + i, now + 1000 + i) for i in range(4)), return_exceptions=True)
    stored = await scenes.festivals()
    assert len(stored) == 1
    assert sum(isinstance(r, SceneConfigError) for r in results) == 3
    members = await w.redis.zrange(w.keys.festival_schedule(), 0, -1)
    assert members == [b"", f"{stored[0].end_ms}:1200:{stored[0].festival_id}".encode()]


async def test_a_refused_festival_write_changes_nothing(w: World) -> None:
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    now = w.clock()
    await scenes.put_festival("a", "A", now, now + 1000)
    before = await w.redis.zrange(w.keys.festival_schedule(), 0, -1, withscores=True)
    with pytest.raises(SceneConfigError, match="overlaps"):
        await scenes.put_festival("b", "B", now + 500, now + 2000)
    assert await w.redis.zrange(w.keys.festival_schedule(), 0, -1, withscores=True) == before
    assert [f.festival_id for f in await scenes.festivals()] == ["a"]


# ---------------------------------------------------------------- stream epochs


async def test_one_resolve_gives_both_users_a_new_epoch_after_the_replication_id_changes(w: World) -> None:
    """The replication id is read once per script run; both outcome events of an accept
    must still see the new one."""
    await users(w, "ann", "bob")
    gift = await give(w.clearing, "ann", "bob")
    before = {u: (await w.events.replay(u, None, None)).epoch for u in ("ann", "bob")}
    await promote_as_after_a_failover(w.redis)
    await w.clearing.accept(gift, "bob")
    for user in ("ann", "bob"):
        replay = await w.events.replay(user, before[user], 0)
        assert replay.epoch != before[user] and not replay.recovered
        assert [(e.kind, e.offset) for e in replay.events] == [("outcome", 1)]
