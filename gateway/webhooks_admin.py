"""The admin API of the webhooks' dead letters (notecard/webhooks.py, docs/ledger.md
"Webhooks"): list them, newest first, and send them all back for delivery. Mounted by
gateway/admin_http.py."""

from __future__ import annotations

from aiohttp import web

from clearing.keys import KeySchema
from clearing.topology import AnyRedis
from gateway.admin_json import AdminError, json_response
from gateway.webhook_letters import MAX_LIST, DeadLetters

#: Letters listed when the call gives no ``limit``.
DEFAULT_LIST = 100


class WebhooksAdmin:
    def __init__(self, redis: AnyRedis, keys: KeySchema) -> None:
        self.letters = DeadLetters(redis, keys)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/webhooks/dead", self.list_dead)
        app.router.add_post("/admin/webhooks/dead/retry", self.retry_dead)

    async def list_dead(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", str(DEFAULT_LIST))
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
            raise AdminError(400, "BAD_REQUEST", f"limit is an integer from 1 to {MAX_LIST}")
        letters, total = await self.letters.newest(int(raw))
        return json_response({"dead": letters, "total": total})

    async def retry_dead(self, request: web.Request) -> web.Response:
        return json_response({"moved": await self.letters.retry_all()})
