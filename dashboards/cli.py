"""``notecard dashboards``: the business dashboards from PostgreSQL (docs/dashboards.md).

    notecard dashboards generate --seed N --recipients K   a reproducible data set into PostgreSQL
    notecard dashboards show {profile,conversion,retention} [--csv]   one dashboard, JSON or CSV
    notecard dashboards render --out DIR                   the three charts as PNG files

PostgreSQL from NOTECARD_POSTGRES_URL (or --postgres-url), checked as ``notecard ledger``
checks it; ``--local`` instead starts a PostgreSQL of its own for this run only (generate
and render in one go, as the images in docs/dashboards/ were made).

``show`` and ``render`` only read (a read-only session): the book of record's schema is
``notecard ledger migrate``'s to change, so a schema missing or older than this release's
is refused with that command's name rather than migrated behind the operator's back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import psycopg

from dashboards import export, generate, queries
from dashboards.queries import Scope
from ledger.books import Conn
from ledger.cli import POSTGRES_ENV, postgres_url_problem
from ledger.migrate import migrations, schema_version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notecard dashboards",
                                     description="Business dashboards from the PostgreSQL book of record.")
    parser.add_argument("--postgres-url",
                        help="postgresql://user:password@host:port/db (default: NOTECARD_POSTGRES_URL)")
    parser.add_argument("--local", action="store_true",
                        help="start a PostgreSQL of our own for this run only (with generate flags: then render)")
    sub = parser.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("generate", help="write a reproducible data set")
    show = sub.add_parser("show", help="print one dashboard as JSON (or CSV)")
    show.add_argument("dashboard", choices=("profile", "conversion", "retention"))
    show.add_argument("--csv", action="store_true", help="CSV instead of JSON")
    render = sub.add_parser("render", help="draw the three dashboards as PNG files")
    render.add_argument("--out", type=Path, required=True, help="folder for profile.png, conversion.png, "
                                                                 "retention.png")
    for each in (gen, render):
        each.add_argument("--seed", type=int, default=None if each is render else 1,
                          help="the data set's seed" + (" (render: generate first, with --local)"
                                                        if each is render else " (default 1)"))
        each.add_argument("--recipients", type=int, default=5000, help="recipients of the data set (default 5000)")
    for each in (show, render):
        each.add_argument("--brand", help="the brand's cards only (a gift sender)")
        each.add_argument("--campaign", help="the campaign's cards only")
        each.add_argument("--window-days", type=int, default=7, help="conversion: purchase window (default 7)")
        each.add_argument("--days", type=int, default=14, help="retention: days after the first card (default 14)")
        each.add_argument("--timezone", default="UTC", help="retention: the calendar of the cohorts (default UTC)")
    return parser


@contextlib.contextmanager
def _postgres(args: argparse.Namespace) -> Iterator[str]:
    if not args.local:
        yield args.postgres_url
        return
    from notecard.local_postgres import LocalPostgres

    with LocalPostgres(durable=False) as server:
        yield server.url


class SchemaNotReady(Exception):
    """The book of record has not been migrated to the schema this release reads."""


async def _check_schema(conn: Conn) -> None:
    have, need = await schema_version(conn), migrations()[-1].version
    if have < need:
        found = "no ledger schema" if have == 0 else f"the ledger schema at version {have}"
        raise SchemaNotReady(f"the database has {found}; this release reads version {need}: run "
                             "`notecard ledger migrate` (same NOTECARD_POSTGRES_URL or --postgres-url) first")


async def _run(args: argparse.Namespace, url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        if args.action == "generate" or (args.action == "render" and args.seed is not None):
            # writes (and migrates): a data set of its own, into a --local PostgreSQL for render
            counts = await generate.write(conn, generate.build(args.seed, args.recipients))
            print(orjson.dumps({"generated": counts, "seed": args.seed}).decode(), file=sys.stderr)
            if args.action == "generate":
                return 0
        else:
            await conn.set_read_only(True)  # from here on, a write would be refused by PostgreSQL
            await _check_schema(conn)
        scope = Scope(args.brand, args.campaign)
        if args.action == "show":
            text = await _show(conn, args, scope)
            sys.stdout.write(text)
            return 0
        from dashboards.render import render

        paths = render(args.out, await queries.profile(conn, scope),
                       await queries.conversion(conn, scope, args.window_days),
                       await queries.retention(conn, scope, args.days, args.timezone))
        for path in paths:
            print(path)
        return 0


async def _show(conn: Conn, args: argparse.Namespace, scope: Scope) -> str:
    if args.dashboard == "profile":
        report_p = await queries.profile(conn, scope)
        return export.profile_csv(report_p) if args.csv else _json(export.profile_json(report_p))
    if args.dashboard == "conversion":
        report_c = await queries.conversion(conn, scope, args.window_days)
        return export.conversion_csv(report_c) if args.csv else _json(export.conversion_json(report_c))
    report_r = await queries.retention(conn, scope, args.days, args.timezone)
    return export.retention_csv(report_r) if args.csv else _json(export.retention_json(report_r))


def _json(data: object) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.local:
        source = "--postgres-url" if args.postgres_url else POSTGRES_ENV
        args.postgres_url = args.postgres_url or os.environ.get(POSTGRES_ENV, "").strip()
        if not args.postgres_url:
            print(f"notecard dashboards: give the PostgreSQL: {POSTGRES_ENV}, --postgres-url or --local",
                  file=sys.stderr)
            return 2
        problem = postgres_url_problem(args.postgres_url, source)
        if problem:
            print(f"notecard dashboards: {problem}", file=sys.stderr)
            return 2
    if args.action == "render" and args.seed is not None and not args.local:
        print("notecard dashboards render: --seed generates a data set, only into a --local PostgreSQL",
              file=sys.stderr)
        return 2
    if args.local and args.action != "render":
        print("notecard dashboards: --local goes with render --seed N (the PostgreSQL ends with the run)",
              file=sys.stderr)
        return 2
    if args.action == "render" and importlib.util.find_spec("matplotlib") is None:
        print("notecard dashboards render: matplotlib not installed: scripts/setup dashboards "
              "(or .venv/bin/pip install -e '.[dashboards]')", file=sys.stderr)
        return 2
    if min(getattr(args, "recipients", 1), getattr(args, "window_days", 1), getattr(args, "days", 1)) < 1:
        print("notecard dashboards: --recipients, --window-days and --days are whole numbers from 1", file=sys.stderr)
        return 2
    try:
        with _postgres(args) as url:
            return asyncio.run(_run(args, url))
    except SchemaNotReady as exc:
        print(f"notecard dashboards: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"notecard dashboards: PostgreSQL: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
