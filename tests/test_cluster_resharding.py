"""A slot moves between shards under a running clearing (a resharding): the router's map
is stale, the fast path meets a key that left its node, a saga step meets MOVED and ASK.
Every gift must still go through exactly once and the conservation check must hold.

The cluster here is its own (two primaries, no replicas): the test moves slots, which the
shared test cluster's users must not see.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from clearing import ClearingUnavailable, GiftRules, GiftState, lua
from clearing.gifts import Clearing
from clearing.guard import SlotMoving
from clearing.keys import DEFAULT_KEYS
from clearing.rooms import Rooms
from clearing.scenes import Scenes
from clearing.slots import slot_of, tag_of
from clearing.testing import World
from clearing.topology import ClusterTopology, connect_cluster
from gateway import GatewayNode, GatewaySettings, close_store, connect_store
from gateway.metrics import NodeMetrics
from gateway.requests import RequestHandler
from notecard.local_cluster import LocalCluster
from notecard.local_redis import LocalRedis
from notecard_sdk import GiftRefused, NotecardClient
from protocol import Balance, Error, ErrorCode, GetBalance, GiftSent
from tests.conftest import CALM_NODE_TIMEOUT_MS
from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET, token_for

UNIT = GiftRules().units_per_card


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("reshard")), shards=2, replicas=0,
                           node_timeout_ms=CALM_NODE_TIMEOUT_MS)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def world(two_shards: LocalCluster) -> AsyncIterator[World]:
    topology = await connect_cluster([(s.host, s.port) for s in two_shards.servers], password=two_shards.password,
                                     fence=lambda tag: DEFAULT_KEYS.node_channel(tag, "fence"))
    await topology.general.flushall(target_nodes="primaries")
    w = await World.build(topology, GiftRules(daily_send_limit=50, daily_receive_limit=50))
    # no free newcomer gifts: the promotion account that pays them is on a shard of its own
    await Scenes(w.topology, w.rules, w.keys, w.clock, settings=w.settings).set_config({"newcomer_free_gifts": 0})
    yield w
    try:
        report = await w.check()
    finally:  # closed whatever the check finds, or its clients leak into the next tests
        await topology.aclose()
        await topology.general.aclose()
    assert report.ok, report.violations


def users_on(world: World, server: LocalRedis, count: int, prefix: str = "u") -> list[str]:
    """User ids (``<prefix><n>``), each of its own slot, whose slots ``server`` serves now."""
    chosen: list[str] = []
    for i in itertools.count():
        user = f"{prefix}{i}"
        if (world.topology.node_for(slot_of(user)).name == f"{server.host}:{server.port}"
                and slot_of(user) not in {slot_of(u) for u in chosen}):
            chosen.append(user)
            if len(chosen) == count:
                return chosen
    raise AssertionError


class Resharding:
    """CLUSTER SETSLOT IMPORTING / MIGRATING, MIGRATE of the slot's keys, SETSLOT NODE: the
    steps ``redis-cli --cluster reshard`` takes, one slot at a time."""

    def __init__(self, cluster: LocalCluster, slot: int, source: LocalRedis, target: LocalRedis) -> None:
        self.cluster, self.slot, self.source, self.target = cluster, slot, source, target

    def _client(self, server: LocalRedis) -> redis.Redis:
        return redis.Redis(host=server.host, port=server.port, password=self.cluster.password)

    def _id(self, server: LocalRedis) -> str:
        with self._client(server) as c:
            return str(c.execute_command("CLUSTER", "MYID").decode())

    def begin(self) -> None:
        with self._client(self.target) as c:
            c.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self._id(self.source))
        with self._client(self.source) as c:
            c.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self._id(self.target))

    def move_keys(self) -> int:
        moved = 0
        with self._client(self.source) as c:
            while keys := c.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 100):
                c.execute_command("MIGRATE", self.target.host, self.target.port, "", 0, 5000,
                                  "AUTH", self.cluster.password, "KEYS", *keys)
                moved += len(keys)
        return moved

    def finish(self) -> None:
        target_id = self._id(self.target)
        for server in (self.target, self.source):
            with self._client(server) as c:
                c.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", target_id)


def record_steps(monkeypatch: pytest.MonkeyPatch, clearing: Clearing) -> list[str]:
    """The saga steps clearing runs from now on (the fast path runs none)."""
    steps: list[str] = []
    original = clearing.step

    async def step(name: Any, user: str, now: int, args: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        steps.append(str(name))
        return await original(name, user, now, args, **kwargs)

    monkeypatch.setattr(clearing, "step", step)
    return steps


async def test_gifts_go_through_while_the_recipients_slot_moves_to_another_shard(
        two_shards: LocalCluster, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = (shard.primary for shard in two_shards.shards)
    ann, bob = users_on(world, first, 2)
    for user in (ann, bob):
        await world.user(user, cards=5)
    await world.befriend(ann, bob)
    steps = record_steps(monkeypatch, world.clearing)
    topology = world.topology
    assert isinstance(topology, ClusterTopology)

    # Both on the first shard: one script per operation.
    await world.clearing.reserve("g1", ann, bob, "note", 1)
    await world.clearing.accept("g1", bob, sender_hint=ann)
    assert steps == []

    # Bob's slot half-way to the second shard: his keys are there, the slot not yet handed
    # over. The map still says the first shard; it answers ASK for his keys.
    moving = Resharding(two_shards, slot_of(bob), first, second)
    moving.begin()
    assert moving.move_keys() > 0
    # The target lacks clearing's function library: the call sent there after ASK loads it.
    with moving._client(second) as c:
        c.function_flush()
    gift = await world.clearing.reserve("g2", ann, bob, "note", 1)
    assert gift.state is GiftState.PENDING
    assert "admit" in steps  # the fast path met a key that left its node: the saga ran
    with moving._client(second) as c:
        assert [lib[1] for lib in c.function_list()] == [lua.library().name.encode()]
    assert (await world.clearing.accept("g2", bob, sender_hint=ann)).gift.state is GiftState.ACCEPTED
    report = await world.check()
    assert report.ok, report.violations

    # Handed over: MOVED, the map is read again, and from then on the router knows.
    moving.finish()
    steps.clear()
    gift = await world.clearing.reserve("g3", ann, bob, "note", 1)
    assert gift.state is GiftState.PENDING
    assert (await world.clearing.decline("g3", bob, sender_hint=ann)).gift.state is GiftState.DECLINED
    assert "admit" in steps and "answer" in steps
    assert topology.node_for(slot_of(bob)) is not topology.node_for(slot_of(ann))

    # The same gift again is the same gift (idempotency survived the move), and nothing was
    # paid twice: ann gave 2 cards, one came back.
    assert (await world.clearing.reserve("g2", ann, bob, "note", 1)).state is GiftState.ACCEPTED
    assert (await world.clearing.balances(ann)).available["note"] == 3 * UNIT
    assert (await world.clearing.balances(bob)).available["note"] == 7 * UNIT


async def test_a_saga_step_follows_the_slot_of_the_sender_moving_mid_gift(
        two_shards: LocalCluster, world: World) -> None:
    """The sender's slot moves after the admission and before the reserve: the reserve
    meets MOVED, and the gift completes on the new shard."""
    first, second = (shard.primary for shard in two_shards.shards)
    (ann,) = users_on(world, first, 1)
    (bob,) = users_on(world, second, 1)
    for user in (ann, bob):
        await world.user(user, cards=5)
    await world.befriend(ann, bob)
    saga = await world.clearing.send_saga("g1", ann, bob, "note", 2)
    assert await saga.admit() is None

    moving = Resharding(two_shards, slot_of(ann), first, second)
    moving.begin()
    moving.move_keys()
    moving.finish()

    gift = await saga.offer(await saga.reserve(None))
    assert gift.state is GiftState.PENDING
    assert (await world.clearing.accept("g1", bob)).gift.state is GiftState.ACCEPTED
    assert (await world.clearing.balances(ann)).available["note"] == 3 * UNIT
    assert (await world.clearing.balances(bob)).available["note"] == 7 * UNIT


async def test_a_transaction_on_a_slot_half_way_to_another_shard_applies_nothing_and_is_unavailable(
        two_shards: LocalCluster, world: World) -> None:
    """redis-py's cluster transactions do not follow ASK: a MULTI on a moving slot is aborted
    by Redis (EXECABORT) and comes back as AskError or MovedError. Nothing was applied, so it
    is UNAVAILABLE (retry later), not a defect; once the slot is handed over it goes through."""
    first, second = (shard.primary for shard in two_shards.shards)
    (ann,) = users_on(world, first, 1)
    (star,) = users_on(world, second, 1)
    for user in (ann, star):
        await world.user(user, cards=5)
    rooms = Rooms(world.topology, world.rules, world.keys, world.clock, settings=world.settings)
    await rooms.open_wish(star, "note", 10)
    await rooms.join(star, ann, world.node)
    requests = RequestHandler(world.clearing, world.rules, NodeMetrics())

    def quotes_stored() -> list[bytes]:
        pattern = world.keys.quote(ann, "*")
        found: list[bytes] = []
        for server in (first, second):
            with redis.Redis(host=server.host, port=server.port, password=two_shards.password) as c:
                found += c.keys(pattern)
        return found

    moving = Resharding(two_shards, slot_of(ann), first, second)
    moving.begin()
    # Nothing moved yet, but ann has no held cards: the source answers ASK for that key.
    with pytest.raises(SlotMoving):
        await world.clearing.balances(ann)
    moving.move_keys()
    with pytest.raises(SlotMoving):
        await world.accounts.get_user(ann)
    # A write: the quote's HSET and PEXPIRE on ann's slot; the EXEC was refused, nothing stored.
    with pytest.raises(SlotMoving):
        await rooms.quote(ann, star, "note", 1)
    assert quotes_stored() == []
    # What a client of the gateway sees: the documented retryable code, no internal detail.
    reply = await requests.handle(ann, GetBalance(rid=7))
    assert isinstance(reply, Error) and reply.code == ErrorCode.UNAVAILABLE and reply.rid == 7
    assert reply.message == "service temporarily unavailable; retry with the same ids"
    assert issubclass(SlotMoving, ClearingUnavailable)

    moving.finish()
    assert (await world.clearing.balances(ann)).available["note"] == 5 * UNIT
    user = await world.accounts.get_user(ann)
    assert user is not None and user.user_id == ann
    await rooms.quote(ann, star, "note", 1)
    assert len(quotes_stored()) == 1
    reply = await requests.handle(ann, GetBalance(rid=8))
    assert isinstance(reply, Balance) and reply.rid == 8


async def send_once_heard(sender: NotecardClient, recipient: str, within_s: float = 60.0) -> GiftSent:
    """Send, waiting out RECIPIENT_OFFLINE: a node that lost its channel leaves presence until
    it hears its probes again on the new one (by design, so senders are not left waiting);
    how long that takes depends on the machine, not on the protocol."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within_s
    while True:
        try:
            return await sender.send_gift(recipient)
        except GiftRefused as refused:
            if refused.code != "RECIPIENT_OFFLINE" or loop.time() > give_up:
                raise
            await asyncio.sleep(0.2)


async def test_a_gateway_node_follows_its_channel_when_the_home_slot_of_a_shard_moves(
        two_shards: LocalCluster, world: World, tmp_path: Path) -> None:
    """Gateway nodes listen on one channel per Redis server, in its lowest ("home") slot.
    Moving that slot away makes Redis drop the subscription; the node subscribes again on
    the new map and offers keep arriving live."""
    first, second = (shard.primary for shard in two_shards.shards)
    ann, bob = users_on(world, first, 2)
    for user in (ann, bob):
        await world.user(user, cards=5, online=False)
    await world.befriend(ann, bob)
    settings = GatewaySettings(redis_cluster=tuple((s.host, s.port) for s in two_shards.servers),
                               redis_password=two_shards.password, port=0, admin_port=0, data_dir=tmp_path,
                               log_format="text", subscriber_probe_s=0.5, shutdown_grace_s=2.0,
                               rules=world.rules)
    store = await connect_store(settings)
    node = GatewayNode(settings, store, token_secret=TOKEN_SECRET, admin_token=ADMIN_TOKEN)
    await node.start()
    clients = [NotecardClient(node.url, token_for(user)) for user in (ann, bob)]
    try:
        sender, recipient = clients
        for client in clients:
            await client.connect()
        gift = await sender.send_gift(bob)
        assert (await recipient.next_offer(10)).gift_id == gift.gift_id

        home = min(s for s in range(16384) if world.topology.node_for(s).name == f"{first.host}:{first.port}")
        moving = Resharding(two_shards, home, first, second)
        moving.begin()
        moving.move_keys()
        moving.finish()
        for _ in range(3):  # each arrives live, whichever channel the node listens on now
            gift = await send_once_heard(sender, bob)
            assert (await recipient.next_offer(30)).gift_id == gift.gift_id
            await recipient.accept(gift.gift_id)
    finally:
        for client in clients:
            await client.close()
        await node.stop()
        await close_store(store)


async def test_the_clean_up_after_settle_on_a_slot_half_moved_leaves_the_answer_to_recovery(
        two_shards: LocalCluster, world: World) -> None:
    """settled@R on a slot whose keys are half-way to another shard (the offer half moved,
    the user's key not yet): the answer stands (accepted, settled at S) whatever the clean-up
    meets, so it may not fail the answer; what it leaves, recovery finishes once the slot has
    moved."""
    first, second = (shard.primary for shard in two_shards.shards)
    (ann,) = users_on(world, first, 1)
    (bob,) = users_on(world, second, 1)
    for user in (ann, bob):
        await world.user(user, cards=5)
    await world.befriend(ann, bob)
    await world.clearing.reserve("g1", ann, bob, "note", 1)
    saga = await world.clearing.answer_saga("g1", bob, "accept")
    gift, changed, _ = await saga.answer()
    assert changed
    await saga.settle(gift)
    moving = Resharding(two_shards, slot_of(bob), second, first)
    moving.begin()
    offer = world.keys.offer(bob, "g1").encode()
    with moving._client(second) as c:
        c.execute_command("MIGRATE", first.host, first.port, "", 0, 5000, "AUTH", two_shards.password,
                          "KEYS", offer)
    await saga.answered(gift)  # must not raise: the answer is done
    moving.move_keys()
    moving.finish()
    await world.topology.refresh(True)
    due, entry = world.keys.due(tag_of(bob)), f"answered|{bob}|g1"
    assert await world.redis.zscore(due, entry) is not None  # left for recovery
    await world.tick(world.clearing.constant_args["saga_ms"] + 1)
    await world.clearing.expire_due()
    assert await world.redis.zscore(due, entry) is None
    assert await world.redis.hget(world.keys.offer(bob, "g1"), "owed") is None
    assert await world.redis.pttl(world.keys.offer(bob, "g1")) > 0
    assert (await world.clearing.balances(bob)).available["note"] == 6 * UNIT
