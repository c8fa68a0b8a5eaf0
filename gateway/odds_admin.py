"""Published odds over HTTP (clearing/odds.py, docs/regions.md "Published odds"):
``GET /odds`` for anyone (no token: the odds must be public), and the operator's
``GET /admin/odds`` and ``PUT /admin/odds/{table}``. Mounted by gateway/admin_http.py."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from clearing.keys import is_valid_id
from clearing.odds import ALGORITHM, parse_entries
from clearing.scenes import Scenes
from gateway.admin_json import AdminError, json_response


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
        table_id = request.match_info["table"]
        if not is_valid_id(table_id):
            raise AdminError(400, "BAD_REQUEST", "a table id is 1-64 characters of A-Z a-z 0-9 _ . : -")
        try:
            body = await request.json()
        except ValueError:
            raise AdminError(400, "BAD_REQUEST", "the body is not JSON") from None
        if not isinstance(body, dict) or set(body) != {"entries"}:
            raise AdminError(400, "BAD_REQUEST", "the body is {\"entries\": [{\"bonus\": cards, \"weight\": n}, ...]}")
        table = await self.scenes.publish_odds(table_id, parse_entries(body["entries"]))
        return json_response(table.public())
