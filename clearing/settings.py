"""The operators' scene settings and festival windows as every node sees them, cached.

Where they live: ``KeySchema.scene_settings()`` (a hash, one field per setting, each value
JSON), ``KeySchema.festivals()`` (a hash, festival id -> JSON) and ``KeySchema.regions()`` (a
hash, region code -> JSON, clearing/regions.py) and ``KeySchema.odds()`` (odds tables,
clearing/odds.py) and ``KeySchema.skins()`` (card art, clearing/skins.py), all in the ``{cfg}`` slot.
Scripts never read them: a script runs on a user's slot and cannot reach another (on a
cluster, that slot is often on another node), and every gift reading one key would make it
the hottest key of the deployment. Instead each process keeps a :class:`SettingsCache` and
hands scripts the values they need, computed before the call (a festival's price, newcomer
rules, app perks), as plain validated numbers.

Freshness: a cache with ``max_age_s`` 0 reads them before every use (tests and one-off
tools: two small hashes). A gateway node reads them at most every ``max_age_s`` and also
drops its cache when a write is announced on ``KeySchema.settings_channel()``, so an
operator's change reaches every node within milliseconds, and within ``max_age_s`` even if
the announcement is lost (or the hashes were edited by hand). The node that made the write
sees it at once.

Stored data is checked field by field: a field that does not decode or is out of range (a
hand edit, an older version's layout) is ignored in favour of its default, and reported in
:attr:`SettingsSnapshot.problems` (and logged when they change), so a bad value can neither
stop gifts nor reach a script.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson

from clearing.guard import guarded, guarded_pipeline
from clearing.keys import KeySchema, is_valid_id
from clearing.lua import MAX_SAFE_INT
from clearing.odds import OddsTable, decode_odds
from clearing.regions import DEFAULT_REGION, RegionRules, decode_regions, is_valid_region
from clearing.scene_config import SceneConfig, SceneConfigError
from clearing.skins import Skin, decode_skins
from clearing.topology import AnyRedis

log = logging.getLogger("notecard.clearing.settings")


@dataclasses.dataclass(frozen=True, slots=True)
class Festival:
    festival_id: str
    name: str
    start_ms: int
    end_ms: int
    #: The cost multiplier per mille (1200 = 1.2x).
    permille: int
    #: The avatar frame redeemable during the window, if any.
    frame: str | None = None

    def __post_init__(self) -> None:
        if not is_valid_id(self.festival_id):
            raise SceneConfigError("festival id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if not isinstance(self.name, str) or len(self.name) > 200:
            raise SceneConfigError("a festival's name is text of at most 200 characters")
        for name in ("start_ms", "end_ms", "permille"):
            if type(getattr(self, name)) is not int:
                raise SceneConfigError(f"{name} must be an integer")
        if not 0 <= self.start_ms < self.end_ms <= MAX_SAFE_INT:
            raise SceneConfigError("a festival must end after it starts (times in ms below 2**53)")
        if not 1000 <= self.permille <= 10_000:
            raise SceneConfigError("multiplier must be from 1.0 to 10.0")
        if self.frame is not None and not (isinstance(self.frame, str) and is_valid_id(self.frame)):
            raise SceneConfigError("frame must be 1-64 characters of A-Z a-z 0-9 _ . : -")

    def holds(self, now_ms: int) -> bool:
        return self.start_ms <= now_ms < self.end_ms

    @property
    def multiplier(self) -> float:
        return self.permille / 1000

    def stored(self) -> bytes:
        return orjson.dumps({k: v for k, v in dataclasses.asdict(self).items() if k != "festival_id"})

    @classmethod
    def from_stored(cls, festival_id: str, raw: str | bytes) -> Festival:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise SceneConfigError(f"festival {festival_id!r} is not JSON") from None
        if not isinstance(body, dict):
            raise SceneConfigError(f"festival {festival_id!r} is not an object")
        try:
            return cls(festival_id=festival_id, **body)
        except TypeError as exc:
            raise SceneConfigError(f"festival {festival_id!r}: {exc}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class SettingsSnapshot:
    scenes: SceneConfig
    #: By start; windows never overlap (clearing/scenes.py refuses it).
    festivals: tuple[Festival, ...] = ()
    #: Stored values that were ignored, for people (the admin API shows them).
    problems: tuple[str, ...] = ()
    #: Each region's rules (clearing/regions.py), by code; a region not here has none.
    regions: Mapping[str, RegionRules] = dataclasses.field(default_factory=dict)
    #: The published odds tables (clearing/odds.py), by table id.
    odds: Mapping[str, OddsTable] = dataclasses.field(default_factory=dict)
    #: The card art catalogue (clearing/skins.py), by skin id.
    skins: Mapping[str, Skin] = dataclasses.field(default_factory=dict)

    def region(self, code: str) -> RegionRules:
        """The rules of region ``code`` (all off for a region nobody configured)."""
        found = self.regions.get(code)
        return found if found is not None else RegionRules(code if is_valid_region(code) else DEFAULT_REGION)

    def festival_at(self, now_ms: int) -> Festival | None:
        """The festival whose window holds ``now_ms`` (start inclusive, end exclusive)."""
        return next((f for f in self.festivals if f.holds(now_ms)), None)


def encode_scenes(config: SceneConfig) -> dict[str, bytes]:
    """The hash fields of a configuration: one JSON value per setting."""
    return {name: orjson.dumps(value) for name, value in config.to_plain().items()}


def decode_scenes(raw: Mapping[str, str], defaults: SceneConfig) -> tuple[SceneConfig, list[str]]:
    """The stored settings over ``defaults``, read field by field as
    :meth:`SceneConfig.from_stored` reads a document (a value out of range or of another
    type keeps its default); what was not applied as stored, and why."""
    data: dict[str, Any] = {}
    problems: list[str] = []
    known = {f.name for f in dataclasses.fields(SceneConfig)}
    for name, text in sorted(raw.items()):
        try:
            # not orjson: integers beyond 64 bits must read (and be refused)
            data[name] = json.loads(text)
        except (ValueError, RecursionError):
            problems.append(f"scene setting {name}: not JSON; the default applies")
            continue
        if name not in known:
            problems.append(f"scene setting {name}: unknown; ignored")
    config = SceneConfig.from_data(data, defaults)
    for name, value in data.items():
        if name in known:
            try:
                defaults.patched({name: value})
            except SceneConfigError as exc:
                problems.append(f"scene setting {name}: {exc}; {getattr(config, name)!r} applies")
    return config, problems


def decode_festivals(raw: Mapping[str, str]) -> tuple[tuple[Festival, ...], list[str]]:
    festivals, problems = [], []
    for festival_id, text in raw.items():
        try:
            festivals.append(Festival.from_stored(festival_id, text))
        except SceneConfigError as exc:
            problems.append(f"{exc}; ignored")
    festivals.sort(key=lambda f: f.start_ms)
    kept: list[Festival] = []
    for f in festivals:
        if kept and f.start_ms < kept[-1].end_ms:
            problems.append(f"festival {f.festival_id!r} overlaps {kept[-1].festival_id!r}; ignored")
            continue
        kept.append(f)
    return tuple(kept), problems


def _text(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    """A hash as text; bytes that are no UTF-8 (a hand edit) become U+FFFD and then fail to
    decode as the setting they stand for, as any other bad value."""
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}


class SettingsCache:
    """The newest settings this process has seen (see the module docstring)."""

    def __init__(self, redis: AnyRedis, keys: KeySchema, defaults: SceneConfig | None = None,
                 max_age_s: float = 0.0) -> None:
        self._redis = redis
        self._keys = keys
        self.defaults = defaults or SceneConfig()
        self.max_age_s = max_age_s
        self._snapshot = SettingsSnapshot(scenes=self.defaults)
        self._checked_at = float("-inf")
        self._loading: asyncio.Future[SettingsSnapshot] | None = None

    def invalidate(self) -> None:
        """Read again before the next use (a write was announced)."""
        self._checked_at = float("-inf")

    @property
    def last(self) -> SettingsSnapshot:
        """What was read last, without asking Redis (may be stale)."""
        return self._snapshot

    async def get(self) -> SettingsSnapshot:
        if time.monotonic() - self._checked_at < self.max_age_s:
            return self._snapshot
        # Callers of one moment share one read.
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
            self._loading.add_done_callback(lambda _: setattr(self, "_loading", None))
        return await asyncio.shield(self._loading)

    async def _load(self) -> SettingsSnapshot:
        started = time.monotonic()
        async with guarded_pipeline(self._redis, transaction=True) as pipe:
            pipe.hgetall(self._keys.scene_settings())
            pipe.hgetall(self._keys.festivals())
            pipe.hgetall(self._keys.regions())
            pipe.hgetall(self._keys.odds())
            pipe.hgetall(self._keys.skins())
            scenes_raw, festivals_raw, regions_raw, odds_raw, skins_raw = await guarded(pipe.execute())
        scenes, problems = decode_scenes(_text(scenes_raw), self.defaults)
        festivals, more = decode_festivals(_text(festivals_raw))
        regions, about_regions = decode_regions(_text(regions_raw))
        odds, about_odds = decode_odds(_text(odds_raw))
        skins, about_skins = decode_skins(_text(skins_raw))
        found = tuple(problems + more + about_regions + about_odds + about_skins)
        if found and found != self._snapshot.problems:
            for problem in found:
                log.warning("stored settings: %s", problem)
        self._snapshot = SettingsSnapshot(scenes, festivals, found, regions, odds, skins)
        self._checked_at = started
        return self._snapshot

    async def announce(self) -> None:
        """After a write: tell every node to read the settings again, and read them here at
        once. (A hand edit of the hashes is seen within ``max_age_s``.)"""
        await guarded(self._redis.publish(self._keys.settings_channel(), b"1"))
        self.invalidate()


def plain_settings(snapshot: SettingsSnapshot) -> dict[str, Any]:
    return snapshot.scenes.to_plain()
