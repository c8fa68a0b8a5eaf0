"""What every clearing service holds, in one place.

Each service (gifts, accounts, presence, events, scenes, rooms) works on the same topology
(one Redis, or a cluster's primaries: clearing/topology.py), rules, key schema, settings and
injectable clock. A gateway node builds one topology and one settings cache and hands them to
every service, so the calls of one loop turn share one pipeline per Redis node whichever
service made them. Given a plain ``redis.asyncio.Redis`` instead, a service makes its own
(tests, tools).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from clearing.clock import Clock, wall_clock_ms
from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.lua import ScriptRunner
from clearing.rules import GiftRules
from clearing.settings import SettingsCache
from clearing.slots import slot_of, slot_tag, tag_of
from clearing.topology import Durability, SingleTopology, Topology


def single_topology(redis: aioredis.Redis, keys: KeySchema, durability: Durability | None = None) -> SingleTopology:
    """Every slot on one server; a durable batch fences on a channel of slot 0."""
    return SingleTopology(redis, durability, fence=keys.node_channel(slot_tag(0), "fence"))


class RedisComponent:
    def __init__(
        self,
        redis: aioredis.Redis | Topology,
        rules: GiftRules,
        keys: KeySchema = DEFAULT_KEYS,
        clock: Clock = wall_clock_ms,
        durability: Durability | None = None,
        settings: SettingsCache | None = None,
    ) -> None:
        self._topology = redis if isinstance(redis, Topology) else single_topology(redis, keys, durability)
        self._redis = self._topology.general
        self._rules = rules
        self._keys = keys
        self._clock = clock
        self._settings = settings or SettingsCache(self._redis, keys)
        self._lua = ScriptRunner(self._topology, rules, keys)

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def settings(self) -> SettingsCache:
        return self._settings

    # ------------------------------------------------------------ routing helpers
    @staticmethod
    def slot(user_id: str) -> int:
        return slot_of(user_id)

    @staticmethod
    def tag(user_id: str) -> str:
        return tag_of(user_id)
