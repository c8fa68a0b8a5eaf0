"""A node that cannot hear its pub/sub subscription, and background tasks that end.

The node's Redis traffic goes through the drill's fault proxy (a real TCP proxy in front
of the real redis-server), whose ``freeze_pubsub`` holds every byte of the node's pub/sub
connections (and of any it opens meanwhile) while they stay open: no error, no close, the
subscription simply stops carrying anything. The node must notice, stop claiming to be
ready, leave presence (so a sender is told RECIPIENT_OFFLINE instead of getting an
acknowledged gift that nobody is offered), and come back by itself when bytes flow again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from clearing import GiftRules, Presence, UserEvent
from clearing.keys import KeySchema
from gateway import GatewayNode, GatewaySettings, connect_redis
from gateway.metrics import NodeMetrics
from gateway.node import NodeFailed
from gateway.subscriber import NodeSubscriber
from gateway.supervisor import TaskSupervisor
from loadtest.faults.proxy import FaultProxy
from notecard.admin_client import AdminClient
from notecard.local_redis import LocalRedis
from notecard_sdk import GiftRefused, NotecardClient
from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET, ClientFactory, NodeFactory, befriend_all, token_for

#: Fast probes and beats on the frozen node, so that the test takes seconds.
PROBE_S = 0.5
BEAT_S = 0.2


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def proxy(redis_server: LocalRedis) -> AsyncIterator[FaultProxy]:
    async def target() -> tuple[str, int]:
        return redis_server.host, redis_server.port

    started = await FaultProxy(target).start()
    yield started
    await started.stop()


async def test_a_node_with_a_frozen_subscriber_leaves_presence_and_comes_back(
    node: GatewayNode, node_factory: NodeFactory, proxy: FaultProxy, admin: AdminClient,
    connect: ClientFactory, redis: aioredis.Redis, redis_server: LocalRedis,
) -> None:
    through_proxy = f"redis://:{redis_server.password}@{proxy.host}:{proxy.port}/0"
    frozen = await node_factory(redis_url=through_proxy, subscriber_probe_s=PROBE_S, node_heartbeat_s=BEAT_S)
    await befriend_all(admin, "alice", "bob", cards=10)
    alice = await connect("alice")  # on the healthy node
    bob = await connect("bob", url=frozen.url)
    presence = Presence(redis, GiftRules())
    before = await alice.send_gift("bob")
    assert (await bob.next_offer(10)).gift_id == before.gift_id

    assert proxy.freeze_pubsub() == 1  # the frozen node's one subscription
    # Sent while the node still counts as live: acknowledged, so it must be offered, from
    # the stream, although pub/sub never carries it.
    during = await alice.send_gift("bob")
    assert (await bob.next_offer(30)).gift_id == during.gift_id

    async def not_ready() -> bool:
        return not await frozen.is_ready()

    async def bob_offline() -> bool:
        return await presence.nodes_of("bob") == []

    await wait_until(not_ready)
    await wait_until(bob_offline)
    with pytest.raises(GiftRefused) as refused:
        await alice.send_gift("bob")
    assert refused.value.code == "RECIPIENT_OFFLINE"

    async def counted() -> bool:  # once the leave has gone through every slot
        return sample(frozen.metrics, "notecard_deaf_presence_leaves_total") >= 1

    await wait_until(counted)
    assert sample(frozen.metrics, "notecard_subscriber_probe_age_seconds") > PROBE_S

    proxy.heal()

    async def back() -> bool:
        return await frozen.is_ready() and await presence.nodes_of("bob") == [frozen.node_id]

    await wait_until(back)
    after = await alice.send_gift("bob")
    assert (await bob.next_offer(10)).gift_id == after.gift_id
    assert sample(frozen.metrics, "notecard_subscriber_reconnects_total") >= 1
    await frozen.stop()  # while the proxy is still up: it leaves presence cleanly


async def test_an_error_while_delivering_one_event_does_not_make_the_node_deaf(
    node: GatewayNode, admin: AdminClient, connect: ClientFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: an exception out of the delivery of one pub/sub event ended the listener
    without a word; the node kept answering ready and no event reached its users again."""
    await befriend_all(admin, "alice", "bob", cards=10)
    alice, bob = await connect("alice"), await connect("bob")
    deliver = node.subscriber.on_event
    failed: list[UserEvent] = []

    def failing_once(event: UserEvent) -> None:
        if not failed:
            failed.append(event)
            raise ValueError("a bug in delivery")
        deliver(event)

    node.subscriber.on_event = failing_once
    with caplog.at_level(logging.ERROR, logger="notecard.gateway.subscriber"):
        first = await alice.send_gift("bob")
        second = await alice.send_gift("bob")
        # The second offer shows a gap before it: the first is read from the stream.
        offers = {(await bob.next_offer(10)).gift_id for _ in range(2)}
    assert failed and offers == {first.gift_id, second.gift_id}
    assert any("delivering a pub/sub event failed" in r.getMessage() for r in caplog.records)
    assert await node.is_ready()


class StuckReads:
    """The node's Redis client, except that the pub/sub objects it hands out while
    ``stuck`` never return from ``get_message``, whatever its timeout: a client library
    stuck in a reconnect inside the call."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self.stuck = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    def pubsub(self, **kwargs: Any) -> Any:
        pubsub = self._redis.pubsub(**kwargs)
        if self.stuck:
            async def never(*args: Any, **kw: Any) -> None:
                await asyncio.Event().wait()

            pubsub.get_message = never
        return pubsub


async def test_a_listener_call_that_never_returns_is_cut_short(
    node_factory: NodeFactory, admin: AdminClient, connect: ClientFactory, redis: aioredis.Redis,
) -> None:
    """Before: nothing bounded the listener's calls, so one that never returned left the
    node deaf for good while it stayed in presence: sends to its users were acknowledged
    and never offered."""
    deaf = await node_factory(subscriber_probe_s=PROBE_S, node_heartbeat_s=BEAT_S, redis_timeout_s=1.0)
    await befriend_all(admin, "alice", "bob", cards=10)
    alice = await connect("alice")
    bob = await connect("bob", url=deaf.url)
    presence = Presence(redis, GiftRules())
    reads = StuckReads(deaf.topology.nodes()[0].client)
    deaf.subscriber.client_of = lambda node: reads  # type: ignore[assignment,return-value]
    await redis.client_kill_filter(_type="pubsub")  # every node resubscribes; this one gets stuck

    async def bob_offline() -> bool:
        return await presence.nodes_of("bob") == []

    await wait_until(bob_offline)
    with pytest.raises(GiftRefused) as refused:
        await alice.send_gift("bob")
    assert refused.value.code == "RECIPIENT_OFFLINE"
    assert not await deaf.is_ready()

    reads.stuck = False

    async def back() -> bool:
        return await deaf.is_ready() and await presence.nodes_of("bob") == [deaf.node_id]

    await wait_until(back)
    gift = await alice.send_gift("bob")
    assert (await bob.next_offer(10)).gift_id == gift.gift_id


async def test_a_background_task_that_ends_is_logged_and_restarted(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    """A CancelledError out of a Redis call that nobody cancelled (redis-py's pools and
    timeouts can leak one) goes straight through the sweeper's loop and ends its task.
    Before the supervisor, nothing was logged and no gift expired on that node again.
    (The only node here: another node's sweeper would expire the gift too.)"""
    node = await node_factory(rules=GiftRules(confirm_window_ms=1000), sweep_interval_s=0.1)
    sweep = node.clearing.sweep
    leaked = False

    async def leaking_once(slots: Any, limit: int) -> Any:
        nonlocal leaked
        if not leaked:
            leaked = True
            raise asyncio.CancelledError
        return await sweep(slots, limit)

    node.clearing.sweep = leaking_once  # type: ignore[method-assign]
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "ann", "ben", cards=5)
    async with NotecardClient(node.url, token_for("ann")) as ann, NotecardClient(node.url, token_for("ben")):
        with caplog.at_level(logging.ERROR, logger="notecard.gateway.supervisor"):
            gift = await ann.send_gift("ben")
            outcome = await ann.next_outcome(30)  # the window passed; a sweeper refunds it
    assert leaked
    assert (outcome.gift_id, outcome.state) == (gift.gift_id, "expired")
    assert any("sweeper" in r.getMessage() and "restarting" in r.getMessage() for r in caplog.records)
    assert sample(node.metrics, "notecard_background_restarts_total", task="sweeper") >= 1


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


async def test_a_node_that_cannot_restart_a_task_stops_and_says_so(redis_server: LocalRedis, tmp_path: Path) -> None:
    """The supervisor's last resort: serve_forever stops the node and raises, so that the
    process exits with an error and its manager starts a fresh one."""
    settings = GatewaySettings(redis_url=redis_server.url, port=0, admin_port=0, data_dir=tmp_path,
                               log_format="text", shutdown_grace_s=1.0)
    client = connect_redis(settings)
    node = GatewayNode(settings, client, token_secret=TOKEN_SECRET, admin_token=ADMIN_TOKEN)
    serving = asyncio.create_task(node.serve_forever(asyncio.Event()))
    try:
        await asyncio.wait_for(node.subscriber.first_heard.wait(), 30)
        node.supervisor.on_fatal("background task subscriber ignored its cancellation")
        with pytest.raises(NodeFailed, match="ignored its cancellation"):
            await asyncio.wait_for(serving, 30)
        assert node.stopping and not await node.is_ready()
    finally:
        serving.cancel()
        await client.aclose()


# ---------------------------------------------------------------- the parts, without Redis


async def test_supervisor_logs_a_crash_with_its_exception_and_starts_the_task_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    second_run = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")
        second_run.set()
        await asyncio.Event().wait()

    metrics = NodeMetrics()
    supervisor = TaskSupervisor("n1", metrics, on_fatal=lambda reason: None)
    with caplog.at_level(logging.ERROR, logger="notecard.gateway.supervisor"):
        supervisor.start("flaky", flaky)
        await asyncio.wait_for(second_run.wait(), 10)
    (record,) = [r for r in caplog.records if "flaky" in r.getMessage()]
    assert "raised" in record.getMessage() and record.exc_info is not None
    assert str(record.exc_info[1]) == "boom"
    assert sample(metrics, "notecard_background_restarts_total", task="flaky") == 1
    assert await supervisor.stop(5) == []


async def test_supervisor_restarts_a_stuck_task_and_gives_up_on_one_that_ignores_cancellation() -> None:
    starts: list[int] = []
    fatal: list[str] = []
    release = False

    async def stuck() -> None:
        starts.append(1)
        await asyncio.Event().wait()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if release:
                    raise
                # a task that swallows its cancellation (until the test ends)

    supervisor = TaskSupervisor("n1", NodeMetrics(), on_fatal=fatal.append)
    supervisor.start("stuck", stuck)
    supervisor.start("stubborn", stubborn)
    await asyncio.sleep(0)
    assert await supervisor.restart("stuck", "test", grace_s=5)
    await asyncio.sleep(0)
    assert len(starts) == 2 and fatal == []
    assert not await supervisor.restart("stubborn", "test", grace_s=0.2)
    assert fatal == ["background task stubborn ignored its cancellation"]
    assert await supervisor.stop(0.2) == ["n1:stubborn"]
    release = True
    task = supervisor.task("stubborn")
    assert task is not None
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()


async def test_watchdog_restarts_a_listener_that_stopped_making_progress() -> None:
    subscriber = NodeSubscriber(
        None, KeySchema(), "n1", on_event=lambda e: None, on_missed=lambda: None,  # type: ignore[arg-type]
        metrics=NodeMetrics(), probe_interval_s=0.05, call_timeout_s=0.05,
    )
    restarted = asyncio.Event()

    async def restart(reason: str) -> None:
        assert "no progress" in reason
        restarted.set()

    subscriber.progress_at = time.monotonic() - 60  # a listener stuck for a minute
    watch = asyncio.create_task(subscriber.watch(restart))
    try:
        await asyncio.wait_for(restarted.wait(), 10)
    finally:
        watch.cancel()
    assert subscriber.hearing() is False  # never heard a probe: not ready, not live


async def test_watchdog_restarts_a_round_that_stays_deaf_while_one_connection_loops() -> None:
    """One connection of a round looping (and moving ``progress_at``) must not hide another
    that hangs: a round that has not heard every probe for longer than any of its steps may
    take is restarted too."""
    subscriber = NodeSubscriber(
        None, KeySchema(), "n1", on_event=lambda e: None, on_missed=lambda: None,  # type: ignore[arg-type]
        metrics=NodeMetrics(), probe_interval_s=0.05, call_timeout_s=0.05,
    )
    reasons: list[str] = []
    restarted = asyncio.Event()

    async def restart(reason: str) -> None:
        reasons.append(reason)
        restarted.set()

    subscriber._groups = ["a:1", "b:2"]
    subscriber._heard["a:1"] = time.monotonic()  # "b:2" never heard back
    subscriber.round_at = time.monotonic() - 60
    stop = asyncio.Event()

    async def looping() -> None:  # the connection that keeps making progress
        while not stop.is_set():
            subscriber.progress_at = time.monotonic()
            await asyncio.sleep(0.01)

    loop = asyncio.create_task(looping())
    watch = asyncio.create_task(subscriber.watch(restart))
    try:
        await asyncio.wait_for(restarted.wait(), 10)
    finally:
        stop.set()
        watch.cancel()
        await loop
    assert "deaf" in reasons[0]
