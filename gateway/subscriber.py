"""The node's pub/sub subscriptions, watched so that the node never stays deaf.

Events for a user are published by the script that made them, on the Redis node that runs
it (sharded pub/sub, clearing/events.py), on the gateway node's channel in that Redis node's
*home* slot (its lowest slot: ``keys.node_channel(home, node)``, clearing/topology.py), so a
message travels only inside the shard that owns the user, never over a whole cluster's bus.
The node therefore holds one connection and one channel per Redis node: on a single Redis
one of each; on a cluster one per primary. The same connection of the first group also
subscribes (classic pub/sub) to the settings channel, whose messages reach every node of a
cluster. When the cluster's map changes (a home slot moved, a primary added or promoted)
the listener subscribes again after the map it reads every ``MAP_CHECK_S``, or at once when
Redis unsubscribes a channel whose slot moved.

A subscriber connection can die without an error on our side (Redis restarted, the
connection killed with ``CLIENT KILL TYPE pubsub``, the output-buffer limit hit, a socket
half-open or frozen: open, but carrying nothing). So the node publishes a probe to one of its
channels on each connection every few seconds and expects to hear it back; a missing probe,
like any error, makes the listener log, resubscribe everything on new connections (after
reading the cluster's map again: a failover or a slot that moved is one way to lose a
subscription), and have every local connection filled from the event streams
(``on_missed``), which hold every event pub/sub carries.

What "hearing" means is the age of the oldest latest probe of all connections, not a flag
set once: readiness (``/readyz``) and the node's presence (gateway/periodic.py) ask
:meth:`hearing`, so a node whose probes stop coming back on any connection turns not-ready
and leaves presence (its users count as offline, senders get ``RECIPIENT_OFFLINE``) until
every probe is heard again.

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
from redis.utils import HIREDIS_AVAILABLE

from clearing import CONTROL_PREFIX, KeySchema, UserEvent, decode_published
from clearing.topology import NodeScripts, Topology
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
#: How often the listener reads the cluster's map again to find a changed set of primaries
#: or home slots (a script meeting a moved slot reads it sooner). One CLUSTER SLOTS per node.
MAP_CHECK_S = 10.0


async def _as_received(response: object) -> object:
    """Hands a pub/sub push to the caller unchanged. The handler redis-py installs by
    default logs every push at debug level after formatting it with ``str()`` (a few
    microseconds per event, for a log line nobody enables); the reply is the same."""
    return response


#: Only the C reply parser (hiredis, a dependency) and the RESP3 one take a push handler;
#: without either, redis-py's own default is kept.
_PUSH_HANDLER = {"push_handler_func": _as_received} if HIREDIS_AVAILABLE else {}


class NodeSubscriber:
    def __init__(
        self, topology: Topology, keys: KeySchema, node_id: str, on_event: Callable[[UserEvent], None],
        on_missed: Callable[[], None], metrics: NodeMetrics, probe_interval_s: float, call_timeout_s: float,
        on_control: Callable[[bytes], None] = lambda payload: None,
        on_settings: Callable[[], None] = lambda: None,
    ) -> None:
        self.topology = topology
        self.keys = keys
        self.node_id = node_id
        self.on_event = on_event
        self.on_missed = on_missed
        #: Gets every control message (clearing.CONTROL_PREFIX: a ban) published to the node.
        self.on_control = on_control
        #: Called when an operator's settings write is announced (clearing/settings.py).
        self.on_settings = on_settings
        self.metrics = metrics
        self.probe_interval_s = probe_interval_s
        self.call_timeout_s = call_timeout_s
        #: The client a group of slots is listened to with (its Redis node's, but a test
        #: may put another in between).
        self.client_of: Callable[[NodeScripts], aioredis.Redis] = lambda node: node.client
        #: Monotonic time the last probe came back, per Redis node listened to.
        self._heard: dict[str, float] = {}
        self._groups: list[str] = []
        #: Set once every connection's first probe came back (the node's start waits for it).
        self.first_heard = asyncio.Event()
        #: Monotonic time of the listener's latest step; a stuck listener stops moving it.
        self.progress_at = time.monotonic()
        #: When the current round of subscriptions began (or the watchdog last restarted it).
        self.round_at = time.monotonic()
        #: Rounds in which every connection got subscribed (1 after the start).
        self.subscriptions = 0
        self._subscribed = 0
        metrics.probe_age.set_function(self.probe_age)

    @property
    def deaf_after_s(self) -> float:
        return DEAF_AFTER_PROBES * self.probe_interval_s

    @property
    def stuck_after_s(self) -> float:
        """No listener step takes longer than this: two bounded calls (a close and a
        subscribe, or a probe and a read), a poll, a probe period and the longest backoff,
        and a read of the cluster's map."""
        return 3 * self.call_timeout_s + _POLL_S + self.probe_interval_s + _BACKOFF_MAX_S + 1.0

    def probe_age(self) -> float:
        """Seconds since the probe of the most silent connection came back (infinite
        before every connection heard its first)."""
        if not self._groups or any(g not in self._heard for g in self._groups):
            return math.inf
        return time.monotonic() - min(self._heard[g] for g in self._groups)

    def hearing(self) -> bool:
        """Every connection heard a probe recently: events published to this node reach it."""
        return self.probe_age() < self.deaf_after_s

    # ------------------------------------------------------------ listener
    async def listen(self) -> None:
        """Subscribe, listen and probe, for ever; resubscribe after any failure."""
        attempt = 0
        while True:
            subscribed_before = self.subscriptions
            try:
                await self._listen_all()
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
            with contextlib.suppress(RedisError, OSError):
                async with asyncio.timeout(self.call_timeout_s):
                    await self.topology.refresh()  # a failover or a moved slot is read again

    async def _listen_all(self) -> None:
        """One listener per Redis node, together: the first that fails ends them all."""
        nodes = self.topology.nodes()
        self.round_at = time.monotonic()
        self._groups = [node.name for node in nodes]
        self._subscribed = 0
        tasks = [asyncio.create_task(self._listen(node, node.home, settings=i == 0)) for i, node in enumerate(nodes)]
        tasks.append(asyncio.create_task(self._watch_map({node.name: node.home for node in nodes})))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        raise _Deaf("a listener ended")  # they loop until they fail: not reached

    async def _watch_map(self, listened: dict[str, str]) -> None:
        """Ends the round (to subscribe again) once the map names other primaries or homes."""
        while True:
            await asyncio.sleep(MAP_CHECK_S)
            with contextlib.suppress(RedisError, OSError):
                async with asyncio.timeout(self.call_timeout_s):
                    await self.topology.refresh()
            if {node.name: node.home for node in self.topology.nodes()} != listened:
                raise _Deaf("the cluster's map changed")

    async def _listen(self, node: NodeScripts, home: str, *, settings: bool) -> None:
        client = self.client_of(node)
        channel = self.keys.node_channel(home, self.node_id)
        pubsub = client.pubsub(**_PUSH_HANDLER)
        try:
            await self._subscribe(pubsub, channel, settings)
            self._subscribed += 1
            if self._subscribed == len(self._groups):
                # every connection of this round is subscribed
                self.subscriptions += 1
                if self.subscriptions > 1:
                    self.metrics.subscriber_reconnects.inc()
                    log.info("pub/sub resubscribed")
            await self._loop(node.name, client, pubsub, channel)
        finally:
            self.progress_at = time.monotonic()
            try:
                async with asyncio.timeout(self.call_timeout_s):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            except (RedisError, OSError, RuntimeError):
                log.warning("pub/sub connection did not close cleanly; dropped")

    async def _subscribe(self, pubsub: aioredis.client.PubSub, channel: str, settings: bool) -> None:
        """The node's channel on this Redis node (and the settings channel), confirmed."""
        async with asyncio.timeout(self.call_timeout_s):
            await pubsub.ssubscribe(channel)
            if settings:
                await pubsub.subscribe(self.keys.settings_channel())
            expected, confirmed = (2 if settings else 1), 0
            while confirmed < expected:
                message = await pubsub.get_message(timeout=_POLL_S)
                if message is not None and message.get("type") in ("ssubscribe", "subscribe"):
                    confirmed += 1

    async def _loop(self, name: str, client: aioredis.Redis, pubsub: aioredis.client.PubSub, probe: str) -> None:
        probe_sent_at = -math.inf
        probe_token = b""
        answered = True
        proven = False
        settings_channel = self.keys.settings_channel().encode()
        while True:
            now = self.progress_at = time.monotonic()
            if now - probe_sent_at >= self.probe_interval_s:
                if not answered:
                    raise _Deaf(f"probe not heard back within {self.probe_interval_s}s from {name}")
                probe_token = PROBE_PREFIX + str(now).encode()
                async with asyncio.timeout(self.call_timeout_s):
                    await client.spublish(probe, probe_token)
                probe_sent_at, answered = now, False
            poll = min(_POLL_S, self.probe_interval_s / 2)
            # get_message's own timeout covers only the read: a reconnect or a health
            # check inside it is bounded here.
            async with asyncio.timeout(poll + self.call_timeout_s):
                message = await pubsub.get_message(timeout=poll)
            if message is None:
                continue
            kind = message.get("type")
            if kind == "sunsubscribe":
                # Redis unsubscribes the channels of a slot that moved to another node.
                raise _Deaf(f"a slot moved away from {name}")
            if kind == "message" and message.get("channel") == settings_channel:
                self.on_settings()
                continue
            if kind != "smessage":
                continue
            data = message["data"]
            if data.startswith(PROBE_PREFIX):
                if data == probe_token:
                    answered = True
                    self._heard_from(name)
                    if not proven:
                        # Subscribed for sure now: events published from here on reach us,
                        # and those before are in the streams. (A catch-up started before
                        # the SSUBSCRIBE was in effect could miss one published in between.)
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

    def _heard_from(self, name: str) -> None:
        self._heard[name] = time.monotonic()
        if self.hearing():
            self.metrics.redis_up.set(1)
            self.first_heard.set()

    # ------------------------------------------------------------ watchdog
    async def watch(self, restart_listener: Callable[[str], Awaitable[object]]) -> None:
        """Restart the listener when it stops making progress: the line of defence behind
        the bounds on its calls (a cancellation swallowed inside the client library, a
        loop step that hangs where no bound reaches)."""
        while True:
            await asyncio.sleep(self.probe_interval_s / 2)
            now = time.monotonic()
            stalled = now - self.progress_at
            # Each Redis node has its own connection in a round: one that hangs is hidden
            # from ``progress_at`` by the others, which keep looping. A round that has not
            # heard every probe for longer than any of its steps may take is stuck as well
            # (seen in the cluster drill: after a shard's primary was killed, two subscribes
            # of the next round hung past their timeout while the third connection looped,
            # and the node stayed deaf, out of presence and without sweeping, for good).
            deaf = 0.0 if self.hearing() else now - self.round_at
            if stalled > self.stuck_after_s or deaf > self.stuck_after_s:
                what = f"made no progress for {stalled:.1f}s" if stalled > self.stuck_after_s else \
                    f"subscribed but deaf for {deaf:.1f}s"
                with contextlib.suppress(Exception):
                    await restart_listener(f"listener {what}")
                self.progress_at = self.round_at = time.monotonic()


class _Deaf(Exception):
    """The subscription stopped delivering although no error was raised."""
