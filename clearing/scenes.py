"""Festivals, newcomers and the points ledger (gift-rules.md sections 2 and 3), operator side
and user side. Gift pricing itself happens in clearing/gifts.py and gift.lua.

- :meth:`Scenes.set_config` stores validated :class:`~clearing.scene_config.SceneConfig`
  (one hash field per setting) and announces it: every node's settings cache reloads
  (clearing/settings.py).
- Festival windows (:class:`~clearing.settings.Festival`): start inclusive, end exclusive, in
  ms; windows may not overlap, so one instant has at most one multiplier.
- :meth:`Scenes.redeem_frame`: a festival's limited-time avatar frame, once per user.
- :meth:`Scenes.bind_mentor`: an apprentice (a newcomer) binds to a mentor once; the
  promotion account pays both rewards (one script when the three share a Redis node,
  otherwise a saga: mentor.lua).
- :meth:`Scenes.points`: the points ledger's total for a user, and joint-campaign eligibility.

Refusals: UNKNOWN_USER, NO_FESTIVAL, ALREADY_REDEEMED, INSUFFICIENT_BALANCE, ALREADY_BOUND,
NOT_NEWCOMER, PROMOTION_EXHAUSTED, BAD_REQUEST (a malformed id, binding oneself).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis import exceptions as rx

from clearing.codec import text_hash
from clearing.component import RedisComponent
from clearing.errors import Refusal, Refused
from clearing.guard import guarded, guarded_pipeline
from clearing.keys import is_valid_id
from clearing.odds import MAX_TABLES, OddsEntry, OddsTable
from clearing.regions import MAX_REGIONS, RegionRules
from clearing.scene_config import SceneConfig, SceneConfigError, permille_of
from clearing.settings import Festival, decode_festivals, encode_scenes
from clearing.skins import MAX_SKINS, Skin, clash, crowded, decode_skins
from clearing.slots import slot_of, tag_of

if TYPE_CHECKING:
    from clearing.gifts import Clearing

#: Every festival write reads them all; a few dozen a year is what a platform runs.
MAX_FESTIVALS = 100


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
    @property
    def defaults(self) -> SceneConfig:
        return self._settings.defaults

    # ------------------------------------------------------------ configuration
    async def config(self) -> SceneConfig:
        return (await self._settings.get()).scenes

    async def problems(self) -> tuple[str, ...]:
        """Stored values the nodes ignore (out of range, or not decodable)."""
        return (await self._settings.get()).problems

    async def set_config(self, patch: Mapping[str, Any]) -> SceneConfig:
        """Replace the given settings, keep the others; the whole result is validated first."""
        config = (await self.config()).patched(patch)
        key = self._keys.scene_settings()
        async with guarded_pipeline(self._redis, transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=encode_scenes(config))  # type: ignore[arg-type]
            await guarded(pipe.execute())
        await self._settings.announce()
        return config

    # ------------------------------------------------------------ regions
    async def regions(self) -> dict[str, RegionRules]:
        """Every configured region's rules, read afresh (clearing/regions.py)."""
        self._settings.invalidate()
        return dict((await self._settings.get()).regions)

    async def put_region(self, code: str, body: Mapping[str, Any]) -> RegionRules:
        """Create or replace a region's rules, validated whole before anything is stored."""
        rules = RegionRules.from_plain(code, body)
        key = self._keys.regions()
        stored = await guarded(self._redis.hkeys(key))
        if code.encode() not in stored and len(stored) >= MAX_REGIONS:
            raise SceneConfigError(f"at most {MAX_REGIONS} regions")
        await guarded(self._redis.hset(key, code, rules.stored()))
        await self._settings.announce()
        return rules

    async def delete_region(self, code: str) -> bool:
        """Drop a region's rules (its users keep the code and fall under no rule)."""
        found = bool(await guarded(self._redis.hdel(self._keys.regions(), code)))
        await self._settings.announce()
        return found

    # ------------------------------------------------------------ published odds
    async def odds(self) -> dict[str, OddsTable]:
        """Every published odds table, read afresh (clearing/odds.py)."""
        self._settings.invalidate()
        return dict((await self._settings.get()).odds)

    async def publish_odds(self, table_id: str, entries: Sequence[OddsEntry]) -> OddsTable:
        """Publish a table's entries as a new version with a fresh secret key; the version in
        force is retired and its key revealed. WATCH/MULTI: two operators publishing at once
        each get their own version, and no key is ever overwritten unrevealed."""
        key = self._keys.odds()
        while True:
            async with guarded_pipeline(self._redis, transaction=True) as pipe:
                try:
                    await guarded(pipe.watch(key))
                    raw = await guarded(pipe.hget(key, table_id))
                    if raw is None:
                        if await guarded(pipe.hlen(key)) >= MAX_TABLES:
                            raise SceneConfigError(f"at most {MAX_TABLES} odds tables")
                        table = OddsTable.first(table_id, entries, self._clock())
                    else:
                        table = OddsTable.from_stored(table_id, raw).republished(entries, self._clock())
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, table_id, table.stored())
                    await guarded(pipe.execute())
                    break
                except rx.WatchError:
                    continue  # another write came first: read again
        await self._settings.announce()
        return table

    # ------------------------------------------------------------ card art
    async def skins(self) -> dict[str, Skin]:
        """The card art catalogue, read afresh (clearing/skins.py)."""
        self._settings.invalidate()
        return dict((await self._settings.get()).skins)

    async def put_skin(self, skin: Skin) -> Skin:
        """Create or replace a skin; refused when a region would get two of its own for one
        kind. WATCH/MULTI: two operators writing at once cannot store a clash."""
        if skin.kind not in self._rules.card_kinds:
            raise SceneConfigError(f"kind must be one of {', '.join(self._rules.card_kinds)}")
        key = self._keys.skins()
        while True:
            async with guarded_pipeline(self._redis, transaction=True) as pipe:
                try:
                    await guarded(pipe.watch(key))
                    stored, _ = decode_skins(text_hash(await guarded(pipe.hgetall(key))))
                    if skin.skin_id not in stored and len(stored) >= MAX_SKINS:
                        raise SceneConfigError(f"at most {MAX_SKINS} skins")
                    why = clash(stored.values(), skin) or crowded(stored.values(), skin)
                    if why:
                        raise SceneConfigError(why)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, skin.skin_id, skin.stored())
                    await guarded(pipe.execute())
                    break
                except rx.WatchError:
                    continue  # another write came first: read again
        await self._settings.announce()
        return skin

    async def delete_skin(self, skin_id: str) -> bool:
        found = bool(await guarded(self._redis.hdel(self._keys.skins(), skin_id)))
        await self._settings.announce()
        return found

    async def festivals(self) -> list[Festival]:
        return list(decode_festivals(text_hash(await guarded(self._redis.hgetall(self._keys.festivals()))))[0])

    async def put_festival(self, festival_id: str, name: str, start_ms: int, end_ms: int,
                           multiplier: float | None = None, frame: str | None = None) -> Festival:
        """Create or replace a festival window; refused when it overlaps another."""
        permille = (await self.config()).festival_permille if multiplier is None else permille_of(multiplier)
        festival = Festival(festival_id, name, start_ms, end_ms, permille, frame)

        def check(festivals: list[Festival]) -> None:
            others = [f for f in festivals if f.festival_id != festival_id]
            if len(others) >= MAX_FESTIVALS:
                raise SceneConfigError(f"at most {MAX_FESTIVALS} festivals; delete past ones first")
            for other in others:
                if other.start_ms < end_ms and start_ms < other.end_ms:
                    raise SceneConfigError(f"the window overlaps festival {other.festival_id!r}")

        await self._write_festivals(check, lambda pipe: pipe.hset(self._keys.festivals(), festival_id,
                                                                   festival.stored()))
        return festival

    async def delete_festival(self, festival_id: str) -> bool:
        found = False

        def check(festivals: list[Festival]) -> None:
            nonlocal found
            found = any(f.festival_id == festival_id for f in festivals)

        await self._write_festivals(check, lambda pipe: pipe.hdel(self._keys.festivals(), festival_id))
        return found

    async def _write_festivals(self, check: Callable[[list[Festival]], None], write: Callable[[Any], object]) -> None:
        """Read the festivals, ``check`` the change (it may refuse), then apply ``write`` in
        one MULTI. WATCH makes it all or nothing: a concurrent write makes it start again
        from a fresh read, so two operators cannot store overlapping windows."""
        hash_key = self._keys.festivals()
        while True:
            async with guarded_pipeline(self._redis, transaction=True) as pipe:
                try:
                    await guarded(pipe.watch(hash_key))
                    festivals, _ = decode_festivals(text_hash(await guarded(pipe.hgetall(hash_key))))
                    check(list(festivals))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    write(pipe)
                    await guarded(pipe.execute())
                    break
                except rx.WatchError:
                    continue  # another write came first: read again
        await self._settings.announce()

    # ------------------------------------------------------------ users
    async def redeem_frame(self, user_id: str, festival_id: str) -> Redemption:
        if not is_valid_id(festival_id):
            raise Refused(Refusal.NO_FESTIVAL)
        now = self._clock()
        snapshot = await self._settings.get()
        running = snapshot.festival_at(now)
        festival = None
        if running is not None and running.festival_id == festival_id and running.frame is not None:
            festival = {"id": running.festival_id, "end_ms": running.end_ms, "frame": running.frame}
        args = {"u": user_id, "tag": tag_of(user_id), "kind": self._rules.card_kinds[0],
                "price": snapshot.scenes.frame_price_units, "festival": festival}
        reply = await self._lua.run("redeem_frame", slot_of(user_id), self._keys.inventory(user_id), now, args)
        return Redemption(str(reply["item"]), str(reply["frame"]), int(reply["expires_at_ms"]))

    async def inventory(self, user_id: str) -> dict[str, int]:
        """Items the user holds now (expired ones are left out), item -> expiry ms."""
        raw = text_hash(await guarded(self._redis.hgetall(self._keys.inventory(user_id))))
        now = self._clock()
        return {k: int(v) for k, v in raw.items() if int(v) > now}

    async def bind_mentor(self, apprentice: str, mentor: str) -> Binding:
        if apprentice == mentor or not is_valid_id(mentor):
            raise Refused(Refusal.BAD_REQUEST, "a user cannot be their own mentor")
        scenes = (await self._settings.get()).scenes
        a = mentor_args(self, scenes, apprentice, mentor)
        now = self._clock()
        slots = [slot_of(apprentice), slot_of(mentor), slot_of(scenes.promo_account)]
        done = False
        if self._topology.colocated(slots):
            try:
                await self._lua.run("mentor_bind", slots[0], self._keys.user(apprentice), now, a)
                done = True
            except rx.ResponseError as exc:
                if "non local key" not in str(exc) and "CROSSSLOT" not in str(exc):
                    raise
        if not done:
            await MentorSaga(self, a).run(now)
        return Binding(mentor, apprentice, scenes.mentor_reward_units, scenes.apprentice_reward_units)

    async def points(self, user_id: str) -> PointsView:
        async with guarded_pipeline(self._redis, transaction=True) as pipe:
            pipe.hget(self._keys.points(user_id), "total")
            pipe.hget(self._keys.user(user_id), "joint")
            points, joint = await guarded(pipe.execute())
        return PointsView(int(points or 0), joint == b"1")

    async def step(self, user: str, now: int, args: dict[str, Any]) -> dict[str, Any]:
        return await self._lua.run("mentor_step", slot_of(user), self._keys.user(user), now, args)


def mentor_args(component: RedisComponent, scenes: SceneConfig, apprentice: str, mentor: str) -> dict[str, Any]:
    promo = scenes.promo_account
    return {"a": apprentice, "m": mentor, "promo": promo, "atag": tag_of(apprentice), "mtag": tag_of(mentor),
            "ptag": tag_of(promo), "kind": component._rules.card_kinds[0], "mreward": scenes.mentor_reward_units,
            "areward": scenes.apprentice_reward_units, "nc_age": scenes.newcomer_age_ms,
            "saga_ms": 10_000, "retention": component._rules.gift_retention_ms}


class MentorSaga:
    """check@M -> bind@A -> pay@P -> credit@M -> finish@A (mentor.lua)."""

    def __init__(self, scenes: Scenes, args: dict[str, Any]) -> None:
        self.s = scenes
        self.a = args

    async def run(self, now: int) -> None:
        a, s = self.a, self.s
        check = await s.step(a["m"], now, {**a, "step": "check"})
        await s.step(a["a"], now, {**a, "step": "bind", "mcode": check.get("code")})
        await self.pay_and_credit(now)

    async def pay_and_credit(self, now: int) -> None:
        a, s = self.a, self.s
        try:
            await s.step(a["promo"], now, {**a, "step": "pay"})
        except Refused:
            await s.step(a["a"], now, {**a, "step": "undo"})
            raise
        await s.step(a["m"], now, {**a, "step": "credit"})
        await s.step(a["a"], now, {**a, "step": "finish"})


async def recover_mentor_binding(clearing: Clearing, apprentice: str, mentor: str) -> bool:
    """A binding left `paying` past its deadline: pay and credit it, or undo it."""
    scenes = Scenes(clearing.topology, clearing._rules, clearing.keys, settings=clearing.settings)
    config = (await clearing.settings.get()).scenes
    a = mentor_args(scenes, config, apprentice, mentor)
    now = clearing.now()
    state = await scenes.step(apprentice, now, {**a, "step": "state"})
    if state.get("state") != "paying" or state.get("mentor") != mentor:
        await guarded(clearing.redis.zrem(clearing.keys.due(tag_of(apprentice)), f"mentor|{apprentice}|{mentor}"))
        return False
    a.update(mreward=int(state["mreward"]), areward=int(state["areward"]))
    with contextlib.suppress(Refused):  # undone: the promotion could not pay
        await MentorSaga(scenes, a).pay_and_credit(now)
    return True
