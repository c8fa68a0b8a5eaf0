"""Each user's event stream: offers and outcomes, replayable after a reconnect.

The gift scripts append every event to the user's Redis stream with the explicit entry id
``<offset>-0`` (offset = ``HINCRBY evmeta seq 1``, so 1, 2, 3, ...) and SPUBLISH the very
same bytes on ``keys.node_channel(home, node)`` of every live node holding the user, where
``home`` is the tag of the lowest slot of the Redis server running the script
(clearing/topology.py): a sharded channel on the shard that owns the user, so the message
stays there, and each gateway node listens to one channel per Redis server. Pub/sub is
at most once; the stream is what a client resumes from. The stream has an ``epoch`` that
changes when its history was lost (Centrifugo's model): a client that sends an epoch we no
longer have, or an offset whose successors were trimmed, is told ``recovered=False``.

Published payload (msgpack map, string keys)::

    {"u": user, "ep": epoch, "o": offset, "e": "offer" | "outcome",
     "g": {"gift_id", "sender", "recipient", "kind", "state": str,
           "qty", "cost", "amount", "created_at_ms", "expires_at_ms": int,
           "resolved_at_ms": int (absent while pending)}}

:func:`decode_published` turns it into a :class:`~clearing.model.UserEvent`.

Control messages share the node channels and start with :data:`CONTROL_PREFIX` (an event,
a msgpack map, never does): ``ctl:ban:<user>``, published by a ban (set_flags.lua) to the
nodes holding the user, asks them to close that user's connections (:func:`banned_user`);
``ctl:kick:<user>``, published by an operator's disconnect (disconnect.lua), the same
without a ban (:func:`kicked_user`).
"""

from __future__ import annotations

import msgpack

from clearing.codec import event_from_map
from clearing.component import RedisComponent
from clearing.errors import Refusal, Refused
from clearing.model import Replay, UserEvent

#: The start of every control message on a node channel.
CONTROL_PREFIX = b"ctl:"
_BAN_PREFIX = CONTROL_PREFIX + b"ban:"
_KICK_PREFIX = CONTROL_PREFIX + b"kick:"


def banned_user(payload: bytes) -> str | None:
    """The user a ban control message names; None for any other payload."""
    if not payload.startswith(_BAN_PREFIX):
        return None
    return payload[len(_BAN_PREFIX) :].decode("ascii", "replace")


def kicked_user(payload: bytes) -> str | None:
    """The user a disconnect control message names (disconnect.lua); None for any other."""
    if not payload.startswith(_KICK_PREFIX):
        return None
    return payload[len(_KICK_PREFIX) :].decode("ascii", "replace")


def decode_published(payload: bytes) -> UserEvent:
    """A message received on a node channel, as the user's event."""
    return event_from_map(msgpack.unpackb(payload, raw=False))


class EventLog(RedisComponent):
    async def replay(self, user_id: str, epoch: str | None, after: int | None, limit: int | None = None
                     ) -> Replay:
        """What the user missed after ``(epoch, after)``, in one atomic read.

        ``epoch`` None: the client does not resume; no events, ``recovered=True``, and the
        current epoch and head (the epoch is created if the user has none yet). Another
        epoch: every retained event, ``recovered=False``. The same epoch: the events with
        offset > ``after`` (None reads as 0), ``recovered=False`` if some were trimmed.
        ``limit``: at most that many events, the oldest; ask again after the last for more.
        """
        if after is not None and after < 0:
            raise Refused(Refusal.BAD_REQUEST, "offset must not be negative")
        if limit is not None and limit < 1:
            raise Refused(Refusal.BAD_REQUEST, "limit must be positive")
        args = {"u": user_id, "epoch": epoch or None, "after": after, "limit": limit}
        reply = await self._lua.run("replay", self.slot(user_id), self._keys.event_meta(user_id), self._clock(),
                                    args, emits=True)
        return Replay(
            epoch=str(reply["ep"]),
            head=int(reply["head"]),
            events=[event_from_map(m) for m in reply["events"]],
            recovered=bool(reply["recovered"]),
        )
