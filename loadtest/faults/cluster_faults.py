"""Faults against a local Redis Cluster and its gateway nodes, for ``notecard drill --cluster``.

Only what the drill started is touched: the servers of its
:class:`notecard.local_cluster.LocalCluster` and the nodes of its
:class:`notecard.cluster.LocalCluster`, by PID. The cluster's own state (``CLUSTER SLOTS``,
``INFO replication``) says which server is a primary now, so a fault aims at what is true
after earlier failovers, not at the roles the servers were started with.

Sites: in a site-loss drill every shard has a third server, its second replica, placed at
"site B"; everything else (the first primary and replica of each shard, the first half of
the gateway nodes) is at "site A". Losing site A kills all of it at once; since every
primary is gone, no majority can elect replacements, and each site-B replica is promoted by
``CLUSTER FAILOVER TAKEOVER`` (the operator's step: docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from clearing.keys import KeySchema
from loadtest.faults.redis_ha import command
from notecard.cluster import LocalCluster as GatewayNodes
from notecard.cluster import NodeProcess
from notecard.local_cluster import LocalCluster as RedisNodes
from notecard.local_redis import LocalRedis

log = logging.getLogger("notecard.drill.cluster_faults")

#: A failover, a takeover or a resynchronisation that takes longer than this failed.
HEAL_TIMEOUT_S = 40.0
#: A node that fails to start (Redis unreachable mid-failover makes it exit) is tried again.
RESTART_TRIES = 4
SITE_A, SITE_B = "A", "B"


class ClusterFaultKind(enum.StrEnum):
    NODE_KILL = "node_kill"  # kill -9 of a gateway node while sagas run, restarted after `duration`
    PRIMARY_KILL = "primary_kill"  # kill -9 of one shard's primary; the cluster promotes its replica
    SHARD_PAUSE = "shard_pause"  # SIGSTOP of one shard's primary for `duration`, then SIGCONT
    LINK_CUT = "link_cut"  # one gateway node refused by one shard's primary for `duration`
    SITE_LOSS = "site_loss"  # every site-A process killed; site B promoted (CLUSTER FAILOVER TAKEOVER),
    # alone for `duration`, then site A's Redis servers back as its replicas


def parse_cluster_kinds(text: str) -> tuple[ClusterFaultKind, ...]:
    """``"all"`` (every kind but site loss, which needs ``--site-loss``), ``"none"`` or a list."""
    if text == "all":
        return (ClusterFaultKind.NODE_KILL, ClusterFaultKind.PRIMARY_KILL, ClusterFaultKind.SHARD_PAUSE,
                ClusterFaultKind.LINK_CUT)
    if text in ("", "none"):
        return ()
    return tuple(ClusterFaultKind(part.strip().replace("-", "_")) for part in text.split(",") if part.strip())


@dataclasses.dataclass(slots=True)
class ClusterFaultRecord:
    kind: ClusterFaultKind
    target: int
    duration_s: float
    started_ms: int = 0
    ended_ms: int = 0
    detail: str = ""
    error: str = ""
    #: Measured times (failover, takeover, resync), seconds.
    measured: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def kind_name(self) -> str:
        return self.kind.value

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "target": self.target, "duration_s": round(self.duration_s, 2),
                "started_ms": self.started_ms, "ended_ms": self.ended_ms, "detail": self.detail,
                "error": self.error, "measured": {k: round(v, 2) for k, v in self.measured.items()}}


async def cluster_info(client: aioredis.Redis) -> str:
    return bytes(await command(client, "CLUSTER", "INFO")).decode()


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass(frozen=True, slots=True)
class SlotRange:
    low: int
    high: int
    primary: int
    replicas: tuple[int, ...]


class ClusterFaults:
    """Injects :class:`ClusterFaultKind` faults and reads the cluster's health."""

    def __init__(self, redis_nodes: RedisNodes, gateways: GatewayNodes, log_dir: Path, *,
                 site_b_nodes: Iterable[str] = (), redis_users: dict[str, str] | None = None) -> None:
        self.redis = redis_nodes
        #: gateway node name -> the Redis user it logs in as (its own, so that one node's
        #: link to one server can be cut by disabling that user there).
        self.redis_users = dict(redis_users or {})
        self.gateways = gateways
        self.log_dir = log_dir
        self.by_port: dict[int, LocalRedis] = {s.port: s for s in redis_nodes.servers}
        #: Replicas each primary must have for the cluster to count as healed.
        self.replicas = len(redis_nodes.shards[0].replicas)
        #: port -> site; with a second replica per shard, that replica is site B.
        self.site: dict[int, str] = {}
        for shard in redis_nodes.shards:
            for i, server in enumerate((shard.primary, *shard.replicas)):
                self.site[server.port] = SITE_B if self.replicas >= 2 and i == len(shard.replicas) else SITE_A
        self.node_site = {n.name: (SITE_B if n.name in set(site_b_nodes) else SITE_A) for n in gateways.nodes}
        #: Gateway nodes lost with their site: not restarted by the heal.
        self.lost_nodes: set[str] = set()
        self.records: list[ClusterFaultRecord] = []
        self.last_health = ""

    # ------------------------------------------------------------ reading the cluster
    def client(self, port: int, timeout_s: float = 2.0) -> aioredis.Redis:
        return aioredis.Redis(host=self.redis.host, port=port, password=self.redis.password,
                              socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def live_ports(self) -> list[int]:
        return [p for p, s in self.by_port.items() if s.process is not None and s.process.poll() is None]

    async def slot_map(self, ports: Iterable[int] | None = None) -> list[SlotRange]:
        """The slot map as the first live server with ``cluster_state:ok`` tells it."""
        for port in ports or self.live_ports():
            try:
                async with self.client(port) as c:
                    if "cluster_state:ok" not in await cluster_info(c):
                        continue
                    rows = await command(c, "CLUSTER", "SLOTS")
            except (aioredis.RedisError, OSError):
                continue
            ranges = [SlotRange(int(r[0]), int(r[1]), int(r[2][1]), tuple(int(x[1]) for x in r[3:])) for r in rows]
            return sorted(ranges, key=lambda r: r.low)
        return []

    async def healthy(self) -> bool:
        """Every slot served by a live primary with all its replicas online and caught up,
        and every live server agreeing that the cluster is ok."""
        ranges = await self.slot_map()
        if not ranges:
            self.last_health = "no server reports cluster_state:ok"
            return False
        problems = []
        for port in self.live_ports():
            try:
                async with self.client(port) as c:
                    if "cluster_state:ok" not in await cluster_info(c):
                        problems.append(f":{port} not ok")
            except (aioredis.RedisError, OSError) as exc:
                problems.append(f":{port} {type(exc).__name__}")
        for primary in sorted({r.primary for r in ranges}):
            try:
                async with self.client(primary) as c:
                    info = await c.info("replication")
            except (aioredis.RedisError, OSError) as exc:
                problems.append(f"primary :{primary} {type(exc).__name__}")
                continue
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                      and v.get("state") == "online" and int(v.get("lag", 99)) <= 1]
            if len(online) < self.replicas:
                problems.append(f"primary :{primary} has {len(online)}/{self.replicas} replicas online")
        self.last_health = "; ".join(problems) or "ok"
        return not problems

    async def wait_healthy(self, timeout_s: float = HEAL_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.healthy():
                return True
            await asyncio.sleep(0.2)
        return False

    # ------------------------------------------------------------ injecting
    async def inject(self, record: ClusterFaultRecord) -> None:
        record.started_ms = wall_ms()
        self.records.append(record)
        try:
            match record.kind:
                case ClusterFaultKind.NODE_KILL:
                    record.detail = await self._node_kill(record)
                case ClusterFaultKind.PRIMARY_KILL:
                    record.detail = await self._primary_kill(record)
                case ClusterFaultKind.SHARD_PAUSE:
                    record.detail = await self._shard_pause(record)
                case ClusterFaultKind.SITE_LOSS:
                    record.detail = await self._site_loss(record)
                case ClusterFaultKind.LINK_CUT:
                    record.detail = await self._link_cut(record)
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("fault %s failed: %s", record.kind, record.error)
        record.ended_ms = wall_ms()

    async def _node_kill(self, record: ClusterFaultRecord) -> str:
        alive = [n for n in self.gateways.nodes if n.running]
        if not alive:
            raise RuntimeError("no gateway node left to kill")
        node = alive[record.target % len(alive)]
        await asyncio.to_thread(node.kill)
        # Sagas the node left between two steps, now the recovery worker's (other nodes') job.
        due = await self.count_queued("due")
        await asyncio.sleep(record.duration_s)
        tries = await self.restart_node(node)
        return (f"{node.name} killed with {due} cross-shard steps due in the cluster, restarted after "
                f"{record.duration_s:.1f}s" + (f" ({tries} tries)" if tries > 1 else ""))

    async def _shard(self, target: int) -> SlotRange:
        ranges = await self.slot_map()
        if not ranges:
            raise RuntimeError(f"the cluster is not ok: {self.last_health}")
        return ranges[target % len(ranges)]

    async def _primary_kill(self, record: ClusterFaultRecord) -> str:
        shard = await self._shard(record.target)
        old = shard.primary
        started = time.monotonic()
        await asyncio.to_thread(self.by_port[old].kill)
        new = await self._wait_new_primary(shard, old)
        record.measured["failover_s"] = time.monotonic() - started
        await asyncio.to_thread(self.by_port[old].start)  # its nodes.conf makes it rejoin as a replica
        synced = await self.wait_healthy()
        record.measured["healed_s"] = time.monotonic() - started
        return (f"shard of slots {shard.low}-{shard.high}: primary :{old} killed, :{new} promoted after "
                f"{record.measured['failover_s']:.1f}s, :{old} back as its replica (cluster healthy: {synced})")

    async def _wait_new_primary(self, shard: SlotRange, old: int) -> int:
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while time.monotonic() < deadline:
            for r in await self.slot_map():
                if r.low == shard.low and r.primary != old:
                    return r.primary
            await asyncio.sleep(0.1)
        raise RuntimeError(f"no replica of :{old} was promoted in {HEAL_TIMEOUT_S:.0f}s")

    async def _shard_pause(self, record: ClusterFaultRecord) -> str:
        shard = await self._shard(record.target)
        server = self.by_port[shard.primary]
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(record.duration_s)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        resumed = time.monotonic()
        synced = await self.wait_healthy()
        record.measured["healed_s"] = time.monotonic() - resumed
        now = next((r.primary for r in await self.slot_map() if r.low == shard.low), 0)
        moved = f"; the cluster failed over to :{now}" if now != shard.primary else ""
        return f"primary :{shard.primary} paused {record.duration_s:.1f}s{moved} (cluster healthy: {synced})"

    async def _link_cut(self, record: ClusterFaultRecord) -> str:
        """The node's connections to one shard's primary closed, and new ones refused (its
        Redis user disabled there), while its links to the other shards keep working."""
        alive = [n for n in self.gateways.nodes if n.running and n.name in self.redis_users]
        if not alive:
            raise RuntimeError("no gateway node with its own Redis user to cut off")
        node = alive[record.target % len(alive)]
        shard = await self._shard(record.target // len(alive))
        user = self.redis_users[node.name]
        async with self.client(shard.primary) as c:
            await command(c, "ACL", "SETUSER", user, "off")
            closed = int(await command(c, "CLIENT", "KILL", "USER", user))
        try:
            await asyncio.sleep(record.duration_s)
        finally:
            await self.restore_users()
        return (f"{node.name} cut off from the shard of slots {shard.low}-{shard.high} (primary :{shard.primary}) "
                f"for {record.duration_s:.1f}s ({closed} connections closed)")

    async def restore_users(self) -> None:
        """Every node's Redis user enabled on every live server (a cut is per server)."""
        for port in self.live_ports():
            async with self.client(port) as c:
                for user in self.redis_users.values():
                    await command(c, "ACL", "SETUSER", user, "on")

    async def _site_loss(self, record: ClusterFaultRecord) -> str:
        site_a = [p for p, site in self.site.items() if site == SITE_A]
        site_b = [p for p, site in self.site.items() if site == SITE_B]
        if not site_b:
            raise RuntimeError("no site B: run the drill with --site-loss (a second replica per shard)")
        nodes_a = [n for n in self.gateways.nodes if self.node_site[n.name] == SITE_A]
        started = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(self.by_port[p].kill) for p in site_a),
                             *(asyncio.to_thread(n.kill) for n in nodes_a))
        self.lost_nodes.update(n.name for n in nodes_a)
        # The operator's step: each site-B server takes its shard over, without a vote (the
        # primaries that would vote are gone). One that already is a primary (an earlier
        # failover) keeps its slots.
        promoted = 0
        for port in site_b:
            async with self.client(port) as c:
                role = (await command(c, "ROLE"))[0]
                if role in (b"slave", "slave"):
                    await command(c, "CLUSTER", "FAILOVER", "TAKEOVER")
                    promoted += 1
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while time.monotonic() < deadline:
            ranges = await self.slot_map(site_b)
            if ranges and all(r.primary in site_b for r in ranges) and await self._all_ok(site_b):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"site B did not take over in {HEAL_TIMEOUT_S:.0f}s")
        record.measured["takeover_s"] = time.monotonic() - started
        # Site B now runs without replicas: under `strict` (WAIT for every replica) every gift
        # write answers UNAVAILABLE until replicas attach again. After `duration` site A's
        # servers come back (as a rebuilt site would) and rejoin as replicas of site B's primaries.
        await asyncio.sleep(record.duration_s)
        await asyncio.gather(*(asyncio.to_thread(self.by_port[p].start) for p in site_a))
        synced = await self.wait_healthy()
        record.measured["replicas_back_s"] = time.monotonic() - started
        return (f"site A lost ({len(site_a)} Redis servers, gateway nodes {', '.join(n.name for n in nodes_a)}); "
                f"{promoted} site-B replicas took over (the others were primaries already) in "
                f"{record.measured['takeover_s']:.1f}s; site B alone for {record.duration_s:.0f}s; site A's servers "
                f"back as replicas {record.measured['replicas_back_s']:.1f}s after the loss "
                f"(cluster healthy: {synced})")

    async def _all_ok(self, ports: Iterable[int]) -> bool:
        for port in ports:
            try:
                async with self.client(port) as c:
                    if "cluster_state:ok" not in await cluster_info(c):
                        return False
            except (aioredis.RedisError, OSError):
                return False
        return True

    # ------------------------------------------------------------ queues, nodes, healing
    async def count_queued(self, name: str) -> int:
        """Entries of every slot's ``name`` queue (``due``: cross-shard steps to finish;
        ``expiry``: pending offers), summed over every primary; -1 if one did not answer."""
        total = 0
        for r in {r.primary for r in await self.slot_map()} or {-1}:
            if r < 0:
                return -1
            try:
                async with self.client(r) as c:
                    async for key in c.scan_iter(match=KeySchema().pattern(name), count=1000):
                        total += int(await c.zcard(key))
            except (aioredis.RedisError, OSError):
                return -1
        return total

    async def restart_node(self, node: NodeProcess) -> int:
        """Start a node again as a supervisor would, a few tries at most."""
        for attempt in range(1, RESTART_TRIES + 1):
            try:
                await asyncio.to_thread(node.start, self.log_dir)
                return attempt
            except RuntimeError as exc:
                log.warning("restart of %s failed (try %d): %s", node.name, attempt, exc)
                await asyncio.to_thread(node.kill)
                await asyncio.sleep(1.0)
        raise RuntimeError(f"{node.name} did not start in {RESTART_TRIES} tries")

    async def heal(self) -> list[str]:
        """Every Redis server running and the cluster healthy; every gateway node running
        but those lost with their site. Returns what had to be fixed."""
        fixed: list[str] = []
        for port, server in self.by_port.items():
            if server.process is not None and server.process.poll() is None:
                os.kill(server.process.pid, signal.SIGCONT)
            else:
                await asyncio.to_thread(server.start)
                fixed.append(f"redis :{port} restarted")
        if not await self.wait_healthy():
            fixed.append(f"cluster NOT healthy after heal ({self.last_health})")
        await self.restore_users()
        for node in self.gateways.nodes:
            if node.name in self.lost_nodes:
                continue
            node.resume()
            if not node.running:
                await self.restart_node(node)
                fixed.append(f"{node.name} restarted")
        return fixed
