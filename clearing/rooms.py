"""Live rooms (gift-rules.md section 3, "live-stream boost"): viewers, wishes, quotes and the
contribution leaderboard, all in Redis so that every node sees the same room.

A room is named by its streamer's user id. Viewers are counted like presence: per node
and per user (``room_join.lua``), so a user on two devices, on one node or on two, counts
once, and a dead node's viewers are dropped when it is reaped (``drop_node`` in lib.lua);
until then, at most ``node_ttl_ms`` plus one reap period, they still count.

A gift to the streamer in the room is priced by a quote (``quote.lua``: a monotone step
function of the viewer count, see :class:`~clearing.scene_config.LiveTier`), honoured for
``quote_ttl_ms`` and used up by the gift it prices. An accepted quoted gift adds its cost
(in minor units) to the sender's contribution points on the room's leaderboard and, when
its kind is the wish's, its quantity to the wish's progress (``plan_room`` in lib.lua).
Ranks are competition ranks: tied users share a rank and are listed by user id.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import redis.asyncio as aioredis

from clearing.clock import Clock, wall_clock_ms
from clearing.component import RedisComponent
from clearing.errors import Refusal, Refused
from clearing.keys import DEFAULT_KEYS, KeySchema, is_valid_id
from clearing.rules import GiftRules
from clearing.scene_config import SceneConfig

#: Largest leaderboard page a caller may ask for.
MAX_TOP = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Quote:
    quote_id: str
    room: str
    cost: int
    amount: int
    viewers: int
    permille: int
    expires_at_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class RankEntry:
    user: str
    points: int
    rank: int


@dataclasses.dataclass(frozen=True, slots=True)
class RoomState:
    room: str
    viewers: int
    #: Grows with every wish opened and every gift credited to the room.
    version: int
    wish_kind: str | None
    wish_target: int | None
    wish_progress: int | None
    top: list[RankEntry]
    #: The asking user's points and rank, when they have contributed.
    points: int | None = None
    rank: int | None = None


class Rooms(RedisComponent):
    def __init__(
        self,
        redis: aioredis.Redis,
        rules: GiftRules,
        keys: KeySchema = DEFAULT_KEYS,
        clock: Clock = wall_clock_ms,
        defaults: SceneConfig | None = None,
    ) -> None:
        super().__init__(redis, rules, keys, clock)
        self._defaults_json = (defaults or SceneConfig()).to_json()

    async def join(self, room: str, user_id: str, node_id: str, *, require_open: bool = True) -> int:
        """Count one more connection of the user in the room; returns the viewer count.

        Only an open room (its streamer opened a wish) can be joined: Refused(NO_WISH)
        otherwise. ``require_open=False`` is for a node counting again the viewers it
        already holds (after it was reaped while alive)."""
        _check_room(room)
        args = (room, user_id, node_id, "1" if require_open else "0")
        reply = await self._lua.run("room_join", self._keys.room_conns(room), self._clock(), args)
        return int(reply["viewers"])

    async def leave(self, room: str, user_id: str, node_id: str) -> int:
        _check_room(room)
        reply = await self._lua.run("room_leave", self._keys.room_conns(room), self._clock(),
                                    (room, user_id, node_id))
        return int(reply["viewers"])

    async def open_wish(self, streamer: str, kind: str, target: int) -> int:
        """The streamer's wish in their own room; returns the room's new version."""
        if kind not in self._rules.card_kinds:
            raise Refused(Refusal.UNKNOWN_KIND)
        if not 1 <= target <= 1_000_000:
            raise Refused(Refusal.BAD_QUANTITY)
        reply = await self._lua.run("open_wish", self._keys.room(streamer), self._clock(), (streamer, kind, target))
        return int(reply["version"])

    async def quote(self, sender: str, room: str, kind: str, qty: int) -> Quote:
        """A price for ``qty`` cards of ``kind`` to the room's streamer, valid for a while."""
        _check_room(room)
        if sender == room:
            raise Refused(Refusal.SELF_GIFT)
        if kind not in self._rules.card_kinds:
            raise Refused(Refusal.UNKNOWN_KIND)
        if not 1 <= qty <= self._rules.max_qty_per_gift:
            raise Refused(Refusal.BAD_QUANTITY)
        quote_id = secrets.token_hex(8)
        base = qty * self._rules.units_per_card
        args = (quote_id, sender, room, kind, qty, base, self._defaults_json)
        r = await self._lua.run("quote", self._keys.quote(quote_id), self._clock(), args)
        return Quote(quote_id, room, int(r["cost"]), int(r["amount"]), int(r["viewers"]), int(r["permille"]),
                     int(r["expires_at_ms"]))

    async def state(self, room: str, user_id: str = "", top: int = 10) -> RoomState:
        """Viewers, the wish and the top ``top`` contributors (ties at the cut included)."""
        _check_room(room)
        if not 1 <= top <= MAX_TOP:
            raise Refused(Refusal.BAD_REQUEST, f"top must be from 1 to {MAX_TOP}")
        r = await self._lua.run("room_state", self._keys.room(room), self._clock(), (room, user_id, top))
        return RoomState(
            room=room, viewers=int(r["viewers"]), version=int(r["version"]),
            wish_kind=_opt_str(r.get("wish_kind")), wish_target=_opt_int(r.get("wish_target")),
            wish_progress=_opt_int(r.get("wish_progress")), top=ranked(r.get("top", []), top),
            points=_opt_int(r.get("score")), rank=_opt_int(r.get("rank")),
        )


    async def changed_states(self, node_id: str, marks: dict[str, tuple[int, int]], top: int = 10
                             ) -> list[RoomState]:
        """The rooms of ``marks`` whose (version, viewers) differ from their mark, read in one
        call (``room_states.lua``); a room with no mark yet may be given (-1, -1)."""
        if not 1 <= top <= MAX_TOP:
            raise Refused(Refusal.BAD_REQUEST, f"top must be from 1 to {MAX_TOP}")
        args: list[str | int] = [top]
        for room, (version, viewers) in marks.items():
            args += (room, version, viewers)
        reply = await self._lua.run("room_states", self._keys.node_rooms(node_id), self._clock(), args)
        return [_state(r, top) for r in reply.get("rooms", ())]


def _state(r: dict[str, Any], top: int) -> RoomState:
    return RoomState(
        room=str(r["room"]), viewers=int(r["viewers"]), version=int(r["version"]),
        wish_kind=_opt_str(r.get("wish_kind")), wish_target=_opt_int(r.get("wish_target")),
        wish_progress=_opt_int(r.get("wish_progress")), top=ranked(r.get("top", []), top),
    )


def ranked(flat: list[Any], top: int) -> list[RankEntry]:
    """``[user, score, ...]`` -> the first ``top`` by points, ties by user id, competition ranks."""
    pairs = sorted(((str(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)),
                   key=lambda p: (-p[1], p[0]))[:top]
    out: list[RankEntry] = []
    for i, (user, points) in enumerate(pairs):
        rank = out[-1].rank if out and out[-1].points == points else i + 1
        out.append(RankEntry(user, points, rank))
    return out


def _check_room(room: str) -> None:
    if not is_valid_id(room):
        raise Refused(Refusal.BAD_REQUEST, "a room is named by its streamer's user id")


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
