"""The card art catalogue over the admin API (clearing/skins.py, docs/regions.md "Regional
card art"): list, create or replace, delete. Mounted by gateway/admin_http.py."""

from __future__ import annotations

from aiohttp import web

from clearing.scenes import Scenes
from clearing.skins import Skin
from gateway.admin_json import AdminError, json_response, path_id, read_body


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
        skin_id = path_id(request, "skin")
        # Skin.from_plain refuses unknown and missing fields with the skin's own words.
        skin = await self.scenes.put_skin(Skin.from_plain(skin_id, await read_body(request)))
        return json_response(skin.plain())

    async def delete_skin(self, request: web.Request) -> web.Response:
        if not await self.scenes.delete_skin(request.match_info["skin"]):
            raise AdminError(404, "NO_SKIN", "no such skin")
        return json_response({"ok": True})
