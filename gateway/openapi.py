"""The admin HTTP API as an OpenAPI 3.1 document, served at ``/admin/openapi.json``.

Written by hand beside the routes (gateway/admin_http.py, gateway/admin_backend.py);
tests/test_openapi.py checks that every route the server registers is described here and
nothing else is, and validates real answers against the schemas. Schemas are JSON Schema
2020-12 (OpenAPI 3.1's dialect). A schema that says only ``object`` is a shape the
document does not pin down (the scene settings, whose fields docs/operations.md lists).
"""

from __future__ import annotations

import functools
from typing import Any

from clearing.regions import (
    DEFAULT_GUARDIAN_WINDOW_MS,
    DEFAULT_REGION,
    GENDERS,
    GUARDIAN_RULES,
    MAX_GUARDIAN_WINDOW_MS,
    MIN_GUARDIAN_WINDOW_MS,
    REGION_PATTERN,
)

OPENAPI_PATH = "/admin/openapi.json"
_ID = {"type": "string", "pattern": r"^[A-Za-z0-9_.:\-]{1,64}$"}
_APP = {"type": "string", "pattern": r"^[a-z0-9_]{1,32}$"}
_MS = {"type": "integer", "minimum": 0, "description": "ms since the epoch"}
_UNITS = {"type": "object", "additionalProperties": {"type": "integer"}, "description": "minor units by card kind"}
_OPTIONAL_STR = {"type": ["string", "null"]}
_REGION = {"type": "string", "pattern": f"^{REGION_PATTERN}$", "description": "docs/regions.md"}
_GENDER = {"type": "string", "enum": list(GENDERS), "description": "read by the guardian rule (docs/regions.md)"}
_OPERATOR = {**_ID, "description": "who acts (audited)"}
_KIND = {"type": "string", "pattern": r"^[a-z0-9_]{1,32}$"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], required: tuple[str, ...] = (), *, closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


_SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string", "description": "a stable code, e.g. UNKNOWN_USER"},
                      "message": {"type": "string"}}, ("error", "message")),
    "Ok": _object({"ok": {"const": True}}, ("ok",)),
    "Balances": _object({"available": _UNITS, "held": _UNITS, "units_per_card": {"type": "integer"}},
                        ("available", "held", "units_per_card")),
    "User": _object({"user_id": _ID, "verified": {"type": "boolean"}, "vip": {"type": "boolean"},
                     "banned": {"type": "boolean"}, "created_at_ms": _MS, "app": _APP, "region": _REGION,
                     "gender": _GENDER, "guardian": {"type": "string", "description": "\"\" when none"},
                     "balances": _ref("Balances")},
                    ("user_id", "verified", "vip", "banned", "created_at_ms", "app", "region", "balances")),
    "NewUser": _object({"user_id": _ID, "verified": {"type": "boolean", "default": False},
                        "vip": {"type": "boolean", "default": False}, "banned": {"type": "boolean", "default": False},
                        "created_at_ms": _MS, "app": _APP, "region": _REGION | {"default": DEFAULT_REGION}},
                       ("user_id",)),
    "Flags": _object({"verified": {"type": "boolean"}, "vip": {"type": "boolean"}, "banned": {"type": "boolean"},
                      "region": _REGION, "gender": _GENDER}),
    "GuardianLink": _object({"guardian": {**_ID, "type": ["string", "null"], "description": "null unlinks"},
                             "operator": {**_ID, "description": "who links (audited)"}}, ("guardian", "operator")),
    "Guardian": _object({"user_id": _ID, "guardian": {"type": "string", "description": "\"\" when none"},
                         "log": {"type": "array", "description": "changes, newest first",
                                 "items": _object({"id": {"type": "string"}, "at_ms": {"type": "string"},
                                                   "operator": {"type": "string"}, "from": {"type": "string"},
                                                   "to": {"type": "string"}})}},
                        ("user_id", "guardian", "log")),
    "Regions": _object({"regions": {"type": "object", "additionalProperties": _ref("RegionRules"),
                                    "description": "region code -> its rules"},
                        "problems": {"type": "array", "items": {"type": "string"}}}, ("regions", "problems")),
    "RegionRules": {"type": "object", "description": "one region's rules; every field's default is off "
                                                    "(docs/regions.md lists them)",
                    "properties": {"name": {"type": "string", "maxLength": 100},
                                   "consent_required": {"type": "boolean"},
                                   "consent_version": {"type": "string", "maxLength": 64},
                                   "eco_badges": {"type": "array", "maxItems": 20, "items": _ref("EcoBadge")},
                                   "lucky_odds": {"type": "string", "maxLength": 64,
                                                  "description": "odds table of the lucky card; \"\" = off"},
                                   "guardian_rule": {"type": "string", "enum": list(GUARDIAN_RULES), "default": "off"},
                                   "guardian_window_ms": {"type": "integer", "minimum": MIN_GUARDIAN_WINDOW_MS,
                                                          "maximum": MAX_GUARDIAN_WINDOW_MS,
                                                          "default": DEFAULT_GUARDIAN_WINDOW_MS}}},
    "EcoBadge": _object({"id": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
                         "name": {"type": "string", "maxLength": 60},
                         "metric": {"enum": ["accepted", "given", "given_month"]},
                         "at_least": {"type": "integer", "minimum": 1}}, ("id", "metric", "at_least")),
    "Badges": {"type": "object", "required": ["user", "region", "badges", "earned"],
               "properties": {"badges": {"type": "array", "items": {"type": "object"},
                                         "description": "each badge of the region with the user's value"},
                              "earned": {"type": "array", "items": {"type": "string"}}}},
    # GDPR access and erasure (gateway/privacy_admin.py, docs/regions.md "Export and erasure").
    "Export": {"type": "object", "description": "everything held about the user (docs/regions.md lists the parts)",
               "required": ["user", "exported_at_ms", "account", "region", "consent", "balances", "gifts_sent",
                            "gifts_received", "follows", "blocks", "followed_by", "blocked_by", "risk",
                            "presence", "ledger", "other", "gaps"]},
    "Erased": {"type": "object", "required": ["user", "pseudonym", "consumed", "erased_at_ms", "already_erased"],
               "properties": {"pseudonym": {"type": "string"}, "already_erased": {"type": "boolean"},
                              "consumed": {"type": "object", "additionalProperties": {"type": "integer"}},
                              "settled": {"type": "array", "items": {"type": "object"}}}},
    "OddsEntries": _object({"entries": {"type": "array", "minItems": 1, "maxItems": 32, "items": _object(
        {"bonus": {"type": "integer", "minimum": 0, "maximum": 1000, "description": "cards"},
         "weight": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000}}, ("bonus", "weight"))}},
        ("entries",)),
    "OddsVersion": _object({
        "version": {"type": "integer", "minimum": 1}, "published_ms": _MS, "retired_ms": _MS,
        "commitment": {"type": "string", "description": "SHA-256 of the version's key, hex"},
        "key": {"type": "string", "description": "the key, hex: only once the version is retired"},
        "total_weight": {"type": "integer"},
        "entries": {"type": "array", "items": _object({"bonus": {"type": "integer"}, "weight": {"type": "integer"},
                                                        "probability": {"type": "number"}},
                                                       ("bonus", "weight", "probability"))},
    }, ("version", "published_ms", "commitment", "total_weight", "entries")),
    "OddsTable": _object({"table": _ID, "current": _ref("OddsVersion"),
                          "revealed": {"type": "array", "items": _ref("OddsVersion")},
                          "regions": {"type": "array", "items": {"type": "string"}}},
                         ("table", "current", "revealed")),
    "Skin": _object({"kind": {"type": "string"}, "name": {"type": "string", "minLength": 1, "maxLength": 100},
                     "image_url": {"type": "string", "pattern": "^https?://"},
                     "regions": {"type": "array", "items": _REGION, "minItems": 1, "maxItems": 64},
                     "optional": {"type": "boolean", "default": False,
                                  "description": "true: offered to choose; false: the regions' own art for the kind"}},
                    ("kind", "name", "image_url", "regions")),
    "SkinStored": _object({"skin_id": _ID, "kind": {"type": "string"}, "name": {"type": "string"},
                           "image_url": {"type": "string"}, "regions": {"type": "array", "items": _REGION},
                           "optional": {"type": "boolean"}},
                          ("skin_id", "kind", "name", "image_url", "regions", "optional")),
    "Skins": _object({"skins": {"type": "array", "items": _ref("SkinStored")},
                      "problems": {"type": "array", "items": {"type": "string"}}}, ("skins", "problems")),
    "PaymentNotification": {"oneOf": [
        _object({"type": {"const": "purchase"}, "payment_id": _ID, "user": _ID, "kind": {"type": "string"},
                 "cards": {"type": "integer", "minimum": 1}}, ("type", "payment_id", "user", "kind", "cards")),
        _object({"type": {"const": "refund"}, "payment_id": _ID, "user": _ID}, ("type", "payment_id", "user"))]},
    "Payment": _object({"provider": {"type": "string"}, "payment_id": _ID, "user": _ID,
                        "state": {"enum": ["paid", "refunded"]}, "kind": {"type": "string"},
                        "units": {"type": "integer", "description": "minor units bought"},
                        "clawed": {"type": "integer", "description": "refunded: units taken back"},
                        "short": {"type": "integer", "description": "refunded: units already spent"},
                        "replayed": {"type": "boolean", "description": "a repeat: nothing changed"}},
                       ("provider", "payment_id", "user", "state", "kind", "units", "clawed", "short", "replayed")),
    "Odds": _object({"algorithm": {"type": "string"}, "tables": {"type": "array", "items": _ref("OddsTable")}},
                    ("algorithm", "tables")),
    "Region": {"type": "object", "required": ["region"], "properties": {"region": _REGION}},
    "Mint": _object({"qty": {"type": "integer", "minimum": 1, "description": "whole cards"},
                     "kind": {"type": "string"}}, ("qty",)),
    "Gift": _object({
        "gift_id": _ID, "sender": _ID, "recipient": _ID, "kind": {"type": "string"},
        "qty": {"type": "integer", "minimum": 1}, "cost": {"type": "integer"}, "amount": {"type": "integer"},
        "state": {"enum": ["pending", "awaiting_guardian", "accepted", "declined", "expired"],
                  "description": "awaiting_guardian: held, waiting for the recipient's guardian (docs/regions.md)"},
        "created_at_ms": _MS, "expires_at_ms": _MS, "resolved_at_ms": {"type": ["integer", "null"]},
        "payer": _OPTIONAL_STR, "app": _APP, "festival": _OPTIONAL_STR, "room": _OPTIONAL_STR,
        "guardian": {**_OPTIONAL_STR, "description": "the recipient's guardian the gift waits or waited for"},
        "lucky_table": _OPTIONAL_STR, "lucky_version": {"type": ["integer", "null"]}, "lucky_seed": _OPTIONAL_STR,
        "lucky_bonus": {"type": ["integer", "null"]}, "lucky_paid": {"type": ["integer", "null"]},
        "skin": _OPTIONAL_STR,
        "campaign": {**_OPTIONAL_STR, "description": "the brand campaign that issued it (docs/business.md)"},
    }, ("gift_id", "sender", "recipient", "kind", "qty", "cost", "amount", "state", "created_at_ms",
        "expires_at_ms")),
    "RefusedGift": _object({
        "gift_id": _ID, "state": {"const": "refused"}, "code": {"type": "string"}, "sender": _ID, "recipient": _ID,
        "kind": {"type": "string"}, "qty": {"type": "integer"}, "remembered_ms": {"type": "integer"},
    }, ("gift_id", "state", "code", "sender", "recipient", "kind", "qty", "remembered_ms")),
    "SendGift": _object({"gift_id": {**_ID, "description": "chosen by the caller; a retry reuses it"},
                         "sender": _ID, "recipient": _ID, "kind": {"type": "string"},
                         "qty": {"type": "integer", "minimum": 1, "default": 1}, "app": _APP},
                        ("gift_id", "sender", "recipient")),
    "Disconnected": _object({"ok": {"const": True}, "nodes": {"type": "integer", "minimum": 0,
                                                              "description": "nodes told to close connections"}},
                            ("ok", "nodes")),
    "BulkUsers": _object({"users": {"type": "array", "minItems": 1, "maxItems": 500, "items": _ref("NewUser")}},
                         ("users",)),
    "BulkFollows": _object({"follows": {"type": "array", "minItems": 1, "maxItems": 500, "items": _object(
        {"follower": _ID, "followee": _ID, "since_ms": _MS, "mutual": {"type": "boolean", "default": False}},
        ("follower", "followee"))}}, ("follows",)),
    "BulkResult": _object({
        "results": {"type": "array", "description": "one per item, in the order given", "items": {"oneOf": [
            _object({"ok": {"const": True}, "user_id": _ID, "created": {"type": "boolean"}, "follower": _ID,
                     "followee": _ID}, ("ok",)),
            _object({"ok": {"const": False}, "error": {"type": "string"}, "message": {"type": "string"}},
                    ("ok", "error", "message")),
        ]}},
        "succeeded": {"type": "integer"}, "failed": {"type": "integer"},
    }, ("results", "succeeded", "failed")),
    "Invariant": _object({"ok": {"type": "boolean"}, "violations": {"type": "array", "items": {"type": "string"}},
                          "per_kind": {"type": "object"}}, ("ok", "violations", "per_kind")),
    "Pending": _object({"gifts": {"type": "array", "items": _ref("Gift")}}, ("gifts",)),
    "Points": {"type": "object", "required": ["points", "joint_campaign", "inventory"],
               "properties": {"points": {"type": "integer"}, "joint_campaign": {"type": "boolean"},
                              "inventory": {"type": "object", "additionalProperties": {"type": "integer"},
                                            "description": "item -> expiry ms"}}},
    "Scenes": {"type": "object", "required": ["config"], "description": "docs/operations.md lists the fields"},
    "Festival": {"type": "object", "required": ["festival_id", "name", "start_ms", "end_ms", "multiplier"]},
    "NewFestival": _object({"name": {"type": "string"}, "start": {"type": ["string", "integer"]},
                            "end": {"type": ["string", "integer"]}, "multiplier": {"type": "number"},
                            "frame": {"type": "string"}}, ("start", "end")),
    "Mentor": _object({"mentor": _ID}, ("mentor",)),
    "Binding": _object({"mentor": _ID, "apprentice": _ID, "mentor_reward": {"type": "integer"},
                        "apprentice_reward": {"type": "integer"}},
                       ("mentor", "apprentice", "mentor_reward", "apprentice_reward")),
    "Stats": {"type": "object", "required": ["at_ms", "node", "nodes", "pending_gifts", "held_units"]},
    "Health": {"type": "object", "required": ["status", "node"]},
    "Ready": {"type": "object", "required": ["ready", "node"],
              "properties": {"ready": {"type": "boolean"}, "node": {"type": "string"},
                             "reasons": {"type": "array", "items": {"type": "string"}}}},
    "AppConfig": {"type": "object", "required": ["gateways", "dev_tokens", "node"]},
    "DevToken": _object({"token": {"type": "string"}, "user": _ID, "ttl_s": {"type": "integer"}},
                        ("token", "user", "ttl_s")),
    # The webhooks' dead letters (gateway/webhooks_admin.py, docs/ledger.md "Webhooks").
    "DeadLetters": _object({
        "dead": {"type": "array", "description": "newest first", "items": {"oneOf": [
            _object({"event": {"type": "object", "description": "the event as POSTed (docs/ledger.md)"},
                     "url": {"type": "string"}, "attempts": {"type": "integer", "minimum": 1},
                     "error": {"type": "string", "description": "the last failure"}, "at_ms": _MS},
                    ("event", "url", "attempts", "error", "at_ms")),
            _object({"unreadable": {"type": "string", "description": "a stored letter that is not one"}},
                    ("unreadable",)),
        ]}},
        "total": {"type": "integer", "minimum": 0, "description": "letters stored"}}, ("dead", "total")),
    "Retried": _object({"moved": {"type": "integer", "minimum": 0,
                                  "description": "letters sent back to notecard webhooks"}}, ("moved",)),
    # The business dashboards (gateway/dashboards_admin.py, docs/dashboards.md).
    "ProfileDashboard": _object({
        "scope": _ref("DashboardScope"), "recipients": {"type": "integer", "minimum": 0},
        "breakdown": _object({name: {"type": "array", "items": _object(
            {"value": {"type": "string"}, "recipients": {"type": "integer", "minimum": 0}}, ("value", "recipients"))}
            for name in ("region", "age", "app", "fan_level")}, ("region", "age", "app", "fan_level"))},
        ("scope", "recipients", "breakdown")),
    "ConversionDashboard": _object({
        "scope": _ref("DashboardScope"), "window_days": {"type": "integer", "minimum": 1},
        "campaigns": {"type": "array", "items": _object({
            "campaign": {"type": "string"}, "brand": {"type": "string"}, "name": {"type": "string"},
            **{name: {"type": "integer", "minimum": 0} for name in (
                "issued", "accepted", "purchased", "cost_units", "cost_cents", "revenue_cents")},
            **{name: {"type": ["number", "null"]} for name in (
                "accept_rate", "purchase_rate", "cost_per_conversion_cents", "roi")},
        }, ("campaign", "brand", "name", "issued", "accepted", "purchased", "accept_rate", "purchase_rate",
            "cost_units", "cost_cents", "revenue_cents", "cost_per_conversion_cents", "roi"))}},
        ("scope", "window_days", "campaigns")),
    "RetentionDashboard": _object({
        "scope": _ref("DashboardScope"), "days": {"type": "integer", "minimum": 1}, "timezone": {"type": "string"},
        "cohorts": {"type": "array", "items": _object({
            "day": {"type": "string", "format": "date"}, "recipients": {"type": "integer", "minimum": 1},
            "active": {"type": "array", "items": {"type": "integer", "minimum": 0},
                       "description": "recipients active on day 1, 2, ... after the cohort's day"},
            "rate": {"type": "array", "items": {"type": ["number", "null"]}}},
            ("day", "recipients", "active", "rate"))}},
        ("scope", "days", "timezone", "cohorts")),
    "DashboardScope": _object({"brand": _OPTIONAL_STR, "campaign": _OPTIONAL_STR}, ("brand", "campaign")),
    # The risk engine's operator API (gateway/risk_admin.py, docs/risk.md).
    "Appeals": {"type": "object", "required": ["appeals"],
                "properties": {"appeals": {"type": "array", "items": {"type": "object"}}}},
    "AppealDecision": _object({"approve": {"type": "boolean"},
                               "operator": {**_ID, "description": "who decides (audited)"},
                               "note": {"type": "string", "maxLength": 512}}, ("approve", "operator")),
    "AppealDecided": {"type": "object", "required": ["user", "approved", "appeal", "risk"]},
    "Risk": {"type": "object", "required": ["user", "risk", "appeal"],
             "description": "the account's risk state and its appeal (null when none)"},
    "RiskAction": _object({"tier": {"enum": ["none", "limit", "freeze", "ban"]},
                           "device": {"type": "string", "description": "with ban: the device banned in every app"},
                           "operator": {**_ID, "description": "who acts (audited)"}, "reason": {"type": "string"}},
                          ("tier", "operator")),
    "RiskChanged": {"type": "object", "required": ["user", "changed", "risk"]},
    "RiskSwitches": {"type": "object", "required": ["shadow", "rules"],
                     "properties": {"shadow": {"type": "boolean"},
                                    "rules": {"type": "object", "additionalProperties": {
                                        "enum": ["enforce", "shadow", "off"]}}}},
    "RiskSwitchChange": _object({"shadow": {"type": "boolean"}, "rules": {"type": "object"},
                                 "operator": {**_ID, "description": "who changes them (audited)"}}, ("operator",)),
    # The business channel (gateway/business_admin.py, docs/business.md).
    "Business": _object({"user": _ID, "business": {"type": "boolean"}, "followers": {"type": "integer"},
                         "shop": {"type": "boolean"}, "updated_at_ms": {"type": "integer"},
                         "fan_groups": {"type": "array", "items": _ID},
                         "brand_min_followers": {"type": "integer"}},
                        ("user", "business", "followers", "shop", "updated_at_ms")),
    "BusinessChange": _object({"business": {"type": "boolean"}, "followers": {"type": "integer", "minimum": 0},
                               "shop": {"type": "boolean"}, "operator": _OPERATOR}, ("operator",)),
    "FanGroup": _object({"members": {"type": "object", "additionalProperties": {"type": "integer"},
                                     "description": "member -> level"}}, ("members",)),
    "FanLevel": _object({"level": {"type": "integer", "minimum": 1, "maximum": 100}, "operator": _OPERATOR},
                        ("level", "operator")),
    "FanMember": _object({"member": _ID, "level": {"type": "integer"}, "removed": {"type": "boolean"}},
                         ("member",)),
    "Operator": _object({"operator": _OPERATOR}, ("operator",)),
    "Kind": _object({"kind": _KIND, "brand": _ID, "name": {"type": "string"}, "artwork": {"type": "string"},
                     "budget_units": {"type": "integer", "description": "everything minted of the kind"}},
                    ("kind", "brand", "name", "artwork", "budget_units")),
    "NewKind": _object({"brand": _ID, "name": {"type": "string", "minLength": 1, "maxLength": 64},
                        "artwork": {"type": "string", "pattern": "^https://"},
                        "budget_cards": {"type": "integer", "minimum": 1}, "operator": _OPERATOR},
                       ("brand", "name", "artwork", "budget_cards", "operator")),
    "KindFunding": _object({"brand": _ID, "cards": {"type": "integer", "minimum": 1}, "operator": _OPERATOR},
                           ("brand", "cards", "operator")),
    "KindFunded": _object({"kind": _KIND, "budget_units": {"type": "integer"}}, ("kind", "budget_units")),
    "Campaign": _object({
        "campaign_id": _ID, "brand": _ID, "kind": _KIND,
        "state": {"enum": ["loading", "running", "paused", "done", "cancelled", "ended"]},
        "total": {"type": "integer"}, "issued": {"type": "integer", "description": "recipients handled"},
        "refused": {"type": "integer"}, "created_at_ms": _MS, "ends_at_ms": _MS,
        "finished_at_ms": {"type": ["integer", "null"]}},
        ("campaign_id", "brand", "kind", "state", "total", "issued", "refused", "created_at_ms", "ends_at_ms")),
    "Campaigns": _object({"campaigns": {"type": "array", "items": _ref("Campaign")}}, ("campaigns",)),
    "NewCampaign": _object({
        "campaign_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,24}$"}, "brand": _ID, "kind": _KIND,
        "ends_at_ms": _MS, "operator": _OPERATOR,
        "recipients": {"type": "array", "items": {"type": "array", "prefixItems": [_ID, {"type": "integer"}]},
                       "description": "[user, qty] each (brand marketing)"},
        "followers": _object({"qty": {"type": "integer", "minimum": 1}}),
        "fan_group": _object({"group": _ID, "min_level": {"type": "integer", "minimum": 1},
                              "per_level": {"type": "object", "additionalProperties": {"type": "integer"}}},
                             ("group",)),
        "open": {"type": "boolean", "default": False,
                 "description": "with recipients: stay loading for more parts (…/recipients), then …/start"}},
        ("campaign_id", "brand", "kind", "ends_at_ms", "operator")),
    "ShopRule": _object({"shop": _ID, "kind": _KIND, "min_spend": {"type": "integer", "minimum": 0},
                         "qty": {"type": "integer", "minimum": 1}, "window_ms": {"type": "integer"},
                         "secret": {"type": "string", "description": "the order-signing secret, shown once"}},
                        ("shop", "kind", "min_spend", "qty", "window_ms")),
    "NewShopRule": _object({"kind": _KIND, "min_spend": {"type": "integer", "minimum": 0,
                                                         "description": "in the shop's currency's minor units"},
                            "qty": {"type": "integer", "minimum": 1, "default": 1},
                            "window_s": {"type": "integer", "minimum": 1, "default": 604800},
                            "operator": _OPERATOR}, ("kind", "min_spend", "operator")),
    "ShopSecret": _object({"shop": _ID, "secret": {"type": "string"}}, ("shop", "secret")),
    "Order": _object({"order_id": _ID, "event": {"enum": ["paid", "refunded"]}, "buyer": _ID,
                      "spend": {"type": "integer", "minimum": 0}}, ("order_id", "event")),
    "OrderOutcome": _object({"order_id": _ID, "result": {"enum": [
        "gifted", "below_minimum", "refunded", "cancelled", "after_acceptance", "not_pending"]},
        "gift": {"oneOf": [_ref("Gift"), {"type": "null"}]}}, ("order_id", "result", "gift")),
    "Recipients": _object({"recipients": {"type": "array", "items": {
        "type": "array", "prefixItems": [_ID, {"type": "integer"}]}}, "operator": _OPERATOR},
        ("recipients", "operator")),
    "CampaignReport": _object({"status": _ref("Campaign"), "recipients": {"type": "object"},
                               "units": {"type": "object"}, "budget": {"type": "object"},
                               "balanced": {"type": "boolean"}},
                              ("status", "recipients", "units", "budget", "balanced")),
}

_ERRORS = {
    "400": "bad input (the message names the field); nothing changed",
    "401": "admin token missing or wrong (a payment notification: signature wrong, or timestamp out of window; "
           "an order: BAD_SIGNATURE, STALE_ORDER)",
    "403": "a payment provider the user's region does not allow; or the account lacks the business privilege "
           "(NOT_BUSINESS, BELOW_FOLLOWER_THRESHOLD, SHOP_WINDOW_DISABLED, NOT_KIND_OWNER)",
    "404": "unknown user, gift, festival, skin, payment or payment provider",
    "409": "the user exists, or the gift (payment) id was used with another payload",
    "422": "a gift rule refused the send (the code says which: gift-rules.md section 1)",
    "429": "the sender's request rate is exceeded",
    "500": "internal error (the node's log has the details)",
    "503": "Redis unavailable: the outcome is unknown, retry with the same ids (dashboards: NO_BOOKS without a "
           "PostgreSQL book of record, UNAVAILABLE when it does not answer)",
}


def _error(status: str) -> dict[str, Any]:
    return {"description": _ERRORS[status], "content": {"application/json": {"schema": _ref("Error")}}}


def _op(summary: str, ok: str | None, *, status: str = "200", body: str | None = None,
        errors: tuple[str, ...] = ("400", "401", "503"), params: tuple[str, ...] = (), open_: bool = False,
        media: str = "application/json") -> dict[str, Any]:
    responses: dict[str, Any] = {status: {"description": summary}}
    if ok is not None:
        schema = _ref(ok) if media == "application/json" else {"type": "string"}
        responses[status]["content"] = {media: {"schema": schema}}
    for code in errors:
        responses[code] = _error(code)
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        operation["parameters"] = [{"name": p, "in": "path", "required": True, "schema": _ID} for p in params]
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if open_:
        operation["security"] = []
    return operation


def _dashboard(summary: str, schema: str, *extra: dict[str, Any]) -> dict[str, Any]:
    """A dashboard: JSON, or CSV with ?format=csv; 503 NO_BOOKS without a book of record."""
    operation = _op(summary, schema, errors=("400", "401", "503"))
    operation["responses"]["200"]["content"]["text/csv"] = {"schema": {"type": "string"}}
    query = [{"name": name, "in": "query", "required": False, "schema": _ID, "description": text}
             for name, text in (("brand", "the brand's cards only (a gift sender)"),
                                ("campaign", "the campaign's cards only"))]
    query.append({"name": "format", "in": "query", "required": False, "schema": {"enum": ["json", "csv"],
                                                                                 "default": "json"}})
    operation["parameters"] = query + list(extra)
    return operation


_U = ("user",)
_UO = ("user", "other")
_USER_ERRORS = ("400", "401", "404", "503")


def _paths() -> dict[str, dict[str, Any]]:
    return {
        "/admin/users": {"post": _op("create a user (unverified unless verified: true)", "User", status="201",
                                     body="NewUser", errors=("400", "401", "409", "503"))},
        "/admin/users/{user}": {
            "get": _op("a user's flags and balances", "User", params=_U, errors=_USER_ERRORS),
            "patch": _op("set flags; banning closes the user's connections (3505)", "User", body="Flags",
                         params=_U, errors=_USER_ERRORS),
        },
        "/admin/users/{user}/guardian": {
            "get": _op("the ward's guardian and the audit log of its links", "Guardian", params=_U,
                       errors=_USER_ERRORS),
            "put": _op("link a guardian to the ward (null unlinks), audited", "User", body="GuardianLink",
                       params=_U, errors=_USER_ERRORS),
        },
        "/admin/users/{user}/mint": {"post": _op("mint whole cards", "Balances", body="Mint", params=_U,
                                                 errors=_USER_ERRORS)},
        "/admin/users/{user}/follows/{other}": {
            "put": _op("user follows other (since_ms, default now)", "Ok", params=_UO, errors=_USER_ERRORS),
            "delete": _op("user stops following other", "Ok", params=_UO, errors=_USER_ERRORS),
        },
        "/admin/users/{user}/blocks/{other}": {
            "put": _op("user blocks other", "Ok", params=_UO, errors=_USER_ERRORS),
            "delete": _op("user lifts the block on other", "Ok", params=_UO, errors=_USER_ERRORS),
        },
        "/admin/users/{user}/points": {"get": _op("points, joint campaign, inventory", "Points", params=_U)},
        "/admin/users/{user}/mentor": {"post": _op("bind the user (a newcomer) to a mentor, once", "Binding",
                                                   body="Mentor", params=_U, errors=_USER_ERRORS)},
        "/admin/users/{user}/pending": {"get": _op("offers waiting for the user's answer", "Pending", params=_U)},
        "/admin/users/{user}/badges": {"get": _op("the user's eco badges: each of the region's with the user's "
                                                  "progress, and those earned", "Badges", params=_U,
                                                  errors=_USER_ERRORS)},
        "/admin/users/{user}/export": {"get": _op("GDPR Art. 15: everything held about the user", "Export",
                                                  params=_U, errors=_USER_ERRORS)},
        "/admin/users/{user}/erase": {"post": _op(
            "GDPR Art. 17: settle the user's pending gifts, then erase or pseudonymise the user's data "
            "(repeating it is harmless)", "Erased", params=_U, errors=(*_USER_ERRORS, "409"))},
        "/admin/users/{user}/disconnect": {"post": _op(
            "close the user's connections on every node (close code 3506, SESSION_ENDED); the user's tokens "
            "stay valid", "Disconnected", params=_U)},
        "/admin/gifts": {"post": _op(
            "send a gift for its sender: the client's send (rules, hold, offer to the online recipient); "
            "idempotent by gift_id", "Gift", body="SendGift", errors=("400", "401", "404", "409", "422", "429",
                                                                         "503"))},
        "/admin/gifts/{gift}": {"get": {
            **_op("a gift, or a refused send while it is remembered (?user= finds it faster)", "Gift",
                  params=("gift",), errors=_USER_ERRORS),
            "responses": {"200": {"description": "the gift", "content": {"application/json": {
                "schema": {"oneOf": [_ref("Gift"), _ref("RefusedGift")]}}}},
                **{code: _error(code) for code in _USER_ERRORS}},
        }},
        "/admin/bulk/users": {"post": _op(
            "create users, or set the flags of existing ones (created_at_ms and app apply at creation); "
            "at most 500; each item on its own", "BulkResult", body="BulkUsers")},
        "/admin/bulk/follows": {"post": _op(
            "create or refresh follows (mutual: both ways); at most 500; each item on its own", "BulkResult",
            body="BulkFollows")},
        "/admin/invariant": {"get": _op("the conservation check", "Invariant", errors=("401", "503"))},
        "/admin/appeals": {"get": _op("open risk-engine appeals", "Appeals", errors=("401", "503"))},
        "/admin/appeals/{user}": {"post": _op("approve (lifts the action) or reject the user's open appeal",
                                              "AppealDecided", body="AppealDecision", params=_U,
                                              errors=_USER_ERRORS)},
        "/admin/users/{user}/risk": {
            "get": _op("the account's risk state and appeal", "Risk", params=_U),
            "put": _op("put the account in a risk tier, or lift it (none)", "RiskChanged", body="RiskAction",
                       params=_U),
        },
        "/admin/risk": {
            "get": _op("the scorer's shadow mode and each rule's mode", "RiskSwitches", errors=("401", "503")),
            "patch": _op("change shadow mode or rule modes", "RiskSwitches", body="RiskSwitchChange"),
        },
        "/admin/scenes": {
            "get": _op("scene settings, festival windows, stored values ignored", "Scenes", errors=("401", "503")),
            "patch": _op("change scene settings {field: value}", "Scenes", errors=("400", "401", "503")),
        },
        "/admin/regions": {"get": _op("every configured region's rules, stored ones ignored", "Regions",
                                      errors=("401", "503"))},
        "/admin/regions/{region}": {
            "put": {**_op("create or replace a region's rules (unknown fields refused)", "Region",
                          body="RegionRules", errors=("400", "401", "503")),
                    "parameters": [{"name": "region", "in": "path", "required": True, "schema": _REGION}]},
            "delete": {**_op("drop a region's rules (its users keep the code)", "Ok", errors=("401", "404", "503")),
                       "parameters": [{"name": "region", "in": "path", "required": True, "schema": _REGION}]},
        },
        "/admin/festivals/{festival}": {
            "put": _op("create or replace a festival window [start, end)", "Festival", body="NewFestival",
                       params=("festival",)),
            "delete": _op("remove a festival window", "Ok", params=("festival",), errors=("401", "404", "503")),
        },
        "/admin/webhooks/dead": {"get": {
            **_op("webhook deliveries that failed every attempt, newest first", "DeadLetters",
                  errors=("400", "401", "503")),
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}]}},
        "/admin/webhooks/dead/retry": {"post": _op(
            "send every dead letter back to notecard webhooks, which delivers them again (same idempotency keys)",
            "Retried", errors=("401", "503"))},
        "/admin/dashboards/profile": {"get": _dashboard(
            "recipients of the scope's cards by region, age bucket, app and fan level", "ProfileDashboard")},
        "/admin/dashboards/conversion": {"get": _dashboard(
            "per campaign: issued -> accepted -> purchase, cost per conversion, ROI", "ConversionDashboard",
            {"name": "window_days", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 365, "default": 7}})},
        "/admin/dashboards/retention": {"get": _dashboard(
            "cohorts of recipients by the day of their first card x the days after it they were active",
            "RetentionDashboard", {"name": "days", "in": "query", "required": False,
                                   "schema": {"type": "integer", "minimum": 1, "maximum": 90, "default": 14}})},
        **_business_paths(),
        "/admin/stats": {"get": _op("every live node's counters, pending gifts, held units", "Stats",
                                    errors=("401", "503"))},
        OPENAPI_PATH: {"get": {"summary": "this document", "security": [], "responses": {
            "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/healthz": {"get": _op("the process is alive", "Health", errors=(), open_=True)},
        "/payments/{provider}/notify": {"post": {
            **_op("a payment provider's signed notification: a purchase mints the cards, a refund claws back "
                  "what is unspent (docs/regions.md); headers Notecard-Timestamp and Notecard-Signature",
                  "Payment", body="PaymentNotification", errors=("400", "401", "403", "404", "409", "503"),
                  open_=True),
            "parameters": [{"name": "provider", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"}}]}},
        "/odds": {"get": _op("the published odds of the lucky card (docs/regions.md)", "Odds", errors=("503",),
                             open_=True)},
        "/admin/skins": {"get": _op("the card art catalogue, stored skins ignored", "Skins", errors=("401", "503"))},
        "/admin/skins/{skin}": {
            "put": _op("create or replace a skin (a region gets at most one of its own per kind)", "SkinStored",
                       body="Skin", params=("skin",), errors=("400", "401", "503")),
            "delete": _op("drop a skin", "Ok", params=("skin",), errors=("401", "404", "503"))},
        "/admin/odds": {"get": _op("the published odds, as GET /odds", "Odds", errors=("401", "503"))},
        "/admin/odds/{table}": {"put": _op("publish a new version of a table; the one in force is retired and its "
                                           "key revealed", "OddsTable", body="OddsEntries", params=("table",),
                                           errors=("400", "401", "503"))},
        "/readyz": {"get": {**_op("ready to serve (Redis, pub/sub, durability preset)", "Ready", errors=(),
                                  open_=True),
                            "responses": {"200": {"description": "ready", "content": {
                                "application/json": {"schema": _ref("Ready")}}},
                                          "503": {"description": "not ready; reasons say why", "content": {
                                              "application/json": {"schema": _ref("Ready")}}}}}},
        "/metrics": {"get": _op("Prometheus metrics", "Metrics", errors=(), open_=True, media="text/plain")},
        "/app": {"get": _redirect("/app/")},
        "/app/": {"get": _page("the web app (docs/clients.md)")},
        "/app/config.json": {"get": _op("the WebSocket URLs the app connects to", "AppConfig", errors=(),
                                        open_=True)},
        "/app/token": {"post": {**_op("a development token (development mode only; else 403 DEV_ONLY)", "DevToken",
                                      errors=("400",), open_=True),
                                "requestBody": {"required": True, "content": {"application/json": {
                                    "schema": _object({"user": _ID}, ("user",))}}}}},
        "/console": {"get": _redirect("/console/")},
        "/console/": {"get": _page("the operator console (asks for the admin token)")},
    }


def _business_paths() -> dict[str, dict[str, Any]]:
    biz = ("400", "401", "403", "404", "409", "503")
    group = ("user", "group")
    member = ("user", "group", "member")
    campaign = ("campaign",)
    paths = {
        "/admin/business/{user}": {
            "get": _op("the business profile: verified business, followers, shop window, fan groups", "Business",
                       params=_U),
            "patch": _op("set the verified business status, follower count or shop window (audited)", "Business",
                         body="BusinessChange", params=_U, errors=_USER_ERRORS),
        },
        "/admin/business/{user}/fans/{group}": {"get": _op("a fan group's members and levels (?min_level=N)",
                                                           "FanGroup", params=group)},
        "/admin/business/{user}/fans/{group}/{member}": {
            "put": _op("add a member at a level, or change its level (audited)", "FanMember", body="FanLevel",
                       params=member, errors=_USER_ERRORS),
            "delete": _op("remove a member (audited)", "FanMember", body="Operator", params=member),
        },
        "/admin/kinds/{kind}": {
            "get": _op("a custom card kind and its budget", "Kind", params=("kind",), errors=_USER_ERRORS),
            "put": _op("define a brand's custom card kind and mint its budget into the brand's account", "Kind",
                       status="201", body="NewKind", params=("kind",), errors=biz),
        },
        "/admin/kinds/{kind}/fund": {"post": _op("mint more of the kind's budget", "KindFunded", body="KindFunding",
                                                 params=("kind",), errors=biz)},
        "/admin/campaigns": {
            "get": _op("every campaign's progress", "Campaigns", errors=("401", "503")),
            "post": _op("start a campaign to a list, the brand's followers or a fan group (one of them)",
                        "Campaign", status="201", body="NewCampaign", errors=biz),
        },
        "/admin/campaigns/{campaign}": {"get": _op("a campaign's progress", "Campaign", params=campaign,
                                                   errors=_USER_ERRORS)},
        "/admin/campaigns/{campaign}/report": {"get": _op(
            "recipients by outcome, units accepted / returned / held, the budget's balance", "CampaignReport",
            params=campaign, errors=_USER_ERRORS)},
    }
    paths["/admin/campaigns/{campaign}/recipients"] = {"post": _op(
        "add a part of a loading campaign's list (one body holds about 8,000)", "Campaign", body="Recipients",
        params=campaign, errors=biz)}
    paths["/admin/campaigns/{campaign}/start"] = {"post": _op(
        "start a loading campaign, if the brand has the cards its whole list takes", "Campaign", body="Operator",
        params=campaign, errors=biz)}
    shop = ("shop",)
    paths["/admin/shops/{shop}/rule"] = {
        "get": _op("the shop's purchase rule", "ShopRule", params=shop, errors=("401", "404", "503")),
        "put": _op("set the shop's \"spend X, get a card\" rule (shop window required); the first one answers the "
                   "order-signing secret, once", "ShopRule", body="NewShopRule", params=shop, errors=biz),
    }
    paths["/admin/shops/{shop}/secret"] = {"post": _op("a new order-signing secret (the old one stops working)",
                                                       "ShopSecret", body="Operator", params=shop, errors=biz)}
    order = _op("a paid or refunded order, signed (X-Notecard-Timestamp, X-Notecard-Signature: sha256=HMAC of "
                "'<timestamp>.<body>'); idempotent by order_id", "OrderOutcome", body="Order", params=shop,
                errors=("400", "401", "403", "404", "409", "422", "503"))
    order["parameters"] += [{"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
                            for h in ("X-Notecard-Timestamp", "X-Notecard-Signature")]
    paths["/admin/shops/{shop}/orders"] = {"post": order}
    for action in ("pause", "resume", "cancel"):
        paths[f"/admin/campaigns/{{campaign}}/{action}"] = {"post": _op(
            f"{action} the campaign (audited)", "Campaign", body="Operator", params=campaign, errors=biz)}
    return paths


def _redirect(to: str) -> dict[str, Any]:
    return {"summary": f"redirects to {to}", "security": [],
            "responses": {"301": {"description": f"to {to}", "headers": {"Location": {"schema": {"const": to}}}}}}


def _page(summary: str) -> dict[str, Any]:
    return {"summary": summary, "security": [],
            "responses": {"200": {"description": "an HTML page", "content": {"text/html": {"schema": {
                "type": "string"}}}}}}


#: Routes the server registers that are files, not API: the pages' scripts and styles.
STATIC_PREFIXES = ("/app/", "/console/", "/lib/")


@functools.cache
def openapi_document() -> dict[str, Any]:
    from gateway.metrics import package_version

    return {
        "openapi": "3.1.0",
        "info": {"title": "notecard gateway admin API", "version": package_version(),
                 "description": "Operators' and the platform backend's API of a gateway node: accounts, gifts, "
                                "scenes, health. JSON in and out; errors are {error: CODE, message}. "
                                "A refused call changes nothing. README 'Admin HTTP API' and "
                                "docs/server-api.md."},
        "servers": [{"url": "/"}],
        "security": [{"admin": []}],
        "paths": _paths(),
        "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer",
                                                     "description": "NOTECARD_ADMIN_TOKEN"}},
                       "schemas": _SCHEMAS | {"Metrics": {"type": "string"}}},
    }
