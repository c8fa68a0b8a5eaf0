"""Gauges of the ledger as a whole, read from Redis: pending gifts and the units they hold.

Every node reads the same two keys (the sweeper's queue and the per-kind hold totals the
gift scripts keep), so every node exports the same numbers: dashboards take ``max()``.
Two cheap reads (ZCARD, HGETALL of a hash with one field per card kind) every few seconds.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from clearing import KeySchema
from clearing.guard import guarded
from gateway.metrics import NodeMetrics

#: How often the gauges are refreshed: a scrape interval's worth of staleness at most.
REFRESH_S = 5.0


class LedgerGauges:
    def __init__(self, redis: aioredis.Redis, keys: KeySchema, metrics: NodeMetrics, kinds: tuple[str, ...]) -> None:
        self.redis = redis
        self.keys = keys
        self.metrics = metrics
        #: Every configured kind has a series, at 0 while nothing of it is held.
        self.kinds = kinds

    async def step(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.pending())
            pipe.hgetall(self.keys.holds_total())
            pending, held = await guarded(pipe.execute())
        self.metrics.pending_gifts.set(int(pending))
        totals = {kind.decode(): int(units) for kind, units in held.items()}
        for kind in {*self.kinds, *totals}:
            self.metrics.held_units.labels(kind).set(totals.get(kind, 0))
