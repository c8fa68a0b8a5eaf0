"""Cards bought through regional payment providers (gift-rules.md section 5, docs/regions.md
"Purchases"). The gateway never talks to a provider: the provider's signed notification
(gateway/payments_http.py checks the signature and its age) becomes one script on the
buyer's slot (``payment.lua``):

- a **purchase** mints the bought cards (ledger entry ``purchase``, ``issued:T`` ->
  ``avail:U``), once per (provider, payment id): a repeat with the same content is answered
  as before (``replayed``), the same id with another content is ``IDEMPOTENCY_CONFLICT``;
  a provider the buyer's region does not allow (its rule ``payment_providers``) is
  ``PROVIDER_NOT_ALLOWED``;
- a **refund** claws back what is still available of the payment (ledger entry ``refund``,
  ``avail:U`` -> ``issued:T``), never below zero: what was already spent is recorded as
  ``short`` on the payment and summed in the user's risk hash (``refund_short``), for the
  risk team; once (a repeat is answered as before).

Payments are kept for good (the record is the audit trail beside the ledger).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from clearing.component import RedisComponent
from clearing.errors import Refusal, Refused
from clearing.keys import is_valid_id
from clearing.lua import MAX_SAFE_INT
from clearing.settings import SettingsSnapshot
from clearing.slots import slot_of, tag_of

#: A provider's name as configured and in the notification's path.
PROVIDER_PATTERN = r"[a-z][a-z0-9_]{0,31}"
_PROVIDER = re.compile(PROVIDER_PATTERN)


def is_valid_provider(value: object) -> bool:
    return isinstance(value, str) and _PROVIDER.fullmatch(value) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Payment:
    provider: str
    payment_id: str
    user: str
    #: paid, or refunded
    state: str
    kind: str
    #: Units bought (minor units).
    units: int
    #: Refunded: units taken back, and units that were already spent.
    clawed: int
    short: int
    #: True when this notification repeated one already applied (nothing changed).
    replayed: bool


class Purchases(RedisComponent):
    async def purchase(self, provider: str, payment_id: str, user: str, kind: str, cards: int) -> Payment:
        if kind not in self._rules.card_kinds:
            raise Refused(Refusal.UNKNOWN_KIND)
        if type(cards) is not int or not 1 <= cards <= MAX_SAFE_INT // self._rules.units_per_card:
            raise Refused(Refusal.BAD_QUANTITY)
        snapshot = await self._settings.get()
        return await self._run(provider, payment_id, user, "purchase", kind=kind,
                               units=cards * self._rules.units_per_card, deny=_denied(snapshot, provider))

    async def refund(self, provider: str, payment_id: str, user: str) -> Payment:
        return await self._run(provider, payment_id, user, "refund")

    async def _run(self, provider: str, payment_id: str, user: str, what: Literal["purchase", "refund"],
                   **extra: Any) -> Payment:
        if not is_valid_provider(provider) or not is_valid_id(payment_id) or not is_valid_id(user):
            raise Refused(Refusal.BAD_REQUEST, "provider, payment id or user malformed")
        args = {"u": user, "tag": tag_of(user), "what": what, "provider": provider, "pid": payment_id,
                "ceiling": MAX_SAFE_INT, **extra}
        reply = await self._lua.run("payment", slot_of(user), self._keys.user(user), self._clock(), args,
                                    durable=True)
        return Payment(provider, payment_id, user, str(reply["state"]), str(reply["kind"]), int(reply["units"]),
                       int(reply["clawed"]), int(reply["short"]), bool(reply["replayed"]))


def _denied(snapshot: SettingsSnapshot, provider: str) -> dict[str, bool]:
    """The regions whose rule names the providers it allows, and not this one."""
    return {code: True for code, rules in snapshot.regions.items()
            if rules.payment_providers and provider not in rules.payment_providers}


__all__ = ["PROVIDER_PATTERN", "Payment", "Purchases", "is_valid_provider"]
