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

#: Bounds the settings document every node reads once a second at most.
MAX_REGIONS = 64


def is_valid_region(value: object) -> bool:
    return isinstance(value, str) and _REGION.fullmatch(value) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class RegionRules:
    """One region's rules; every field's default means the rule is off."""

    code: str
    #: For people (console, exports); no rule reads it.
    name: str = ""
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

    def to_plain(self) -> dict[str, Any]:
        """The document as stored and served (without the code, which is its key)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in _asdict(self).items() if k != "code"}

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
