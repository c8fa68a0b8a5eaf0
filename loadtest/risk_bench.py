"""The risk engine's cost to the gift path (docs/risk.md): settled gifts/s through 2 gateway
nodes with the risk engine off (RISK_ENGINE=false: no signals) and on (signals, plus a
``notecard risk run`` scorer process (at nice 10) consuming them, in shadow mode so that the benchmark's
own machine-like traffic is scored and audited but never refused), alternating off/on so
that a drift of the shared machine falls on both.

    .venv/bin/python -m loadtest.risk_bench [--seconds 8] [--rounds 2] [--pairs 16]

Also the ``risk`` phase of ``notecard bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from clearing.keys import DEFAULT_KEYS
from loadtest import gifting
from loadtest.stats import Recorder
from loadtest.target import LoadTarget
from notecard.admin_client import AdminClient
from risk.scorer import GROUP


async def _measure(target: LoadTarget, pairs: int, seconds: float, warmup_s: float) -> float:
    tgt = target.target
    async with AdminClient(tgt.admin_url, tgt.admin_token) as admin:
        provisioned = await gifting.provision_pairs(admin, pairs)
    async with gifting.GiftLoad(tgt.urls[0], tgt.urls[-1], tgt.token, provisioned, Recorder()) as load:
        await load.run_closed(warmup_s, "warmup")
        result = await load.run_closed(seconds, "max")
    return float(result.settled_per_s)


async def _scorer_lag(url: str) -> dict[str, int]:
    redis = aioredis.Redis.from_url(url)
    stream = DEFAULT_KEYS.risk_events()
    try:
        length = await redis.xlen(stream)
        groups = await redis.xinfo_groups(stream)
        group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        last = group["last-delivered-id"] if group else b"0-0"
        last = last.decode() if isinstance(last, bytes) else str(last)
        # entries after the group's last delivered one: not yet taken by any scorer
        unscored = len(await redis.xrange(stream, min=f"({last}", count=10_000_000) or [])
    finally:
        await redis.aclose()
    return {"events": int(length), "unscored": unscored}


def run_round(work: Path, risk_on: bool, pairs: int, seconds: float, warmup_s: float,
              say: Callable[[str], None], scorer_nice: int | None = 10) -> dict[str, Any]:
    env = {"NOTECARD_RISK_ENGINE": "true" if risk_on else "false"}
    with LoadTarget(work, nodes=2, env=env) as target:
        scorer: subprocess.Popen[bytes] | None = None
        if risk_on and scorer_nice is not None:
            tgt = target.target

            async def shadow() -> None:
                async with AdminClient(tgt.admin_url, tgt.admin_token) as admin:
                    await admin.risk_switches("bench", shadow=True)

            asyncio.run(shadow())
            # At a lower priority: on this one machine it shares the cores with the nodes and
            # Redis, where a deployment gives it hosts of its own; its backlog is reported.
            nice = ["nice", "-n", str(scorer_nice)] if scorer_nice and shutil.which("nice") else []
            scorer = subprocess.Popen(  # ended below, by this handle
                [*nice, sys.executable, "-m", "notecard", "risk", "run", "--name", "bench"],
                env={**os.environ, "NOTECARD_REDIS_URL": target.redis.url}, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        try:
            rate = asyncio.run(_measure(target, pairs, seconds, warmup_s))
            out: dict[str, Any] = {"risk": "on" if risk_on else "off", "settled_per_s": rate}
            if scorer is not None:
                out |= asyncio.run(_scorer_lag(target.redis.url))
        finally:
            if scorer is not None:
                scorer.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    scorer.wait(10)
    lag = f" (events {out['events']}, not yet scored {out['unscored']})" if "events" in out else ""
    say(f"risk {out['risk']}: {rate:.0f} settled gifts/s{lag}")
    return out


def run(work: Path, *, pairs: int, seconds: float, rounds: int, warmup_s: float = 1.0,
        say: Callable[[str], None] = print, scorer_nice: int | None = 10) -> dict[str, Any]:
    """``scorer_nice``: the scorer's priority (None: no scorer, the signals' cost alone)."""
    rows = []
    for i in range(rounds):
        for risk_on in (False, True):
            rows.append(run_round(work / f"r{i}-{'on' if risk_on else 'off'}", risk_on, pairs, seconds, warmup_s,
                                  say, scorer_nice))
    off = statistics.mean(r["settled_per_s"] for r in rows if r["risk"] == "off")
    on = statistics.mean(r["settled_per_s"] for r in rows if r["risk"] == "on")
    return {"rounds": rows, "off_settled_per_s": off, "on_settled_per_s": on, "on_over_off": on / off if off else 0.0}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.risk_bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round and mode")
    parser.add_argument("--rounds", type=int, default=2, help="off/on rounds")
    parser.add_argument("--pairs", type=int, default=16, help="gift pairs")
    parser.add_argument("--scorer-nice", type=int, default=10, help="the scorer's nice value; -1: no scorer")
    args = parser.parse_args(argv)
    nice = None if args.scorer_nice < 0 else args.scorer_nice
    with tempfile.TemporaryDirectory(prefix="notecard-risk-bench-") as work:
        result = run(Path(work), pairs=args.pairs, seconds=args.seconds, rounds=args.rounds, scorer_nice=nice)
    print(f"settled gifts/s: risk off {result['off_settled_per_s']:.0f}, on {result['on_settled_per_s']:.0f}, "
          f"on/off {result['on_over_off']:.3f} (bar: >= 0.90)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
