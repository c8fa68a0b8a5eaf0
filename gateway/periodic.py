"""Periodic background work of a node: heartbeat, expiry sweeper, dead-node reaper.

Every node runs all three; none needs a leader, because each step is one atomic, idempotent
Lua script (a gift expires once however many sweepers race for it). A failing iteration is
logged and retried on the next tick; the loop itself never dies.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from clearing import Clearing, ClearingError, Presence, Refusal, Refused
from clearing.gifts import SweepResult
from clearing.slots import SLOTS
from gateway.connection import ClientConnection
from gateway.hub import Hub
from gateway.metrics import NodeMetrics
from gateway.rooms import RoomHub

log = logging.getLogger("notecard.gateway.periodic")


async def every(interval_s: float, step: Callable[[], Awaitable[object]], name: str) -> None:
    """Run ``step`` forever, ``interval_s`` apart with +-10% jitter so nodes do not align."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except ClearingError as exc:
            log.warning("%s failed: redis unavailable", name, extra={"reason": str(exc)[:200]})
        except Exception:
            log.exception("%s failed", name)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # A cancel that landed inside a Redis call can come out of the client library
            # as a connection error, caught above; the loop must still end.
            raise asyncio.CancelledError
        await asyncio.sleep(interval_s * random.uniform(0.9, 1.1))


class Sweeper:
    """Refunds offers whose confirmation window has passed and finishes cross-shard steps
    left half-way, in this node's share of the slots.

    Every slot has its own queues (clearing/keys.py), so the slots are shared out among the
    live nodes: the one of rank i (by id) of n sweeps the slots s with s % n == i. The share
    of a node that died passes to the others once it leaves the registry; while two nodes see
    different registries for a moment, a slot is swept twice (every step is idempotent) or a
    tick late. A node out of the registry (one that cannot hear) sweeps nothing.

    Each tick reads the sweep index (clearing/keys.py ``sweep_index``) of the Redis
    servers of its share (servers by name, shared out like the slots: one read per server
    per tick over all nodes when idle) and sweeps the slots it lists as due, plus a rolling
    slice of its share of the slots read in full, so that the whole share is read every
    ``FULL_SWEEP_TICKS`` ticks (a minute at the default interval): what the index cannot
    know (entries that came with a slot moved by a resharding, an index write lost in a
    failover) is found then, and the index set right.
    """

    BATCH = 500
    FULL_SWEEP_TICKS = 120

    def __init__(self, clearing: Clearing, presence: Presence, node_id: str, metrics: NodeMetrics) -> None:
        self.clearing = clearing
        self.presence = presence
        self.node_id = node_id
        self.metrics = metrics
        self._cursor = 0

    async def my_share(self) -> tuple[int, int]:
        """This node's rank among the live nodes (by id) and their number; (0, 0) when it
        is not among them."""
        nodes = sorted(await self.presence.live_nodes())
        if self.node_id not in nodes:
            return 0, 0
        return nodes.index(self.node_id), len(nodes)

    async def my_slots(self) -> range:
        rank, of = await self.my_share()
        return range(rank, SLOTS, of) if of else range(0)

    def _full_slice(self, slots: range) -> list[int]:
        """The next part of the share to read in full (wrapping around)."""
        size = -(-len(slots) // self.FULL_SWEEP_TICKS)
        start = self._cursor % len(slots)
        self._cursor = start + size
        return [slots[(start + i) % len(slots)] for i in range(min(size, len(slots)))]

    async def step(self) -> None:
        rank, of = await self.my_share()
        if not of:
            return
        self._report(await self.clearing.sweep(self._full_slice(range(rank, SLOTS, of)), self.BATCH))
        while True:
            result = await self.clearing.sweep_due(rank, of, self.BATCH)
            self._report(result)
            if len(result.expired) < self.BATCH:
                return

    def _report(self, result: SweepResult) -> None:
        expired = result.expired
        if expired:
            self.metrics.swept.inc(len(expired))
            self.metrics.gifts_of("expired").inc(len(expired))
            log.info("gifts expired", extra={"count": len(expired)})
        if result.recovered:
            log.info("cross-shard steps finished", extra={"count": result.recovered})


class NodeLiveness:
    """This node's heartbeat, and the clean-up of nodes that stopped beating.

    The heartbeat is the node's claim that events published to it reach its users, so it
    beats only while the subscriber hears its probes (``hearing``). A node that stops
    hearing leaves presence at its next beat: its users count as offline, so a sender gets
    ``RECIPIENT_OFFLINE`` instead of an acknowledged gift whose offer nobody receives. Once
    a probe comes back, the next beat registers its connections again, as after a reap.
    """

    def __init__(self, presence: Presence, node_id: str, hub: Hub, rooms: RoomHub | None = None,
                 hearing: Callable[[], bool] | None = None, metrics: NodeMetrics | None = None) -> None:
        self.presence = presence
        self.node_id = node_id
        self.hub = hub
        self.rooms = rooms
        self.hearing = hearing or (lambda: True)
        self.metrics = metrics
        self.beats = 0
        #: True while the node stays out of presence because it cannot hear.
        self.deaf = False

    async def register(self) -> None:
        """The first beat, at start (before the subscriber is proven or anyone connects)."""
        # A restarted node with a fixed NODE_ID finds its previous life's presence
        # entries: those connections are gone, so they go before the first beat.
        await self.presence.leave(self.node_id)
        await self.presence.heartbeat(self.node_id)
        self.beats = 1

    async def beat(self) -> None:
        if not self.hearing():
            await self._leave_while_deaf()
            return
        if self.deaf:
            log.warning("subscriber hears again; re-registering this node's connections")
            await self._register_again()
            self.deaf = False
            return
        unknown = await self.presence.heartbeat(self.node_id)
        self.beats += 1
        if unknown and self.beats > 1:
            # We were reaped as dead (paused past the node TTL, or Redis lost our entry)
            # while our connections stayed open: put them back in the presence tables.
            log.warning("node was reaped while alive; re-registering its connections")
            await self._register_again()

    async def _leave_while_deaf(self) -> None:
        if self.deaf:
            return  # already out; no heartbeat until a probe comes back
        log.warning("subscriber cannot hear its probes; leaving presence until it does")
        await self.presence.leave(self.node_id)
        self.deaf = True
        if self.metrics is not None:
            self.metrics.deaf_leaves.inc()
        # Offers published to us before the leave were lost with the subscription; they
        # are in the streams. None is published to us after it.
        self.hub.catch_up_everyone_soon()

    async def _register_again(self) -> None:
        await self.presence.leave(self.node_id)
        conns = self.hub.all_connections()
        for start in range(0, len(conns), 200):
            await asyncio.gather(*(self._announce(c) for c in conns[start : start + 200]))
        # leave() dropped our heartbeat too: without a new one the node stays out of the
        # live set (its users look offline) and the next beat finds it unknown again.
        await self.presence.heartbeat(self.node_id)
        self.beats += 1
        if self.rooms is not None:
            # The reaper (or our own leave) dropped our room viewers too; the connections still watch.
            await self.rooms.rejoin_all()
        # While we were out, events for our users went to their streams only.
        self.hub.catch_up_everyone_soon()

    async def _announce(self, conn: ClientConnection) -> None:
        try:
            await self.presence.connect(conn.user_id, self.node_id)
        except Refused as exc:
            if exc.code is not Refusal.ACCOUNT_BANNED:
                raise
            self.hub.close_banned(conn.user_id)  # banned while we were deaf to it

    async def reap(self) -> None:
        dead = await self.presence.reap_dead_nodes()
        if dead:
            log.warning("reaped dead gateway nodes", extra={"nodes": dead})
