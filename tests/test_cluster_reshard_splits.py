"""The money scripts on a slot half-way to another shard, at every split of its keys.

While a slot is MIGRATING, Redis checks a script's declared key before it runs (ASK), but a
key the script touches inside that is not on the node (moved already, or new: the source
answers ASK for any key it lacks) stops that ``redis.call`` with "non local key", and what
the script wrote before stays. A money script that wrote and then met such a key would lose
or make cards. Here the user's slot starts moving, its keys go to the target one at a time
in the order ``CLUSTER GETKEYSINSLOT`` gives, and the step is tried at each split: every
script call that fails must have left both nodes exactly as they were, and once the slot
has moved, the gift finishes and conservation holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis import exceptions as rx

from clearing import ClearingUnavailable, GiftState, Refused
from clearing.lua import ScriptRunner
from clearing.slots import slot_of
from clearing.testing import World
from notecard.local_cluster import LocalCluster
from notecard.local_redis import LocalRedis
from tests.test_cluster_resharding import UNIT, Resharding, two_shards, users_on, world

__all__ = ["two_shards", "world"]  # the fixtures, shared with the resharding tests

Snapshot = dict[tuple[str, bytes], bytes | None]


def snapshot(cluster: LocalCluster) -> Snapshot:
    """Every key of both nodes, as DUMP gives it (value and type; the TTL apart)."""
    found: Snapshot = {}
    for server in cluster.servers:
        with redis.Redis(host=server.host, port=server.port, password=cluster.password) as c:
            keys = c.keys("*")
            with c.pipeline(transaction=False) as pipe:
                for key in keys:  # ASKING: the target serves a key of a slot it imports
                    pipe.execute_command("ASKING")
                    pipe.dump(key)
                for key, dumped in zip(keys, pipe.execute()[1::2], strict=True):
                    found[(f"{server.port}", key)] = dumped
    return found


@dataclass
class Watch:
    """Each script call that failed, and what it had written when it did."""

    cluster: LocalCluster
    failed: list[str] = field(default_factory=list)
    wrote: list[str] = field(default_factory=list)


def watch_scripts(monkeypatch: pytest.MonkeyPatch, runner: ScriptRunner, cluster: LocalCluster) -> Watch:
    """Wrap every script call: one at a time (so a snapshot sees only its own writes), with a
    snapshot of both nodes before and, when it fails, after."""
    watch = Watch(cluster)
    original = ScriptRunner.run
    one_at_a_time = asyncio.Lock()

    async def run(self: ScriptRunner, name: Any, *args: Any, **kwargs: Any) -> Any:
        if self is not runner:
            return await original(self, name, *args, **kwargs)
        async with one_at_a_time:
            return await watched(name, *args, **kwargs)

    async def watched(name: Any, *args: Any, **kwargs: Any) -> Any:
        before = snapshot(cluster)
        try:
            return await original(runner, name, *args, **kwargs)
        except (rx.RedisError, ClearingUnavailable) as exc:
            after = snapshot(cluster)
            watch.failed.append(f"{name}: {exc}")
            if after != before:
                changed = sorted({k[1].decode() for k in before.keys() | after.keys()
                                  if before.get(k) != after.get(k)})
                watch.wrote.append(f"{name} failed ({exc}) after writing {changed}")
            raise

    monkeypatch.setattr(ScriptRunner, "run", run)
    return watch


_fresh = itertools.count()


def fresh_users(world: World, server: LocalRedis, count: int) -> list[str]:
    """New user ids, each of its own slot, that ``server`` serves now."""
    return users_on(world, server, count, prefix=f"t{next(_fresh)}x")


Step = Callable[[World, str, str, str], Awaitable[Any]]


async def _send(world: World, gid: str, ann: str, bob: str) -> Any:
    return await world.clearing.reserve(gid, ann, bob, "note", 1)


async def _accept(world: World, gid: str, ann: str, bob: str) -> Any:
    return await world.clearing.accept(gid, bob, sender_hint=ann)


async def _sweep(world: World, gid: str, ann: str, bob: str) -> Any:
    await world.clearing.expire_due()


async def _expire(world: World, gid: str, ann: str, bob: str) -> Any:
    return await world.clearing.expire(bob, gid)  # what the sweep does for each entry due


async def _recover_admission(world: World, gid: str, ann: str, bob: str) -> Any:
    return await world.clearing.recover(f"admit|{bob}|{gid}")


async def _recover_answer(world: World, gid: str, ann: str, bob: str) -> Any:
    return await world.clearing.recover(f"answered|{bob}|{gid}")


async def _admitted_only(world: World, gid: str, ann: str, bob: str) -> None:
    saga = await world.clearing.send_saga(gid, ann, bob, "note", 1)
    assert await saga.admit() is None
    await world.tick(world.clearing.constant_args["saga_ms"] + 1)


async def _answered_only(world: World, gid: str, ann: str, bob: str) -> None:
    await _send(world, gid, ann, bob)
    saga = await world.clearing.answer_saga(gid, bob, "accept")
    _, changed, _ = await saga.answer()
    assert changed
    await world.tick(world.clearing.constant_args["saga_ms"] + 1)


async def _before_answer(world: World, gid: str, ann: str, bob: str) -> None:
    await _send(world, gid, ann, bob)


async def _before_expiry(world: World, gid: str, ann: str, bob: str) -> None:
    await _send(world, gid, ann, bob)
    await world.tick(world.rules.confirm_window_ms + 1)


async def _nothing(world: World, gid: str, ann: str, bob: str) -> None:
    return None


#: name -> (what comes before, the step tried while the slot is half-way)
OPERATIONS: dict[str, tuple[Step, Step]] = {
    "send": (_nothing, _send),
    "accept": (_before_answer, _accept),
    "sweep": (_before_expiry, _sweep),
    "expire": (_before_expiry, _expire),
    "recover-admission": (_admitted_only, _recover_admission),
    "recover-answer": (_answered_only, _recover_answer),
}


async def finish_gift(world: World, gid: str, ann: str, bob: str) -> None:
    """What a retry and recovery do once the slot has moved: the gift ends resolved (or its
    send abandoned), and each card is where it belongs."""
    state: GiftState | None = None
    with contextlib.suppress(Refused):  # SEND_ABORTED: an admission recovery voided
        state = (await world.clearing.reserve(gid, ann, bob, "note", 1)).state
    if state is GiftState.PENDING:
        with contextlib.suppress(Refused):  # GIFT_EXPIRED: the sweep below gives it back
            await world.clearing.accept(gid, bob, sender_hint=ann)
    for _ in range(2):  # a recovered step may leave the next one due
        await world.tick(world.clearing.constant_args["saga_ms"] + 1)
        await world.clearing.expire_due()
    if state is not None:
        state = (await world.clearing.reserve(gid, ann, bob, "note", 1)).state
        assert state in {GiftState.ACCEPTED, GiftState.EXPIRED}, state
    available = {u: (await world.clearing.balances(u)).available["note"] for u in (ann, bob)}
    assert available[ann] + available[bob] == 10 * UNIT, available
    assert available[ann] == (4 if state is GiftState.ACCEPTED else 5) * UNIT, (state, available)


#: The saga for every operation; the one-script path for its accept (resolve.lua, the
#: largest script; send.lua and the sweeper's resolve read what they write first the same
#: way). Each case takes 10-25 s, and the suite has to stay within CI's time.
CASES = [(op, saga) for op in OPERATIONS for saga in (False, True) if saga or op == "accept"]


@pytest.mark.slow
@pytest.mark.parametrize("moving_party", ["sender", "recipient"])
@pytest.mark.parametrize(("operation", "saga"), CASES,
                         ids=[f"{op}-{'saga' if saga else 'one-script'}" for op, saga in CASES])
async def test_no_script_fails_after_a_write_at_any_split_of_a_moving_slot(
        two_shards: LocalCluster, world: World, monkeypatch: pytest.MonkeyPatch,
        operation: str, moving_party: str, saga: bool) -> None:
    first, second = (shard.primary for shard in two_shards.shards)
    before, step = OPERATIONS[operation]
    world.clearing.force_saga = saga
    watch = watch_scripts(monkeypatch, world.clearing.lua, two_shards)
    splits = 0
    for k in itertools.count():
        ann, bob = fresh_users(world, first, 2)
        for user in (ann, bob):
            await world.user(user, cards=5)
        await world.befriend(ann, bob)
        gid = f"g{k}"
        await before(world, gid, ann, bob)
        moving = Resharding(two_shards, slot_of(ann if moving_party == "sender" else bob), first, second)
        moving.begin()
        with moving._client(first) as c:
            keys = c.execute_command("CLUSTER", "GETKEYSINSLOT", moving.slot, 1000)
            for key in keys[:k]:  # the first k keys on the target, the others still here
                c.execute_command("MIGRATE", second.host, second.port, "", 0, 5000,
                                  "AUTH", two_shards.password, "KEYS", key)
        if k == 0:
            watch.failed.append(f"keys in the order they move: {[key.decode() for key in keys]}")
        try:
            await step(world, gid, ann, bob)
        except (rx.ResponseError, ClearingUnavailable) as exc:
            watch.failed.append(f"the {operation} at split {k}: {exc}")
        moving.move_keys()
        moving.finish()
        await world.topology.refresh(True)
        await finish_gift(world, gid, ann, bob)
        report = await world.check()
        assert report.ok, (k, report.violations)
        splits += 1
        if k >= len(keys):
            break
    assert splits > 3
    assert watch.wrote == [], watch.wrote
    print(f"{operation}/{moving_party}/{'saga' if saga else 'one-script'}: {splits} splits;",
          *watch.failed, sep="\n  ")
