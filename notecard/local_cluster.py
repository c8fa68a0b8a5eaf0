"""A local Redis Cluster: ``shards`` primaries with ``replicas`` replicas each, as children.

For ``notecard dev --cluster``, the tests' cluster topology, the cluster drill and
``notecard bench --cluster``. Each server is a :class:`~notecard.local_redis.LocalRedis`
started with ``--cluster-enabled yes``; the cluster is formed over the cluster protocol
itself (CLUSTER MEET, ADDSLOTSRANGE, REPLICATE), so nothing beyond ``redis-server`` is
needed. Slots are split evenly; with a replica per shard, a killed primary is replaced by
its replica after ``node_timeout_ms`` (the cluster's own failover, no Sentinel).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import redis

from notecard.local_redis import LocalRedis, free_port

SLOTS = 16384
FORM_TIMEOUT_S = 30.0


@dataclasses.dataclass
class Shard:
    primary: LocalRedis
    replicas: list[LocalRedis]


class LocalCluster:
    def __init__(self, work_dir: Path, *, shards: int = 3, replicas: int = 1, host: str = "127.0.0.1",
                 node_timeout_ms: int = 2000, appendonly: bool = False, password: str | None = None,
                 extra_args: tuple[str, ...] = (), launcher: Callable[[Path], tuple[str, ...]] | None = None,
                 timeout_s: float = FORM_TIMEOUT_S) -> None:
        if shards < 1 or replicas < 0:
            raise ValueError("a cluster has at least one shard")
        self.work_dir = work_dir.resolve()
        self.host = host
        self.node_timeout_ms = node_timeout_ms
        #: More ``redis-server`` arguments for every server (the drill's fsync policy, say).
        self.extra_args = extra_args
        #: Each server's launcher prefix from its data folder (``LocalRedis.launcher``): a
        #: folder of its own for what the launcher writes (callgrind's dumps).
        self.launcher = launcher
        #: How long each server may take to answer and the cluster to form (both far
        #: longer under valgrind).
        self.timeout_s = timeout_s
        #: Every server requires it (and replicas give it to their primaries).
        self.password = password or secrets.token_urlsafe(24)
        self.shards: list[Shard] = []
        #: Each server's cluster bus port, by its port.
        self.bus_ports: dict[int, int] = {}
        for i in range(shards):
            servers = [self._server(i, r, appendonly) for r in range(1 + replicas)]
            self.shards.append(Shard(servers[0], servers[1:]))

    def _server(self, shard: int, index: int, appendonly: bool) -> LocalRedis:
        port = free_port(self.host)
        bus = self.bus_ports[port] = free_port(self.host)
        data_dir = self.work_dir / f"shard{shard}-{index}-{port}"
        return LocalRedis(
            data_dir, port=port, host=self.host, appendonly=appendonly, password=self.password,
            launcher=self.launcher(data_dir.resolve()) if self.launcher else (), ready_timeout_s=self.timeout_s,
            # the bus port is given: by default it is the port + 10000, past 65535 for a
            # port the kernel picks from the ephemeral range
            extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-port", str(bus),
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        # a replica may take over even if it lagged: the drill kills primaries on purpose
                        "--cluster-replica-validity-factor", "0", *self.extra_args),
        )  # fmt: skip

    @property
    def servers(self) -> list[LocalRedis]:
        return [s for shard in self.shards for s in (shard.primary, *shard.replicas)]

    @property
    def addresses(self) -> str:
        """``host:port,host:port,...`` of every server: NOTECARD_REDIS_CLUSTER."""
        return ",".join(f"{s.host}:{s.port}" for s in self.servers)

    @property
    def url(self) -> str:
        """The same as a URL, password included: ``redis+cluster://:password@host:port,...``."""
        return f"redis+cluster://:{self.password}@" + self.addresses

    def _client(self, server: LocalRedis) -> redis.Redis:
        return redis.Redis(host=server.host, port=server.port, password=self.password, socket_timeout=5)

    def start(self) -> LocalCluster:
        try:
            for server in self.servers:
                server.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        first = self.shards[0].primary
        per_shard = SLOTS // len(self.shards)
        for i, shard in enumerate(self.shards):
            low = i * per_shard
            high = SLOTS - 1 if i == len(self.shards) - 1 else low + per_shard - 1
            with self._client(shard.primary) as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        for server in self.servers[1:]:
            with self._client(server) as c:
                c.execute_command("CLUSTER", "MEET", first.host, first.port, self.bus_ports[first.port])
        self._wait(lambda: all(self._knows_all(s) for s in self.servers), "nodes did not meet")
        for shard in self.shards:
            with self._client(shard.primary) as c:
                primary_id = c.execute_command("CLUSTER", "MYID").decode()
            for replica in shard.replicas:
                with self._client(replica) as c:
                    self._wait(lambda c=c, pid=primary_id: self._replicate(c, pid), "replica could not attach")
        self._wait(lambda: all(self._state_ok(s) for s in self.servers), "cluster state did not become ok")
        self._wait(self._replicas_synced, "replicas did not sync")

    def _knows_all(self, server: LocalRedis) -> bool:
        with self._client(server) as c:
            nodes = c.execute_command("CLUSTER", "NODES").decode().strip().splitlines()
        return len(nodes) == len(self.servers) and not any("handshake" in n for n in nodes)

    @staticmethod
    def _replicate(client: redis.Redis, primary_id: str) -> bool:
        try:
            client.execute_command("CLUSTER", "REPLICATE", primary_id)  # type: ignore[no-untyped-call]
            return True
        except redis.ResponseError:
            return False  # the primary's id has not reached this node yet

    def _state_ok(self, server: LocalRedis) -> bool:
        with self._client(server) as c:
            info = c.execute_command("CLUSTER", "INFO").decode()
        return "cluster_state:ok" in info

    def _replicas_synced(self) -> bool:
        for shard in self.shards:
            for replica in shard.replicas:
                with self._client(replica) as c:
                    info = c.info("replication")
                if info.get("master_link_status") != "up":
                    return False
        return True

    def _wait(self, done: object, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                if done():  # type: ignore[operator]
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"local cluster: {what} within {self.timeout_s}s")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
