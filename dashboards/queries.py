"""The three dashboards as SQL on the PostgreSQL book of record (docs/dashboards.md says
which tables and fields each reads).

Mapping from the ledger to the funnel: a card is *issued* when the ledger has its gift's
``sent`` event (``gift_event``), and *accepted* when it has the ``accepted`` one; a
campaign's cards are the gifts its ``campaign_issue`` rows name by (sender, gift id). What a
campaign cost is what left the brand for good for those gifts: the units of their
``settle`` and ``consume`` entries (declined and expired cards come back by ``release`` /
``expire`` and cost nothing).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from ledger.books import Conn

#: The age buckets of the profile breakdown: (label, lowest age, highest age).
AGE_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("<18", 0, 17), ("18-24", 18, 24), ("25-34", 25, 34), ("35-44", 35, 44), ("45-54", 45, 54), ("55+", 55, 200),
)
#: The breakdown's dimensions, in the order they are reported.
DIMENSIONS = ("region", "age", "app", "fan_level")
#: What a missing attribute is reported as.
UNKNOWN = "unknown"
DAY_MS = 86_400_000


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """Whose cards: a brand's (every gift it sent), a campaign's, or both at once."""

    brand: str | None = None
    campaign: str | None = None

    def params(self) -> dict[str, Any]:
        return {"brand": self.brand, "campaign": self.campaign}


# The gifts in scope, from the ledger's `sent` events. A parameter typed in the query
# (%(brand)s::text) so that NULL means "any". Two branches, of which PostgreSQL runs one
# (the other's condition on the parameter is false when planned): without a campaign, the
# events of the brand (or all); with one, from the campaign's rows to their events by the
# index on (sender, gift_id), rather than a look-up in campaign_issue for every event.
_SENT = """
sent AS (
    SELECT g.sender, g.gift_id, g.recipient, g.at_ms
    FROM gift_event g
    WHERE %(campaign)s::text IS NULL AND g.event = 'sent'
      AND (%(brand)s::text IS NULL OR g.sender = %(brand)s::text)
    UNION ALL
    SELECT g.sender, g.gift_id, g.recipient, g.at_ms
    FROM campaign_issue ci JOIN gift_event g ON g.sender = ci.sender AND g.gift_id = ci.gift_id
    WHERE ci.campaign = %(campaign)s::text AND g.event = 'sent'
      AND (%(brand)s::text IS NULL OR g.sender = %(brand)s::text)
)"""


def _age_case(column: str) -> str:
    arms = " ".join(f"WHEN {column} BETWEEN {low} AND {high} THEN '{label}'" for label, low, high in AGE_BUCKETS)
    return f"CASE {arms} ELSE '{UNKNOWN}' END"


# Each recipient once, by the first card in scope: the age is the one that year, the fan
# level the one in the group of that card's sender.
_PROFILE = f"""
WITH {_SENT},
first AS (
    SELECT DISTINCT ON (recipient) recipient, sender, at_ms FROM sent ORDER BY recipient, at_ms, gift_id
),
attrs AS (
    SELECT f.recipient, p.region, p.app, fm.level,
           extract(year FROM to_timestamp(f.at_ms / 1000.0) AT TIME ZONE 'UTC')::int - p.birth_year AS age
    FROM first f
    LEFT JOIN profile p ON p.user_id = f.recipient
    LEFT JOIN fan_member fm ON fm.owner = f.sender AND fm.user_id = f.recipient
)
SELECT d.dimension, d.value, count(*) AS recipients
FROM attrs a
CROSS JOIN LATERAL (VALUES ('region', coalesce(a.region, '{UNKNOWN}')),
                           ('age', {_age_case("a.age")}),
                           ('app', coalesce(a.app, '{UNKNOWN}')),
                           ('fan_level', coalesce(a.level::text, 'none'))) AS d(dimension, value)
GROUP BY d.dimension, d.value
"""


@dataclasses.dataclass(frozen=True, slots=True)
class ProfileBreakdown:
    scope: Scope
    recipients: int
    #: dimension -> [(value, recipients)], most recipients first (age buckets in age order).
    breakdown: dict[str, list[tuple[str, int]]]


def _order(dimension: str, counts: dict[str, int]) -> list[tuple[str, int]]:
    if dimension == "age":
        order = [label for label, _, _ in AGE_BUCKETS] + [UNKNOWN]
        return [(label, counts[label]) for label in order if label in counts]
    if dimension == "fan_level":
        return sorted(counts.items(), key=lambda item: (item[0] == "none", int(item[0]) if item[0].isdigit() else 0))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


async def profile(conn: Conn, scope: Scope) -> ProfileBreakdown:
    """Recipients of the scope's cards by region, age bucket, app and fan level."""
    cur = await conn.execute(_PROFILE, scope.params())
    counts: dict[str, dict[str, int]] = {name: {} for name in DIMENSIONS}
    for dimension, value, recipients in await cur.fetchall():
        counts[dimension][value] = int(recipients)
    total = sum(counts["region"].values())
    return ProfileBreakdown(scope, total, {name: _order(name, counts[name]) for name in DIMENSIONS})


# Per campaign: its cards' outcomes (ledger events), what they cost (ledger entries), and
# the purchases of accepting recipients from the brand within the window after accepting.
_CONVERSION = """
WITH issues AS (
    SELECT c.id AS campaign, ci.sender, ci.gift_id, ci.recipient
    FROM campaign c JOIN campaign_issue ci ON ci.campaign = c.id
    WHERE (%(brand)s::text IS NULL OR c.brand = %(brand)s::text)
      AND (%(campaign)s::text IS NULL OR c.id = %(campaign)s::text)
),
outcome AS (
    SELECT i.campaign, i.recipient,
           bool_or(g.event = 'sent') AS issued,
           min(g.at_ms) FILTER (WHERE g.event = 'accepted') AS accepted_ms
    FROM issues i JOIN gift_event g ON g.sender = i.sender AND g.gift_id = i.gift_id
    GROUP BY i.campaign, i.recipient
),
cost AS (
    SELECT i.campaign, sum(e.units) AS units
    FROM issues i JOIN ledger_entry e ON e.sender = i.sender AND e.gift_id = i.gift_id
    WHERE e.entry_kind IN ('settle', 'consume')
    GROUP BY i.campaign
),
bought AS (
    SELECT o.campaign, p.buyer, p.amount_cents
    FROM outcome o
    JOIN campaign c ON c.id = o.campaign
    JOIN purchase p ON p.buyer = o.recipient AND p.shop = c.brand AND NOT p.refunded
                   AND p.at_ms >= o.accepted_ms AND p.at_ms < o.accepted_ms + %(window_ms)s
)
SELECT c.id, c.brand, c.name, c.unit_cents,
       (SELECT count(*) FROM outcome o WHERE o.campaign = c.id AND o.issued),
       (SELECT count(*) FROM outcome o WHERE o.campaign = c.id AND o.accepted_ms IS NOT NULL),
       (SELECT count(DISTINCT b.buyer) FROM bought b WHERE b.campaign = c.id),
       coalesce((SELECT sum(b.amount_cents) FROM bought b WHERE b.campaign = c.id), 0),
       coalesce((SELECT cost.units FROM cost WHERE cost.campaign = c.id), 0)
FROM campaign c
WHERE (%(brand)s::text IS NULL OR c.brand = %(brand)s::text)
  AND (%(campaign)s::text IS NULL OR c.id = %(campaign)s::text)
ORDER BY c.started_ms, c.id
"""


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


@dataclasses.dataclass(frozen=True, slots=True)
class CampaignConversion:
    campaign: str
    brand: str
    name: str
    issued: int
    accepted: int
    #: Accepting recipients who bought from the brand within the window after accepting.
    purchased: int
    revenue_cents: int
    #: Units that left the brand for the campaign's accepted cards (settle + consume).
    cost_units: int
    cost_cents: int

    @property
    def accept_rate(self) -> float | None:
        return _ratio(self.accepted, self.issued)

    @property
    def purchase_rate(self) -> float | None:
        return _ratio(self.purchased, self.issued)

    @property
    def cost_per_conversion_cents(self) -> float | None:
        return _ratio(self.cost_cents, self.purchased)

    @property
    def roi(self) -> float | None:
        """(revenue - cost) / cost; None when the cost is unknown (``unit_cents`` 0)."""
        return _ratio(self.revenue_cents - self.cost_cents, self.cost_cents)

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "accept_rate": self.accept_rate, "purchase_rate": self.purchase_rate,
            "cost_per_conversion_cents": self.cost_per_conversion_cents, "roi": self.roi}


@dataclasses.dataclass(frozen=True, slots=True)
class Conversion:
    scope: Scope
    window_days: int
    campaigns: list[CampaignConversion]


async def conversion(conn: Conn, scope: Scope, window_days: int = 7) -> Conversion:
    """Issued -> accepted -> purchase, and the cost per purchase, per campaign."""
    cur = await conn.execute(_CONVERSION, scope.params() | {"window_ms": window_days * DAY_MS})
    rows = [CampaignConversion(campaign, brand, name, int(issued), int(accepted), int(purchased), int(revenue),
                               int(units), int(units) * int(unit_cents))
            for campaign, brand, name, unit_cents, issued, accepted, purchased, revenue, units
            in await cur.fetchall()]
    return Conversion(scope, window_days, rows)


# Cohort: the calendar day (in the platform's zone) of a recipient's first card in scope;
# a recipient is active on day d of the cohort when it has any activity that calendar day.
_DAY = "(to_timestamp({0} / 1000.0) AT TIME ZONE %(tz)s::text)::date"
_RETENTION = f"""
WITH {_SENT},
first AS (
    SELECT recipient, min(at_ms) AS first_ms FROM sent GROUP BY recipient
),
cohort AS (
    SELECT recipient, first_ms, {_DAY.format("first_ms")} AS day0 FROM first
),
-- Only the activity that can fall on days 1..days: after the first card (day 1 starts after
-- it) and within days + 2 whole days of it (room for a daylight-saving hour), read by the
-- key (user_id, at_ms) instead of every activity row of the recipients.
active AS (
    SELECT DISTINCT a.user_id, {_DAY.format("a.at_ms")} AS day
    FROM activity a JOIN cohort c ON c.recipient = a.user_id
    WHERE a.at_ms > c.first_ms AND a.at_ms < c.first_ms + (%(days)s + 2) * {DAY_MS}::bigint
)
SELECT c.day0, 0 AS after, count(*) FROM cohort c GROUP BY c.day0
UNION ALL
SELECT c.day0, a.day - c.day0, count(*)
FROM cohort c JOIN active a ON a.user_id = c.recipient
WHERE a.day - c.day0 BETWEEN 1 AND %(days)s
GROUP BY c.day0, a.day - c.day0
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Cohort:
    day: dt.date
    recipients: int
    #: active[d - 1]: recipients of the cohort active on day d after it, d = 1..days.
    active: list[int]

    def rates(self) -> list[float | None]:
        return [_ratio(count, self.recipients) for count in self.active]


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    scope: Scope
    days: int
    timezone: str
    cohorts: list[Cohort]


async def retention(conn: Conn, scope: Scope, days: int = 14, timezone: str = "UTC") -> Retention:
    """Cohorts of recipients by the day of their first card x the days after it they were active."""
    cur = await conn.execute(_RETENTION, scope.params() | {"days": days, "tz": timezone})
    sizes: dict[dt.date, int] = {}
    active: dict[dt.date, list[int]] = {}
    for day0, after, count in await cur.fetchall():
        if after == 0:
            sizes[day0] = int(count)
        else:
            active.setdefault(day0, [0] * days)[int(after) - 1] = int(count)
    cohorts = [Cohort(day, sizes[day], active.get(day, [0] * days)) for day in sorted(sizes)]
    return Retention(scope, days, timezone, cohorts)
