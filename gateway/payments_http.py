"""Payment providers' notifications over the admin HTTP port (docs/regions.md "Purchases"):
``POST /payments/{provider}/notify``, authenticated by the provider's signature, not by the
admin token. Mounted by gateway/admin_http.py.

A notification is checked in this order, and a refused one changes nothing:

1. the provider is configured (``NOTECARD_PAYMENT_SECRETS``): else ``404 UNKNOWN_PROVIDER``;
2. ``Notecard-Timestamp`` (Unix seconds) is there, at most 12 ASCII digits: else ``401
   STALE_NOTIFICATION``;
3. ``Notecard-Signature`` is ``sha256=<hex>`` of HMAC-SHA256(secret, ``<timestamp>.<raw
   body>``), compared in constant time: else ``401 BAD_SIGNATURE``;
4. the timestamp is within ``NOTECARD_PAYMENT_WINDOW_S`` of the node's clock: else ``401
   STALE_NOTIFICATION`` (a captured notification replayed later). Signature before window,
   as for shops' orders (gateway/signed_requests.py says why);
5. the body is ``{"type": "purchase", "payment_id", "user", "kind", "cards"}`` or
   ``{"type": "refund", "payment_id", "user"}``: else ``400 BAD_REQUEST``;
6. clearing/purchases.py: ``404 UNKNOWN_USER`` / ``UNKNOWN_PAYMENT``, ``403
   PROVIDER_NOT_ALLOWED``, ``409 IDEMPOTENCY_CONFLICT``, ``400 UNKNOWN_KIND`` /
   ``BAD_QUANTITY``.

A provider retrying a notification it sent (same payment id and content, a fresh
timestamp and signature) gets the first answer again with ``replayed: true``. Every
accepted notification is logged (the audit trail beside the ledger and the payment record).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import orjson
from aiohttp import web

from clearing.errors import Refused, StepRefused
from clearing.purchases import Purchases, is_valid_provider
from gateway.admin_json import AdminError, json_response
from gateway.signed_requests import Refusal, SignedRequests, hmac_signature

log = logging.getLogger("notecard.gateway.payments")

#: The replay window when none is configured (NOTECARD_PAYMENT_WINDOW_S).
DEFAULT_PAYMENT_WINDOW_S = 300
TIMESTAMP_HEADER = "Notecard-Timestamp"
SIGNATURE_HEADER = "Notecard-Signature"

_STATUS = {"UNKNOWN_USER": 404, "UNKNOWN_PAYMENT": 404, "PROVIDER_NOT_ALLOWED": 403, "IDEMPOTENCY_CONFLICT": 409}


def parse_secrets(pairs: tuple[str, ...]) -> dict[str, bytes]:
    """``NOTECARD_PAYMENT_SECRETS`` as provider -> key."""
    return {name: secret.encode() for name, _, secret in (pair.partition(":") for pair in pairs)}


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value a provider sends (also what tests and providers' docs use)."""
    return hmac_signature(secret, timestamp, body)


class PaymentsHttp:
    def __init__(self, purchases: Purchases, secrets: Mapping[str, bytes], window_s: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.purchases = purchases
        self.secrets = dict(secrets)
        self.window_s = window_s
        self.clock = clock
        stale = Refusal(401, "STALE_NOTIFICATION", f"{TIMESTAMP_HEADER} is missing or outside the replay window")
        self.signed = SignedRequests(TIMESTAMP_HEADER, SIGNATURE_HEADER, max_digits=12, window=window_s,
                                     unreadable=stale, stale=stale,
                                     mismatch=Refusal(401, "BAD_SIGNATURE", "the signature does not match"))

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/payments/{provider}/notify", self.notify)

    async def notify(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        secret = self.secrets.get(provider) if is_valid_provider(provider) else None
        if secret is None:
            raise AdminError(404, "UNKNOWN_PROVIDER", "no such payment provider is configured")
        body = await request.read()
        self.signed.verify(request.headers, body, secret, self.clock())
        what, payment_id, user, kind, cards = _notification(body)
        try:
            if what == "purchase":
                payment = await self.purchases.purchase(provider, payment_id, user, kind, cards)
            else:
                payment = await self.purchases.refund(provider, payment_id, user)
        except StepRefused as exc:
            if exc.code not in _STATUS:
                raise
            raise AdminError(_STATUS[exc.code], exc.code, _MESSAGES.get(exc.code, exc.code)) from None
        except Refused as exc:
            if exc.code.value in _STATUS:
                raise AdminError(_STATUS[exc.code.value], exc.code.value, str(exc)) from None
            raise
        log.info("payment %s %s/%s user=%s state=%s kind=%s units=%d clawed=%d short=%d replayed=%s", what,
                 provider, payment_id, user, payment.state, payment.kind, payment.units, payment.clawed,
                 payment.short, payment.replayed)
        return json_response({"provider": provider, "payment_id": payment_id, "user": user, "state": payment.state,
                              "kind": payment.kind, "units": payment.units, "clawed": payment.clawed,
                              "short": payment.short, "replayed": payment.replayed})


_MESSAGES = {"UNKNOWN_PAYMENT": "no such payment of this user through this provider",
             "PROVIDER_NOT_ALLOWED": "the user's region does not allow this payment provider"}


def _notification(body: bytes) -> tuple[str, str, str, str, int]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AdminError(400, "BAD_REQUEST", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise AdminError(400, "BAD_REQUEST", "the body is an object")
    what = data.get("type")
    fields = {"purchase": {"type", "payment_id", "user", "kind", "cards"},
              "refund": {"type", "payment_id", "user"}}.get(what if isinstance(what, str) else "")
    if fields is None or set(data) != fields:
        raise AdminError(400, "BAD_REQUEST", "expected {type: purchase, payment_id, user, kind, cards} or "
                                             "{type: refund, payment_id, user}")
    payment_id, user = data["payment_id"], data["user"]
    kind, cards = data.get("kind", ""), data.get("cards", 0)
    if not (isinstance(payment_id, str) and isinstance(user, str) and isinstance(kind, str)
            and type(cards) is int):
        raise AdminError(400, "BAD_REQUEST", "payment_id, user and kind are text, cards an integer")
    return str(what), payment_id, user, kind, cards
