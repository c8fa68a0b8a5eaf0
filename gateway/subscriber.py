"""The node's one pub/sub subscription, watched so that the node never stays deaf.

A subscriber connection can die without an error on our side (Redis restarted, the
connection killed with ``CLIENT KILL TYPE pubsub``, the output-buffer limit hit, a socket
half-open or frozen: open, but carrying nothing). So the node publishes a probe to its own
channel every few seconds and expects to hear it back; a missing probe, like any error,
makes the listener log, resubscribe on a new connection, and have every local connection
filled from the event streams (``on_missed``), which hold every event pub/sub carries.

What "hearing" means is the age of the last probe that came back, not a flag set once:
readiness (``/readyz``) and the node's presence (gateway/periodic.py) ask :meth:`hearing`,
so a node whose probes stop coming back turns not-ready and leaves presence (its users
count as offline, senders get ``RECIPIENT_OFFLINE``) until a probe is heard again.

Every await of the listener is bounded (``call_timeout_s``), so a frozen socket or a client
library reconnecting inside a call cannot hold it; and the watchdog (:meth:`watch`)
restarts a listener that stops making progress all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
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
#: The node counts as hearing while its last probe came back within this many probe
#: periods: one period is the probe's own deadline; three leave room for a slow loop turn
#: without letting a deaf node look healthy for long.
DEAF_AFTER_PROBES = 3
#: The longest one get_message may wait for data before the loop looks at its probe again.
_POLL_S = 0.5


class NodeSubscriber:
    def __init__(
        self, redis: aioredis.Redis, channel: str, on_event: Callable[[UserEvent], None],
        on_missed: Callable[[], None], metrics: NodeMetrics, probe_interval_s: float, call_timeout_s: float,
        on_control: Callable[[bytes], None] = lambda payload: None,
    ) -> None:
        self.redis = redis
        self.channel = channel
        self.on_event = on_event
        self.on_missed = on_missed
        #: Gets every control message (clearing.CONTROL_PREFIX: a ban) published to the node.
        self.on_control = on_control
        self.metrics = metrics
        self.probe_interval_s = probe_interval_s
        self.call_timeout_s = call_timeout_s
        #: Monotonic time the last probe came back (None: never).
        self.heard_at: float | None = None
        #: Set once the first probe came back (the node's start waits for it).
        self.first_heard = asyncio.Event()
        #: Monotonic time of the listener's latest step; a stuck listener stops moving it.
        self.progress_at = time.monotonic()
        self.subscriptions = 0
        metrics.probe_age.set_function(self.probe_age)

    @property
    def deaf_after_s(self) -> float:
        return DEAF_AFTER_PROBES * self.probe_interval_s

    @property
    def stuck_after_s(self) -> float:
        """No listener step takes longer than this: two bounded calls (a close and a
        subscribe, or a probe and a read), a poll, a probe period and the longest backoff."""
        return 2 * self.call_timeout_s + _POLL_S + self.probe_interval_s + _BACKOFF_MAX_S + 1.0

    def probe_age(self) -> float:
        """Seconds since the last probe came back (infinite before the first)."""
        return math.inf if self.heard_at is None else time.monotonic() - self.heard_at

    def hearing(self) -> bool:
        """A probe came back recently: events published to this node reach it."""
        return self.probe_age() < self.deaf_after_s

    # ------------------------------------------------------------ listener
    async def listen(self) -> None:
        """Subscribe, listen and probe, for ever; resubscribe after any failure."""
        attempt = 0
        while True:
            subscribed_before = self.subscriptions
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, _Deaf) as exc:  # TimeoutError is an OSError
                self.metrics.redis_up.set(0)
                log.warning("pub/sub subscription lost; resubscribing",
                            extra={"reason": f"{type(exc).__name__}: {exc}"[:200]})
            except Exception:
                # Not a failure we know, but the listener must not die of it: the node
                # would stay deaf. Logged in full, then handled like any other loss.
                self.metrics.redis_up.set(0)
                log.exception("pub/sub listener failed; resubscribing")
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py can turn a cancellation inside a call into a connection error.
                raise asyncio.CancelledError
            # Whatever was published to us meanwhile is in the users' streams.
            self.on_missed()
            attempt = 0 if self.subscriptions > subscribed_before and self.hearing() else attempt + 1
            self.progress_at = time.monotonic()
            await asyncio.sleep(random.uniform(0, min(_BACKOFF_MAX_S, 0.05 * 2**attempt)))

    async def _listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await pubsub.subscribe(self.channel)
            self.subscriptions += 1
            if self.subscriptions > 1:
                self.metrics.subscriber_reconnects.inc()
                log.info("pub/sub resubscribed")
            await self._loop(pubsub)
        finally:
            self.progress_at = time.monotonic()
            try:
                async with asyncio.timeout(self.call_timeout_s):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            except (RedisError, OSError, RuntimeError):
                log.warning("pub/sub connection did not close cleanly; dropped")

    async def _loop(self, pubsub: aioredis.client.PubSub) -> None:
        probe_sent_at = -math.inf
        probe_token = b""
        answered = True
        proven = False
        while True:
            now = self.progress_at = time.monotonic()
            if now - probe_sent_at >= self.probe_interval_s:
                if not answered:
                    raise _Deaf(f"probe not heard back within {self.probe_interval_s}s")
                probe_token = PROBE_PREFIX + str(now).encode()
                async with asyncio.timeout(self.call_timeout_s):
                    await self.redis.publish(self.channel, probe_token)
                probe_sent_at, answered = now, False
            poll = min(_POLL_S, self.probe_interval_s / 2)
            # get_message's own timeout covers only the read: a reconnect or a health
            # check inside it is bounded here.
            async with asyncio.timeout(poll + self.call_timeout_s):
                message = await pubsub.get_message(timeout=poll)
            if message is None or message.get("type") != "message":
                continue
            data = message["data"]
            if data.startswith(PROBE_PREFIX):
                if data == probe_token:
                    answered = True
                    self._heard()
                    if not proven:
                        # Subscribed for sure now: events published from here on reach us,
                        # and those before are in the streams. (A catch-up started before
                        # the SUBSCRIBE was in effect could miss one published in between.)
                        proven = True
                        if self.subscriptions > 1:
                            log.info("pub/sub heard again; catching up from the streams")
                        self.on_missed()
                continue
            if data.startswith(CONTROL_PREFIX):
                self.on_control(data)
                continue
            try:
                event = decode_published(data)
            except Exception:
                log.exception("undecodable pub/sub payload dropped")
                continue
            try:
                self.on_event(event)
            except Exception:
                # A bug in delivering one event must not cost the subscription (it used to
                # end the listener without a word). The event stays in the user's stream:
                # the next one shows a gap and the hub reads it from there.
                log.exception("delivering a pub/sub event failed", extra={"user": event.user})

    def _heard(self) -> None:
        self.heard_at = time.monotonic()
        self.metrics.redis_up.set(1)
        self.first_heard.set()

    # ------------------------------------------------------------ watchdog
    async def watch(self, restart_listener: Callable[[str], Awaitable[object]]) -> None:
        """Restart the listener when it stops making progress: the line of defence behind
        the bounds on its calls (a cancellation swallowed inside the client library, a
        loop step that hangs where no bound reaches)."""
        while True:
            await asyncio.sleep(self.probe_interval_s / 2)
            stalled = time.monotonic() - self.progress_at
            if stalled > self.stuck_after_s:
                with contextlib.suppress(Exception):
                    await restart_listener(f"listener made no progress for {stalled:.1f}s")
                self.progress_at = time.monotonic()


class _Deaf(Exception):
    """The subscription stopped delivering although no error was raised."""
