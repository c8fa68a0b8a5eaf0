"""Purchase-triggered gifts (gift-rules.md section 6, e-commerce): "spend X, get a card".

A shop (a business whose shop window is enabled, clearing/business.py) sets one rule: an
order of at least ``min_spend`` (the shop's currency in minor units) earns the buyer ``qty``
cards of ``kind`` from the shop's own account, offered for ``window_ms``. The shop's order
system tells the gateway of each paid and refunded order with a signed notification
(gateway/shop_orders.py checks the HMAC-SHA256 signature with the shop's secret and the
timestamp's replay window before anything here runs).

Each order is idempotent by its id: the gift's id derives from (shop, order id), so a
notification sent again answers the same gift, and the order's record (``{S}:order:<id>``)
remembers what was decided. The gift is an ordinary two-phase gift issued like a campaign's
(:meth:`Clearing.issue`, campaign ``shop.<shop>``): the buyer may be offline and sees it on
connecting. A refund before the buyer accepted cancels it: the gift is declined for the
buyer and the cards go back to the shop. After acceptance the cards are the buyer's: the
refund is reported (``after_acceptance``), never clawed back. A refund that arrives before
the paid notification marks the order refunded, and the paid one that follows gives nothing;
a refund racing its paid notification is caught because each side reads the other's write
after making its own.

Every paid order (whatever its spend) and every refund of one is noted in the shop's ledger
stream (order_note.lua, docs/ledger.md "Order notes"), from which the ledger consumer writes
the dashboards' ``purchase`` rows; a refund that arrives before the paid notification notes
nothing (there was no purchase).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from typing import Any

from clearing.business import BusinessAccounts, BusinessRefusal, BusinessRefused
from clearing.campaigns import Campaigns
from clearing.codec import text_hash
from clearing.errors import Refusal, Refused
from clearing.guard import guarded
from clearing.keys import is_valid_id
from clearing.lua import MAX_SAFE_INT
from clearing.model import GiftRecord, GiftState
from clearing.slots import slot_of, tag_of

#: How long a purchase gift's offer stays open by default: a week to come back and accept.
DEFAULT_WINDOW_MS = 7 * 86_400_000
#: Bytes of a shop's signing secret.
SECRET_BYTES = 32


def order_gift_id(shop: str, order_id: str) -> str:
    """The gift id of a shop's order: the same for every notification of the order."""
    return "o." + hashlib.sha256(f"{shop}|{order_id}".encode()).hexdigest()[:40]


@dataclasses.dataclass(frozen=True, slots=True)
class ShopRule:
    shop: str
    kind: str
    min_spend: int
    qty: int
    window_ms: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class OrderOutcome:
    order_id: str
    #: gifted, below_minimum, refunded (before any gift), cancelled (refund before acceptance),
    #: after_acceptance (refund of an accepted gift: reported, not clawed back), not_pending
    #: (refund of a gift already declined or expired: nothing to give back).
    result: str
    gift: GiftRecord | None = None

    def to_json(self) -> dict[str, Any]:
        gift = dataclasses.asdict(self.gift) if self.gift else None
        if gift is not None:
            gift["state"] = self.gift.state.value if self.gift else None
        return {"order_id": self.order_id, "result": self.result, "gift": gift}


class Shops:
    def __init__(self, campaigns: Campaigns) -> None:
        self.campaigns = campaigns
        self.clearing = campaigns.clearing
        self.business: BusinessAccounts = campaigns.business
        self._redis = self.clearing.redis
        self._keys = self.clearing.keys

    # ------------------------------------------------------------ the rule and the secret
    async def set_rule(self, shop: str, *, kind: str, min_spend: int, qty: int, window_ms: int = DEFAULT_WINDOW_MS,
                       operator: str) -> tuple[ShopRule, str | None]:
        """Set the shop's rule; the signing secret when this made one (the first rule), else
        None (the shop keeps the one it has; :meth:`rotate_secret` makes a new one)."""
        await self.business.require_shop(shop)
        if kind not in self.clearing.rules.card_kinds:
            record = await self.campaigns.kind(kind)
            if record is None:
                raise Refused(Refusal.UNKNOWN_KIND)
            if record.brand != shop:
                raise BusinessRefused(BusinessRefusal.NOT_KIND_OWNER)
        for name, value, low in (("min_spend", min_spend, 0), ("qty", qty, 1), ("window_ms", window_ms, 1000)):
            if type(value) is not int or not low <= value <= MAX_SAFE_INT:
                raise Refused(Refusal.BAD_REQUEST, f"{name} is a whole number from {low}")
        if qty > self.clearing.rules.max_qty_per_gift:
            raise Refused(Refusal.BAD_QUANTITY)
        key = self._keys.shop_rule(shop)
        secret = secrets.token_hex(SECRET_BYTES)
        made = bool(await guarded(self._redis.hsetnx(key, "secret", secret)))
        await guarded(self._redis.hset(key, mapping={"kind": kind, "min_spend": min_spend, "qty": qty,
                                                     "window_ms": window_ms}))
        await self.business.audit("shop_rule", operator, user=shop, kind=kind, min_spend=str(min_spend),
                                  qty=str(qty), window_ms=str(window_ms))
        return ShopRule(shop, kind, min_spend, qty, window_ms), secret if made else None

    async def rotate_secret(self, shop: str, *, operator: str) -> str:
        await self.business.require_shop(shop)
        if await self.rule(shop) is None:
            raise BusinessRefused(BusinessRefusal.NO_SHOP_RULE)
        secret = secrets.token_hex(SECRET_BYTES)
        await guarded(self._redis.hset(self._keys.shop_rule(shop), "secret", secret))
        await self.business.audit("shop_secret", operator, user=shop)
        return secret

    async def rule(self, shop: str) -> ShopRule | None:
        raw = text_hash(await guarded(self._redis.hgetall(self._keys.shop_rule(shop))))
        try:
            return ShopRule(shop, raw["kind"], int(raw["min_spend"]), int(raw["qty"]), int(raw["window_ms"]))
        except (KeyError, ValueError):
            return None  # no rule, or one that does not read: no gifts

    async def secret(self, shop: str) -> str | None:
        raw = await guarded(self._redis.hget(self._keys.shop_rule(shop), "secret"))
        return raw.decode() if isinstance(raw, bytes) else raw

    # ------------------------------------------------------------ orders
    async def paid(self, shop: str, order_id: str, buyer: str, spend: int) -> OrderOutcome:
        """A paid order: the rule's gift when the spend reaches its minimum (idempotent by
        order id). Refused: SHOP_WINDOW_DISABLED (checked again here: the window may have been
        closed since the rule was set), NO_SHOP_RULE, BAD_REQUEST; and the gift's refusals
        (UNKNOWN_USER, RECIPIENT_BANNED, INSUFFICIENT_BALANCE: the shop's cards ran out...)."""
        await self.business.require_shop(shop)
        rule = await self.rule(shop)
        if rule is None:
            raise BusinessRefused(BusinessRefusal.NO_SHOP_RULE)
        _check_order(order_id, spend)
        key = self._keys.shop_order(shop, order_id)
        known = text_hash(await guarded(self._redis.hgetall(key)))
        if known.get("state") == "refunded" and "gift" not in known:
            return OrderOutcome(order_id, "refunded")
        if spend < rule.min_spend:
            # a purchase all the same, for the dashboards: the buyer and spend are noted
            await guarded(self._redis.hset(key, mapping={"buyer": buyer, "spend": spend}))
            await guarded(self._redis.hsetnx(key, "state", "below_minimum"))
            await self._note(shop, order_id)
            return OrderOutcome(order_id, "below_minimum")
        gift_id = order_gift_id(shop, order_id)
        gift = await self.clearing.issue(gift_id, shop, buyer, rule.kind, rule.qty, campaign=f"shop.{shop}",
                                         expires_at_ms=self.clearing.now() + rule.window_ms)
        await guarded(self._redis.hset(key, mapping={"gift": gift_id, "buyer": buyer, "spend": spend}))
        await guarded(self._redis.hsetnx(key, "state", "paid"))
        outcome = OrderOutcome(order_id, "gifted", gift)
        if text_hash(await guarded(self._redis.hgetall(key))).get("state") == "refunded":
            outcome = await self._cancel(order_id, gift_id, buyer)  # the refund came meanwhile
        await self._note(shop, order_id)
        return outcome

    async def refunded(self, shop: str, order_id: str) -> OrderOutcome:
        """A refunded order: its gift is cancelled if not accepted yet (the cards go back to
        the shop), reported if accepted."""
        _check_order(order_id, 0)
        key = self._keys.shop_order(shop, order_id)
        await guarded(self._redis.hset(key, "state", "refunded"))
        known = text_hash(await guarded(self._redis.hgetall(key)))
        outcome = OrderOutcome(order_id, "refunded")
        if "gift" in known:
            outcome = await self._cancel(order_id, known["gift"], known["buyer"])
        await self._note(shop, order_id)
        return outcome

    async def _note(self, shop: str, order_id: str) -> None:
        """The order's purchase, as its record now stands, in the ledger stream (order_note.lua):
        the book of record's ``purchase`` row. Idempotent: a state noted is not noted again.
        Called after the order's gift was handled, so that a record a hand edit broke
        (``CORRUPT``) stops the note only, never the buyer's gift or its cancellation."""
        await self.clearing.lua.run("order_note", slot_of(shop), self._keys.shop_order(shop, order_id),
                                    self.clearing.now(), {"shop": shop, "o": order_id, "tag": tag_of(shop)})

    async def _cancel(self, order_id: str, gift_id: str, buyer: str) -> OrderOutcome:
        try:
            resolution = await self.clearing.decline(gift_id, buyer)
            return OrderOutcome(order_id, "cancelled" if resolution.changed else "not_pending", resolution.gift)
        except Refused as refusal:
            gift = refusal.gift
            if refusal.code is Refusal.ALREADY_RESOLVED and gift is not None:
                return OrderOutcome(order_id, "after_acceptance" if gift.state is GiftState.ACCEPTED
                                    else "not_pending", gift)
            if refusal.code is Refusal.GIFT_EXPIRED:
                return OrderOutcome(order_id, "not_pending", gift)
            raise


def _check_order(order_id: str, spend: int) -> None:
    if not isinstance(order_id, str) or not is_valid_id(order_id):
        raise Refused(Refusal.BAD_REQUEST, "order_id is 1-64 characters of A-Z a-z 0-9 _ . : -")
    if type(spend) is not int or not 0 <= spend <= MAX_SAFE_INT:
        raise Refused(Refusal.BAD_REQUEST, "spend is a whole number of minor units from 0")
