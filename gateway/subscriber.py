"""The node's one pub/sub subscription, watched so that the node never stays deaf.

A subscriber connection can die without an error on our side (Redis restarted, the
connection killed with ``CLIENT KILL TYPE pubsub``, the output-buffer limit hit, a socket
half-open). So the node publishes a probe to its own channel every few seconds and
expects to hear it back; a missing probe, like any connection error, makes it log,
resubscribe, and fill every local connection from the event streams (``on_resubscribed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from clearing import CONTROL_PREFIX, UserEvent, decode_published
from gateway.metrics import NodeMetrics

log = logging.getLogger("notecard.gateway.subscriber")

#: Probe payloads start with this; an event payload is a msgpack map and never does.
PROBE_PREFIX = b"probe:"
_BACKOFF_MAX_S = 2.0


class NodeSubscriber:
    def __init__(
        self, redis: aioredis.Redis, channel: str, on_event: Callable[[UserEvent], None],
        on_resubscribed: Callable[[], Awaitable[None]], metrics: NodeMetrics, probe_interval_s: float,
        on_control: Callable[[bytes], None] = lambda payload: None,
    ) -> None:
        self.redis = redis
        self.channel = channel
        self.on_event = on_event
        self.on_resubscribed = on_resubscribed
        #: Gets every control message (clearing.CONTROL_PREFIX: a ban) published to the node.
        self.on_control = on_control
        self.metrics = metrics
        self.probe_interval_s = probe_interval_s
        #: Set while subscribed and the latest probe came back in time.
        self.healthy = asyncio.Event()
        self.subscriptions = 0

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, _Deaf) as exc:
                self.healthy.clear()
                self.metrics.redis_up.set(0)
                log.warning("pub/sub subscription lost; resubscribing", extra={"reason": str(exc)[:200]})
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(_BACKOFF_MAX_S, 0.05 * 2**attempt)))
            if self.healthy.is_set():
                attempt = 0

    async def _listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self.subscriptions += 1
            if self.subscriptions > 1:
                self.metrics.subscriber_reconnects.inc()
                log.info("pub/sub resubscribed; catching up from the streams")
                await self.on_resubscribed()
            await self._loop(pubsub)
        finally:
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _loop(self, pubsub: aioredis.client.PubSub) -> None:
        probe_sent_at = 0.0
        probe_token = b""
        answered = True
        while True:
            now = time.monotonic()
            if now - probe_sent_at >= self.probe_interval_s:
                if not answered:
                    raise _Deaf(f"probe not heard back within {self.probe_interval_s}s")
                probe_token = PROBE_PREFIX + str(now).encode()
                await self.redis.publish(self.channel, probe_token)
                probe_sent_at, answered = now, False
            message = await pubsub.get_message(timeout=min(0.5, self.probe_interval_s / 2))
            if message is None or message.get("type") != "message":
                continue
            data = message["data"]
            if data.startswith(PROBE_PREFIX):
                if data == probe_token:
                    answered = True
                    self.healthy.set()
                    self.metrics.redis_up.set(1)
                continue
            if data.startswith(CONTROL_PREFIX):
                self.on_control(data)
                continue
            try:
                event = decode_published(data)
            except Exception:
                log.exception("undecodable pub/sub payload dropped")
                continue
            self.on_event(event)


class _Deaf(Exception):
    """The subscription stopped delivering although no error was raised."""
