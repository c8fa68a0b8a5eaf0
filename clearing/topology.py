"""Where each hash slot lives: one Redis, or the primaries of a Redis Cluster.

Clearing runs one code path on both. Every script call names the slot it runs on (a user's
slot, or a slot tag's); the topology answers with the Redis node that serves the slot and
that node's script batchers (clearing/pipelining.py), so the calls of one loop turn still
travel as one pipeline per node. On a single Redis (managed locally, a plain URL, or the
primary Sentinel names) every slot is the one server's.

On a cluster the map comes from redis-py's ``RedisCluster`` (which also serves every other
command, routed by key); the scripts go through a plain client per primary, because a
durable batch must end with its own fence and WAIT on the very connection that wrote it.
A reply that says the slot moved (MOVED, ASK: the script did not run) or a connection that
fails (a primary died; a replica is being promoted) makes the map be read again before the
next call; clearing.lua decides what may be retried.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from clearing.pipelining import ScriptBatcher, WaitFor
from clearing.slots import SLOTS, slot_tag

#: The client for commands other than scripts: one server, or a cluster client that routes by key.
AnyRedis = aioredis.Redis | RedisCluster

#: Reading the cluster's map again costs a round trip to a node; failures in a burst share one.
_REFRESH_MIN_INTERVAL_S = 0.2


@dataclasses.dataclass(frozen=True, slots=True)
class Durability:
    """When a gift write counts as done: on the primary only (0), or on ``wait_replicas``
    replicas too, waiting at most ``wait_timeout_ms`` for them."""

    wait_replicas: int = 0
    wait_timeout_ms: int = 1000

    def __post_init__(self) -> None:
        if self.wait_replicas < 0:
            raise ValueError("wait_replicas must not be negative")
        if self.wait_timeout_ms < 1:
            # WAIT n 0 would block forever: a stalled replica must not hang a request.
            raise ValueError("wait_timeout_ms must be at least 1")


class NodeScripts:
    """One Redis server's client and its batchers (clearing's functions are called by name:
    the library carries its version, clearing/lua.py).

    ``home``: the tag of the lowest slot the server serves. Gateway nodes listen on one
    channel per Redis server, in that slot, and every script call publishes there (lib.lua
    ``A.home``): one subscription per server instead of one per slot.
    """

    __slots__ = ("client", "home", "name", "plain", "waited")

    def __init__(self, name: str, client: aioredis.Redis, durability: Durability, fence: str,
                 home: str = "") -> None:
        self.name = name
        self.home = home or slot_tag(0)
        self.client = client
        self.plain = ScriptBatcher(client)
        d = durability
        self.waited = self.plain if d.wait_replicas == 0 else ScriptBatcher(
            client, WaitFor(d.wait_replicas, d.wait_timeout_ms, fence=fence))


class Topology(abc.ABC):
    """The map from slots to the nodes whose scripts serve them."""

    general: AnyRedis

    @abc.abstractmethod
    def node_for(self, slot: int) -> NodeScripts: ...

    @abc.abstractmethod
    def nodes(self) -> list[NodeScripts]: ...

    def colocated(self, slots: Iterable[int]) -> bool:
        """Whether one node serves every slot (then one script may touch them all)."""
        return len({self.node_for(s).name for s in slots}) <= 1

    def by_node(self, slots: Iterable[int]) -> list[tuple[NodeScripts, list[int]]]:
        groups: dict[str, tuple[NodeScripts, list[int]]] = {}
        for slot in slots:
            node = self.node_for(slot)
            groups.setdefault(node.name, (node, []))[1].append(slot)
        return list(groups.values())

    async def refresh(self, force: bool = False) -> None:  # noqa: B027 (one Redis has no map to read)
        """Read the map again (after MOVED, ASK or a failed node). Calls in a burst share
        one read; ``force``: even if the map was read a moment ago."""

    def moved(self, slot: int, address: str) -> bool:
        """A MOVED reply said where ``slot`` is now: note it if that server is known."""
        return False

    async def aclose(self) -> None:  # noqa: B027 (one Redis was given, not opened, here)
        """Close what the topology opened itself (not the clients it was given)."""


class SingleTopology(Topology):
    """One Redis server holds every slot."""

    def __init__(self, redis: aioredis.Redis, durability: Durability | None = None, fence: str = "") -> None:
        self.general = redis
        self._node = NodeScripts("single", redis, durability or Durability(), fence)

    def node_for(self, slot: int) -> NodeScripts:
        return self._node

    def nodes(self) -> list[NodeScripts]:
        return [self._node]

    def colocated(self, slots: Iterable[int]) -> bool:
        return True


class ClusterTopology(Topology):
    """The primaries of a Redis Cluster, from redis-py's slot map.

    ``connect(host, port)`` builds the plain client of one primary (same timeouts and
    credentials as the cluster client). ``fence(tag)`` names the sharded channel a durable
    batch publishes to before its WAIT; it must live in a slot of the batch's node.
    """

    def __init__(self, cluster: RedisCluster, connect: Callable[[str, int], aioredis.Redis],
                 durability: Durability | None = None, fence: Callable[[str], str] = lambda tag: tag) -> None:
        self.general = self.cluster = cluster
        self._connect = connect
        self._durability = durability or Durability()
        self._fence = fence
        self._by_name: dict[str, NodeScripts] = {}
        self._by_slot: list[NodeScripts | None] = [None] * SLOTS
        self._refreshed_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.cluster.initialize()
        self._build()

    def _build(self) -> None:
        cache = self.cluster.nodes_manager.slots_cache
        by_slot: list[NodeScripts | None] = [None] * SLOTS
        seen: set[str] = set()
        for slot in range(SLOTS):
            serving = cache.get(slot)
            if not serving:
                continue
            primary = serving[0]
            node = self._by_name.get(primary.name)
            if node is None:
                client = self._connect(primary.host, int(primary.port))
                node = self._by_name[primary.name] = NodeScripts(primary.name, client, self._durability,
                                                                 self._fence(slot_tag(slot)), slot_tag(slot))
            elif primary.name not in seen:
                node.home = slot_tag(slot)  # its lowest slot now (slots moved)
            seen.add(primary.name)
            by_slot[slot] = node
        self._by_slot = by_slot

    def node_for(self, slot: int) -> NodeScripts:
        node = self._by_slot[slot]
        if node is None:
            raise SlotUncovered(slot)
        return node

    def nodes(self) -> list[NodeScripts]:
        live = {id(n): n for n in self._by_slot if n is not None}
        return list(live.values())

    async def refresh(self, force: bool = False) -> None:
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        if not force and time.monotonic() - self._refreshed_at < _REFRESH_MIN_INTERVAL_S:
            return
        self._refreshing = asyncio.create_task(self._refresh())
        try:
            await asyncio.shield(self._refreshing)
        finally:
            self._refreshing = None

    def moved(self, slot: int, address: str) -> bool:
        node = self._by_name.get(address)
        if node is None:
            return False
        self._by_slot[slot] = node
        return True

    async def _refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        await self.cluster.nodes_manager.initialize()
        self._build()

    async def aclose(self) -> None:
        for node in self._by_name.values():
            await node.client.aclose()
        self._by_name.clear()


class SlotUncovered(Exception):
    """No primary serves the slot right now (a failover in progress)."""

    def __init__(self, slot: int) -> None:
        super().__init__(f"slot {slot} is not served by any primary")
        self.slot = slot


async def connect_cluster(addresses: Iterable[tuple[str, int]], *, fence: Callable[[str], str],
                          durability: Durability | None = None, password: str | None = None,
                          username: str | None = None, timeout_s: float = 5.0,
                          ssl: bool = False, **client_options: object) -> ClusterTopology:
    """A topology over the cluster that any of ``addresses`` belongs to, its map read."""
    options: dict[str, object] = {"password": password, "username": username, "socket_timeout": timeout_s,
                                  "socket_connect_timeout": timeout_s, **client_options}
    cluster = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in addresses], ssl=ssl,
                           **options)  # type: ignore[arg-type]

    def connect(host: str, port: int) -> aioredis.Redis:
        extra: dict[str, object] = {"connection_class": aioredis.SSLConnection} if ssl else {}
        pool = aioredis.BlockingConnectionPool(host=host, port=port, max_connections=512, timeout=timeout_s,
                                               **options, **extra)  # type: ignore[arg-type]
        return aioredis.Redis.from_pool(pool)

    topology = ClusterTopology(cluster, connect, durability, fence)
    try:
        await topology.start()
    except BaseException:
        await cluster.aclose()
        raise
    return topology
