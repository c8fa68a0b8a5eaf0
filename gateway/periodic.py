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
    """Refunds pending gifts whose confirmation window has passed."""

    BATCH = 500

    def __init__(self, clearing: Clearing, metrics: NodeMetrics) -> None:
        self.clearing = clearing
        self.metrics = metrics

    async def step(self) -> None:
        while True:
            expired = await self.clearing.expire_due(self.BATCH)
            if expired:
                self.metrics.swept.inc(len(expired))
                self.metrics.gifts_of("expired").inc(len(expired))
                log.info("gifts expired", extra={"count": len(expired)})
            if len(expired) < self.BATCH:
                return


class NodeLiveness:
    """This node's heartbeat, and the clean-up of nodes that stopped beating."""

    def __init__(self, presence: Presence, node_id: str, hub: Hub, rooms: RoomHub | None = None) -> None:
        self.presence = presence
        self.node_id = node_id
        self.hub = hub
        self.rooms = rooms
        self.beats = 0

    async def beat(self) -> None:
        unknown = await self.presence.heartbeat(self.node_id)
        self.beats += 1
        if unknown and self.beats > 1:
            # We were reaped as dead (paused past the node TTL, or Redis lost our entry)
            # while our connections stayed open: put them back in the presence tables.
            log.warning("node was reaped while alive; re-registering its connections")
            await self.presence.leave(self.node_id)
            conns = self.hub.all_connections()
            for start in range(0, len(conns), 200):
                await asyncio.gather(*(self._announce(c) for c in conns[start : start + 200]))
            # leave() dropped our heartbeat too: without a new one the node stays out of the
            # live set (its users look offline) and the next beat finds it unknown again.
            await self.presence.heartbeat(self.node_id)
            if self.rooms is not None:
                # The reaper dropped our room viewers too; the connections still watch.
                await self.rooms.rejoin_all()

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
