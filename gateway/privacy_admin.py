"""The admin API of GDPR access and erasure (docs/regions.md "Export and erasure"):
``GET /admin/users/{user}/export`` (Art. 15) and ``POST /admin/users/{user}/erase``
(Art. 17); and a user's eco badges, ``GET /admin/users/{user}/badges`` (docs/regions.md
"Eco badges"). Mounted by gateway/admin_http.py; errors go through its middleware (an unknown
user is ``404 UNKNOWN_USER``, gifts still in flight ``409 ERASE_PENDING``)."""

from __future__ import annotations

import logging

from aiohttp import web

from clearing.badges import Badges
from clearing.erasure import Erasure
from clearing.errors import Refusal, Refused
from clearing.gifts import Clearing
from clearing.keys import is_valid_id
from gateway.admin_json import json_response

log = logging.getLogger("notecard.gateway.privacy")


class PrivacyAdmin:
    def __init__(self, clearing: Clearing) -> None:
        self.erasure = Erasure(clearing)
        self.badges = Badges(clearing.topology, clearing.gift_rules, clearing.keys, clearing.now,
                             settings=clearing.settings)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/users/{user}/export", self.export)
        app.router.add_post("/admin/users/{user}/erase", self.erase)
        app.router.add_get("/admin/users/{user}/badges", self.get_badges)

    async def get_badges(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        if not is_valid_id(user) or not await self.badges.exists(user):
            raise Refused(Refusal.UNKNOWN_USER)
        return json_response(await self.badges.of(user))

    async def export(self, request: web.Request) -> web.Response:
        return json_response(await self.erasure.export(request.match_info["user"]))

    async def erase(self, request: web.Request) -> web.Response:
        erased = await self.erasure.erase(request.match_info["user"])
        # The audit line keeps the pseudonym, never more about the person.
        log.info("user erased", extra={"pseudonym": erased["pseudonym"], "settled": len(erased.get("settled", []))})
        return json_response(erased)

