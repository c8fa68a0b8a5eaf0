"""Shared fixtures: a real ``redis-server`` per test session, flushed before every test, and
a real 3-shard Redis Cluster of local ``redis-server`` processes, started when a test first
asks for it. ``store`` runs a test on both: one Redis, and the cluster."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from clearing.component import single_topology
from clearing.keys import DEFAULT_KEYS
from clearing.topology import Topology, connect_cluster
from notecard.local_cluster import LocalCluster
from notecard.local_postgres import LocalPostgres
from notecard.local_redis import LocalRedis
from tests.gateway_fixtures import admin, connect, node, node_factory  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One redis-server child on a free loopback port, data in a temporary folder."""
    server = LocalRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL of our own (initdb + pg_ctl in a temporary folder, a free port), started
    when a test first asks for it; never a system PostgreSQL."""
    server = LocalPostgres(durable=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> str:
    """A new empty database on the session's PostgreSQL."""
    return postgres_server.create_database(f"t{secrets.token_hex(6)}")


@pytest.fixture
def topology_kind(request: pytest.FixtureRequest) -> str:
    """Where the gateway tests' Redis data lives: "single" unless a module asks for both
    (``pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)``)."""
    return str(getattr(request, "param", "single"))


#: Both topologies, for the end-to-end modules that run on each.
TOPOLOGIES = ["single", "cluster"]


@pytest.fixture
async def redis(redis_server: LocalRedis, topology_kind: str, request: pytest.FixtureRequest
                ) -> AsyncIterator[aioredis.Redis]:
    """A client of the session's server (or of the test cluster, for ``topology_kind``
    "cluster": a cluster client, which answers the same commands), on an empty database."""
    if topology_kind == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        routed = RedisCluster(host=cluster.servers[0].host, port=cluster.servers[0].port, password=cluster.password)
        await routed.flushall(target_nodes="primaries")
        yield routed  # type: ignore[misc]
        await routed.aclose()
        return
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()



#: The cluster node timeout of test clusters that have no replicas (see redis_cluster).
CALM_NODE_TIMEOUT_MS = 30_000
#: The clearing client's read timeout on the test cluster: the production default (5 s) is
#: for a Redis that answers at once, and a starved test machine can stall a call longer.
STARVED_READ_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three primaries of a Redis Cluster (no replicas: the drills test failover). With no
    replica to promote, a short node timeout buys nothing, and on a starved machine a primary
    that answers the cluster bus late would be marked failing and take the cluster down."""
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("cluster")), shards=3, replicas=0,
                           node_timeout_ms=CALM_NODE_TIMEOUT_MS)
    cluster.start()
    yield cluster
    cluster.stop()


async def cluster_store(cluster: LocalCluster) -> Topology:
    """A topology over the test cluster, emptied."""
    topology = await connect_cluster([(s.host, s.port) for s in cluster.servers], password=cluster.password,
                                     fence=lambda tag: DEFAULT_KEYS.node_channel(tag, "fence"),
                                     timeout_s=STARVED_READ_TIMEOUT_S)
    await topology.general.flushall(target_nodes="primaries")
    return topology


@pytest.fixture(params=["single", "cluster"])
async def store(request: pytest.FixtureRequest, redis_server: LocalRedis) -> AsyncIterator[Topology]:
    """The clearing topology a test runs on: one Redis, then a 3-shard cluster."""
    if request.param == "single":
        client = aioredis.Redis.from_url(redis_server.url)
        await client.flushall()
        yield single_topology(client, DEFAULT_KEYS)
        await client.aclose()
        return
    topology = await cluster_store(request.getfixturevalue("redis_cluster"))
    yield topology
    await topology.aclose()
    await topology.general.aclose()
