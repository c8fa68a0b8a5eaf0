"""Fixtures for end-to-end tests: real gateway nodes on free ports, real WebSocket clients.

Nodes run in the test's event loop (they are ordinary asyncio servers); the multi-process
tests start them as OS processes instead (see test_cluster_*.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from clearing import GiftRules, check_invariant
from clearing.topology import Topology
from gateway import GatewayNode, GatewaySettings, close_store, connect_store, mint_token
from notecard.admin_client import AdminClient
from notecard.local_cluster import LocalCluster
from notecard.local_redis import LocalRedis
from notecard_sdk import NotecardClient
from protocol import Encoding

#: At least 32 bytes each, as a node requires (gateway/auth.py MIN_SECRET_BYTES).
TOKEN_SECRET = "test-token-secret-0123456789abcdef"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
DAY_MS = 86_400_000

NodeFactory = Callable[..., Awaitable[GatewayNode]]
ClientFactory = Callable[..., Awaitable[NotecardClient]]


def now_ms() -> int:
    return int(time.time() * 1000)


def token_for(user: str, **kwargs: Any) -> str:
    return mint_token(TOKEN_SECRET, user, **kwargs)


def store_settings(request: pytest.FixtureRequest, topology_kind: str) -> dict[str, Any]:
    """Where a test node keeps its data: the session's Redis, or the test cluster."""
    if topology_kind == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return {"redis_cluster": tuple((s.host, s.port) for s in cluster.servers),
                "redis_password": cluster.password}
    server: LocalRedis = request.getfixturevalue("redis_server")
    return {"redis_url": server.url}


@pytest.fixture
async def node_factory(request: pytest.FixtureRequest, topology_kind: str, redis: aioredis.Redis, tmp_path: Path
                       ) -> AsyncIterator[NodeFactory]:
    """Start gateway nodes sharing the test Redis (or cluster); all are stopped at the end."""
    started: list[tuple[GatewayNode, Topology]] = []
    where = store_settings(request, topology_kind)

    async def make(rules: GiftRules | None = None, **overrides: Any) -> GatewayNode:
        settings = GatewaySettings(**{
            **where, "port": 0, "admin_port": 0, "data_dir": tmp_path, "log_format": "text",
            "rules": rules or GiftRules(), "shutdown_grace_s": 2.0, **overrides,
        })
        store = await connect_store(settings)
        node = GatewayNode(settings, store, token_secret=TOKEN_SECRET, admin_token=ADMIN_TOKEN)
        try:
            await node.start()
        except BaseException:
            await close_store(store)
            raise
        started.append((node, store))
        return node

    yield make
    for node, store in started:
        await node.stop()
        await close_store(store)
    report = await check_invariant(redis, GiftRules())
    assert report.ok, report.violations


@pytest.fixture
async def node(node_factory: NodeFactory) -> GatewayNode:
    return await node_factory()


@pytest.fixture
async def admin(node: GatewayNode) -> AsyncIterator[AdminClient]:
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as client:
        yield client


@pytest.fixture
async def connect(node: GatewayNode) -> AsyncIterator[ClientFactory]:
    """Connect an SDK client as ``user`` (to ``node`` unless another URL is given)."""
    clients: list[NotecardClient] = []

    async def make(user: str, *, url: str | None = None, encoding: Encoding = Encoding.MSGPACK,
                   **kwargs: Any) -> NotecardClient:
        client = NotecardClient(url or node.url, token_for(user), encoding=encoding, **kwargs)
        await client.connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def befriend_all(admin: AdminClient, *users: str, cards: int = 10, age_days: float = 4.0,
                       **flags: Any) -> None:
    """Create verified users who all follow each other (old enough) and hold ``cards`` each."""
    since = now_ms() - int(age_days * DAY_MS)
    for user in users:
        await admin.create_user(user, **({"verified": True} | flags))
        if cards:
            await admin.mint(user, cards)
    for a in users:
        for b in users:
            if a != b:
                await admin.follow(a, b, since)


@dataclasses.dataclass
class Pair:
    alice: NotecardClient
    bob: NotecardClient


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    """Wait until ``check()`` holds (a plain check, or one that asks over the network),
    polling; fail naming ``what`` after ``timeout_s`` (a bound for a failure, generous for a
    slow machine, never a wait in itself)."""
    deadline = time.monotonic() + timeout_s
    while not await _holds(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _holds(check: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = check()
    return bool(await result) if inspect.isawaitable(result) else result
