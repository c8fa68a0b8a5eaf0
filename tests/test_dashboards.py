"""The business dashboards (docs/dashboards.md) against a real PostgreSQL of our own: the
queries on a generated data set, checked against counts this file makes itself from the raw
rows (plain SELECTs and Python, not the dashboards' SQL); a small hand-made case whose
numbers are worked out below; the generator's reproducibility and balance; the PNG charts;
``notecard dashboards``; the admin routes on a real node."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import importlib.util
import secrets
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import jsonschema
import orjson
import psycopg
import pytest

from clearing import GiftRules
from clearing.gifts import Clearing
from clearing.ledger import GiftEvent, LedgerEntry, Record
from clearing.slots import SLOTS
from clearing.testing import World
from clearing.topology import Topology
from dashboards import cli, export, generate, queries
from dashboards.queries import AGE_BUCKETS, Scope
from dashboards.render import DPI, HEIGHT_IN, WIDTH_IN, render
from gateway.openapi import openapi_document
from ledger import cli as ledger_cli
from ledger.books import Conn, write_records
from ledger.consumer import BooksConsumer
from ledger.migrate import migrate, migrations, schema_version
from notecard.local_postgres import LocalPostgres
from notecard.local_redis import free_port
from tests.gateway_fixtures import ADMIN_TOKEN, NodeFactory
from tests.test_ledger import FAR, NEAR

SEED, RECIPIENTS = 11, 160
DAY_MS = 86_400_000
SCOPES = [Scope(), Scope(brand="brand_aurora"), Scope(campaign="aurora-winter"),
          Scope(brand="shop_lumen", campaign="lumen-fans"), Scope(brand="shop_lumen", campaign="aurora-launch")]


@pytest.fixture
async def books(postgres_url: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await migrate(conn)
        yield conn


@pytest.fixture
async def generated(books: Conn) -> Conn:
    await generate.write(books, generate.build(SEED, RECIPIENTS))
    return books


@dataclasses.dataclass
class Raw:
    """Every row of the tables the dashboards read, as plain tuples."""

    sent: list[tuple[str, str, str, int]]  # sender, gift, recipient, at_ms
    accepted: dict[tuple[str, str], int]  # (sender, gift) -> at_ms
    issues: list[tuple[str, str, str, str]]  # campaign, recipient, sender, gift
    campaigns: dict[str, tuple[str, int]]  # id -> brand, unit_cents
    profiles: dict[str, tuple[str | None, int | None, str | None]]
    fans: dict[tuple[str, str], int]
    spent: dict[tuple[str, str], int]  # (sender, gift) -> units settled + consumed
    purchases: list[tuple[str, str, int, int, bool]]  # shop, buyer, cents, at_ms, refunded
    activity: list[tuple[str, int]]


async def _rows(conn: Conn, sql: str) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql.encode())
    return list(await cur.fetchall())


async def read_raw(conn: Conn) -> Raw:
    events = await _rows(conn, "SELECT event, sender, gift_id, recipient, at_ms FROM gift_event")
    spent: dict[tuple[str, str], int] = collections.Counter()
    for kind, sender, gift, units in await _rows(conn, "SELECT entry_kind, sender, gift_id, units FROM ledger_entry"):
        if kind in ("settle", "consume"):
            spent[(sender, gift)] += units
    return Raw(
        sent=[(s, g, r, at) for ev, s, g, r, at in events if ev == "sent"],
        accepted={(s, g): at for ev, s, g, _, at in events if ev == "accepted"},
        issues=[tuple(row) for row in await _rows(conn, "SELECT campaign, recipient, sender, gift_id "
                                                        "FROM campaign_issue")],
        campaigns={c: (b, u) for c, b, u in await _rows(conn, "SELECT id, brand, unit_cents FROM campaign")},
        profiles={u: (r, y, a) for u, r, y, a in await _rows(conn, "SELECT user_id, region, birth_year, app "
                                                                   "FROM profile")},
        fans={(o, u): lv for o, u, lv in await _rows(conn, "SELECT owner, user_id, level FROM fan_member")},
        spent=dict(spent),
        purchases=[tuple(row) for row in await _rows(conn, "SELECT shop, buyer, amount_cents, at_ms, refunded "
                                                           "FROM purchase")],
        activity=[(u, at) for u, at in await _rows(conn, "SELECT user_id, at_ms FROM activity")],
    )


def in_scope(raw: Raw, scope: Scope) -> list[tuple[str, str, str, int]]:
    of_campaign = {(s, g) for c, _, s, g in raw.issues if c == scope.campaign}
    return [(s, g, r, at) for s, g, r, at in raw.sent
            if (scope.brand is None or s == scope.brand) and (scope.campaign is None or (s, g) in of_campaign)]


def expected_profile(raw: Raw, scope: Scope) -> dict[str, dict[str, int]]:
    first: dict[str, tuple[int, str, str]] = {}
    for sender, gift, recipient, at in in_scope(raw, scope):
        first[recipient] = min(first.get(recipient, (at, gift, sender)), (at, gift, sender))
    out: dict[str, dict[str, int]] = {name: collections.Counter() for name in queries.DIMENSIONS}
    for recipient, (at, _, sender) in first.items():
        region, birth_year, app = raw.profiles.get(recipient, (None, None, None))
        year = dt.datetime.fromtimestamp(at / 1000, dt.UTC).year
        age = "unknown" if birth_year is None else next(
            label for label, low, high in AGE_BUCKETS if low <= year - birth_year <= high)
        level = raw.fans.get((sender, recipient))
        out["region"][region or "unknown"] += 1
        out["age"][age] += 1
        out["app"][app or "unknown"] += 1
        out["fan_level"]["none" if level is None else str(level)] += 1
    return {name: dict(counts) for name, counts in out.items()}


def expected_conversion(raw: Raw, scope: Scope, window_days: int) -> dict[str, tuple[int, ...]]:
    sent = {(s, g) for s, g, _, _ in raw.sent}
    out: dict[str, tuple[int, ...]] = {}
    for campaign, (brand, unit_cents) in raw.campaigns.items():
        if (scope.brand and brand != scope.brand) or (scope.campaign and campaign != scope.campaign):
            continue
        cards = [(r, s, g) for c, r, s, g in raw.issues if c == campaign]
        accepted_at = {r: raw.accepted[(s, g)] for r, s, g in cards if (s, g) in raw.accepted}
        bought = [(buyer, cents) for shop, buyer, cents, at, refunded in raw.purchases
                  if shop == brand and not refunded and buyer in accepted_at
                  and accepted_at[buyer] <= at < accepted_at[buyer] + window_days * DAY_MS]
        units = sum(raw.spent.get((s, g), 0) for _, s, g in cards)
        out[campaign] = (sum((s, g) in sent for _, s, g in cards), len(accepted_at), len({b for b, _ in bought}),
                         sum(c for _, c in bought), units, units * unit_cents)
    return out


def expected_retention(raw: Raw, scope: Scope, days: int, zone: str) -> dict[dt.date, tuple[int, list[int]]]:
    def day(at_ms: int) -> dt.date:
        return dt.datetime.fromtimestamp(at_ms / 1000, ZoneInfo(zone)).date()

    first: dict[str, int] = {}
    for _, _, recipient, at in in_scope(raw, scope):
        first[recipient] = min(first.get(recipient, at), at)
    cohort = {r: day(at) for r, at in first.items()}
    active = {(u, day(at)) for u, at in raw.activity if u in cohort}
    out: dict[dt.date, tuple[int, list[int]]] = {}
    for d0 in sorted(set(cohort.values())):
        members = [r for r, d in cohort.items() if d == d0]
        out[d0] = (len(members), [sum((r, d0 + dt.timedelta(days=k)) in active for r in members)
                                  for k in range(1, days + 1)])
    return out


@pytest.mark.parametrize("scope", SCOPES, ids=str)
async def test_profile_counts_each_recipient_once_by_every_attribute(generated: Conn, scope: Scope) -> None:
    raw = await read_raw(generated)
    expected = expected_profile(raw, scope)
    report = await queries.profile(generated, scope)
    assert {name: dict(rows) for name, rows in report.breakdown.items()} == expected
    assert report.recipients == len({r for _, _, r, _ in in_scope(raw, scope)})
    if scope.brand == "shop_lumen" and scope.campaign == "aurora-launch":
        assert report.recipients == 0  # another brand's campaign: nothing
    else:
        assert report.recipients > 10
    ages = [value for value, _ in report.breakdown["age"]]
    assert ages == sorted(ages, key=[label for label, _, _ in (*AGE_BUCKETS, ("unknown", 0, 0))].index)


@pytest.mark.parametrize("window_days", [1, 7, 30])
@pytest.mark.parametrize("scope", SCOPES[:3], ids=str)
async def test_conversion_follows_the_ledger_and_the_purchases(generated: Conn, scope: Scope,
                                                               window_days: int) -> None:
    raw = await read_raw(generated)
    expected = expected_conversion(raw, scope, window_days)
    report = await queries.conversion(generated, scope, window_days)
    got = {row.campaign: (row.issued, row.accepted, row.purchased, row.revenue_cents, row.cost_units,
                          row.cost_cents) for row in report.campaigns}
    assert got == expected
    assert all(row.issued > row.accepted > 0 for row in report.campaigns)
    for row in report.campaigns:
        assert row.cost_per_conversion_cents == (round(row.cost_cents / row.purchased, 6) if row.purchased else None)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Shanghai", "America/Los_Angeles"])
@pytest.mark.parametrize("scope", SCOPES[:3], ids=str)
async def test_retention_cohorts_by_the_first_card_day(generated: Conn, scope: Scope, zone: str) -> None:
    raw = await read_raw(generated)
    report = await queries.retention(generated, scope, 10, zone)
    got = {cohort.day: (cohort.recipients, cohort.active) for cohort in report.cohorts}
    assert got == expected_retention(raw, scope, 10, zone)
    assert len(got) >= 3 and any(any(active) for _, active in got.values())


def _entry(op: str, n: int, kind: str, debit: str, credit: str, gift: str | None, sender: str | None,
           at: int, units: int = 10) -> LedgerEntry:
    return LedgerEntry("nc:{#0}:ledger", f"{at}-0", f"{op}.{n}", kind, debit, credit, "note", units, gift, sender,
                       "test", at)


def _event(op: str, n: int, event: Any, gift: str, recipient: str, at: int) -> GiftEvent:
    return GiftEvent("nc:{#0}:ledger", f"{at}-0", f"{op}.{n}", event, gift, "brand", recipient, "note", 1, 10, 10,
                     "brand", at)


async def test_a_small_hand_made_case(books: Conn) -> None:
    """Campaign c1 of `brand` (unit 5 cents) to ann, bob, cat, dan on day 0; eve gets a
    card of the brand outside any campaign. ann accepts and buys twice in the window (3
    and 4 euros) and once from another shop; bob accepts, buys after the window and has a
    refunded order; cat declines; dan's card expires. So: issued 4, accepted 2, cost 20
    units = 100 cents, purchased 1 (ann), revenue 700, cost per conversion 100, ROI 6."""
    t0 = 1_790_000_000_000 - 1_790_000_000_000 % DAY_MS  # a UTC midnight
    records: list[Record] = [_entry("00", 0, "mint", "issued:#0", "avail:brand", None, None, t0 - 1, units=50)]
    for i, user in enumerate(["ann", "bob", "cat", "dan", "eve"]):
        op = f"{i}a"
        records += [_entry(op, 0, "hold", "avail:brand", "held:brand", f"g-{user}", "brand", t0 + i),
                    _event(op, 1, "sent", f"g-{user}", user, t0 + i)]
    answers = {"ann": "accepted", "bob": "accepted", "cat": "declined", "dan": "expired", "eve": "accepted"}
    for i, (user, answer) in enumerate(answers.items()):
        op, at = f"{i}b", t0 + 3_600_000
        if answer == "accepted":
            records += [_entry(op, 0, "settle", "held:brand", "transit:#0", f"g-{user}", "brand", at),
                        _entry(op, 1, "credit", "transit:#0", f"avail:{user}", f"g-{user}", "brand", at)]
        else:
            records.append(_entry(op, 0, "release" if answer == "declined" else "expire", "held:brand",
                                  "avail:brand", f"g-{user}", "brand", at))
        records.append(_event(op, 9, answer, f"g-{user}", user, at))
    async with books.transaction():
        await write_records(books, records)
        await books.execute("INSERT INTO campaign VALUES ('c1', 'brand', 'C one', 'note', 5, %s)", (t0,))
        for user in ("ann", "bob", "cat", "dan"):
            await books.execute("INSERT INTO campaign_issue VALUES ('c1', %s, 'brand', %s, %s)",
                                (user, f"g-{user}", t0))
        hour = 3_600_000
        for order, shop, buyer, cents, at, refunded in [
                ("o1", "brand", "ann", 300, t0 + 2 * hour, False), ("o2", "brand", "ann", 400, t0 + 3 * DAY_MS, False),
                ("o3", "other", "ann", 999, t0 + 2 * hour, False), ("o4", "brand", "bob", 500, t0 + 8 * DAY_MS, False),
                ("o5", "brand", "bob", 600, t0 + 2 * hour, True), ("o6", "brand", "cat", 700, t0 + 2 * hour, False),
                ("o7", "brand", "ann", 800, t0 + 1, False)]:  # o7: before ann accepted
            await books.execute("INSERT INTO purchase VALUES (%s, %s, %s, %s, %s, %s)",
                                (order, shop, buyer, cents, at, refunded))
        await books.cursor().executemany("INSERT INTO profile VALUES (%s, %s, %s, %s, 0)",
                                [("ann", "north", 2000, "main"), ("bob", "north", 1980, "lite"),
                                 ("cat", None, None, "main")])
        await books.execute("INSERT INTO fan_member VALUES ('brand', 'ann', 3, 0), ('other', 'bob', 2, 0)")
        await books.cursor().executemany("INSERT INTO activity VALUES (%s, %s, 'connect')",
                                [("ann", t0 + DAY_MS + 5), ("ann", t0 + DAY_MS + 9), ("bob", t0 + DAY_MS),
                                 ("ann", t0 + 3 * DAY_MS), ("eve", t0 + 2 * DAY_MS), ("cat", t0 + 20 * DAY_MS)])

    conversion = await queries.conversion(books, Scope(brand="brand"))
    assert [row.row() for row in conversion.campaigns] == [{
        "campaign": "c1", "brand": "brand", "name": "C one", "issued": 4, "accepted": 2, "purchased": 1,
        "revenue_cents": 700, "cost_units": 20, "cost_cents": 100, "accept_rate": 0.5, "purchase_rate": 0.25,
        "cost_per_conversion_cents": 100.0, "roi": 6.0}]
    assert (await queries.conversion(books, Scope(), window_days=8)).campaigns[0].purchased == 2  # bob's o4 too

    profile = await queries.profile(books, Scope(campaign="c1"))
    year = dt.datetime.fromtimestamp(t0 / 1000, dt.UTC).year
    assert year - 2000 in range(25, 35) and year - 1980 in range(45, 55)
    assert profile.recipients == 4
    assert profile.breakdown == {
        "region": [("north", 2), ("unknown", 2)], "age": [("25-34", 1), ("45-54", 1), ("unknown", 2)],
        "app": [("main", 2), ("lite", 1), ("unknown", 1)], "fan_level": [("3", 1), ("none", 3)]}

    retention = await queries.retention(books, Scope(brand="brand"), days=3)
    assert [(c.day, c.recipients, c.active) for c in retention.cohorts] == [
        (dt.datetime.fromtimestamp(t0 / 1000, dt.UTC).date(), 5, [2, 1, 1])]
    assert export.retention_csv(retention).splitlines()[1:] == [
        f"{retention.cohorts[0].day.isoformat()},5,1,2,0.4", f"{retention.cohorts[0].day.isoformat()},5,2,1,0.2",
        f"{retention.cohorts[0].day.isoformat()},5,3,1,0.2"]


async def test_the_data_set_is_reproducible_balanced_and_written_once(books: Conn) -> None:
    data = generate.build(SEED, RECIPIENTS)
    assert data == generate.build(SEED, RECIPIENTS)
    assert data != generate.build(SEED + 1, RECIPIENTS)
    counts = await generate.write(books, data)

    async def table_counts() -> list[int]:
        return [(await _rows(books, f"SELECT count(*) FROM {table}"))[0][0] for table in (
            "ledger_entry", "gift_event", "profile", "fan_member", "campaign", "campaign_issue", "purchase",
            "activity")]

    first = await table_counts()
    assert sum(first[:2]) == counts["records"] and first[2] == RECIPIENTS
    await generate.write(books, data)
    assert await table_counts() == first  # the same rows again: nothing new
    # The ledger balances as the product's does: every kind sums to 0 over the accounts.
    assert await _rows(books, "SELECT kind, sum(balance)::bigint FROM account_balance GROUP BY kind") == [("note", 0)]
    # Each card: one sent and one outcome; a campaign's card is a gift of the ledger.
    events = collections.Counter(
        (gift, event == "sent") for gift, event in await _rows(books, "SELECT gift_id, event FROM gift_event"))
    assert set(events.values()) == {1} and len(events) == 2 * first[5]
    held = await _rows(books, "SELECT balance FROM account_balance WHERE account LIKE 'held:%'")
    assert {row[0] for row in held} == {0}  # every card was answered or expired


async def test_charts_are_png_files_of_the_stated_size(generated: Conn, tmp_path: Path) -> None:
    scope = Scope(brand="brand_aurora")
    paths = render(tmp_path / "charts", await queries.profile(generated, scope),
                   await queries.conversion(generated, scope), await queries.retention(generated, scope))
    assert [p.name for p in paths] == ["profile.png", "conversion.png", "retention.png"]
    for path in paths:
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
        assert struct.unpack(">II", head[16:24]) == (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI)), path
        assert path.stat().st_size > 20_000, path  # drawn, not an empty canvas


def test_the_command_generates_shows_and_renders(postgres_url: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--postgres-url", postgres_url]
    assert cli.main([*base, "generate", "--seed", "5", "--recipients", "60"]) == 0
    capsys.readouterr()
    assert cli.main([*base, "show", "conversion", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(",") == list(export.CONVERSION_COLUMNS)
    assert [line.split(",")[0] for line in lines[1:]] == ["aurora-launch", "lumen-fans", "aurora-winter"]
    assert cli.main([*base, "render", "--out", str(tmp_path), "--brand", "shop_lumen"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conversion.png", "profile.png", "retention.png"]
    assert cli.main(["--postgres-url", "", "show", "profile"]) == 2
    assert "NOTECARD_POSTGRES_URL" in capsys.readouterr().err


async def test_the_admin_routes_serve_json_and_csv(node_factory: NodeFactory, postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await generate.write(conn, generate.build(SEED, 80))
        scope = Scope(brand="brand_aurora")
        wanted = {
            "profile": (export.profile_json(await queries.profile(conn, scope)),
                        export.profile_csv(await queries.profile(conn, scope)), "ProfileDashboard", ""),
            "conversion": (export.conversion_json(await queries.conversion(conn, scope, 3)),
                           export.conversion_csv(await queries.conversion(conn, scope, 3)), "ConversionDashboard",
                           "&window_days=3"),
            "retention": (export.retention_json(await queries.retention(conn, scope, 5, "Asia/Shanghai")),
                          export.retention_csv(await queries.retention(conn, scope, 5, "Asia/Shanghai")),
                          "RetentionDashboard", "&days=5"),
        }
    node = await node_factory(GiftRules(timezone="Asia/Shanghai"), postgres_url=postgres_url)
    schemas = openapi_document()["components"]["schemas"]
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        async def get(path: str) -> tuple[int, str, bytes]:
            async with session.get(node.admin_url + path) as resp:
                return resp.status, resp.content_type, await resp.read()

        for name, (as_json, as_csv, schema, extra) in wanted.items():
            status, media, body = await get(f"/admin/dashboards/{name}?brand=brand_aurora{extra}")
            assert (status, media) == (200, "application/json"), body
            assert orjson.loads(body) == orjson.loads(orjson.dumps(as_json))
            jsonschema.validate(orjson.loads(body), {"$ref": f"#/$defs/{schema}", "$defs": orjson.loads(
                orjson.dumps(schemas).replace(b"#/components/schemas/", b"#/$defs/"))})
            status, media, body = await get(f"/admin/dashboards/{name}?brand=brand_aurora{extra}&format=csv")
            assert (status, media, body.decode()) == (200, "text/csv", as_csv)
        assert orjson.loads((await get("/admin/dashboards/retention?days=5"))[2])["timezone"] == "Asia/Shanghai"
        # every campaign when no scope is given
        campaigns = orjson.loads((await get("/admin/dashboards/conversion"))[2])["campaigns"]
        assert [c["campaign"] for c in campaigns] == ["aurora-launch", "lumen-fans", "aurora-winter"]
        for bad in ("profile?brand=a%20b", "profile?format=xml", "conversion?window_days=0",
                    "conversion?window_days=x", "retention?days=91", "retention?campaign="):
            status, _, body = await get(f"/admin/dashboards/{bad}")
            assert (status, orjson.loads(body)["error"]) == (400, "BAD_REQUEST"), bad
    async with aiohttp.ClientSession() as anonymous, anonymous.get(
            node.admin_url + "/admin/dashboards/profile") as resp:
        assert resp.status == 401


async def test_a_book_of_record_that_does_not_answer_is_unavailable(node_factory: NodeFactory) -> None:
    node = await node_factory(postgres_url=f"postgresql://notecard:pw@127.0.0.1:{free_port('127.0.0.1')}/none")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session, \
            session.get(node.admin_url + "/admin/dashboards/conversion") as resp:
        assert resp.status == 503
        assert await resp.json() == {"error": "UNAVAILABLE", "message": "the book of record is unavailable; retry"}


async def test_a_book_of_record_without_the_tables_says_so(node_factory: NodeFactory, postgres_server: LocalPostgres
                                                           ) -> None:
    empty = postgres_server.create_database(f"t{secrets.token_hex(6)}")  # never migrated
    node = await node_factory(postgres_url=empty)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session, \
            session.get(node.admin_url + "/admin/dashboards/retention") as resp:
        assert resp.status == 503 and (await resp.json())["error"] == "NO_BOOKS"


def test_show_and_render_read_only_and_refuse_a_schema_not_migrated(postgres_server: LocalPostgres, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    empty = postgres_server.create_database(f"t{secrets.token_hex(6)}")  # never migrated
    for command in (["show", "profile"], ["render", "--out", str(tmp_path)]):
        assert cli.main(["--postgres-url", empty, *command]) == 1, command
        err = capsys.readouterr().err
        assert "no ledger schema" in err and "notecard ledger migrate" in err, err
    assert asyncio.run(_version(empty)) == 0  # nothing was created on the way
    assert not any(tmp_path.iterdir())
    # one version behind: refused the same way, and left as it was
    asyncio.run(_migrate_all_but_last(empty))
    assert cli.main(["--postgres-url", empty, "show", "conversion"]) == 1
    latest = migrations()[-1].version
    assert f"at version {latest - 1}" in capsys.readouterr().err
    assert asyncio.run(_version(empty)) == latest - 1


async def _version(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await schema_version(conn)


async def _migrate_all_but_last(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn)
        latest = migrations()[-1]
        await conn.execute("DELETE FROM schema_version WHERE version = %s", (latest.version,))


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["--postgres-url", "mysql://ann:hunter2@db/books"], None, "--postgres-url='mysql://ann:***@db/books'"),
    ([], "redis://127.0.0.1:6379/0", "NOTECARD_POSTGRES_URL='redis://127.0.0.1:6379/0'"),
])
def test_a_url_that_is_not_postgresql_is_refused_as_the_ledger_refuses_it(
        argv: list[str], env: str | None, named: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    if env is not None:
        monkeypatch.setenv("NOTECARD_POSTGRES_URL", env)
    assert cli.main([*argv, "show", "profile"]) == 2
    err = capsys.readouterr().err
    assert named in err and "expected a postgresql://" in err and "hunter2" not in err, err
    if argv:  # the flag: word for word what `notecard ledger` says of it
        assert ledger_cli.main([*argv, "migrate"]) == 2
        said = capsys.readouterr().err
        assert said.removeprefix("notecard ledger: ") == err.removeprefix("notecard dashboards: "), said


def test_render_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    real_find_spec = importlib.util.find_spec

    def without_matplotlib(name: str, *args: Any) -> Any:
        return None if name == "matplotlib" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_matplotlib)
    assert cli.main(["--postgres-url", "postgresql://nobody@127.0.0.1:1/none", "render", "--out", str(tmp_path)]) == 2
    assert "matplotlib not installed" in capsys.readouterr().err and not any(tmp_path.iterdir())


@pytest.fixture
async def world(store: Topology) -> AsyncIterator[World]:
    w = await World.build(store, GiftRules())
    yield w
    report = await w.check()
    assert report.ok, report.violations


async def test_the_funnel_reads_what_the_clearing_and_the_consumer_wrote(world: World, books: Conn,
                                                                         postgres_url: str) -> None:
    """Real gifts through the Lua scripts (one recipient on the sender's shard, one on
    another, one by the saga), written to PostgreSQL by the ledger consumer: the campaign's
    funnel and cost follow the ledger's own entries and events."""
    saga = Clearing(world.topology, world.rules, world.keys, world.clock, settings=world.settings,
                    dead_nodes=world.presence.dead_nodes, force_saga=True)
    await world.user("brand", cards=10)
    plan = [("c-1", world.clearing, NEAR, "accept"), ("c-2", saga, FAR, "accept"),
            ("c-3", world.clearing, "r3", "decline"), ("c-4", world.clearing, "r4", None),
            ("own-1", world.clearing, "r5", "accept")]
    for gift, clearing, recipient, answer in plan:
        await world.user(recipient)
        await world.befriend("brand", recipient)
        await clearing.reserve(gift, "brand", recipient, "note", 2)
        if answer == "accept":
            await clearing.accept(gift, recipient)
        elif answer == "decline":
            await clearing.decline(gift, recipient)
    await world.tick(world.rules.confirm_window_ms)
    await world.clearing.sweep(range(SLOTS))  # c-4 expires
    member = BooksConsumer(world.redis, postgres_url, consumer="books-1")
    try:
        await member.run(once=True)
    finally:
        await member.close()
    now = world.clock()
    async with books.transaction():
        await books.execute("INSERT INTO campaign VALUES ('c', 'brand', 'C', 'note', 3, 0)")
        for gift, _, recipient, _ in plan[:4]:  # own-1 is the brand's gift outside the campaign
            await books.execute("INSERT INTO campaign_issue VALUES ('c', %s, 'brand', %s, 0)", (recipient, gift))
        await books.execute("INSERT INTO purchase VALUES ('o1', 'brand', %s, 1000, %s, false)", (FAR, now))

    report = await queries.conversion(books, Scope(brand="brand"))
    cost = 2 * world.rules.units_per_card * 2  # two accepted gifts of 2 cards
    funnel = [(r.issued, r.accepted, r.purchased, r.cost_units, r.cost_cents, r.revenue_cents)
              for r in report.campaigns]
    assert funnel == [(4, 2, 1, cost, cost * 3, 1000)]
    profile = await queries.profile(books, Scope(brand="brand"))
    assert profile.recipients == 5 and dict(profile.breakdown["region"]) == {"unknown": 5}
    assert (await queries.profile(books, Scope(campaign="c"))).recipients == 4
