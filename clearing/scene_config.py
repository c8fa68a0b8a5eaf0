"""Scene settings (gift-rules.md sections 2 and 3) as typed, validated values.

Operators change them at run time through the admin API; the validated document is stored
in Redis (``keys.scene_config()``, one JSON string, :meth:`SceneConfig.to_json`) and the
scripts read it on every call, so all nodes agree the moment it is written. While nothing
is stored, the scripts use the defaults below (passed to them as JSON), so the defaults
live here and only here.

Amounts are integers of the minor unit; multipliers are integers per mille (1200 = 1.2x):

- a festival gift costs ``ceil(base * festival_permille / 1000)`` units: rounded **up** to
  the next minor unit, so the sender never pays less than the configured multiplier;
- a live-room gift additionally multiplies by the room's tier (see :class:`LiveTier`),
  ``cost = ceil(base * festival_permille * tier_permille / 1_000_000)``;
- the recipient is always credited ``base`` (qty * units_per_card); the rest is consumed
  on accept, and all of it goes back to whoever paid on decline or expiry;
- points bonuses are rounded **down** (a fraction of a point is never awarded).

What is stored may not be what this module wrote (an older version's document that lacks a
newer field, a hand edit, a bug). :meth:`SceneConfig.from_stored` reads it the way the
scripts do (``scene_values``, ``app_perks`` and ``scene_tiers`` in lib.lua): field by field,
a value this module would accept is kept and any other is replaced by the default, so a gift
never fails half-way on a setting and the admin API shows what the scripts apply.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from clearing.rules import DAY_MS

#: App ids as tokens carry them (gateway/auth.py).
APP_RE = re.compile(r"[a-z0-9_]{1,32}")
#: A multiplier above 10x is a typo, not a campaign.
MAX_PERMILLE = 10_000
#: Bounds a live-room tier table; each reserve walks it.
MAX_TIERS = 16
#: Amounts and ages: far beyond any campaign, and sums of a few stay below 2**53.
MAX_SETTING = 2**40
#: Points per card: with qty and a 10x perk an award stays far below 2**53, so the totals
#: (which the scripts also clamp there) do not saturate in practice.
MAX_POINTS_PER_CARD = 1_000_000
#: The whole-number settings and their ranges; lib.lua's SCENE_LOW / SCENE_HIGH repeat the
#: ones the scripts read (tests/test_scenes_stored_data.py compares them).
INT_RANGES: dict[str, tuple[int, int]] = {
    "newcomer_age_ms": (0, MAX_SETTING),
    "newcomer_free_gifts": (0, MAX_SETTING),
    "mentor_reward_units": (0, MAX_SETTING),
    "apprentice_reward_units": (0, MAX_SETTING),
    "festival_permille": (1000, MAX_PERMILLE),
    "frame_price_units": (0, MAX_SETTING),
    "points_per_card": (0, MAX_POINTS_PER_CARD),
    "quote_ttl_ms": (1, DAY_MS),
}


class SceneConfigError(ValueError):
    """A scene setting is out of range; the message names the field."""


@dataclasses.dataclass(frozen=True, slots=True)
class AppPerk:
    """Per-app perks (gift-rules.md section 2), applied when a gift is accepted."""

    #: Extra "gift success" points for a sender on this app (150 = +15%).
    sender_bonus_permille: int = 0
    #: Points multiplier for a recipient on this app (2000 = double).
    recipient_multiplier_permille: int = 1000
    #: A gift from or to this app makes both users eligible for the joint campaign.
    joint_campaign: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class LiveTier:
    """From ``min_viewers`` viewers on, a live-room gift costs ``permille`` / 1000 of base."""

    min_viewers: int
    permille: int


DEFAULT_APPS: dict[str, AppPerk] = {
    "toutiao": AppPerk(sender_bonus_permille=150),
    "huoshan": AppPerk(recipient_multiplier_permille=2000),
    "duoshan": AppPerk(joint_campaign=True),
}
DEFAULT_TIERS = (LiveTier(0, 1000), LiveTier(10, 1100), LiveTier(100, 1250), LiveTier(1000, 1500))


@dataclasses.dataclass(frozen=True, slots=True)
class SceneConfig:
    # ---------------------------------------------------------------- newcomers
    #: An account younger than this is a newcomer (7 days; exactly 7 days old is not).
    newcomer_age_ms: int = 7 * DAY_MS
    #: A newcomer's first N gifts are paid by the promotion account.
    newcomer_free_gifts: int = 5
    #: The ordinary clearing account that pays newcomer gifts and mentor rewards; operators
    #: create it and mint into it. When it cannot cover a gift, the sender pays as usual.
    promo_account: str = "promo"
    #: Paid from the promotion account to each side when a mentor binding is made.
    mentor_reward_units: int = 20
    apprentice_reward_units: int = 10
    # ---------------------------------------------------------------- festivals
    #: Multiplier of a festival window created without one (1.2).
    festival_permille: int = 1200
    #: What redeeming a festival's avatar frame costs (consumed); 0 = free.
    frame_price_units: int = 0
    # ---------------------------------------------------------------- linked apps
    #: Points per whole card of an accepted gift, before perks, for each side.
    points_per_card: int = 10
    apps: Mapping[str, AppPerk] = dataclasses.field(default_factory=lambda: dict(DEFAULT_APPS))
    # ---------------------------------------------------------------- live rooms
    #: Ascending tiers; the first must start at 0 viewers and permilles never decrease, so
    #: the price is a monotone step function of the viewer count.
    live_tiers: tuple[LiveTier, ...] = DEFAULT_TIERS
    #: A quote is honoured this long after it was given.
    quote_ttl_ms: int = 10_000

    def __post_init__(self) -> None:
        for name, (low, high) in INT_RANGES.items():
            _check_int(name, getattr(self, name), low, high)
        if not isinstance(self.promo_account, str) or not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,64}", self.promo_account):
            raise SceneConfigError("promo_account must be a user id")
        for app, perk in self.apps.items():
            if not APP_RE.fullmatch(app):
                raise SceneConfigError(f"apps: {app!r} is not an app id (a-z 0-9 _, at most 32)")
            _check_int(f"apps.{app}.sender_bonus_permille", perk.sender_bonus_permille, 0, MAX_PERMILLE)
            _check_int(f"apps.{app}.recipient_multiplier_permille", perk.recipient_multiplier_permille,
                       1000, MAX_PERMILLE)
        tiers = self.live_tiers
        if not 1 <= len(tiers) <= MAX_TIERS or tiers[0].min_viewers != 0:
            raise SceneConfigError(f"live_tiers: 1 to {MAX_TIERS} tiers, the first from 0 viewers")
        for i, tier in enumerate(tiers):
            _check_int(f"live_tiers[{i}].permille", tier.permille, 1000, MAX_PERMILLE)
            _check_int(f"live_tiers[{i}].min_viewers", tier.min_viewers, 0, MAX_SETTING)
            if i and (tier.min_viewers <= tiers[i - 1].min_viewers or tier.permille < tiers[i - 1].permille):
                raise SceneConfigError("live_tiers: min_viewers must increase and permille must not decrease")

    def tier_permille(self, viewers: int) -> int:
        """The live-room multiplier for ``viewers`` (the scripts apply the same table)."""
        return [t.permille for t in self.live_tiers if t.min_viewers <= viewers][-1]

    def to_plain(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        plain["apps"] = {app: dataclasses.asdict(perk) for app, perk in self.apps.items()}
        return plain

    def to_json(self) -> str:
        """The document the scripts read: compact, fields in declaration order, so the
        scalars the gift scripts need come before ``apps``, the first nested value. They
        read those and the app perks straight off this text instead of decoding it (lib.lua
        ``scene_values`` and ``app_perks``) when its digest says ``Scenes.set_config`` wrote
        it; any other document is decoded whole and read field by field (``from_stored``)."""
        return orjson.dumps(self.to_plain()).decode()

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> SceneConfig:
        """Build from a JSON document (all fields optional); unknown fields are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SceneConfigError(f"unknown scene settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        try:
            if "apps" in values:
                values["apps"] = {str(app): AppPerk(**perk) for app, perk in _mapping("apps", values["apps"]).items()}
            if "live_tiers" in values:
                values["live_tiers"] = tuple(LiveTier(**_mapping("live_tiers[]", t)) for t in values["live_tiers"])
        except TypeError as exc:
            raise SceneConfigError(f"bad scene setting: {exc}") from None
        return cls(**values)

    def patched(self, patch: Mapping[str, Any]) -> SceneConfig:
        """This configuration with the fields of ``patch`` replaced, validated as a whole."""
        return SceneConfig.from_plain({**self.to_plain(), **patch})

    @classmethod
    def from_stored(cls, raw: bytes | str, defaults: SceneConfig) -> SceneConfig:
        """The settings the scripts apply for a stored document: ``defaults`` with every
        field the document holds as this class would accept it (an integral float counts:
        cjson cannot tell 10.0 from 10). Not a JSON object: ``defaults``. ``apps`` that is
        no object: the defaults' apps; inside it, ids that are not app ids are ignored and
        each perk field out of range takes AppPerk's default. ``live_tiers`` are all or
        nothing. Never raises on what it reads: a broken document must not lock operators
        out of the API that repairs it (``Scenes.set_config`` writes a whole valid one)."""
        try:
            # not orjson: integers beyond 64 bits must read (and be refused); UTF-8 only
            data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except (ValueError, RecursionError):
            return defaults
        if not isinstance(data, dict):
            return defaults
        return cls.from_data(data, defaults)

    @classmethod
    def from_data(cls, data: Mapping[str, Any], defaults: SceneConfig) -> SceneConfig:
        """:meth:`from_stored` of settings already decoded, one value per field."""
        config = defaults
        for name in (f.name for f in dataclasses.fields(cls)):
            if name not in data:
                continue
            value = _STORED_READERS.get(name, _stored_whole)(data[name])
            if value is _INVALID:
                continue
            try:
                config = dataclasses.replace(config, **{name: value})
            except SceneConfigError:
                continue
        return config


_INVALID: Any = object()


def _stored_whole(value: Any) -> Any:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return _INVALID


def _stored_text(value: Any) -> Any:
    return value if isinstance(value, str) else _INVALID


def _stored_perk(value: Any) -> AppPerk:
    if not isinstance(value, dict):
        return AppPerk()
    bonus = _stored_whole(value.get("sender_bonus_permille"))
    mult = _stored_whole(value.get("recipient_multiplier_permille"))
    return AppPerk(
        sender_bonus_permille=bonus if bonus is not _INVALID and 0 <= bonus <= MAX_PERMILLE else 0,
        recipient_multiplier_permille=mult if mult is not _INVALID and 1000 <= mult <= MAX_PERMILLE else 1000,
        joint_campaign=value.get("joint_campaign") is True,
    )


def _stored_apps(value: Any) -> Any:
    if value == []:  # cjson decodes [] and {} alike, so lib.lua reads this as no apps
        return {}
    if not isinstance(value, dict):
        return _INVALID
    return {app: _stored_perk(perk) for app, perk in value.items() if APP_RE.fullmatch(app)}


def _stored_tiers(value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        return _INVALID
    tiers = [(_stored_whole(t.get("min_viewers")), _stored_whole(t.get("permille"))) for t in value]
    if any(_INVALID in pair for pair in tiers):
        return _INVALID
    return tuple(LiveTier(min_viewers, permille) for min_viewers, permille in tiers)


_STORED_READERS = {"promo_account": _stored_text, "apps": _stored_apps, "live_tiers": _stored_tiers}


def _mapping(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SceneConfigError(f"{name} must be an object")
    return value


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise SceneConfigError(f"{name} must be an integer from {low} to {high}")


def permille_of(multiplier: float | int) -> int:
    """A multiplier as given by an operator (1.2) -> per mille (1200); at most 3 decimals."""
    if isinstance(multiplier, bool) or not isinstance(multiplier, int | float) or not math.isfinite(multiplier):
        raise SceneConfigError("multiplier must be a number")
    permille = round(multiplier * 1000)
    if abs(permille - multiplier * 1000) > 1e-6:
        raise SceneConfigError("multiplier has at most 3 decimals (per mille precision)")
    _check_int("multiplier * 1000", permille, 1000, MAX_PERMILLE)
    return permille
