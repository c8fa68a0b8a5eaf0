"""Appeals: a user asks an operator to lift the risk engine's action (docs/risk.md).

The evidence needed depends on the tier (APPEAL_KINDS); one appeal per user is open at a
time. An operator lists open appeals and approves (the action is lifted: risk/actions.py)
or rejects them through the admin API or ``notecard admin appeals``; every step is audited
with who and when.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from clearing.errors import Refusal, Refused
from clearing.keys import KeySchema
from clearing.topology import AnyRedis
from risk.actions import APPEAL_KINDS, RiskActions, Tier, audit, now_ms


@dataclass(frozen=True, slots=True)
class AppealRecord:
    user: str
    tier: str
    kind: str
    evidence: str
    filed_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "tier": self.tier, "kind": self.kind, "evidence": self.evidence,
                "filed_ms": self.filed_ms}


class Appeals:
    def __init__(self, redis: AnyRedis, keys: KeySchema) -> None:
        self.redis = redis
        self.keys = keys
        self.actions = RiskActions(redis, keys)

    async def file(self, user: str, kind: str, evidence: str) -> AppealRecord:
        tier = await self.actions.tier_of(user)
        if tier is Tier.NONE:
            raise Refused(Refusal.NOTHING_TO_APPEAL)
        if APPEAL_KINDS[tier] != kind:
            raise Refused(Refusal.APPEAL_KIND, f"this action is appealed with {APPEAL_KINDS[tier]}")
        record = AppealRecord(user, tier.value, kind, evidence, now_ms())
        # HSETNX: one open appeal per user; a second is refused until the first is decided.
        if not await self.redis.hsetnx(self.keys.risk_appeals(), user, orjson.dumps(record.to_json())):
            raise Refused(Refusal.APPEAL_PENDING)
        await audit(self.redis, self.keys, {"what": "appeal_filed", **record.to_json()})
        return record

    async def open(self) -> list[AppealRecord]:
        raw = await self.redis.hgetall(self.keys.risk_appeals())
        out = []
        for value in raw.values():
            try:
                d = orjson.loads(value)
                out.append(AppealRecord(str(d["user"]), str(d["tier"]), str(d["kind"]), str(d["evidence"]),
                                        int(d["filed_ms"])))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a record that does not read is no appeal
        return sorted(out, key=lambda a: a.filed_ms)

    async def decide(self, user: str, approve: bool, operator: str, note: str = "") -> AppealRecord | None:
        """Approve (lift the action) or reject the user's open appeal; None when there is none."""
        raw = await self.redis.hget(self.keys.risk_appeals(), user)
        if raw is None:
            return None
        try:
            d = orjson.loads(raw)
            record = AppealRecord(user, str(d.get("tier", "")), str(d.get("kind", "")), str(d.get("evidence", "")),
                                  int(d.get("filed_ms", 0)))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            record = AppealRecord(user, "", "", "", 0)  # a hand-edited record is still decided and removed
        lifted = (await self.actions.lift(user)).value if approve else None
        await self.redis.hdel(self.keys.risk_appeals(), user)
        await audit(self.redis, self.keys, {"what": "appeal_approved" if approve else "appeal_rejected",
                                            "user": user, "operator": operator, "note": note, "at_ms": now_ms(),
                                            "lifted": lifted or "", "tier": record.tier})
        return record
