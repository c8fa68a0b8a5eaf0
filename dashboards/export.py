"""The dashboards as JSON objects and CSV text: what the admin API serves and the CLI
prints (docs/dashboards.md "Formats")."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from dashboards.queries import Conversion, ProfileBreakdown, Retention, Scope

#: The conversion CSV's columns, in order.
CONVERSION_COLUMNS = ("campaign", "brand", "name", "issued", "accepted", "purchased", "accept_rate",
                      "purchase_rate", "cost_units", "cost_cents", "revenue_cents", "cost_per_conversion_cents",
                      "roi")


def _scope(scope: Scope) -> dict[str, str | None]:
    return {"brand": scope.brand, "campaign": scope.campaign}


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    # An absent number (a rate of nothing) is an empty cell.
    writer.writerows([["" if cell is None else cell for cell in row] for row in rows])
    return out.getvalue()


def profile_json(report: ProfileBreakdown) -> dict[str, Any]:
    return {"scope": _scope(report.scope), "recipients": report.recipients,
            "breakdown": {name: [{"value": value, "recipients": count} for value, count in rows]
                          for name, rows in report.breakdown.items()}}


def profile_csv(report: ProfileBreakdown) -> str:
    return _csv(("dimension", "value", "recipients"),
                ((name, value, count) for name, rows in report.breakdown.items() for value, count in rows))


def conversion_json(report: Conversion) -> dict[str, Any]:
    return {"scope": _scope(report.scope), "window_days": report.window_days,
            "campaigns": [{name: row.row()[name] for name in CONVERSION_COLUMNS} for row in report.campaigns]}


def conversion_csv(report: Conversion) -> str:
    return _csv(CONVERSION_COLUMNS, ([row.row()[name] for name in CONVERSION_COLUMNS] for row in report.campaigns))


def retention_json(report: Retention) -> dict[str, Any]:
    return {"scope": _scope(report.scope), "days": report.days, "timezone": report.timezone,
            "cohorts": [{"day": cohort.day.isoformat(), "recipients": cohort.recipients, "active": cohort.active,
                         "rate": cohort.rates()} for cohort in report.cohorts]}


def retention_csv(report: Retention) -> str:
    """One line per cohort and day after it (long form: a spreadsheet pivots it)."""
    return _csv(("cohort_day", "recipients", "day_after", "active", "rate"),
                ((cohort.day.isoformat(), cohort.recipients, after, active, rate)
                 for cohort in report.cohorts
                 for after, (active, rate) in enumerate(zip(cohort.active, cohort.rates(), strict=True), start=1)))
