"""Newcomer promotion on a cluster does not push every gift off the one-script path.

The promotion account pays only a newcomer's free gift, and only the script can tell
whether the sender still is one. So a gift whose sender and recipient share a Redis node
runs ``send.lua`` even when the promotion account is on another node: an established
sender's gift completes there in one script; a newcomer's is answered NEEDS_SAGA before
anything is written and takes the saga, paid by the promotion. Counted with
``INFO commandstats`` on the 3-shard test cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clearing import GiftRules
from clearing.rules import DAY_MS
from clearing.slots import SLOTS, slot_of
from clearing.testing import World
from clearing.topology import Topology
from notecard.local_cluster import LocalCluster
from tests.conftest import cluster_store

UNIT = GiftRules().units_per_card
#: The test cluster splits the slots evenly over 3 shards (notecard/local_cluster.py).
SHARDS = 3


def shard_of(user: str) -> int:
    return slot_of(user) * SHARDS // SLOTS


def users_on(shard: int, count: int) -> list[str]:
    found: list[str] = []
    n = 0
    while len(found) < count:
        if shard_of(f"p{n}") == shard:
            found.append(f"p{n}")
        n += 1
    return found


@pytest.fixture
async def world(redis_cluster: LocalCluster) -> AsyncIterator[World]:
    topology: Topology = await cluster_store(redis_cluster)
    w = await World.build(topology, GiftRules(daily_send_limit=50, daily_receive_limit=50))
    await w.accounts.create_user("promo", verified=True)  # the default settings' promotion account
    await w.accounts.mint("promo", "note", 10)
    yield w
    report = await w.check()
    assert report.ok, report.violations
    await topology.aclose()
    await topology.general.aclose()


async def script_calls(w: World) -> int:
    total = 0
    for node in w.topology.nodes():
        stats = await node.client.info("commandstats")
        total += int(stats.get("cmdstat_fcall", {}).get("calls", 0))
    return total


async def test_an_established_senders_gift_takes_one_script_with_the_promotion_elsewhere(world: World) -> None:
    shard = (shard_of("promo") + 1) % SHARDS
    sender, recipient = users_on(shard, 2)
    await world.user(sender, cards=5)
    await world.user(recipient)
    await world.befriend(sender, recipient)
    await world.tick(8 * DAY_MS)  # the sender is no newcomer any more
    await world.clearing.reserve("g0", sender, recipient, "note", 1)  # the script is loaded on its node
    before = await script_calls(world)
    gift = await world.clearing.reserve("g1", sender, recipient, "note", 2)
    assert await script_calls(world) - before == 1  # send.lua alone: the saga is 3 steps or more
    assert gift.payer is None
    assert (await world.clearing.balances(sender)).held["note"] == 3 * UNIT


async def test_a_newcomers_gift_with_the_promotion_elsewhere_is_paid_by_it(world: World) -> None:
    shard = (shard_of("promo") + 1) % SHARDS
    sender, recipient = users_on(shard, 2)
    await world.user(sender)  # a newcomer without cards: only the promotion can pay
    await world.user(recipient)
    await world.befriend(sender, recipient)
    gift = await world.clearing.reserve("g1", sender, recipient, "note", 2)
    assert gift.payer == "promo"
    await world.clearing.accept("g1", recipient)
    assert (await world.clearing.balances("promo")).available["note"] == 8 * UNIT
    assert (await world.clearing.balances(recipient)).available["note"] == 2 * UNIT
    # the same gift id again: the gift as it is, nothing moves twice
    again = await world.clearing.reserve("g1", sender, recipient, "note", 2)
    assert again.payer == "promo"
    assert (await world.clearing.balances("promo")).available["note"] == 8 * UNIT
