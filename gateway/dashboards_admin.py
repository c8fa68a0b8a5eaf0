"""The admin API of the business dashboards (dashboards/, docs/dashboards.md), read from
the PostgreSQL book of record (``NOTECARD_POSTGRES_URL``). Mounted by gateway/admin_http.py.

    GET /admin/dashboards/profile?brand=&campaign=&format=json|csv
    GET /admin/dashboards/conversion?brand=&campaign=&window_days=7&format=
    GET /admin/dashboards/retention?brand=&campaign=&days=14&format=

Each call opens its own connection and closes it: an operator's occasional read needs no
pool, and a node without dashboards callers holds no PostgreSQL connection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from aiohttp import web

from clearing.keys import is_valid_id
from dashboards import export, queries
from dashboards.queries import Scope
from gateway.admin_json import AdminError, json_response
from ledger.books import Conn

log = logging.getLogger("notecard.gateway.dashboards")

#: The largest windows a call may ask for (bounded work per call).
MAX_WINDOW_DAYS = 365
MAX_RETENTION_DAYS = 90
CONNECT_TIMEOUT_S = 5


def _scope(request: web.Request) -> Scope:
    values: dict[str, str | None] = {}
    for name in ("brand", "campaign"):
        value = request.query.get(name)
        if value is not None and not is_valid_id(value):
            raise AdminError(400, "BAD_REQUEST", f"{name} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        values[name] = value
    return Scope(values["brand"], values["campaign"])


def _days(request: web.Request, name: str, default: int, highest: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= highest:
        raise AdminError(400, "BAD_REQUEST", f"{name} is an integer from 1 to {highest}")
    return int(raw)


def _csv_wanted(request: web.Request) -> bool:
    wanted = request.query.get("format", "json")
    if wanted not in ("json", "csv"):
        raise AdminError(400, "BAD_REQUEST", "format is json or csv")
    return wanted == "csv"


def _csv(text: str, name: str) -> web.Response:
    return web.Response(text=text, content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


class DashboardsAdmin:
    def __init__(self, postgres_url: str | None, timezone: str) -> None:
        self.postgres_url = postgres_url
        #: The calendar of the retention cohorts: the platform's (NOTECARD_TIMEZONE).
        self.timezone = timezone

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/dashboards/profile", self.profile)
        app.router.add_get("/admin/dashboards/conversion", self.conversion)
        app.router.add_get("/admin/dashboards/retention", self.retention)

    async def _read(self, query: Callable[[Conn], Awaitable[Any]]) -> Any:
        if not self.postgres_url:
            raise AdminError(503, "NO_BOOKS", "no PostgreSQL book of record configured (NOTECARD_POSTGRES_URL)")
        try:
            async with await psycopg.AsyncConnection.connect(self.postgres_url, autocommit=True,
                                                             connect_timeout=CONNECT_TIMEOUT_S) as conn:
                return await query(conn)
        except psycopg.errors.UndefinedTable:
            # The dashboards' tables come with the ledger's migrations (`notecard ledger migrate`).
            raise AdminError(503, "NO_BOOKS", "the book of record has no dashboards tables yet: "
                                              "run notecard ledger migrate") from None
        except psycopg.OperationalError as exc:
            log.warning("dashboards: PostgreSQL unavailable", extra={"error": str(exc)})
            raise AdminError(503, "UNAVAILABLE", "the book of record is unavailable; retry") from None

    async def profile(self, request: web.Request) -> web.Response:
        scope, as_csv = _scope(request), _csv_wanted(request)
        report = await self._read(lambda conn: queries.profile(conn, scope))
        return _csv(export.profile_csv(report), "profile") if as_csv else json_response(export.profile_json(report))

    async def conversion(self, request: web.Request) -> web.Response:
        scope, as_csv = _scope(request), _csv_wanted(request)
        window = _days(request, "window_days", 7, MAX_WINDOW_DAYS)
        report = await self._read(lambda conn: queries.conversion(conn, scope, window))
        if as_csv:
            return _csv(export.conversion_csv(report), "conversion")
        return json_response(export.conversion_json(report))

    async def retention(self, request: web.Request) -> web.Response:
        scope, as_csv = _scope(request), _csv_wanted(request)
        days = _days(request, "days", 14, MAX_RETENTION_DAYS)
        report = await self._read(lambda conn: queries.retention(conn, scope, days, self.timezone))
        if as_csv:
            return _csv(export.retention_csv(report), "retention")
        return json_response(export.retention_json(report))
