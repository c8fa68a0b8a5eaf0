"""What the gateway tells the risk engine: one event per hello, send and answer,
attributed to (user, device, address, app), written in batches (one stream entry per flush).

The entries are appended outside the gift's own script (the stream lives in one slot of its
own, which a gift's scripts must not touch on a cluster) and in batches: a node queues them
and one task writes each batch with one pipeline, so a gift pays no extra round trip. What
a node had queued and not written when it dies is lost to scoring (at most one flush
interval of its traffic); the gifts themselves are not affected.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from redis.exceptions import RedisError

from clearing.keys import KeySchema, is_valid_device
from clearing.topology import AnyRedis

log = logging.getLogger("notecard.risk.signals")

#: Entries kept in the events stream (approximate trim). An entry is one flush of one node
#: (up to ENTRY_EVENTS events): at the benchmark's rates, hours of traffic, and a bound on
#: memory if no scorer runs.
EVENTS_MAXLEN = 200_000
#: Events per stream entry at most: a flush after Redis was away for a while is cut into
#: entries of this many, so that no entry grows without bound.
ENTRY_EVENTS = 500
#: Entries queued on a node before new ones are dropped (Redis unreachable for a while).
QUEUE_MAX = 50_000
FLUSH_S = 0.05
#: The stand-in for a connection that sent no fingerprint: all such connections share it,
#: and it is never banned (risk/actions.py).
NO_DEVICE = "-"


@functools.lru_cache(maxsize=65_536)
def network_of(address: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) an address is in, as a key-safe name; "" when unknown."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    prefix = 24 if ip.version == 4 else 48
    net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    return str(net.network_address).replace(":", "_") + f"_{prefix}"


def device_or_none(device: str | None) -> str:
    return device if device is not None and is_valid_device(device) else NO_DEVICE


class SignalLog:
    """A node's queue of risk events and the task that writes them."""

    def __init__(self, redis: AnyRedis, keys: KeySchema, *, flush_s: float = FLUSH_S) -> None:
        self.redis = redis
        self.key = keys.risk_events()
        self.flush_s = flush_s
        self._queue: list[Mapping[str, Any]] = []
        self._wake = asyncio.Event()
        self.dropped = 0
        self.written = 0

    @property
    def queued(self) -> int:
        """Events waiting for the next write."""
        return len(self._queue)

    def record(self, kind: str, user: str, device: str | None, address: str, app: str, **fields: Any) -> None:
        """Queue one event (never waits). ``kind``: hello, send, accept, decline."""
        if len(self._queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        entry = {"k": kind, "u": user, "d": device_or_none(device), "ip": address, "app": app,
                 "ts": int(time.time() * 1000), **{k: v for k, v in fields.items() if v is not None}}
        self._queue.append(entry)
        if len(self._queue) == 1:
            self._wake.set()

    async def flush(self) -> int:
        """Write what is queued; returns how many events were written.

        A flush is one stream entry (per ENTRY_EVENTS events), its events a JSON list in the
        field ``b`` and their count in ``n``: one XADD of two fields costs the node a small
        fraction of one XADD of eight fields per event (docs/risk.md)."""
        batch, self._queue = self._queue, []
        if not batch:
            return 0
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(batch), ENTRY_EVENTS):
                    chunk = batch[start:start + ENTRY_EVENTS]
                    pipe.xadd(self.key, {"n": len(chunk), "b": orjson.dumps(chunk)}, maxlen=EVENTS_MAXLEN,
                              approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # Put the batch back in front (bounded): scoring late beats not scoring.
            room = QUEUE_MAX - len(self._queue)
            self.dropped += max(0, len(batch) - room)
            self._queue = batch[:room] + self._queue
            log.warning("risk events not written; will retry", extra={"cause": str(exc)})
            return 0
        self.written += len(batch)
        return len(batch)

    async def run(self) -> None:
        """Flush every ``flush_s`` while there is something queued."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.flush_s)
            await self.flush()
            if self._queue:
                self._wake.set()
