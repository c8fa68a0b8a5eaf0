"""Which gateway nodes hold a user's connections, and which nodes are alive.

A node heartbeats into ``nodes`` (node -> last beat ms) and counts each user's connections
in ``presence:<user>`` (node -> count), mirrored by ``nodeusers:<node>`` so that the entries
of a node that dies can be found and dropped. A node whose last beat is ``node_ttl_ms`` old
is dead: the gift scripts ignore it at once (no offer is delivered to it, its users count as
offline) and :meth:`Presence.reap_dead_nodes` later removes what it left.

A node that was reaped while it was only paused (a long GC, SIGSTOP) comes back with its
connections but without their presence: :meth:`Presence.heartbeat` returns True then, and
the node should call :meth:`~Presence.leave` and :meth:`~Presence.connect` again for each
connection it holds.
"""

from __future__ import annotations

from clearing.component import RedisComponent
from clearing.guard import guarded


class Presence(RedisComponent):
    async def heartbeat(self, node_id: str) -> bool:
        """Record that the node is alive. True when the node was not registered (its first
        beat, or it had been reaped as dead): its connections must be announced again."""
        added = await guarded(self._redis.zadd(self._keys.nodes(), {node_id: self._clock()}))
        return bool(added)

    async def connect(self, user_id: str, node_id: str, max_connections: int = 0) -> None:
        """Count one more connection of the user on the node. With ``max_connections``, the
        user's connections over all live nodes are checked against it first, atomically:
        Refused(TOO_MANY_CONNECTIONS) when it is reached, and nothing is counted."""
        await self._lua.run("connect", self._keys.presence(user_id), self._clock(),
                            (user_id, node_id, max_connections))

    async def disconnect(self, user_id: str, node_id: str) -> None:
        await self._lua.run("disconnect", self._keys.presence(user_id), self._clock(), (user_id, node_id))

    async def leave(self, node_id: str) -> None:
        """Graceful shutdown: drop every presence entry of the node and its heartbeat."""
        await self._lua.run("leave", self._keys.node_users(node_id), self._clock(), (node_id,))

    async def reap_dead_nodes(self) -> list[str]:
        """Drop the nodes whose last heartbeat is at least ``node_ttl_ms`` old, with their
        presence entries. Idempotent; returns the nodes this call removed."""
        reply = await self._lua.run("reap_nodes", self._keys.nodes(), self._clock())
        return [str(node) for node in reply.get("nodes", ())]

    async def nodes_of(self, user_id: str) -> list[str]:
        """Live nodes holding at least one connection of the user."""
        reply = await self._lua.run("live_nodes", self._keys.presence(user_id), self._clock(), (user_id,))
        return [str(node) for node in reply.get("nodes", ())]
