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
    GET    /admin/users/{user}/pending               offers waiting for the user's answer
    GET    /admin/stats                              every live node's counters, pending gifts, held units
    POST   /admin/gifts                              send a gift for its sender (gateway/admin_backend.py)
    POST   /admin/users/{user}/disconnect            close the user's connections on every node
    POST   /admin/bulk/users                         create or update up to 500 users
    POST   /admin/bulk/follows                       create or refresh up to 500 follows
    GET    /admin/webhooks/dead                      webhook deliveries that failed every attempt, newest first
    POST   /admin/webhooks/dead/retry                send every dead letter back for delivery
    GET    /admin/dashboards/profile                 recipients by region, age, app, fan level (JSON or CSV)
    GET    /admin/dashboards/conversion              per campaign: issued -> accepted -> purchase, cost
    GET    /admin/dashboards/retention               cohorts of recipients x days they came back
    GET    /admin/business/{user}                    business profile: verified business, followers, shop window
    PATCH  /admin/business/{user}                    set {business?, followers?, shop?, operator}
    GET    /admin/business/{user}/fans/{group}       members and levels (?min_level=N)
    PUT    /admin/business/{user}/fans/{group}/{m}   {level, operator}: add or move a member
    DELETE /admin/business/{user}/fans/{group}/{m}   {operator}
    GET    /admin/kinds/{kind}                       a custom card kind and its budget
    PUT    /admin/kinds/{kind}                       {brand, name, artwork, budget_cards, operator}: define, mint
    POST   /admin/kinds/{kind}/fund                  {brand, cards, operator}: mint more budget
    GET    /admin/campaigns                          every campaign's progress
    POST   /admin/campaigns                          {campaign_id, brand, kind, ends_at_ms, operator, one source}
    GET    /admin/campaigns/{id}                     progress: state, issued of total, refused
    GET    /admin/campaigns/{id}/report              recipients by outcome, units, the budget's balance
    POST   /admin/campaigns/{id}/recipients          {recipients, operator}: a part of a loading ("open") list
    POST   /admin/campaigns/{id}/start               {operator}: a loading campaign starts (budget checked)
    POST   /admin/campaigns/{id}/pause|resume|cancel {operator}
    GET    /admin/shops/{shop}/rule                  the shop's "spend X, get a card" rule
    PUT    /admin/shops/{shop}/rule                  {kind, min_spend, qty?, window_s?, operator}: set (secret once)
    POST   /admin/shops/{shop}/secret                {operator}: a new order-signing secret
    POST   /admin/shops/{shop}/orders                a signed order notification {order_id, event, buyer?, spend?}
    GET    /admin/openapi.json                       this API as an OpenAPI 3.1 document (no token)

Pages (static files, no token to load them; gateway/static/)::

    GET    /app/                                     the web app (docs/clients.md)
    GET    /app/config.json                          the WebSocket URLs the app connects to
    POST   /app/token                                {user}: a development token (development mode only)
    GET    /console/                                 the operator console (asks for the admin token)

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
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

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
from clearing.business import DEFAULT_BRAND_MIN_FOLLOWERS, BusinessAccounts, BusinessRefused
from clearing.campaigns import Campaigns
from clearing.keys import is_valid_id
from clearing.purchases import Purchases
from clearing.regions import DEFAULT_REGION, REGION_PATTERN, is_valid_region
from clearing.scene_config import SceneConfigError
from clearing.scenes import Scenes
from clearing.shops import Shops
from clearing.topology import AnyRedis
from gateway.admin_backend import BackendRoutes
from gateway.admin_json import AdminError
from gateway.admin_json import field as _field
from gateway.admin_json import json_response as _json
from gateway.admin_json import only as _only
from gateway.admin_json import path_id as _path_id
from gateway.admin_json import plain as _plain
from gateway.admin_json import read_body as _body
from gateway.auth import ClaimRules, mint_token
from gateway.business_admin import BusinessAdmin, business_error
from gateway.dashboards_admin import DashboardsAdmin
from gateway.logs import ThrottledLog
from gateway.metrics import NodeMetrics
from gateway.node_stats import live_snapshots
from gateway.odds_admin import OddsAdmin
from gateway.openapi import OPENAPI_PATH, openapi_document
from gateway.payments_http import DEFAULT_PAYMENT_WINDOW_S, PaymentsHttp
from gateway.privacy_admin import PrivacyAdmin
from gateway.risk_admin import RiskAdmin
from gateway.shop_orders import ShopOrdersAdmin
from gateway.skins_admin import SkinsAdmin
from gateway.webhooks_admin import WebhooksAdmin

log = logging.getLogger("notecard.gateway.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS: dict[Refusal, int] = {
    Refusal.UNKNOWN_USER: 404,
    Refusal.GIFT_NOT_FOUND: 404,
    Refusal.USER_EXISTS: 409,
    Refusal.ERASE_PENDING: 409,
}
_BOOL_FLAGS = ("verified", "vip", "banned")
#: Errors aiohttp raises itself, as codes.
_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "TOO_LARGE"}
#: The largest request body: a bulk call of MAX_BATCH items fits.
MAX_BODY_BYTES = 256 * 1024
_CREATE_FIELDS = ("user_id", *_BOOL_FLAGS, "created_at_ms", "app", "region")


def _with_unit(plain: dict[str, Any], units_per_card: int) -> dict[str, Any]:
    """Balances are minor units; saying how many make a card lets a reader (``notecard
    admin``) show the whole cards that ``mint`` takes."""
    if "available" in plain:
        return plain | {"units_per_card": units_per_card}
    if isinstance(plain.get("balances"), dict):
        return plain | {"balances": _with_unit(plain["balances"], units_per_card)}
    return plain


def _or_default(value: str | None, default: str) -> str:
    """An absent field takes the default; an empty one is checked (and refused) as given."""
    return default if value is None else value


def _redirect(location: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=301, headers={"Location": location})

    return handler


def _file(path: Path) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    return handler


async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith(("/app", "/console", "/lib/")):
        response.headers.update(_PAGE_HEADERS)


#: The web app, the console and their libraries (built from clients/js, committed).
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: A development token lasts this long (the app asks for a new one when it expires).
DEV_TOKEN_TTL_S = 24 * 3600
_PAGE_HEADERS = {
    # The pages load only their own files; the app talks to the gateway's WebSocket port.
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclasses.dataclass(frozen=True, slots=True)
class WebPages:
    """What ``/app`` needs from its node: where clients connect, and whether it may hand
    out development tokens (signed with the node's token secret)."""

    ws_port: Callable[[], int]
    public_ws_urls: tuple[str, ...] = ()
    dev: bool = False
    token_secret: str = ""
    #: The audience and issuer a development token must carry to pass this node's checks.
    claims: ClaimRules = dataclasses.field(default_factory=ClaimRules)


class AdminApp:
    def __init__(
        self, *, node_id: str, admin_token: str, redis: AnyRedis, clearing: Clearing, accounts: Accounts,
        rules: GiftRules, keys: KeySchema, metrics: NodeMetrics, ready: Callable[[], Awaitable[bool]],
        scenes: Scenes | None = None, not_ready_reasons: Callable[[], list[str]] | None = None,
        pages: WebPages | None = None, postgres_url: str | None = None, payments: PaymentsHttp | None = None,
        campaigns: Campaigns | None = None, order_replay_s: float = 300.0,
    ) -> None:
        self.order_replay_s = order_replay_s
        self.pages = pages
        #: The book of record the dashboards read (None: their routes answer NO_BOOKS).
        self.postgres_url = postgres_url
        self.campaigns = campaigns or Campaigns(clearing, BusinessAccounts(redis, keys, clearing.now),
                                                min_followers=DEFAULT_BRAND_MIN_FOLLOWERS)
        self.scenes = scenes or Scenes(clearing.topology, rules, keys, settings=clearing.settings)
        #: Payment notifications; without providers configured every one is UNKNOWN_PROVIDER.
        self.payments = payments or PaymentsHttp(
            Purchases(clearing.topology, rules, keys, settings=clearing.settings), {}, DEFAULT_PAYMENT_WINDOW_S)
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
        # Room for a bulk call of MAX_BATCH items; every other body is far smaller.
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY_BYTES)
        self._add_probes(app)
        app.router.add_post("/admin/users", self.create_user)
        app.router.add_get("/admin/users/{user}", self.get_user)
        app.router.add_patch("/admin/users/{user}", self.set_flags)
        app.router.add_get("/admin/users/{user}/guardian", self.get_guardian)
        app.router.add_put("/admin/users/{user}/guardian", self.put_guardian)
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
        app.router.add_get("/admin/regions", self.get_regions)
        app.router.add_put("/admin/regions/{region}", self.put_region)
        app.router.add_delete("/admin/regions/{region}", self.delete_region)
        app.router.add_get("/admin/users/{user}/points", self.get_points)
        app.router.add_post("/admin/users/{user}/mentor", self.bind_mentor)
        app.router.add_get("/admin/users/{user}/pending", self.get_pending)
        app.router.add_get("/admin/stats", self.stats)
        BackendRoutes(self).add(app)
        app.router.add_get(OPENAPI_PATH, self.openapi)
        RiskAdmin(self.redis, self.keys).routes(app)
        WebhooksAdmin(self.redis, self.keys).routes(app)
        DashboardsAdmin(self.postgres_url, self.rules.timezone).routes(app)
        PrivacyAdmin(self.clearing).routes(app)
        OddsAdmin(self.scenes).routes(app)
        SkinsAdmin(self.scenes).routes(app)
        self.payments.routes(app)
        BusinessAdmin(self.campaigns).routes(app)
        ShopOrdersAdmin(Shops(self.campaigns), self.order_replay_s).routes(app)
        if self.pages is not None:
            self._add_pages(app)
        return app

    def _add_pages(self, app: web.Application) -> None:
        for name in ("app", "console"):
            app.router.add_get(f"/{name}", _redirect(f"/{name}/"))
            app.router.add_get(f"/{name}/", _file(STATIC_DIR / name / "index.html"))
        app.router.add_get("/app/config.json", self.app_config)
        app.router.add_post("/app/token", self.app_token)
        for name in ("app", "console", "lib"):
            app.router.add_static(f"/{name}/", STATIC_DIR / name, append_version=False)
        app.on_response_prepare.append(_page_headers)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path.startswith("/admin/") and request.path != OPENAPI_PATH:
                self._authorize(request)
            return await handler(request)
        except AdminError as exc:
            return _json({"error": exc.code, "message": exc.message}, exc.status)
        except Refused as exc:
            return _json({"error": exc.code.value, "message": str(exc)}, _STATUS.get(exc.code, 400))
        except BusinessRefused as exc:
            error = business_error(exc)
            return _json({"error": error.code, "message": error.message}, error.status)
        except SceneConfigError as exc:
            return _json({"error": "BAD_REQUEST", "message": str(exc)}, 400)
        except ClearingUnavailable:
            return _json({"error": "UNAVAILABLE", "message": "redis unavailable; retry"}, 503)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # a redirect
            return _json({"error": _HTTP_CODES.get(exc.status, "BAD_REQUEST"), "message": exc.reason}, exc.status)
        except Exception:
            # A bug costs one call; the caller gets a code, never a stack trace (the log has it).
            log.exception("admin call failed", extra={"path": request.path, "method": request.method})
            return _json({"error": "INTERNAL", "message": "internal error"}, 500)

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

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 description of this API (no token needed: it holds no data)."""
        return _json(openapi_document())

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
            region=_or_default(_field(data, "region", str), DEFAULT_REGION),
        )
        return _json(_with_unit(_plain(user), self.rules.units_per_card), 201)

    async def get_user(self, request: web.Request) -> web.Response:
        user = await self.accounts.get_user(_path_id(request, "user"))
        if user is None:
            raise AdminError(404, "UNKNOWN_USER", "no such user")
        return _json(_with_unit(_plain(user), self.rules.units_per_card))

    async def set_flags(self, request: web.Request) -> web.Response:
        data = _only(await _body(request), *_BOOL_FLAGS, "region", "gender")
        flags = {name: _field(data, name, bool) for name in _BOOL_FLAGS}
        user = await self.accounts.set_flags(_path_id(request, "user"), **flags, region=_field(data, "region", str),
                                             gender=_field(data, "gender", str))
        return _json(_with_unit(_plain(user), self.rules.units_per_card))

    async def get_guardian(self, request: web.Request) -> web.Response:
        """The ward's guardian ("" when none) and the audit log of its changes, newest first."""
        ward = _path_id(request, "user")
        user = await self.accounts.get_user(ward)
        if user is None:
            raise AdminError(404, "UNKNOWN_USER", "no such user")
        return _json({"user_id": ward, "guardian": user.guardian, "log": await self.accounts.guardian_log(ward)})

    async def put_guardian(self, request: web.Request) -> web.Response:
        """Link a guardian to the ward ({"guardian": id, "operator": id}), or unlink it
        ({"guardian": null, ...}); audited in the ward's guardian log."""
        data = _only(await _body(request), "guardian", "operator")
        if "guardian" not in data:
            raise AdminError(400, "BAD_REQUEST", "guardian is required (null unlinks)")
        user = await self.accounts.link_guardian(_path_id(request, "user"), _field(data, "guardian", str),
                                                 _field(data, "operator", str, required=True))
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

    async def get_regions(self, request: web.Request) -> web.Response:
        """Every configured region's rules; ``problems``: stored ones the nodes ignore."""
        regions = await self.scenes.regions()
        return _json({"regions": {code: rules.to_plain() for code, rules in regions.items()},
                      "problems": [p for p in await self.scenes.problems() if p.startswith("region ")]})

    async def put_region(self, request: web.Request) -> web.Response:
        code = request.match_info["region"]
        if not is_valid_region(code):
            raise AdminError(400, "BAD_REQUEST", f"a region code must match {REGION_PATTERN}")
        rules = await self.scenes.put_region(code, await _body(request))
        return _json({"region": code, **rules.to_plain()})

    async def delete_region(self, request: web.Request) -> web.Response:
        if not await self.scenes.delete_region(request.match_info["region"]):
            raise AdminError(404, "NO_REGION", "no rules are stored for this region")
        return _json({"ok": True})

    async def get_pending(self, request: web.Request) -> web.Response:
        gifts = await self.clearing.pending_for(_path_id(request, "user"))
        return _json({"gifts": [_plain(g) for g in gifts]})

    async def stats(self, request: web.Request) -> web.Response:
        """For the console: every live node's counters, and the ledger's pending gifts and
        held units for the whole deployment: the sum of the live nodes' shares of the slots
        (each node reads its share for /metrics and writes it with its counters)."""
        nodes = await live_snapshots(self.redis, self.keys)
        held = dict.fromkeys(self.rules.card_kinds, 0)
        for snap in nodes:
            for kind, units in (snap.get("held_units") or {}).items():
                held[str(kind)] = held.get(str(kind), 0) + int(units)
        return _json({
            "at_ms": int(dt.datetime.now(dt.UTC).timestamp() * 1000),
            "node": self.node_id,
            "nodes": nodes,
            "pending_gifts": sum(int(snap.get("pending_gifts", 0)) for snap in nodes),
            "held_units": held,
            "units_per_card": self.rules.units_per_card,
            "card_kinds": list(self.rules.card_kinds),
        })

    # ------------------------------------------------------------ the web app
    async def app_config(self, request: web.Request) -> web.Response:
        """Where the app connects: the configured public URLs, else this node's WebSocket
        port on the host the page was loaded from."""
        assert self.pages is not None
        urls = list(self.pages.public_ws_urls)
        if not urls:
            scheme = "wss" if request.secure else "ws"
            host = request.url.host or "127.0.0.1"
            urls = [f"{scheme}://{host}:{self.pages.ws_port()}"]
        return _json({"gateways": urls, "dev_tokens": self.pages.dev, "node": self.node_id})

    async def app_token(self, request: web.Request) -> web.Response:
        """A development token for any user: only a node in development mode hands them
        out (anyone who reaches this port could otherwise act as anyone)."""
        assert self.pages is not None
        if not self.pages.dev:
            raise AdminError(403, "DEV_ONLY", "development tokens come only from a node in development mode "
                                              "(notecard dev, NOTECARD_DEV=true); sign in with a token from your "
                                              "login service")
        data = _only(await _body(request), "user")
        user = _field(data, "user", str, required=True)
        if not is_valid_id(user):
            raise AdminError(400, "BAD_REQUEST", "user id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        claims = self.pages.claims
        token = mint_token(self.pages.token_secret, user, ttl_s=DEV_TOKEN_TTL_S, audience=claims.audience,
                           issuer=claims.issuer)
        return _json({"token": token, "user": user, "ttl_s": DEV_TOKEN_TTL_S})

    async def get_points(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        points = await self.scenes.points(user)
        return _json(_plain(points) | {"inventory": await self.scenes.inventory(user)})

    async def bind_mentor(self, request: web.Request) -> web.Response:
        data = await _body(request)
        binding = await self.scenes.bind_mentor(request.match_info["user"], _field(data, "mentor", str, required=True))
        return _json(_plain(binding))
