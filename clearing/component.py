"""What every clearing service holds, in one place.

Each service (gifts, accounts, presence, events, scenes, rooms) works on the same Redis
client, rules, key schema and injectable clock, and runs its Lua through its own
:class:`~clearing.lua.ScriptRunner`; building them here keeps their constructors alike.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from clearing.clock import Clock, wall_clock_ms
from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.lua import Durability, ScriptRunner
from clearing.rules import GiftRules


class RedisComponent:
    def __init__(
        self,
        redis: aioredis.Redis,
        rules: GiftRules,
        keys: KeySchema = DEFAULT_KEYS,
        clock: Clock = wall_clock_ms,
        durability: Durability | None = None,
    ) -> None:
        self._redis = redis
        self._rules = rules
        self._keys = keys
        self._clock = clock
        self._lua = ScriptRunner(redis, rules, keys, durability)
