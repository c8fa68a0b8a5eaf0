"""Admin routes for the platform's backend: act for a user, and keep accounts in step.

::

    POST /admin/gifts                       {gift_id, sender, recipient, kind?, qty?, app?}: send for the sender
    POST /admin/users/{user}/disconnect     close the user's connections on every node
    POST /admin/bulk/users                  {users: [{user_id, verified?, vip?, banned?, created_at_ms?, app?}]}
    POST /admin/bulk/follows                {follows: [{follower, followee, since_ms?, mutual?}]}

A gift sent here is the very send a client makes (the same script, rules, order of checks
and idempotency by gift id: a retry with the same id and payload answers the original gift,
another payload IDEMPOTENCY_CONFLICT; a refusal is remembered and answered again). A bulk
call takes at most :data:`MAX_BATCH` items; each item succeeds or fails on its own and the
answer lists every item's outcome in the order given (a failed item changes nothing).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from clearing import ClearingUnavailable, Refusal, Refused
from clearing.keys import APP_PATTERN, is_valid_id
from clearing.regions import DEFAULT_REGION
from gateway.admin_json import AdminError, field, json_response, only, path_id, plain, read_body

if TYPE_CHECKING:
    from gateway.admin_http import AdminApp

#: Items in one bulk call; a larger batch is refused whole (400 TOO_MANY_ITEMS).
MAX_BATCH = 500
#: Items of one batch in flight at once.
BATCH_CONCURRENCY = 16
#: Refusals that say the request itself is malformed (400); any other refusal of a send is
#: a rule of gift-rules.md saying no (422), except the ones with a status of their own.
_INPUT_CODES = frozenset({Refusal.BAD_REQUEST, Refusal.BAD_QUANTITY, Refusal.UNKNOWN_KIND, Refusal.SELF_GIFT})
_SEND_STATUS = {Refusal.UNKNOWN_USER: 404, Refusal.IDEMPOTENCY_CONFLICT: 409, Refusal.RATE_LIMITED: 429}
_APP_RE = re.compile(APP_PATTERN)
_SEND_FIELDS = ("gift_id", "sender", "recipient", "kind", "qty", "app")
_USER_FIELDS = ("user_id", "verified", "vip", "banned", "created_at_ms", "app", "region")
_FOLLOW_FIELDS = ("follower", "followee", "since_ms", "mutual")


class BackendRoutes:
    def __init__(self, admin: AdminApp) -> None:
        self.admin = admin

    def add(self, app: web.Application) -> None:
        app.router.add_post("/admin/gifts", self.send_gift)
        app.router.add_post("/admin/users/{user}/disconnect", self.disconnect)
        app.router.add_post("/admin/bulk/users", self.bulk_users)
        app.router.add_post("/admin/bulk/follows", self.bulk_follows)

    async def send_gift(self, request: web.Request) -> web.Response:
        data = only(await read_body(request), *_SEND_FIELDS)
        gift_id, sender, recipient = (_id(data, name) for name in ("gift_id", "sender", "recipient"))
        kind = field(data, "kind", str) or self.admin.rules.card_kinds[0]
        qty = field(data, "qty", int)
        app = field(data, "app", str) or "main"
        if not _APP_RE.fullmatch(app):
            raise AdminError(400, "BAD_REQUEST", "field 'app' must be 1-32 characters of a-z 0-9 _")
        try:
            gift = await self.admin.clearing.reserve(gift_id, sender, recipient, kind, 1 if qty is None else qty,
                                                     app=app)
        except Refused as refusal:
            status = 400 if refusal.code in _INPUT_CODES else _SEND_STATUS.get(refusal.code, 422)
            raise AdminError(status, refusal.code.value, str(refusal)) from None
        self.admin.metrics.gifts_of("sent").inc()
        return json_response(plain(gift))

    async def disconnect(self, request: web.Request) -> web.Response:
        only(await read_body(request))
        nodes = await self.admin.accounts.disconnect(path_id(request, "user"))
        return json_response({"ok": True, "nodes": nodes})

    async def bulk_users(self, request: web.Request) -> web.Response:
        return await self._bulk(request, "users", self._upsert_user)

    async def bulk_follows(self, request: web.Request) -> web.Response:
        return await self._bulk(request, "follows", self._follow)

    async def _bulk(self, request: web.Request, name: str,
                    apply: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> web.Response:
        items = only(await read_body(request), name).get(name)
        if not isinstance(items, list) or not items:
            raise AdminError(400, "BAD_REQUEST", f"field '{name}' must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise AdminError(400, "TOO_MANY_ITEMS", f"at most {MAX_BATCH} items per call (got {len(items)})")
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(item: Any) -> dict[str, Any]:
            async with gate:
                return await _outcome(apply, item)

        results = await asyncio.gather(*(one(item) for item in items))
        failed = sum(1 for r in results if not r["ok"])
        return json_response({"results": results, "succeeded": len(results) - failed, "failed": failed})

    async def _upsert_user(self, item: dict[str, Any]) -> dict[str, Any]:
        """Create the user, or set the given flags (and region) of an existing one (its
        ``created_at_ms`` and ``app`` stay as they were created)."""
        data = only(item, *_USER_FIELDS)
        user_id = _id(data, "user_id")
        flags = {name: field(data, name, bool) for name in ("verified", "vip", "banned")}
        created_at_ms, app = field(data, "created_at_ms", int), field(data, "app", str)
        region = field(data, "region", str)
        accounts = self.admin.accounts
        try:
            await accounts.create_user(user_id, verified=bool(flags["verified"]), vip=bool(flags["vip"]),
                                       banned=bool(flags["banned"]), created_at_ms=created_at_ms, app=app or "main",
                                       region=DEFAULT_REGION if region is None else region)
            return {"user_id": user_id, "ok": True, "created": True}
        except Refused as refusal:
            if refusal.code is not Refusal.USER_EXISTS:
                raise
        await accounts.set_flags(user_id, **flags, region=region)
        return {"user_id": user_id, "ok": True, "created": False}

    async def _follow(self, item: dict[str, Any]) -> dict[str, Any]:
        data = only(item, *_FOLLOW_FIELDS)
        follower, followee = _id(data, "follower"), _id(data, "followee")
        since_ms, mutual = field(data, "since_ms", int), bool(field(data, "mutual", bool))
        accounts = self.admin.accounts
        await accounts.follow(follower, followee, since_ms=since_ms)
        if mutual:
            await accounts.follow(followee, follower, since_ms=since_ms)
        return {"follower": follower, "followee": followee, "ok": True}


def _id(data: dict[str, Any], name: str) -> str:
    value: str = field(data, name, str, required=True)
    if not is_valid_id(value):
        raise AdminError(400, "BAD_REQUEST", f"field '{name}' must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return value


async def _outcome(apply: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], item: Any) -> dict[str, Any]:
    """One bulk item's result: what ``apply`` answers, or its error, as the route would
    answer it alone. Redis being unavailable fails the item (the caller retries it: every
    item is idempotent), not the batch."""
    if not isinstance(item, dict):
        return {"ok": False, "error": "BAD_REQUEST", "message": "an item must be a JSON object"}
    try:
        return await apply(item)
    except AdminError as exc:
        return {"ok": False, "error": exc.code, "message": exc.message}
    except Refused as refusal:
        return {"ok": False, "error": refusal.code.value, "message": str(refusal)}
    except ClearingUnavailable:
        return {"ok": False, "error": "UNAVAILABLE", "message": "redis unavailable; retry"}
