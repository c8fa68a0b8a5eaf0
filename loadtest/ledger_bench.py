"""The outbox's cost to the gift path, and whether ``notecard ledger`` keeps up with it
(docs/benchmarks.md "Ledger", docs/ledger.md "Cost").

Rounds alternate the ledger off (``NOTECARD_LEDGER=off``: the scripts write no entries) and
on, each on a fresh target of 2 gateway nodes and one ``redis-server``, so that a drift of
the shared machine falls on both. Every round measures settled gifts/s at the bench's
maximum rate (closed loop, as ``notecard bench``'s "max" phase) and the CPU the nodes and
Redis spent per settled gift. In the rounds with the ledger on, one ``notecard ledger``
member (at nice 10, like the risk scorer: on this one machine it shares the cores that a
deployment gives it elsewhere) writes the entries to a fresh, durable local PostgreSQL
(fsync on) throughout the phase; at the end of the phase its lag is read (entries not yet
delivered to the group, delivered and not acknowledged, and the age of the oldest entry
not yet acknowledged), then how long it takes to drain after the load stops.

    .venv/bin/python -m loadtest.ledger_bench [--seconds 8] [--rounds 2] [--pairs 16]

Also the ``ledger`` phase of ``notecard bench`` (``--only gifts,ledger``).
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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis

from clearing.ledger import ledger_streams
from ledger.consumer import GROUP
from ledger.migrate import migrate
from loadtest import gifting
from loadtest.cpu import CpuMeter
from loadtest.stats import Recorder
from loadtest.target import LoadTarget
from notecard.admin_client import AdminClient
from notecard.local_postgres import LocalPostgres

#: The member's priority (see the module's docstring); ``None``: no member at all.
MEMBER_NICE = 10
#: After the phase, the member has this long to drain the streams.
DRAIN_TIMEOUT_S = 120.0
#: A member keeps up when what is left at the end of the phase takes it less than this to
#: drain once the load stops: its backlog is under a second of its work. (The age of the
#: oldest entry not acknowledged at that instant, also reported, includes the batch being
#: written, up to a few hundred ms under fsync on a busy machine, whether or not the member
#: falls behind; a member that falls behind sees its drain time grow with the phase.)
KEEPS_UP_S = 1.0


def _postmaster_pid(postgres: LocalPostgres) -> int:
    return int((postgres.data_dir / "postmaster.pid").read_text().splitlines()[0])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def group_lag(redis: aioredis.Redis) -> dict[str, Any]:
    """Over every ledger stream: entries in it, not yet delivered to the group, delivered and
    not acknowledged, and the age (ms) of the oldest entry not acknowledged (0: none)."""
    now_ms = int(time.time() * 1000)
    out = {"entries": 0, "read": 0, "undelivered": 0, "pending": 0, "oldest_unacked_ms": 0}
    oldest: list[int] = []
    for stream in await ledger_streams(redis):
        out["entries"] += int(await redis.xlen(stream))
        last = "0-0"
        for info in await redis.xinfo_groups(stream):
            row = {_text(k): v for k, v in info.items()}
            if _text(row.get("name", b"")) == GROUP:
                last = _text(row.get("last-delivered-id", b"0-0"))
                out["read"] += int(row.get("entries-read") or 0)
                out["pending"] += int(row.get("pending", 0))
                summary = await redis.xpending(stream, GROUP)
                if summary.get("pending"):
                    oldest.append(int(_text(summary["min"]).split("-")[0]))
        undelivered = await redis.xrange(stream, min=f"({last}", count=10_000_000) or []
        out["undelivered"] += len(undelivered)
        if undelivered:
            oldest.append(int(_text(undelivered[0][0]).split("-")[0]))
    out["oldest_unacked_ms"] = max(0, now_ms - min(oldest)) if oldest else 0
    return out


async def _caught_up(redis: aioredis.Redis, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        lag = await group_lag(redis)
        if lag["read"] and not (lag["undelivered"] or lag["pending"]):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the notecard ledger member did not catch up in {timeout_s:.0f} s: {lag}")
        await asyncio.sleep(0.1)


async def _written(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT (SELECT count(*) FROM ledger_entry) + (SELECT count(*) FROM gift_event)")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _migrated(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)


async def _measure(target: LoadTarget, pairs: int, seconds: float, warmup_s: float, pids: dict[str, int],
                   postgres_url: str | None) -> dict[str, Any]:
    tgt = target.target
    async with AdminClient(tgt.admin_url, tgt.admin_token) as admin:
        provisioned = await gifting.provision_pairs(admin, pairs)
    redis = aioredis.Redis.from_url(target.redis.url)
    try:
        if postgres_url:
            await _caught_up(redis)  # the member started and wrote the set-up's entries
        async with gifting.GiftLoad(tgt.urls[0], tgt.urls[-1], tgt.token, provisioned, Recorder()) as load:
            await load.run_closed(warmup_s, "warmup")
            # PostgreSQL writes in the postmaster's children; the rest work in the one process
            meter = CpuMeter(pids, with_children=("postgres",))
            lag_before = await group_lag(redis)
            written_before = await _written(postgres_url) if postgres_url else 0
            result = await load.run_closed(seconds, "max")
            wall = result.seconds
            reading = meter.read()
            cpu = {name: reading[name] for name in pids}
            lag_after = await group_lag(redis)
            written_after = await _written(postgres_url) if postgres_url else 0
        rate = float(result.settled_per_s)
        gateway_cores = sum(v for k, v in cpu.items() if k.startswith("node") or k == "redis")
        out: dict[str, Any] = {
            "settled_per_s": rate, "settled": result.settled, "errors": result.errors, "seconds": round(wall, 2),
            "cores": cpu,
            "cpu_ms_per_gift": round(gateway_cores / rate * 1000, 3) if rate else 0.0,
            "stream_entries_per_s": round((lag_after["entries"] - lag_before["entries"]) / wall, 1),
        }
        if postgres_url:
            drain_start = time.monotonic()
            drained = lag_after
            while drained["undelivered"] or drained["pending"]:
                if time.monotonic() - drain_start > DRAIN_TIMEOUT_S:
                    break
                await asyncio.sleep(0.05)
                drained = await group_lag(redis)
            drain_s = time.monotonic() - drain_start
            out |= {
                "member_entries_per_s": round((lag_after["read"] - lag_before["read"]) / wall, 1),
                "member_records_per_s": round((written_after - written_before) / wall, 1),
                "member_cpu_ms_per_gift": round((cpu.get("member", 0) + cpu.get("postgres", 0)) / rate * 1000, 3)
                if rate else 0.0,
                "lag_at_end": lag_after, "drain_s": round(drain_s, 2),
                "drained": not (drained["undelivered"] or drained["pending"]),
            }
            out["keeps_up"] = bool(out["drained"] and drain_s <= KEEPS_UP_S)
    finally:
        await redis.aclose()
    return out


def run_round(work: Path, ledger_on: bool, pairs: int, seconds: float, warmup_s: float,
              say: Callable[[str], None], postgres: LocalPostgres | None, index: int) -> dict[str, Any]:
    env = {"NOTECARD_LEDGER": "on" if ledger_on else "off"}
    work.mkdir(parents=True, exist_ok=True)
    with LoadTarget(work, nodes=2, env=env) as target:
        pids = {f"node{i + 1}": pid for i, pid in enumerate(target.node_pids())}
        assert target.redis.process is not None
        pids["redis"] = target.redis.process.pid
        member: subprocess.Popen[bytes] | None = None
        url = None
        if ledger_on and postgres is not None:
            url = postgres.create_database(f"bench{index}")  # a fresh book per round
            asyncio.run(_migrated(url))  # before the member: the phase counts the rows from its start
            nice = ["nice", "-n", str(MEMBER_NICE)] if shutil.which("nice") else []
            with (work / "ledger.log").open("wb") as log:  # the child keeps its own descriptor
                member = subprocess.Popen(  # ended below, by this handle
                    [*nice, sys.executable, "-m", "notecard", "ledger", "--consumer", "bench", "--status-every", "0"],
                    env={**os.environ, "NOTECARD_REDIS_URL": target.redis.url, "NOTECARD_POSTGRES_URL": url},
                    stdout=subprocess.DEVNULL, stderr=log)
            pids["member"] = member.pid
            pids["postgres"] = _postmaster_pid(postgres)
        try:
            out = {"ledger": "on" if ledger_on else "off",
                   **asyncio.run(_measure(target, pairs, seconds, warmup_s, pids, url))}
        finally:
            if member is not None:
                member.terminate()
                try:
                    member.wait(10)
                except subprocess.TimeoutExpired:
                    member.kill()
                    member.wait(10)
    line = f"ledger {out['ledger']}: {out['settled_per_s']:.0f} settled gifts/s, {out['cpu_ms_per_gift']} CPU ms/gift"
    if "lag_at_end" in out:
        lag = out["lag_at_end"]
        line += (f"; member {out['member_entries_per_s']:.0f} entries/s for {out['stream_entries_per_s']:.0f} made/s, "
                 f"lag at the end {lag['undelivered']} undelivered + {lag['pending']} pending, oldest "
                 f"{lag['oldest_unacked_ms']} ms, drained in {out['drain_s']} s")
    say(line)
    return out


def run(work: Path, *, pairs: int, seconds: float, rounds: int, warmup_s: float = 1.0,
        say: Callable[[str], None] = print, member: bool = True) -> dict[str, Any]:
    """Alternating off/on rounds; ``member`` False measures the entries' cost alone."""
    rows = []
    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(LocalPostgres(durable=True)) if member else None
        for i in range(rounds):
            for on in (False, True):
                rows.append(run_round(work / f"r{i}-{'on' if on else 'off'}", on, pairs, seconds, warmup_s, say,
                                      postgres, i))
    offs = [r for r in rows if r["ledger"] == "off"]
    ons = [r for r in rows if r["ledger"] == "on"]
    off_rate = statistics.mean(r["settled_per_s"] for r in offs)
    on_rate = statistics.mean(r["settled_per_s"] for r in ons)
    out: dict[str, Any] = {
        "rounds": rows, "off_settled_per_s": off_rate, "on_settled_per_s": on_rate,
        "on_over_off": on_rate / off_rate if off_rate else 0.0,
        "off_cpu_ms_per_gift": statistics.mean(r["cpu_ms_per_gift"] for r in offs),
        "on_cpu_ms_per_gift": statistics.mean(r["cpu_ms_per_gift"] for r in ons),
    }
    if member:
        out["member_keeps_up"] = all(r["keeps_up"] for r in ons)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ledger_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round and mode")
    parser.add_argument("--rounds", type=int, default=2, help="off/on rounds")
    parser.add_argument("--pairs", type=int, default=16, help="gift pairs")
    parser.add_argument("--no-member", action="store_true", help="no notecard ledger member: the entries' cost alone")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="notecard-ledger-bench-") as work:
        result = run(Path(work), pairs=args.pairs, seconds=args.seconds, rounds=args.rounds,
                     member=not args.no_member)
    print(f"settled gifts/s: ledger off {result['off_settled_per_s']:.0f}, on {result['on_settled_per_s']:.0f}, "
          f"on/off {result['on_over_off']:.3f} (bar: >= 0.90); CPU ms per settled gift (nodes + Redis): off "
          f"{result['off_cpu_ms_per_gift']:.3f}, on {result['on_cpu_ms_per_gift']:.3f}"
          + (f"; the member keeps up: {'yes' if result['member_keeps_up'] else 'NO'}" if "member_keeps_up" in result
             else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
