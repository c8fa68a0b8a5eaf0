"""Shops' purchase rules and signed order notifications over the admin API (docs/business.md,
clearing/shops.py). An order notification carries, besides the admin token, the shop's own
proof: ``X-Notecard-Timestamp`` (ms since the epoch) and ``X-Notecard-Signature``
(``sha256=`` + the hex HMAC-SHA256, with the shop's secret, of ``<timestamp>.<raw body>``).
A signature that does not match is ``401 BAD_SIGNATURE``; a timestamp further than
``ORDER_REPLAY_S`` from the node's clock is ``401 STALE_ORDER``: a captured notification
cannot be played again later, and inside the window a replay is answered from the order's
record (idempotent by order id). The signature is checked before the window (one order
for every signed route, gateway/signed_requests.py), both before the body is read as JSON."""

from __future__ import annotations

from aiohttp import web

from clearing.shops import ShopRule, Shops
from gateway.admin_json import AdminError, field, json_object, json_response, only, path_id, read_body
from gateway.business_admin import operator_of
from gateway.signed_requests import Refusal, SignedRequests

MS = 1000


class ShopOrdersAdmin:
    def __init__(self, shops: Shops, replay_s: float) -> None:
        self.shops = shops
        self.replay_ms = round(replay_s * MS)
        self.signed = SignedRequests(
            "X-Notecard-Timestamp", "X-Notecard-Signature", max_digits=16, window=self.replay_ms,
            unreadable=Refusal(401, "BAD_SIGNATURE", "X-Notecard-Timestamp (ms since the epoch) is required"),
            stale=Refusal(401, "STALE_ORDER", "the notification's timestamp is outside the replay window"),
            mismatch=Refusal(401, "BAD_SIGNATURE", "the signature does not match the shop's secret"))

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/shops/{shop}/rule", self.get_rule)
        app.router.add_put("/admin/shops/{shop}/rule", self.put_rule)
        app.router.add_post("/admin/shops/{shop}/secret", self.rotate_secret)
        app.router.add_post("/admin/shops/{shop}/orders", self.order)

    async def get_rule(self, request: web.Request) -> web.Response:
        rule = await self.shops.rule(path_id(request, "shop"))
        if rule is None:
            raise AdminError(404, "NO_SHOP_RULE", "the shop has no purchase rule")
        return json_response(rule.to_json())

    async def put_rule(self, request: web.Request) -> web.Response:
        shop = path_id(request, "shop")
        data = only(await read_body(request), "kind", "min_spend", "qty", "window_s", "operator")
        window_s = field(data, "window_s", int)
        rule, secret = await self.shops.set_rule(
            shop, kind=field(data, "kind", str, required=True), min_spend=field(data, "min_spend", int, required=True),
            qty=field(data, "qty", int) or 1, operator=operator_of(data),
            **({"window_ms": window_s * MS} if window_s is not None else {}))
        return json_response(_rule_json(rule, secret))

    async def rotate_secret(self, request: web.Request) -> web.Response:
        shop = path_id(request, "shop")
        data = only(await read_body(request), "operator")
        return json_response({"shop": shop, "secret": await self.shops.rotate_secret(shop, operator=operator_of(data))})

    async def order(self, request: web.Request) -> web.Response:
        shop = path_id(request, "shop")
        body = await request.read()
        secret = await self.shops.secret(shop)
        self.signed.verify(request.headers, body, secret.encode() if secret is not None else None,
                           self.shops.clearing.now())
        data = json_object(body)
        only(data, "order_id", "event", "buyer", "spend")
        order_id, event = field(data, "order_id", str, required=True), field(data, "event", str, required=True)
        if event == "paid":
            outcome = await self.shops.paid(shop, order_id, field(data, "buyer", str, required=True),
                                            field(data, "spend", int, required=True))
        elif event == "refunded":
            outcome = await self.shops.refunded(shop, order_id)
        else:
            raise AdminError(400, "BAD_REQUEST", "event is paid or refunded")
        return json_response(outcome.to_json())


def _rule_json(rule: ShopRule, secret: str | None) -> dict[str, object]:
    out: dict[str, object] = rule.to_json()
    if secret is not None:
        out["secret"] = secret  # shown once, when it was made
    return out
