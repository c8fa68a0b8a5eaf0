"""Random operation sequences against a real Redis (a small Jepsen bank test, no faults):
reserve, retry, accept, decline, expire and mint in any order, with a clock that jumps
across the confirm window and the Shanghai midnight. After every step the ledger invariant
must hold, and every answer must agree with a tiny model of the gift life cycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable
from typing import Literal, TypeVar

import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing import GiftRules, GiftState, Refusal, Refused
from clearing.testing import ManualClock, World
from notecard.local_redis import LocalRedis

T = TypeVar("T")
USERS = ("ann", "bob", "cat")
#: 2024-03-01 23:58:00 in Shanghai: a few ticks cross into the next quota day.
BEFORE_MIDNIGHT_MS = 1_709_308_680_000
#: Nodes must not die when the clock jumps; presence is not what this test explores.
RULES = GiftRules(node_ttl_ms=10**12)


@dataclasses.dataclass(frozen=True)
class Op:
    """One step; what ``a``, ``b`` and ``c`` mean depends on ``name`` (see ``OPS``)."""

    name: str
    a: int = 0
    b: int = 0
    c: int = 0


user = st.integers(0, len(USERS) - 1)
gift_pick = st.integers(0, 10**6)  # an index into the gifts made so far, modulo their number
OPS = (
    # sender, which of the two others, qty
    st.builds(Op, st.just("reserve"), user, st.integers(0, 1), st.integers(1, 3))
    | st.builds(Op, st.just("retry"), gift_pick, st.integers(1, 3))  # gift, qty (same or not)
    # gift, answered by the recipient unless 0 (then by the sender, who may not)
    | st.builds(Op, st.just("accept"), gift_pick, st.integers(0, 3))
    | st.builds(Op, st.just("decline"), gift_pick, st.integers(0, 3))
    | st.builds(Op, st.just("expire"), st.integers(1, 5))  # limit
    | st.builds(Op, st.just("mint"), user, st.integers(1, 5))  # user, qty
    | st.builds(Op, st.just("tick"), st.sampled_from([1, 999, 30_000, 59_999, 60_000, 100_000]))
)


@dataclasses.dataclass
class Expected:
    sender: str
    recipient: str
    qty: int
    expires_at_ms: int
    state: GiftState = GiftState.PENDING


async def attempt(call: Awaitable[T]) -> T | Refusal:
    """The call's result, or the code it was refused with."""
    try:
        return await call
    except Refused as refused:
        return refused.code


async def _answer(world: World, model: dict[str, Expected], op: Op) -> None:
    gift_id = list(model)[op.a % len(model)]
    gift = model[gift_id]
    by_recipient = bool(op.b)
    by = gift.recipient if by_recipient else gift.sender
    target = GiftState.ACCEPTED if op.name == "accept" else GiftState.DECLINED
    call = world.clearing.accept if target is GiftState.ACCEPTED else world.clearing.decline
    now = world.clock()

    expected: Refusal | Literal["changed", "same"]
    if not by_recipient:
        expected = Refusal.NOT_RECIPIENT
    elif gift.state is GiftState.PENDING:
        expected = "changed" if now < gift.expires_at_ms else Refusal.GIFT_EXPIRED
    elif gift.state is target:
        expected = "same"
    elif gift.state is GiftState.EXPIRED:
        expected = Refusal.GIFT_EXPIRED
    else:
        expected = Refusal.ALREADY_RESOLVED
    done = await attempt(call(gift_id, by))
    if isinstance(done, Refusal):
        assert done is expected, (op, gift)
        if done is Refusal.GIFT_EXPIRED:
            gift.state = GiftState.EXPIRED
        return
    assert expected == ("changed" if done.changed else "same"), (op, gift)
    assert done.gift.state is target
    gift.state = target


async def _step(world: World, model: dict[str, Expected], op: Op) -> None:
    name = op.name
    if name == "reserve":
        sender, recipient, qty = USERS[op.a], USERS[(op.a + 1 + op.b) % len(USERS)], op.c
        # A fresh id per attempt: a refused attempt's id stays refused (it is an outcome too).
        gift_id = f"g{len(model)}-{uuid.uuid4().hex[:8]}"
        made = await attempt(world.clearing.reserve(gift_id, sender, recipient, "note", qty))
        if isinstance(made, Refusal):
            assert made in {Refusal.LIMIT_DAILY_SEND, Refusal.LIMIT_DAILY_RECEIVE, Refusal.INSUFFICIENT_BALANCE}
        else:
            model[gift_id] = Expected(sender, recipient, qty, made.expires_at_ms)
    elif name == "retry" and model:
        gift_id = list(model)[op.a % len(model)]
        gift = model[gift_id]
        again = await attempt(world.clearing.reserve(gift_id, gift.sender, gift.recipient, "note", op.b))
        if isinstance(again, Refusal):
            assert (again, op.b != gift.qty) == (Refusal.IDEMPOTENCY_CONFLICT, True)
        else:
            assert (again.state, op.b) == (gift.state, gift.qty)
    elif name in ("accept", "decline") and model:
        await _answer(world, model, op)
    elif name == "expire":
        expired = await world.clearing.expire_due(limit=op.a)
        now = world.clock()
        due = [i for i, g in model.items() if g.state is GiftState.PENDING and g.expires_at_ms <= now]
        assert len(expired) == min(len(due), op.a), (due, expired)
        for record in expired:
            assert record.gift_id in due
            model[record.gift_id].state = GiftState.EXPIRED
    elif name == "mint":
        await world.accounts.mint(USERS[op.a], "note", op.b)
    elif name == "tick":
        world.clock.advance(op.a)


async def _run(url: str, ops: list[Op]) -> None:
    redis = aioredis.Redis.from_url(url)
    try:
        await redis.flushall()
        world = await World.build(redis, RULES, clock=ManualClock(BEFORE_MIDNIGHT_MS))
        for name in USERS:
            await world.user(name, cards=6)
        for i, a in enumerate(USERS):
            for b in USERS[i + 1 :]:
                await world.befriend(a, b)
        model: dict[str, Expected] = {}
        for op in ops:
            await _step(world, model, op)
            report = await world.check()
            assert report.ok, (op, report.violations)
        states = {gift_id: (await world.clearing.get_gift(gift_id)) for gift_id in model}
        assert {i: g.state for i, g in states.items() if g} == {i: g.state for i, g in model.items()}
    finally:
        await redis.aclose()


@settings(max_examples=30, deadline=None)
@given(ops=st.lists(OPS, min_size=20, max_size=40))
def test_random_operations_keep_the_ledger_whole(redis_server: LocalRedis, ops: list[Op]) -> None:
    asyncio.run(_run(redis_server.url, ops))
