"""The gateway: a sharded asyncio WebSocket server holding client connections.

Exports the node (:class:`GatewayNode`), its settings and the Redis client factories; the
CLI (``notecard serve``) composes them.
"""

from gateway.auth import Identity, TokenError, mint_token, verify_token
from gateway.config import ConfigError, GatewaySettings
from gateway.node import GatewayNode
from gateway.redis_client import close_store, connect_redis, connect_store

__all__ = [
    "ConfigError",
    "GatewayNode",
    "GatewaySettings",
    "Identity",
    "TokenError",
    "close_store",
    "connect_redis",
    "connect_store",
    "mint_token",
    "verify_token",
]
