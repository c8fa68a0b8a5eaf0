"""The admin API of the risk engine (docs/risk.md): appeals, an account's risk state and
manual actions, the scorer's switches. Mounted by gateway/admin_http.py; every change is
audited with the operator's name and the time."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from clearing.keys import KeySchema, is_valid_device, is_valid_id
from risk.actions import RiskActions, Tier, audit, now_ms
from risk.appeals import Appeals
from risk.engine import RULES

Redis = Any


class RiskAdmin:
    def __init__(self, redis: Redis, keys: KeySchema) -> None:
        self.redis = redis
        self.keys = keys
        self.appeals = Appeals(redis, keys)
        self.actions = RiskActions(redis, keys)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/appeals", self.list_appeals)
        app.router.add_post("/admin/appeals/{user}", self.decide_appeal)
        app.router.add_get("/admin/users/{user}/risk", self.get_risk)
        app.router.add_put("/admin/users/{user}/risk", self.put_risk)
        app.router.add_get("/admin/risk", self.get_switches)
        app.router.add_patch("/admin/risk", self.patch_switches)

    async def list_appeals(self, request: web.Request) -> web.Response:
        return _json({"appeals": [a.to_json() for a in await self.appeals.open()]})

    async def decide_appeal(self, request: web.Request) -> web.Response:
        user = _user(request)
        data = await _body(request, "approve", "operator", "note")
        approve, operator = data.get("approve"), data.get("operator")
        if type(approve) is not bool or not isinstance(operator, str) or not is_valid_id(operator):
            raise _bad("'approve' (true or false) and 'operator' (who decides, an id) are required")
        note = data.get("note", "")
        if not isinstance(note, str) or len(note) > 512:
            raise _bad("'note' is text of at most 512 characters")
        record = await self.appeals.decide(user, approve, operator, note)
        if record is None:
            return _json({"error": "NO_APPEAL", "message": "the user has no open appeal"}, 404)
        return _json({"user": user, "approved": approve, "appeal": record.to_json(),
                      "risk": await self.actions.state(user)})

    async def get_risk(self, request: web.Request) -> web.Response:
        user = _user(request)
        appeal = await self.redis.hget(self.keys.risk_appeals(), user)
        try:
            shown = orjson.loads(appeal) if appeal else None
        except orjson.JSONDecodeError:
            shown = {"unreadable": True}
        return _json({"user": user, "risk": await self.actions.state(user), "appeal": shown})

    async def put_risk(self, request: web.Request) -> web.Response:
        """An operator's own action: put the account in a tier (``device`` for a ban), or
        lift it (``none``)."""
        user = _user(request)
        data = await _body(request, "tier", "device", "operator", "reason")
        operator, device = data.get("operator"), data.get("device", "-")
        try:
            tier = Tier(str(data.get("tier")))
        except ValueError:
            raise _bad("'tier' is one of none, limit, freeze, ban") from None
        if not isinstance(operator, str) or not is_valid_id(operator):
            raise _bad("'operator' (who acts, an id) is required")
        if not isinstance(device, str) or not (device == "-" or is_valid_device(device)):
            raise _bad("'device' is a fingerprint: 1-128 of A-Z a-z 0-9 _ -")
        reason = str(data.get("reason") or "operator")[:200]
        if tier is Tier.NONE:
            lifted = await self.actions.lift(user)
            changed = lifted is not Tier.NONE
        else:
            changed = await self.actions.apply(user, tier, device=device, reason=f"operator: {reason}")
        await audit(self.redis, self.keys, {"what": "operator_action", "user": user, "tier": tier.value,
                                            "device": device, "operator": operator, "reason": reason,
                                            "at_ms": now_ms(), "changed": "1" if changed else "0"})
        return _json({"user": user, "changed": changed, "risk": await self.actions.state(user)})

    async def get_switches(self, request: web.Request) -> web.Response:
        raw = await self.redis.hgetall(self.keys.risk_switches())
        d = {_text(k): _text(v) for k, v in raw.items()}
        return _json({"shadow": d.get("shadow") == "1",
                      "rules": {name: d.get(f"rule:{name}", "enforce") for name in RULES}})

    async def patch_switches(self, request: web.Request) -> web.Response:
        data = await _body(request, "shadow", "rules", "operator")
        operator = data.get("operator")
        if not isinstance(operator, str) or not is_valid_id(operator):
            raise _bad("'operator' (who changes the switches, an id) is required")
        fields: dict[str, str] = {}
        if "shadow" in data:
            if type(data["shadow"]) is not bool:
                raise _bad("'shadow' is true or false")
            fields["shadow"] = "1" if data["shadow"] else "0"
        rules = data.get("rules", {})
        if not isinstance(rules, dict):
            raise _bad("'rules' maps rule names to enforce, shadow or off")
        for name, mode in rules.items():
            if name not in RULES or mode not in ("enforce", "shadow", "off"):
                raise _bad(f"rules: {sorted(RULES)} -> enforce, shadow or off")
            fields[f"rule:{name}"] = mode
        if fields:
            await self.redis.hset(self.keys.risk_switches(), mapping=fields)
            await audit(self.redis, self.keys, {"what": "switches", "operator": operator, "at_ms": now_ms(),
                                                **fields})
        return await self.get_switches(request)


def _user(request: web.Request) -> str:
    user = request.match_info["user"]
    if not is_valid_id(user):
        raise _bad("user id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return user


async def _body(request: web.Request, *allowed: str) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read()) if request.can_read_body else {}
    except orjson.JSONDecodeError:
        raise _bad("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _bad("body must be a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise _bad(f"unknown field '{unknown[0]}'; expected {', '.join(allowed)}")
    return data


def _bad(message: str) -> web.HTTPException:
    return web.HTTPBadRequest(reason=message)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
