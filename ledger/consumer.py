"""``notecard ledger``: a member of a consumer group over every server's ledger stream that
writes the records to PostgreSQL.

Per read (``StreamConsumer.read``: this member's own unacknowledged entries after a restart
first, then those a dead member left idle for ``claim_idle_ms``, then new ones) one
transaction inserts the batch, idempotently by record id; ``XACK`` follows the ``COMMIT``.
So a crash before the commit leaves the entries pending (this member gets them again on
restart, any other member claims them once idle), and a crash between the commit and the
acknowledgement writes them again, which the ids turn into nothing. A PostgreSQL that is
down or restarting is waited for, with the batch kept, and nothing is acknowledged
meanwhile. A Redis that fails under a read or an acknowledgement (a failover, a restart)
is waited for too: the member then reads its own unacknowledged entries first again.
With WAIT configured (``NOTECARD_WAIT_REPLICAS``, ``NOTECARD_DURABILITY``), a batch is
written only once that many replicas hold it (one Redis with Sentinel; not checked on a
Redis Cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

import psycopg
import redis.asyncio as aioredis
from redis import exceptions as rx

from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.ledger import CLAIM_IDLE_MS, Batch, StreamConsumer
from clearing.topology import AnyRedis, Durability
from ledger.books import Conn, write_records
from ledger.migrate import migrate

log = logging.getLogger("notecard.ledger")

#: Between two empty reads (reads never block: a cluster cannot block on several slots).
IDLE_POLL_S = 0.2
#: A failed write is tried again after this, doubling up to the cap.
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 5.0
#: Stream entries per stream and read, one transaction: 1,024 drained a backlog about 1.5x
#: as fast as 256 (loadtest/ledger_drain.py, docs/ledger.md "Cost").
BATCH = 1024
#: Entries are written as soon as they are read (no replicas waited for).
NO_WAIT = Durability()
#: The default group name of the book of record.
GROUP = "books"
#: What Redis raises while it fails over or restarts (READONLY: a demoted primary), waited out.
REDIS_FAILURES = (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.ClusterDownError, rx.TryAgainError)


@dataclasses.dataclass(slots=True)
class Progress:
    """What this member did so far (reported by ``--status-every`` and tests)."""

    batches: int = 0
    entries: int = 0
    events: int = 0
    #: records delivered again and already written (a redelivery after a crash)
    repeated: int = 0
    trimmed: int = 0
    bad: int = 0
    write_failures: int = 0
    #: reads or acknowledgements that Redis failed (and that were tried again)
    redis_failures: int = 0
    #: batches read again because fewer than the configured replicas held them
    unreplicated: int = 0
    lag: dict[str, int] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class BooksConsumer:
    """One member ``consumer`` of ``group``; ``postgres_url`` is connected (and migrated) on
    first use and again after a failure."""

    def __init__(self, redis: AnyRedis, postgres_url: str, *, group: str = GROUP, consumer: str,
                 keys: KeySchema = DEFAULT_KEYS, count: int = BATCH, claim_idle_ms: int = CLAIM_IDLE_MS,
                 durability: Durability = NO_WAIT) -> None:
        self._durability = durability
        self._pinned: aioredis.Redis | None = None
        self._base = redis
        if durability.wait_replicas and isinstance(redis, aioredis.Redis):
            # One connection for the reads and the WAIT: WAIT counts the replicas that hold
            # everything this connection wrote, and XREADGROUP is a write that follows the
            # entries it delivers in the replication stream.
            redis = self._pinned = redis.client()
        self.member = StreamConsumer(redis, group, consumer, keys, start="0", count=count,
                                     claim_idle_ms=claim_idle_ms)
        self._url = postgres_url
        self._conn: Conn | None = None
        self.progress = Progress()

    async def connect(self) -> None:
        """Connect to PostgreSQL and apply the migrations: a wrong URL or schema fails here,
        before any entry is taken."""
        await self._connection()

    async def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._url)
            await migrate(self._conn)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        if self._pinned is not None:
            await self._pinned.aclose()  # its connection goes back; the pool is the caller's

    async def _write(self, batch: Batch) -> None:
        """Commit the batch, waiting out PostgreSQL failures (restart, network)."""
        delay = RETRY_FIRST_S
        while True:
            try:
                conn = await self._connection()
                async with conn.transaction():
                    entries, events = await write_records(conn, batch.records)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self.progress.write_failures += 1
                log.warning("PostgreSQL write failed, trying again in %.1fs: %s", delay, str(exc).strip())
                if self._conn is not None:
                    await self._conn.close()
                self._conn = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP_S)
                continue
            self.progress.entries += entries
            self.progress.events += events
            self.progress.repeated += len(batch.records) - entries - events
            return

    async def _repin(self) -> None:
        """After Redis failed: a new connection. The pinned one, reconnected, went on
        reaching the demoted primary ("The previous master is now a slave") while the
        pool's new connections reached the new one."""
        old = self._pinned
        if old is None or not isinstance(self._base, aioredis.Redis):
            return
        if old.connection is not None:
            with contextlib.suppress(Exception):
                await old.connection.disconnect()
        with contextlib.suppress(Exception):
            await old.aclose()
        self._pinned = self._base.client()
        self.member.use(self._pinned)

    async def _replicated(self) -> bool:
        """Whether ``wait_replicas`` replicas hold what this member read (at once when no
        WAIT is configured, or on a Redis Cluster, where this is not checked)."""
        if self._pinned is None:
            return True
        wanted = self._durability.wait_replicas
        acked = await self._pinned.execute_command(  # type: ignore[no-untyped-call]
            "WAIT", wanted, self._durability.wait_timeout_ms)
        return int(acked) >= wanted

    async def step(self) -> Batch:
        """Read one batch, write it, acknowledge it. With WAIT configured, a batch is written
        only once enough replicas hold its entries: an entry read from a primary that a
        failover then loses (a write whose WAIT failed, whose client retries it under a new
        call id on the new primary) would otherwise stay in PostgreSQL, doubled."""
        batch = await self.member.read()
        delay = RETRY_FIRST_S
        while batch.ids and not await self._replicated():
            self.progress.unreplicated += 1
            log.warning("fewer than %d replicas hold the entries read; reading them again in %.1fs",
                        self._durability.wait_replicas, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_CAP_S)
            self.member.rewind()
            batch = await self.member.read()
        if batch.records:
            await self._write(batch)
        for problem in batch.bad:
            log.error("skipped an unreadable ledger entry: %s", problem)
        if batch.trimmed:
            log.error("%d ledger entries were trimmed before this group read them: lost to PostgreSQL (raise "
                      "NOTECARD_LEDGER_MAXLEN or keep the consumer running)", batch.trimmed)
        self.progress.trimmed += batch.trimmed
        self.progress.bad += len(batch.bad)
        await self.member.ack(batch)
        if batch.ids:
            self.progress.batches += 1
        return batch

    async def run(self, *, once: bool = False, status_every_s: float = 0.0,
                  on_status: Callable[[Progress], None] | None = None) -> Progress:
        """Until cancelled; with ``once``, until a read finds nothing. Every
        ``status_every_s`` (and at the end of ``once``) the lag is measured and handed to
        ``on_status``."""
        await self.connect()
        await self.member.streams()
        last_status = time.monotonic()
        delay = RETRY_FIRST_S
        while True:
            try:
                batch = await self.step()
            except REDIS_FAILURES as exc:
                # A failover or restart: the Sentinel (or cluster) client finds the new
                # primary on the next call; nothing acknowledged is lost, and what was not
                # acknowledged is read again first.
                self.progress.redis_failures += 1
                log.warning("Redis failed, trying again in %.1fs: %s", delay, exc)
                self.member.rewind()
                await self._repin()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP_S)
                continue
            delay = RETRY_FIRST_S
            due = status_every_s > 0 and time.monotonic() - last_status >= status_every_s
            done = once and not batch.ids
            if (due or done) and on_status is not None:
                self.progress.lag = await self.member.lag()
                on_status(self.progress)
                last_status = time.monotonic()
            if done:
                return self.progress
            if not batch.ids:
                await asyncio.sleep(IDLE_POLL_S)
