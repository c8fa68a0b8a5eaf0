"""Live rooms (gift-rules.md section 3, "live-stream boost"): viewers, wishes, quotes and the
contribution leaderboard, all in Redis so that every node sees the same room.

A room is named by its streamer's user id, and all of it lives in the streamer's slot.
Viewers are counted like presence: per node and per user (``room_join.lua``), so a user on
two devices, on one node or on two, counts once, and a dead node's viewers are dropped when
it is reaped (``drop_node.lua``); until then, at most ``node_ttl_ms`` plus one reap period,
they still count.

A gift to the streamer in the room is priced by a quote (``quote.lua``, on the room's slot: a
monotone step function of the viewer count, see :class:`~clearing.scene_config.LiveTier`),
kept with the *sender* (``KeySchema.quote(sender, id)``), where the send's reserve step checks
it and uses it up; it is honoured for ``quote_ttl_ms``. An accepted quoted gift adds its cost
(in minor units) to the sender's contribution points on the room's leaderboard and, when
its kind is the wish's, its quantity to the wish's progress (``apply_close`` in gift_answer.lua).
Ranks are competition ranks: tied users share a rank and are listed by user id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from typing import Any

from clearing.component import RedisComponent
from clearing.errors import Refusal, Refused
from clearing.guard import guarded, guarded_pipeline
from clearing.keys import is_valid_id
from clearing.lua import ScriptName

#: Largest leaderboard page a caller may ask for.
MAX_TOP = 100
#: A used or lapsed quote still answers QUOTE_EXPIRED for this long, then Redis drops it.
QUOTE_LINGER_MS = 60_000
#: Rooms one room_states.lua call reads, so that one script holds Redis about a millisecond
#: at most (9-12 us per unchanged room, 13-24 per changed one, 800 rooms on a busy machine:
#: docs/benchmarks.md, section 8); the calls of one tick share a pipeline per node.
STATES_PER_CALL = 64


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
    async def join(self, room: str, user_id: str, node_id: str, *, require_open: bool = True) -> int:
        """Count one more connection of the user in the room; returns the viewer count.

        Only an open room (its streamer opened a wish) can be joined: Refused(NO_WISH)
        otherwise. ``require_open=False`` is for a node counting again the viewers it
        already holds (after it was reaped while alive)."""
        return await self._membership("room_join", room, user_id, node_id, require_open)

    async def leave(self, room: str, user_id: str, node_id: str) -> int:
        return await self._membership("room_leave", room, user_id, node_id)

    async def _membership(self, script: ScriptName, room: str, user_id: str, node_id: str,
                          require_open: bool = False) -> int:
        _check_room(room)
        args = {"room": room, "user": user_id, "node": node_id, "tag": self.tag(room), "open": require_open}
        reply = await self._lua.run(script, self.slot(room), self._keys.room_conns(room), self._clock(), args)
        return int(reply["viewers"])

    async def open_wish(self, streamer: str, kind: str, target: int) -> int:
        """The streamer's wish in their own room; returns the room's new version."""
        if kind not in self._rules.card_kinds:
            raise Refused(Refusal.UNKNOWN_KIND)
        if not 1 <= target <= 1_000_000:
            raise Refused(Refusal.BAD_QUANTITY)
        args = {"streamer": streamer, "kind": kind, "target": target}
        reply = await self._lua.run("open_wish", self.slot(streamer), self._keys.room(streamer), self._clock(), args)
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
        now = self._clock()
        snapshot = await self._settings.get()
        festival = snapshot.festival_at(now)
        tiers = [[t.min_viewers, t.permille] for t in snapshot.scenes.live_tiers]
        args = {"room": room, "sender": sender, "base": base, "tiers": tiers,
                "festival_permille": festival.permille if festival else 1000}
        r = await self._lua.run("quote", self.slot(room), self._keys.room(room), now, args)
        cost, ttl = int(r["cost"]), snapshot.scenes.quote_ttl_ms
        expires = now + ttl
        # Kept with the sender, whose reserve step uses it up; the key lingers a minute past
        # the quote's life only to answer QUOTE_EXPIRED rather than "unknown".
        key = self._keys.quote(sender, quote_id)
        async with guarded_pipeline(self._redis, transaction=True) as pipe:
            pipe.hset(key, mapping={"recipient": room, "kind": kind, "qty": qty, "cost": cost, "amount": base,
                                    "expires_at_ms": expires})
            pipe.pexpire(key, ttl + QUOTE_LINGER_MS)
            await guarded(pipe.execute())
        return Quote(quote_id, room, cost, base, int(r["viewers"]), int(r["permille"]), expires)

    async def state(self, room: str, user_id: str = "", top: int = 10) -> RoomState:
        """Viewers, the wish and the top ``top`` contributors (ties at the cut included)."""
        _check_room(room)
        if not 1 <= top <= MAX_TOP:
            raise Refused(Refusal.BAD_REQUEST, f"top must be from 1 to {MAX_TOP}")
        args = {"room": room, "user": user_id or None, "top": top}
        r = await self._lua.run("room_state", self.slot(room), self._keys.room(room), self._clock(), args)
        return RoomState(
            room=room, viewers=int(r["viewers"]), version=int(r["version"]),
            wish_kind=_opt_str(r.get("wish_kind")), wish_target=_opt_int(r.get("wish_target")),
            wish_progress=_opt_int(r.get("wish_progress")), top=ranked(r.get("top", []), top),
            points=_opt_int(r.get("score")), rank=_opt_int(r.get("rank")),
        )


    async def changed_states(self, marks: dict[str, tuple[int, int]], top: int = 10) -> list[RoomState]:
        """The rooms of ``marks`` whose (version, viewers) differ from their mark, one call per
        Redis node (``room_states.lua``, at most ``STATES_PER_CALL`` rooms each, all of one
        turn in one pipeline); a room with no mark yet may be given (-1, -1)."""
        if not 1 <= top <= MAX_TOP:
            raise Refused(Refusal.BAD_REQUEST, f"top must be from 1 to {MAX_TOP}")
        by_slot: dict[int, list[str]] = {}
        for room in marks:
            by_slot.setdefault(self.slot(room), []).append(room)
        calls = []
        for _node, slots in self._topology.by_node(by_slot):
            rooms = [room for s in slots for room in by_slot[s]]
            for start in range(0, len(rooms), STATES_PER_CALL):
                chunk = rooms[start : start + STATES_PER_CALL]
                args = {"top": top, "rooms": [[room, *marks[room]] for room in chunk]}
                calls.append(self._lua.run("room_states", self.slot(chunk[0]), self._keys.room(chunk[0]),
                                           self._clock(), args))
        out: list[RoomState] = []
        for reply in await asyncio.gather(*calls):
            out += [_state(r, top) for r in reply.get("rooms", ())]
        return out


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
