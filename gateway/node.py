"""The composition root of one gateway node: builds the object graph and runs its life.

Start: heartbeat, subscribe (and wait until the subscription is proven), then accept
WebSocket connections and serve the HTTP side. Stop (graceful): stop accepting, tell every
client to reconnect elsewhere (close 3000) after its queued frames, wait with a deadline,
cancel the rest, and leave the presence tables so that no gift is offered to a ghost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Sequence

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import NegotiationError
from websockets.typing import Subprotocol

from clearing import Accounts, Clearing, ClearingError, EventLog, KeySchema, Presence
from clearing.rooms import Rooms
from clearing.scenes import Scenes
from gateway.admin_http import AdminApp
from gateway.bans import BanEnforcer
from gateway.config import GatewaySettings
from gateway.connection import page_size
from gateway.hub import Hub
from gateway.metrics import NodeMetrics
from gateway.periodic import NodeLiveness, Sweeper, every
from gateway.requests import RequestHandler
from gateway.rooms import RoomHub
from gateway.session import SessionRunner
from gateway.subscriber import NodeSubscriber
from protocol import MAX_FRAME_BYTES, SUBPROTOCOLS, CloseCode

log = logging.getLogger("notecard.gateway.node")

#: How long start() waits for the first pub/sub probe to come back.
SUBSCRIBE_TIMEOUT_S = 10.0
#: Dead-node reaping runs this many heartbeat periods apart.
REAP_EVERY_HEARTBEATS = 2


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def select_subprotocol(conn: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Our preferred shared subprotocol; none offered means JSON (a browser console)."""
    for name in SUBPROTOCOLS:
        if name in offered:
            return Subprotocol(name)
    if not offered:
        return None
    raise NegotiationError(f"unsupported subprotocol; expected one of {', '.join(SUBPROTOCOLS)}")


class GatewayNode:
    def __init__(self, settings: GatewaySettings, redis: aioredis.Redis, *, token_secret: str,
                 admin_token: str) -> None:
        self.settings = settings
        self.redis = redis
        self.node_id = settings.node_id or default_node_id()
        self.keys = KeySchema()
        rules = settings.rules
        self.metrics = NodeMetrics()
        self.clearing = Clearing(redis, rules, keys=self.keys, durability=settings.durability)
        self.accounts = Accounts(redis, rules, keys=self.keys)
        self.presence = Presence(redis, rules, keys=self.keys)
        self.events = EventLog(redis, rules, keys=self.keys)
        self.hub = Hub(self.events, self.metrics, page=page_size(settings.send_queue_max))
        self.bans = BanEnforcer(self.hub, self.accounts)
        self.scenes = Scenes(redis, rules, keys=self.keys)
        self.rooms = RoomHub(Rooms(redis, rules, keys=self.keys), self.node_id)
        self.requests = RequestHandler(self.clearing, rules, self.metrics, self.scenes, self.rooms)
        self.sessions = SessionRunner(
            self.node_id, settings, token_secret, self.hub, self.requests, self.clearing, self.presence,
            self.events, self.metrics,
        )
        self.subscriber = NodeSubscriber(
            redis, self.keys.node_channel(self.node_id), self.hub.publish_received, self._resubscribed,
            self.metrics, settings.subscriber_probe_s, on_control=self.bans.on_control,
        )
        self.admin = AdminApp(
            node_id=self.node_id, admin_token=admin_token, redis=redis, clearing=self.clearing,
            accounts=self.accounts, rules=rules, keys=self.keys, metrics=self.metrics, ready=self.is_ready,
            scenes=self.scenes,
        )
        self._server: Server | None = None
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    # ------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        assert self._server is not None, "node not started"
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def admin_port(self) -> int:
        assert self._http is not None, "node not started"
        addresses = self._http.addresses
        port: int = addresses[0][1]
        return port

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.settings.admin_host}:{self.admin_port}"

    # ------------------------------------------------------------ life
    async def start(self) -> None:
        s = self.settings
        liveness = NodeLiveness(self.presence, self.node_id, self.hub, self.rooms)
        await self._first_beat(liveness)
        self._spawn(self.subscriber.run(), "subscriber")
        try:
            await asyncio.wait_for(self.subscriber.healthy.wait(), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError:
            await self.stop()
            raise RuntimeError("could not subscribe to the node channel on Redis") from None
        self._spawn(every(s.node_heartbeat_s, liveness.beat, "heartbeat"), "heartbeat")
        self._spawn(every(s.node_heartbeat_s * REAP_EVERY_HEARTBEATS, liveness.reap, "reaper"), "reaper")
        self._spawn(every(s.sweep_interval_s, Sweeper(self.clearing, self.metrics).step, "sweeper"), "sweeper")
        self._spawn(every(s.room_push_s, self.rooms.push_step, "room pushes"), "rooms")
        self._server = await serve(
            self.sessions,
            s.host,
            s.port,
            subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS],
            select_subprotocol=select_subprotocol,
            compression=None,  # ~50 KiB less per connection; frames are small and mostly binary
            max_size=MAX_FRAME_BYTES,
            max_queue=16,
            write_limit=s.write_limit,
            ping_interval=s.heartbeat_s,
            ping_timeout=s.pong_timeout_s,
            close_timeout=2,
            reuse_port=s.workers > 1,
            server_header=None,
        )
        self._http = web.AppRunner(self.admin.build(), access_log=None, handle_signals=False)
        await self._http.setup()
        await web.TCPSite(self._http, s.admin_host, s.admin_port, reuse_port=s.workers > 1).start()
        log.info("node started", extra={"ws": self.url, "http": self.admin_url})

    async def _first_beat(self, liveness: NodeLiveness) -> None:
        """Register the node, waiting for Redis if it is not reachable yet (a node started
        during a failover, or before Redis in a compose file) instead of dying at once."""
        deadline = asyncio.get_running_loop().time() + SUBSCRIBE_TIMEOUT_S
        delay = 0.05
        while True:
            try:
                # A restarted node with a fixed NODE_ID finds its previous life's presence
                # entries: those connections are gone, so they go before the first beat.
                await self.presence.leave(self.node_id)
                await liveness.beat()
                return
            except ClearingError:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise RuntimeError(f"Redis unreachable for {SUBSCRIBE_TIMEOUT_S}s at start") from None
                log.warning("redis unreachable at start; retrying")
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    async def _resubscribed(self) -> None:
        """The subscriber was down: deliver what it missed, and the bans it missed too."""
        await self.hub.catch_up_everyone()
        await self.bans.recheck()

    def _spawn(self, coro: object, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"{self.node_id}:{name}"))  # type: ignore[arg-type]

    async def is_ready(self) -> bool:
        if self.stopping or not self.subscriber.healthy.is_set():
            return False
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def stop(self) -> None:
        """Graceful shutdown within ``settings.shutdown_grace_s``."""
        if self.stopping:
            return
        self.stopping = True
        grace = self.settings.shutdown_grace_s
        if self._server is not None:
            self._server.close(close_connections=False)
            conns = self.hub.all_connections()
            await asyncio.gather(*(c.drain_and_close(CloseCode.SHUTDOWN, "server shutting down; reconnect",
                                                     grace / 2) for c in conns))
            try:
                await asyncio.wait_for(self._server.wait_closed(), grace)
            except TimeoutError:
                log.warning("connections did not close within the grace period; dropping them")
                self._server.close(close_connections=True)
        for task in self._tasks:
            task.cancel()
        _, stuck = await asyncio.wait(self._tasks, timeout=grace) if self._tasks else (set(), set())
        if stuck:
            log.error("background tasks did not stop", extra={"tasks": [t.get_name() for t in stuck]})
        await self.hub.close()
        with contextlib.suppress(ClearingError):
            await self.presence.leave(self.node_id)
        if self._http is not None:
            await self._http.cleanup()
        log.info("node stopped")

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
