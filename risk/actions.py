"""The risk engine's three tiers as stored state, and lifting them (docs/risk.md).

Every action is a few idempotent writes to the account's risk hash (``{U}:risk``, in the
account's own slot, which the send scripts read in the same step as the gift rules) plus,
for the top tier, the device's ban mark and its copy on every account seen on the device.
Running an action twice changes nothing more; every action and lift is audited.

- ``limit`` (one device, many accounts): warning + behaviour limits (RISK_LIMITED_DAILY
  gifts a day, live-room gifts per RISK_LIMITED_ROOMS);
- ``freeze`` (abnormal address cluster): no gifts for FREEZE_MS (ACCOUNT_FROZEN with the
  end; the account cannot receive either: RECIPIENT_FROZEN). Pending gifts expire and go
  back as usual: the ledger is not touched;
- ``ban`` (script, bulk operation): gifts refused as for a banned account, and the device is
  banned in every linked app (DEVICE_BANNED for any account sending from it).
"""

from __future__ import annotations

import enum
import time
from typing import Any

import orjson

from clearing.keys import KeySchema
from clearing.topology import AnyRedis
from risk.signals import NO_DEVICE

FREEZE_MS = 48 * 3_600_000
#: Audit entries kept (approximate trim).
AUDIT_MAXLEN = 1_000_000


class Tier(enum.StrEnum):
    NONE = "none"
    LIMIT = "limit"
    FREEZE = "freeze"
    BAN = "ban"


#: Severity order: an account is only ever moved up by the scorer.
SEVERITY = {Tier.NONE: 0, Tier.LIMIT: 1, Tier.FREEZE: 2, Tier.BAN: 3}
#: The evidence an appeal of each tier needs (gift-rules.md section 4).
APPEAL_KINDS = {Tier.LIMIT: "face_verification", Tier.FREEZE: "carrier_bill", Tier.BAN: "notarised_document"}


def now_ms() -> int:
    return int(time.time() * 1000)


class RiskActions:
    def __init__(self, redis: AnyRedis, keys: KeySchema) -> None:
        self.redis = redis
        self.keys = keys

    async def tier_of(self, user: str) -> Tier:
        raw = await self.redis.hget(self.keys.risk(user), "tier")
        try:
            return Tier(raw.decode() if isinstance(raw, bytes) else raw) if raw else Tier.NONE
        except ValueError:
            return Tier.NONE

    async def state(self, user: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.risk(user))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def apply(self, user: str, tier: Tier, *, device: str, reason: str, at_ms: int | None = None) -> bool:
        """Put ``user`` in ``tier`` unless it is already there or higher; returns whether it moved."""
        if tier is Tier.NONE or SEVERITY[await self.tier_of(user)] >= SEVERITY[tier]:
            return False
        at = now_ms() if at_ms is None else at_ms
        fields: dict[str, str | int] = {"tier": tier.value, "reason": reason, "since_ms": at}
        if tier is Tier.LIMIT:
            fields["limited"] = 1
        elif tier is Tier.FREEZE:
            fields["frozen_until"] = at + FREEZE_MS
        else:
            fields["banned"] = 1
            if device != NO_DEVICE:
                fields["banned_device"] = device
        await self.redis.hset(self.keys.risk(user), mapping=fields)  # type: ignore[arg-type]
        if tier is Tier.BAN and device != NO_DEVICE:
            await self.ban_device(device, f"{reason} ({user})", at)
        return True

    async def ban_device(self, device: str, reason: str, at_ms: int) -> None:
        """The device's mark, then its copy on every account seen on it (risk/devices.py)."""
        await self.redis.set(self.keys.device_ban(device), orjson.dumps({"reason": reason, "at_ms": at_ms}))
        for account in await self.redis.smembers(self.keys.device_accounts(device)):
            await self.redis.hset(self.keys.risk(_text(account)), f"dev:{device}", "1")

    async def lift(self, user: str) -> Tier:
        """Undo the account's action (an approved appeal): limits, freeze, ban, and the
        device ban it caused. Returns the tier that was lifted."""
        state = await self.state(user)
        tier = await self.tier_of(user)
        device = state.get("banned_device")
        if device:
            await self.redis.delete(self.keys.device_ban(device))
            for account in await self.redis.smembers(self.keys.device_accounts(device)):
                await self.redis.hdel(self.keys.risk(_text(account)), f"dev:{device}")
        await self.redis.hdel(self.keys.risk(user), "tier", "limited", "frozen_until", "banned", "banned_device",
                              "reason", "since_ms")
        return tier


async def audit(redis: AnyRedis, keys: KeySchema, entry: dict[str, Any]) -> None:
    await redis.xadd(keys.risk_audit(), {k: _field(v) for k, v in entry.items()}, maxlen=AUDIT_MAXLEN,
                     approximate=True)


def _field(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
