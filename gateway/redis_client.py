"""Building the node's Redis client: a plain URL, a primary found through Sentinel, or the
primaries of a Redis Cluster (:func:`connect_store`).

With Sentinel, redis-py asks the sentinels for the current primary on every (re)connect, so
after a failover the next call reaches the promoted replica; calls in flight during the
switch fail and surface as UNAVAILABLE (outcome unknown, retried with the same ids).

Credentials and TLS (README "Configuration"): ``NOTECARD_REDIS_USERNAME`` /
``NOTECARD_REDIS_PASSWORD`` / ``NOTECARD_REDIS_TLS`` for Redis itself, reached by URL or
through Sentinel; ``NOTECARD_SENTINEL_*`` for the Sentinels, which have their own password
(``requirepass`` in sentinel.conf) and listener. The TLS files serve both.
"""

from __future__ import annotations

import ssl
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from clearing.component import single_topology
from clearing.keys import KeySchema
from clearing.topology import Topology, connect_cluster
from gateway.config import GatewaySettings

#: redis-py checks an idle connection with PING before reuse after this long.
HEALTH_CHECK_INTERVAL_S = 10
#: Connections one node may open to Redis. Requests beyond it wait for a free connection
#: (up to the Redis timeout) instead of failing at once, as redis-py's default pool does:
#: a reconnect storm after a node dies would otherwise turn into UNAVAILABLE errors.
MAX_CONNECTIONS = 512


def _no_retry() -> Retry:
    """No silent re-sends: a presence count must not be incremented twice by a retry of
    a command whose first try did land. Callers see UNAVAILABLE and retry idempotently."""
    return Retry(NoBackoff(), 0)


def tls_options(settings: GatewaySettings) -> dict[str, Any]:
    """redis-py's TLS arguments: the server's certificate is always verified (against the
    CA file, else the system's CAs); a client certificate is sent when one is configured."""
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = settings.redis_tls_cert_file
        options["ssl_keyfile"] = settings.redis_tls_key_file
    return options


class SentinelPrimary(aioredis.Redis):
    """The primary's client, found through Sentinel. Closing it also closes the clients of
    the Sentinels it asks, which redis-py leaves open (one connection per Sentinel)."""

    sentinel_clients: tuple[aioredis.Redis, ...] = ()

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for client in self.sentinel_clients:
            await client.aclose()


def _credentials(username: str | None, password: str | None) -> dict[str, Any]:
    return {k: v for k, v in (("username", username), ("password", password)) if v}


def connect_redis(settings: GatewaySettings, url: str | None = None) -> aioredis.Redis:
    """A client for ``url`` (default: the configured one) or for the Sentinel primary."""
    timeout = settings.redis_timeout_s
    redis_auth = _credentials(settings.redis_username, settings.redis_password)
    if settings.sentinels:
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                           **_credentials(settings.sentinel_username, settings.sentinel_password)}
        if settings.sentinel_tls:
            sentinel_kwargs |= {"ssl": True, **tls_options(settings)}
        primary_tls = {"ssl": True, **tls_options(settings)} if settings.redis_tls else {}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(settings.sentinels), sentinel_kwargs=sentinel_kwargs,
            socket_timeout=timeout, socket_connect_timeout=timeout,
        )
        primary: SentinelPrimary = sentinel.master_for(
            settings.sentinel_master, redis_class=SentinelPrimary, socket_timeout=timeout,
            socket_connect_timeout=timeout, health_check_interval=HEALTH_CHECK_INTERVAL_S, retry=_no_retry(),
            **redis_auth, **primary_tls,
        )
        primary.sentinel_clients = tuple(sentinel.sentinels)
        return primary
    target = url or settings.redis_url
    if target is None:
        raise ValueError("no Redis configured")
    if settings.redis_tls and target.startswith("redis://"):
        target = "rediss://" + target.removeprefix("redis://")
    tls = tls_options(settings) if target.startswith("rediss://") else {}
    pool = aioredis.BlockingConnectionPool.from_url(
        target, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=timeout, health_check_interval=HEALTH_CHECK_INTERVAL_S, retry=_no_retry(),
        **redis_auth, **tls,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it


async def connect_store(settings: GatewaySettings, keys: KeySchema | None = None) -> Topology:
    """What clearing runs on: a Redis Cluster's primaries (``NOTECARD_REDIS_CLUSTER``), or one
    Redis (a URL, or the primary Sentinel names). Close it with :func:`close_store`."""
    keys = keys or KeySchema()
    if not settings.redis_cluster:
        return single_topology(connect_redis(settings), keys, settings.durability)
    tls = {"ssl_cert_reqs": "required", **_tls_paths(settings)} if settings.redis_tls else {}
    return await connect_cluster(
        settings.redis_cluster, fence=lambda tag: keys.node_channel(tag, "fence"), durability=settings.durability,
        password=settings.redis_password, username=settings.redis_username, timeout_s=settings.redis_timeout_s,
        ssl=settings.redis_tls, health_check_interval=HEALTH_CHECK_INTERVAL_S, **tls,
    )


async def close_store(topology: Topology) -> None:
    await topology.aclose()
    await topology.general.aclose()


def _tls_paths(settings: GatewaySettings) -> dict[str, Any]:
    options = tls_options(settings)
    options.pop("ssl_cert_reqs", None)
    return options
