"""How fast ``notecard ledger`` writes to PostgreSQL: a backlog of fast-path gifts (send,
accept) is made on a fresh ``redis-server``, then drained by ``--members`` consumers of one
group (one process, concurrent tasks) into a fresh, durable local PostgreSQL (fsync on).
Prints the drain's rate in stream entries, records and gifts per second, to set beside the
bench's settled gifts/s (docs/ledger.md "Cost"). Everything it starts is stopped by PID.

    python -m loadtest.ledger_drain [--gifts 3000] [--count 1024] [--members 1]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from clearing import GiftRules
from clearing.ledger import read_all
from clearing.testing import World
from ledger.consumer import BATCH, BooksConsumer
from notecard.local_postgres import LocalPostgres
from notecard.local_redis import LocalRedis

SENDERS = 16


async def _backlog(redis: aioredis.Redis, gifts: int) -> None:
    w = await World.build(redis, GiftRules(daily_send_limit=10**6, daily_receive_limit=10**6))
    senders = [f"s{i}" for i in range(SENDERS)]
    for user in [*senders, "r0"]:
        await w.user(user, cards=gifts + 1)
    for user in senders:
        await w.befriend(user, "r0")
    for i in range(gifts):
        await w.clearing.reserve(f"g{i}", senders[i % SENDERS], "r0", "note", 1)
        await w.clearing.accept(f"g{i}", "r0")


async def drain(redis_url: str, postgres_url: str, gifts: int, count: int, members: int) -> str:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await _backlog(redis, gifts)
        records, _ = await read_all(redis)
        books = [BooksConsumer(redis, postgres_url, consumer=f"m{i}", count=count) for i in range(members)]
        for member in books:  # the drain is timed, not the connections and the migrations
            await member.connect()
        start = time.perf_counter()
        await asyncio.gather(*(member.run(once=True) for member in books))
        elapsed = time.perf_counter() - start
        for member in books:
            await member.close()
        return (f"{gifts} gifts, {len(records)} records: drained in {elapsed:.2f}s = {len(records) / elapsed:,.0f} "
                f"records/s, {gifts / elapsed:,.0f} gifts/s (count {count}, members {members})")
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ledger_drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gifts", type=int, default=3000, help="gifts in the backlog (default 3000)")
    parser.add_argument("--count", type=int, default=BATCH, help=f"entries per stream and read (default {BATCH})")
    parser.add_argument("--members", type=int, default=1, help="consumers of the group (default 1)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder, LocalRedis(Path(folder)) as redis_server, \
            LocalPostgres(durable=True) as postgres:
        print(asyncio.run(drain(redis_server.url, postgres.url, args.gifts, args.count, args.members)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
