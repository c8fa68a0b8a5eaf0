"""``notecard webhooks``: the gift events of the feed, POSTed to the platform's URLs.

A member of its own consumer group (default ``webhooks``) over the ledger streams, like
``notecard feed``. Each gift event (clearing/ledger.py's :class:`GiftEvent`) goes to every
URL as the feed's JSON line, with the headers

    Notecard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>
    Idempotency-Key: <the event's id>

A 2xx answer delivers it; anything else (another status, a refused connection, a timeout)
is tried again after an exponential backoff with jitter, up to ``WEBHOOK_ATTEMPTS`` times;
then the event goes to the dead-letter list (gateway/webhook_letters.py, shown by
``GET /admin/webhooks/dead``). The stream entry is acknowledged once every URL has taken
or dead-lettered its events, so a crash before that delivers them again, with the same
idempotency key: at least once. docs/ledger.md "Webhooks" shows how a receiver checks.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import os
import random
import socket
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis import exceptions as rx

from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.ledger import GiftEvent, StreamConsumer
from clearing.topology import AnyRedis
from gateway.webhook_letters import DeadLetter, DeadLetters
from notecard.feed import IDLE_POLL_S, event_json, settings_with_redis

SIGNATURE_HEADER = "Notecard-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: The latency buckets, seconds: a receiver on the same network answers in milliseconds;
#: a delivery after retries takes up to the whole backoff.
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0)


def receiver_label(url: str) -> str:
    """A URL as a metric label: scheme, host, port and path; no credentials or query
    string (either may carry a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


class WebhookMetrics:
    """What ``notecard webhooks --metrics-port`` serves (docs/operations.md "Webhooks"), per
    receiver URL: deliveries, failed attempts by reason, dead letters, and the time an
    attempt and a whole delivery (retries included) take."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.delivered = Counter("notecard_webhook_delivered", "gift events a receiver took (a 2xx answer)",
                                 ["receiver"], registry=self.registry)
        self.failed = Counter("notecard_webhook_failed_attempts",
                              "delivery attempts that failed, by reason: status (a non-2xx answer), timeout, "
                              "connection (refused, reset, DNS)", ["receiver", "reason"], registry=self.registry)
        self.dead = Counter("notecard_webhook_dead_lettered",
                            "gift events that failed every attempt and went to the dead-letter list",
                            ["receiver"], registry=self.registry)
        self.attempt_seconds = Histogram("notecard_webhook_attempt_seconds",
                                         "one POST, from sending to the answer (or the failure)", ["receiver"],
                                         buckets=ATTEMPT_BUCKETS, registry=self.registry)
        self.delivery_seconds = Histogram("notecard_webhook_delivery_seconds",
                                          "from an event's first attempt to its delivery, retries and backoff "
                                          "included", ["receiver"], buckets=DELIVERY_BUCKETS,
                                          registry=self.registry)


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Notecard-Signature`` header of ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """How hard one event is pushed to one URL (the WEBHOOK_* settings)."""

    attempts: int = 6
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 10.0

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure: doubling, capped, and between half of it
        and all of it at random, so that many senders do not retry in step."""
        full = min(self.backoff_max_s, self.backoff_s * 2.0 ** (failures - 1))
        return float(full * random.uniform(0.5, 1.0))


class Sender:
    """Delivers events to URLs, signed, with retries; what fails every attempt goes to
    ``dead``."""

    def __init__(self, session: aiohttp.ClientSession, secret: bytes, dead: DeadLetters, policy: Policy,
                 metrics: WebhookMetrics | None = None) -> None:
        self._session = session
        self._secret = secret
        self._dead = dead
        self.policy = policy
        self.metrics = metrics or WebhookMetrics()
        self.delivered = 0
        self.dead_lettered = 0

    async def post(self, url: str, event: dict[str, object]) -> str | None:
        """One attempt; None when delivered, else what went wrong."""
        body = orjson.dumps(event)
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: signature(self._secret, int(time.time()), body),
                   IDEMPOTENCY_HEADER: str(event["id"])}
        label = receiver_label(url)
        started = time.perf_counter()
        try:
            timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
            async with self._session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                await resp.read()
                failed, reason = (None, "") if 200 <= resp.status < 300 else (f"HTTP {resp.status}", "status")
        except TimeoutError as exc:
            failed, reason = f"{type(exc).__name__}: {exc}"[:300], "timeout"
        except aiohttp.ClientError as exc:
            failed, reason = f"{type(exc).__name__}: {exc}"[:300], "connection"
        self.metrics.attempt_seconds.labels(label).observe(time.perf_counter() - started)
        if failed is not None:
            self.metrics.failed.labels(label, reason).inc()
        return failed

    async def deliver(self, url: str, event: dict[str, object], *, replacing: bytes | None = None) -> bool:
        """Every attempt until one succeeds; False when the event went to the dead letters."""
        error = ""
        label = receiver_label(url)
        started = time.perf_counter()
        for attempt in range(1, self.policy.attempts + 1):
            failed = await self.post(url, event)
            if failed is None:
                self.delivered += 1
                self.metrics.delivered.labels(label).inc()
                self.metrics.delivery_seconds.labels(label).observe(time.perf_counter() - started)
                if replacing is not None:
                    await self._dead.done(replacing)
                return True
            error = failed
            if attempt < self.policy.attempts:
                await asyncio.sleep(self.policy.delay(attempt))
        letter = DeadLetter(event, url, self.policy.attempts, error, int(time.time() * 1000))
        await self._dead.add(letter, replacing=replacing)
        self.dead_lettered += 1
        self.metrics.dead.labels(label).inc()
        print(f"notecard webhooks: event {event['id']} to {url} failed {self.policy.attempts} times ({error}); "
              "it is in the dead-letter list", file=sys.stderr)
        return False

    async def retry_letters(self) -> int:
        """Deliver what an operator sent back (oldest first); how many were handled."""
        handled = 0
        while (raw := await self._dead.next_retry()) is not None:
            try:
                letter = DeadLetter.loads(raw)
            except ValueError as exc:
                print(f"notecard webhooks: dropped {exc}", file=sys.stderr)
                await self._dead.done(raw)
                continue
            await self.deliver(letter.url, letter.event, replacing=raw)
            handled += 1
        return handled


async def run_webhooks(redis: AnyRedis, urls: Sequence[str], secret: bytes, *, group: str, consumer: str,
                       keys: KeySchema = DEFAULT_KEYS, policy: Policy | None = None, dead_max: int = 10_000,
                       once: bool = False, new_only: bool = False, metrics: WebhookMetrics | None = None) -> Sender:
    """Deliver gift events until cancelled (or, with ``once``, until nothing is left)."""
    member = StreamConsumer(redis, group, consumer, keys, start="$" if new_only else "0")
    await member.streams()
    async with aiohttp.ClientSession() as session:
        sender = Sender(session, secret, DeadLetters(redis, keys, keep=dead_max), policy or Policy(), metrics)
        while True:
            await sender.retry_letters()
            batch = await member.read()
            for record in batch.records:
                if isinstance(record, GiftEvent):
                    event = event_json(record)
                    # every URL in parallel, so one slow receiver does not hold back the others
                    await asyncio.gather(*(sender.deliver(url, event) for url in urls))
            for problem in batch.bad:
                print(f"notecard webhooks: skipped an unreadable entry: {problem}", file=sys.stderr)
            if batch.trimmed:
                print(f"notecard webhooks: {batch.trimmed} entries were trimmed before this group read them "
                      "(raise NOTECARD_LEDGER_MAXLEN or keep the webhooks running)", file=sys.stderr)
            await member.ack(batch)
            if not batch.ids:
                if once:
                    return sender
                await asyncio.sleep(IDLE_POLL_S)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notecard webhooks", description="POST every gift event, signed, to the given URLs (at least once; "
        "docs/ledger.md 'Webhooks'); Redis from NOTECARD_REDIS_URL / NOTECARD_REDIS_CLUSTER, the retry "
        "settings from NOTECARD_WEBHOOK_*.")
    parser.add_argument("--url", action="append", default=[],
                        help="a receiver (repeat for several; default NOTECARD_WEBHOOK_URLS)")
    parser.add_argument("--secret-env", metavar="VAR",
                        help="the environment variable holding the signing secret (default NOTECARD_WEBHOOK_SECRET)")
    parser.add_argument("--group", default="webhooks", help="consumer group (default: webhooks)")
    parser.add_argument("--consumer", default=socket.gethostname(),
                        help="this member's name in the group; keep it across restarts (default: the host name)")
    parser.add_argument("--once", action="store_true", help="stop when nothing is left to deliver")
    parser.add_argument("--new-only", action="store_true",
                        help="a new group starts after the newest entry instead of the oldest retained one")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="serve Prometheus metrics (deliveries, failed attempts, dead letters, latency) on this "
                             "port (0: off)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="the metrics' address (default 127.0.0.1)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from gateway.auth import MIN_SECRET_BYTES
    from gateway.redis_client import close_store, connect_store

    settings = settings_with_redis("webhooks")
    if settings is None:
        return 2
    urls = args.url or list(settings.webhook_urls)
    if not urls:
        print("notecard webhooks: give a receiver: --url URL or NOTECARD_WEBHOOK_URLS", file=sys.stderr)
        return 2
    if bad := [u for u in urls if not u.startswith(("http://", "https://"))]:
        print(f"notecard webhooks: not an http(s) URL: {bad[0]!r}", file=sys.stderr)
        return 2
    variable = args.secret_env or "NOTECARD_WEBHOOK_SECRET"
    secret = os.environ.get(variable, "") if args.secret_env else (settings.webhook_secret or "")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        print(f"notecard webhooks: set {variable} to the signing secret, {MIN_SECRET_BYTES} bytes or more",
              file=sys.stderr)
        return 2
    policy = Policy(settings.webhook_attempts, settings.webhook_backoff_s, settings.webhook_backoff_max_s,
                    settings.webhook_timeout_s)

    metrics = WebhookMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)

    async def deliver() -> None:
        topology = await connect_store(settings)
        try:
            await run_webhooks(topology.general, urls, secret.encode(), group=args.group, consumer=args.consumer,
                               policy=policy, dead_max=settings.webhook_dead_max, once=args.once,
                               new_only=args.new_only, metrics=metrics)
        finally:
            await close_store(topology)

    try:
        asyncio.run(deliver())
    except KeyboardInterrupt:
        return 0
    except (rx.RedisError, OSError) as exc:
        # what was not yet acknowledged is delivered again by the next run
        print(f"notecard webhooks: Redis failed: {exc}; run it again to resume", file=sys.stderr)
        return 1
    return 0
