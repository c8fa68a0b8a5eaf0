"""Gauges of the ledger, read from Redis: pending gifts and the units they hold.

Clearing keeps both per slot (clearing/keys.py): each node reports the slots of its share
(the sweeper's: gateway/periodic.py), so the deployment's numbers are the sum over nodes
(dashboards take ``sum()``). One read-only script per chunk of a Redis node's slots
(``gauges.lua``) every ``REFRESH_S``: it reads every slot of the share, so it is the
largest standing cost of an idle node after the sweep index (docs/capacity.md).
"""

from __future__ import annotations

from clearing import Clearing
from gateway.metrics import NodeMetrics
from gateway.periodic import Sweeper

#: How often the gauges are refreshed: a scrape interval's worth of staleness at most
#: (Prometheus scrapes every 15 s by default).
REFRESH_S = 15.0


class LedgerGauges:
    def __init__(self, clearing: Clearing, sweeper: Sweeper, metrics: NodeMetrics) -> None:
        self.clearing = clearing
        self.sweeper = sweeper
        self.metrics = metrics

    async def step(self) -> None:
        pending, held = await self.clearing.held_in(await self.sweeper.my_slots())
        self.metrics.pending_gifts.set(pending)
        for kind, units in held.items():
            self.metrics.held_units.labels(kind).set(units)
