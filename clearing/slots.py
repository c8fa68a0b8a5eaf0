"""Redis Cluster hash slots, and one short hash tag per slot.

Every key of a user carries the user's own hash tag (``nc:{alice}:bal``), so a user's state
lives in one slot and users spread over every shard. What many users share (totals per
card kind, the expiry and recovery queues, a node's list of connected users, the node's
pub/sub channel) is kept per *slot*, under a tag whose CRC16 lands in that slot: a script
running on a user's slot can then reach its slot's shared keys, and nothing else. Per slot
rather than per shard because a slot moves between shards whole, so the layout survives
resharding and failover unchanged; on a single Redis the same layout is used.

A slot tag is ``#`` plus one to three base-62 characters. ``#`` never occurs in an id, so a
slot tag never names a user. The table is found on first use (about 0.2 s of CRC16) and
kept for the process.
"""

from __future__ import annotations

import functools
import itertools
from binascii import crc_hqx

#: Redis Cluster's fixed number of hash slots.
SLOTS = 16384

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def slot_of(tag: str) -> int:
    """The slot of a key whose hash tag is ``tag`` (CRC16/XMODEM mod 16384, as Redis does)."""
    return crc_hqx(tag.encode(), 0) % SLOTS


@functools.cache
def _tags() -> tuple[str, ...]:
    found: list[str | None] = [None] * SLOTS
    missing = SLOTS
    for length in (1, 2, 3, 4):
        for chars in itertools.product(_ALPHABET, repeat=length):
            tag = "#" + "".join(chars)
            slot = slot_of(tag)
            if found[slot] is None:
                found[slot] = tag
                missing -= 1
        if missing == 0:
            break
    if missing:
        raise AssertionError("some slots have no tag")  # cannot happen: 62**3 tags cover them
    return tuple(t for t in found if t is not None)


def slot_tag(slot: int) -> str:
    """The shortest tag (first in base-62 order) whose slot is ``slot``."""
    return _tags()[slot]


def tag_of(user_id: str) -> str:
    """The slot tag of the slot a user's keys live in."""
    return _tags()[slot_of(user_id)]


def all_tags() -> tuple[str, ...]:
    """Every slot's tag, indexed by slot."""
    return _tags()
