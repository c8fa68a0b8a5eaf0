"""Where one risk scorer spends its time (docs/risk.md, "Cost to the gift path").

Writes the events the gift benchmark makes (16 pairs of accounts giving back and forth: a
send and an accept per gift, from one address, no device) to the events stream of a
private ``redis-server`` (each arrival one entry, as a node writes a flush) and scores
them with :class:`risk.scorer.Scorer`, in one of two shapes:

- ``trickle``: the events arrive as the nodes write them under load (``--arrive`` events,
  then a step), so each step sees few: the per-batch cost counts;
- ``backlog``: everything is written first (entries of 20 events), then scored in batches
  of 200 entries.

It reports the scorer's CPU per event (this process: the scorer's client side), Redis's
commands and CPU per event, and optionally the scorer's hottest functions (cProfile).

    .venv/bin/python -m loadtest.risk_profile [--events 6000] [--shape trickle] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from clearing.keys import KeySchema
from notecard.local_redis import LocalRedis
from risk.model import load_model
from risk.scorer import Scorer
from risk.signals import ENTRY_EVENTS


def bench_events(n: int, pairs: int = 16, start_ms: int = 1_700_000_000_000) -> list[dict[str, str]]:
    """What the gift benchmark's pairs make: per gift a send and the recipient's accept."""
    out: list[dict[str, str]] = []
    ts = start_ms
    i = 0
    while len(out) < n:
        p = i % pairs
        a, b = (f"bench-a{p}", f"bench-b{p}") if (i // pairs) % 2 == 0 else (f"bench-b{p}", f"bench-a{p}")
        ts += 3
        common = {"d": "-", "ip": "127.0.0.1", "app": "bench"}
        out.append({"k": "send", "u": a, "to": b, "code": "OK", "ts": str(ts), **common})
        out.append({"k": "accept", "u": b, "to": a, "waited_ms": "12", "ts": str(ts + 12), **common})
        i += 1
    return out[:n]


async def _redis_stats(redis: aioredis.Redis) -> tuple[int, float]:
    info: dict[str, Any] = await redis.info()
    return int(info["total_commands_processed"]), float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def profile(url: str, events: int, shape: str, arrive: int, use_cprofile: bool) -> dict[str, Any]:
    redis = aioredis.Redis.from_url(url)
    keys = KeySchema()
    scorer = Scorer(redis, keys, load_model(), name="profile")
    await redis.hset(keys.risk_switches(), "shadow", "1")  # as the benchmark runs it: never refuse
    await scorer.ensure_group()
    todo = bench_events(events)
    stream = keys.risk_events()

    async def write(batch: list[dict[str, str]]) -> None:
        # as a node writes a flush (risk/signals.py): one entry of up to ENTRY_EVENTS events
        async with redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(batch), ENTRY_EVENTS):
                chunk = batch[start:start + ENTRY_EVENTS]
                pipe.xadd(stream, {"n": len(chunk), "b": orjson.dumps(chunk)})
            await pipe.execute()

    if shape == "backlog":
        for i in range(0, len(todo), 20):  # a node's flush under the benchmark's load
            await write(todo[i:i + 20])
    commands0, redis_cpu0 = await _redis_stats(redis)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    prof = cProfile.Profile() if use_cprofile else None
    if prof:
        prof.enable()
    scored = steps = 0
    if shape == "backlog":
        while scored < events:
            scored += await scorer.step(block_ms=10)
            steps += 1
    else:
        for i in range(0, len(todo), arrive):
            if prof:
                prof.disable()
            await write(todo[i:i + arrive])
            if prof:
                prof.enable()
            scored += await scorer.step(block_ms=10)
            steps += 1
    if prof:
        prof.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    commands1, redis_cpu1 = await _redis_stats(redis)
    # the writes of a trickle are the nodes' work, not the scorer's
    xadds = 0 if shape == "backlog" else steps
    out: dict[str, Any] = {
        "shape": shape, "events": scored, "steps": steps, "events_per_step": scored / max(1, steps),
        "scorer_cpu_us_per_event": 1e6 * cpu / max(1, scored), "wall_s": wall,
        "redis_commands_per_event": (commands1 - commands0 - xadds - 1) / max(1, scored),
        "redis_cpu_us_per_event": 1e6 * (redis_cpu1 - redis_cpu0) / max(1, scored),
    }
    if prof:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        out["profile"] = text.getvalue()
    await redis.aclose()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.risk_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--shape", choices=("trickle", "backlog"), default="trickle")
    parser.add_argument("--arrive", type=int, default=10, help="trickle: entries per arrival")
    parser.add_argument("--profile", action="store_true", help="print the scorer's hottest functions")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="notecard-risk-profile-") as work:
        server = LocalRedis(Path(work) / "redis").start()
        try:
            result = asyncio.run(profile(server.url, args.events, args.shape, args.arrive, args.profile))
        finally:
            server.stop()
    text = result.pop("profile", "")
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    if text:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
