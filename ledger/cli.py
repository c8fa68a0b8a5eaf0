"""``notecard ledger``: PostgreSQL as the book of record (docs/ledger.md "PostgreSQL").

    notecard ledger [run]    a consumer group member: stream entries -> PostgreSQL
    notecard ledger lag      the group's entries not yet delivered / not yet acknowledged
    notecard ledger migrate  apply the schema's migrations
    notecard ledger reconcile   balances per account and kind, PostgreSQL vs Redis (exit 1 on drift)
    notecard ledger restore  rebuild Redis's balances, holds and totals from PostgreSQL

Redis from NOTECARD_REDIS_URL / NOTECARD_REDIS_CLUSTER / NOTECARD_SENTINELS; PostgreSQL
from NOTECARD_POSTGRES_URL (or --postgres-url).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import orjson
import psycopg
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from redis import exceptions as rx

from clearing.ledger import StreamConsumer
from clearing.topology import AnyRedis
from ledger.books import Conn
from ledger.consumer import BATCH, GROUP, BooksConsumer, Progress
from ledger.migrate import migrate
from ledger.reconcile import reconcile_books
from ledger.restore import RestoreRefused, restore

T = TypeVar("T")
POSTGRES_ENV = "NOTECARD_POSTGRES_URL"
#: With metrics and no status lines, the lag is still measured this often.
METRICS_EVERY_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notecard ledger", description="PostgreSQL as the book of record of the ledger streams. Redis from "
        "NOTECARD_REDIS_URL / NOTECARD_REDIS_CLUSTER, PostgreSQL from NOTECARD_POSTGRES_URL.")
    parser.add_argument("--postgres-url",
                        help="postgresql://user:password@host:port/db (default: NOTECARD_POSTGRES_URL)")
    parser.add_argument("--group", default=GROUP, help=f"consumer group (default: {GROUP})")
    # the consumer's flags (the default action, so they stand without "run" too)
    parser.add_argument("--consumer", default=socket.gethostname(),
                        help="run: this member's name (default: the host name)")
    parser.add_argument("--once", action="store_true", help="run: stop when nothing is left to read")
    parser.add_argument("--count", type=int, default=BATCH, help=f"run: entries per stream and read (default {BATCH})")
    parser.add_argument("--claim-idle-ms", type=int, default=30_000,
                        help="run: take over entries another member left unacknowledged this long (default 30000)")
    parser.add_argument("--status-every", type=float, default=10.0,
                        help="run: progress and lag as a JSON line on stderr every this many seconds (0: never)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="run: serve Prometheus metrics (lag per stream, entries written) on this port (0: off)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="run: the metrics' address (default 127.0.0.1)")
    sub = parser.add_subparsers(dest="action")
    sub.add_parser("run", help="write every stream's entries to PostgreSQL (the default action)")
    sub.add_parser("lag", help="per stream: entries not yet delivered to the group, and delivered unacknowledged")
    sub.add_parser("migrate", help="apply the schema's migrations and exit")
    sub.add_parser("reconcile", help="compare balances per account and kind; exit 1 on drift")
    restore_p = sub.add_parser("restore", help="rebuild Redis's balances, holds and totals from PostgreSQL")
    restore_p.add_argument("--force", action="store_true", help="write even though Redis holds balances")
    return parser


def _status(progress: Progress) -> None:
    sys.stderr.write(orjson.dumps({"ledger": progress.as_dict()}).decode() + "\n")
    sys.stderr.flush()


def metrics_reporter(registry: CollectorRegistry) -> Callable[[Progress], None]:
    """Gauges in ``registry`` set from each status: the lag per stream, what was written."""
    lag = Gauge("notecard_ledger_lag_entries", "Ledger stream entries not yet delivered to the consumer group "
                "(-1: unknown, entries were trimmed before the group read them)", ["stream"], registry=registry)
    written = Gauge("notecard_ledger_written", "Records this member wrote to PostgreSQL", ["record"],
                    registry=registry)
    problems = Gauge("notecard_ledger_lost_entries", "Stream entries this member could not write: trimmed "
                     "before it read them, or unreadable", ["why"], registry=registry)

    def report(progress: Progress) -> None:
        for stream, entries in progress.lag.items():
            lag.labels(stream).set(entries)
        written.labels("entry").set(progress.entries)
        written.labels("gift_event").set(progress.events)
        problems.labels("trimmed").set(progress.trimmed)
        problems.labels("unreadable").set(progress.bad)

    return report


async def _with_redis(body: Callable[[AnyRedis], Awaitable[T]]) -> T:
    from gateway.config import GatewaySettings
    from gateway.redis_client import close_store, connect_store

    topology = await connect_store(GatewaySettings.from_env())
    try:
        return await body(topology.general)
    finally:
        await close_store(topology)


async def _lag(redis: AnyRedis, group: str) -> int:
    member = StreamConsumer(redis, group, "lag")
    out = {}
    for stream in await member.streams():
        for info in await redis.xinfo_groups(stream):
            row = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in info.items()}
            name = row.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == group:
                lag = row.get("lag")
                out[stream] = {"undelivered": -1 if lag is None else int(lag), "pending": int(row.get("pending", 0))}
    print(orjson.dumps({"group": group, "streams": out}).decode())
    return 0


async def _pg(url: str, body: Callable[[Conn], Awaitable[T]]) -> T:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
        return await body(conn)


async def _run(redis: AnyRedis, url: str, args: argparse.Namespace) -> int:
    from gateway.config import GatewaySettings

    # the nodes' WAIT: entries are written to PostgreSQL once as many replicas hold them
    durability = GatewaySettings.from_env().durability
    books = BooksConsumer(redis, url, group=args.group, consumer=args.consumer, count=args.count,
                          claim_idle_ms=args.claim_idle_ms, durability=durability)
    on_status = _status
    every = args.status_every
    if args.metrics_port:
        registry = CollectorRegistry()
        gauges = metrics_reporter(registry)
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
        every = every or METRICS_EVERY_S

        def on_status(progress: Progress) -> None:
            gauges(progress)
            if args.status_every:
                _status(progress)
    try:
        await books.run(once=args.once, status_every_s=every, on_status=on_status)
    finally:
        await books.close()
    return 0


async def _reconcile(redis: AnyRedis, url: str) -> int:
    result = await _pg(url, lambda conn: reconcile_books(conn, redis))
    print(result.report())
    return 0 if result.ok else 1


async def _restore(redis: AnyRedis, url: str, force: bool) -> int:
    done = await _pg(url, lambda conn: restore(conn, redis, force=force))
    print(f"restored {done.fields} values: {done.users} users, {done.slots} slot totals")
    if done.holds:
        print(f"holds restored without their gifts (pending at the loss): {', '.join(done.holds)}")
    return 0


async def _migrate(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        applied = await migrate(conn)
    print("applied: " + (", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing (up to date)"))
    return 0


def postgres_url_problem(url: str, source: str) -> str | None:
    """What is wrong with ``url``, given by ``source`` (``--postgres-url`` or
    ``NOTECARD_POSTGRES_URL``), in the words of every command that reads PostgreSQL (the
    setting's own check, gateway/setting_kinds.py, the password hidden); None when it will do."""
    from gateway.setting_kinds import PostgresUrl, redact_url

    try:
        PostgresUrl().check(url)
    except ValueError as exc:
        return f"{source}={redact_url(url)!r}: {exc}"
    return None


def _missing_settings(action: str, args: argparse.Namespace) -> str | None:
    from gateway.config import ConfigError, GatewaySettings

    try:
        settings = GatewaySettings.from_env()
    except ConfigError as exc:
        return f"configuration error: {exc}"
    if action != "migrate" and not (settings.redis_url or settings.redis_cluster or settings.sentinels):
        return "give the Redis: NOTECARD_REDIS_URL or NOTECARD_REDIS_CLUSTER"
    if args.postgres_url:
        problem = postgres_url_problem(args.postgres_url, "--postgres-url")
        if problem:
            return problem
    # the declared setting (gateway/config.py), already checked by from_env
    args.postgres_url = args.postgres_url or settings.postgres_url
    if action != "lag" and not args.postgres_url:
        return f"give the PostgreSQL: {POSTGRES_ENV} or --postgres-url"
    return None


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    action = args.action or "run"
    logging.basicConfig(level=logging.INFO, format="notecard ledger: %(levelname)s %(message)s", stream=sys.stderr)
    missing = _missing_settings(action, args)
    if missing:
        print(f"notecard ledger: {missing}", file=sys.stderr)
        return 2
    url: str = args.postgres_url or ""
    try:
        match action:
            case "migrate":
                return asyncio.run(_migrate(url))
            case "lag":
                return asyncio.run(_with_redis(lambda redis: _lag(redis, args.group)))
            case "reconcile":
                return asyncio.run(_with_redis(lambda redis: _reconcile(redis, url)))
            case "restore":
                return asyncio.run(_with_redis(lambda redis: _restore(redis, url, args.force)))
            case _:
                return asyncio.run(_with_redis(lambda redis: _run(redis, url, args)))
    except KeyboardInterrupt:
        return 0
    except RestoreRefused as exc:
        print(f"notecard ledger: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"notecard ledger: PostgreSQL failed: {str(exc).strip()}", file=sys.stderr)
        return 1
    except (rx.RedisError, OSError) as exc:
        # nothing acknowledged is lost: a run resumes with what it did not acknowledge
        print(f"notecard ledger: Redis failed: {exc}; run it again to resume", file=sys.stderr)
        return 1
