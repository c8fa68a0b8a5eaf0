"""Which gateway nodes hold a user's connections, and which nodes are alive.

A node heartbeats into the registry (``KeySchema.nodes()``: node -> last beat ms) and counts
each user's connections in the user's presence hash (node -> count), mirrored per slot by
``nodeusers`` sets so that the entries of a node that dies can be found and dropped. A node
whose last beat is ``node_ttl_ms`` old is dead: the gift scripts ignore it at once (they are
handed the dead list: no offer is delivered to it, its users count as offline), and
:meth:`Presence.reap_dead_nodes` later removes what it left, slot by slot.

A node that was reaped while it was only paused (a long GC, SIGSTOP) comes back with its
connections but without their presence: :meth:`Presence.heartbeat` returns True then, and
the node should call :meth:`~Presence.leave` and :meth:`~Presence.connect` again for each
connection it holds.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from clearing.codec import text_hash
from clearing.component import RedisComponent
from clearing.guard import guarded
from clearing.slots import SLOTS, slot_tag

#: How long one reaper keeps the right to drop a dead node (other nodes skip it meanwhile).
REAP_LEASE_MS = 60_000


class Presence(RedisComponent):
    #: The dead list is read at most this often by :meth:`dead_nodes` (0: every time).
    registry_max_age_s: float = 0.0
    _dead: list[str]
    _dead_at: float = float("-inf")
    _reading: asyncio.Future[list[str]] | None = None

    async def heartbeat(self, node_id: str) -> bool:
        """Record that the node is alive. True when the node was not registered (its first
        beat, or it had been reaped as dead): its connections must be announced again."""
        added = await guarded(self._redis.zadd(self._keys.nodes(), {node_id: self._clock()}))
        return bool(added)

    async def connect(self, user_id: str, node_id: str, max_connections: int = 0) -> None:
        """Count one more connection of the user on the node. With ``max_connections``, the
        user's connections over all live nodes are checked against it first, atomically:
        Refused(TOO_MANY_CONNECTIONS) when it is reached, and nothing is counted."""
        await self._presence(user_id, node_id, 1, {"cap": max_connections, "dead": await self.dead_nodes()})

    async def disconnect(self, user_id: str, node_id: str) -> None:
        await self._presence(user_id, node_id, -1)

    async def _presence(self, user_id: str, node_id: str, delta: int, extra: dict[str, object] | None = None) -> None:
        args = {"u": user_id, "node": node_id, "tag": self.tag(user_id), "delta": delta, **(extra or {})}
        await self._lua.run("presence", self.slot(user_id), self._keys.presence(user_id), self._clock(), args)

    async def leave(self, node_id: str) -> None:
        """Graceful shutdown: drop every presence entry of the node, then its heartbeat."""
        await self._drop(node_id)
        await guarded(self._redis.zrem(self._keys.nodes(), node_id))

    async def _drop(self, node_id: str) -> None:
        """The node's entries in every slot, one call per chunk of one Redis node's slots."""
        for _node, slots in self._topology.by_node(range(SLOTS)):
            for start in range(0, len(slots), 1024):
                chunk = slots[start : start + 1024]
                tags = [slot_tag(s) for s in chunk]
                await self._lua.run("drop_node", chunk[0], self._keys.node_users(tags[0], node_id), self._clock(),
                                    {"tags": tags, "node": node_id})

    async def reap_dead_nodes(self) -> list[str]:
        """Drop the nodes whose last heartbeat is at least ``node_ttl_ms`` old, with their
        presence entries. Idempotent; one reaper per dead node at a time (a lease); returns
        the nodes this call removed."""
        reaped = []
        for node in await self._stale():
            lease = self._keys.nodes() + ":reaping:" + node
            if not await guarded(self._redis.set(lease, "1", nx=True, px=REAP_LEASE_MS)):
                continue
            await self._drop(node)
            # Only if it did not come back meanwhile: a paused node beats again and re-registers.
            cutoff = self._clock() - self._rules.node_ttl_ms
            score = await guarded(self._redis.zscore(self._keys.nodes(), node))
            if score is not None and score <= cutoff:
                await guarded(self._redis.zrem(self._keys.nodes(), node))
                reaped.append(node)
            await guarded(self._redis.delete(lease))
        return reaped

    async def _stale(self) -> list[str]:
        cutoff = self._clock() - self._rules.node_ttl_ms
        raw = await guarded(self._redis.zrangebyscore(self._keys.nodes(), "-inf", cutoff))
        return [n.decode() for n in cast("list[bytes]", raw)]

    async def live_nodes(self) -> list[str]:
        """Registered nodes whose heartbeat is within the node TTL."""
        cutoff = self._clock() - self._rules.node_ttl_ms
        raw = await guarded(self._redis.zrangebyscore(self._keys.nodes(), f"({cutoff}", "+inf"))
        return [n.decode() for n in cast("list[bytes]", raw)]

    async def dead_nodes(self) -> list[str]:
        """Registered nodes whose heartbeat is older than the node TTL (what the scripts are
        told to ignore), read at most every ``registry_max_age_s``; the callers of one
        moment share one read."""
        if time.monotonic() - self._dead_at < self.registry_max_age_s:
            return self._dead
        reading = self._reading
        if reading is None or reading.done():
            reading = self._reading = asyncio.ensure_future(self._read_dead())
        return await asyncio.shield(reading)

    async def _read_dead(self) -> list[str]:
        started = time.monotonic()
        self._dead = await self._stale()
        self._dead_at = started
        return self._dead

    async def nodes_of(self, user_id: str) -> list[str]:
        """Live nodes holding at least one connection of the user."""
        counts = text_hash(await guarded(self._redis.hgetall(self._keys.presence(user_id))))
        dead = set(await self.dead_nodes())
        return [node for node, count in counts.items() if count.isdigit() and int(count) > 0 and node not in dead]
