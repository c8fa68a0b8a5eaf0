"""A reproducible data set for the dashboards: ``notecard dashboards generate --seed N
--recipients K``.

Everything is drawn from one ``random.Random(seed)`` and a fixed start day, so a seed and a
count always give the same rows. Gifts are written as the product writes them: ledger
entries and gift events (the shapes of clearing/ledger.py, through ``ledger.books``, the
consumer's own insert) for a mint of each brand's budget, then per card a ``hold`` and its
``sent`` event, and its outcome: ``settle`` + ``credit`` + ``accepted``, ``release`` +
``declined``, or ``expire`` + ``expired``. Profiles, fan levels, campaigns, purchases and
activity go into the tables of ``ledger/migrations/0002_dashboards.sql``. Every row has a
natural key and is written with ``ON CONFLICT DO NOTHING``: generating twice into one
database writes nothing new.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

from clearing.ledger import GiftEvent, LedgerEntry, Record
from ledger.books import Conn, write_records
from ledger.migrate import migrate

#: The first campaign's first day (UTC midnight): fixed, so a seed gives the same rows.
START = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
KIND = "note"
#: Minor units per card, as the gift rules' default.
UNITS = 10
#: The single Redis server's stream and slot tag the entries claim to come from.
STREAM = "nc:{#0}:ledger"
TAG = "#0"
REGIONS = (("north", 30), ("south", 25), ("east", 20), ("west", 15), ("central", 10))
APPS = (("main", 70), ("lite", 25), ("kids", 5))
#: A recipient answers within this long; one who does not lets the card expire (the rules' window).
CONFIRM_WINDOW_MS = DAY_MS


@dataclasses.dataclass(frozen=True, slots=True)
class CampaignPlan:
    id: str
    brand: str
    name: str
    start_day: int
    #: Cards go out over this many days from start_day (one cohort per day).
    days: int
    #: Share of the recipients it reaches.
    reach: float
    unit_cents: int


CAMPAIGNS = (
    CampaignPlan("aurora-launch", "brand_aurora", "Aurora launch", 0, 5, 0.6, 100),
    CampaignPlan("aurora-winter", "brand_aurora", "Aurora winter", 9, 4, 0.4, 100),
    CampaignPlan("lumen-fans", "shop_lumen", "Lumen fan day", 3, 3, 0.5, 60),
)


@dataclasses.dataclass
class DataSet:
    """The rows to write; also what the tests read back to check the queries."""

    records: list[Record] = dataclasses.field(default_factory=list)
    profiles: list[tuple[str, str | None, int | None, str | None, int]] = dataclasses.field(default_factory=list)
    fans: list[tuple[str, str, int, int]] = dataclasses.field(default_factory=list)
    campaigns: list[tuple[str, str, str, str, int, int]] = dataclasses.field(default_factory=list)
    issues: list[tuple[str, str, str, str, int]] = dataclasses.field(default_factory=list)
    purchases: list[tuple[str, str, str, int, int, bool]] = dataclasses.field(default_factory=list)
    activity: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)


#: A ledger entry to write: (entry kind, debit, credit, units, gift id, sender, cause).
Move = tuple[str, str, str, int, str, str, str]


class _Ledger:
    """Stream entries and records with the ids the Lua scripts give them (``<op>.<n>``)."""

    def __init__(self, rng: random.Random, out: list[Record]) -> None:
        self.rng = rng
        self.out = out
        self.calls = 0

    def call(self, at_ms: int, *parts: Move | dict[str, Any]) -> None:
        """One script call: its entries and gift events (dicts), in order."""
        self.calls += 1
        op = f"{self.rng.getrandbits(64):016x}"
        stream_id = f"{at_ms}-{self.calls}"
        for n, part in enumerate(parts):
            if isinstance(part, dict):
                self.out.append(GiftEvent(STREAM, stream_id, f"{op}.{n}", at_ms=at_ms, **part))
            else:
                ek, dr, cr, units, gift, sender, cause = part
                self.out.append(LedgerEntry(STREAM, stream_id, f"{op}.{n}", ek, dr, cr, KIND, units, gift or None,
                                            sender or None, cause, at_ms))


def _pick(rng: random.Random, weighted: Sequence[tuple[str, int]]) -> str:
    return rng.choices([name for name, _ in weighted], [weight for _, weight in weighted])[0]


def build(seed: int, recipients: int) -> DataSet:
    """The data set of ``seed`` with ``recipients`` users (user ids ``u00001``...)."""
    rng = random.Random(seed)
    data = DataSet()
    ledger = _Ledger(rng, data.records)
    start_ms = int(START.timestamp() * 1000)
    users = [f"u{i:05d}" for i in range(1, recipients + 1)]
    for user in users:
        region = None if rng.random() < 0.05 else _pick(rng, REGIONS)
        birth_year = None if rng.random() < 0.08 else rng.randint(1958, 2011)
        data.profiles.append((user, region, birth_year, _pick(rng, APPS), start_ms))
    brands = sorted({plan.brand for plan in CAMPAIGNS})
    levels = {(brand, user): rng.choices([0, 1, 2, 3, 4, 5], [10, 30, 25, 15, 12, 8])[0]
              for brand in brands for user in users if rng.random() < 0.7}
    data.fans.extend((brand, user, level, start_ms - 30 * DAY_MS) for (brand, user), level in levels.items())
    chosen = {plan.id: [user for user in users if rng.random() < plan.reach] for plan in CAMPAIGNS}
    for brand in brands:
        cards = sum(len(chosen[plan.id]) for plan in CAMPAIGNS if plan.brand == brand)
        ledger.call(start_ms - DAY_MS, ("mint", f"issued:{TAG}", f"avail:{brand}", cards * UNITS, "", "", "mint"))
    active: dict[str, set[int]] = {}
    for plan in CAMPAIGNS:
        data.campaigns.append((plan.id, plan.brand, plan.name, KIND, plan.unit_cents,
                               start_ms + plan.start_day * DAY_MS))
        for n, user in enumerate(chosen[plan.id], start=1):
            _card(rng, ledger, data, plan, user, n, levels.get((plan.brand, user)), start_ms, active)
    for user, days in sorted(active.items()):
        data.activity.extend((user, start_ms + day * DAY_MS + rng.randrange(DAY_MS), "connect") for day in sorted(days))
    return data


def _card(rng: random.Random, ledger: _Ledger, data: DataSet, plan: CampaignPlan, user: str, n: int,
          level: int | None, start_ms: int, active: dict[str, set[int]]) -> None:
    """One card of a campaign to ``user``, its answer, what the user bought and when the
    user came back. Fans of higher levels accept, buy and return more often."""
    gift = f"{plan.id}-{n}"
    day = plan.start_day + rng.randrange(plan.days)
    sent_ms = start_ms + day * DAY_MS + rng.randrange(DAY_MS - 2 * HOUR_MS)
    brand = plan.brand
    data.issues.append((plan.id, user, brand, gift, sent_ms))
    event = {"gift_id": gift, "sender": brand, "recipient": user, "kind": KIND, "qty": 1, "cost": UNITS,
             "amount": UNITS, "payer": brand}
    ledger.call(sent_ms, ("hold", f"avail:{brand}", f"held:{brand}", UNITS, gift, brand, "send"),
                event | {"event": "sent"})
    fan = level or 0
    answer = rng.random()
    accepted = answer < 0.35 + 0.08 * fan
    if accepted:
        at = sent_ms + rng.randrange(1, CONFIRM_WINDOW_MS)
        ledger.call(at, ("settle", f"held:{brand}", f"transit:{TAG}", UNITS, gift, brand, "accepted"),
                    ("credit", f"transit:{TAG}", f"avail:{user}", UNITS, gift, brand, "accepted"),
                    event | {"event": "accepted"})
        if rng.random() < 0.12 + 0.05 * fan:
            bought = at + rng.randrange(10 * DAY_MS)  # some fall outside a 7-day window
            data.purchases.append((f"order-{gift}", brand, user, rng.randrange(500, 15_000, 50), bought,
                                   rng.random() < 0.05))
    elif answer < 0.8:
        at = sent_ms + rng.randrange(1, CONFIRM_WINDOW_MS)
        ledger.call(at, ("release", f"held:{brand}", f"avail:{brand}", UNITS, gift, brand, "declined"),
                    event | {"event": "declined"})
    else:
        ledger.call(sent_ms + CONFIRM_WINDOW_MS, ("expire", f"held:{brand}", f"avail:{brand}", UNITS, gift, brand,
                                                  "expired"), event | {"event": "expired"})
    days = active.setdefault(user, set())
    days.add(day)
    base = 0.25 + 0.06 * fan + (0.15 if accepted else 0.0)
    for after in range(1, 22):
        if rng.random() < base * 0.84 ** after:
            days.add(day + after)


_INSERTS = {
    "profiles": "INSERT INTO profile (user_id, region, birth_year, app, updated_ms) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
    "fans": "INSERT INTO fan_member (owner, user_id, level, since_ms) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
    "campaigns": "INSERT INTO campaign (id, brand, name, kind, unit_cents, started_ms) VALUES (%s, %s, %s, %s, %s, %s) "
                 "ON CONFLICT DO NOTHING",
    "issues": "INSERT INTO campaign_issue (campaign, recipient, sender, gift_id, at_ms) VALUES (%s, %s, %s, %s, %s) "
              "ON CONFLICT DO NOTHING",
    "purchases": "INSERT INTO purchase (order_id, shop, buyer, amount_cents, at_ms, refunded) "
                 "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    "activity": "INSERT INTO activity (user_id, at_ms, what) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
}


async def write(conn: Conn, data: DataSet) -> dict[str, int]:
    """Migrate, then write ``data`` in one transaction; returns rows per table (given, not
    necessarily new)."""
    await migrate(conn)
    async with conn.transaction():
        for start in range(0, len(data.records), 5000):
            await write_records(conn, data.records[start:start + 5000])
        async with conn.cursor() as cur:
            for name, statement in _INSERTS.items():
                rows: list[tuple[Any, ...]] = getattr(data, name)
                if rows:
                    await cur.executemany(statement, rows)
    return {"records": len(data.records)} | {name: len(getattr(data, name)) for name in _INSERTS}
