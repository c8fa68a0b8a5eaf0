"""Building the node's Redis client: a plain URL, or a primary found through Sentinel.

With Sentinel, redis-py asks the sentinels for the current primary on every (re)connect, so
after a failover the next call reaches the promoted replica; calls in flight during the
switch fail and surface as UNAVAILABLE (outcome unknown, retried with the same ids).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

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


def connect_redis(settings: GatewaySettings, url: str | None = None) -> aioredis.Redis:
    """A client for ``url`` (default: the configured one) or for the Sentinel primary."""
    timeout = settings.redis_timeout_s
    if settings.sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(settings.sentinels), socket_timeout=timeout, socket_connect_timeout=timeout
        )
        primary: aioredis.Redis = sentinel.master_for(
            settings.sentinel_master, socket_timeout=timeout, socket_connect_timeout=timeout,
            health_check_interval=HEALTH_CHECK_INTERVAL_S, retry=_no_retry(),
        )
        return primary
    target = url or settings.redis_url
    if target is None:
        raise ValueError("no Redis configured")
    pool = aioredis.BlockingConnectionPool.from_url(
        target, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=timeout, health_check_interval=HEALTH_CHECK_INTERVAL_S, retry=_no_retry(),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it
