"""The card art catalogue over the admin API (clearing/skins.py, docs/regions.md "Regional
card art"): list, create or replace, delete. Mounted by gateway/admin_http.py."""

from __future__ import annotations

from aiohttp import web

from clearing.keys import is_valid_id
from clearing.scenes import Scenes
from clearing.skins import Skin
from gateway.admin_json import AdminError, json_response


class SkinsAdmin:
    def __init__(self, scenes: Scenes) -> None:
        self.scenes = scenes

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/skins", self.list_skins)
        app.router.add_put("/admin/skins/{skin}", self.put_skin)
        app.router.add_delete("/admin/skins/{skin}", self.delete_skin)

    async def list_skins(self, request: web.Request) -> web.Response:
        skins = await self.scenes.skins()
        problems = [p for p in await self.scenes.problems() if p.startswith("skin ")]
        return json_response({"skins": [s.plain() for _, s in sorted(skins.items())], "problems": problems})

    async def put_skin(self, request: web.Request) -> web.Response:
        skin_id = request.match_info["skin"]
        if not is_valid_id(skin_id):
            raise AdminError(400, "BAD_REQUEST", "a skin id is 1-64 characters of A-Z a-z 0-9 _ . : -")
        try:
            body = await request.json()
        except ValueError:
            raise AdminError(400, "BAD_REQUEST", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise AdminError(400, "BAD_REQUEST", "the body is a skin object")
        skin = await self.scenes.put_skin(Skin.from_plain(skin_id, body))
        return json_response(skin.plain())

    async def delete_skin(self, request: web.Request) -> web.Response:
        if not await self.scenes.delete_skin(request.match_info["skin"]):
            raise AdminError(404, "NO_SKIN", "no such skin")
        return json_response({"ok": True})
