"""The node's HTTP side: the admin API (bearer token), Prometheus metrics and health probes.

Admin routes (JSON in and out, ``Authorization: Bearer <admin token>``)::

    POST   /admin/users                              create {user_id, verified?, vip?, banned?, created_at_ms?, app?}
    GET    /admin/users/{user}                       flags and balances
    PATCH  /admin/users/{user}                       set {verified?, vip?, banned?}
    POST   /admin/users/{user}/mint                  {kind?, qty} whole cards
    PUT    /admin/users/{user}/follows/{other}       {since_ms?} (default now)
    DELETE /admin/users/{user}/follows/{other}
    PUT    /admin/users/{user}/blocks/{other}
    DELETE /admin/users/{user}/blocks/{other}
    GET    /admin/gifts/{gift}                       a gift, or a refused send while remembered
    GET    /admin/invariant                          the conservation check
    GET    /admin/scenes                             scene settings and festival windows
    PATCH  /admin/scenes                             change scene settings {field: value}
    PUT    /admin/festivals/{id}                     {name, start, end, multiplier?, frame?}
    DELETE /admin/festivals/{id}
    GET    /admin/users/{user}/points                points, joint campaign, inventory
    POST   /admin/users/{user}/mentor                {mentor}: bind the user as apprentice

Festival ``start`` / ``end`` are local date-times in the platform time zone
(``2026-02-17T00:00``) or integers of ms since the epoch; the window is [start, end).

Open routes: ``GET /healthz`` (process alive), ``GET /readyz`` (Redis and pub/sub healthy,
the deployment matches the durability preset, not shutting down), ``GET /metrics``; the
same three, and nothing else, on the probe listener (``NOTECARD_PROBE_PORT``). Errors are
``{"error": CODE, "message": text}``.

The account routes check every field as the wire checks its own (docs/protocol.md): ids
are 1-64 characters of ``A-Z a-z 0-9 _ . : -`` (in the path too), an app is ``[a-z0-9_]{1,32}``
as in client tokens, booleans are JSON booleans, integers are JSON integers, instants are
ms since the epoch from 0 to now (plus a minute of clock skew), quantities are whole cards
from 1 up; a field the route does not know is refused rather than ignored (a typo such as
``verifed`` would otherwise create an unverified user). A refused call changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from clearing import (
    Accounts,
    Clearing,
    ClearingUnavailable,
    GiftRules,
    KeySchema,
    Refusal,
    Refused,
    check_invariant,
)
from clearing.keys import is_valid_id
from clearing.scene_config import SceneConfigError
from clearing.scenes import Scenes
from clearing.topology import AnyRedis
from gateway.logs import ThrottledLog
from gateway.metrics import NodeMetrics

log = logging.getLogger("notecard.gateway.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS: dict[Refusal, int] = {
    Refusal.UNKNOWN_USER: 404,
    Refusal.GIFT_NOT_FOUND: 404,
    Refusal.USER_EXISTS: 409,
}
_BOOL_FLAGS = ("verified", "vip", "banned")
_CREATE_FIELDS = ("user_id", *_BOOL_FLAGS, "created_at_ms", "app")


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
    return obj


def _with_unit(plain: dict[str, Any], units_per_card: int) -> dict[str, Any]:
    """Balances are minor units; saying how many make a card lets a reader (``notecard
    admin``) show the whole cards that ``mint`` takes."""
    if "available" in plain:
        return plain | {"units_per_card": units_per_card}
    if isinstance(plain.get("balances"), dict):
        return plain | {"balances": _with_unit(plain["balances"], units_per_card)}
    return plain


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise AdminError(400, "BAD_REQUEST", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise AdminError(400, "BAD_REQUEST", "body must be a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise AdminError(400, "BAD_REQUEST", f"field '{name}' is required")
        return None
    if type(value) is not kind:
        raise AdminError(400, "BAD_REQUEST", f"field '{name}' must be of type {kind.__name__}")
    return value


def _only(data: dict[str, Any], *allowed: str) -> dict[str, Any]:
    """Refuse fields the route does not know: silently ignored, a misspelt one would do
    something else than asked."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "no fields"
        raise AdminError(400, "BAD_REQUEST", f"unknown field '{unknown[0]}'; expected {expected}")
    return data


def _path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not is_valid_id(value):
        raise AdminError(400, "BAD_REQUEST", f"{name} id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return value


class AdminApp:
    def __init__(
        self, *, node_id: str, admin_token: str, redis: AnyRedis, clearing: Clearing, accounts: Accounts,
        rules: GiftRules, keys: KeySchema, metrics: NodeMetrics, ready: Callable[[], Awaitable[bool]],
        scenes: Scenes | None = None, not_ready_reasons: Callable[[], list[str]] | None = None,
    ) -> None:
        self.scenes = scenes or Scenes(clearing.topology, rules, keys, settings=clearing.settings)
        self.node_id = node_id
        self.admin_token = admin_token
        self.redis = redis
        self.clearing = clearing
        self.accounts = accounts
        self.rules = rules
        self.keys = keys
        self.metrics = metrics
        self.ready = ready
        self.not_ready_reasons = not_ready_reasons or list
        self.rejected_tokens = ThrottledLog(log, "admin token rejected")

    def build_probes(self) -> web.Application:
        """Probes and metrics only: safe to bind where the admin API must not be reached."""
        app = web.Application(middlewares=[self._errors], client_max_size=1024)
        self._add_probes(app)
        return app

    def _add_probes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_view)

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024)
        self._add_probes(app)
        app.router.add_post("/admin/users", self.create_user)
        app.router.add_get("/admin/users/{user}", self.get_user)
        app.router.add_patch("/admin/users/{user}", self.set_flags)
        app.router.add_post("/admin/users/{user}/mint", self.mint)
        app.router.add_put("/admin/users/{user}/follows/{other}", self.follow)
        app.router.add_delete("/admin/users/{user}/follows/{other}", self.unfollow)
        app.router.add_put("/admin/users/{user}/blocks/{other}", self.block)
        app.router.add_delete("/admin/users/{user}/blocks/{other}", self.unblock)
        app.router.add_get("/admin/gifts/{gift}", self.get_gift)
        app.router.add_get("/admin/invariant", self.invariant)
        app.router.add_get("/admin/scenes", self.get_scenes)
        app.router.add_patch("/admin/scenes", self.patch_scenes)
        app.router.add_put("/admin/festivals/{festival}", self.put_festival)
        app.router.add_delete("/admin/festivals/{festival}", self.delete_festival)
        app.router.add_get("/admin/users/{user}/points", self.get_points)
        app.router.add_post("/admin/users/{user}/mentor", self.bind_mentor)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path.startswith("/admin/"):
                self._authorize(request)
            return await handler(request)
        except AdminError as exc:
            return _json({"error": exc.code, "message": exc.message}, exc.status)
        except Refused as exc:
            return _json({"error": exc.code.value, "message": str(exc)}, _STATUS.get(exc.code, 400))
        except SceneConfigError as exc:
            return _json({"error": "BAD_REQUEST", "message": str(exc)}, 400)
        except ClearingUnavailable:
            return _json({"error": "UNAVAILABLE", "message": "redis unavailable; retry"}, 503)
        except web.HTTPException as exc:
            return _json({"error": "NOT_FOUND" if exc.status == 404 else "BAD_REQUEST",
                          "message": exc.reason}, exc.status)

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            # Never the token itself: the operator needs to know that calls are refused, and
            # from where (a CLI run from another folder has other generated secrets).
            self.rejected_tokens.log(peer=request.remote, path=request.path,
                                     reason="missing" if not token else "wrong")
            raise AdminError(401, "UNAUTHORIZED", "admin token missing or wrong")

    # ------------------------------------------------------------ probes
    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "node": self.node_id})

    async def readyz(self, request: web.Request) -> web.Response:
        ok = await self.ready()
        body: dict[str, Any] = {"ready": ok, "node": self.node_id}
        reasons = self.not_ready_reasons()
        if reasons:
            body["reasons"] = reasons
        return _json(body, 200 if ok else 503)

    async def metrics_view(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    # ------------------------------------------------------------ admin
    async def create_user(self, request: web.Request) -> web.Response:
        data = _only(await _body(request), *_CREATE_FIELDS)
        user = await self.accounts.create_user(
            _field(data, "user_id", str, required=True),
            verified=bool(_field(data, "verified", bool)),
            vip=bool(_field(data, "vip", bool)),
            banned=bool(_field(data, "banned", bool)),
            created_at_ms=_field(data, "created_at_ms", int),
            app=_field(data, "app", str) or "main",
        )
        return _json(_with_unit(_plain(user), self.rules.units_per_card), 201)

    async def get_user(self, request: web.Request) -> web.Response:
        user = await self.accounts.get_user(_path_id(request, "user"))
        if user is None:
            raise AdminError(404, "UNKNOWN_USER", "no such user")
        return _json(_with_unit(_plain(user), self.rules.units_per_card))

    async def set_flags(self, request: web.Request) -> web.Response:
        data = _only(await _body(request), *_BOOL_FLAGS)
        flags = {name: _field(data, name, bool) for name in _BOOL_FLAGS}
        user = await self.accounts.set_flags(_path_id(request, "user"), **flags)
        return _json(_with_unit(_plain(user), self.rules.units_per_card))

    async def mint(self, request: web.Request) -> web.Response:
        data = _only(await _body(request), "kind", "qty")
        kind = _field(data, "kind", str) or self.rules.card_kinds[0]
        balances = await self.accounts.mint(_path_id(request, "user"), kind, _field(data, "qty", int, required=True))
        return _json(_with_unit(_plain(balances), self.rules.units_per_card))

    async def follow(self, request: web.Request) -> web.Response:
        data = _only(await _body(request), "since_ms")
        await self.accounts.follow(_path_id(request, "user"), _path_id(request, "other"),
                                   since_ms=_field(data, "since_ms", int))
        return _json({"ok": True})

    async def unfollow(self, request: web.Request) -> web.Response:
        _only(await _body(request))
        await self.accounts.unfollow(_path_id(request, "user"), _path_id(request, "other"))
        return _json({"ok": True})

    async def block(self, request: web.Request) -> web.Response:
        _only(await _body(request))
        await self.accounts.block(_path_id(request, "user"), _path_id(request, "other"))
        return _json({"ok": True})

    async def unblock(self, request: web.Request) -> web.Response:
        _only(await _body(request))
        await self.accounts.unblock(_path_id(request, "user"), _path_id(request, "other"))
        return _json({"ok": True})

    async def get_gift(self, request: web.Request) -> web.Response:
        """``?user=`` (the sender or the recipient) finds the gift on that user's slot; without
        it every shard is scanned for the id, which is slow on a big deployment."""
        gift_id = _path_id(request, "gift")
        user = request.query.get("user")
        if user is not None and not is_valid_id(user):
            raise AdminError(400, "BAD_FIELD", "user must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        gift = await self.clearing.get_gift(gift_id, user)
        if gift is None:
            # A refused send is an outcome its client was told: show it while it is remembered.
            for sender in [user] if user is not None else await self.clearing.refusers_of(gift_id):
                refused = await self.clearing.refused_send(gift_id, sender)
                if refused is not None:
                    return _json(_plain(refused) | {"state": "refused"})
            raise AdminError(404, "GIFT_NOT_FOUND", "no such gift")
        return _json(_plain(gift))

    async def invariant(self, request: web.Request) -> web.Response:
        report = await check_invariant(self.redis, self.rules, self.keys)
        self.metrics.invariant_checked(len(report.violations))
        return _json({"ok": report.ok, "violations": report.violations, "per_kind": report.per_kind})

    # ------------------------------------------------------------ scenes
    async def get_scenes(self, request: web.Request) -> web.Response:
        """What every node applies, read afresh; ``problems``: stored values it ignores."""
        self.scenes.settings.invalidate()
        config = await self.scenes.config()
        festivals = [_plain(f) | {"multiplier": f.multiplier} for f in await self.scenes.festivals()]
        return _json({"config": config.to_plain(), "festivals": festivals,
                      "problems": list(await self.scenes.problems())})

    async def patch_scenes(self, request: web.Request) -> web.Response:
        config = await self.scenes.set_config(await _body(request))
        return _json({"config": config.to_plain()})

    async def put_festival(self, request: web.Request) -> web.Response:
        data = await _body(request)
        multiplier = data.get("multiplier")
        if multiplier is not None and (isinstance(multiplier, bool) or not isinstance(multiplier, int | float)):
            raise AdminError(400, "BAD_REQUEST", "field 'multiplier' must be a number, e.g. 1.2")
        festival = await self.scenes.put_festival(
            request.match_info["festival"],
            _field(data, "name", str) or request.match_info["festival"],
            self._instant(data, "start"),
            self._instant(data, "end"),
            multiplier=multiplier,
            frame=_field(data, "frame", str),
        )
        return _json(_plain(festival) | {"multiplier": festival.multiplier})

    def _instant(self, data: dict[str, Any], name: str) -> int:
        """A festival edge: ms since the epoch, or a local date-time in the platform zone."""
        value = data.get(name)
        if type(value) is int:
            return value
        if not isinstance(value, str):
            raise AdminError(400, "BAD_REQUEST", f"field '{name}' is required: a local date-time or ms")
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise AdminError(400, "BAD_REQUEST", f"field '{name}' is not an ISO date-time: {value!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(self.rules.timezone))
        return int(moment.timestamp() * 1000)

    async def delete_festival(self, request: web.Request) -> web.Response:
        if not await self.scenes.delete_festival(request.match_info["festival"]):
            raise AdminError(404, "NO_FESTIVAL", "no such festival")
        return _json({"ok": True})

    async def get_points(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        points = await self.scenes.points(user)
        return _json(_plain(points) | {"inventory": await self.scenes.inventory(user)})

    async def bind_mentor(self, request: web.Request) -> web.Response:
        data = await _body(request)
        binding = await self.scenes.bind_mentor(request.match_info["user"], _field(data, "mentor", str, required=True))
        return _json(_plain(binding))
