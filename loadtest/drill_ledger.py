"""The drill's book of record, live: PostgreSQL and ``notecard ledger`` members run through
the whole drill, and take faults of their own (docs/ledger.md "Under faults").

Why live: a consumer run once after the drill shows that the entries can be written, not
that a member killed between its read and its acknowledgement, a PostgreSQL restarted
under a batch, or a Redis primary failing over under the members loses or doubles
nothing. So the members are real ``python -m notecard ledger`` processes in one group,
kept running by a small supervisor (as systemd's ``Restart=always`` would: a member exits
when Redis fails under it and is started again under its own name), and during the
workload:

- ``consumer_kill``: a member is SIGKILLed while it holds a batch: with the members'
  writes held by a table lock (a slow PostgreSQL), the kill waits until a member's INSERT
  waits for that lock while the group shows entries delivered to it and not acknowledged
  (its batch is between the read and the ``XACK``), then checks they are still pending
  after the kill; the supervisor starts it again under the same name, which reads them
  first;
- ``postgres_restart``: ``pg_ctl restart -m fast`` under traffic, also while a member holds
  a batch it is writing (held the same way); the members wait it out with their batch kept.

After the drill settles, the members must drain every stream (nothing undelivered or
pending in the group), are stopped, and ``reconcile_books`` (``notecard ledger
reconcile``) compares PostgreSQL with Redis per account and kind: every drift is a
violation, listed in the report's ``books`` numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from redis import exceptions as rx

from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.ledger import ledger_streams
from clearing.topology import AnyRedis
from ledger.reconcile import reconcile_books
from loadtest.drill_checks import Verdict
from notecard.local_postgres import LocalPostgres, PostgresNotInstalled

log = logging.getLogger("notecard.drill.ledger")

GROUP = "books"
#: Members of the group (one is killed, the other keeps writing meanwhile).
MEMBERS = 2
#: A member left idle this long has its entries claimed by the other (short: the drill is).
CLAIM_IDLE_MS = 3000
#: How often the supervisor looks at its members, and the kill at the group.
SUPERVISE_EVERY_S = 0.2
PENDING_POLL_S = 0.05
#: Taken by the kill (see kill_mid_batch): conflicts with the members' INSERTs, not with reads.
HOLD_WRITES = "LOCK TABLE ledger_entry, gift_event IN SHARE ROW EXCLUSIVE MODE"
#: The lock is held this long at a time, then let go for RELEASE_S.
HOLD_S = 2.0
RELEASE_S = 0.3
#: The members' PostgreSQL application_name is this and their name.
APP_PREFIX = "drill-ledger-"
#: The members whose write waits for the lock HOLD_WRITES took.
WAITING = """SELECT DISTINCT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE NOT l.granted AND l.relation IN ('ledger_entry'::regclass, 'gift_event'::regclass)
AND a.query LIKE '%INSERT INTO%'"""
#: Where in the workload the two faults fall (fractions of its duration); each waits for a
#: batch in flight. The kill waits from KILL_AT for as long as the clients send: the drill
#: keeps them sending until these faults are done (FAULTS_WAIT_S at most), so on a starved
#: machine, where members start late or write few batches, the kill comes later instead of
#: missing its batch; it gives up KILL_GRACE_S after the workload (then a member is killed
#: between batches and the fault's note says so). The restart (not before RESTART_AT, nor
#: before the kill is done) waits until FAULTS_BY, or RESTART_WAIT_S from its start when that
#: is later, then restarts PostgreSQL all the same.
KILL_AT = 0.2
KILL_GRACE_S = 30.0
RESTART_AT = 0.5
FAULTS_BY = 0.95
RESTART_WAIT_S = 5.0
#: How long past the workload the drill keeps its clients sending for these faults: more
#: than KILL_GRACE_S + RESTART_WAIT_S and a restart take.
FAULTS_WAIT_S = 60.0
#: The members have this long to start and connect to PostgreSQL.
READY_TIMEOUT_S = 90.0
#: After the drill settled, the members have this long to drain every stream.
DRAIN_TIMEOUT_S = 60.0

Connect = Callable[[], Awaitable[AnyRedis]]


@dataclasses.dataclass(slots=True)
class LedgerFault:
    kind: str
    at_s: float
    #: consumer_kill: the member killed
    member: str = ""
    #: consumer_kill: entries pending at the member just before / after the SIGKILL
    pending_before: int = 0
    pending_after: int = 0
    took_s: float = 0.0
    error: str = ""
    #: what did not go as hoped without being an error (a restart or a kill with no batch in flight)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(slots=True)
class Member:
    name: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: set while the drill kills it on purpose (the supervisor does not count that exit)
    killed: bool = False
    #: exit statuses of runs that ended without the drill asking (Redis failed under it)
    exits: list[int] = dataclasses.field(default_factory=list)


class LedgerRig:
    """PostgreSQL plus ``members`` ``notecard ledger`` processes over the drill's Redis.

    ``env`` is what the members run with (a gateway node's environment: it finds Redis the
    same way); ``connect`` gives a fresh client to the current primary (or the cluster),
    for watching the group and for the final reconcile."""

    def __init__(self, env: dict[str, str], work: Path, connect: Connect, *, members: int = MEMBERS,
                 keys: KeySchema = DEFAULT_KEYS) -> None:
        self.env = dict(env)
        self.work = work
        self.connect = connect
        self.keys = keys
        self.postgres = LocalPostgres(durable=False)
        self.members = [Member(f"m{i}", work / f"ledger-m{i}.log") for i in range(members)]
        self.faults: list[LedgerFault] = []
        self.missing = ""
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------ life
    async def start(self) -> bool:
        """Start PostgreSQL and the members; False (and ``missing`` says why) without
        PostgreSQL's server binaries."""
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(self.postgres.start)
        except PostgresNotInstalled as exc:
            self.missing = str(exc)
            return False
        self.env["NOTECARD_POSTGRES_URL"] = self.postgres.url
        for member in self.members:
            self._spawn(member)
        self._supervisor = asyncio.create_task(self._supervise())
        await self._wait_connected()
        return True

    async def _wait_connected(self) -> None:
        """Until every member is connected to PostgreSQL (it connects and migrates before it
        reads anything): on a busy machine a process takes seconds to start, and the faults
        are for members that run during the workload."""
        names = {APP_PREFIX + m.name for m in self.members}
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with await psycopg.AsyncConnection.connect(self.postgres.url, autocommit=True) as conn:
            while True:
                cur = await conn.execute("SELECT DISTINCT application_name FROM pg_stat_activity")
                if names <= {str(row[0]) for row in await cur.fetchall()}:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the ledger members did not connect to PostgreSQL in {READY_TIMEOUT_S:.0f} s; "
                                       f"logs in {self.work}")
                await asyncio.sleep(0.2)

    def _spawn(self, member: Member) -> None:
        with member.log_path.open("ab") as out:
            member.process = subprocess.Popen(
                [sys.executable, "-m", "notecard", "ledger", "--consumer", member.name, "--group", GROUP,
                 "--claim-idle-ms", str(CLAIM_IDLE_MS), "--status-every", "2"],
                # libpq names the member's connections: the faults see whose write waits
                env={**self.env, "PGAPPNAME": APP_PREFIX + member.name}, stdout=out, stderr=out)
        member.starts += 1

    async def _supervise(self) -> None:
        while not self._stopping:
            for member in self.members:
                if member.process is not None and (code := member.process.poll()) is not None:
                    if not member.killed:
                        member.exits.append(code)
                    member.killed = False
                    self._spawn(member)
            await asyncio.sleep(SUPERVISE_EVERY_S)

    async def stop_members(self) -> None:
        """SIGTERM every member (a member stops between batches or loses nothing unacknowledged)."""
        self._stopping = True
        if self._supervisor is not None:
            await self._supervisor
            self._supervisor = None
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
        for member in self.members:
            if member.process is not None:
                try:
                    await asyncio.to_thread(member.process.wait, 15)
                except subprocess.TimeoutExpired:
                    member.process.kill()
                    await asyncio.to_thread(member.process.wait)

    async def close(self) -> None:
        await self.stop_members()
        await asyncio.to_thread(self.postgres.stop)

    # ------------------------------------------------------------ faults
    async def run_faults(self, duration_s: float) -> None:
        """The two faults at their place in a workload of ``duration_s`` starting now."""
        t0 = time.monotonic()
        await asyncio.sleep(duration_s * KILL_AT)
        await self.kill_mid_batch(t0, until=t0 + duration_s + KILL_GRACE_S)
        await asyncio.sleep(max(0.0, duration_s * RESTART_AT - (time.monotonic() - t0)))
        restart_by = max(t0 + duration_s * FAULTS_BY, time.monotonic() + RESTART_WAIT_S)
        await self.restart_postgres(t0, until=restart_by)

    async def _pending_of(self, redis: AnyRedis, streams: list[str], names: set[str]) -> int:
        total = 0
        for stream in streams:
            with contextlib.suppress(rx.ResponseError):  # NOGROUP: not made yet on a new stream
                summary = await redis.xpending(stream, GROUP)
                for row in summary.get("consumers") or []:
                    if _text(row["name"]) in names:
                        total += int(row["pending"])
        return total

    async def _writers(self, conn: psycopg.AsyncConnection[Any], redis: AnyRedis, streams: list[str],
                       names: set[str], pending: int) -> tuple[set[str], int]:
        """Which of ``names`` write a batch that waits for the lock, and how many entries
        they hold pending. Pending alone may be a member that died (Redis failed under it):
        the faults are for a member whose write is in flight."""
        if not pending:
            return set(), 0
        cur = await conn.execute(WAITING)
        writing = {str(row[0]).removeprefix(APP_PREFIX) for row in await cur.fetchall()} & names
        return writing, (await self._pending_of(redis, streams, writing) if writing else 0)

    async def _with_a_batch_held(self, fault: LedgerFault, names: set[str], until: float,
                                 act: Callable[[set[str]], Awaitable[None]]) -> None:
        """With the members' writes held by a table lock (a slow PostgreSQL), wait until one
        of ``names`` is writing a batch (its INSERT waits for the lock) whose entries the
        group shows delivered to it and not acknowledged, then ``act(writing)`` (the names
        of such members) while they are. A batch takes a millisecond or two to write, too
        short a window to hit by polling; a held batch stays delivered and unacknowledged
        until the lock goes, so the fault lands between the read and the ``XACK`` for
        certain, not by chance. Gives up at ``until`` (monotonic), as ``fault.error``."""
        redis: AnyRedis | None = None
        streams: list[str] = []
        #: what the wait saw, for the error when it gives up
        seen = {"polls": 0, "redis_errors": 0, "pending": 0, "writing": 0, "stale": 0}
        try:
            async with await psycopg.AsyncConnection.connect(self.postgres.url, autocommit=True) as conn:
                while time.monotonic() < until:
                    # Held for a while, then let go for a moment: a member starting again
                    # (after the kill, or after Redis failed under it) must get through its
                    # connection's set-up, and a held member's write goes through.
                    async with conn.transaction():
                        await conn.execute(HOLD_WRITES)
                        hold_until = min(until, time.monotonic() + HOLD_S)
                        while time.monotonic() < hold_until:
                            seen["polls"] += 1
                            try:
                                if redis is None:
                                    redis = await self.connect()
                                    streams = await ledger_streams(redis, self.keys)
                                pending = await self._pending_of(redis, streams, names)
                            except Exception:  # the primary may be failing over: a new client
                                seen["redis_errors"] += 1
                                if redis is not None:
                                    with contextlib.suppress(Exception):
                                        await redis.aclose()
                                redis = None
                                await asyncio.sleep(0.1)
                                continue
                            seen["pending"] = max(seen["pending"], pending)
                            writing, pending = await self._writers(conn, redis, streams, names, pending)
                            seen["writing"] = max(seen["writing"], len(writing))
                            if writing and not pending:
                                # a member writes a batch this client does not see pending: the
                                # client still reads a server that is no longer the primary
                                seen["stale"] += 1
                                with contextlib.suppress(Exception):
                                    await redis.aclose()
                                redis = None
                                continue
                            if pending > 0:
                                fault.pending_before = pending
                                await act(writing)
                                with contextlib.suppress(Exception):
                                    fault.pending_after = await self._pending_of(redis, streams, writing)
                                return
                            await asyncio.sleep(PENDING_POLL_S)
                    await asyncio.sleep(RELEASE_S)
                fault.error = f"no batch in flight at {sorted(names)} within the workload ({seen})"
        except psycopg.Error as exc:
            if not fault.pending_before:  # after a restart, the lock's connection is gone: expected
                fault.error = f"PostgreSQL failed: {str(exc).strip()[:200]}"
        finally:
            if redis is not None:
                with contextlib.suppress(Exception):
                    await redis.aclose()

    async def kill_mid_batch(self, t0: float, *, until: float) -> LedgerFault:
        """SIGKILL a member while it holds a batch it is writing (delivered, not
        acknowledged); the supervisor starts it again under the same name."""
        fault = LedgerFault("consumer_kill", time.monotonic() - t0)
        self.faults.append(fault)
        by_name = {m.name: m for m in self.members}

        async def kill(waiting: set[str]) -> None:
            member = by_name[min(waiting)]
            process = member.process
            fault.member = member.name
            if process is None or process.poll() is not None:
                fault.error = f"{member.name} was not running"
                return
            member.killed = True
            process.kill()  # SIGKILL: no handler, no acknowledgement
            await asyncio.to_thread(process.wait)
            fault.at_s = time.monotonic() - t0

        await self._with_a_batch_held(fault, set(by_name), until, kill)
        if fault.error.startswith("no batch in flight"):
            # No member wrote while the clients sent, up to KILL_GRACE_S past the workload
            # (under `strict` with a replica down the members hold their batches): a member is
            # killed all the same, between batches, and the report says so.
            # tests/test_drill_ledger.py asserts a kill with a batch in hand (and runs the
            # drill again when a run found none).
            fault.note, fault.error = fault.error, ""
            await kill(set(by_name))
        return fault

    async def restart_postgres(self, t0: float, *, until: float) -> LedgerFault:
        """``pg_ctl restart -m fast`` while a member holds a batch it is writing: the write
        fails, the member waits PostgreSQL out with the batch kept and writes it again."""
        fault = LedgerFault("postgres_restart", time.monotonic() - t0)
        self.faults.append(fault)

        async def restart(_: set[str]) -> None:
            fault.at_s = time.monotonic() - t0
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.postgres.restart)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                fault.error = str(exc)[:300]
            fault.took_s = time.monotonic() - started

        await self._with_a_batch_held(fault, {m.name for m in self.members}, until, restart)
        if fault.error.startswith("no batch in flight"):
            # No member wrote during the window (under `strict`, with a replica down, the
            # members hold their batches until enough replicas have them): PostgreSQL is
            # restarted under the traffic all the same, and the report says so.
            fault.note, fault.error = fault.error, ""
            await restart(set())
        return fault

    # ------------------------------------------------------------ after the drill
    async def drained(self, redis: AnyRedis) -> dict[str, dict[str, Any]]:
        """Per stream: its last entry, the group's last delivered one, and how many are pending."""
        out: dict[str, dict[str, Any]] = {}
        for stream in await ledger_streams(redis, self.keys):
            last = await redis.xrevrange(stream, count=1)
            row: dict[str, Any] = {"last": _text(last[0][0]) if last else "0-0", "delivered": None, "pending": -1}
            with contextlib.suppress(Exception):
                for info in await redis.xinfo_groups(stream):
                    fields = {_text(k): v for k, v in info.items()}
                    if _text(fields.get("name", b"")) == GROUP:
                        row["delivered"] = _text(fields.get("last-delivered-id", b""))
                        row["pending"] = int(fields.get("pending", 0))
            out[stream] = row
        return out

    async def wait_drained(self, timeout_s: float = DRAIN_TIMEOUT_S) -> tuple[bool, dict[str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout_s
        state: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                redis = await self.connect()
                try:
                    state = await self.drained(redis)
                finally:
                    await redis.aclose()
                if state and all(r["delivered"] == r["last"] and r["pending"] == 0 for r in state.values()):
                    return True, state
            await asyncio.sleep(0.5)
        return False, state

    async def check(self, redis: AnyRedis, verdict: Verdict, *, durable: bool) -> None:
        """Drain, stop the members, reconcile: drift per account and kind is a violation,
        except where the bank check found acknowledged writes lost under a setting that does
        not promise them (``durable`` False): entries PostgreSQL took from the old primary
        and the failover lost are then drift by design, reported and not a violation."""
        if self.missing:
            verdict.numbers["books"] = f"not checked: {self.missing}"
            return
        started = time.monotonic()
        drained, streams = await self.wait_drained()
        drain_s = time.monotonic() - started
        await self.stop_members()
        if not drained:
            verdict.violations.append(f"books: the ledger members did not drain the streams in "
                                      f"{DRAIN_TIMEOUT_S:.0f} s: {streams}")
        for fault in self.faults:
            if fault.error:
                verdict.violations.append(f"books: fault {fault.kind} did not run as planned: {fault.error}")
            if fault.kind == "consumer_kill" and not fault.error and not fault.note and fault.pending_after <= 0:
                verdict.violations.append("books: the killed member's batch was acknowledged before the kill")
        async with await psycopg.AsyncConnection.connect(self.postgres.url) as conn:
            result = await reconcile_books(conn, redis, self.keys)
        by_design = not durable and bool(verdict.numbers.get("writes_lost"))
        if not by_design:
            verdict.violations += [f"books: {line}" for drift in result.drift for line in drift.lines()]
        verdict.numbers["books"] = {
            "entries": result.entries, "accounts": result.accounts, "unwritten": result.unwritten,
            "drift": len(result.drift),
            "drift_is_violation": not by_design,
            "drift_by_account": [{"account": d.account, "kind": d.kind, "postgres": d.books, "redis": d.redis,
                                  "explained_by_unwritten": d.explained} for d in result.drift],
            "drain_s": round(drain_s, 1),
            "faults": [f.to_json() for f in self.faults],
            "members": {m.name: {"starts": m.starts, "exits_on_their_own": m.exits,
                                 "postgres_retries": _count(m.log_path, "PostgreSQL write failed"),
                                 "redis_failures": _count(m.log_path, "Redis failed")} for m in self.members},
        }


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _count(path: Path, needle: str) -> int:
    try:
        return path.read_text(errors="replace").count(needle)
    except OSError:
        return 0

