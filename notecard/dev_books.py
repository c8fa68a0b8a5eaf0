"""``notecard dev``'s book of record: ``NOTECARD_POSTGRES_URL`` when set, else a local
PostgreSQL in a temporary folder (gone when the command ends), and a ``notecard ledger``
process writing every ledger stream to it (every retained entry, since the previous runs'
entries are still in Redis). Without PostgreSQL's server binaries, dev runs
on without a book of record and says how to get one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg

from gateway import GatewaySettings, close_store, connect_store
from ledger.cli import POSTGRES_ENV
from ledger.migrate import migrate
from ledger.reconcile import reconcile_books
from notecard.local_postgres import LocalPostgres, PostgresNotInstalled

log = logging.getLogger("notecard.runner")

#: How long the check after the demo waits for the consumer to write the demo's entries.
CATCH_UP_S = 60.0


@contextlib.contextmanager
def ledger_books(redis_url: str | None) -> Iterator[str | None]:
    """Yield the PostgreSQL URL the consumer writes to (None: no PostgreSQL)."""
    configured = os.environ.get(POSTGRES_ENV)
    server: LocalPostgres | None = None
    if not configured:
        try:
            server = LocalPostgres().start()
        except PostgresNotInstalled as exc:
            print(f"ledger: no book of record ({exc})", flush=True)
            yield None
            return
        log.info("started a local PostgreSQL", extra={"address": server.address, "dir": str(server.root)})
    url = configured or (server.url if server else "")
    env = dict(os.environ, **{POSTGRES_ENV: url})
    if redis_url:
        env["NOTECARD_REDIS_URL"] = redis_url
    command = [sys.executable, "-m", "notecard", "ledger", "--consumer", "dev", "--status-every", "60"]
    if server is not None:
        # The Redis of `notecard dev` keeps its data between runs but this PostgreSQL is new:
        # a group of its own reads every retained entry again, from the streams' start, where
        # the previous run's group would go on from where that run's (gone) PostgreSQL stopped.
        command += ["--group", f"dev-{secrets.token_hex(4)}"]
    consumer = subprocess.Popen(command, env=env)
    try:
        yield url
    finally:
        consumer.terminate()
        try:
            consumer.wait(timeout=15)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait(timeout=15)
        if server is not None:
            server.stop()


async def _check(settings: GatewaySettings, redis_url: str | None, postgres_url: str) -> str:
    # from the environment as the nodes read it: a cluster's URL becomes its node list there
    topology = await connect_store(GatewaySettings.from_env(dict(os.environ, NOTECARD_REDIS_URL=redis_url))
                                   if redis_url else settings)
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await migrate(conn)
            deadline = time.monotonic() + CATCH_UP_S
            while True:
                result = await reconcile_books(conn, topology.general)
                if result.ok or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)  # the consumer is still writing the demo's entries
    finally:
        await close_store(topology)
    if result.ok:
        return f"ledger: PostgreSQL holds {result.entries} entries; its balances equal Redis's (0 drift)"
    return "ledger: PostgreSQL and Redis differ:\n" + result.report()


def books_check(settings: GatewaySettings, redis_url: str | None, postgres_url: str) -> str:
    """After the demo: PostgreSQL's balances against Redis's, once the consumer caught up."""
    return asyncio.run(_check(settings, redis_url, postgres_url))
