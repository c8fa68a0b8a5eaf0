"""Shared fixtures: a real ``redis-server`` per test session, flushed before every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from notecard.local_redis import LocalRedis
from tests.gateway_fixtures import admin, connect, node, node_factory  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One redis-server child on a free loopback port, data in a temporary folder."""
    server = LocalRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    """A client of the session's server, on an empty database."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()

