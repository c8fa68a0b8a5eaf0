"""The composition root of one gateway node: builds the object graph and runs its life.

Start: heartbeat, subscribe (and wait until the subscription is proven), then accept
WebSocket connections and serve the HTTP side. Background work (subscriber and its
watchdog, heartbeat, reaper, sweeper, room pushes) runs under a supervisor that logs and
restarts a task that ends. Stop (graceful): stop accepting, tell every client to reconnect
elsewhere (close 3000) after its queued frames, wait with a deadline, cancel the rest, and
leave the presence tables so that no gift is offered to a ghost.
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
from clearing.business import BusinessAccounts
from clearing.campaigns import CampaignRunner, Campaigns
from clearing.component import single_topology
from clearing.purchases import Purchases
from clearing.rates import RateLimit, UserRates
from clearing.rooms import Rooms
from clearing.scenes import Scenes
from clearing.settings import SettingsCache
from clearing.topology import Topology
from gateway.admin_http import AdminApp, WebPages
from gateway.admission import AddressGate
from gateway.auth import check_secret
from gateway.bans import BanEnforcer
from gateway.config import GatewaySettings
from gateway.connection import page_size
from gateway.hub import Hub
from gateway.ledger_gauges import REFRESH_S as LEDGER_GAUGES_S
from gateway.ledger_gauges import LedgerGauges
from gateway.metrics import NodeMetrics
from gateway.node_stats import INTERVAL_S as NODE_STATS_S
from gateway.node_stats import NodeStats
from gateway.payments_http import PaymentsHttp, parse_secrets
from gateway.periodic import NodeLiveness, Sweeper, every
from gateway.replica_check import CHECK_INTERVAL_S, ReplicaCheck
from gateway.requests import RequestHandler
from gateway.rooms import RoomHub
from gateway.session import SessionRunner
from gateway.subscriber import NodeSubscriber
from gateway.supervisor import TaskSupervisor
from gateway.tokens import TokenVerifier
from protocol import MAX_FRAME_BYTES, SUBPROTOCOLS, CloseCode
from risk.appeals import Appeals
from risk.signals import SignalLog

log = logging.getLogger("notecard.gateway.node")

#: How long start() waits for the first pub/sub probe to come back.
SUBSCRIBE_TIMEOUT_S = 10.0
#: Retries of an unreachable Redis at start back off up to this period.
REDIS_RETRY_MAX_S = 2.0
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
    def __init__(self, settings: GatewaySettings, store: aioredis.Redis | Topology, *, token_secret: str | None,
                 admin_token: str) -> None:
        """``store``: one Redis (a client of it), or a cluster's topology (gateway.connect_store
        builds either from the settings). The caller owns it and closes it after stop().
        ``token_secret``: the HS256 secret; None when tokens are checked against the JWKS
        of settings.jwks_url alone (the node then holds no key that could sign a token)."""
        if token_secret is not None:
            check_secret(token_secret, "NOTECARD_TOKEN_SECRET")
        elif not settings.jwks_url:
            raise ValueError("no way to verify client tokens: give NOTECARD_TOKEN_SECRET or NOTECARD_JWKS_URL")
        check_secret(admin_token, "NOTECARD_ADMIN_TOKEN")
        self.settings = settings
        self.node_id = settings.node_id or default_node_id()
        self.keys = keys = KeySchema()
        self.topology = topo = store if isinstance(store, Topology) else single_topology(store, keys,
                                                                                          settings.durability)
        #: The client for everything but scripts (routed by key on a cluster).
        self.redis = topo.general
        rules = settings.rules
        self.metrics = NodeMetrics()
        #: Every service reads the operators' settings through one cache (clearing/settings.py).
        self.settings_cache = cache = SettingsCache(self.redis, keys, max_age_s=settings.settings_refresh_s)
        user_rate = RateLimit(settings.user_rate_per_s, settings.user_rate_burst)
        self.presence = Presence(topo, rules, keys, settings=cache)
        # The scripts are told which nodes are dead; the registry is read once a heartbeat.
        self.presence.registry_max_age_s = settings.node_heartbeat_s
        self.clearing = Clearing(topo, rules, keys, settings=cache, user_rate=user_rate,
                                 dead_nodes=self.presence.dead_nodes, saga_ms=round(settings.saga_step_s * 1000))
        self.accounts = Accounts(topo, rules, keys, settings=cache)
        self.events = EventLog(topo, rules, keys, settings=cache)
        self.hub = Hub(self.events, self.metrics, page=page_size(settings.send_queue_max))
        self.bans = BanEnforcer(self.hub, self.accounts)
        self.scenes = Scenes(topo, rules, keys, settings=cache)
        self.rooms = RoomHub(Rooms(topo, rules, keys, settings=cache), self.node_id, settings.max_rooms_per_connection)
        #: The risk engine's signals (docs/risk.md); None when RISK_ENGINE is off.
        self.signals = SignalLog(self.redis, keys) if settings.risk_engine else None
        self.metrics.watch_signals(self.signals)
        self.appeals = Appeals(self.redis, keys)
        self.requests = RequestHandler(self.clearing, rules, self.metrics, self.scenes, self.rooms,
                                       sender_of=self.hub.sender_of, signals=self.signals, appeals=self.appeals)
        self.tokens = TokenVerifier.from_settings(settings, token_secret, self.metrics.tokens)
        self.sessions = SessionRunner(
            self.node_id, settings, self.tokens, self.hub, self.requests, self.clearing, self.presence,
            self.events, self.metrics,
            UserRates(topo, rules, user_rate, keys=keys), signals=self.signals,
        )
        self.subscriber = NodeSubscriber(
            topo, keys, self.node_id, self.hub.publish_received, self._missed, self.metrics,
            settings.subscriber_probe_s, settings.redis_timeout_s, on_control=self.bans.on_control,
            on_settings=cache.invalidate,
        )
        self.liveness = NodeLiveness(self.presence, self.node_id, self.hub, self.rooms,
                                     hearing=self.subscriber.hearing, metrics=self.metrics)
        self.supervisor = TaskSupervisor(self.node_id, self.metrics, self._fail)
        self.replica_check = ReplicaCheck(topo, settings, self.metrics)
        self.business = BusinessAccounts(self.redis, keys)
        self.campaigns = Campaigns(self.clearing, self.business, min_followers=settings.brand_min_followers)
        self.campaign_runner = CampaignRunner(self.campaigns, self.node_id, rate_per_s=settings.campaign_rate_per_s)
        self.metrics.watch_campaigns(self.campaign_runner)
        self.admin = AdminApp(
            node_id=self.node_id, admin_token=admin_token, redis=self.redis, clearing=self.clearing,
            accounts=self.accounts, rules=rules, keys=self.keys, metrics=self.metrics, ready=self.is_ready,
            scenes=self.scenes, not_ready_reasons=self._not_ready_reasons, campaigns=self.campaigns,
            order_replay_s=settings.order_replay_s,
            pages=WebPages(lambda: self.port, settings.public_ws_urls, settings.dev and token_secret is not None,
                           token_secret or "", settings.claim_rules),
            postgres_url=settings.postgres_url,
            payments=PaymentsHttp(Purchases(topo, rules, self.keys, settings=cache),
                                  parse_secrets(settings.payment_secrets), settings.payment_window_s),
        )
        self.node_stats = NodeStats(self.redis, self.keys, self.node_id, self.metrics)
        self.metrics.watch_send_queues(lambda: (c.queued for c in self.hub.all_connections()))
        self.sweeper = Sweeper(self.clearing, self.presence, self.node_id, self.metrics)
        self.ledger_gauges = LedgerGauges(self.clearing, self.sweeper, self.metrics)
        #: Why the node is not serving yet, while it waits for Redis at start.
        self.waiting_for: str | None = None
        self._server: Server | None = None
        self._http: web.AppRunner | None = None
        self._probe_http: web.AppRunner | None = None
        self.stopping = False
        #: Why the node cannot go on (a background task it could not restart), if so.
        self.failure: str | None = None
        self._failed = asyncio.Event()

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
    def probe_port(self) -> int | None:
        """The probe/metrics listener's port, when there is one (NOTECARD_PROBE_PORT)."""
        if self._probe_http is None:
            return None
        port: int = self._probe_http.addresses[0][1]
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
        liveness = self.liveness
        # The probes answer from the start: /healthz while the node waits for Redis (alive,
        # not ready), /readyz with the reason.
        await self._start_http()
        try:
            await self._first_beat(liveness)
        except BaseException:
            await self.stop()
            raise
        await self.replica_check.step()  # its findings are in the log before the node serves
        await self.tokens.start()
        jobs = self.supervisor
        jobs.start("subscriber", self.subscriber.listen)
        try:
            await asyncio.wait_for(self.subscriber.first_heard.wait(), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError:
            await self.stop()
            raise RuntimeError("could not subscribe to the node channel on Redis") from None
        jobs.start("watchdog", lambda: self.subscriber.watch(self._restart_listener))
        jobs.start("heartbeat", lambda: every(s.node_heartbeat_s, liveness.beat, "heartbeat"))
        jobs.start("reaper", lambda: every(s.node_heartbeat_s * REAP_EVERY_HEARTBEATS, liveness.reap, "reaper"))
        sweeper = self.sweeper
        jobs.start("sweeper", lambda: every(s.sweep_interval_s, sweeper.step, "sweeper"))
        jobs.start("campaigns", lambda: every(s.campaign_poll_s, self.campaign_runner.step, "campaigns"))
        jobs.start("rooms", lambda: every(s.room_push_s, self.rooms.push_step, "room pushes"))
        jobs.start("replica-check", lambda: every(CHECK_INTERVAL_S, self.replica_check.step, "replica check"))
        jobs.start("loop-lag", self.metrics.watch_loop_lag)
        jobs.start("ledger-gauges", lambda: every(LEDGER_GAUGES_S, self.ledger_gauges.step, "ledger gauges"))
        jobs.start("node-stats", lambda: every(NODE_STATS_S, self.node_stats.step, "node stats"))
        if self.signals is not None:
            jobs.start("risk-signals", self.signals.run)
        self._server = await serve(
            AddressGate(self.sessions, s.max_connections_per_ip, s.trusted_proxies, self.metrics),
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
        log.info("node started", extra={"ws": self.url, "http": self.admin_url, "probes": self.probe_port})

    async def _start_http(self) -> None:
        s = self.settings
        self._http = web.AppRunner(self.admin.build(), access_log=None, handle_signals=False)
        await self._http.setup()
        await web.TCPSite(self._http, s.admin_host, s.admin_port, reuse_port=s.workers > 1).start()
        if s.probe_port is not None:
            self._probe_http = web.AppRunner(self.admin.build_probes(), access_log=None, handle_signals=False)
            await self._probe_http.setup()
            await web.TCPSite(self._probe_http, s.probe_host, s.probe_port, reuse_port=s.workers > 1).start()

    async def _first_beat(self, liveness: NodeLiveness) -> None:
        """Register the node, waiting for Redis if it is not reachable yet (a node started
        during a failover, or before Redis in a compose file) instead of dying at once;
        up to ``redis_wait_s`` (0: for ever). Each failure names the address and the cause."""
        loop = asyncio.get_running_loop()
        wait_s = self.settings.redis_wait_s
        deadline = loop.time() + wait_s if wait_s else None
        where = self.settings.redis_address
        delay = 0.05
        while True:
            try:
                await liveness.register()
                self.waiting_for = None
                return
            except ClearingError as exc:
                cause = str(exc).removeprefix("redis unavailable: ")
                self.waiting_for = f"waiting for Redis at {where}: {cause}"
                if deadline is not None and loop.time() + delay > deadline:
                    raise RuntimeError(f"Redis at {where} unreachable for {wait_s:g}s "
                                       f"(NOTECARD_REDIS_WAIT_S): {cause}") from None
                log.warning("redis unreachable at start; retrying", extra={"redis": where, "cause": cause})
                await asyncio.sleep(delay)
                delay = min(REDIS_RETRY_MAX_S, delay * 2)

    def _not_ready_reasons(self) -> list[str]:
        waiting = [self.waiting_for] if self.waiting_for else []
        return waiting + self.replica_check.reasons

    async def _restart_listener(self, reason: str) -> None:
        await self.supervisor.restart("subscriber", reason, self.settings.redis_timeout_s)

    def _fail(self, reason: str) -> None:
        """A background task is beyond repair: stop, so that a fresh process takes over."""
        log.critical("node cannot go on; stopping", extra={"reason": reason})
        self.failure = reason
        self._failed.set()

    def _missed(self) -> None:
        """The subscriber may have missed messages: deliver what it missed from the streams,
        and the bans it missed too (their flags are in Redis)."""
        self.hub.catch_up_everyone_soon()
        self.bans.recheck_soon()

    async def is_ready(self) -> bool:
        """Ready: not stopping, a pub/sub probe came back recently, and Redis answers."""
        if (self.stopping or self.failure is not None or not self.subscriber.hearing()
                or not self.replica_check.ready):
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
        stuck = await self.supervisor.stop(grace)
        if stuck:
            log.error("background tasks did not stop", extra={"tasks": stuck})
        await self.hub.close()
        await self.bans.close()
        if self.signals is not None:
            with contextlib.suppress(ClearingError):
                await self.signals.flush()
        with contextlib.suppress(ClearingError):
            await self.presence.leave(self.node_id)
        with contextlib.suppress(ClearingError):
            # another node's runner takes a campaign this one was issuing at once, not after
            # the lease (its batch in flight was cancelled: it is issued again, nobody twice)
            await self.campaign_runner.release()
        for runner in (self._http, self._probe_http):
            if runner is not None:
                await runner.cleanup()
        log.info("node stopped")

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises :class:`NodeFailed` (after stopping) when
        the node could not keep its background work running."""
        await self.start()
        try:
            stopped, failed = asyncio.create_task(stop.wait()), asyncio.create_task(self._failed.wait())
            try:
                await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                failed.cancel()
        finally:
            await self.stop()
        if self.failure is not None:
            raise NodeFailed(self.failure)


class NodeFailed(RuntimeError):
    """The node stopped because it could not keep itself healthy; its process should exit
    with an error so that whatever supervises it starts a new one."""
