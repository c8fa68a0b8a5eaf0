"""The clearing ceilings: what Redis itself does with our scripts, and what our API gets of it.

Why: a gift costs two script calls (FCALL), so Redis running ``reserve.lua`` bounds the gift rate no
matter how fast the Python around it is. Three numbers, measured back to back on the
bench's own ``redis-server`` under a key prefix of their own (``ncb``, so nothing here
meets the gateway nodes' data):

- **Script call ceiling** (``evalsha_ceiling``, named when the scripts were EVALSHA'd):
  ``redis-benchmark`` (C, no Python) sends the very command the
  clearing API sends for one ``reserve``. The command is captured from a real call of
  :meth:`clearing.Clearing.reserve` (so its ARGV cannot drift from ``clearing/lua.py``),
  and its gift id is replaced by ``__rand_int__``, so every call is a *successful* reserve
  of a fresh gift: the full path, every check, every write, the stream append and the
  PUBLISH. (``redis-benchmark`` draws each ``__rand_int__`` on its own, so the gift hash
  key and the queued gift id are two different fresh ids: the script does exactly the same
  work.) A refused reserve would be cheaper and flatter the ceiling; an accept cannot be
  repeated without a fresh pending gift per call.
- **Clearing API rate**: ``Clearing.reserve`` from asyncio tasks at the same concurrency,
  on a client built like the gateway's (:func:`gateway.connect_redis`), uvloop.
- **Pub/sub ceiling**: ``redis-benchmark`` PUBLISHes event-sized messages to a channel
  that one redis-py subscriber reads the way a gateway node does (``get_message`` with a
  timeout): the most a node's subscriber can take in, the ceiling of cross-node delivery.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import secrets
import shutil
import subprocess
import time
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from clearing import Accounts, Clearing, GiftRules, KeySchema, Presence
from gateway.config import GatewaySettings
from gateway.redis_client import connect_redis
from loadtest.stats import Recorder, percentile

BENCH_PREFIX = "ncb"
DAY_MS = 86_400_000
#: Rules for the clearing phases: no daily limit in the way, a node heartbeat that stays
#: valid for the whole phase (the captured command carries a fixed "now").
BENCH_RULES = GiftRules(daily_send_limit=10**9, daily_receive_limit=10**9, node_ttl_ms=DAY_MS,
                        confirm_window_ms=DAY_MS)
_SENDER, _RECIPIENT, _NODE = "cb-sender", "cb-recipient", "cb-node"
#: ``redis-benchmark -r``: ids drawn from this many values (its largest), so repeats are rare.
_KEYSPACE = 2_147_483_647
#: An event as the scripts publish it is about this long (msgpack, one gift).
PUBSUB_PAYLOAD_BYTES = 260


class RedisBenchmarkMissing(RuntimeError):
    """``redis-benchmark`` is not on PATH (Debian/Ubuntu: it comes with redis-tools)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RateResult:
    name: str
    ops: int
    seconds: float
    concurrency: int
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")

    @property
    def per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


class _RecordingPipeline(Pipeline):
    """Clearing sends its scripts in pipelines (clearing/pipelining.py): record them there."""

    captured: list[tuple[Any, ...]]

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.captured.append(("EVALSHA", sha, numkeys, *keys_and_args))
        return super().evalsha(sha, numkeys, *keys_and_args)

    def fcall(self, function: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.captured.append(("FCALL", function, numkeys, *keys_and_args))
        return super().fcall(function, numkeys, *keys_and_args)


class _RecordingRedis(aioredis.Redis):
    """A client that remembers the script calls (FCALL; EVALSHA on older commits) it sends
    (to replay them exactly)."""

    captured: list[tuple[Any, ...]]

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.captured.append(("EVALSHA", sha, numkeys, *keys_and_args))
        return super().evalsha(sha, numkeys, *keys_and_args)

    def fcall(self, function: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.captured.append(("FCALL", function, numkeys, *keys_and_args))
        return super().fcall(function, numkeys, *keys_and_args)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = _RecordingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.captured = self.captured
        return pipe


async def prepare(url: str) -> tuple[str, ...]:
    """Create the bench users, fund and befriend them, put the recipient online; return
    the captured ``FCALL`` command of one successful reserve, as redis-benchmark argv."""
    keys = KeySchema(prefix=BENCH_PREFIX)
    client = _RecordingRedis.from_url(url)
    assert isinstance(client, _RecordingRedis)
    client.captured = []
    try:
        accounts = Accounts(client, BENCH_RULES, keys=keys)
        presence = Presence(client, BENCH_RULES, keys=keys)
        since = int(time.time() * 1000) - 4 * DAY_MS
        await accounts.create_user(_SENDER, verified=True)
        await accounts.create_user(_RECIPIENT, verified=True)
        await accounts.mint(_SENDER, "note", 10**9)
        await accounts.follow(_SENDER, _RECIPIENT, since)
        await accounts.follow(_RECIPIENT, _SENDER, since)
        await presence.heartbeat(_NODE)
        await presence.connect(_RECIPIENT, _NODE)
        marker = f"cbcapture{secrets.token_hex(3)}"
        client.captured.clear()
        await Clearing(client, BENCH_RULES, keys=keys).reserve(marker, _SENDER, _RECIPIENT, "note", 1)
    finally:
        await client.aclose()
    # The first FCALL on a node without the library fails with "Function not found" and is
    # sent again after FUNCTION LOAD: the last one is the call that ran.
    command = client.captured[-1]
    # FCALL function 1 key args: the arguments travel as msgpack, which holds NUL bytes that
    # a command line cannot; the scripts also take the same map as JSON (lib.lua).
    verb, sha, numkeys, key, packed = command[:5]
    args = msgpack.unpackb(packed, raw=False)
    if args.get("gid") != marker or any(v is None for v in args.values()):
        raise RuntimeError("the captured send does not carry its gift id, or carries a null")
    args["gid"] = "cb-__rand_int__"
    as_text = [str(a.decode() if isinstance(a, bytes) else a) for a in (sha, numkeys, key)]
    return (verb, *(a.replace(marker, "cb-__rand_int__") for a in as_text), json.dumps(args))


def _redis_benchmark() -> str:
    path = shutil.which("redis-benchmark")
    if path is None:
        raise RedisBenchmarkMissing("redis-benchmark is not installed (apt-get install redis-tools)")
    return path


def _run_redis_benchmark(host: str, port: int, clients: int, requests: int, command: tuple[str, ...],
                         timeout_s: float, password: str | None = None) -> float:
    """Requests per second that redis-benchmark reports for ``command``."""
    # The password of a throwaway benchmark server, on the command line: redis-benchmark
    # has no other way to take it.
    auth = ["-a", password] if password else []
    args = [_redis_benchmark(), "-h", host, "-p", str(port), *auth, "-c", str(clients), "-n", str(requests),
            "-r", str(_KEYSPACE), "--csv", *command]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if len(lines) < 2:
        raise RuntimeError(f"unexpected redis-benchmark output: {done.stdout[:300]!r} {done.stderr[:300]!r}")
    header = next(csv.reader([lines[0]]))
    # The first column is the command line, unescaped (the reserve ARGV holds JSON with
    # quotes and commas): split the numbers off from the right.
    numbers = lines[-1].rsplit(",", len(header) - 1)[1:]
    return float(numbers[header.index("rps") - 1].strip('"'))


def evalsha_ceiling(host: str, port: int, command: tuple[str, ...], clients: int,
                    duration_s: float, password: str | None = None) -> RateResult:
    """redis-benchmark at ``clients`` connections, sized to run about ``duration_s``."""
    probe_n = max(clients * 50, 2000)
    probe = _run_redis_benchmark(host, port, clients, probe_n, command, timeout_s=60, password=password)
    requests = max(probe_n, int(probe * duration_s))
    rps = _run_redis_benchmark(host, port, clients, requests, command, timeout_s=duration_s * 4 + 30,
                               password=password)
    # redis-benchmark's own figure (requests over its measured time) is the one reported.
    return RateResult("evalsha_ceiling", requests, requests / rps if rps > 0 else float("inf"), clients)


async def clearing_api_rate(url: str, concurrency: int, duration_s: float, rec: Recorder,
                            series: str = "clearing/reserve") -> RateResult:
    """``Clearing.reserve`` of fresh gifts from ``concurrency`` tasks for ``duration_s``."""
    redis = connect_redis(GatewaySettings(redis_url=url))
    clearing = Clearing(redis, BENCH_RULES, keys=KeySchema(prefix=BENCH_PREFIX))
    tag = secrets.token_hex(3)
    samples = rec.get(series)
    done = 0
    try:
        # One warm-up call per task opens the pool's connections outside the timed window.
        await asyncio.gather(*(clearing.reserve(f"cw{tag}-{i}", _SENDER, _RECIPIENT, "note", 1)
                               for i in range(concurrency)))
        start = rec.now()
        deadline = start + duration_s

        async def worker(index: int) -> None:
            nonlocal done
            n = 0
            while True:
                began = rec.now()
                if began >= deadline:
                    return
                await clearing.reserve(f"c{tag}-{index}-{n}", _SENDER, _RECIPIENT, "note", 1)
                now = rec.now()
                samples.add(now, now - began)
                n += 1
                done += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        end = rec.now()
    finally:
        await redis.aclose()
    window = sorted(samples.window(start, end + 1))
    return RateResult("clearing_api", done, end - start, concurrency,
                      percentile(window, 0.5) * 1000, percentile(window, 0.99) * 1000)


async def pubsub_ceiling(host: str, port: int, messages: int, publishers: int = 4,
                         timeout_s: float = 60.0, password: str | None = None) -> RateResult:
    """Messages per second one redis-py subscriber takes in while redis-benchmark publishes.

    ``messages`` is kept small enough (a few MiB in all) that Redis never drops the
    subscriber for its output buffer while it lags.
    """
    channel = f"{BENCH_PREFIX}:node:pubsub-ceiling"
    client = aioredis.Redis(host=host, port=port, password=password)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    payload = "x" * PUBSUB_PAYLOAD_BYTES
    received = 0
    first = last = 0.0
    try:
        await pubsub.subscribe(channel)
        publisher = asyncio.create_task(asyncio.to_thread(
            _run_redis_benchmark, host, port, publishers, messages, ("PUBLISH", channel, payload), timeout_s,
            password))
        deadline = time.perf_counter() + timeout_s
        while received < messages and time.perf_counter() < deadline:
            message = await pubsub.get_message(timeout=0.5)
            if message is None:
                if publisher.done():
                    break
                continue
            if message.get("type") != "message":
                continue
            last = time.perf_counter()
            if not received:
                first = last
            received += 1
        await publisher
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    return RateResult("pubsub_ceiling", max(0, received - 1), last - first, publishers)
