"""PostgreSQL as the book of record, against a real PostgreSQL of our own (LocalPostgres), a
real Redis and the real 3-shard cluster: ``notecard ledger`` writes every ledger record once
even when members crash, reconcile finds and explains drift, restore rebuilds an emptied
Redis, and a consumer killed mid-batch plus a PostgreSQL restart while gifts flow end with
no drift."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import psycopg
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio.cluster import RedisCluster

from clearing import GiftRules
from clearing.invariant import check_invariant
from clearing.ledger import LedgerEntry, StreamConsumer, read_all
from clearing.testing import World
from clearing.topology import Topology
from ledger.books import Conn, entry_count
from ledger.cli import metrics_reporter
from ledger.consumer import BooksConsumer
from ledger.migrate import migrate, migrations, schema_version
from ledger.reconcile import reconcile_books
from ledger.restore import RestoreRefused, restore
from notecard.local_postgres import LocalPostgres
from notecard.local_redis import LocalRedis
from tests.test_ledger import FAR, NEAR, traffic

DEADLINE_S = 40.0


@pytest.fixture
async def world(store: Topology) -> AsyncIterator[World]:
    w = await World.build(store, GiftRules(daily_send_limit=50, daily_receive_limit=50))
    yield w
    report = await w.check()
    assert report.ok, report.violations


@pytest.fixture
async def books(postgres_url: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await migrate(conn)
        yield conn


async def stream_entries(redis: aioredis.Redis) -> list[LedgerEntry]:
    records, problems = await read_all(redis)
    assert problems == []
    return [r for r in records if isinstance(r, LedgerEntry)]


async def written_ids(conn: Conn) -> list[str]:
    cur = await conn.execute("SELECT id FROM ledger_entry")
    return [row[0] for row in await cur.fetchall()]


async def test_migrations_apply_once_and_record_their_version(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        assert await schema_version(conn) == 0
        assert [m.version for m in await migrate(conn)] == [m.version for m in migrations()]
        assert await migrate(conn) == []  # a second consumer starting finds them applied
        assert await schema_version(conn) == migrations()[-1].version


async def test_the_consumer_writes_every_record_once_and_balances_match_redis(
        world: World, books: Conn, postgres_url: str) -> None:
    await traffic(world)
    member = BooksConsumer(world.redis, postgres_url, consumer="books-1", count=7)
    registry = CollectorRegistry()
    try:
        progress = await member.run(once=True, on_status=metrics_reporter(registry))
    finally:
        await member.close()
    in_streams = await stream_entries(world.redis)
    assert sorted(await written_ids(books)) == sorted(e.id for e in in_streams)
    assert progress.entries == len(in_streams) and progress.repeated == 0
    # the lag, per stream, as the command's metrics serve it
    assert progress.lag and set(progress.lag.values()) == {0}
    metrics = generate_latest(registry).decode()
    for stream in progress.lag:
        assert f'notecard_ledger_lag_entries{{stream="{stream}"}} 0.0' in metrics
    assert f'notecard_ledger_written{{record="entry"}} {float(len(in_streams))}' in metrics
    cur = await books.execute("SELECT event, count(*) FROM gift_event GROUP BY event ORDER BY event")
    assert dict(await cur.fetchall()) == {"accepted": 5, "declined": 4, "expired": 2, "sent": 11}
    result = await reconcile_books(books, world.redis)
    assert result.ok, result.report()
    assert result.entries == len(in_streams) and result.unwritten == 0

    # every entry delivered again (the group rewound, as after a crash between COMMIT and
    # XACK): written once all the same
    for stream in await member.member.streams():
        await world.redis.xgroup_setid(stream, "books", "0")
    again = BooksConsumer(world.redis, postgres_url, consumer="books-2")
    try:
        progress = await again.run(once=True)
    finally:
        await again.close()
    assert progress.entries == 0 and progress.repeated > len(in_streams)  # entries and gift events
    assert await entry_count(books) == len(in_streams)


async def test_a_crashed_members_batch_is_claimed_and_written_by_another(
        world: World, books: Conn, postgres_url: str) -> None:
    await traffic(world)
    # member a reads a batch and dies before writing it (nothing acknowledged)
    dead = StreamConsumer(world.redis, "books", "a", count=1000)
    taken = await dead.read()
    assert taken.records
    alive = BooksConsumer(world.redis, postgres_url, consumer="b", claim_idle_ms=200)
    try:
        want = sorted(e.id for e in await stream_entries(world.redis))
        deadline = time.monotonic() + DEADLINE_S
        while sorted(await written_ids(books)) != want:
            assert time.monotonic() < deadline, "b never took over a's entries"
            batch = await alive.step()
            if not batch.ids:
                await asyncio.sleep(0.05)  # a's entries become claimable once idle for 200 ms
    finally:
        await alive.close()
    for stream in await dead.streams():
        assert (await world.redis.xpending(stream, "books"))["pending"] == 0
    assert (await reconcile_books(books, world.redis)).ok


async def test_reconcile_names_the_entries_that_explain_drift(world: World, books: Conn, postgres_url: str) -> None:
    await world.user("ann", cards=20)
    await world.user(NEAR)
    await world.befriend("ann", NEAR)
    member = BooksConsumer(world.redis, postgres_url, consumer="books-1")
    try:
        await member.run(once=True)
        assert (await reconcile_books(books, world.redis)).ok
        # a gift PostgreSQL has not seen yet: drift, explained by the entries still in Redis
        await world.clearing.reserve("late", "ann", NEAR, "note", 2)
        await world.clearing.accept("late", NEAR)
        result = await reconcile_books(books, world.redis)
        assert not result.ok and all(d.explained for d in result.drift)
        assert {d.account for d in result.drift} >= {"avail:ann", f"avail:{NEAR}"}
        ann = next(d for d in result.drift if d.account == "avail:ann")
        assert any(" hold " in e and "gift late" in e for e in ann.unwritten)
        # a change of value made behind the ledger's back: not explained, and shown with
        # PostgreSQL's latest entries of the account
        await member.run(once=True)
        await world.redis.hincrby(world.keys.balance(FAR), "note", 7)
        await world.redis.hincrby(world.keys.balance("ann"), "note", 5)
        result = await reconcile_books(books, world.redis)
        assert [(d.account, d.books, d.redis, d.explained) for d in result.drift] == [
            ("avail:ann", 20 * world.rules.units_per_card - 2 * world.rules.units_per_card,
             20 * world.rules.units_per_card - 2 * world.rules.units_per_card + 5, False),
            (f"avail:{FAR}", 0, 7, False)]
        assert any("gift late" in e for e in result.drift[0].recent)
        await world.redis.hincrby(world.keys.balance(FAR), "note", -7)
        await world.redis.hincrby(world.keys.balance("ann"), "note", -5)
        assert (await reconcile_books(books, world.redis)).ok
    finally:
        await member.close()


async def test_restore_rebuilds_an_emptied_redis(world: World, books: Conn, postgres_url: str) -> None:
    await traffic(world)
    member = BooksConsumer(world.redis, postgres_url, consumer="books-1")
    try:
        await member.run(once=True)
    finally:
        await member.close()
    before = await check_invariant(world.redis, world.rules)
    with pytest.raises(RestoreRefused):
        await restore(books, world.redis)  # never over live data

    if isinstance(world.redis, RedisCluster):  # the total loss
        await world.redis.flushall(target_nodes="primaries")
    else:
        await world.redis.flushall()
    assert (await check_invariant(world.redis, world.rules)).per_kind.get("note", {}).get("minted", 0) == 0
    done = await restore(books, world.redis)
    assert done.holds == []  # every gift of the traffic was decided
    after = await check_invariant(world.redis, world.rules)
    assert after.ok, after.violations
    assert after.per_kind == before.per_kind  # minted, available, held, consumed, transit per kind
    result = await reconcile_books(books, world.redis)
    assert result.ok, result.report()
    # the restored balances carry on: a new gift is written and reconciles too
    await world.user("ann")  # the profile is not in the ledger: the platform upserts users again
    await world.user(NEAR)
    await world.befriend("ann", NEAR)
    await world.clearing.reserve("after", "ann", NEAR, "note", 1)
    await world.clearing.accept("after", NEAR)
    member = BooksConsumer(world.redis, postgres_url, consumer="books-1")
    try:
        await member.run(once=True)
    finally:
        await member.close()
    assert (await reconcile_books(books, world.redis)).ok


# ---------------------------------------------------------------- faults, through the CLI
def cli_env(redis_url: str, postgres_url: str) -> dict[str, str]:
    return {**os.environ, "NOTECARD_REDIS_URL": redis_url, "NOTECARD_POSTGRES_URL": postgres_url}


async def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "notecard", "ledger", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def pending_of(redis: aioredis.Redis, consumer: str) -> int:
    total = 0
    for stream in await StreamConsumer(redis, "books", "probe").streams():
        total += len(await redis.xpending_range(stream, "books", "-", "+", 10_000, consumername=consumer))
    return total


async def wait_for(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class GiftFlow:
    """Gifts from four senders to one recipient, one after the other, until stopped; a third
    declined, the rest accepted."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.senders = [f"s{i}" for i in range(4)]
        self.sent = 0
        self.flowing = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for user in [*self.senders, "r"]:
            await self.w.user(user, cards=1_000_000)
        for user in self.senders:
            await self.w.befriend(user, "r")
        self.task = asyncio.create_task(self._run())
        await self.flowing.wait()

    async def _run(self) -> None:
        clearing = self.w.clearing
        while True:
            gid = f"g{self.sent}"
            await clearing.reserve(gid, self.senders[self.sent % len(self.senders)], "r", "note", 1)
            await (clearing.accept if self.sent % 3 else clearing.decline)(gid, "r")
            self.sent += 1
            self.flowing.set()
            await asyncio.sleep(0)

    async def more_than(self, count: int) -> bool:
        if self.task is not None and self.task.done():
            self.task.result()  # the gifts' failure, if they stopped
        return self.sent > count

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Members:
    """``notecard ledger`` processes (small batches, a short claim time), stderr to a file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, name: str) -> asyncio.subprocess.Process:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "notecard", "ledger", "--consumer", name, "--count", "5", "--claim-idle-ms",
                "300", "--status-every", "0", env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=log)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    async def kill_one_mid_batch(self, redis: aioredis.Redis) -> None:
        """Kill a member by its PID while it holds a batch it has not acknowledged (read,
        maybe written, not XACKed): tried until a kill lands in that window."""
        for attempt in range(5):
            name = f"victim{attempt}"
            victim = await self.start(name)

            async def holds_a_batch(name: str = name) -> bool:
                return await pending_of(redis, name) > 0

            await wait_for("the victim to hold a batch", holds_a_batch)
            os.kill(victim.pid, signal.SIGKILL)
            await victim.wait()
            if await holds_a_batch():
                return
        raise AssertionError("no kill landed between a read and its acknowledgement")

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def caught_up(env: dict[str, str]) -> bool:
    """``notecard ledger lag``: nothing undelivered and nothing unacknowledged, per stream."""
    code, out = await cli(env, "lag")
    assert code == 0, out
    streams = orjson.loads(out.strip().splitlines()[-1])["streams"]
    return bool(streams) and all(s == {"undelivered": 0, "pending": 0} for s in streams.values())


@pytest.mark.slow
async def test_no_drift_after_a_consumer_killed_mid_batch_and_a_postgres_restart(
        redis_server: LocalRedis, redis: aioredis.Redis, postgres_server: LocalPostgres, postgres_url: str,
        books: Conn, tmp_path: Path) -> None:
    w = await World.build(redis, GiftRules(daily_send_limit=10_000, daily_receive_limit=10_000))
    env = cli_env(redis_server.url, postgres_url)
    flow = GiftFlow(w)
    members = Members(env, tmp_path)
    try:
        await flow.start()
        await members.kill_one_mid_batch(redis)
        survivor = await members.start("survivor")  # claims the victim's batch once idle
        start = await entry_count(books)
        await wait_for("the survivor to write", lambda: more_entries(postgres_url, start))
        postgres_server.restart()  # cuts the survivor's connection while gifts flow
        after_restart = flow.sent
        await wait_for("gifts after the restart", lambda: flow.more_than(after_restart + 20))
        await flow.stop()
        await wait_for("the survivor to catch up, the victim's batch included", lambda: caught_up(env))
        survivor.send_signal(signal.SIGTERM)
        await survivor.wait()
        # the restart reached the survivor: a write failed and was tried again
        assert "PostgreSQL write failed" in members.log("survivor")

        code, out = await cli(env, "reconcile")
        assert code == 0 and "drift: 0 accounts" in out, out
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:  # books' went with the restart
            assert sorted(await written_ids(conn)) == sorted(e.id for e in await stream_entries(redis))
        report = await w.check()
        assert report.ok, report.violations
    finally:
        await flow.stop()
        await members.stop()


async def more_entries(url: str, than: int) -> bool:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await entry_count(conn) > than


async def test_reconcile_and_restore_from_the_command_line(
        redis_server: LocalRedis, redis: aioredis.Redis, postgres_url: str) -> None:
    w = await World.build(redis)
    await w.user("ann", cards=5)
    env = cli_env(redis_server.url, postgres_url)
    code, out = await cli(env, "--once", "--status-every", "0")
    assert code == 0, out
    assert (await cli(env, "reconcile"))[0] == 0
    await redis.hincrby(w.keys.balance("ann"), "note", 3)
    units = 5 * w.rules.units_per_card
    code, out = await cli(env, "reconcile")
    assert code == 1 and f"avail:ann note: postgres {units}, redis {units + 3} (not explained" in out
    assert " mint " in out  # the account's latest entry, from PostgreSQL
    code, out = await cli(env, "restore")
    assert code == 1 and "holds balances already" in out and "Traceback" not in out
    await redis.flushall()
    code, out = await cli(env, "restore")
    assert code == 0, out
    assert (await w.clearing.balances("ann")).available["note"] == units  # PostgreSQL's balance, not the drifted one
    code, out = await cli({**env, "NOTECARD_POSTGRES_URL": ""}, "reconcile")
    assert code == 2 and "NOTECARD_POSTGRES_URL" in out and "Traceback" not in out
