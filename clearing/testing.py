"""Test support: a manual clock and a small world of users, built on a real Redis.

For clearing's own tests and for the gateway's: ``World.build(redis)`` gives every clearing
class on one clock, and ``await world.user("ann", cards=5)`` makes a verified user with five
cards and a live connection, so a test only states what differs from a plain gift.
Nothing here is used by the production code.
"""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis

from clearing.accounts import Accounts
from clearing.component import single_topology
from clearing.events import EventLog
from clearing.gifts import Clearing
from clearing.invariant import InvariantReport, check_invariant
from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.model import UserRecord
from clearing.presence import Presence
from clearing.rules import DAY_MS, GiftRules
from clearing.settings import SettingsCache
from clearing.topology import AnyRedis, Topology

#: 2024-03-01 12:00 in Asia/Shanghai: mid-day, far from the quota day's edges.
NOON_SHANGHAI_MS = 1_709_265_600_000


class ManualClock:
    """A clock that moves only when told to."""

    __slots__ = ("now_ms",)

    def __init__(self, now_ms: int = NOON_SHANGHAI_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> int:
        self.now_ms += ms
        return self.now_ms


@dataclasses.dataclass(slots=True)
class World:
    redis: AnyRedis
    rules: GiftRules
    keys: KeySchema
    clock: ManualClock
    clearing: Clearing
    accounts: Accounts
    presence: Presence
    events: EventLog
    topology: Topology
    settings: SettingsCache
    #: The node ``user(online=True)`` connects users to; it beats on build and on ``tick``.
    node: str = "node-1"

    @classmethod
    async def build(
        cls,
        redis: aioredis.Redis | Topology,
        rules: GiftRules | None = None,
        keys: KeySchema = DEFAULT_KEYS,
        clock: ManualClock | None = None,
        *,
        force_saga: bool = False,
    ) -> World:
        """``redis``: one server, or a topology (a cluster's); every class shares it and one
        settings cache. ``force_saga``: gifts take the cross-shard steps even on one node."""
        rules = rules or GiftRules()
        clock = clock or ManualClock()
        topology = redis if isinstance(redis, Topology) else single_topology(redis, keys)
        settings = SettingsCache(topology.general, keys)
        presence = Presence(topology, rules, keys, clock, settings=settings)
        world = cls(
            redis=topology.general,
            rules=rules,
            keys=keys,
            clock=clock,
            clearing=Clearing(topology, rules, keys, clock, settings=settings, dead_nodes=presence.dead_nodes,
                              force_saga=force_saga),
            accounts=Accounts(topology, rules, keys, clock, settings=settings),
            presence=presence,
            events=EventLog(topology, rules, keys, clock, settings=settings),
            topology=topology,
            settings=settings,
        )
        await world.presence.heartbeat(world.node)
        return world

    async def user(
        self,
        user_id: str,
        *,
        cards: int = 0,
        verified: bool = True,
        vip: bool = False,
        online: bool = True,
    ) -> UserRecord:
        record = await self.accounts.create_user(user_id, verified=verified, vip=vip)
        if cards:
            await self.accounts.mint(user_id, self.rules.card_kinds[0], cards)
        if online:
            await self.presence.connect(user_id, self.node)
        return record

    async def befriend(self, a: str, b: str, age_ms: int = 3 * DAY_MS) -> None:
        """Both follow each other since ``age_ms`` ago (old enough to gift by default)."""
        since = self.clock() - age_ms
        await self.accounts.follow(a, b, since_ms=since)
        await self.accounts.follow(b, a, since_ms=since)

    async def tick(self, ms: int) -> None:
        """Move time and keep the world's node alive, as a running gateway would."""
        self.clock.advance(ms)
        await self.presence.heartbeat(self.node)

    async def check(self) -> InvariantReport:
        return await check_invariant(self.redis, self.rules, self.keys)
