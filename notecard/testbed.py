"""A throwaway local deployment for tests in other languages: ``python -m notecard.testbed``.

Starts a ``redis-server`` and N gateway nodes (in development mode, so that ``/app`` hands
out development tokens; without the tokens' clock-skew leeway, so a session ends at its
token's ``exp``) on free loopback ports, with fresh secrets, in a temporary folder;
prints one JSON line::

    {"nodes": [{"name", "url", "admin_url", "pid"}, ...], "token_secret", "admin_token", "redis_pid"}

With ``--dashboards SEED:RECIPIENTS`` it also starts a PostgreSQL of its own, writes the
dashboards' generated data set there (docs/dashboards.md) and hands it to the nodes
(``NOTECARD_POSTGRES_URL``), so their ``/admin/dashboards/*`` and the console show it.

It then serves until its standard input closes or it gets SIGTERM/SIGINT, and removes
everything it started. A test may SIGKILL a node by its pid (that node only). The
TypeScript SDK's ``npm test`` and the browser tests start one per run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from notecard.cluster import LocalCluster
from notecard.local_redis import LocalRedis


def _data_set(text: str) -> tuple[int, int]:
    seed, _, recipients = text.partition(":")
    return int(seed), int(recipients or "300")


async def _write_data_set(url: str, seed: int, recipients: int) -> None:
    import psycopg

    from dashboards import generate

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await generate.write(conn, generate.build(seed, recipients))


@contextlib.contextmanager
def _dashboards(data_set: tuple[int, int] | None) -> Iterator[str | None]:
    """A PostgreSQL holding the data set (its URL), or None without ``--dashboards``."""
    if data_set is None:
        yield None
        return
    from notecard.local_postgres import LocalPostgres

    with LocalPostgres(durable=False) as server:
        asyncio.run(_write_data_set(server.url, *data_set))
        yield server.url


def _stop_at_end_of_input(stop: threading.Event) -> None:
    sys.stdin.read()
    stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notecard.testbed", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="gateway processes (default 2)")
    parser.add_argument("--dashboards", type=_data_set, metavar="SEED:RECIPIENTS",
                        help="a PostgreSQL with the dashboards' data set of this seed, for the nodes")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="notecard-testbed-") as folder, \
            _dashboards(args.dashboards) as postgres_url:
        work = Path(folder)
        redis = LocalRedis(work / "redis").start()
        try:
            # No clock-skew leeway on tokens: every process here reads the same clock, and a
            # test of a token expiring during a session expects the close at its exp.
            cluster = LocalCluster(redis.url, work / "nodes", args.nodes, env={"NOTECARD_DEV": "true",
                                                                               "NOTECARD_LOG_LEVEL": "WARNING",
                                                                               "NOTECARD_JWT_LEEWAY_S": "0"})
            urls = ",".join(node.url for node in cluster.nodes)
            for node in cluster.nodes:
                node.env["NOTECARD_PUBLIC_WS_URLS"] = urls
                if postgres_url:
                    node.env["NOTECARD_POSTGRES_URL"] = postgres_url
            with cluster:
                print(json.dumps({
                    "nodes": [{"name": n.name, "url": n.url, "admin_url": n.admin_url, "pid": n.pid}
                              for n in cluster.nodes],
                    "token_secret": cluster.token_secret,
                    "admin_token": cluster.admin_token,
                    "redis_pid": redis.process.pid if redis.process else None,
                    "log_dir": str(work / "nodes"),
                }), flush=True)
                threading.Thread(target=_stop_at_end_of_input, args=(stop,), daemon=True).start()
                stop.wait()
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
