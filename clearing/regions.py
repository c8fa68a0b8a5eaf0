"""Regions (gift-rules.md section 5): each user has one, each region its own rules.

A user's region is a field of the account (``region`` in ``KeySchema.user``), set when the
account is created and changed only by an operator (``Accounts.set_region``, the admin API's
``PATCH /admin/users/{id}``); an account created before regions existed is in
:data:`DEFAULT_REGION`, which has no regional rule.

The rules of each region are operators' settings like the scene settings
(clearing/settings.py): one hash ``KeySchema.regions()`` in the ``{cfg}`` slot, region code ->
JSON document, read by every node's :class:`~clearing.settings.SettingsCache` and announced on
the settings channel, so a change applies on every node at once. Scripts never read the hash:
the node hands them the values a call needs. A stored document that does not decode, or holds a
value :class:`RegionRules` would refuse, is ignored (the region then has no rules) and reported
with the other settings problems, so a bad edit can neither stop gifts nor reach a script.

Each regional feature adds its fields to :class:`RegionRules` with a default that means "off",
and validates them in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import orjson

from clearing.keys import is_valid_id
from clearing.scene_config import SceneConfigError

#: A region code: lower-case letters, digits and ``_``, starting with a letter (``eu``,
#: ``us``, ``mena``, ``sea``, ``global``).
REGION_PATTERN = r"[a-z][a-z0-9_]{0,15}"
_REGION = re.compile(REGION_PATTERN)
#: A payment provider's name (clearing/purchases.py).
_PROVIDER = re.compile(r"[a-z][a-z0-9_]{0,31}")

#: Where accounts are when nothing else was said; no rules are stored for it by default.
DEFAULT_REGION = "global"

#: Who needs a guardian's confirmation (docs/regions.md, "Guardian confirmation"): nobody
#: (off), a gift from a male to a female recipient of the region, or every gift to a recipient
#: of the region.
GUARDIAN_RULES = ("off", "male_to_female", "any")
#: The guardian's window, default and bounds (ms): a day by default, a second to a week.
DEFAULT_GUARDIAN_WINDOW_MS = 86_400_000
MIN_GUARDIAN_WINDOW_MS = 1_000
MAX_GUARDIAN_WINDOW_MS = 7 * 86_400_000
#: A user's gender as the guardian rule reads it; "" is "not given" (no rule takes it as male
#: or female).
GENDERS = ("", "male", "female")

#: Bounds the settings document every node reads once a second at most.
MAX_REGIONS = 64


def is_valid_region(value: object) -> bool:
    return isinstance(value, str) and _REGION.fullmatch(value) is not None


#: The id of a consent text version (``privacy-2026-01``, ``v3``): what a user agreed to.
CONSENT_VERSION_PATTERN = r"[A-Za-z0-9_.:\-]{1,64}"
_CONSENT_VERSION = re.compile(CONSENT_VERSION_PATTERN)


def is_valid_consent_version(value: object) -> bool:
    return isinstance(value, str) and _CONSENT_VERSION.fullmatch(value) is not None


def consent_versions(regions: Mapping[str, RegionRules]) -> dict[str, str]:
    """Region code -> the consent version its users need, for the regions with the rule on:
    what a send or an accept hands its script (which reads each party's ``region``)."""
    return {code: rules.consent_version for code, rules in regions.items() if rules.consent_required}


@dataclasses.dataclass(frozen=True, slots=True)
class RegionRules:
    """One region's rules; every field's default means the rule is off."""

    code: str
    #: For people (console, exports); no rule reads it.
    name: str = ""
    #: GDPR (docs/regions.md "Data-processing consent"): a user of this region sends and
    #: receives gifts only with a consent to exactly ``consent_version`` on record.
    consent_required: bool = False
    #: The id of the consent text users must have agreed to (required when the rule is on).
    consent_version: str = ""
    #: Eco-theme badges (docs/regions.md "Eco badges", clearing/badges.py): each
    #: {id, name, metric, at_least}; none by default.
    eco_badges: tuple[dict[str, Any], ...] = ()
    #: Guardian confirmation of gifts to the region's users (GUARDIAN_RULES).
    guardian_rule: str = "off"
    #: How long the guardian has to answer before the gift expires back to its sender.
    guardian_window_ms: int = DEFAULT_GUARDIAN_WINDOW_MS
    #: Published odds (docs/regions.md): the odds table (clearing/odds.py) whose lucky card
    #: adds a random bonus to every gift a user of the region accepts; "" = no lucky card.
    lucky_odds: str = ""
    #: Purchases (docs/regions.md): the payment providers the region's users may buy cards
    #: through; empty = every configured provider.
    payment_providers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not is_valid_region(self.code):
            raise SceneConfigError(f"a region code must match {REGION_PATTERN}")
        if not isinstance(self.name, str) or len(self.name) > 100:
            raise SceneConfigError("a region's name is text of at most 100 characters")
        if not isinstance(self.consent_required, bool):
            raise SceneConfigError("consent_required is true or false")
        if not isinstance(self.consent_version, str) or (
                self.consent_version and not is_valid_consent_version(self.consent_version)):
            raise SceneConfigError(f"consent_version must match {CONSENT_VERSION_PATTERN}")
        if self.consent_required and not self.consent_version:
            raise SceneConfigError("consent_required needs the consent_version users agree to")
        if self.guardian_rule not in GUARDIAN_RULES:
            raise SceneConfigError(f"guardian_rule must be one of {', '.join(GUARDIAN_RULES)}")
        window = self.guardian_window_ms
        if type(window) is not int or not MIN_GUARDIAN_WINDOW_MS <= window <= MAX_GUARDIAN_WINDOW_MS:
            raise SceneConfigError(f"guardian_window_ms must be a whole number of ms from {MIN_GUARDIAN_WINDOW_MS} "
                                   f"to {MAX_GUARDIAN_WINDOW_MS}")
        if not isinstance(self.lucky_odds, str) or (self.lucky_odds and not is_valid_id(self.lucky_odds)):
            raise SceneConfigError("lucky_odds is an odds table id (1-64 characters of A-Z a-z 0-9 _ . : -) or \"\"")
        providers = self.payment_providers
        if isinstance(providers, list):
            providers = tuple(providers)
            object.__setattr__(self, "payment_providers", providers)  # JSON gives a list
        if (not isinstance(providers, tuple) or len(providers) > 16 or len(set(providers)) != len(providers)
                or not all(isinstance(p, str) and _PROVIDER.fullmatch(p) for p in providers)):
            raise SceneConfigError("payment_providers is a list of at most 16 distinct provider names "
                                   "([a-z][a-z0-9_]*, at most 32 characters)")
        from clearing.badges import parse_badges  # badges.py reads the regions: imported late

        object.__setattr__(self, "eco_badges", parse_badges(self.eco_badges))

    def to_plain(self) -> dict[str, Any]:
        """The document as stored and served (without the code, which is its key); a rule
        field at its default ("off") is left out, so a document names only the rules it sets;
        tuples become JSON lists."""
        defaults = RegionRules(self.code)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in _asdict(self).items()
                if k != "code" and (k == "name" or v != getattr(defaults, k))}

    def stored(self) -> bytes:
        return orjson.dumps(self.to_plain())

    @classmethod
    def from_plain(cls, code: str, body: Mapping[str, Any]) -> RegionRules:
        """Validated rules from a document; an unknown field is refused, not ignored, so a
        typo in an operator's rule never silently leaves the rule off."""
        known = {f.name for f in dataclasses.fields(cls)} - {"code"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise SceneConfigError(f"unknown region setting(s): {', '.join(unknown)}")
        try:
            return cls(code=code, **body)
        except TypeError as exc:
            raise SceneConfigError(f"region {code!r}: {exc}") from None


def guardian_args(regions: Mapping[str, RegionRules]) -> dict[str, list[Any]]:
    """What a send script needs of the guardian rule: region code -> [rule, window ms] for
    each region where it is on (empty when it is on nowhere: the send then passes nothing)."""
    return {code: [rules.guardian_rule, rules.guardian_window_ms]
            for code, rules in regions.items() if rules.guardian_rule != "off"}


def _asdict(rules: RegionRules) -> dict[str, Any]:
    return {f.name: getattr(rules, f.name) for f in dataclasses.fields(rules)}


def decode_regions(raw: Mapping[str, str]) -> tuple[dict[str, RegionRules], list[str]]:
    """The stored regions that decode and validate, and a problem for each one that does not."""
    regions: dict[str, RegionRules] = {}
    problems: list[str] = []
    for code, text in sorted(raw.items()):
        try:
            body = orjson.loads(text)
            if not isinstance(body, dict):
                raise SceneConfigError(f"region {code!r} is not an object")
            regions[code] = RegionRules.from_plain(code, body)
        except orjson.JSONDecodeError:
            problems.append(f"region {code!r}: not JSON; it has no rules")
        except SceneConfigError as exc:
            problems.append(f"region {code!r}: {exc}; it has no rules")
    return regions, problems
