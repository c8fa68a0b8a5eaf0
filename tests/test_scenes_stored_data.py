"""Stored data the scripts did not write, against a real Redis: scene documents from an older
version or a hand edit, festival entries and schedule members, quotes, room and user hashes,
follows, ledger counters and the points log.

The rule under test (lib.lua, "Stored values"): a script reads, checks and computes
everything before its first write, so an operation either does what it should or changes
nothing (a refusal, or a CORRUPT error for a ledger counter it must change); a setting that
does not read takes its default exactly as ``Scenes.config()`` shows it; and the
conservation invariant holds after every step. The fuzz test stores random and broken data
between random operations and checks all of that after each one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.resources
import itertools
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from clearing import GiftRules, GiftState, Refusal, Refused
from clearing.lua import MAX_SAFE_INT
from clearing.rooms import Rooms
from clearing.rules import DAY_MS
from clearing.scene_config import INT_RANGES, MAX_PERMILLE, MAX_SETTING, MAX_TIERS, AppPerk, SceneConfig
from clearing.scenes import Scenes
from clearing.testing import World
from notecard.local_redis import LocalRedis

UNIT = GiftRules().units_per_card
_ids = itertools.count(1)


@pytest.fixture
async def w(redis: aioredis.Redis) -> AsyncIterator[World]:
    world = await World.build(redis, GiftRules(daily_send_limit=50, daily_receive_limit=50))
    yield world
    report = await world.check()
    assert report.ok, report.violations


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
    """Every key's DUMP, refusal memories aside (a refused send writes its refusal)."""
    keys = [k async for k in redis.scan_iter(count=1000) if b":refused:" not in k]
    return {k: await redis.dump(k) for k in sorted(keys)}


async def unchanged_after(redis: aioredis.Redis, call: Awaitable[object]) -> BaseException:
    """Run ``call``, which must fail, and check that it changed nothing; its exception."""
    before = await snapshot(redis)
    with pytest.raises((Refused, ResponseError)) as info:
        await call
    assert await snapshot(redis) == before
    return info.value


def expected_points(config: SceneConfig, qty: int, sender_app: str, recipient_app: str) -> tuple[int, int]:
    base = qty * config.points_per_card
    sender, recipient = config.apps.get(sender_app, AppPerk()), config.apps.get(recipient_app, AppPerk())
    return base + base * sender.sender_bonus_permille // 1000, base * recipient.recipient_multiplier_permille // 1000


# ---------------------------------------------------------------- the reported case


async def test_an_accept_under_a_document_without_points_per_card_awards_the_default(w: World) -> None:
    """An older version's document lacks the field: the accept credited the recipient, then
    failed (INTERNAL), the gift stayed pending and the sweeper refunded the sender as well."""
    await old_friends(w, "ann", "bob")
    doc = SceneConfig().to_plain()
    del doc["points_per_card"]
    await w.redis.set(w.keys.scene_config(), json.dumps(doc))
    gift = await w.clearing.reserve("g1", "ann", "bob", "note", 2)
    done = await w.clearing.accept(gift.gift_id, "bob")
    assert done.gift.state is GiftState.ACCEPTED
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    assert (await scenes.config()).points_per_card == 10
    assert [(await scenes.points(u)).points for u in ("ann", "bob")] == [20, 20]
    await w.tick(w.rules.confirm_window_ms + 1)
    assert await w.clearing.expire_due() == []
    balances = await w.clearing.balances("ann")
    assert (balances.available["note"], balances.held["note"]) == (80, 0)


async def test_a_festival_member_below_one_times_prices_nothing(w: World) -> None:
    """A schedule member with multiplier 0 made a gift cost 0 and credit 10: cards from nothing."""
    await old_friends(w, "ann", "bob")
    now = w.clock()
    await w.redis.zadd(w.keys.festival_schedule(), {"": float("-inf"), f"{now + 1000}:0:broken": now - 1000})
    gift = await w.clearing.reserve("g1", "ann", "bob", "note", 1)
    assert (gift.cost, gift.amount, gift.festival) == (UNIT, UNIT, None)
    await w.clearing.accept(gift.gift_id, "bob")


async def test_a_quote_costing_less_than_its_amount_is_no_quote(w: World) -> None:
    await old_friends(w, "ann", "bob")
    quote = {"sender": "ann", "recipient": "bob", "room": "bob", "kind": "note", "qty": 1, "cost": 1,
             "amount": UNIT, "expires_at_ms": w.clock() + 10_000}
    await w.redis.hset(w.keys.quote("q1"), mapping=quote)  # type: ignore[arg-type]
    refused = await unchanged_after(w.redis, w.clearing.reserve("g1", "ann", "bob", "note", 1, quote_id="q1"))
    assert isinstance(refused, Refused) and refused.code is Refusal.QUOTE_EXPIRED
    await w.redis.hset(w.keys.quote("q1"), "expires_at_ms", "soon")
    refused = await unchanged_after(w.redis, w.clearing.reserve("g2", "ann", "bob", "note", 1, quote_id="q1"))
    assert isinstance(refused, Refused) and refused.code is Refusal.QUOTE_EXPIRED


async def test_a_negative_zero_setting_is_zero_when_written(w: World) -> None:
    """JSON -0.0 is a whole number in range, but Lua prints it "-0", which HINCRBY refuses:
    found by the fuzz test below, after the promotion account had paid."""
    await old_friends(w, "promo", "ann", cards=10)
    await w.accounts.create_user("kid", verified=True)
    await w.redis.set(w.keys.scene_config(), b'{"mentor_reward_units": -0.0, "apprentice_reward_units": 3}')
    bound = await Scenes(w.redis, w.rules, w.keys, w.clock).bind_mentor("kid", "ann")
    assert (bound.mentor_reward, bound.apprentice_reward) == (0, 3)
    assert [(await w.clearing.balances(u)).available["note"] for u in ("promo", "ann", "kid")] == [97, 100, 3]


async def test_connection_and_viewer_counts_that_do_not_read_count_as_zero(w: World) -> None:
    """Such a count made connect, a room join or leave, opening a wish or reaping a node fail,
    some of them after their first write (a wish written without its version)."""
    rooms = Rooms(w.redis, w.rules, w.keys, w.clock)
    await old_friends(w, "ann", "star")
    await w.redis.hset(w.keys.presence("ann"), w.node, "x")
    await w.presence.connect("ann", w.node)
    assert await w.redis.hget(w.keys.presence("ann"), w.node) == b"1"
    await w.redis.hset(w.keys.room("star"), "version", "1.5")
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


# ---------------------------------------------------------------- ledger counters


async def test_a_corrupt_hold_stops_a_send_before_its_first_write(w: World) -> None:
    await old_friends(w, "ann", "bob")
    await w.redis.hset(w.keys.held("ann"), "note", "1.5")
    error = await unchanged_after(w.redis, w.clearing.reserve("g1", "ann", "bob", "note", 1))
    assert isinstance(error, ResponseError) and "CORRUPT" in str(error)
    await w.redis.hdel(w.keys.held("ann"), "note")
    assert (await w.clearing.reserve("g1", "ann", "bob", "note", 1)).state is GiftState.PENDING


async def test_a_corrupt_counter_stops_an_accept_whole_and_the_sweeper_passes_it(w: World) -> None:
    await old_friends(w, "ann", "bob", "cat")
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    await scenes.put_festival("f", "F", w.clock() - 1, w.clock() + DAY_MS)
    stuck = await w.clearing.reserve("g1", "ann", "bob", "note", 1)  # cost 12: 2 consumed on accept
    await w.redis.hset(w.keys.consumed(), "note", "many")
    error = await unchanged_after(w.redis, w.clearing.accept(stuck.gift_id, "bob"))
    assert isinstance(error, ResponseError) and "CORRUPT" in str(error)
    # its refund is fine, but a refund's counters can be broken too: the sweep skips that one
    await w.redis.hset(w.keys.balance("ann"), "note", "x")
    others = [await w.clearing.reserve(f"o{i}", "cat", "bob", "note", 1) for i in range(3)]
    await w.tick(w.rules.confirm_window_ms)
    expired = await w.clearing.expire_due(limit=1)  # the broken gift is due first; the sweep reads past it
    assert [g.gift_id for g in expired] == [others[0].gift_id]
    assert {g.gift_id for g in await w.clearing.expire_due(limit=5)} == {g.gift_id for g in others[1:]}
    await w.redis.hset(w.keys.balance("ann"), "note", 100 - 12)
    await w.redis.hdel(w.keys.consumed(), "note")
    assert [g.gift_id for g in await w.clearing.expire_due()] == [stuck.gift_id]


async def test_points_never_pass_two_to_the_53_nor_overflow_after_the_transfer(w: World) -> None:
    """A total Redis can still increment but Lua cannot count (beyond 2^53), and one next to
    HINCRBY's 64-bit limit, which failed the accept after the cards had moved."""
    await old_friends(w, "ann", "bob", cards=100)
    await Scenes(w.redis, w.rules, w.keys, w.clock).set_config({"points_per_card": 1_000_000})
    near, huge = MAX_SAFE_INT - 5, 2**63 - 10
    for user, total in (("ann", near), ("bob", huge)):
        await w.redis.hset(w.keys.points(), user, total)
        await w.redis.hset(w.keys.point_log_folded(), user, total)
    gift = await w.clearing.reserve("g1", "ann", "bob", "note", 100)
    assert (await w.clearing.accept(gift.gift_id, "bob")).gift.state is GiftState.ACCEPTED
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    assert (await scenes.points("ann")).points == MAX_SAFE_INT
    assert (await scenes.points("bob")).points == huge  # not a count the scripts can keep: left alone
    assert (await w.clearing.balances("bob")).available["note"] == 2000


# ---------------------------------------------------------------- the points log


async def test_the_points_log_stays_bounded_and_every_total_still_adds_up(redis: aioredis.Redis) -> None:
    w = await World.build(redis, GiftRules(daily_send_limit=50, daily_receive_limit=50, points_log_maxlen=20))
    await old_friends(w, "ann", "bob", "cat", cards=50)
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    pairs = [("ann", "bob"), ("bob", "cat"), ("cat", "ann")] * 10
    lengths = []
    for sender, recipient in pairs:
        gift = await w.clearing.reserve(f"g{next(_ids)}", sender, recipient, "note", 1)
        await w.clearing.accept(gift.gift_id, recipient)
        lengths.append(await redis.xlen(w.keys.point_log()))
    assert max(lengths) == 20 and min(lengths[10:]) >= 18  # folded a tenth at a time
    assert [(await scenes.points(u)).points for u in ("ann", "bob", "cat")] == [200, 200, 200]
    assert await redis.hgetall(w.keys.point_log_folded())  # the trimmed entries live on as sums
    report = await w.check()
    assert report.ok, report.violations
    # and the check still catches a total that does not add up
    await redis.hincrby(w.keys.points(), "ann", 1)
    assert any("points of ann" in v for v in (await w.check()).violations)
    await redis.hincrby(w.keys.points(), "ann", -1)


async def test_a_long_log_from_an_older_version_shrinks_a_bounded_step_per_accept(redis: aioredis.Redis) -> None:
    w = await World.build(redis, GiftRules(points_log_maxlen=100))
    await old_friends(w, "ann", "bob", cards=50)
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(2500):
            pipe.xadd(w.keys.point_log(), {"u": "old", "p": 3, "g": f"h{i}", "why": "sent", "app": "main"})
        pipe.hset(w.keys.points(), "old", 7500)
        await pipe.execute()
    lengths = []
    for _ in range(3):
        gift = await w.clearing.reserve(f"g{next(_ids)}", "ann", "bob", "note", 1)
        await w.clearing.accept(gift.gift_id, "bob")
        lengths.append(await redis.xlen(w.keys.point_log()))
    # 1000 folded per run at most, then down to nine tenths of 100
    assert lengths == [2500 + 2 - 1000, 2500 + 4 - 2000, 90]
    folded = (1000 + 1000 + 416) * 3  # 2416 of the 2500 old entries; 84 are still in the log
    assert await redis.hget(w.keys.point_log_folded(), "old") == str(folded).encode()
    report = await w.check()
    assert report.ok, report.violations


# ---------------------------------------------------------------- readers agree


async def test_the_scripts_ranges_are_the_admin_apis(redis: aioredis.Redis) -> None:
    """lib.lua repeats the ranges it enforces; they must be scene_config.py's."""
    lib = (importlib.resources.files("clearing") / "scripts" / "lib.lua").read_text(encoding="utf-8")
    tail = "\nreturn cjson.encode(scene_reader().ranges)"
    ranges = await redis.eval(lib + tail, 0, "{nc}", 0)  # type: ignore[misc]
    low, high, permille_max, max_tiers, max_min_viewers = json.loads(ranges)
    read = set(low)
    assert read == set(high) and read <= set(INT_RANGES)
    assert {name: (low[name], high[name]) for name in read} == {name: INT_RANGES[name] for name in read}
    assert (permille_max, max_tiers, max_min_viewers) == (MAX_PERMILLE, MAX_TIERS, MAX_SETTING)


async def test_the_admin_api_reads_a_broken_document_as_the_scripts_do_and_repairs_it(w: World) -> None:
    scenes = Scenes(w.redis, w.rules, w.keys, w.clock)
    await w.redis.set(w.keys.scene_config(), json.dumps(
        {"points_per_card": "ten", "newcomer_free_gifts": 2.0, "frame_price_units": -1, "festival_permille": 1500,
         "apps": {"toutiao": {"sender_bonus_permille": 20_000}, "Bad App": {}}, "live_tiers": [{"permille": 1}],
         "quote_ttl_ms": 10**30, "unknown": True}))
    config = await scenes.config()
    assert config == dataclasses.replace(SceneConfig(), newcomer_free_gifts=2, festival_permille=1500,
                                         apps={"toutiao": AppPerk()})
    repaired = await scenes.set_config({"frame_price_units": 1})
    stored = await w.redis.get(w.keys.scene_config())
    assert stored is not None and SceneConfig.from_plain(orjson.loads(stored)) == repaired
    assert await w.redis.get(w.keys.scene_config_digest()) == hashlib.sha1(stored).hexdigest().encode()
    for garbage in (b"", b"[1, 2]", b'"x"', b"{", b"\xff\xfe"):
        await w.redis.set(w.keys.scene_config(), garbage)
        assert await scenes.config() == SceneConfig()


# ---------------------------------------------------------------- the fuzz test

USERS = ("ann", "bob", "kid", "promo", "star")
APPS = ("main", "toutiao", "huoshan", "duoshan", "Bad App")
MIN_SCENE = st.sampled_from([None, True, False, -1, -(2**70), 2**40 + 1, 2**53, 2**64, 10**30, 1.5, -0.0, 1e308,
                             float("inf"), float("nan"), "", "7", "promo", [], {}, [1], {"a": 1}])


def _whole_or_junk(low: int, high: int) -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(low, high), st.integers(low, high).map(float), MIN_SCENE)


_perk = st.fixed_dictionaries({}, optional={
    "sender_bonus_permille": _whole_or_junk(0, MAX_PERMILLE),
    "recipient_multiplier_permille": _whole_or_junk(1000, MAX_PERMILLE),
    "joint_campaign": st.one_of(st.booleans(), MIN_SCENE),
})
_tier = st.fixed_dictionaries({"min_viewers": _whole_or_junk(0, 3), "permille": _whole_or_junk(1000, 3000)})
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    **{name: _whole_or_junk(low, high) for name, (low, high) in INT_RANGES.items()},
    "newcomer_age_ms": st.one_of(st.sampled_from([DAY_MS, 7 * DAY_MS]), MIN_SCENE),
    "promo_account": st.one_of(st.sampled_from(["promo", "ann", "nobody"]), MIN_SCENE),
    "apps": st.one_of(MIN_SCENE, st.dictionaries(st.sampled_from(APPS), st.one_of(_perk, MIN_SCENE), max_size=4)),
    "live_tiers": st.one_of(MIN_SCENE, st.lists(_tier, min_size=1, max_size=3)),
}
_document = st.fixed_dictionaries({}, optional={**_FIELDS, "extra": MIN_SCENE})


@st.composite
def _raw_document(draw: st.DrawFn) -> bytes:
    doc = draw(_document)
    layout = draw(st.sampled_from(["compact", "sorted", "truncated", "garbage", "not an object"]))
    if layout == "sorted":
        return json.dumps(doc, sort_keys=True, indent=1).encode()
    text = json.dumps(doc, separators=(",", ":")).encode()
    if layout == "truncated":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if layout == "garbage":
        return draw(st.binary(max_size=30))
    if layout == "not an object":
        return json.dumps(list(doc.values())).encode()
    return text


_valid_config = st.builds(
    SceneConfig, newcomer_free_gifts=st.integers(0, 3), mentor_reward_units=st.integers(0, 30),
    points_per_card=st.integers(0, 50), frame_price_units=st.integers(0, 30),
    promo_account=st.sampled_from(["promo", "ann"]),
)
_SCHEDULE_JUNK = st.sampled_from(["", "x", "{end}:0:f0", "{end}:999:f0", "{end}:10001:f0", "{end}:1500:",
                                  "{end}:1500:bad id", "99999999999999999999:1500:f0", "{end}:1500:f0",
                                  "{end}:012000:f0"])
_FESTIVAL_JUNK = st.one_of(
    st.just(b"{"),
    st.fixed_dictionaries({"name": st.one_of(st.just("F"), MIN_SCENE)}, optional={
        "start_ms": st.one_of(st.just(0), MIN_SCENE), "end_ms": st.one_of(st.just(2**50), MIN_SCENE),
        "permille": _whole_or_junk(1000, 3000), "frame": st.one_of(st.just("lantern"), MIN_SCENE),
        "extra": MIN_SCENE,
    }).map(lambda d: json.dumps(d).encode()),
)

user = st.sampled_from(USERS)
sender = st.sampled_from(USERS[:3])  # the promotion account and the streamer mostly receive
STORE = st.one_of(  # data put in place of what the scripts and Scenes would write
    st.tuples(st.just("store"), _raw_document(), st.booleans()),  # raw document, keep the old digest
    st.tuples(st.just("configure"), _valid_config),
    st.tuples(st.just("festival"), st.sampled_from([1.0, 1.25, 3.0]), st.booleans()),  # multiplier, frame
    st.tuples(st.just("festival junk"), _FESTIVAL_JUNK, _SCHEDULE_JUNK),
    st.tuples(st.just("quote junk"), st.integers(0, 99), st.sampled_from(["cost", "qty", "expires_at_ms", "room"]),
              st.sampled_from(["", "1", "-5", "x", "1.5", "99999999999999999999", "bob"])),
    st.tuples(st.just("room junk"), st.sampled_from(["wish_progress", "version", "streamer", "wish_kind"]),
              st.sampled_from(["", "x", "1.5", "-3", "star", "note", "99999999999999999999"])),
    st.tuples(st.just("user junk"), user, st.sampled_from(["x", "", "1.5", "-1", "0"])),
    st.tuples(st.just("follow junk"), user, user, st.sampled_from(["x", "1e3", " 5", "0"])),
)
ACT = st.one_of(  # the operations, through the clearing API
    st.tuples(st.just("reserve"), sender, user, st.integers(1, 3), st.sampled_from(APPS)),
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


async def _setup(redis: aioredis.Redis) -> Fuzz:
    await redis.flushall()
    w = await World.build(redis, GiftRules(daily_send_limit=50, daily_receive_limit=50, node_ttl_ms=10**12,
                                           points_log_maxlen=10))
    fz = Fuzz(w, Scenes(redis, w.rules, w.keys, w.clock), Rooms(redis, w.rules, w.keys, w.clock))
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
    return fz


async def _points(fz: Fuzz, *users: str) -> list[int]:
    return [(await fz.scenes.points(u)).points for u in users]


async def _operate(fz: Fuzz, op: tuple[Any, ...]) -> object:
    w, name = fz.w, op[0]
    now = w.clock()
    if name == "store":
        digest = await w.redis.get(w.keys.scene_config_digest())
        await w.redis.set(w.keys.scene_config(), op[1])
        if not op[2] and digest is not None:
            await w.redis.delete(w.keys.scene_config_digest())
        return None
    if name == "configure":
        return await fz.scenes.set_config(op[1].to_plain())
    if name == "festival":
        await fz.scenes.delete_festival("f0")
        return await fz.scenes.put_festival("f0", "F", now - 1000, now + DAY_MS, op[1], "lantern" if op[2] else None)
    if name == "festival junk":
        await w.redis.hset(w.keys.festivals(), "f0", op[1])
        member = op[2].replace("{end}", str(now + DAY_MS))
        await w.redis.zadd(w.keys.festival_schedule(), {"": float("-inf"), member: now - 1000})
        return None
    if name == "reserve":
        gift = await w.clearing.reserve(f"g{next(_ids)}", op[1], op[2], "note", op[3], app=op[4])
        fz.gifts.append((gift.gift_id, gift.recipient))
        return gift
    if name == "answer" and fz.gifts:
        return await _answer(fz, *fz.gifts[op[1] % len(fz.gifts)], accept=op[2], app=op[3])
    if name == "expire":
        await w.tick(op[1])
        return await w.clearing.expire_due()
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
        quote_id, sender, qty = fz.quotes[op[1] % len(fz.quotes)]
        gift = await w.clearing.reserve(f"g{next(_ids)}", sender, "star", "note", qty, quote_id=quote_id)
        fz.gifts.append((gift.gift_id, "star"))
        return gift
    if name == "quote junk" and fz.quotes:
        await w.redis.hset(w.keys.quote(fz.quotes[op[1] % len(fz.quotes)][0]), op[2], op[3])
        return None
    if name == "room junk":
        await w.redis.hset(w.keys.room("star"), op[1], op[2])
        return None
    if name == "open wish":
        return await fz.rooms.open_wish("star", "note", op[1])
    if name == "join":
        return await fz.rooms.join("star", op[1], w.node)
    if name == "user junk":
        await w.redis.hset(w.keys.user(op[1]), "created_at_ms", op[2])
        return None
    if name == "follow junk":
        await w.redis.hset(w.keys.follows(op[1]), op[2], op[3])
        return None
    return None


async def _answer(fz: Fuzz, gift_id: str, recipient: str, *, accept: bool, app: str) -> object:
    w = fz.w
    if not accept:
        return await w.clearing.decline(gift_id, recipient, app=app)
    gift = await w.clearing.get_gift(gift_id)
    assert gift is not None
    config = await fz.scenes.config()
    before = await _points(fz, gift.sender, gift.recipient)
    done = await w.clearing.accept(gift_id, recipient, app=app)
    if done.changed:
        # the points follow the settings exactly as the admin API reads them
        sent, received = expected_points(config, gift.qty, gift.app, app)
        assert await _points(fz, gift.sender, gift.recipient) == [before[0] + sent, before[1] + received]
    return done


async def _fuzz(url: str, ops: list[tuple[Any, ...]]) -> None:
    redis = aioredis.Redis.from_url(url)
    try:
        fz = await _setup(redis)
        for op in ops:
            before = await snapshot(redis)
            failure: object = None
            try:
                await _operate(fz, op)
            except Refused as refused:  # GIFT_EXPIRED expires the gift: changing it is the point
                failure = None if refused.code is Refusal.GIFT_EXPIRED else refused.code
            except ResponseError as error:  # a script's error (a client's INTERNAL)
                failure = str(error)
            if failure is not None:
                assert await snapshot(redis) == before, (op, failure)  # a failure changes nothing
            report = await fz.w.check()
            assert report.ok, (op, report.violations)
    finally:
        await redis.aclose()


_MISSING_POINTS = json.dumps({k: v for k, v in SceneConfig().to_plain().items() if k != "points_per_card"}).encode()


@settings(max_examples=30, deadline=None)
@given(ops=st.lists(OPS, min_size=10, max_size=30))
@example(ops=[("store", _MISSING_POINTS, False), ("reserve", "ann", "bob", 1, "main"),
              ("answer", 0, True, "main"), ("expire", 61_000)])
@example(ops=[("festival junk", b"{", "{end}:0:f0"), ("reserve", "ann", "bob", 1, "main"),
              ("answer", 0, True, "main")])
def test_stored_data_never_breaks_an_operation_half_way(redis_server: LocalRedis, ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(_fuzz(redis_server.url, ops))
