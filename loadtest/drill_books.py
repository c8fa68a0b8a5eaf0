"""The drill's book-of-record check: once the drill settled, every retained ledger stream
entry is written to a PostgreSQL of its own (LocalPostgres, stopped afterwards) by a
``notecard ledger`` member, and ``notecard ledger reconcile`` must find no drift against
the Redis the drill ran on (docs/ledger.md "PostgreSQL"). Without PostgreSQL's server
binaries the check says so in the report's numbers instead of failing the drill.
"""

from __future__ import annotations

import asyncio

import psycopg

from clearing.topology import AnyRedis
from ledger.consumer import BooksConsumer
from ledger.reconcile import reconcile_books
from loadtest.drill_checks import Verdict
from notecard.local_postgres import LocalPostgres, PostgresNotInstalled


async def check_books(redis: AnyRedis, verdict: Verdict) -> None:
    postgres = LocalPostgres(durable=False)
    try:
        await asyncio.to_thread(postgres.start)
    except PostgresNotInstalled as exc:
        verdict.numbers["books"] = f"not checked: {exc}"
        return
    try:
        books = BooksConsumer(redis, postgres.url, group="drill-books", consumer="drill")
        try:
            progress = await books.run(once=True)
        finally:
            await books.close()
        async with await psycopg.AsyncConnection.connect(postgres.url) as conn:
            result = await reconcile_books(conn, redis)
        verdict.violations += [f"books: {line}" for drift in result.drift for line in drift.lines()]
        verdict.numbers["books"] = {"entries": result.entries, "events": progress.events, "accounts": result.accounts,
                                    "drift": len(result.drift)}
    finally:
        await asyncio.to_thread(postgres.stop)
