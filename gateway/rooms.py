"""Live rooms on one node: which local connections watch which room, and throttled pushes.

Membership is counted in Redis (clearing/rooms.py) so every node agrees on the viewer
count; this module only remembers the local side, to push and to leave on disconnect.
Pushes are pulled, not published: every ``interval_s`` the node reads the rooms it has
viewers in and pushes a ``room`` frame to them when the room's version (gifts credited,
wish opened) or viewer count changed since its last push. That is the throttle (at most one
push per room per interval, however many gifts arrive), it needs no extra pub/sub traffic,
and a node that missed something catches up on the next tick.

What a tick costs is bounded: only an open room can be joined (its streamer opened a wish),
a connection watches at most ``max_rooms`` rooms (TOO_MANY_ROOMS beyond), and the tick
reads its rooms with one script call per Redis node and 64 rooms (``Rooms.changed_states``),
sent as one pipeline per node.
With one script per room, run one after another, a few connections joining many rooms
nobody streams cost the node and Redis a script per room on every tick.
"""

from __future__ import annotations

import logging

from clearing import ClearingError, Refusal, Refused
from clearing.rooms import Rooms, RoomState
from gateway.connection import ClientConnection
from gateway.views import room_view
from protocol import Encoding, Frame, encode

log = logging.getLogger("notecard.gateway.rooms")

#: Leaderboard lines in a pushed update; anyone may ask for more with get_room.
PUSH_TOP = 10
#: The mark of a room not pushed yet: no room has this version.
_NEVER = (-1, -1)


class RoomHub:
    def __init__(self, rooms: Rooms, node_id: str, max_rooms: int = 5) -> None:
        self.rooms = rooms
        self.node_id = node_id
        self.max_rooms = max_rooms
        self._viewers: dict[str, set[ClientConnection]] = {}
        self._joined: dict[ClientConnection, set[str]] = {}
        self._pushed: dict[str, tuple[int, int]] = {}

    async def join(self, conn: ClientConnection, room: str) -> None:
        joined = self._joined.get(conn, set())
        if room in joined:
            return  # joining twice from one connection counts once
        if len(joined) >= self.max_rooms:
            raise Refused(Refusal.TOO_MANY_ROOMS)
        await self.rooms.join(room, conn.user_id, self.node_id)
        self._viewers.setdefault(room, set()).add(conn)
        self._joined.setdefault(conn, set()).add(room)

    async def leave(self, conn: ClientConnection, room: str) -> None:
        if room not in self._joined.get(conn, set()):
            return
        self._forget(conn, room)
        await self.rooms.leave(room, conn.user_id, self.node_id)

    async def leave_all(self, conn: ClientConnection) -> None:
        for room in list(self._joined.get(conn, ())):
            try:
                await self.leave(conn, room)
            except ClearingError:
                # The count stays one too high until this node is reaped or leaves.
                log.warning("room leave failed", extra={"user": conn.user_id, "room": room})

    async def rejoin_all(self) -> None:
        """Count this node's viewers again after the node was reaped while alive (paused
        past the node TTL): the reaper dropped its room entries with its presence, while its
        connections stayed open and still watch their rooms."""
        for conn, rooms in list(self._joined.items()):
            for room in list(rooms):
                await self.rooms.join(room, conn.user_id, self.node_id, require_open=False)

    def _forget(self, conn: ClientConnection, room: str) -> None:
        self._joined[conn].discard(room)
        if not self._joined[conn]:
            del self._joined[conn]
        viewers = self._viewers.get(room)
        if viewers is not None:
            viewers.discard(conn)
            if not viewers:
                del self._viewers[room]
                self._pushed.pop(room, None)

    async def push_step(self) -> None:
        """One throttle tick: push every local room that changed since its last push."""
        marks = {room: self._pushed.get(room, _NEVER) for room in self._viewers}
        if not marks:
            return
        for state in await self.rooms.changed_states(marks, top=PUSH_TOP):
            if state.room in self._viewers:  # still watched here after the await
                self._pushed[state.room] = (state.version, state.viewers)
                self._push(state.room, state)

    def _push(self, room: str, state: RoomState) -> None:
        frames: dict[Encoding, Frame] = {}
        msg = room_view(state)
        for conn in list(self._viewers.get(room, ())):
            frame = frames.get(conn.encoding)
            if frame is None:
                frame = frames[conn.encoding] = encode(msg, conn.encoding)
            conn.push(frame)
