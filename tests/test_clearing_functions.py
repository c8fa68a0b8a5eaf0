"""Clearing's scripts as one Redis Functions library (clearing/lua.py), against real servers.

A node that lost the library (FUNCTION FLUSH, a restart without persistence) gets it on
the first call that finds it missing, and the calls of that batch run exactly once; two
versions of the library (a rolling upgrade: one node still on the previous release) live
side by side on every primary and serve the same gifts. On one Redis and on a 3-shard
cluster; the conservation invariant is checked after each.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import get_args

import pytest
import redis.asyncio as aioredis

from clearing import GiftRules, GiftState, lua
from clearing.pipelining import FunctionLibrary
from clearing.testing import World
from clearing.topology import Topology
from notecard.local_redis import LocalRedis

#: Daily limits lifted: these tests send many gifts from one sender to one recipient.
RULES = GiftRules(daily_send_limit=1_000_000, daily_receive_limit=1_000_000)


@pytest.fixture
async def world(store: Topology) -> AsyncIterator[World]:
    """On one Redis, then on a 3-shard cluster: ann and bob, friends, ann with cards. No
    library on any node to begin with: FLUSHALL keeps functions, and a test before this one
    in the session may have left another version (test_clearing_saga's altered state table)."""
    for node in store.nodes():
        await node.client.function_flush()
    w = await World.build(store, RULES)
    await w.user("ann", cards=100)
    await w.user("bob")
    await w.befriend("ann", "bob")
    yield w
    report = await w.check()
    assert report.ok, report.violations


async def libraries(client: aioredis.Redis) -> set[str]:
    """The names of the function libraries a Redis node holds."""
    names: set[str] = set()
    for entry in await client.function_list():
        fields = dict(zip(entry[::2], entry[1::2], strict=True))
        name = fields[b"library_name"]
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    return names


async def flush_functions(world: World) -> None:
    for node in world.topology.nodes():
        await node.client.function_flush()
        assert await libraries(node.client) == set()


def test_the_library_is_named_after_its_content_and_so_are_its_functions() -> None:
    library = lua.library()
    assert re.fullmatch(r"nc_[0-9a-f]{8}", library.name)
    assert library.code.startswith(f"#!lua name={library.name}\n")
    assert f"function_name = '{library.name}_reserve'" in library.code
    assert library.function("reserve") == f"{library.name}_reserve"
    # Every script is one function; the read-only ones keep their flag.
    for name in get_args(lua.ScriptName):
        assert f"'{library.name}_{name}'" in library.code
    assert "function_name = '" + library.name + "_gauges', flags = {'no-writes', 'allow-cross-slot-keys'}" \
        in library.code


async def test_a_library_flushed_mid_run_is_loaded_again_and_every_call_runs_once(world: World) -> None:
    first = await asyncio.gather(*(world.clearing.reserve(f"a{i}", "ann", "bob", "note", 1) for i in range(6)))
    served = set().union(*[await libraries(n.client) for n in world.topology.nodes()])
    assert served == {lua.library().name}
    await flush_functions(world)
    # One batch of different functions (reserve, accept, decline), all missing on the node.
    sent, *answered = await asyncio.gather(
        world.clearing.reserve("b0", "ann", "bob", "note", 1),
        *(world.clearing.accept(g.gift_id, "bob") for g in first[:3]),
        *(world.clearing.decline(g.gift_id, "bob") for g in first[3:]),
    )
    assert sent.state is GiftState.PENDING
    assert [r.gift.state for r in answered] == [GiftState.ACCEPTED] * 3 + [GiftState.DECLINED] * 3
    assert all(r.changed for r in answered)  # each ran exactly once
    await flush_functions(world)
    assert (await world.clearing.accept("b0", "bob")).changed
    assert (await world.clearing.balances("bob")).available["note"] > 0
    served = set().union(*[await libraries(n.client) for n in world.topology.nodes()])
    assert served == {lua.library().name}


async def test_two_versions_of_the_library_serve_the_same_gifts_side_by_side(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rolling upgrade: a node of the previous release calls its own version's functions
    while this one calls its own, on the same primaries, never each other's."""
    current = lua.library()
    previous_name = "nc_00000000"
    previous = FunctionLibrary(previous_name, current.code.replace(current.name, previous_name))

    def previous_release() -> FunctionLibrary:
        return previous

    ours = await world.clearing.reserve("ours", "ann", "bob", "note", 1)
    monkeypatch.setattr(lua, "library", previous_release)
    theirs = await world.clearing.reserve("theirs", "ann", "bob", "note", 1)
    # The previous release answers a gift this one sent ...
    assert (await world.clearing.accept(ours.gift_id, "bob")).gift.state is GiftState.ACCEPTED
    monkeypatch.undo()
    # ... and this one a gift the previous one sent.
    assert (await world.clearing.decline(theirs.gift_id, "bob")).gift.state is GiftState.DECLINED
    held = set().union(*[await libraries(n.client) for n in world.topology.nodes()])
    assert {current.name, previous_name} <= held
    # The previous version is still callable after this one was used again (nothing replaced it).
    monkeypatch.setattr(lua, "library", previous_release)
    again = await world.clearing.reserve("again", "ann", "bob", "note", 1)
    assert (await world.clearing.accept(again.gift_id, "bob")).changed


async def test_a_restarted_redis_without_persistence_gets_the_library_on_the_next_call(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "redis").start()
    client = aioredis.Redis.from_url(server.url)
    try:
        world = await World.build(client, RULES)
        await world.user("ann", cards=10)
        await world.user("bob")
        await world.befriend("ann", "bob")
        await world.clearing.reserve("before", "ann", "bob", "note", 1)
        assert await libraries(client) == {lua.library().name}

        server.stop()
        server.start()  # same port, no persistence: the data and the library are gone
        # The pooled connections died with the old process; the library, not reconnects, is
        # what this test is about.
        await client.connection_pool.disconnect()
        assert await libraries(client) == set()

        await world.presence.heartbeat(world.node)
        await world.user("ann", cards=10)
        await world.user("bob")
        await world.befriend("ann", "bob")
        gift = await world.clearing.reserve("after", "ann", "bob", "note", 1)
        assert (await world.clearing.accept(gift.gift_id, "bob")).changed
        assert await libraries(client) == {lua.library().name}
        report = await world.check()
        assert report.ok, report.violations
    finally:
        await client.aclose()
        server.stop()
