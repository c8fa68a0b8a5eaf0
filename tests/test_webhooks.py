"""``notecard webhooks`` against a real Redis and a real HTTP receiver on a loopback port:
events arrive signed (checked with docs/ledger.md's own receiver code), a failing receiver
gets the event again per failure under the same idempotency key, an event no attempt
delivers is a dead letter in the admin API and goes out again when sent back, and a
process killed before it acknowledged delivers again after a restart."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from clearing.keys import DEFAULT_KEYS
from clearing.testing import World
from clearing.topology import Topology
from gateway import GatewayNode
from gateway.webhook_letters import DeadLetter, DeadLetters
from notecard.local_redis import LocalRedis, free_port
from notecard.webhooks import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    Policy,
    WebhookMetrics,
    receiver_label,
    run_webhooks,
)
from tests.gateway_fixtures import ADMIN_TOKEN, NodeFactory, eventually

SECRET = b"s" * 32
FAST = Policy(attempts=4, backoff_s=0.01, backoff_max_s=0.05, timeout_s=5)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "ledger.md"


def documented_verify() -> Callable[[bytes, str, bytes], bool]:
    """The receiver's check exactly as docs/ledger.md shows it."""
    text = DOCS.read_text()
    code = re.search(r"<!-- webhook-verify -->\n```python\n(.*?)```", text, re.S)
    assert code is not None, "docs/ledger.md lost its verify snippet"
    scope: dict[str, Any] = {}
    exec(compile(code.group(1), str(DOCS), "exec"), scope)
    verify: Callable[[bytes, str, bytes], bool] = scope["verify"]
    return verify


class Receiver:
    """An aiohttp server that records every request; ``answer`` picks each status and
    ``hold``, when set, keeps the first request waiting (a receiver that is slow to answer)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answer: Callable[[int], int] = lambda n: 200
        self.hold: asyncio.Event | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        if self.hold is not None and len(self.requests) == 1:
            await self.hold.wait()
        return web.Response(status=self.answer(len(self.requests)))

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for _, body in self.requests]

    def keys(self) -> list[str]:
        return [headers[IDEMPOTENCY_HEADER] for headers, _ in self.requests]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    recv.url = f"http://127.0.0.1:{port}/hook"
    yield recv
    if recv.hold is not None:
        recv.hold.set()
    await runner.cleanup()


async def gifts(redis: aioredis.Redis | Topology) -> World:
    """g1 sent and accepted, g2 sent and declined: four events."""
    w = await World.build(redis)
    for user in ("ann", "bob"):
        await w.user(user, cards=5)
    await w.befriend("ann", "bob")
    await w.clearing.reserve("g1", "ann", "bob", "note", 2)
    await w.clearing.accept("g1", "bob")
    await w.clearing.reserve("g2", "ann", "bob", "note", 1)
    await w.clearing.decline("g2", "bob")
    return w


EXPECTED = [("sent", "g1"), ("accepted", "g1"), ("sent", "g2"), ("declined", "g2")]


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_events_arrive_signed_once_each_and_the_documented_check_accepts_them(
        store: Topology, receiver: Receiver) -> None:
    redis = store.general
    single = len(store.nodes()) == 1
    w = await gifts(store)
    verify = documented_verify()
    sender = await run_webhooks(redis, [receiver.url], SECRET, group="webhooks", consumer="t", policy=FAST,
                                once=True)
    got = [(e["event"], e["gift_id"]) for e in receiver.events()]
    # one Redis keeps commit order; across shards only each stream's order holds
    assert got == EXPECTED if single else sorted(got) == sorted(EXPECTED)
    assert sender.delivered == 4 and sender.dead_lettered == 0
    for headers, body in receiver.requests:
        assert headers["Content-Type"] == "application/json"
        assert headers[IDEMPOTENCY_HEADER] == orjson.loads(body)["id"]
        assert verify(SECRET, headers[SIGNATURE_HEADER], body)
        assert not verify(b"another secret of thirty-two bytes", headers[SIGNATURE_HEADER], body)
        assert not verify(SECRET, headers[SIGNATURE_HEADER], body.replace(b'"qty":', b'"qty":9'))
    assert len(set(receiver.keys())) == 4
    # a replayed request, signed long ago, is refused
    stale = f"t={int(time.time()) - 3600},v1=" + receiver.requests[0][0][SIGNATURE_HEADER].split("v1=")[1]
    assert not verify(SECRET, stale, receiver.requests[0][1])

    # acknowledged: a second run of the group sends nothing again
    await run_webhooks(redis, [receiver.url], SECRET, group="webhooks", consumer="t", policy=FAST, once=True)
    assert len(receiver.requests) == 4

    # dead letters and their retry on this topology too (the lists share the cfg slot)
    receiver.answer = lambda n: 500
    await w.clearing.reserve("g3", "ann", "bob", "note", 1)
    sender = await run_webhooks(redis, [receiver.url], SECRET, group="webhooks", consumer="t", policy=FAST,
                                once=True)
    assert sender.dead_lettered == 1
    letters = DeadLetters(redis, DEFAULT_KEYS)
    listed, total = await letters.newest(10)
    assert total == 1 and listed[0]["event"]["gift_id"] == "g3"
    assert await letters.retry_all() == 1
    receiver.answer = lambda n: 200
    receiver.requests.clear()
    await run_webhooks(redis, [receiver.url], SECRET, group="webhooks", consumer="t", policy=FAST, once=True)
    assert [(e["event"], e["gift_id"]) for e in receiver.events()] == [("sent", "g3")]
    assert receiver.keys() == [listed[0]["event"]["id"]]
    assert await letters.newest(10) == ([], 0) and await letters.next_retry() is None
    report = await w.check()
    assert report.ok, report.violations


async def test_a_receiver_failing_n_times_gets_the_event_once_more_per_failure_with_the_same_key(
        redis: aioredis.Redis, receiver: Receiver) -> None:
    w = await World.build(redis)
    for user in ("ann", "bob"):
        await w.user(user, cards=5)
    await w.befriend("ann", "bob")
    await w.clearing.reserve("g1", "ann", "bob", "note", 1)
    failures = 3
    receiver.answer = lambda n: 503 if n <= failures else 204
    sender = await run_webhooks(redis, [receiver.url], SECRET, group="webhooks", consumer="t", policy=FAST,
                                once=True)
    assert len(receiver.requests) == failures + 1
    assert len(set(receiver.keys())) == 1
    assert len({body for _, body in receiver.requests}) == 1  # the same event every time
    assert (sender.delivered, sender.dead_lettered) == (1, 0)
    assert await redis.llen(DEFAULT_KEYS.webhooks_dead()) == 0
    report = await w.check()
    assert report.ok, report.violations


async def admin_call(node: GatewayNode, method: str, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as session, session.request(method, node.admin_url + path,
                                                                   headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_an_event_no_attempt_delivers_is_a_dead_letter_in_the_admin_api_until_sent_back(
        node_factory: NodeFactory, redis: aioredis.Redis, receiver: Receiver) -> None:
    w = await gifts(redis)  # before the node: offers need no online recipient yet
    node = await node_factory()
    receiver.answer = lambda n: 500
    sender = await run_webhooks(redis, [receiver.url], SECRET, group="webhooks", consumer="t", policy=FAST,
                                once=True)
    assert len(receiver.requests) == 4 * FAST.attempts
    assert (sender.delivered, sender.dead_lettered) == (0, 4)

    status, listed = await admin_call(node, "GET", "/admin/webhooks/dead")
    assert status == 200 and listed["total"] == 4
    dead = [(d["event"]["event"], d["event"]["gift_id"]) for d in listed["dead"]]
    assert dead == EXPECTED[::-1]  # newest first
    assert {(d["url"], d["attempts"], d["error"]) for d in listed["dead"]} == {(receiver.url, 4, "HTTP 500")}
    status, two = await admin_call(node, "GET", "/admin/webhooks/dead?limit=2")
    assert status == 200 and two["dead"] == listed["dead"][:2] and two["total"] == 4
    status, bad = await admin_call(node, "GET", "/admin/webhooks/dead?limit=0")
    assert (status, bad["error"]) == (400, "BAD_REQUEST")

    # sent back: delivered again, once each, under the keys of the first attempts
    first_keys = receiver.keys()
    receiver.answer = lambda n: 200
    receiver.requests.clear()
    assert await admin_call(node, "POST", "/admin/webhooks/dead/retry") == (200, {"moved": 4})
    assert await admin_call(node, "GET", "/admin/webhooks/dead") == (200, {"dead": [], "total": 0})
    await run_webhooks(redis, [receiver.url], SECRET, group="webhooks", consumer="t", policy=FAST, once=True)
    assert [(e["event"], e["gift_id"]) for e in receiver.events()] == dead[::-1]  # oldest first
    assert set(receiver.keys()) == set(first_keys)
    assert await redis.llen(DEFAULT_KEYS.webhooks_retry()) == 0
    assert await admin_call(node, "POST", "/admin/webhooks/dead/retry") == (200, {"moved": 0})
    report = await w.check()
    assert report.ok, report.violations


async def test_a_hand_edited_dead_letter_is_shown_as_unreadable(node: GatewayNode, redis: aioredis.Redis) -> None:
    await redis.lpush(DEFAULT_KEYS.webhooks_dead(), b"\xffnot json")
    status, listed = await admin_call(node, "GET", "/admin/webhooks/dead")
    assert status == 200 and listed["total"] == 1 and "unreadable" in listed["dead"][0]


async def test_a_letter_sent_back_that_does_not_read_is_dropped_and_the_others_go_out(
        redis: aioredis.Redis, receiver: Receiver) -> None:
    letter = DeadLetter({"id": "a.1", "gift_id": "g1"}, receiver.url, 2, "HTTP 500", 1)
    await redis.rpush(DEFAULT_KEYS.webhooks_retry(), b"not a letter", letter.dumps())
    sender = await run_webhooks(redis, [receiver.url], SECRET, group="webhooks", consumer="t", policy=FAST,
                                once=True)
    assert receiver.events() == [letter.event] and sender.delivered == 1
    assert await redis.llen(DEFAULT_KEYS.webhooks_retry()) == 0


async def start_webhooks(redis_server: LocalRedis, url: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "NOTECARD_REDIS_URL": redis_server.url, "HOOK_SECRET": SECRET.decode(),
           "NOTECARD_WEBHOOK_BACKOFF_S": "0.01", "NOTECARD_WEBHOOK_BACKOFF_MAX_S": "0.05"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notecard", "webhooks", "--url", url, "--secret-env", "HOOK_SECRET",
        "--consumer", "hooks-1", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)


async def test_a_killed_webhooks_process_delivers_again_after_a_restart(
        redis_server: LocalRedis, redis: aioredis.Redis, receiver: Receiver) -> None:
    w = await gifts(redis)
    receiver.hold = asyncio.Event()  # the first event is received, and never answered
    proc = await start_webhooks(redis_server, receiver.url)
    try:
        await until(lambda: len(receiver.requests) >= 1, timeout=60)
        os.kill(proc.pid, signal.SIGKILL)  # before any acknowledgement
        await asyncio.wait_for(proc.wait(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    first_key = receiver.keys()[0]
    receiver.hold.set()

    again = await start_webhooks(redis_server, receiver.url)
    stream = next(iter(await streams(redis)))

    async def acknowledged() -> bool:
        # A batch is acknowledged after its last delivery: a receiver that has every event can
        # still be ahead of the XACK, so stopping the process then would leave them pending.
        return bool((await redis.xpending(stream, "webhooks"))["pending"] == 0)

    try:
        await until(lambda: len(receiver.requests) >= 1 + len(EXPECTED), timeout=60)
        await eventually(acknowledged, "the restarted process to acknowledge every event", timeout_s=60)
    finally:
        os.kill(again.pid, signal.SIGTERM)
        _, err = await asyncio.wait_for(again.communicate(), timeout=30)
    assert b"Traceback" not in err
    events = receiver.events()
    assert [(e["event"], e["gift_id"]) for e in events[1:]] == EXPECTED  # all of them, the first once more
    assert receiver.keys()[1] == first_key
    report = await w.check()
    assert report.ok, report.violations


async def streams(redis: aioredis.Redis) -> list[str]:
    from clearing.ledger import ledger_streams

    return await ledger_streams(redis)


@pytest.mark.parametrize(("args", "env", "said"), [
    ([], {}, b"give a receiver: --url URL or NOTECARD_WEBHOOK_URLS"),
    (["--url", "ftp://x"], {}, b"not an http(s) URL: 'ftp://x'"),
    (["--url", "http://127.0.0.1:9/"], {}, b"set NOTECARD_WEBHOOK_SECRET to the signing secret, 32 bytes or more"),
    (["--url", "http://127.0.0.1:9/", "--secret-env", "HOOK"], {"HOOK": "short"},
     b"set HOOK to the signing secret, 32 bytes or more"),
    ([], {"NOTECARD_WEBHOOK_ATTEMPTS": "0"}, b"NOTECARD_WEBHOOK_ATTEMPTS"),
])
async def test_notecard_webhooks_refuses_what_it_cannot_use_and_says_what_to_give(
        args: list[str], env: dict[str, str], said: bytes) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOTECARD_WEBHOOK")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notecard", "webhooks", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**clean, "NOTECARD_REDIS_URL": "redis://127.0.0.1:1", **env})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2 and out == b""
    assert said in err and b"Traceback" not in err


def sample(metrics: WebhookMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_delivery_metrics_count_deliveries_failed_attempts_dead_letters_and_latency(
        redis: aioredis.Redis, receiver: Receiver) -> None:
    w = await gifts(redis)
    receiver.answer = lambda n: 500 if n <= 2 else 200  # the first event fails twice, then all go through
    closed = f"http://127.0.0.1:{free_port()}/hook?token=abc"  # nothing listens: every attempt is refused
    metrics = WebhookMetrics()
    sender = await run_webhooks(redis, [receiver.url, closed], SECRET, group="webhooks", consumer="t", policy=FAST,
                                once=True, metrics=metrics)
    assert (sender.delivered, sender.dead_lettered) == (4, 4)
    good, bad = receiver_label(receiver.url), receiver_label(closed)
    assert "token" not in bad and bad.endswith("/hook")  # no query string (it may carry a token) in a label
    assert sample(metrics, "notecard_webhook_delivered_total", receiver=good) == 4
    assert sample(metrics, "notecard_webhook_failed_attempts_total", receiver=good, reason="status") == 2
    assert sample(metrics, "notecard_webhook_dead_lettered_total", receiver=good) == 0
    assert sample(metrics, "notecard_webhook_delivered_total", receiver=bad) == 0
    refused = sample(metrics, "notecard_webhook_failed_attempts_total", receiver=bad, reason="connection")
    assert refused == 4 * FAST.attempts
    assert sample(metrics, "notecard_webhook_dead_lettered_total", receiver=bad) == 4
    # every attempt is timed; a delivery is timed from its first attempt, retries included
    assert sample(metrics, "notecard_webhook_attempt_seconds_count", receiver=good) == len(receiver.requests) == 6
    assert sample(metrics, "notecard_webhook_attempt_seconds_count", receiver=bad) == 4 * FAST.attempts
    assert sample(metrics, "notecard_webhook_delivery_seconds_count", receiver=good) == 4
    assert sample(metrics, "notecard_webhook_delivery_seconds_sum", receiver=good) > 0
    assert sample(metrics, "notecard_webhook_delivery_seconds_count", receiver=bad) == 0
    report = await w.check()
    assert report.ok, report.violations


async def test_notecard_webhooks_serves_its_metrics_on_the_metrics_port(
        redis_server: LocalRedis, redis: aioredis.Redis, receiver: Receiver) -> None:
    w = await gifts(redis)
    port = free_port()
    env = {**os.environ, "NOTECARD_REDIS_URL": redis_server.url, "HOOK_SECRET": SECRET.decode()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notecard", "webhooks", "--url", receiver.url, "--secret-env", "HOOK_SECRET",
        "--consumer", "hooks-m", "--metrics-port", str(port), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env)
    wanted = f'notecard_webhook_delivered_total{{receiver="{receiver_label(receiver.url)}"}} 4.0'
    text = ""
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while wanted not in text:
                assert time.monotonic() < deadline, f"no {wanted!r} in the metrics:\n{text}"
                try:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        text = (await resp.read()).decode()
                except aiohttp.ClientConnectionError:
                    pass  # not listening yet
                await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert b"Traceback" not in err
    for series in ("# TYPE notecard_webhook_failed_attempts_total counter",
                   "# TYPE notecard_webhook_dead_lettered_total counter",
                   "# TYPE notecard_webhook_attempt_seconds histogram",
                   "# TYPE notecard_webhook_delivery_seconds histogram"):
        assert series in text, series
    report = await w.check()
    assert report.ok, report.violations
