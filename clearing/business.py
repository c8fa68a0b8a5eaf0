"""Business accounts (gift-rules.md section 6): brands, shops and fan communities.

A business profile sits next to its user's account (``{U}:biz``): verified business status,
the follower count, the shop window flag. Each privilege is checked where it is used, with
its own code (:class:`BusinessRefusal`): a custom card kind and a campaign to a list or to
followers need a verified business with at least the brand-marketing follower threshold; a
campaign to a fan group needs a verified business and a group with members; a purchase rule
needs the shop window enabled.

The follower count is a maintained counter, set by the platform's social service through
the admin API: the follows are stored with each follower (``{F}:follows``), so counting a
brand's followers would read every user's follows, which no check on a request path may do.
Every change is written to the audit stream with its operator and time.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from clearing.clock import Clock, wall_clock_ms
from clearing.codec import text_hash
from clearing.errors import ClearingError, Refusal, Refused
from clearing.guard import guarded
from clearing.keys import KeySchema, is_valid_id
from clearing.topology import AnyRedis

#: Brand marketing's eligibility (gift-rules.md section 6), the default of
#: NOTECARD_BRAND_MIN_FOLLOWERS.
DEFAULT_BRAND_MIN_FOLLOWERS = 500_000
#: Fan levels run from 1; a level above this is a typo, not a tier.
MAX_FAN_LEVEL = 100
#: The audit stream keeps about this many changes.
AUDIT_MAXLEN = 100_000


class BusinessRefusal(enum.StrEnum):
    NOT_BUSINESS = "NOT_BUSINESS"
    BELOW_FOLLOWER_THRESHOLD = "BELOW_FOLLOWER_THRESHOLD"
    SHOP_WINDOW_DISABLED = "SHOP_WINDOW_DISABLED"
    NO_FAN_GROUP = "NO_FAN_GROUP"
    KIND_EXISTS = "KIND_EXISTS"
    NOT_KIND_OWNER = "NOT_KIND_OWNER"
    CAMPAIGN_EXISTS = "CAMPAIGN_EXISTS"
    UNKNOWN_CAMPAIGN = "UNKNOWN_CAMPAIGN"
    CAMPAIGN_STATE = "CAMPAIGN_STATE"
    NO_RECIPIENTS = "NO_RECIPIENTS"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    NO_SHOP_RULE = "NO_SHOP_RULE"


BUSINESS_TEXT: dict[BusinessRefusal, str] = {
    BusinessRefusal.NOT_BUSINESS: "the account is not a verified business",
    BusinessRefusal.BELOW_FOLLOWER_THRESHOLD: "brand marketing needs more followers",
    BusinessRefusal.SHOP_WINDOW_DISABLED: "the account's shop window is not enabled",
    BusinessRefusal.NO_FAN_GROUP: "the fan group has no members at that level",
    BusinessRefusal.KIND_EXISTS: "a card kind of that name already exists",
    BusinessRefusal.NOT_KIND_OWNER: "the card kind belongs to another brand",
    BusinessRefusal.CAMPAIGN_EXISTS: "a campaign with that id already exists",
    BusinessRefusal.UNKNOWN_CAMPAIGN: "no such campaign",
    BusinessRefusal.CAMPAIGN_STATE: "the campaign cannot do that in its present state",
    BusinessRefusal.NO_RECIPIENTS: "the campaign has no recipients",
    BusinessRefusal.BUDGET_EXCEEDED: "the recipients' cards exceed the brand's available cards of the kind",
    BusinessRefusal.NO_SHOP_RULE: "the shop has no purchase rule",
}


class BusinessRefused(ClearingError):
    """A business privilege or campaign rule refused the call; nothing was written."""

    def __init__(self, code: BusinessRefusal, message: str = "") -> None:
        super().__init__(message or BUSINESS_TEXT[code])
        self.code = code


@dataclasses.dataclass(frozen=True, slots=True)
class BusinessProfile:
    user: str
    business: bool
    followers: int
    shop: bool
    updated_at_ms: int

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _whole(text: str | None) -> int:
    """A stored count that does not read counts as 0: it grants no privilege."""
    return int(text) if text is not None and text.isdigit() else 0


class BusinessAccounts:
    def __init__(self, redis: AnyRedis, keys: KeySchema, clock: Clock = wall_clock_ms) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock

    async def profile(self, user: str) -> BusinessProfile:
        """The user's business profile (all off for a user who has none)."""
        raw = text_hash(await guarded(self._redis.hgetall(self._keys.business(user))))
        return BusinessProfile(user=user, business=raw.get("business") == "1", followers=_whole(raw.get("followers")),
                               shop=raw.get("shop") == "1", updated_at_ms=_whole(raw.get("updated_at_ms")))

    async def update(self, user: str, *, operator: str, business: bool | None = None,
                     followers: int | None = None, shop: bool | None = None) -> BusinessProfile:
        """Change the given fields, leave the others; audited."""
        await self._exists(user)
        fields: dict[str, str] = {}
        if business is not None:
            fields["business"] = str(int(business))
        if followers is not None:
            if type(followers) is not int or followers < 0:
                raise Refused(Refusal.BAD_REQUEST, "followers is a whole number from 0")
            fields["followers"] = str(followers)
        if shop is not None:
            fields["shop"] = str(int(shop))
        if fields:
            now = self._clock()
            mapping: dict[Any, Any] = {**fields, "updated_at_ms": str(now)}
            await guarded(self._redis.hset(self._keys.business(user), mapping=mapping))
            await self.audit("business", operator, user=user, **fields)
        return await self.profile(user)

    async def set_member(self, owner: str, group: str, member: str, level: int, *, operator: str) -> None:
        """Put ``member`` in ``owner``'s fan group at ``level`` (again: the new level)."""
        _check_group(group)
        if type(level) is not int or not 1 <= level <= MAX_FAN_LEVEL:
            raise Refused(Refusal.BAD_REQUEST, f"a fan level is a whole number from 1 to {MAX_FAN_LEVEL}")
        await self._exists(owner)
        await self._exists(member)
        await guarded(self._redis.hset(self._keys.fan_group(owner, group), member, level))
        await guarded(self._redis.sadd(self._keys.fan_groups(owner), group))
        await self.audit("fan_member", operator, user=owner, group=group, member=member, level=str(level))

    async def remove_member(self, owner: str, group: str, member: str, *, operator: str) -> bool:
        _check_group(group)
        removed = bool(await guarded(self._redis.hdel(self._keys.fan_group(owner, group), member)))
        if removed:
            await self.audit("fan_member_removed", operator, user=owner, group=group, member=member)
        return removed

    async def members(self, owner: str, group: str, min_level: int = 1) -> dict[str, int]:
        """Members at ``min_level`` or above, with their levels (a level that does not read
        is no level)."""
        _check_group(group)
        raw = text_hash(await guarded(self._redis.hgetall(self._keys.fan_group(owner, group))))
        return {m: int(v) for m, v in raw.items() if v.isdigit() and int(v) >= min_level}

    async def groups(self, owner: str) -> list[str]:
        raw = await guarded(self._redis.smembers(self._keys.fan_groups(owner)))
        return sorted(g.decode() if isinstance(g, bytes) else str(g) for g in raw)

    # ------------------------------------------------------------ privileges, checked where used
    async def require_business(self, user: str) -> BusinessProfile:
        profile = await self.profile(user)
        if not profile.business:
            raise BusinessRefused(BusinessRefusal.NOT_BUSINESS)
        return profile

    async def require_brand(self, user: str, min_followers: int) -> BusinessProfile:
        """Brand marketing: a verified business with at least ``min_followers``."""
        profile = await self.require_business(user)
        if profile.followers < min_followers:
            raise BusinessRefused(BusinessRefusal.BELOW_FOLLOWER_THRESHOLD,
                                  f"brand marketing needs {min_followers} followers; the account has "
                                  f"{profile.followers}")
        return profile

    async def require_shop(self, user: str) -> BusinessProfile:
        profile = await self.profile(user)
        if not profile.shop:
            raise BusinessRefused(BusinessRefusal.SHOP_WINDOW_DISABLED)
        return profile

    async def audit(self, what: str, operator: str, **fields: str) -> None:
        if not is_valid_id(operator):
            raise Refused(Refusal.BAD_REQUEST, "operator is an id: 1-64 characters of A-Z a-z 0-9 _ . : -")
        entry = {"what": what, "operator": operator, "at_ms": str(self._clock()), **fields}
        await guarded(self._redis.xadd(self._keys.business_audit(), entry,  # type: ignore[arg-type]
                                       maxlen=AUDIT_MAXLEN, approximate=True))

    async def audit_log(self, count: int = 100) -> list[dict[str, str]]:
        rows: Any = await guarded(self._redis.xrevrange(self._keys.business_audit(), count=count))
        return [text_hash(fields) for _id, fields in rows]

    async def _exists(self, user: str) -> None:
        if not is_valid_id(user):
            raise Refused(Refusal.BAD_REQUEST, "ids must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if not await guarded(self._redis.exists(self._keys.user(user))):
            raise Refused(Refusal.UNKNOWN_USER)


def _check_group(group: str) -> None:
    if not is_valid_id(group):
        raise Refused(Refusal.BAD_REQUEST, "a fan group's name is 1-64 characters of A-Z a-z 0-9 _ . : -")
