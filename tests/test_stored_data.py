"""Stored data the scripts and Scenes did not write, against a real Redis: scene settings from
an older version or a hand edit, festival entries, quotes, room and user hashes, follows,
ledger counters, the points log, the ledger stream and the webhooks' dead letters.

The rules under test: settings are read field by field in Python (clearing/settings.py) and
a field that does not read keeps its default, exactly as the admin API shows it; a script
reads, checks and computes everything before its first write (lib.lua), so an operation
either does what it should or changes nothing (a refusal, or a CORRUPT error for a ledger
counter it must change); and the conservation invariant holds after every step. The fuzz
test stores random and broken data between random operations and checks all of that after
each one, on the one-script path and on the cross-shard steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from redis import exceptions as rx

from clearing import GiftRules, GiftState, Refusal, Refused
from clearing.errors import StepRefused
from clearing.keys import DEFAULT_KEYS
from clearing.ledger import ledger_streams, reconcile
from clearing.lua import MAX_SAFE_INT
from clearing.odds import OddsEntry
from clearing.rooms import Rooms
from clearing.rules import DAY_MS
from clearing.scene_config import INT_RANGES, MAX_PERMILLE, AppPerk, SceneConfig, SceneConfigError
from clearing.scenes import Scenes
from clearing.skins import Skin
from clearing.slots import tag_of
from clearing.testing import World
from gateway.webhook_letters import DeadLetter, DeadLetters
from notecard.local_redis import LocalRedis
from tests.test_drill_findings import promote_as_after_a_failover

UNIT = GiftRules().units_per_card
_ids = itertools.count(1)


@pytest.fixture
async def w(redis: aioredis.Redis) -> AsyncIterator[World]:
    world = await World.build(redis, GiftRules(daily_send_limit=50, daily_receive_limit=50))
    yield world
    report = await world.check()
    assert report.ok, report.violations


def scenes_of(w: World) -> Scenes:
    return Scenes(w.topology, w.rules, w.keys, w.clock, settings=w.settings)


def rooms_of(w: World) -> Rooms:
    return Rooms(w.topology, w.rules, w.keys, w.clock, settings=w.settings)


async def old_friends(w: World, *users: str, cards: int = 10) -> None:
    for u in users:
        await w.accounts.create_user(u, verified=True, created_at_ms=w.clock() - 30 * DAY_MS)
        if cards:
            await w.accounts.mint(u, "note", cards)
        await w.presence.connect(u, w.node)
    for a in users:
        for b in users:
            if a < b:
                await w.befriend(a, b)


async def snapshot(redis: aioredis.Redis) -> dict[bytes, bytes | None]:
    """Every key's DUMP, refusal memories and request rates aside (a refused send writes its
    refusal; a request counts against its user's rate whatever its answer)."""
    keys = [k async for k in redis.scan_iter(count=1000) if b":refused:" not in k and not k.endswith(b":rate")]
    return {k: await redis.dump(k) for k in sorted(keys)}


async def unchanged_after(redis: aioredis.Redis, call: Awaitable[object]) -> BaseException:
    """Run ``call``, which must fail, and check that it changed nothing; its exception."""
    before = await snapshot(redis)
    with pytest.raises((Refused, StepRefused)) as info:
        await call
    assert await snapshot(redis) == before
    return info.value


def expected_points(config: SceneConfig, qty: int, sender_app: str, recipient_app: str) -> tuple[int, int]:
    base = qty * config.points_per_card
    sender, recipient = config.apps.get(sender_app, AppPerk()), config.apps.get(recipient_app, AppPerk())
    return base + base * sender.sender_bonus_permille // 1000, base * recipient.recipient_multiplier_permille // 1000


# ---------------------------------------------------------------- settings


async def test_a_setting_that_does_not_read_keeps_its_default_and_is_reported(w: World) -> None:
    """An older version's field, or a hand edit: the gift goes through with the default, as
    the admin API shows it; before, an accept could credit the recipient and then fail."""
    await old_friends(w, "ann", "bob")
    await w.redis.hset(w.keys.scene_settings(), mapping={"points_per_card": '"ten"', "frame_price_units": "{",
                                                           "newcomer_free_gifts": "2.0", "nonsense": "1"})
    scenes = scenes_of(w)
    config = await scenes.config()
    assert (config.points_per_card, config.frame_price_units, config.newcomer_free_gifts) == (10, 0, 2)
    problems = await scenes.problems()
    assert {p.split(":")[0] for p in problems} == {"scene setting points_per_card", "scene setting frame_price_units",
                                                   "scene setting newcomer_free_gifts", "scene setting nonsense"}
    gift = await w.clearing.reserve("g1", "ann", "bob", "note", 2)
    assert (await w.clearing.accept(gift.gift_id, "bob")).gift.state is GiftState.ACCEPTED
    assert [(await scenes.points(u)).points for u in ("ann", "bob")] == [20, 20]
    repaired = await scenes.set_config({"points_per_card": 3})  # a write stores a whole valid set
    assert repaired.points_per_card == 3 and await scenes.problems() == ()


async def test_a_negative_zero_or_a_float_setting_is_read_as_the_whole_number_it_is(w: World) -> None:
    await old_friends(w, "promo", "ann", cards=10)
    await w.accounts.create_user("kid", verified=True)
    await w.redis.hset(w.keys.scene_settings(), mapping={"mentor_reward_units": "-0.0", "apprentice_reward_units": "3"})
    bound = await scenes_of(w).bind_mentor("kid", "ann")
    assert (bound.mentor_reward, bound.apprentice_reward) == (0, 3)
    assert [(await w.clearing.balances(u)).available["note"] for u in ("promo", "ann", "kid")] == [97, 100, 3]


async def test_a_festival_that_does_not_read_prices_nothing(w: World) -> None:
    """A stored multiplier below one made a gift cost less than it credits: cards from nothing."""
    await old_friends(w, "ann", "bob")
    now = w.clock()
    for junk in (json.dumps({"name": "F", "start_ms": now - 1, "end_ms": now + 1000, "permille": 0}), "{", "[]"):
        await w.redis.hset(w.keys.festivals(), "broken", junk)
        gift = await w.clearing.reserve(f"g{next(_ids)}", "ann", "bob", "note", 1)
        assert (gift.cost, gift.amount, gift.festival) == (UNIT, UNIT, None)
        await w.clearing.decline(gift.gift_id, "bob")
    assert any("broken" in p for p in await scenes_of(w).problems())


async def test_concurrent_overlapping_festivals_store_one(w: World) -> None:
    scenes = scenes_of(w)
    now = w.clock()
    results = await asyncio.gather(
        *(scenes.put_festival(f"f{i}", "F", now + i, now + 1000 + i) for i in range(4)), return_exceptions=True)
    assert len(await scenes.festivals()) == 1
    assert sum(isinstance(r, SceneConfigError) for r in results) == 3


async def test_a_refused_festival_write_changes_nothing(w: World) -> None:
    scenes = scenes_of(w)
    now = w.clock()
    await scenes.put_festival("a", "A", now, now + 1000)
    before = await w.redis.hgetall(w.keys.festivals())
    with pytest.raises(SceneConfigError, match="overlaps"):
        await scenes.put_festival("b", "B", now + 500, now + 2000)
    assert await w.redis.hgetall(w.keys.festivals()) == before


async def test_a_write_through_one_cache_reaches_another_at_its_next_read(w: World) -> None:
    """Two nodes' caches: the writer's own reads it at once; another within its age (its
    node also drops it on the announcement: tests/test_scenes_gateway.py)."""
    other = dataclasses.replace(w, settings=type(w.settings)(w.redis, w.keys, max_age_s=3600))
    assert (await other.settings.get()).scenes.points_per_card == 10
    await scenes_of(w).set_config({"points_per_card": 4})
    assert (await w.settings.get()).scenes.points_per_card == 4
    assert (await other.settings.get()).scenes.points_per_card == 10  # cached
    other.settings.invalidate()  # what the announcement does on a node
    assert (await other.settings.get()).scenes.points_per_card == 4


# ---------------------------------------------------------------- quotes, rooms, presence


async def test_a_quote_that_does_not_read_is_no_quote(w: World) -> None:
    await old_friends(w, "ann", "bob")
    quote = {"recipient": "bob", "kind": "note", "qty": 1, "cost": 1, "amount": UNIT,
             "expires_at_ms": w.clock() + 10_000}
    key = w.keys.quote("ann", "q1")
    await w.redis.hset(key, mapping=quote)  # type: ignore[arg-type]
    refused = await unchanged_after(w.redis, w.clearing.reserve("g1", "ann", "bob", "note", 1, quote_id="q1"))
    assert isinstance(refused, Refused) and refused.code is Refusal.QUOTE_EXPIRED  # cost below its amount
    await w.redis.hset(key, mapping={"cost": 2 * UNIT, "expires_at_ms": "soon"})
    refused = await unchanged_after(w.redis, w.clearing.reserve("g2", "ann", "bob", "note", 1, quote_id="q1"))
    assert isinstance(refused, Refused) and refused.code is Refusal.QUOTE_EXPIRED


async def test_connection_and_viewer_counts_that_do_not_read_count_as_zero(w: World) -> None:
    rooms = rooms_of(w)
    await old_friends(w, "ann", "star")
    await w.redis.hset(w.keys.presence("ann"), w.node, "x")
    await w.presence.connect("ann", w.node)
    assert await w.redis.hget(w.keys.presence("ann"), w.node) == b"1"
    assert await rooms.open_wish("star", "note", 3) == 1
    assert await rooms.join("star", "ann", w.node) == 1
    await w.redis.hset(w.keys.room_conns("star"), f"{w.node}|ann", "many")
    await w.redis.hset(w.keys.room_viewers("star"), "ann", "many")
    assert await rooms.leave("star", "ann", w.node) == 0
    assert await rooms.join("star", "ann", "node-2") == 1
    await w.redis.hset(w.keys.room_viewers("star"), "ann", "x")
    await w.presence.heartbeat("node-2")
    await w.tick(w.rules.node_ttl_ms + 1)
    assert await w.presence.reap_dead_nodes() == ["node-2"]
    assert (await rooms.state("star")).viewers == 0
    await w.redis.hset(w.keys.presence("ann"), w.node, "y")
    await w.presence.disconnect("ann", w.node)
    assert await w.redis.hget(w.keys.presence("ann"), w.node) is None


async def test_an_operators_disconnect_reads_presence_counts_that_do_not_read_as_zero_and_writes_nothing(
        w: World) -> None:
    await old_friends(w, "ann", cards=0)
    await w.presence.connect("ann", "node-2")
    assert await w.accounts.disconnect("ann") == 2
    for junk in ("x", "-3", "0", ""):
        await w.redis.hset(w.keys.presence("ann"), "node-2", junk)
        before = await snapshot(w.redis)
        assert await w.accounts.disconnect("ann") == 1  # w.node only: node-2's count is not a count
        assert await snapshot(w.redis) == before
    assert await w.accounts.disconnect("nobody") == 0


async def test_a_room_version_that_does_not_read_stops_a_wish_before_it_is_written(w: World) -> None:
    await old_friends(w, "star")
    await w.redis.hset(w.keys.room("star"), "version", "1.5")
    error = await unchanged_after(w.redis, rooms_of(w).open_wish("star", "note", 3))
    assert isinstance(error, StepRefused) and error.code == "CORRUPT"


# ---------------------------------------------------------------- ledger counters


@pytest.mark.parametrize("saga", [False, True])
async def test_a_corrupt_hold_stops_a_send_before_its_first_write(redis: aioredis.Redis, saga: bool) -> None:
    w = await World.build(redis, force_saga=saga)
    await old_friends(w, "ann", "bob")
    await w.redis.hset(w.keys.held("ann"), "note", "1.5")
    send = w.clearing.reserve("g1", "ann", "bob", "note", 1)
    if saga:  # the recipient's step ran; the sender's refused whole, and the admission is voided
        with pytest.raises(StepRefused):
            await send
        await w.tick(w.clearing.constant_args["saga_ms"] + 1)
        await w.clearing.expire_due()
    else:
        error = await unchanged_after(w.redis, send)
        assert isinstance(error, StepRefused) and error.code == "CORRUPT"
    await w.redis.hdel(w.keys.held("ann"), "note")
    assert (await w.clearing.reserve("g2", "ann", "bob", "note", 1)).state is GiftState.PENDING
    assert (await w.check()).ok


async def test_a_ledger_key_that_is_no_stream_stops_every_change_of_value_before_its_first_write(w: World) -> None:
    await old_friends(w, "ann", "bob")
    pending = await w.clearing.reserve("g1", "ann", "bob", "note", 1)
    streams = await ledger_streams(w.redis, w.keys)
    assert len(streams) == 1
    entries = await w.redis.xrange(streams[0])
    await w.redis.delete(streams[0])
    await w.redis.set(streams[0], "not a stream")
    for call in (w.clearing.reserve("g2", "ann", "bob", "note", 1), w.clearing.accept("g1", "bob"),
                 w.accounts.mint("ann", "note", 1)):
        error = await unchanged_after(w.redis, call)
        assert isinstance(error, StepRefused) and error.code == "CORRUPT"
    await w.presence.connect("cat", w.node)  # what moves no value goes on
    await w.redis.delete(streams[0])
    for stream_id, fields in entries:
        await w.redis.xadd(streams[0], fields, id=stream_id)
    assert (await w.clearing.accept(pending.gift_id, "bob")).gift.state is GiftState.ACCEPTED
    assert (await reconcile(w.redis, w.keys)).ok


@pytest.mark.parametrize("corrupt", ["dead", "retry"])
async def test_a_webhook_list_that_is_no_list_stops_a_dead_letter_call_before_its_first_write(
        redis: aioredis.Redis, corrupt: str) -> None:
    letters = DeadLetters(redis, DEFAULT_KEYS, keep=3)
    sent_back = DeadLetter({"id": "a.1"}, "http://127.0.0.1:9/", 2, "HTTP 500", 1).dumps()
    await redis.rpush(DEFAULT_KEYS.webhooks_retry(), sent_back)
    await redis.lpush(DEFAULT_KEYS.webhooks_dead(), DeadLetter({"id": "b.1"}, "http://127.0.0.1:9/", 2, "x", 2).dumps())
    await redis.set(DEFAULT_KEYS.webhooks_dead() if corrupt == "dead" else DEFAULT_KEYS.webhooks_retry(), b"hand edit")
    before = await snapshot(redis)
    for call in (letters.add(DeadLetter({"id": "c.1"}, "http://127.0.0.1:9/", 2, "x", 3), replacing=sent_back),
                 letters.retry_all()):
        with pytest.raises(rx.ResponseError, match="CORRUPT"):
            await call
        assert await snapshot(redis) == before


async def test_the_dead_letters_stay_bounded_and_unreadable_ones_are_shown_as_such(redis: aioredis.Redis) -> None:
    letters = DeadLetters(redis, DEFAULT_KEYS, keep=3)
    for i in range(5):
        await letters.add(DeadLetter({"id": f"e.{i}"}, "http://127.0.0.1:9/", 1, "x", i))
    shown, total = await letters.newest(10)
    assert total == 3 and [d["event"]["id"] for d in shown] == ["e.4", "e.3", "e.2"]
    for junk in (b"[1, 2]", b'{"event": 1, "url": "u", "attempts": 1, "error": "", "at_ms": 1}', b"\xff"):
        await redis.lpush(DEFAULT_KEYS.webhooks_dead(), junk)
        assert "unreadable" in (await letters.newest(1))[0][0]


async def test_a_corrupt_counter_stops_an_accept_whole_and_the_sweeper_passes_it(w: World) -> None:
    await old_friends(w, "ann", "bob", "cat")
    await scenes_of(w).put_festival("f", "F", w.clock() - 1, w.clock() + DAY_MS)
    stuck = await w.clearing.reserve("g1", "ann", "bob", "note", 1)  # cost 12: 2 consumed on accept
    totals = w.keys.totals(tag_of("ann"))
    await w.redis.hset(totals, "consumed:note", "many")
    error = await unchanged_after(w.redis, w.clearing.accept(stuck.gift_id, "bob"))
    assert isinstance(error, StepRefused) and error.code == "CORRUPT"
    # its refund needs other counters, and those can be broken too: the sweep passes that one
    await w.redis.hset(w.keys.balance("ann"), "note", "x")
    others = [await w.clearing.reserve(f"o{i}", "cat", "bob", "note", 1) for i in range(3)]
    await w.tick(w.rules.confirm_window_ms)
    assert {g.gift_id for g in await w.clearing.expire_due()} == {g.gift_id for g in others}
    await w.redis.hset(w.keys.balance("ann"), "note", 100 - 12)
    await w.redis.hdel(totals, "consumed:note")
    assert [g.gift_id for g in await w.clearing.expire_due()] == [stuck.gift_id]


async def test_points_stop_at_two_to_the_53_and_a_total_beyond_stops_the_accept(w: World) -> None:
    """A total Redis can still increment but Lua cannot count (beyond 2^53) stops the accept
    before it moves anything (it used to fail after the cards had moved); one just below is
    filled up to it and no further."""
    await old_friends(w, "ann", "bob", "cat", cards=101)
    await scenes_of(w).set_config({"points_per_card": 1_000_000})
    await w.redis.hset(w.keys.points("ann"), mapping={"total": MAX_SAFE_INT - 5, "trimmed": MAX_SAFE_INT - 5})
    gift = await w.clearing.reserve("g1", "ann", "bob", "note", 100)
    assert (await w.clearing.accept(gift.gift_id, "bob")).gift.state is GiftState.ACCEPTED
    assert (await scenes_of(w).points("ann")).points == MAX_SAFE_INT
    await w.redis.hset(w.keys.points("cat"), mapping={"total": 2**63 - 10, "trimmed": 2**63 - 10})
    gift = await w.clearing.reserve("g2", "ann", "cat", "note", 1)
    error = await unchanged_after(w.redis, w.clearing.accept(gift.gift_id, "cat"))
    assert isinstance(error, StepRefused) and error.code == "CORRUPT"
    await w.redis.delete(w.keys.points("cat"), w.keys.point_log("cat"))
    await w.clearing.accept(gift.gift_id, "cat")


async def test_the_points_log_stays_bounded_and_every_total_still_adds_up(redis: aioredis.Redis) -> None:
    w = await World.build(redis, GiftRules(daily_send_limit=50, daily_receive_limit=50, points_log_maxlen=20))
    await old_friends(w, "ann", "bob", cards=60)
    scenes = scenes_of(w)
    lengths = []
    for i in range(40):
        sender, recipient = ("ann", "bob") if i % 2 else ("bob", "ann")
        gift = await w.clearing.reserve(f"g{next(_ids)}", sender, recipient, "note", 1)
        await w.clearing.accept(gift.gift_id, recipient)
        lengths.append(await redis.xlen(w.keys.point_log("ann")))
    assert max(lengths) <= 20  # 40 awards each: trimmed in batches, the sums kept
    assert [(await scenes.points(u)).points for u in ("ann", "bob")] == [400, 400]
    assert int(await redis.hget(w.keys.points("ann"), "trimmed") or 0) > 0
    report = await w.check()
    assert report.ok, report.violations
    # and the check still catches a total that does not add up
    await redis.hincrby(w.keys.points("ann"), "total", 1)
    assert any("points of ann" in v for v in (await w.check()).violations)
    await redis.hincrby(w.keys.points("ann"), "total", -1)


# ---------------------------------------------------------------- stream epochs


async def test_one_resolve_gives_both_users_a_new_epoch_after_the_replication_id_changes(w: World) -> None:
    """The replication id is read once per script run; both outcome events of an accept
    must still see the new one."""
    await old_friends(w, "ann", "bob")
    gift = await w.clearing.reserve("g1", "ann", "bob", "note", 1)
    before = {u: (await w.events.replay(u, None, None)).epoch for u in ("ann", "bob")}
    await promote_as_after_a_failover(w.redis)  # type: ignore[arg-type]
    await w.clearing.accept(gift.gift_id, "bob")
    for user in ("ann", "bob"):
        replay = await w.events.replay(user, before[user], 0)
        assert replay.epoch != before[user] and not replay.recovered
        assert [(e.kind, e.offset) for e in replay.events] == [("outcome", 1)]


# ---------------------------------------------------------------- the fuzz test

USERS = ("ann", "bob", "kid", "promo", "star")
APPS = ("main", "toutiao", "huoshan", "duoshan", "Bad App")
JUNK = st.sampled_from([None, True, False, -1, -(2**70), 2**40 + 1, 2**53, 2**64, 10**30, 1.5, -0.0, 1e308,
                        "", "7", "promo", [], {}, [1], {"a": 1}])


def _whole_or_junk(low: int, high: int) -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(low, high), st.integers(low, high).map(float), JUNK)


_perk = st.fixed_dictionaries({}, optional={
    "sender_bonus_permille": _whole_or_junk(0, MAX_PERMILLE),
    "recipient_multiplier_permille": _whole_or_junk(1000, MAX_PERMILLE),
    "joint_campaign": st.one_of(st.booleans(), JUNK),
})
_tier = st.fixed_dictionaries({"min_viewers": _whole_or_junk(0, 3), "permille": _whole_or_junk(1000, 3000)})
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    **{name: _whole_or_junk(low, high) for name, (low, high) in INT_RANGES.items()},
    "newcomer_age_ms": st.one_of(st.sampled_from([DAY_MS, 7 * DAY_MS]), JUNK),
    "promo_account": st.one_of(st.sampled_from(["promo", "ann", "nobody"]), JUNK),
    "apps": st.one_of(JUNK, st.dictionaries(st.sampled_from(APPS), st.one_of(_perk, JUNK), max_size=4)),
    "live_tiers": st.one_of(JUNK, st.lists(_tier, min_size=1, max_size=3)),
    "extra": JUNK,
}
_field_value = st.sampled_from(sorted(_FIELDS)).flatmap(
    lambda name: st.tuples(st.just(name), st.one_of(_FIELDS[name].map(json.dumps), st.binary(max_size=12))))
_valid_config = st.builds(
    SceneConfig, newcomer_free_gifts=st.integers(0, 3), mentor_reward_units=st.integers(0, 30),
    points_per_card=st.integers(0, 50), frame_price_units=st.integers(0, 30),
    promo_account=st.sampled_from(["promo", "ann"]),
)
_FESTIVAL_JUNK = st.one_of(
    st.just(b"{"),
    st.fixed_dictionaries({"name": st.one_of(st.just("F"), JUNK)}, optional={
        "start_ms": st.one_of(st.just(0), JUNK), "end_ms": st.one_of(st.just(2**50), JUNK),
        "permille": _whole_or_junk(0, 3000), "frame": st.one_of(st.just("lantern"), JUNK), "extra": JUNK,
    }).map(lambda d: json.dumps(d).encode()),
)

user = st.sampled_from(USERS)
sender = st.sampled_from(USERS[:3])  # the promotion account and the streamer mostly receive
STORE = st.one_of(  # data put in place of what the scripts and Scenes would write
    st.tuples(st.just("setting"), _field_value),
    st.tuples(st.just("configure"), _valid_config),
    st.tuples(st.just("festival"), st.sampled_from([1.0, 1.25, 3.0]), st.booleans()),  # multiplier, frame
    st.tuples(st.just("festival junk"), _FESTIVAL_JUNK),
    st.tuples(st.just("regional junk"), user, st.sampled_from(["region", "odds", "skins"]),
              st.sampled_from(["", "x", "sea", "SEA", "{", "[]", '{"current": {}}', '{"kind": "note"}'])),
    st.tuples(st.just("quote junk"), st.integers(0, 99), st.sampled_from(["cost", "qty", "expires_at_ms", "kind"]),
              st.sampled_from(["", "1", "-5", "x", "1.5", "99999999999999999999", "bob"])),
    st.tuples(st.just("room junk"), st.sampled_from(["wish_progress", "version", "streamer", "wish_kind"]),
              st.sampled_from(["", "x", "1.5", "-3", "star", "note", "99999999999999999999"])),
    st.tuples(st.just("user junk"), user, st.sampled_from(["x", "", "1.5", "-1", "0"])),
    st.tuples(st.just("follow junk"), user, user, st.sampled_from(["x", "1e3", " 5", "0"])),
    # the sweep index: lost, holding what names no slot, or putting users' slots off forever
    st.tuples(st.just("index junk"), st.sampled_from(["delete", "junk", "late"])),
    # The risk engine's state (risk/actions.py writes it; the send scripts read it).
    st.tuples(st.just("risk junk"), user, st.sampled_from(["frozen_until", "limited", "banned", "dev:phone-1", "tier"]),
              st.sampled_from(["", "x", "1", "0", "1.5", "-1", "99999999999999999999", "4102444800000"])),
)
ACT = st.one_of(  # the operations, through the clearing API
    st.tuples(st.just("reserve"), sender, user, st.integers(1, 3), st.sampled_from(APPS)),
    st.tuples(st.just("device reserve"), sender, user, st.sampled_from(["phone-1", "phone-2"])),
    st.tuples(st.just("answer"), st.integers(0, 99), st.booleans(), st.sampled_from(APPS)),  # gift, accept?
    st.tuples(st.just("quote"), sender, st.integers(1, 3)),
    st.tuples(st.just("quoted reserve"), st.integers(0, 99)),
    st.tuples(st.just("expire"), st.sampled_from([1, 30_000, 61_000])),
    st.tuples(st.just("redeem"), user),
    st.tuples(st.just("bind"), user, user),
    st.tuples(st.just("open wish"), st.integers(1, 5)),
    st.tuples(st.just("join"), user),
)
OPS = st.one_of(STORE, ACT, ACT)


@dataclasses.dataclass
class Fuzz:
    w: World
    scenes: Scenes
    rooms: Rooms
    gifts: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, recipient)
    quotes: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)  # (id, sender, qty)


async def _setup(redis: aioredis.Redis, saga: bool) -> Fuzz:
    await redis.flushall()
    w = await World.build(redis, GiftRules(daily_send_limit=50, daily_receive_limit=50, node_ttl_ms=10**12,
                                           points_log_maxlen=10), force_saga=saga)
    fz = Fuzz(w, scenes_of(w), rooms_of(w))
    for name in USERS:
        age = 2 * DAY_MS if name == "kid" else 30 * DAY_MS
        await w.accounts.create_user(name, verified=True, created_at_ms=w.clock() - age)
        await w.accounts.mint(name, "note", 50)
        await w.presence.connect(name, w.node)
    for a in USERS:
        for b in USERS:
            if a < b:
                await w.befriend(a, b)
    await fz.rooms.open_wish("star", "note", 5)
    for name in USERS[:3]:
        await fz.rooms.join("star", name, w.node)
    await fz.scenes.put_festival("f0", "F", w.clock() - 1000, w.clock() + DAY_MS, frame="lantern")
    # a region with published odds and its own card art: accepts there draw a lucky card
    await fz.scenes.publish_odds("lucky", [OddsEntry(bonus=0, weight=1), OddsEntry(bonus=1, weight=1)])
    await fz.scenes.put_region("sea", {"lucky_odds": "lucky"})
    await fz.scenes.put_skin(Skin("tiger", "note", "Tiger", "https://cdn.example/tiger.png", ("sea",)))
    for name in ("bob", "star"):
        await w.accounts.set_flags(name, region="sea")
    return fz


async def _points(fz: Fuzz, *users: str) -> list[int]:
    return [(await fz.scenes.points(u)).points for u in users]


async def _operate(fz: Fuzz, op: tuple[Any, ...]) -> object:
    w, name = fz.w, op[0]
    now = w.clock()
    if name == "setting":
        return await w.redis.hset(w.keys.scene_settings(), op[1][0], op[1][1])
    if name == "configure":
        return await fz.scenes.set_config(op[1].to_plain())
    if name == "festival":
        await fz.scenes.delete_festival("f0")
        return await fz.scenes.put_festival("f0", "F", now - 1000, now + DAY_MS, op[1], "lantern" if op[2] else None)
    if name == "festival junk":
        return await w.redis.hset(w.keys.festivals(), "f0", op[1])
    if name == "regional junk":  # a user's region, the odds table or the card art, as a hand edit leaves them
        key, field = {"region": (w.keys.user(op[1]), "region"), "odds": (w.keys.odds(), "lucky"),
                      "skins": (w.keys.skins(), "tiger")}[op[2]]
        return await w.redis.hset(key, field, op[3])
    if name == "reserve":
        gift = await w.clearing.reserve(f"g{next(_ids)}", op[1], op[2], "note", op[3], app=op[4])
        fz.gifts.append((gift.gift_id, gift.recipient))
        return gift
    if name == "device reserve":
        gift = await w.clearing.reserve(f"g{next(_ids)}", op[1], op[2], "note", 1, device=op[3])
        fz.gifts.append((gift.gift_id, gift.recipient))
        return gift
    if name == "risk junk":
        return await w.redis.hset(w.keys.risk(op[1]), op[2], op[3])
    if name == "answer" and fz.gifts:
        return await _answer(fz, *fz.gifts[op[1] % len(fz.gifts)], accept=op[2], app=op[3])
    if name == "expire":
        await w.tick(op[1])
        await w.clearing.sweep_due()  # what a node's tick reads first
        return await w.clearing.expire_due()
    if name == "index junk":
        index = w.keys.sweep_index(w.topology.nodes()[0].home)
        if op[1] == "delete":
            return await w.redis.delete(index)
        if op[1] == "junk":
            return await w.redis.zadd(index, {"not a tag": 0, "#": -5})
        return await w.redis.zadd(index, {tag_of(u): 2**52 for u in USERS})
    if name == "redeem":
        before = (await w.clearing.balances(op[1])).available["note"]
        price = (await fz.scenes.config()).frame_price_units
        done = await fz.scenes.redeem_frame(op[1], "f0")
        assert (await w.clearing.balances(op[1])).available["note"] == before - price
        return done
    if name == "bind":
        config = await fz.scenes.config()
        bound = await fz.scenes.bind_mentor(op[1], op[2])
        assert (bound.mentor_reward, bound.apprentice_reward) == (config.mentor_reward_units,
                                                                  config.apprentice_reward_units)
        return bound
    if name == "quote":
        quote = await fz.rooms.quote(op[1], "star", "note", op[2])
        fz.quotes.append((quote.quote_id, op[1], op[2]))
        return quote
    if name == "quoted reserve" and fz.quotes:
        quote_id, quoting, qty = fz.quotes[op[1] % len(fz.quotes)]
        gift = await w.clearing.reserve(f"g{next(_ids)}", quoting, "star", "note", qty, quote_id=quote_id)
        fz.gifts.append((gift.gift_id, "star"))
        return gift
    if name == "quote junk" and fz.quotes:
        quote_id, quoting, _ = fz.quotes[op[1] % len(fz.quotes)]
        return await w.redis.hset(w.keys.quote(quoting, quote_id), op[2], op[3])
    if name == "room junk":
        return await w.redis.hset(w.keys.room("star"), op[1], op[2])
    if name == "open wish":
        return await fz.rooms.open_wish("star", "note", op[1])
    if name == "join":
        return await fz.rooms.join("star", op[1], w.node)
    if name == "user junk":
        return await w.redis.hset(w.keys.user(op[1]), "created_at_ms", op[2])
    if name == "follow junk":
        return await w.redis.hset(w.keys.follows(op[1]), op[2], op[3])
    return None


async def _answer(fz: Fuzz, gift_id: str, recipient: str, *, accept: bool, app: str) -> object:
    w = fz.w
    if not accept:
        return await w.clearing.decline(gift_id, recipient, app=app)
    gift = await w.clearing.get_gift(gift_id, recipient)
    assert gift is not None
    config = await fz.scenes.config()
    before = await _points(fz, gift.sender, gift.recipient)
    done = await w.clearing.accept(gift_id, recipient, app=app)
    if done.changed:
        # the points follow the settings exactly as the admin API reads them
        sent, received = expected_points(config, gift.qty, gift.app, app)
        assert await _points(fz, gift.sender, gift.recipient) == [before[0] + sent, before[1] + received]
    return done


async def _fuzz(url: str, saga: bool, ops: list[tuple[Any, ...]]) -> None:
    redis = aioredis.Redis.from_url(url)
    try:
        fz = await _setup(redis, saga)
        for op in ops:
            before = await snapshot(redis)
            failure: object = None
            try:
                await _operate(fz, op)
            except Refused as refused:  # GIFT_EXPIRED expires the gift: changing it is the point
                failure = None if refused.code is Refusal.GIFT_EXPIRED else refused.code
            except StepRefused as error:  # CORRUPT: a client's INTERNAL
                failure = error.code
            if failure is not None and not saga:
                # One script: a failure changes nothing. (Across shards, a refusal of the
                # sender's step voids what the recipient's took, which the invariant checks.)
                assert await snapshot(redis) == before, (op, failure)
            report = await fz.w.check()
            assert report.ok, (op, report.violations)
            # no change of value without its ledger entry, none without its change
            ledger = await reconcile(redis, fz.w.keys)
            assert ledger.ok, (op, ledger.drift)
    finally:
        await redis.aclose()


_NO_POINTS = ("setting", ("points_per_card", b'"ten"'))


@pytest.mark.parametrize("saga", [False, True], ids=["one script", "cross-shard steps"])
@settings(max_examples=10, deadline=None)
@given(ops=st.lists(OPS, min_size=10, max_size=30))
@example(ops=[_NO_POINTS, ("reserve", "ann", "bob", 1, "main"), ("answer", 0, True, "main"), ("expire", 61_000)])
@example(ops=[("festival junk", b"{"), ("reserve", "ann", "bob", 1, "main"), ("answer", 0, True, "main")])
def test_stored_data_never_breaks_an_operation_half_way(redis_server: LocalRedis, saga: bool,
                                                        ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(_fuzz(redis_server.url, saga, ops))


@pytest.mark.parametrize("value", ["007", "-0", "-007"])
@pytest.mark.parametrize("counter", ["points total", "accepted count", "given count", "balance"])
async def test_a_counter_that_reads_whole_but_redis_cannot_increment_stops_an_accept_before_its_first_write(
        w: World, counter: str, value: str) -> None:
    """Lua reads "007" or "-0" as a whole number, but Redis's HINCRBY does not take it ("hash
    value is not an integer"): a check (lib.lua whole()) that let it through left the accept
    failing half-way, the gift decided and the hold settled but the recipient's side not
    done. It is refused with nothing written, as any counter that does not read; put right,
    the accept goes through."""
    await old_friends(w, "ann", "bob")
    gift = await w.clearing.reserve("g1", "ann", "bob", "note", 1)
    key, field = {"points total": (w.keys.points("bob"), "total"),
                  "accepted count": (w.keys.stats("bob"), "accepted"),
                  "given count": (w.keys.stats("ann"), "given"),
                  "balance": (w.keys.balance("bob"), "note")}[counter]
    original = await w.redis.hget(key, field)
    await w.redis.hset(key, field, value)
    error = await unchanged_after(w.redis, w.clearing.accept(gift.gift_id, "bob"))
    assert isinstance(error, StepRefused) and error.code == "CORRUPT"
    if original is None:
        await w.redis.hdel(key, field)
    else:
        await w.redis.hset(key, field, original)
    assert (await w.clearing.accept(gift.gift_id, "bob")).gift.state is GiftState.ACCEPTED
