"""The ledger's bench (loadtest/ledger_bench.py): the group's lag as it reports it, against
a real Redis, and one short off/on round pair end to end (a real target, a real
``notecard ledger`` member into a real PostgreSQL). No timing assertions: the numbers are
in docs/benchmarks.md."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from clearing import GiftRules
from clearing.ledger import StreamConsumer
from clearing.testing import World
from ledger.consumer import GROUP
from loadtest import bench, ledger_bench
from loadtest.ledger_bench import group_lag


async def test_group_lag_counts_undelivered_and_pending_and_ages_the_oldest(redis: aioredis.Redis) -> None:
    w = await World.build(redis, GiftRules(daily_send_limit=100, daily_receive_limit=100))
    for user in ("ann", "bob"):
        await w.user(user, cards=10)  # two stream entries (the mints)
    member = StreamConsumer(redis, GROUP, "m", count=1)
    await member.streams()
    assert (await group_lag(redis))["undelivered"] == 2
    batch = await member.read()  # one delivered, not acknowledged
    lag = await group_lag(redis)
    assert (lag["entries"], lag["undelivered"], lag["pending"]) == (2, 1, 1)
    first_ms = int(batch.ids[next(iter(batch.ids))][0].split("-")[0])
    assert 0 <= lag["oldest_unacked_ms"] <= int(time.time() * 1000) - first_ms + 1
    await member.ack(batch)
    await member.ack(await member.read())
    lag = await group_lag(redis)
    assert (lag["undelivered"], lag["pending"], lag["oldest_unacked_ms"]) == (0, 0, 0)
    report = await w.check()
    assert report.ok, report.violations


@pytest.mark.slow
def test_one_round_pair_measures_both_modes_and_the_member(tmp_path: Path) -> None:
    result = ledger_bench.run(tmp_path, pairs=4, seconds=1.5, rounds=1, warmup_s=0.3, say=print)
    off, on = result["rounds"]
    assert (off["ledger"], on["ledger"]) == ("off", "on")
    assert off["settled_per_s"] > 0 and on["settled_per_s"] > 0
    assert off["stream_entries_per_s"] == 0, "with the ledger off the scripts write no entries"
    assert on["stream_entries_per_s"] > 0 and on["member_entries_per_s"] > 0
    assert on["drained"] and on["lag_at_end"]["entries"] > 0
    rows = {row.key: row for row in bench.ledger_rows(result)}
    assert rows["ledger"].ratio == pytest.approx(result["on_over_off"])
