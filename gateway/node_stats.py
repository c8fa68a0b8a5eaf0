"""Each node's counters, shared through Redis for the operator console (``/console``).

Prometheus scrapes every node, but the console is a page served by one node: it needs the
numbers of all of them (connections per node, gifts and refusals by code). Every
:data:`INTERVAL_S` each node writes a small snapshot of its own counters into one hash
(node id -> JSON); ``GET /admin/stats`` reads the hash and keeps the snapshots of nodes
heard from within :data:`LIVE_S`. The counters are cumulative since the node started, as
in ``/metrics``: the console takes rates from differences, and a node that restarted
(``started_at_ms`` changed) starts again from zero. A snapshot older than
:data:`FORGET_S` (a node that is gone) is removed by the next node that writes.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from clearing import KeySchema
from clearing.guard import guarded
from clearing.topology import AnyRedis
from gateway.metrics import NodeMetrics

INTERVAL_S = 2.0
#: A snapshot this recent counts its node as live.
LIVE_S = 3 * INTERVAL_S
#: A snapshot this old is dropped from the hash.
FORGET_S = 60.0


def stats_key(keys: KeySchema) -> str:
    """Hash: node id -> JSON snapshot of its counters (this module)."""
    return keys.node_stats()


def counters(metrics: NodeMetrics) -> dict[str, Any]:
    """The node's connection gauge, gifts by outcome and refusals by code, and the ledger
    gauges of its share of the slots (pending gifts, held units by kind), as numbers."""
    gifts: dict[str, int] = {}
    refusals: dict[str, int] = {}
    held: dict[str, int] = {}
    connections = pending = 0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "notecard_gifts_total":
                gifts[sample.labels["outcome"]] = int(sample.value)
            elif sample.name == "notecard_refusals_total":
                refusals[sample.labels["code"]] = int(sample.value)
            elif sample.name == "notecard_connections":
                connections = int(sample.value)
            elif sample.name == "notecard_pending_gifts":
                pending = int(sample.value)
            elif sample.name == "notecard_held_units":
                held[sample.labels["kind"]] = int(sample.value)
    return {"connections": connections, "gifts": gifts, "refusals": refusals, "pending_gifts": pending,
            "held_units": held}


class NodeStats:
    def __init__(self, redis: AnyRedis, keys: KeySchema, node_id: str, metrics: NodeMetrics) -> None:
        self.redis = redis
        self.key = stats_key(keys)
        self.node_id = node_id
        self.metrics = metrics
        self.started_at_ms = int(time.time() * 1000)

    async def step(self) -> None:
        now = int(time.time() * 1000)
        snapshot = {"node": self.node_id, "at_ms": now, "started_at_ms": self.started_at_ms, **counters(self.metrics)}
        await guarded(self.redis.hset(self.key, self.node_id, orjson.dumps(snapshot)))
        stale = [node for node, snap in (await read_all(self.redis, self.key)).items()
                 if now - snap.get("at_ms", 0) > FORGET_S * 1000]
        if stale:
            await guarded(self.redis.hdel(self.key, *stale))


async def read_all(redis: AnyRedis, key: str) -> dict[str, dict[str, Any]]:
    raw = await guarded(redis.hgetall(key))
    out: dict[str, dict[str, Any]] = {}
    for node, data in raw.items():
        try:
            snap = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(snap, dict):
            out[node.decode() if isinstance(node, bytes) else str(node)] = snap
    return out


async def live_snapshots(redis: AnyRedis, keys: KeySchema) -> list[dict[str, Any]]:
    """The snapshots of the nodes heard from within :data:`LIVE_S`, by node id."""
    now = time.time() * 1000
    snaps = await read_all(redis, stats_key(keys))
    return [snaps[n] for n in sorted(snaps) if now - snaps[n].get("at_ms", 0) <= LIVE_S * 1000]
