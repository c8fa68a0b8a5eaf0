"""Request rates per user over every gateway node.

A connection's own limit is a token bucket in the node's memory; it cannot see the user's
other connections, on this node or another, so a user with many connections had as many
budgets. This is one bucket per user kept in Redis (``take_rate`` in ``scripts/lib.lua``:
one number per user, present only while it holds something back).

Where it is counted: a gift's own script counts its request (send.lua for a send,
resolve.lua or answer.lua for an answer; :class:`~clearing.gifts.Clearing` takes the
limit), which costs a GET and a SET inside a script that runs anyway; a send across shards
and any other request are counted by :meth:`UserRates.take`, one small script on the user's
slot. A call of its own before every gift
request would have cost about a fifth of a gift's CPU, in the node's Python and in Redis
(docs/benchmarks.md, section 8).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import redis.asyncio as aioredis

from clearing.clock import Clock, wall_clock_ms
from clearing.component import RedisComponent
from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.rules import GiftRules
from clearing.slots import slot_of
from clearing.topology import Topology


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimit:
    """``per_s`` requests per second on average, ``burst`` at once."""

    per_s: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_s <= 0 or self.burst < 1:
            raise ValueError("a rate must be positive and its burst at least 1")

    @property
    def script_args(self) -> dict[str, Any]:
        """Microseconds per request and burst, as ``take_rate`` takes them."""
        return {"rate_us": max(1, round(1_000_000 / self.per_s)), "rate_burst": self.burst}


#: The script arguments of "no limit" (``take_rate`` then reads and writes nothing).
NO_LIMIT_ARGS: dict[str, Any] = {"rate_us": 0, "rate_burst": 0}


class UserRates(RedisComponent):
    """Counts the requests that have no gift script of their own (``scripts/rate.lua``)."""

    def __init__(self, redis: aioredis.Redis | Topology, rules: GiftRules, limit: RateLimit,
                 keys: KeySchema = DEFAULT_KEYS, clock: Clock = wall_clock_ms) -> None:
        super().__init__(redis, rules, keys, clock)
        self._args = limit.script_args

    async def take(self, user_id: str) -> bool:
        """Count one request of the user; False (nothing counted) when over the rate."""
        reply = await self._lua.run("rate", slot_of(user_id), self._keys.rate(user_id), self._clock(),
                                    {"u": user_id, **self._args})
        return bool(reply.get("ok"))
