"""The scorer as a Redis Streams consumer group, against a real Redis: two scorers share the
events, nothing is scored twice or skipped when one dies mid-batch, shadow mode and per-rule
switches decide without acting, and the features agree with the simulator's memory backend."""

from __future__ import annotations

import redis.asyncio as aioredis

from clearing.keys import DEFAULT_KEYS
from risk.features import Event, FeatureState, Known, MemoryBackend, event_id
from risk.model import load_model
from risk.scorer import GROUP, Scorer, expand
from risk.signals import SignalLog

KEYS = DEFAULT_KEYS


def _scripted(user: str, n: int, device: str = "bot-dev") -> list[Event]:
    """A scripted sender: a gift every 30 s on the dot."""
    return [Event("send", user, device, "10.1.2.3", "main", 1_000_000 + 30_000 * i, to=f"fan{i % 3}")
            for i in range(n)]


async def _log(redis: aioredis.Redis, events: list[Event]) -> None:
    signals = SignalLog(redis, KEYS)
    for ev in events:
        signals.record(ev.kind, ev.user, ev.device, ev.ip, ev.app, to=ev.to, code=ev.code,
                       waited_ms=ev.waited_ms if ev.waited_ms >= 0 else None)
        # the stream keeps the events' own times, as a node would have written them
        signals._queue[-1]["ts"] = ev.ts
    assert await signals.flush() == len(events)


async def test_two_scorers_share_the_events_and_each_is_scored_once(redis: aioredis.Redis) -> None:
    await _log(redis, _scripted("share-bot", 12))
    a = Scorer(redis, KEYS, load_model(), name="a")
    b = Scorer(redis, KEYS, load_model(), name="b")
    await a.ensure_group()
    await b.ensure_group()  # a second scorer joins the same group
    taken = await a.step(count=5, block_ms=10) + await b.step(count=100, block_ms=10)
    assert taken == 12
    assert await a.step(block_ms=10) == 0
    features = await redis.hgetall(KEYS.risk_features("share-bot"))
    assert features[b"sends"] == b"12"
    assert (await redis.hgetall(KEYS.risk("share-bot")))[b"tier"] == b"ban"
    assert (await redis.xpending(KEYS.risk_events(), GROUP))["pending"] == 0


async def test_a_batch_left_unacknowledged_by_a_dead_scorer_is_claimed_and_not_counted_twice(
        redis: aioredis.Redis) -> None:
    await _log(redis, _scripted("crash-bot", 4))
    dead = Scorer(redis, KEYS, load_model(), name="dead")
    await dead.ensure_group()
    got = await redis.xreadgroup(GROUP, "dead", {KEYS.risk_events(): ">"}, count=4)
    events = expand(got[0][1])  # the node's one batch entry: four events
    assert len(events) == 4
    # It stored the first two events' features, then died before acknowledging the entry.
    for eid, fields in events[:2]:
        await dead.handle(eid, fields)
    survivor = Scorer(redis, KEYS, load_model(), name="survivor")
    import risk.scorer as scorer_module

    claim_idle = scorer_module.CLAIM_IDLE_MS
    scorer_module.CLAIM_IDLE_MS = 0  # the dead scorer's entries are idle at once
    try:
        assert await survivor.step(block_ms=10) == 4
    finally:
        scorer_module.CLAIM_IDLE_MS = claim_idle
    assert (await redis.hgetall(KEYS.risk_features("crash-bot")))[b"sends"] == b"4"
    assert (await redis.xpending(KEYS.risk_events(), GROUP))["pending"] == 0


async def test_shadow_mode_and_a_rule_switched_off_decide_without_acting(redis: aioredis.Redis) -> None:
    await redis.hset(KEYS.risk_switches(), mapping={"shadow": "1"})
    await _log(redis, _scripted("shadow-bot", 10))
    scorer = Scorer(redis, KEYS, load_model(), name="s")
    await scorer.ensure_group()
    await scorer.step(block_ms=10)
    assert await redis.hget(KEYS.risk("shadow-bot"), "tier") is None, "shadow mode acts on nothing"
    audit = [f for _, f in await redis.xrange(KEYS.risk_audit())]
    assert any(f[b"shadow_tier"] == b"ban" and f[b"applied"] == b"0" for f in audit)
    disagreements = scorer.metrics.disagreements._value.get()
    assert disagreements >= 1

    await redis.hset(KEYS.risk_switches(), mapping={"shadow": "0", "rule:script": "off", "rule:model": "off"})
    await _log(redis, _scripted("switched-bot", 10, device="bot-dev-2"))
    fresh = Scorer(redis, KEYS, load_model(), name="t")  # reads the switches anew
    await fresh.step(block_ms=10)
    assert await redis.hget(KEYS.risk("switched-bot"), "tier") is None, "the script rule is off"


async def test_the_redis_features_of_a_batch_equal_the_simulators_one_by_one(redis: aioredis.Redis) -> None:
    events = [*_scripted("same-bot", 6),
              Event("accept", "fan0", "fan-dev", "10.1.2.9", "main", 2_000_000, to="same-bot", waited_ms=300)]
    memory = FeatureState(MemoryBackend(), KEYS)
    expected = [(await memory.observe(ev)).x for ev in events]
    await _log(redis, events)
    scorer = Scorer(redis, KEYS, load_model(), name="f")
    await scorer.ensure_group()
    got = await redis.xreadgroup(GROUP, "f", {KEYS.risk_events(): ">"}, count=100)
    # The scorer takes the whole batch at once (three round trips); the simulator one by one.
    batch = [(Event.from_fields(fields), event_id(i)) for i, fields in expand(got[0][1])]
    assert len(batch) == len(events)
    seen = await scorer.features.observe_many(batch)
    assert [o.x for o in seen] == expected
    again = await scorer.features.observe_many(batch)  # redelivered: recognised, nothing counted twice
    assert all(o.repeated for o in again)
    assert (await redis.hgetall(KEYS.risk_features("same-bot")))[b"sends"] == b"6"


async def test_two_scorers_each_remembering_what_it_saw_still_count_every_account_on_a_device(
        redis: aioredis.Redis) -> None:
    """What a scorer remembers (members it added, pairs that gave) never hides another
    scorer's additions: set sizes are read from Redis at every batch."""
    a = FeatureState(Scorer(redis, KEYS, load_model(), name="a").features.backend, KEYS)
    b = FeatureState(Scorer(redis, KEYS, load_model(), name="b").features.backend, KEYS)

    def hello(user: str, ts: int) -> Event:
        return Event("hello", user, "shared-dev", "10.9.9.1", "main", ts)

    assert (await a.observe(hello("dev-u1", 1))).x["dev_accts"] == 1
    assert (await a.observe(hello("dev-u2", 2))).x["dev_accts"] == 2
    assert (await b.observe(hello("dev-u3", 3))).x["dev_accts"] == 3  # b knows none of a's facts
    assert (await a.observe(hello("dev-u1", 4))).x["dev_accts"] == 3  # a's remembered member, b's new one
    assert (await a.observe(hello("dev-u4", 5))).x["dev_accts"] == 4
    assert await redis.scard(KEYS.device_accounts("shared-dev")) == 4
    # a gift pair: a first gift is a new recipient, the next is not, whichever scorer sees it
    gift = Event("send", "dev-u1", "shared-dev", "10.9.9.1", "main", 10, to="dev-u2")
    assert (await a.observe(gift)).x["fan_out"] == 1.0
    again = Event("send", "dev-u1", "shared-dev", "10.9.9.1", "main", 20, to="dev-u2")
    assert (await b.observe(again)).x["fan_out"] == 0.5
    back = Event("send", "dev-u2", "shared-dev", "10.9.9.1", "main", 30, to="dev-u1")
    assert (await a.observe(back)).x["reciprocal"] == 1.0  # dev-u1 gave to dev-u2 before
    assert await redis.zscore(KEYS.risk_peers("dev-u1"), "dev-u2") == 2


async def test_a_node_writes_a_flush_as_one_entry_and_the_scorer_reads_old_single_event_entries_too(
        redis: aioredis.Redis) -> None:
    await _log(redis, _scripted("mixed-bot", 3))
    await redis.xadd(KEYS.risk_events(), {"k": "send", "u": "mixed-bot", "d": "bot-dev", "ip": "10.1.2.3",
                                          "app": "main", "ts": "1090000", "to": "fan0"})  # as older nodes wrote
    await redis.xadd(KEYS.risk_events(), {"n": "1", "b": "not json"})  # skipped, and acknowledged
    assert await redis.xlen(KEYS.risk_events()) == 3
    scorer = Scorer(redis, KEYS, load_model(), name="m")
    await scorer.ensure_group()
    assert await scorer.step(block_ms=10) == 4
    assert (await redis.hgetall(KEYS.risk_features("mixed-bot")))[b"sends"] == b"4"
    assert (await redis.xpending(KEYS.risk_events(), GROUP))["pending"] == 0
    assert event_id("5-1") < event_id("5-1-1") < event_id("5-2-0") < event_id("6-0")
    assert event_id("x-1") == event_id("") == (0, 0, 0)


async def test_what_a_scorer_remembers_is_forgotten_in_time_and_a_wiped_set_is_filled_again(
        redis: aioredis.Redis) -> None:
    backend = Scorer(redis, KEYS, load_model(), name="k").features.backend
    remembering = FeatureState(backend, KEYS)
    forgetting = FeatureState(backend, KEYS, Known(max_age_s=0.0))
    hello = Event("hello", "wipe-u1", "wipe-dev", "10.8.8.1", "main", 1)
    for state in (remembering, forgetting):
        await state.observe(hello)
    key = KEYS.device_accounts("wipe-dev")
    await redis.delete(key)  # the set went away (a Redis wiped and restored)
    await remembering.observe(hello)
    assert await redis.scard(key) == 0, "still remembered: not asked again"
    await forgetting.observe(hello)
    assert await redis.smembers(key) == {b"wipe-u1"}, "forgotten in time: added again"
