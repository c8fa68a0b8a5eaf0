"""The sweeper's cost follows the work: an idle deployment is not read slot by slot.

Every entry a script adds to a slot's expiry or due queue is noted in its Redis server's
sweep index (clearing/keys.py ``sweep_index``), and a node's tick reads that index, then
only the slots it lists, plus a small rolling slice of its share in full. Counted with
``INFO commandstats`` on real servers (one Redis, and the 3-shard cluster), and checked to
still find what is due in any slot, also after the index is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
from collections.abc import AsyncIterator

import pytest

from clearing import GiftRules
from clearing.slots import SLOTS, slot_of, slot_tag
from clearing.testing import World
from clearing.topology import Topology
from gateway.metrics import NodeMetrics
from gateway.periodic import Sweeper

UNIT = GiftRules().units_per_card
ALL_SLOTS = range(SLOTS)
#: Edges of the test cluster's shards (notecard/local_cluster.py splits evenly), and one inside.
EDGE_SLOTS = (0, 5460, 5461, 10921, 10922, SLOTS - 1, 7777)


def user_in(slot: int) -> str:
    """A user id whose keys live in ``slot``."""
    n = 0
    while slot_of(f"u{n}") != slot:
        n += 1
    return f"u{n}"


@pytest.fixture
async def world(store: Topology) -> AsyncIterator[World]:
    w = await World.build(store, GiftRules(daily_send_limit=50, daily_receive_limit=50))
    await w.user("ann", cards=20)
    yield w
    report = await w.check()
    assert report.ok, report.violations


async def reset_stats(w: World) -> None:
    for node in w.topology.nodes():
        await node.client.config_resetstat()


async def calls(w: World, command: str) -> int:
    """Calls of ``command`` on every server since reset_stats (scripts' commands included)."""
    total = 0
    for node in w.topology.nodes():
        stats = await node.client.info("commandstats")
        total += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    return total


async def gifts_to_every_edge(w: World) -> list[str]:
    recipients = [user_in(s) for s in EDGE_SLOTS]
    for i, r in enumerate(recipients):
        await w.user(r)
        await w.befriend("ann", r)
        await w.clearing.reserve(f"g{i}", "ann", r, "note", 1)
    return [f"g{i}" for i in range(len(recipients))]


async def test_an_idle_sweep_reads_one_index_per_server_and_no_slot(world: World) -> None:
    await reset_stats(world)
    result = await world.clearing.sweep_due()
    assert (result.expired, result.recovered) == ([], 0)
    assert await calls(world, "zrangebyscore") == len(world.topology.nodes())
    assert await calls(world, "fcall") == 0  # no due.lua: no slot read


async def test_an_idle_tick_of_a_node_reads_a_small_slice_of_its_slots(world: World) -> None:
    sweeper = Sweeper(world.clearing, world.presence, world.node, NodeMetrics())
    await reset_stats(world)
    await sweeper.step()
    slice_size = math.ceil(SLOTS / Sweeper.FULL_SWEEP_TICKS)
    servers = len(world.topology.nodes())
    # two queues per slot of the slice, one index per server, the live nodes' registry:
    # against 2 x 16,384 reads of queues before
    assert await calls(world, "zrangebyscore") <= 2 * slice_size + servers + 1
    assert slice_size * 100 < SLOTS


async def test_offers_due_in_any_slot_are_found_through_the_index(world: World) -> None:
    gifts = await gifts_to_every_edge(world)
    assert (await world.clearing.sweep_due()).expired == []  # listed, not due yet
    await world.tick(world.rules.confirm_window_ms)
    await reset_stats(world)
    swept = await world.clearing.sweep_due()
    assert sorted(g.gift_id for g in swept.expired) == sorted(gifts)
    # the slots read are the ones with work, not every slot of a server (one index per
    # server, two queues per slot with work, the live nodes' registry for the expiries)
    assert await calls(world, "zrangebyscore") <= len(world.topology.nodes()) + 2 * len(EDGE_SLOTS) + 1
    assert (await world.clearing.balances("ann")).held["note"] == 0
    # the index is set right by the read: nothing listed any more, so the next sweep is idle
    await reset_stats(world)
    assert (await world.clearing.sweep_due()).expired == []
    # one more read of the slots just emptied (they were read before their entries went), per server
    assert await calls(world, "fcall") <= len(world.topology.nodes())
    assert await calls(world, "zrangebyscore") <= len(world.topology.nodes()) + 2 * len(EDGE_SLOTS)
    await reset_stats(world)
    assert (await world.clearing.sweep_due()).expired == []
    assert await calls(world, "fcall") == 0


async def test_a_lost_index_is_made_up_by_the_rolling_full_sweep(world: World) -> None:
    gifts = await gifts_to_every_edge(world)
    for node in world.topology.nodes():
        await node.client.delete(world.keys.sweep_index(node.home))
    await world.tick(world.rules.confirm_window_ms)
    assert (await world.clearing.sweep_due()).expired == []  # the index knows nothing
    sweeper = Sweeper(world.clearing, world.presence, world.node, NodeMetrics())
    for _ in range(Sweeper.FULL_SWEEP_TICKS):
        await sweeper.step()
    assert sweeper.metrics.registry.get_sample_value("notecard_swept_gifts_total") == len(gifts)
    assert (await world.clearing.balances("ann")).held["note"] == 0


async def test_an_index_entry_that_names_no_slot_of_its_server_is_dropped(world: World) -> None:
    node = world.topology.nodes()[0]
    index = world.keys.sweep_index(node.home)
    foreign = next(s for s in ALL_SLOTS if world.topology.node_for(s) is not node) if len(
        world.topology.nodes()) > 1 else None
    junk = {"not a tag": 0, "#": 0, **({slot_tag(foreign): 0} if foreign is not None else {})}
    await node.client.zadd(index, junk)
    assert (await world.clearing.sweep_due()).expired == []
    assert await node.client.zcard(index) == 0


async def test_an_index_key_of_another_type_stops_no_gift_and_is_started_again(world: World) -> None:
    for node in world.topology.nodes():
        await node.client.set(world.keys.sweep_index(node.home), "hand edit")
    gifts = await gifts_to_every_edge(world)  # whole gifts: the scripts note nothing in it
    assert (await world.clearing.balances("ann")).held["note"] == len(gifts) * UNIT
    assert (await world.clearing.sweep_due()).expired == []  # drops it
    for node in world.topology.nodes():
        assert await node.client.exists(world.keys.sweep_index(node.home)) == 0
    await world.tick(world.rules.confirm_window_ms)
    swept = await world.clearing.sweep(ALL_SLOTS)  # the full sweep finds what went unnoted
    assert sorted(g.gift_id for g in swept.expired) == sorted(gifts)


async def test_each_servers_index_is_read_by_one_node_of_a_share_and_nothing_is_missed(world: World) -> None:
    gifts = await gifts_to_every_edge(world)
    await world.tick(world.rules.confirm_window_ms)
    await reset_stats(world)
    swept = [await world.clearing.sweep_due(rank, 2) for rank in range(2)]  # two nodes' ticks
    assert sorted(g.gift_id for result in swept for g in result.expired) == sorted(gifts)
    # one index read per server over both nodes, two queues per slot with work, the
    # registry for the expiries
    assert await calls(world, "zrangebyscore") <= len(world.topology.nodes()) + 2 * len(EDGE_SLOTS) + 2


async def test_a_sweep_cancelled_before_its_reads_start_leaves_no_redis_call_unawaited(world: World) -> None:
    """A node stopping cancels its sweeper between ticks or inside one. Cancelled before its
    reads started, a sweep must not leave Redis calls that were created and never awaited
    (Python warns about each; the suite turns warnings into errors)."""
    for _ in range(5):
        sweep = asyncio.create_task(world.clearing.due_slots())
        await asyncio.sleep(0)  # it starts, hands its reads to gather, and waits for them
        sweep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweep
    gc.collect()  # an unawaited call is reported when collected, as an error of this test
