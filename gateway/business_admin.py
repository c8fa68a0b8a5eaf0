"""The admin API of the business channel (docs/business.md): business profiles, fan groups,
custom card kinds and campaigns. Mounted by gateway/admin_http.py; every change names its
operator and is written to the business audit stream (clearing/business.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from clearing.business import BusinessRefusal, BusinessRefused
from clearing.campaigns import SOURCES, Campaigns, CustomKind
from clearing.keys import is_valid_id
from gateway.admin_json import AdminError, field, json_response, only, path_id, read_body

#: HTTP status of each business refusal (403: a privilege the account lacks).
STATUS: dict[BusinessRefusal, int] = {
    BusinessRefusal.NOT_BUSINESS: 403,
    BusinessRefusal.BELOW_FOLLOWER_THRESHOLD: 403,
    BusinessRefusal.SHOP_WINDOW_DISABLED: 403,
    BusinessRefusal.NOT_KIND_OWNER: 403,
    BusinessRefusal.NO_FAN_GROUP: 404,
    BusinessRefusal.UNKNOWN_CAMPAIGN: 404,
    BusinessRefusal.KIND_EXISTS: 409,
    BusinessRefusal.CAMPAIGN_EXISTS: 409,
    BusinessRefusal.CAMPAIGN_STATE: 409,
    BusinessRefusal.NO_RECIPIENTS: 400,
    BusinessRefusal.BUDGET_EXCEEDED: 409,
    BusinessRefusal.NO_SHOP_RULE: 404,
}


def business_error(exc: BusinessRefused) -> AdminError:
    return AdminError(STATUS.get(exc.code, 400), exc.code.value, str(exc))


def operator_of(data: dict[str, Any]) -> str:
    operator = data.get("operator")
    if not isinstance(operator, str) or not is_valid_id(operator):
        raise AdminError(400, "BAD_REQUEST", "field 'operator' (who acts, an id) is required")
    return operator


class BusinessAdmin:
    def __init__(self, campaigns: Campaigns) -> None:
        self.campaigns = campaigns
        self.business = campaigns.business

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/admin/business/{user}", self.get_profile)
        r.add_patch("/admin/business/{user}", self.patch_profile)
        r.add_get("/admin/business/{user}/fans/{group}", self.get_group)
        r.add_put("/admin/business/{user}/fans/{group}/{member}", self.put_member)
        r.add_delete("/admin/business/{user}/fans/{group}/{member}", self.delete_member)
        r.add_get("/admin/kinds/{kind}", self.get_kind)
        r.add_put("/admin/kinds/{kind}", self.put_kind)
        r.add_post("/admin/kinds/{kind}/fund", self.fund_kind)
        r.add_get("/admin/campaigns", self.list_campaigns)
        r.add_post("/admin/campaigns", self.create_campaign)
        r.add_get("/admin/campaigns/{campaign}", self.get_campaign)
        r.add_get("/admin/campaigns/{campaign}/report", self.get_report)
        r.add_post("/admin/campaigns/{campaign}/recipients", self.add_recipients)
        r.add_post("/admin/campaigns/{campaign}/start", self.start_campaign)
        for action in ("pause", "resume", "cancel"):
            r.add_post(f"/admin/campaigns/{{campaign}}/{action}", self._change(action))

    # ------------------------------------------------------------ profiles and fan groups
    async def get_profile(self, request: web.Request) -> web.Response:
        user = path_id(request, "user")
        profile = await self.business.profile(user)
        return json_response({**profile.to_json(), "fan_groups": await self.business.groups(user),
                              "brand_min_followers": self.campaigns.min_followers})

    async def patch_profile(self, request: web.Request) -> web.Response:
        user = path_id(request, "user")
        data = only(await read_body(request), "business", "followers", "shop", "operator")
        profile = await self.business.update(
            user, operator=operator_of(data), business=field(data, "business", bool),
            followers=field(data, "followers", int), shop=field(data, "shop", bool))
        return json_response(profile.to_json())

    async def get_group(self, request: web.Request) -> web.Response:
        user, group = path_id(request, "user"), path_id(request, "group")
        min_level = request.query.get("min_level", "1")
        if not (min_level.isascii() and min_level.isdigit()):
            raise AdminError(400, "BAD_REQUEST", "min_level is a whole number")
        return json_response({"members": await self.business.members(user, group, int(min_level))})

    async def put_member(self, request: web.Request) -> web.Response:
        user, group, member = path_id(request, "user"), path_id(request, "group"), path_id(request, "member")
        data = only(await read_body(request), "level", "operator")
        await self.business.set_member(user, group, member, field(data, "level", int, required=True),
                                       operator=operator_of(data))
        return json_response({"member": member, "level": data["level"]})

    async def delete_member(self, request: web.Request) -> web.Response:
        user, group, member = path_id(request, "user"), path_id(request, "group"), path_id(request, "member")
        data = only(await read_body(request), "operator")
        removed = await self.business.remove_member(user, group, member, operator=operator_of(data))
        return json_response({"member": member, "removed": removed})

    # ------------------------------------------------------------ custom kinds
    async def get_kind(self, request: web.Request) -> web.Response:
        kind = path_id(request, "kind")
        record = await self.campaigns.kind(kind)
        if record is None:
            raise AdminError(404, "UNKNOWN_KIND", "no such card kind")
        return json_response(await self._kind_json(record))

    async def put_kind(self, request: web.Request) -> web.Response:
        kind = path_id(request, "kind")
        data = only(await read_body(request), "brand", "name", "artwork", "budget_cards", "operator")
        record = await self.campaigns.define_kind(
            field(data, "brand", str, required=True), kind, name=field(data, "name", str, required=True),
            artwork=field(data, "artwork", str, required=True),
            budget_cards=field(data, "budget_cards", int, required=True), operator=operator_of(data))
        return json_response(await self._kind_json(record), 201)

    async def _kind_json(self, record: CustomKind) -> dict[str, Any]:
        return {**record.to_json(), "budget_units": await self.campaigns.budget_units(record.brand, record.kind)}

    async def fund_kind(self, request: web.Request) -> web.Response:
        kind = path_id(request, "kind")
        data = only(await read_body(request), "brand", "cards", "operator")
        budget = await self.campaigns.fund_kind(field(data, "brand", str, required=True), kind,
                                                field(data, "cards", int, required=True), operator=operator_of(data))
        return json_response({"kind": kind, "budget_units": budget})

    # ------------------------------------------------------------ campaigns
    async def list_campaigns(self, request: web.Request) -> web.Response:
        out = [(await self.campaigns.status(c)).to_json() for c in sorted(await self.campaigns.all())]
        return json_response({"campaigns": out})

    async def create_campaign(self, request: web.Request) -> web.Response:
        """``recipients`` ([[user, qty], ...], within the body limit), ``followers`` ({qty}),
        or ``fan_group`` ({group, min_level, per_level: {level: qty}}): exactly one."""
        data = only(await read_body(request), "campaign_id", "brand", "kind", "ends_at_ms", "operator",
                    "recipients", "followers", "fan_group", "open")
        brand = field(data, "brand", str, required=True)
        given = [s for s in ("recipients", "followers", "fan_group") if s in data]
        if len(given) != 1:
            raise AdminError(400, "BAD_REQUEST", "give exactly one of recipients, followers, fan_group")
        source = {"recipients": "list"}.get(given[0], given[0])
        assert source in SOURCES
        recipients = await self._recipients(brand, source, data[given[0]])
        status = await self.campaigns.create(
            field(data, "campaign_id", str, required=True), brand, field(data, "kind", str, required=True),
            recipients, ends_at_ms=field(data, "ends_at_ms", int, required=True), operator=operator_of(data),
            source=source, open_list=bool(field(data, "open", bool)) and source == "list")
        return json_response(status.to_json(), 201)

    async def add_recipients(self, request: web.Request) -> web.Response:
        data = only(await read_body(request), "recipients", "operator")
        recipients = await self._recipients("", "list", data.get("recipients"))
        status = await self.campaigns.add_recipients(path_id(request, "campaign"), recipients,
                                                     operator=operator_of(data))
        return json_response(status.to_json())

    async def start_campaign(self, request: web.Request) -> web.Response:
        data = only(await read_body(request), "operator")
        status = await self.campaigns.start(path_id(request, "campaign"), operator=operator_of(data))
        return json_response(status.to_json())

    async def _recipients(self, brand: str, source: str, spec: Any) -> list[tuple[str, int]]:
        if source == "list":
            if not isinstance(spec, list) or not all(
                    isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and type(e[1]) is int
                    for e in spec):
                raise AdminError(400, "BAD_REQUEST", "recipients is a list of [user, qty]")
            return [(e[0], e[1]) for e in spec]
        if not isinstance(spec, dict):
            raise AdminError(400, "BAD_REQUEST", f"{source} is an object")
        if source == "followers":
            only(spec, "qty")
            return await self.campaigns.follower_recipients(brand, field(spec, "qty", int) or 1)
        only(spec, "group", "min_level", "per_level")
        per_level = spec.get("per_level") or {}
        if not isinstance(per_level, dict) or not all(
                isinstance(k, str) and k.isascii() and k.isdigit() and type(v) is int for k, v in per_level.items()):
            raise AdminError(400, "BAD_REQUEST", "per_level maps a level (\"2\") to a quantity")
        group = field(spec, "group", str, required=True)
        return await self.campaigns.fan_group_recipients(
            brand, group, field(spec, "min_level", int) or 1, {int(k): v for k, v in per_level.items()})

    async def get_campaign(self, request: web.Request) -> web.Response:
        return json_response((await self.campaigns.status(path_id(request, "campaign"))).to_json())

    async def get_report(self, request: web.Request) -> web.Response:
        return json_response((await self.campaigns.report(path_id(request, "campaign"))).to_json())

    def _change(self, action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            data = only(await read_body(request), "operator")
            status = await self.campaigns.change(path_id(request, "campaign"), action, operator=operator_of(data))
            return json_response(status.to_json())

        return handler
