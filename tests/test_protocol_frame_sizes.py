"""No frame the server sends exceeds MAX_FRAME_BYTES, the limit docs/protocol.md section 1
asks clients to apply: each server message built as large as the protocol and the server
let it be (every id at its maximum length, every number at its largest, every optional
field present, the longest lists the server sends), in both encodings."""

from __future__ import annotations

import dataclasses

import pytest

from clearing.badges import MAX_BADGES
from clearing.rules import MAX_CARD_KINDS, GiftRules
from clearing.skins import MAX_REGION_SKINS
from protocol import (
    MAX_FRAME_BYTES,
    SERVER_MESSAGES,
    Balance,
    ConsentReply,
    Done,
    Encoding,
    Error,
    Event,
    Gift,
    GiftResolved,
    GiftSent,
    GuardianRequests,
    Pending,
    Pong,
    QuoteReply,
    RankEntry,
    Room,
    ServerMessage,
    Skin,
    Skins,
    Welcome,
    encode,
)
from protocol.schema import MAX_SAFE_INT
from protocol.server_session import PENDING_PER_FRAME, welcome_messages

M = MAX_SAFE_INT
ID = "i" * 64
KIND = "k" * 32
#: Rooms send at most this many leaderboard lines (get_room's `top` is 1 to 100).
MAX_TOP = 100


def open_gift(n: int = 0) -> Gift:
    """The largest gift still open (pending, or waiting for a guardian): every optional field
    but the lucky card's, which only an accepted gift carries (gift_answer.lua writes them in
    the decision to accept). Pages of such gifts fill welcome, pending and guardian_requests."""
    gift_id = f"{n}".rjust(64, "g")
    return Gift(gift_id=gift_id, sender=ID, recipient=ID, kind=KIND, qty=1_000_000, cost=M, state="pending",
                created_at_ms=M, expires_at_ms=M, amount=M, payer=ID, festival=ID, room=ID, skin=ID, campaign=ID)


def biggest_gift(n: int = 0) -> Gift:
    """The largest gift of all: accepted with its lucky card, every optional field present."""
    return dataclasses.replace(open_gift(n), state="accepted", lucky_table=ID, lucky_version=M,
                               lucky_seed="f" * 64, lucky_bonus=M, lucky_paid=M)


def size(msg: ServerMessage, encoding: Encoding) -> int:
    frame = encode(msg, encoding)
    return len(frame.encode() if isinstance(frame, str) else frame)


def welcome(pending: tuple[Gift, ...] = ()) -> Welcome:
    return Welcome(user=ID, node="n" * 128, epoch="e" * 64, offset=M, recovered=False, pending=pending,
                   heartbeat_s=3600, pending_more=True, consent_needed="v" * 64,
                   badges=tuple(f"{i}".rjust(32, "b") for i in range(MAX_BADGES)))


def largest_messages() -> list[ServerMessage]:
    gift = biggest_gift()
    page = tuple(open_gift(i) for i in range(PENDING_PER_FRAME))
    kinds = [f"{i}".rjust(32, "k") for i in range(MAX_CARD_KINDS)]
    top = tuple(RankEntry(user=f"{i}".rjust(64, "u"), points=M, rank=M) for i in range(MAX_TOP))
    return [
        welcome(page),
        Pending(gifts=page, more=True),
        # A page of a guardian's requests holds as many gifts as a pending frame (gateway/requests.py).
        GuardianRequests(rid=M, gifts=page, next="9" * 16 + "/" + "w" * 64 + "/" + "g" * 64),
        GiftSent(rid=M, gift=gift),
        GiftResolved(rid=M, gift=gift),
        Balance(rid=M, available=dict.fromkeys(kinds, M), held=dict.fromkeys(kinds, M), units_per_card=1_000_000,
                points=M, skins=dict.fromkeys(kinds, ID)),
        Pong(rid=M, server_time_ms=M),
        # The message's worst case differs per encoding: JSON escapes a control character
        # in six bytes, msgpack carries a 4-byte character as is.
        Error(code="C" * 64, message="\x01" * 512, rid=M, gift=gift),
        Error(code="C" * 64, message="\U0001f381" * 512, rid=M, gift=gift),
        Event(epoch="e" * 64, offset=M, event="outcome", gift=gift),
        Room(room=ID, viewers=M, top=top, rid=M, wish_kind=KIND, wish_target=1_000_000, wish_progress=M, points=M,
             rank=M),
        QuoteReply(rid=M, quote_id=ID, room=ID, cost=M, amount=M, viewers=M, expires_at_ms=M),
        Done(rid=M, item=ID, expires_at_ms=M, reward=M),
        ConsentReply(rid=M, changed=True, version="v" * 64, at_ms=M, channel="c" * 32),
        # A region sees at most MAX_REGION_SKINS skins (clearing/skins.py), each at its longest.
        Skins(rid=M, skins=tuple(Skin(skin_id=f"{i}".rjust(64, "s"), kind=KIND, name="\x01" * 100,
                                      image_url="https://" + "u" * 499, optional=True)
                                 for i in range(MAX_REGION_SKINS))),
        Skins(rid=M, skins=tuple(Skin(skin_id=f"{i}".rjust(64, "s"), kind=KIND, name="\U0001f381" * 100,
                                      image_url="https://" + "u" * 499, optional=True)
                                 for i in range(MAX_REGION_SKINS))),
    ]


def test_every_server_message_is_covered() -> None:
    assert {type(m) for m in largest_messages()} == set(SERVER_MESSAGES.values())


@pytest.mark.parametrize("encoding", list(Encoding), ids=lambda e: e.name)
@pytest.mark.parametrize("msg", largest_messages(), ids=lambda m: m.TYPE)
def test_the_largest_frame_fits(msg: ServerMessage, encoding: Encoding) -> None:
    assert size(msg, encoding) <= MAX_FRAME_BYTES


@pytest.mark.parametrize("count", [0, 1, PENDING_PER_FRAME, PENDING_PER_FRAME + 1, 1000])
def test_a_pending_list_of_any_length_goes_in_frames_that_fit(count: int) -> None:
    gifts = [open_gift(i) for i in range(count)]
    messages = welcome_messages(welcome(), gifts)
    first, rest = messages[0], messages[1:]
    assert isinstance(first, Welcome)
    assert all(isinstance(m, Pending) for m in rest)
    assert len(messages) == max(1, -(-count // PENDING_PER_FRAME))
    # Every offer once, in order; each frame says whether another follows.
    listed = list(first.pending) + [g for m in rest if isinstance(m, Pending) for g in m.gifts]
    assert listed == gifts
    assert first.pending_more is (True if rest else None)
    assert [m.more for m in rest if isinstance(m, Pending)] == [True] * (len(rest) - 1) + [None] * bool(rest)
    for msg in messages:
        for encoding in Encoding:
            assert size(msg, encoding) <= MAX_FRAME_BYTES


def test_card_kinds_are_bounded() -> None:
    GiftRules(card_kinds=tuple(f"k{i}" for i in range(MAX_CARD_KINDS)))
    with pytest.raises(ValueError, match="card kinds"):
        GiftRules(card_kinds=tuple(f"k{i}" for i in range(MAX_CARD_KINDS + 1)))
