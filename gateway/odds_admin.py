"""Published odds over HTTP (clearing/odds.py, docs/regions.md "Published odds"):
``GET /odds`` for anyone (no token: the odds must be public), and the operator's
``GET /admin/odds`` and ``PUT /admin/odds/{table}``. Mounted by gateway/admin_http.py."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from clearing.odds import ALGORITHM, parse_entries
from clearing.scenes import Scenes
from gateway.admin_json import field, json_response, only, path_id, read_body


class OddsAdmin:
    def __init__(self, scenes: Scenes) -> None:
        self.scenes = scenes

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/odds", self.public)
        app.router.add_get("/admin/odds", self.public)
        app.router.add_put("/admin/odds/{table}", self.publish)

    async def _document(self) -> dict[str, Any]:
        tables = await self.scenes.odds()
        regions = await self.scenes.regions()
        return {
            "algorithm": ALGORITHM,
            "tables": [table.public() | {"regions": sorted(c for c, r in regions.items() if r.lucky_odds == t)}
                       for t, table in sorted(tables.items())],
        }

    async def public(self, request: web.Request) -> web.Response:
        """Every table: the version in force (entries, probabilities, commitment to its key)
        and the retired versions with their keys; which regions draw from it."""
        return json_response(await self._document())

    async def publish(self, request: web.Request) -> web.Response:
        """``{"entries": [{"bonus": cards, "weight": n}, ...]}``: a new version of the table."""
        table_id = path_id(request, "table")
        entries = field(only(await read_body(request), "entries"), "entries", list, required=True)
        table = await self.scenes.publish_odds(table_id, parse_entries(entries))
        return json_response(table.public())
