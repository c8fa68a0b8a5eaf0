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

from clearing import Clearing, ClearingError, Presence
from gateway.metrics import NodeMetrics

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
                self.metrics.gifts.labels(outcome="expired").inc(len(expired))
                log.info("gifts expired", extra={"count": len(expired)})
            if len(expired) < self.BATCH:
                return


class NodeLiveness:
    """This node's heartbeat, and the clean-up of nodes that stopped beating."""

    def __init__(self, presence: Presence, node_id: str) -> None:
        self.presence = presence
        self.node_id = node_id

    async def beat(self) -> None:
        await self.presence.heartbeat(self.node_id)

    async def reap(self) -> None:
        dead = await self.presence.reap_dead_nodes()
        if dead:
            log.warning("reaped dead gateway nodes", extra={"nodes": dead})
