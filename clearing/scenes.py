"""Festivals, newcomers and the points ledger (gift-rules.md sections 2 and 3), operator side
and user side. Gift pricing itself happens inside ``reserve.lua`` / ``resolve.lua``.

- :meth:`Scenes.set_config` stores validated :class:`~clearing.scene_config.SceneConfig`
  (all nodes read it on their next script call).
- Festival windows (:class:`Festival`): start inclusive, end exclusive, in ms; windows may
  not overlap, so one instant has at most one multiplier. Each write also rebuilds the
  schedule the gift scripts read (``KeySchema.festival_schedule``). Festivals stored by a
  version without it are still found (the scripts scan the hash while there is no
  schedule); but during a rolling upgrade, change festivals through upgraded nodes only: an
  older node writes the hash alone, which an existing schedule would not show until the
  next write from here.
- :meth:`Scenes.redeem_frame`: a festival's limited-time avatar frame, once per user.
- :meth:`Scenes.bind_mentor`: an apprentice (a newcomer) binds to a mentor once; the
  promotion account pays both rewards.
- :meth:`Scenes.points`: the points ledger's total for a user, and joint-campaign eligibility.

Stored data that this module did not write (a hand edit, an older version) never breaks a
read here nor a script: :meth:`Scenes.config` reads the settings field by field as the
scripts do (``SceneConfig.from_stored``), and a festival entry that does not read as a
:class:`Festival` is left out of :meth:`Scenes.festivals` and of the schedule (the scripts
skip it too); deleting it by id still works.

Refusals: UNKNOWN_USER, NO_FESTIVAL, ALREADY_REDEEMED, INSUFFICIENT_BALANCE, ALREADY_BOUND,
NOT_NEWCOMER, PROMOTION_EXHAUSTED, BAD_REQUEST (a malformed id, binding oneself).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from clearing.clock import Clock, wall_clock_ms
from clearing.codec import text_hash
from clearing.component import RedisComponent
from clearing.errors import Refusal, Refused
from clearing.guard import guarded
from clearing.keys import DEFAULT_KEYS, KeySchema, is_valid_id
from clearing.lua import MAX_SAFE_INT
from clearing.rules import GiftRules
from clearing.scene_config import SceneConfig, SceneConfigError, permille_of

#: Every festival write reads them all and rewrites the schedule; a few dozen a year is
#: what a platform runs.
MAX_FESTIVALS = 100


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
        for name in ("start_ms", "end_ms", "permille"):
            if type(getattr(self, name)) is not int:
                raise SceneConfigError(f"{name} must be an integer")
        if not isinstance(self.name, str):
            raise SceneConfigError("name must be a string")
        if not is_valid_id(self.festival_id):
            raise SceneConfigError("festival id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if not 0 <= self.start_ms < self.end_ms <= MAX_SAFE_INT:
            raise SceneConfigError("a festival must end after it starts, before 2**53 ms")
        if not 1000 <= self.permille <= 10_000:
            raise SceneConfigError("multiplier must be from 1.0 to 10.0")
        if self.frame is not None and not is_valid_id(self.frame):
            raise SceneConfigError("frame must be 1-64 characters of A-Z a-z 0-9 _ . : -")

    def holds(self, now_ms: int) -> bool:
        return self.start_ms <= now_ms < self.end_ms

    @property
    def multiplier(self) -> float:
        return self.permille / 1000


@dataclasses.dataclass(frozen=True, slots=True)
class Redemption:
    item: str
    frame: str
    expires_at_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Binding:
    mentor: str
    apprentice: str
    mentor_reward: int
    apprentice_reward: int


@dataclasses.dataclass(frozen=True, slots=True)
class PointsView:
    points: int
    joint_campaign: bool


class Scenes(RedisComponent):
    def __init__(
        self,
        redis: aioredis.Redis,
        rules: GiftRules,
        keys: KeySchema = DEFAULT_KEYS,
        clock: Clock = wall_clock_ms,
        defaults: SceneConfig | None = None,
    ) -> None:
        super().__init__(redis, rules, keys, clock)
        self._defaults = defaults or SceneConfig()
        self._defaults_json = self._defaults.to_json()

    @property
    def defaults_json(self) -> str:
        return self._defaults_json

    # ------------------------------------------------------------ configuration
    async def config(self) -> SceneConfig:
        """The settings the scripts apply now (see ``SceneConfig.from_stored``)."""
        raw = await guarded(self._redis.get(self._keys.scene_config()))
        return self._defaults if raw is None else SceneConfig.from_stored(raw, self._defaults)

    async def set_config(self, patch: Mapping[str, Any]) -> SceneConfig:
        """Replace the given settings, keep the others; the whole result is validated first.
        The document goes with its digest (``KeySchema.scene_config_digest``), in one MULTI."""
        config = (await self.config()).patched(patch)
        doc = config.to_json()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.scene_config(), doc)
            pipe.set(self._keys.scene_config_digest(), hashlib.sha1(doc.encode(), usedforsecurity=False).hexdigest())
            await guarded(pipe.execute())
        return config

    async def festivals(self) -> list[Festival]:
        return _festivals(await guarded(self._redis.hgetall(self._keys.festivals())))

    async def put_festival(self, festival_id: str, name: str, start_ms: int, end_ms: int,
                           multiplier: float | None = None, frame: str | None = None) -> Festival:
        """Create or replace a festival window; refused when it overlaps another."""
        permille = (await self.config()).festival_permille if multiplier is None else permille_of(multiplier)
        festival = Festival(festival_id, name, start_ms, end_ms, permille, frame)
        body = {k: v for k, v in dataclasses.asdict(festival).items() if k != "festival_id"}

        def change(festivals: list[Festival]) -> list[Festival]:
            others = [f for f in festivals if f.festival_id != festival_id]
            if len(others) >= MAX_FESTIVALS:
                raise SceneConfigError(f"at most {MAX_FESTIVALS} festivals; delete past ones first")
            for other in others:
                if other.start_ms < end_ms and start_ms < other.end_ms:
                    raise SceneConfigError(f"the window overlaps festival {other.festival_id!r}")
            return [*others, festival]

        await self._write_festivals(change, lambda pipe: pipe.hset(self._keys.festivals(), festival_id,
                                                                    orjson.dumps(body)))
        return festival

    async def delete_festival(self, festival_id: str) -> bool:
        found = False

        def change(festivals: list[Festival]) -> list[Festival]:
            nonlocal found
            found = any(f.festival_id == festival_id for f in festivals)
            return [f for f in festivals if f.festival_id != festival_id]

        await self._write_festivals(change, lambda pipe: pipe.hdel(self._keys.festivals(), festival_id))
        return found

    async def _write_festivals(self, change: Callable[[list[Festival]], list[Festival]],
                               write: Callable[[Pipeline], object]) -> None:
        """Read the festivals, ``change`` them (it may refuse), then in one MULTI apply
        ``write`` to the hash and rebuild the schedule from the result (see
        ``KeySchema.festival_schedule``). WATCH makes it all or nothing: a concurrent write
        makes it start again from a fresh read, so two operators cannot store overlapping
        windows and the schedule always matches the hash (a window missing from it would be
        ignored by reserve). Festivals stored before the schedule existed get it with the
        first write."""
        hash_key, schedule = self._keys.festivals(), self._keys.festival_schedule()

        async def attempt(pipe: Pipeline) -> None:
            festivals = change(_festivals(await pipe.hgetall(hash_key)))
            pipe.multi()  # type: ignore[no-untyped-call]
            write(pipe)
            pipe.delete(schedule)
            pipe.zadd(schedule, _schedule(festivals))

        await guarded(self._redis.transaction(attempt, hash_key, schedule))

    # ------------------------------------------------------------ users
    async def redeem_frame(self, user_id: str, festival_id: str) -> Redemption:
        if not is_valid_id(festival_id):
            raise Refused(Refusal.NO_FESTIVAL)
        args = (user_id, festival_id, self._defaults_json, self._rules.card_kinds[0])
        reply = await self._lua.run("redeem_frame", self._keys.inventory(user_id), self._clock(), args)
        return Redemption(str(reply["item"]), str(reply["frame"]), int(reply["expires_at_ms"]))

    async def inventory(self, user_id: str) -> dict[str, int]:
        """Items the user holds now (expired ones are left out), item -> expiry ms."""
        raw = text_hash(await guarded(self._redis.hgetall(self._keys.inventory(user_id))))
        now = self._clock()
        return {k: int(v) for k, v in raw.items() if int(v) > now}

    async def bind_mentor(self, apprentice: str, mentor: str) -> Binding:
        if apprentice == mentor or not is_valid_id(mentor):
            raise Refused(Refusal.BAD_REQUEST, "a user cannot be their own mentor")
        args = (apprentice, mentor, self._defaults_json, self._rules.card_kinds[0])
        reply = await self._lua.run("bind_mentor", self._keys.mentors(), self._clock(), args)
        return Binding(str(reply["mentor"]), str(reply["apprentice"]), int(reply["mentor_reward"]),
                       int(reply["apprentice_reward"]))

    async def points(self, user_id: str) -> PointsView:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(self._keys.points(), user_id)
            pipe.sismember(self._keys.joint_campaign(), user_id)
            points, joint = await guarded(pipe.execute())
        return PointsView(int(points or 0), bool(joint))


def _festivals(raw: Mapping[bytes | str, bytes | str]) -> list[Festival]:
    out = [f for k, v in text_hash(raw).items() if (f := _festival(k, v)) is not None]
    return sorted(out, key=lambda f: f.start_ms)


def _festival(festival_id: str, raw: str) -> Festival | None:
    """One stored festival, or None when it is not one (lib.lua's festival_entry agrees)."""
    try:
        data = orjson.loads(raw)
        return Festival(festival_id=festival_id, **data) if isinstance(data, dict) else None
    except (orjson.JSONDecodeError, TypeError, SceneConfigError):
        return None


def _schedule(festivals: list[Festival]) -> dict[str, float]:
    """The schedule's members: the empty one at -inf (the schedule exists, so no festival
    means none rather than "read the hash"), then each window scored by its start."""
    members: dict[str, float] = {"": float("-inf")}
    for f in festivals:
        members[f"{f.end_ms}:{f.permille}:{f.festival_id}"] = f.start_ms
    return members
