"""The wire protocol's codec: round trips, exact wire shapes, negotiation, the code tables.

Malformed input lives in ``test_protocol_malformed.py``, the fuzzers in
``test_protocol_fuzz.py``, the specification's consistency in ``test_protocol_docs.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import msgpack
import orjson
import pytest

from protocol import (
    CLIENT_MESSAGES,
    PROTOCOL_VERSION,
    RETRYABLE_CODES,
    SERVER_MESSAGES,
    SUBPROTOCOLS,
    AcceptGift,
    Appeal,
    Balance,
    BindMentor,
    ConsentReply,
    DeclineGift,
    Done,
    Encoding,
    Error,
    ErrorCode,
    Event,
    EventKind,
    FieldError,
    FrameError,
    GetBalance,
    GetGuardianRequests,
    GetQuote,
    GetRoom,
    GetSkins,
    Gift,
    GiftResolved,
    GiftSent,
    GiftState,
    GiveConsent,
    GuardianAnswer,
    GuardianRequests,
    Hello,
    JoinRoom,
    LeaveRoom,
    Message,
    OpenWish,
    Pending,
    Ping,
    Pong,
    ProtocolError,
    QuoteReply,
    RankEntry,
    RedeemFrame,
    Room,
    SendGift,
    Skin,
    Skins,
    Welcome,
    WithdrawConsent,
    decode_client,
    decode_server,
    encode,
    encoding_for,
    to_wire,
)
from protocol.messages import WireObject
from protocol.schema import MAX_SAFE_INT, Pattern, Range, compile_fields

T0 = 1_700_000_000_000

OFFER = Gift(
    gift_id="g-01HV3K9Z", sender="alice", recipient="bob", kind="note", qty=2, cost=20,
    state="pending", created_at_ms=T0, expires_at_ms=T0 + 60_000,
)
ACCEPTED = dataclasses.replace(OFFER, state="accepted")
EXPIRED = dataclasses.replace(OFFER, gift_id="g-old", state="expired", kind="gold_note", qty=1_000_000,
                              cost=MAX_SAFE_INT)
#: A gift with every optional field set: a live-room gift, paid by the promotion, in a festival
#: (and, for the shape, of a campaign).
SCENE = dataclasses.replace(OFFER, gift_id="g-scene", amount=18, payer="promo", festival="spring-2025",
                            room="carol", campaign="spring-launch")
#: The optional fields at their edges: nothing credited, the largest amount.
SCENE_EDGES = dataclasses.replace(SCENE, gift_id="g-scene-2", state="accepted", amount=0, payer="p" * 64,
                                  festival="f" * 64, room="r" * 64, lucky_table="t" * 64, lucky_version=MAX_SAFE_INT,
                                  lucky_seed="f" * 64, lucky_bonus=MAX_SAFE_INT, lucky_paid=0, skin="s" * 64,
                                  campaign="c" * 64)
#: A lucky card drawn and paid (docs/regions.md "Published odds").
LUCKY = dataclasses.replace(ACCEPTED, gift_id="g-lucky", lucky_table="sea-lucky", lucky_version=1,
                            lucky_seed="0123456789abcdef" * 4, lucky_bonus=50, lucky_paid=50)
SCENE_ACCEPTED = dataclasses.replace(SCENE, state="accepted")
TOP = (RankEntry(user="alice", points=180, rank=1), RankEntry(user="bob", points=180, rank=1),
       RankEntry(user="dave", points=0, rank=3))

#: Every message class with its optional fields absent and present, nested Gift included,
#: and values at the edges of their ranges.
SAMPLES: dict[str, Message] = {
    "hello/fresh": Hello(v=PROTOCOL_VERSION, token="eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"),
    "hello/resume": Hello(v=1, token="a.b", epoch="9f2c41d07a3b", offset=41),
    "hello/resume-from-zero": Hello(v=1, token="a.b", epoch="e", offset=0),
    "hello/device": Hello(v=1, token="a.b", device="d" * 128),
    "send_gift": SendGift(rid=1, gift_id="g-01HV3K9Z", to="bob", kind="note", qty=2),
    "send_gift/edges": SendGift(rid=MAX_SAFE_INT, gift_id="x" * 64, to="u:1.a_b-c", kind="k" * 32,
                                qty=1_000_000),
    "send_gift/rid-zero": SendGift(rid=0, gift_id="g", to="b", kind="n", qty=1),
    "send_gift/quoted": SendGift(rid=6, gift_id="g-01HV3K9Z", to="carol", kind="note", qty=2, quote="q-7f3a"),
    "send_gift/quoted-edges": SendGift(rid=6, gift_id="g", to="carol", kind="note", qty=1, quote="q" * 64),
    "accept": AcceptGift(rid=2, gift_id="g-01HV3K9Z"),
    "decline": DeclineGift(rid=3, gift_id="g-01HV3K9Z"),
    "get_balance": GetBalance(rid=4),
    "ping": Ping(rid=5),
    "join_room": JoinRoom(rid=10, room="carol"),
    "join_room/edges": JoinRoom(rid=MAX_SAFE_INT, room="r" * 64),
    "leave_room": LeaveRoom(rid=11, room="carol"),
    "open_wish": OpenWish(rid=12, kind="gold_note", target=10),
    "open_wish/edges": OpenWish(rid=0, kind="k" * 32, target=1_000_000),
    "open_wish/target-one": OpenWish(rid=12, kind="n", target=1),
    "get_quote": GetQuote(rid=13, room="carol", kind="note", qty=2),
    "get_quote/edges": GetQuote(rid=13, room="u:1.a_b-c", kind="k" * 32, qty=1_000_000),
    "get_room": GetRoom(rid=14, room="carol", top=10),
    "get_room/top-one": GetRoom(rid=14, room="carol", top=1),
    "get_room/top-hundred": GetRoom(rid=14, room="carol", top=100),
    "redeem_frame": RedeemFrame(rid=15, festival="spring-2025"),
    "bind_mentor": BindMentor(rid=16, mentor="alice"),
    "appeal": Appeal(rid=18, kind="face_verification", evidence="upload-42"),
    "appeal/edges": Appeal(rid=18, kind="k" * 32, evidence="e" * 256),
    "give_consent": GiveConsent(rid=19, version="privacy-v2", channel="signup"),
    "give_consent/bare": GiveConsent(rid=19, version="v" * 64),
    "withdraw_consent": WithdrawConsent(rid=20, channel="settings"),
    "withdraw_consent/bare": WithdrawConsent(rid=20),
    "consent/given": ConsentReply(rid=19, changed=True, version="privacy-v2", at_ms=T0, channel="signup"),
    "consent/withdrawn": ConsentReply(rid=20, changed=False),
    "welcome/consent-needed": Welcome(user="bob", node="node-1", epoch="e", offset=0, recovered=True, pending=(),
                                      heartbeat_s=20, consent_needed="privacy-v2"),
    "welcome/badges": Welcome(user="bob", node="node-1", epoch="e", offset=0, recovered=True, pending=(),
                              heartbeat_s=20, badges=("green_giver", "b" * 32)),
    "welcome/no-badges-yet": Welcome(user="bob", node="node-1", epoch="e", offset=0, recovered=True, pending=(),
                                     heartbeat_s=20, badges=()),
    "guardian_answer": GuardianAnswer(rid=19, gift_id="g-01HV3K9Z", ward="wafa", approve=True),
    "get_skins": GetSkins(rid=19),
    "get_guardian_requests": GetGuardianRequests(rid=21),
    "get_guardian_requests/after": GetGuardianRequests(rid=22, after="1700000060000/wafa/g-01HV3K9Z"),
    "guardian_requests": GuardianRequests(rid=21, gifts=(OFFER, SCENE), next="1700000060000/wafa/g-01HV3K9Z"),
    "guardian_requests/last": GuardianRequests(rid=22, gifts=()),
    "welcome/empty": Welcome(user="bob", node="node-1", epoch="9f2c41d07a3b", offset=0, recovered=True,
                             pending=(), heartbeat_s=20),
    "welcome/pending": Welcome(user="bob", node="gw-a:8765", epoch="9f2c41d07a3b", offset=41,
                               recovered=False, pending=(OFFER, EXPIRED), heartbeat_s=3600),
    "gift_sent": GiftSent(rid=1, gift=OFFER),
    "gift_resolved": GiftResolved(rid=2, gift=ACCEPTED),
    "gift_sent/scene": GiftSent(rid=6, gift=SCENE),
    "gift_resolved/scene": GiftResolved(rid=7, gift=SCENE_ACCEPTED),
    "gift_resolved/lucky": GiftResolved(rid=7, gift=LUCKY),
    "welcome/paged": Welcome(user="bob", node="node-1", epoch="e", offset=3, recovered=True,
                             pending=(OFFER,), heartbeat_s=20, pending_more=True),
    "pending/more": Pending(gifts=(OFFER, SCENE_EDGES), more=True),
    "pending/last": Pending(gifts=(SCENE,)),
    "welcome/scene-pending": Welcome(user="carol", node="node-1", epoch="e", offset=7, recovered=True,
                                     pending=(SCENE, OFFER, SCENE_EDGES), heartbeat_s=1),
    "balance": Balance(rid=4, available={"note": 980, "gold_note": 0}, held={"note": 20},
                       units_per_card=10),
    "balance/empty": Balance(rid=4, available={}, held={}, units_per_card=1),
    "balance/points": Balance(rid=4, available={"note": 980}, held={}, units_per_card=10, points=1_250),
    "balance/points-zero": Balance(rid=4, available={}, held={}, units_per_card=1, points=0),
    "balance/points-max": Balance(rid=4, available={}, held={}, units_per_card=1, points=MAX_SAFE_INT),
    "balance/skins": Balance(rid=4, available={"note": 10}, held={}, units_per_card=10, skins={"note": "sea-tiger"}),
    "skins": Skins(rid=19, skins=(Skin(skin_id="sea-tiger", kind="note", name="Tiger",
                                       image_url="https://cdn.example/tiger.png", optional=False),
                                  Skin(skin_id="m" * 64, kind="k" * 32, name="n" * 100,
                                       image_url="https://" + "u" * 499, optional=True))),
    "skins/empty": Skins(rid=19, skins=()),
    "pong": Pong(rid=5, server_time_ms=T0),
    "error/frame": Error(code="BAD_FRAME", message="frame is not valid JSON"),
    "error/request": Error(code="INSUFFICIENT_BALANCE", message="not enough cards of this kind", rid=1),
    "error/with-gift": Error(code="ALREADY_RESOLVED", message="the gift was already resolved", rid=3,
                             gift=ACCEPTED),
    "error/unicode": Error(code="INTERNAL", message="désolé, 出错了 \n\t ok", rid=9),
    "error/empty-message": Error(code="X", message=""),
    "error/scene-gift": Error(code="GIFT_EXPIRED", message="the gift expired", rid=8, gift=SCENE_EDGES),
    "error/quote-expired": Error(code="QUOTE_EXPIRED", message="ask for a new quote", rid=6),
    "error/frozen": Error(code="ACCOUNT_FROZEN", message="the account is frozen", rid=6, until_ms=1_700_000_010_000),
    "event/offer": Event(epoch="9f2c41d07a3b", offset=42, event="offer", gift=OFFER),
    "event/outcome": Event(epoch="9f2c41d07a3b", offset=43, event="outcome", gift=ACCEPTED),
    "event/scene-offer": Event(epoch="9f2c41d07a3b", offset=44, event="offer", gift=SCENE),
    "event/scene-outcome": Event(epoch="9f2c41d07a3b", offset=45, event="outcome", gift=SCENE_EDGES),
    "event/guardian": Event(epoch="9f2c41d07a3b", offset=46, event="guardian", gift=OFFER),
    "event/guardian-done": Event(epoch="9f2c41d07a3b", offset=47, event="guardian_done", gift=ACCEPTED),
    "room/push": Room(room="carol", viewers=3, top=TOP),
    "room/push-empty": Room(room="carol", viewers=0, top=()),
    "room/push-wish": Room(room="carol", viewers=2, top=TOP[:1], wish_kind="gold_note", wish_target=10,
                           wish_progress=0),
    "room/reply": Room(room="carol", viewers=3, top=TOP, rid=14, wish_kind="gold_note", wish_target=10,
                       wish_progress=4, points=180, rank=1),
    "room/reply-edges": Room(room="r" * 64, viewers=MAX_SAFE_INT, rid=0, top=(
        RankEntry(user="u" * 64, points=MAX_SAFE_INT, rank=MAX_SAFE_INT),), wish_kind="k" * 32,
        wish_target=1_000_000, wish_progress=MAX_SAFE_INT, points=0, rank=MAX_SAFE_INT),
    "room/reply-not-contributed": Room(room="carol", viewers=1, top=(), rid=10),
    "quote": QuoteReply(rid=13, quote_id="q-7f3a", room="carol", cost=20, amount=18, viewers=3,
                        expires_at_ms=T0 + 10_000),
    "quote/edges": QuoteReply(rid=MAX_SAFE_INT, quote_id="q" * 64, room="r" * 64, cost=MAX_SAFE_INT, amount=0,
                              viewers=0, expires_at_ms=0),
    "done/frame": Done(rid=15, item="frame:spring-2025", expires_at_ms=T0 + 86_400_000),
    "done/mentor": Done(rid=16, item="alice", reward=500),
    "done/bare": Done(rid=17, item="x"),
    "done/edges": Done(rid=0, item="i" * 64, expires_at_ms=0, reward=MAX_SAFE_INT),
}

ENCODINGS = list(Encoding)


def _decoder(msg: Message):  # type: ignore[no-untyped-def]
    return decode_client if msg.TYPE in CLIENT_MESSAGES else decode_server


# ---------------------------------------------------------------- round trips


def _objects(obj: WireObject) -> list[WireObject]:
    """``obj`` and every wire object nested in it (gifts, leaderboard lines)."""
    out = [obj]
    for spec in obj.FIELDS:
        value = getattr(obj, spec.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, WireObject):
                out += _objects(item)
    return out


def test_samples_cover_every_message_class() -> None:
    covered = {type(m) for m in SAMPLES.values()}
    assert covered == set(CLIENT_MESSAGES.values()) | set(SERVER_MESSAGES.values())


def test_samples_cover_every_optional_field_absent_and_present() -> None:
    """Messages and nested objects alike: each optional field both left out and set."""
    objects = [o for m in SAMPLES.values() for o in _objects(m)]
    assert {type(o) for o in objects} >= {Gift, RankEntry}
    for cls in {type(o) for o in objects}:
        for spec in cls.FIELDS:
            if not spec.optional:
                continue
            values = [getattr(o, spec.name) for o in objects if type(o) is cls]
            assert None in values, f"no {cls.TYPE} sample without {spec.name}"
            assert any(v is not None for v in values), f"no {cls.TYPE} sample with {spec.name}"


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name: str, encoding: Encoding) -> None:
    msg = SAMPLES[name]
    frame = encode(msg, encoding)
    # msgpack travels in binary frames, JSON in text frames.
    assert isinstance(frame, bytes if encoding is Encoding.MSGPACK else str)
    decoded = _decoder(msg)(frame, encoding)
    assert decoded == msg
    assert type(decoded) is type(msg)
    # Nested gifts and leaderboard lines come back as objects and lists as tuples, not raw
    # maps and lists.
    items = {"pending": Gift, "gifts": Gift, "top": RankEntry, "badges": str, "skins": Skin}
    for field in dataclasses.fields(decoded):
        value = getattr(decoded, field.name)
        if isinstance(value, tuple):
            assert all(type(item) is items[field.name] for item in value)
        if field.name == "gift" and value is not None:
            assert type(value) is Gift
        assert not isinstance(value, list)
        assert not isinstance(value, dict) or field.name in ("available", "held", "skins")


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_round_trip_of_enum_valued_fields(encoding: Encoding) -> None:
    """The SDK may build gifts and events from the enums; they travel as their plain values."""
    gift = dataclasses.replace(OFFER, state=GiftState.DECLINED)
    msg = Event(epoch="e", offset=1, event=EventKind.OUTCOME, gift=gift)
    decoded = decode_server(encode(msg, encoding), encoding)
    assert isinstance(decoded, Event)
    assert decoded.event == "outcome"
    assert decoded.gift.state == "declined"
    assert GiftState(decoded.gift.state) is GiftState.DECLINED


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_client_and_server_tables_are_disjoint(encoding: Encoding) -> None:
    """A server message sent to the server (or the reverse) is an unknown type, not a crash."""
    assert not set(CLIENT_MESSAGES) & set(SERVER_MESSAGES)
    with pytest.raises(FrameError) as err:
        decode_client(encode(SAMPLES["pong"], encoding), encoding)
    assert err.value.code is ErrorCode.UNKNOWN_TYPE
    assert err.value.rid == 5
    with pytest.raises(FrameError) as err:
        decode_server(encode(SAMPLES["ping"], encoding), encoding)
    assert err.value.code is ErrorCode.UNKNOWN_TYPE
    assert err.value.rid == 5


# ---------------------------------------------------------------- exact wire shapes


def test_wire_shape_send_gift_msgpack() -> None:
    """Byte for byte, built by hand: a fixmap of six str keys, in declaration order."""
    expected = (
        b"\x86"  # fixmap, 6 entries
        + b"\xa1t" + b"\xa9send_gift"
        + b"\xa3rid" + b"\x07"  # positive fixint
        + b"\xa7gift_id" + b"\xa3g-1"
        + b"\xa2to" + b"\xa3bob"
        + b"\xa4kind" + b"\xa4note"
        + b"\xa3qty" + b"\x02"
    )
    msg = SendGift(rid=7, gift_id="g-1", to="bob", kind="note", qty=2)
    assert encode(msg, Encoding.MSGPACK) == expected
    assert decode_client(expected, Encoding.MSGPACK) == msg


def test_wire_shape_ping_msgpack_strings_are_str_not_bin() -> None:
    assert encode(Ping(rid=7), Encoding.MSGPACK) == b"\x82\xa1t\xa4ping\xa3rid\x07"


def test_wire_shape_send_gift_json() -> None:
    msg = SendGift(rid=7, gift_id="g-1", to="bob", kind="note", qty=2)
    assert encode(msg, Encoding.JSON) == (
        '{"t":"send_gift","rid":7,"gift_id":"g-1","to":"bob","kind":"note","qty":2}'
    )


def test_wire_shape_event_json_with_nested_gift() -> None:
    assert encode(SAMPLES["event/offer"], Encoding.JSON) == (
        '{"t":"event","epoch":"9f2c41d07a3b","offset":42,"event":"offer","gift":{'
        '"gift_id":"g-01HV3K9Z","sender":"alice","recipient":"bob","kind":"note","qty":2,"cost":20,'
        '"state":"pending","created_at_ms":1700000000000,"expires_at_ms":1700000060000}}'
    )


def test_wire_shape_welcome_json() -> None:
    welcome = Welcome(user="bob", node="gw-a:8765", epoch="9f2c41d07a3b", offset=41, recovered=False,
                      pending=(OFFER,), heartbeat_s=3600)
    assert orjson.loads(encode(welcome, Encoding.JSON)) == {
        "t": "welcome", "user": "bob", "node": "gw-a:8765", "epoch": "9f2c41d07a3b", "offset": 41,
        "recovered": False, "heartbeat_s": 3600,
        "pending": [{
            "gift_id": "g-01HV3K9Z", "sender": "alice", "recipient": "bob", "kind": "note", "qty": 2,
            "cost": 20, "state": "pending", "created_at_ms": T0, "expires_at_ms": T0 + 60_000,
        }],
    }


def test_wire_shape_balance_json() -> None:
    assert encode(SAMPLES["balance"], Encoding.JSON) == (
        '{"t":"balance","rid":4,"available":{"note":980,"gold_note":0},"held":{"note":20},"units_per_card":10}'
    )


def test_wire_shape_send_gift_with_quote_json() -> None:
    assert encode(SAMPLES["send_gift/quoted"], Encoding.JSON) == (
        '{"t":"send_gift","rid":6,"gift_id":"g-01HV3K9Z","to":"carol","kind":"note","qty":2,"quote":"q-7f3a"}'
    )


def test_wire_shape_gift_with_scene_fields_json() -> None:
    """The optional gift fields follow the required ones, in declaration order."""
    assert encode(SAMPLES["gift_sent/scene"], Encoding.JSON) == (
        '{"t":"gift_sent","rid":6,"gift":{'
        '"gift_id":"g-scene","sender":"alice","recipient":"bob","kind":"note","qty":2,"cost":20,'
        '"state":"pending","created_at_ms":1700000000000,"expires_at_ms":1700000060000,'
        '"amount":18,"payer":"promo","festival":"spring-2025","room":"carol","campaign":"spring-launch"}}'
    )


def test_wire_shape_room_push_msgpack() -> None:
    """Byte for byte: a push has no rid, and its leaderboard is an array of maps."""
    expected = (
        b"\x84"  # fixmap, 4 entries
        + b"\xa1t" + b"\xa4room"
        + b"\xa4room" + b"\xa5carol"
        + b"\xa7viewers" + b"\x03"
        + b"\xa3top" + b"\x91"  # fixarray, 1 entry
        + b"\x83" + b"\xa4user" + b"\xa5alice" + b"\xa6points" + b"\xcc\xb4" + b"\xa4rank" + b"\x01"
    )
    msg = Room(room="carol", viewers=3, top=(RankEntry(user="alice", points=180, rank=1),))
    assert encode(msg, Encoding.MSGPACK) == expected
    assert decode_server(expected, Encoding.MSGPACK) == msg


def test_wire_shape_room_reply_json() -> None:
    assert encode(SAMPLES["room/reply"], Encoding.JSON) == (
        '{"t":"room","room":"carol","viewers":3,"top":['
        '{"user":"alice","points":180,"rank":1},{"user":"bob","points":180,"rank":1},'
        '{"user":"dave","points":0,"rank":3}],'
        '"rid":14,"wish_kind":"gold_note","wish_target":10,"wish_progress":4,"points":180,"rank":1}'
    )


def test_wire_shape_scene_requests_and_replies_json() -> None:
    shapes = {
        "join_room": '{"t":"join_room","rid":10,"room":"carol"}',
        "leave_room": '{"t":"leave_room","rid":11,"room":"carol"}',
        "open_wish": '{"t":"open_wish","rid":12,"kind":"gold_note","target":10}',
        "get_quote": '{"t":"get_quote","rid":13,"room":"carol","kind":"note","qty":2}',
        "get_room": '{"t":"get_room","rid":14,"room":"carol","top":10}',
        "redeem_frame": '{"t":"redeem_frame","rid":15,"festival":"spring-2025"}',
        "bind_mentor": '{"t":"bind_mentor","rid":16,"mentor":"alice"}',
        "appeal": '{"t":"appeal","rid":18,"kind":"face_verification","evidence":"upload-42"}',
        "give_consent": '{"t":"give_consent","rid":19,"version":"privacy-v2","channel":"signup"}',
        "withdraw_consent/bare": '{"t":"withdraw_consent","rid":20}',
        "consent/given": '{"t":"consent","rid":19,"changed":true,"version":"privacy-v2","at_ms":1700000000000,'
                         '"channel":"signup"}',
        "guardian_answer": '{"t":"guardian_answer","rid":19,"gift_id":"g-01HV3K9Z","ward":"wafa","approve":true}',
        "quote": '{"t":"quote","rid":13,"quote_id":"q-7f3a","room":"carol","cost":20,"amount":18,"viewers":3,'
                 '"expires_at_ms":1700000010000}',
        "done/frame": '{"t":"done","rid":15,"item":"frame:spring-2025","expires_at_ms":1700086400000}',
        "done/mentor": '{"t":"done","rid":16,"item":"alice","reward":500}',
        "done/bare": '{"t":"done","rid":17,"item":"x"}',
        "balance/points": '{"t":"balance","rid":4,"available":{"note":980},"held":{},"units_per_card":10,'
                          '"points":1250}',
    }
    for name, shape in shapes.items():
        assert encode(SAMPLES[name], Encoding.JSON) == shape, name
        assert _decoder(SAMPLES[name])(shape, Encoding.JSON) == SAMPLES[name]


def test_optional_fields_are_omitted_not_null() -> None:
    assert encode(SAMPLES["hello/fresh"], Encoding.JSON) == (
        '{"t":"hello","v":1,"token":"eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"}'
    )
    assert encode(SAMPLES["error/frame"], Encoding.JSON) == (
        '{"t":"error","code":"BAD_FRAME","message":"frame is not valid JSON"}'
    )
    frame = encode(SAMPLES["error/frame"], Encoding.MSGPACK)
    assert isinstance(frame, bytes)
    packed = msgpack.unpackb(frame)
    assert set(packed) == {"t", "code", "message"}
    # Present optional fields are written, including a falsy offset of 0.
    assert to_wire(SAMPLES["hello/resume-from-zero"]) == {"t": "hello", "v": 1, "token": "a.b", "epoch": "e",
                                                          "offset": 0}
    # The scene fields likewise: left out when None, written when 0.
    assert set(to_wire(SAMPLES["room/push-empty"])) == {"t", "room", "viewers", "top"}
    assert to_wire(SAMPLES["room/push-empty"])["top"] == []
    assert set(to_wire(SAMPLES["send_gift"])) == {"t", "rid", "gift_id", "to", "kind", "qty"}
    assert set(to_wire(SAMPLES["gift_sent"])["gift"]) == {
        "gift_id", "sender", "recipient", "kind", "qty", "cost", "state", "created_at_ms", "expires_at_ms",
    }
    assert to_wire(SAMPLES["balance/points-zero"])["points"] == 0
    assert to_wire(SAMPLES["error/scene-gift"])["gift"]["amount"] == 0
    assert to_wire(SAMPLES["done/edges"])["expires_at_ms"] == 0
    assert to_wire(SAMPLES["room/reply-edges"])["points"] == 0


def test_json_is_compact_utf8_text() -> None:
    frame = encode(SAMPLES["error/unicode"], Encoding.JSON)
    assert isinstance(frame, str)
    assert "désolé, 出错了" in frame  # raw UTF-8, no \\u escapes needed
    assert ", " not in frame.replace("désolé, ", "")  # no whitespace between tokens


def test_to_wire_puts_t_first() -> None:
    for msg in SAMPLES.values():
        wire = to_wire(msg)
        assert next(iter(wire)) == "t"
        assert wire["t"] == msg.TYPE


# ---------------------------------------------------------------- lenient reading


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_unknown_fields_are_ignored_at_top_level_and_in_gifts(encoding: Encoding) -> None:
    wire = to_wire(SAMPLES["gift_sent"])
    wire["future_field"] = {"nested": [1, 2, {"deep": None}]}
    wire["also_new"] = 3.5
    wire["gift"]["resolved_at_ms"] = T0
    wire["gift"]["future_field"] = 18
    frame = msgpack.packb(wire) if encoding is Encoding.MSGPACK else orjson.dumps(wire).decode()
    assert decode_server(frame, encoding) == SAMPLES["gift_sent"]


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_unknown_fields_are_ignored_in_leaderboard_lines_and_scene_messages(encoding: Encoding) -> None:
    wire = to_wire(SAMPLES["room/reply"])
    wire["future_field"] = [1]
    wire["top"][0]["badge"] = "gold"
    wire["top"][2]["future_field"] = {"deep": None}
    frame = msgpack.packb(wire) if encoding is Encoding.MSGPACK else orjson.dumps(wire).decode()
    assert decode_server(frame, encoding) == SAMPLES["room/reply"]
    request = {**to_wire(SAMPLES["get_quote"]), "future_field": "x"}
    frame = msgpack.packb(request) if encoding is Encoding.MSGPACK else orjson.dumps(request).decode()
    assert decode_client(frame, encoding) == SAMPLES["get_quote"]


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_gift_from_an_older_server_has_no_scene_fields(encoding: Encoding) -> None:
    """A gift without amount/payer/festival/room/campaign still decodes; the fields read as None."""
    decoded = decode_server(encode(SAMPLES["gift_sent"], encoding), encoding)
    assert isinstance(decoded, GiftSent)
    gift = decoded.gift
    assert (gift.amount, gift.payer, gift.festival, gift.room, gift.campaign) == (None,) * 5


def test_keys_that_are_not_strings_are_ignored_in_msgpack() -> None:
    frame = msgpack.packb({"t": "ping", "rid": 1, 7: "x", b"rid": 99, 1.5: None, None: 0, True: 1})
    assert decode_client(frame, Encoding.MSGPACK) == Ping(rid=1)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_null_optional_field_reads_as_absent(encoding: Encoding) -> None:
    wire = {"t": "hello", "v": 1, "token": "a.b", "epoch": None, "offset": None}
    frame = msgpack.packb(wire) if encoding is Encoding.MSGPACK else orjson.dumps(wire).decode()
    assert decode_client(frame, encoding) == Hello(v=1, token="a.b")
    wire = {**to_wire(SAMPLES["room/push"]), "rid": None, "wish_kind": None, "wish_target": None,
            "wish_progress": None, "points": None, "rank": None}
    frame = msgpack.packb(wire) if encoding is Encoding.MSGPACK else orjson.dumps(wire).decode()
    assert decode_server(frame, encoding) == SAMPLES["room/push"]
    wire = to_wire(SAMPLES["gift_sent"])
    wire["gift"].update(amount=None, payer=None, festival=None, room=None, campaign=None)
    frame = msgpack.packb(wire) if encoding is Encoding.MSGPACK else orjson.dumps(wire).decode()
    assert decode_server(frame, encoding) == SAMPLES["gift_sent"]


def test_field_order_on_the_wire_does_not_matter() -> None:
    frame = '{"qty":2,"kind":"note","to":"bob","gift_id":"g-1","rid":7,"t":"send_gift"}'
    assert decode_client(frame, Encoding.JSON) == SendGift(rid=7, gift_id="g-1", to="bob", kind="note", qty=2)


def test_json_escapes_decode_like_raw_characters() -> None:
    frame = '{"t":"send_gift","rid":7,"gift_id":"g\\u002d1","to":"\\u0062ob","kind":"note","qty":2}'
    assert decode_client(frame, Encoding.JSON) == SendGift(rid=7, gift_id="g-1", to="bob", kind="note", qty=2)


def test_unknown_error_code_from_a_newer_server_is_readable() -> None:
    """Codes are strings on the wire so a client can show a code it does not know yet."""
    frame = '{"t":"error","code":"SOME_FUTURE_CODE","message":"later","rid":4}'
    decoded = decode_server(frame, Encoding.JSON)
    assert decoded == Error(code="SOME_FUTURE_CODE", message="later", rid=4)
    assert decoded.code not in RETRYABLE_CODES


# ---------------------------------------------------------------- negotiation


def test_subprotocols_in_preference_order() -> None:
    assert SUBPROTOCOLS == ("notecard.v1.msgpack", "notecard.v1.json")


@pytest.mark.parametrize(
    ("subprotocol", "expected"),
    [(None, Encoding.JSON), ("notecard.v1.json", Encoding.JSON), ("notecard.v1.msgpack", Encoding.MSGPACK)],
)
def test_encoding_for(subprotocol: str | None, expected: Encoding) -> None:
    encoding = encoding_for(subprotocol)
    assert encoding is expected
    assert encoding.binary is (expected is Encoding.MSGPACK)
    assert encoding.subprotocol == (subprotocol or "notecard.v1.json")


def test_encoding_for_rejects_a_subprotocol_it_never_offered() -> None:
    with pytest.raises(ValueError, match=r"notecard\.v2\.json"):
        encoding_for("notecard.v2.json")


# ---------------------------------------------------------------- the tables


def test_message_type_names() -> None:
    assert PROTOCOL_VERSION == 1
    assert set(CLIENT_MESSAGES) == {
        "hello", "send_gift", "accept", "decline", "get_balance", "ping",
        "join_room", "leave_room", "open_wish", "get_quote", "get_room", "redeem_frame", "bind_mentor",
        "appeal", "give_consent", "withdraw_consent", "guardian_answer", "get_skins", "get_guardian_requests",
    }
    assert set(SERVER_MESSAGES) == {
        "welcome", "gift_sent", "gift_resolved", "balance", "pong", "error", "event", "room", "quote", "done",
        "pending", "consent", "skins", "guardian_requests",
    }
    # Nested objects are not messages: a frame cannot name them.
    assert Gift.TYPE not in CLIENT_MESSAGES and Gift.TYPE not in SERVER_MESSAGES
    assert RankEntry.TYPE not in CLIENT_MESSAGES and RankEntry.TYPE not in SERVER_MESSAGES
    for name, cls in {**CLIENT_MESSAGES, **SERVER_MESSAGES}.items():
        assert name == cls.TYPE


def test_every_request_carries_a_rid_and_every_reply_echoes_it() -> None:
    requests = {n for n, c in CLIENT_MESSAGES.items() if "rid" in {f.name for f in dataclasses.fields(c)}}
    assert requests == {
        "send_gift", "accept", "decline", "get_balance", "ping",
        "join_room", "leave_room", "open_wish", "get_quote", "get_room", "redeem_frame", "bind_mentor",
        "appeal", "give_consent", "withdraw_consent", "guardian_answer", "get_skins", "get_guardian_requests",
    }
    # Every request's rid is required.
    for name in requests:
        assert not next(s for s in CLIENT_MESSAGES[name].FIELDS if s.name == "rid").optional, name
    replies = {n for n, c in SERVER_MESSAGES.items() if "rid" in {f.name for f in dataclasses.fields(c)}}
    assert replies == {"gift_sent", "gift_resolved", "balance", "pong", "error", "room", "quote", "done",
                       "consent", "skins", "guardian_requests"}
    # rid is optional only where the server also pushes the message unasked.
    optional_rid = {n for n in replies if next(s for s in SERVER_MESSAGES[n].FIELDS if s.name == "rid").optional}
    assert optional_rid == {"error", "room"}


def test_error_codes_are_stable_strings() -> None:
    for code in ErrorCode:
        assert code.value == code.name
    assert len({c.value for c in ErrorCode}) == len(ErrorCode)
    assert {ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE} == RETRYABLE_CODES
    scene_codes = {"QUOTE_EXPIRED", "QUOTE_MISMATCH", "NO_WISH", "NOT_IN_ROOM", "NO_FESTIVAL", "ALREADY_REDEEMED",
                   "ALREADY_BOUND", "NOT_NEWCOMER", "PROMOTION_EXHAUSTED"}
    assert scene_codes <= {c.value for c in ErrorCode}
    assert not scene_codes & RETRYABLE_CODES


def test_exception_tree() -> None:
    assert issubclass(FrameError, ProtocolError)
    assert issubclass(FieldError, ProtocolError)
    err = FieldError(ErrorCode.BAD_FIELD, "field 'qty' is required", 7)
    assert (err.code, err.message, err.rid, str(err)) == (ErrorCode.BAD_FIELD, "field 'qty' is required", 7,
                                                          "field 'qty' is required")
    assert ProtocolError(ErrorCode.BAD_FRAME, "x").rid is None


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLES["ping"].rid = 6  # type: ignore[misc,union-attr]


def test_gift_states() -> None:
    assert [s.value for s in GiftState] == ["pending", "accepted", "declined", "expired"]
    assert [k.value for k in EventKind] == ["offer", "outcome", "guardian", "guardian_done"]


# ---------------------------------------------------------------- the schema compiler


@dataclasses.dataclass(frozen=True)
class _PatternOnInt:
    x: Annotated[int, Pattern("[0-9]+", 3)]


@dataclasses.dataclass(frozen=True)
class _RangeOnStr:
    x: Annotated[str, Range(0, 3)]


@dataclasses.dataclass(frozen=True)
class _TwoTypeUnion:
    x: int | str


@dataclasses.dataclass(frozen=True)
class _FloatField:
    x: float


@pytest.mark.parametrize("cls", [_PatternOnInt, _RangeOnStr, _TwoTypeUnion, _FloatField])
def test_schema_compiler_refuses_what_the_wire_cannot_carry(cls: type) -> None:
    """A message class with an unsupported field fails at import time, not on the first frame."""
    with pytest.raises(TypeError):
        compile_fields(cls)
