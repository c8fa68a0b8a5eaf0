"""The book of record in PostgreSQL: records written idempotently by id, balances and
entries read back. Tables in ``ledger/migrations``."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from clearing.ledger import Balances, GiftEvent, LedgerEntry, OrderNote, Record

Conn = AsyncConnection[TupleRow]

# One statement per table and batch: the records as one JSON array (orjson writes the
# dataclasses as they are, PostgreSQL reads them in C; measured faster than one array
# parameter per column, which psycopg builds in Python), and a record written before (a
# redelivery after a crash between COMMIT and XACK) skipped by its id.
_ENTRIES = """
INSERT INTO ledger_entry (id, entry_kind, debit, credit, kind, units, gift_id, sender, cause, at_ms, stream,
                          stream_id)
SELECT id, entry_kind, debit, credit, kind, units, gift_id, sender, cause, at_ms, stream, stream_id
FROM json_to_recordset(%s::json) AS r(id text, entry_kind text, debit text, credit text, kind text, units bigint,
                                      gift_id text, sender text, cause text, at_ms bigint, stream text,
                                      stream_id text)
ON CONFLICT (id) DO NOTHING
"""
_EVENTS = """
INSERT INTO gift_event (id, event, gift_id, sender, recipient, kind, qty, cost, amount, payer, at_ms, stream,
                        stream_id)
SELECT id, event, gift_id, sender, recipient, kind, qty, cost, amount, payer, at_ms, stream, stream_id
FROM json_to_recordset(%s::json) AS r(id text, event text, gift_id text, sender text, recipient text, kind text,
                                      qty bigint, cost bigint, amount bigint, payer text, at_ms bigint,
                                      stream text, stream_id text)
ON CONFLICT (id) DO NOTHING
"""

# The dashboards' rows a campaign's gift events give (docs/dashboards.md "Where the rows come
# from"). Creating a campaign writes no ledger record, so its `campaign` row comes from its
# cards' `sent` events: the brand is their sender, the kind theirs, the name the id (the
# price of a unit unknown: 0), and the start the earliest send seen, whatever order the
# streams deliver them in. A redelivery, or a row the generator wrote, changes nothing
# else.
_CAMPAIGNS = """
INSERT INTO campaign (id, brand, name, kind, started_ms)
SELECT id, brand, id, kind, started_ms
FROM json_to_recordset(%s::json) AS r(id text, brand text, kind text, started_ms bigint)
ON CONFLICT (id) DO UPDATE SET started_ms = excluded.started_ms
WHERE excluded.started_ms < campaign.started_ms
"""
# One row per (campaign, recipient) and per gift: a second order gift of a shop to the
# same buyer (campaign `shop.<shop>`) keeps the first one's row.
_ISSUES = """
INSERT INTO campaign_issue (campaign, recipient, sender, gift_id, at_ms)
SELECT campaign, recipient, sender, gift_id, at_ms
FROM json_to_recordset(%s::json) AS r(campaign text, recipient text, sender text, gift_id text, at_ms bigint)
ON CONFLICT DO NOTHING
"""

# A shop order's purchase (its `paid` and `refunded` notes, docs/ledger.md "Order notes"):
# keyed `<shop>:<order id>` (order ids are the shop's own, unique per shop only). A refund
# only ever sets `refunded`; a redelivered `paid` note changes nothing.
_PURCHASES = """
INSERT INTO purchase (order_id, shop, buyer, amount_cents, at_ms, refunded)
SELECT order_id, shop, buyer, amount_cents, at_ms, refunded
FROM json_to_recordset(%s::json) AS r(order_id text, shop text, buyer text, amount_cents bigint, at_ms bigint,
                                      refunded boolean)
ON CONFLICT (order_id) DO UPDATE SET refunded = true
WHERE excluded.refunded AND NOT purchase.refunded
"""
# A recipient's region, from its campaign gifts' answers: the latest seen wins; the other
# attributes (birth year, app) are not in the ledger and stay as they are (NULL: unknown).
_PROFILES = """
INSERT INTO profile (user_id, region, updated_ms)
SELECT user_id, region, updated_ms
FROM json_to_recordset(%s::json) AS r(user_id text, region text, updated_ms bigint)
ON CONFLICT (user_id) DO UPDATE SET region = excluded.region, updated_ms = excluded.updated_ms
WHERE excluded.updated_ms >= profile.updated_ms
"""


def purchase_id(shop: str, order_id: str) -> str:
    """The ``purchase`` row's key of a shop's order."""
    return f"{shop}:{order_id}"


async def write_records(conn: Conn, records: Sequence[Record]) -> tuple[int, int]:
    """Insert ``records`` in the caller's transaction, and the dashboard rows they give
    (campaigns and their issues, recipients' regions, shop purchases); returns (entries,
    events) newly written (the rest were there already)."""
    entries = [r for r in records if isinstance(r, LedgerEntry)]
    events = [r for r in records if isinstance(r, GiftEvent)]
    written = [0, 0]
    for i, (rows, statement) in enumerate(((entries, _ENTRIES), (events, _EVENTS))):
        if rows:
            cur = await conn.execute(statement, (orjson.dumps(rows).decode(),))
            written[i] = cur.rowcount
    await write_campaign_rows(conn, events)
    await write_profile_rows(conn, events)
    await write_purchase_rows(conn, [r for r in records if isinstance(r, OrderNote)])
    return written[0], written[1]


async def write_purchase_rows(conn: Conn, notes: Sequence[OrderNote]) -> None:
    """One ``purchase`` row per order of ``notes``: inserted by its first note, refunded by a
    ``refunded`` one, idempotently."""
    merged: dict[str, dict[str, object]] = {}  # one row per order: ON CONFLICT may touch a row once
    for n in notes:
        key = purchase_id(n.shop, n.order_id)
        row = merged.setdefault(key, {"order_id": key, "shop": n.shop, "buyer": n.buyer, "amount_cents": n.spend,
                                      "at_ms": n.at_ms, "refunded": False})
        row["refunded"] = row["refunded"] or n.state == "refunded"
    if merged:
        await conn.execute(_PURCHASES, (orjson.dumps(list(merged.values())).decode(),))


async def write_profile_rows(conn: Conn, events: Sequence[GiftEvent]) -> None:
    """``profile`` rows of the regions the campaign gifts' answers in ``events`` carry."""
    latest: dict[str, GiftEvent] = {}
    for e in events:
        if e.region is not None and (e.recipient not in latest or e.at_ms >= latest[e.recipient].at_ms):
            latest[e.recipient] = e
    if latest:
        rows = [{"user_id": u, "region": e.region, "updated_ms": e.at_ms} for u, e in latest.items()]
        await conn.execute(_PROFILES, (orjson.dumps(rows).decode(),))


async def write_campaign_rows(conn: Conn, events: Sequence[GiftEvent]) -> None:
    """``campaign`` and ``campaign_issue`` rows of the campaign gifts ``sent`` in
    ``events``, idempotently by their natural keys."""
    issues = [e for e in events if e.campaign is not None and e.event == "sent"]
    if not issues:
        return
    first: dict[str, GiftEvent] = {}  # campaign -> its earliest send in the batch
    for e in issues:
        if e.campaign not in first or e.at_ms < first[e.campaign].at_ms:
            first[str(e.campaign)] = e
    campaigns = [{"id": c, "brand": e.sender, "kind": e.kind, "started_ms": e.at_ms} for c, e in first.items()]
    # the campaigns first: campaign_issue refers to them
    await conn.execute(_CAMPAIGNS, (orjson.dumps(campaigns).decode(),))
    rows = [{"campaign": e.campaign, "recipient": e.recipient, "sender": e.sender, "gift_id": e.gift_id,
             "at_ms": e.at_ms} for e in issues]
    await conn.execute(_ISSUES, (orjson.dumps(rows).decode(),))


async def balances(conn: Conn) -> Balances:
    """(account, kind) -> credits - debits over every entry written."""
    cur = await conn.execute("SELECT account, kind, balance FROM account_balance")
    return {(account, kind): int(balance) for account, kind, balance in await cur.fetchall()}


async def entry_count(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) FROM ledger_entry")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def known_ids(conn: Conn, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` are written."""
    if not ids:
        return set()
    cur = await conn.execute("SELECT id FROM ledger_entry WHERE id = ANY(%s)", (list(ids),))
    return {row[0] for row in await cur.fetchall()}


async def entries_of(conn: Conn, account: str, kind: str, limit: int) -> list[str]:
    """The newest ``limit`` entries moving ``kind`` into or out of ``account``, as text."""
    cur = await conn.execute(
        "SELECT id, entry_kind, debit, credit, units, gift_id, cause FROM ledger_entry "
        "WHERE (debit = %s OR credit = %s) AND kind = %s ORDER BY at_ms DESC, id DESC LIMIT %s",
        (account, account, kind, limit))
    return [describe(i, ek, dr, cr, kind, u, g, c) for i, ek, dr, cr, u, g, c in await cur.fetchall()]


def describe(entry_id: str, entry_kind: str, debit: str, credit: str, kind: str, units: int, gift_id: str | None,
             cause: str) -> str:
    gift = f" gift {gift_id}" if gift_id else ""
    return f"{entry_id} {entry_kind} {units} {kind} {debit} -> {credit} ({cause}{gift})"
