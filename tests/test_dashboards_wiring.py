"""The dashboards read what a real campaign wrote: campaigns issued by the runner against a
real Redis (one server, then a 3-shard cluster), some cards accepted, declined, expired or
refused, the ledger consumer writing to a real local PostgreSQL, and the dashboards'
queries giving the numbers this test counts from Redis's own records; then shop orders
(paid, refunded) reaching ``purchase`` and recipients' regions reaching ``profile``. Each
ends with the conservation check, Redis's ledger replay and PostgreSQL's balances against
Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from clearing.campaigns import campaign_gift_id
from clearing.ledger import reconcile
from clearing.model import GiftState
from clearing.shops import Shops, order_gift_id
from clearing.testing import World
from clearing.topology import Topology
from dashboards.queries import Scope, conversion, profile
from ledger.books import Conn, purchase_id
from ledger.consumer import BooksConsumer
from ledger.migrate import migrate
from ledger.reconcile import reconcile_books
from tests.test_campaigns import HOUR_MS, UNIT, Shop


@pytest.fixture
async def shop(store: Topology) -> AsyncIterator[Shop]:
    s = Shop(await World.build(store))
    yield s
    check = await s.w.check()
    assert check.ok, check.violations


@pytest.fixture
async def books(postgres_url: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await migrate(conn)
        yield conn


async def consume(shop: Shop, postgres_url: str, name: str) -> None:
    member = BooksConsumer(shop.w.redis, postgres_url, consumer=name)
    try:
        await member.run(once=True)
    finally:
        await member.close()


async def rows(conn: Conn, sql: str) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql)
    return list(await cur.fetchall())


async def run_campaigns(shop: Shop) -> tuple[list[str], int]:
    """Two campaigns of one kind by the runner, and their cards answered: "launch" to six
    fans (two offline) and a refused "ghost", two accepted, one declined, three expired;
    "encore" a second later to two of them, one accepted, one pending. And a gift between
    users, which is no campaign's. Returns the fans and when "launch" started."""
    await shop.brand(budget=40)
    fans = await shop.fans(4)
    for offline in ("off0", "off1"):  # offered the card when they connect
        await shop.w.user(offline, verified=False, online=False)
        fans.append(offline)
    started = shop.w.clock()
    await shop.campaigns.create("launch", "acme", "acme_star", [(f, 2) for f in fans] + [("ghost", 1)],
                                ends_at_ms=started + HOUR_MS, operator="ops")
    assert await shop.runner("node-a").step() == 7
    await shop.w.tick(1000)
    await shop.campaigns.create("encore", "acme", "acme_star", [(f, 1) for f in fans[:2]],
                                ends_at_ms=shop.w.clock() + 2 * HOUR_MS, operator="ops")
    assert await shop.runner("node-a").step() == 2
    await shop.w.user("ann", cards=3)
    await shop.w.befriend("ann", fans[0])
    await shop.w.clearing.reserve("u1", "ann", fans[0], "note", 1)
    await shop.w.clearing.accept("u1", fans[0])

    for fan in fans[:2]:
        await shop.w.clearing.accept(campaign_gift_id("launch", fan), fan)
    await shop.w.clearing.decline(campaign_gift_id("launch", fans[2]), fans[2])
    await shop.w.clearing.accept(campaign_gift_id("encore", fans[1]), fans[1])
    await shop.w.tick(HOUR_MS)  # the rest of "launch" expires with its window
    await shop.w.clearing.expire_due()
    return fans, started


async def counted_in_redis(shop: Shop, fans: list[str]) -> dict[str, dict[str, int]]:
    """Per campaign, from Redis's gift records: cards issued, accepted, and the accepted
    cards' cost (what left the brand for good); checked against the campaign's report."""
    expected: dict[str, dict[str, int]] = {}
    for campaign, recipients in (("launch", fans), ("encore", fans[:2])):
        states = [await shop.w.clearing.get_gift(campaign_gift_id(campaign, f), "acme") for f in recipients]
        accepted = [g for g in states if g is not None and g.state is GiftState.ACCEPTED]
        expected[campaign] = {"issued": sum(g is not None for g in states), "accepted": len(accepted),
                              "cost": sum(g.cost for g in accepted)}
        report = await shop.campaigns.report(campaign)
        assert report.units["accepted"] == expected[campaign]["cost"]
    return expected


async def test_a_campaign_run_by_the_runner_reaches_the_dashboards_through_the_consumer(
        shop: Shop, books: Conn, postgres_url: str) -> None:
    fans, started = await run_campaigns(shop)
    expected = await counted_in_redis(shop, fans)
    assert expected == {"launch": {"issued": 6, "accepted": 2, "cost": 2 * 2 * UNIT},
                        "encore": {"issued": 2, "accepted": 1, "cost": 1 * UNIT}}

    await consume(shop, postgres_url, "books-1")
    assert await rows(books, "SELECT id, brand, name, kind, unit_cents, started_ms FROM campaign ORDER BY id") == [
        ("encore", "acme", "encore", "acme_star", 0, started + 1000),
        ("launch", "acme", "launch", "acme_star", 0, started)]
    issues = await rows(books, "SELECT campaign, recipient, sender, gift_id FROM campaign_issue")
    assert sorted(issues) == sorted([("launch", f, "acme", campaign_gift_id("launch", f)) for f in fans]
                                    + [("encore", f, "acme", campaign_gift_id("encore", f)) for f in fans[:2]])

    # every entry delivered again (as after a crash between COMMIT and XACK): the same rows
    for stream in await BooksConsumer(shop.w.redis, postgres_url, consumer="x").member.streams():
        await shop.w.redis.xgroup_setid(stream, "books", "0")
    await consume(shop, postgres_url, "books-2")
    assert sorted(await rows(books, "SELECT campaign, recipient, sender, gift_id FROM campaign_issue")) == \
        sorted(issues)
    assert len(await rows(books, "SELECT id FROM campaign")) == 2

    result = await conversion(books, Scope(brand="acme"))
    assert [(c.campaign, c.issued, c.accepted, c.purchased, c.cost_units) for c in result.campaigns] == [
        (name, e["issued"], e["accepted"], 0, e["cost"]) for name, e in expected.items()]
    launch = result.campaigns[0]
    assert launch.accept_rate == round(2 / 6, 6)

    # every card of "launch" was answered (accepted, declined, expired): each recipient's
    # region came with its answer (the default region here); fan levels are not in the ledger
    breakdown = await profile(books, Scope(campaign="launch"))
    assert breakdown.recipients == len(fans)
    assert breakdown.breakdown["region"] == [("global", len(fans))]
    assert breakdown.breakdown["fan_level"] == [("none", len(fans))]

    # both campaigns of one kind: the kind's budget holds what both accepted
    budget = (await shop.campaigns.report("launch")).budget
    assert budget["accepted"] == budget["recipients_hold"] == (2 * 2 + 1) * UNIT
    for campaign in expected:
        report = await shop.campaigns.report(campaign)
        assert report.balanced, report.to_json()
    check = await shop.w.check()
    assert check.ok, check.violations
    ledger = await reconcile(shop.w.redis, shop.w.keys)
    assert ledger.ok, ledger.drift
    books_check = await reconcile_books(books, shop.w.redis)
    assert books_check.ok, books_check.report()


async def test_a_shop_orders_gifts_appear_as_its_campaign_one_row_per_buyer(
        shop: Shop, books: Conn, postgres_url: str) -> None:
    await shop.brand(budget=10)
    await shop.business.update("acme", operator="ops", shop=True)
    shops = Shops(shop.campaigns)
    await shops.set_rule("acme", kind="acme_star", min_spend=1000, qty=1, operator="ops")
    buyers = await shop.fans(2)
    first = await shops.paid("acme", "A-1", buyers[0], 1500)
    second = await shops.paid("acme", "A-2", buyers[0], 2500)  # the same buyer again
    assert (await shops.paid("acme", "A-3", buyers[1], 999)).result == "below_minimum"
    assert first.result == second.result == "gifted"
    await shop.w.clearing.accept(order_gift_id("acme", "A-1"), buyers[0])

    await consume(shop, postgres_url, "books-1")
    assert await rows(books, "SELECT id, brand, kind FROM campaign") == [("shop.acme", "acme", "acme_star")]
    assert await rows(books, "SELECT campaign, recipient, gift_id FROM campaign_issue") == [
        ("shop.acme", buyers[0], order_gift_id("acme", "A-1"))]
    [row] = (await conversion(books, Scope(campaign="shop.acme"))).campaigns
    # the buyer accepted, and its orders (noted at the acceptance's instant: this clock stands
    # still) are purchases from the shop in the window: one converted buyer, both orders' spend
    assert (row.issued, row.accepted, row.purchased, row.revenue_cents, row.cost_units) == (1, 1, 1, 4000, UNIT)
    assert sorted(await rows(books, "SELECT order_id, buyer, amount_cents, refunded FROM purchase")) == [
        (purchase_id("acme", "A-1"), buyers[0], 1500, False), (purchase_id("acme", "A-2"), buyers[0], 2500, False),
        (purchase_id("acme", "A-3"), buyers[1], 999, False)]
    # both gifts are in the ledger all the same
    cur = await books.execute("SELECT count(*) FROM gift_event WHERE sender = 'acme' AND event = 'sent'")
    assert await cur.fetchone() == (2,)

    check = await shop.w.check()
    assert check.ok, check.violations
    books_check = await reconcile_books(books, shop.w.redis)
    assert books_check.ok, books_check.report()


async def region_of(shop: Shop, user: str) -> str:
    raw = await shop.w.redis.hget(shop.w.keys.user(user), "region")
    assert isinstance(raw, bytes)
    return raw.decode()


async def test_shop_orders_and_recipients_regions_reach_the_conversion_and_profile_dashboards(
        shop: Shop, books: Conn, postgres_url: str) -> None:
    """A campaign's fans answer their cards, then buy in the brand's shop (paid, below the
    rule's minimum, refunded, refunded before paid, a notification sent twice): the orders
    reach ``purchase`` through the ledger stream, the regions reach ``profile``, and the
    dashboards count what this test counts from the orders it made and Redis's records."""
    await shop.brand(budget=20)
    await shop.business.update("acme", operator="ops", shop=True)
    shops = Shops(shop.campaigns)
    await shops.set_rule("acme", kind="acme_star", min_spend=1000, qty=1, operator="ops")
    fans = await shop.fans(4)
    for fan, region in zip(fans, ("north", "south", "north"), strict=False):  # fans[3] keeps the default
        await shop.w.accounts.set_flags(fan, region=region)
    await shop.campaigns.create("launch", "acme", "acme_star", [(f, 1) for f in fans],
                                ends_at_ms=shop.w.clock() + HOUR_MS, operator="ops")
    assert await shop.runner("node-a").step() == len(fans)
    for fan in fans[:3]:
        await shop.w.clearing.accept(campaign_gift_id("launch", fan), fan)
    await shop.w.clearing.decline(campaign_gift_id("launch", fans[3]), fans[3])
    await shop.w.tick(1000)  # the purchases come after the acceptances

    # (order, buyer, spend): paid, below the minimum (a purchase all the same), to be
    # refunded, and by the fan who declined (no conversion)
    orders = [("A-1", fans[0], 1500), ("A-2", fans[1], 500), ("A-3", fans[1], 2000), ("A-4", fans[3], 3000)]
    for order_id, buyer, spend in orders:
        await shops.paid("acme", order_id, buyer, spend)
    assert (await shops.paid("acme", "A-1", fans[0], 1500)).result == "gifted"  # sent again: noted once
    assert (await shops.refunded("acme", "A-5")).result == "refunded"  # refunded before paid:
    assert (await shops.paid("acme", "A-5", fans[2], 4000)).result == "refunded"  # no purchase
    await consume(shop, postgres_url, "books-1")
    assert (await shops.refunded("acme", "A-3")).result == "cancelled"  # a later batch updates the row
    await consume(shop, postgres_url, "books-1")
    # every entry delivered again (a crash between COMMIT and XACK): the same rows
    for stream in await BooksConsumer(shop.w.redis, postgres_url, consumer="x").member.streams():
        await shop.w.redis.xgroup_setid(stream, "books", "0")
    await consume(shop, postgres_url, "books-2")

    refunded = {"A-3"}
    assert sorted(await rows(books, "SELECT order_id, shop, buyer, amount_cents, refunded FROM purchase")) == sorted(
        (purchase_id("acme", o), "acme", b, spend, o in refunded) for o, b, spend in orders)
    cur = await books.execute("SELECT count(*) FROM purchase WHERE at_ms <> %s", (shop.w.clock(),))
    assert await cur.fetchone() == (0,)  # each row's time is its paid note's (the refund came later)

    # conversion, counted here: the accepting fans who bought (not refunded), and what they paid
    accepted = set()
    for fan in fans:
        gift = await shop.w.clearing.get_gift(campaign_gift_id("launch", fan), "acme")
        if gift is not None and gift.state is GiftState.ACCEPTED:
            accepted.add(fan)
    kept = [(b, spend) for o, b, spend in orders if o not in refunded and b in accepted]
    [launch] = (await conversion(books, Scope(campaign="launch"))).campaigns
    assert (launch.issued, launch.accepted, launch.purchased, launch.revenue_cents) == (
        len(fans), len(accepted), len({b for b, _ in kept}), sum(spend for _, spend in kept))
    assert (launch.purchased, launch.revenue_cents) == (2, 2000)

    # profile: each recipient's region as Redis holds it (every card was answered)
    regions: dict[str, int] = {}
    for fan in fans:
        region = await region_of(shop, fan)
        regions[region] = regions.get(region, 0) + 1
    breakdown = await profile(books, Scope(campaign="launch"))
    assert breakdown.recipients == len(fans)
    assert dict(breakdown.breakdown["region"]) == regions == {"north": 2, "south": 1, "global": 1}
    assert await rows(books, "SELECT count(*) FROM profile WHERE birth_year IS NOT NULL OR app IS NOT NULL") == [(0,)]

    check = await shop.w.check()
    assert check.ok, check.violations
    ledger = await reconcile(shop.w.redis, shop.w.keys)
    assert ledger.ok, ledger.drift
    books_check = await reconcile_books(books, shop.w.redis)
    assert books_check.ok, books_check.report()
