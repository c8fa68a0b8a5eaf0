"""Every class of malformed input is refused with ProtocolError, the documented code and the rid.

The documented codes (docs/protocol.md, "Refused frames"):

- BAD_FRAME: the frame cannot be read as a map with a string ``t`` (bad bytes, wrong frame
  type, oversize, not a map, no ``t``, unhashable keys);
- UNKNOWN_TYPE: ``t`` names no message this side accepts;
- BAD_FIELD: a known message with a missing, ill-typed or out-of-range field, nested gifts
  included.

``rid`` is carried whenever the frame decoded to a map whose ``rid`` is a valid request id.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
import pytest

from protocol import (
    CLIENT_MESSAGES,
    MAX_FRAME_BYTES,
    SERVER_MESSAGES,
    Encoding,
    Error,
    ErrorCode,
    FieldError,
    Frame,
    FrameError,
    Gift,
    Ping,
    ProtocolError,
    RankEntry,
    decode_client,
    decode_server,
    encode,
)
from protocol.schema import MAX_SAFE_INT

MSGPACK, JSON = Encoding.MSGPACK, Encoding.JSON
ENCODINGS = [MSGPACK, JSON]
Decoder = Callable[[Frame, Encoding], Any]

GIFT: dict[str, Any] = {
    "gift_id": "g-1", "sender": "alice", "recipient": "bob", "kind": "note", "qty": 2, "cost": 20,
    "state": "pending", "created_at_ms": 1_700_000_000_000, "expires_at_ms": 1_700_000_060_000,
}
#: A gift with every optional (scene) field present.
SCENE_GIFT: dict[str, Any] = {**GIFT, "amount": 18, "payer": "promo", "festival": "spring", "room": "carol",
                               "lucky_table": "sea-lucky", "lucky_version": 2, "lucky_seed": "0f" * 32,
                               "lucky_bonus": 50, "lucky_paid": 0, "skin": "sea-tiger",
                               "campaign": "spring-launch"}
TOP: list[dict[str, Any]] = [{"user": "alice", "points": 180, "rank": 1}, {"user": "bob", "points": 90, "rank": 2}]
#: One valid wire map per message type, every optional field present; every test below
#: breaks exactly one thing in it.
VALID: dict[str, dict[str, Any]] = {
    "hello": {"t": "hello", "v": 1, "token": "a.b", "epoch": "e1", "offset": 3, "device": "d-9f2c"},
    "send_gift": {"t": "send_gift", "rid": 7, "gift_id": "g-1", "to": "bob", "kind": "note", "qty": 2,
                  "quote": "q-1"},
    "accept": {"t": "accept", "rid": 7, "gift_id": "g-1"},
    "decline": {"t": "decline", "rid": 7, "gift_id": "g-1"},
    "get_balance": {"t": "get_balance", "rid": 7},
    "ping": {"t": "ping", "rid": 7},
    "join_room": {"t": "join_room", "rid": 7, "room": "carol"},
    "leave_room": {"t": "leave_room", "rid": 7, "room": "carol"},
    "open_wish": {"t": "open_wish", "rid": 7, "kind": "note", "target": 10},
    "get_quote": {"t": "get_quote", "rid": 7, "room": "carol", "kind": "note", "qty": 2},
    "get_room": {"t": "get_room", "rid": 7, "room": "carol", "top": 10},
    "redeem_frame": {"t": "redeem_frame", "rid": 7, "festival": "spring"},
    "bind_mentor": {"t": "bind_mentor", "rid": 7, "mentor": "alice"},
    "appeal": {"t": "appeal", "rid": 7, "kind": "face_verification", "evidence": "upload-42"},
    "give_consent": {"t": "give_consent", "rid": 7, "version": "privacy-v2", "channel": "signup"},
    "withdraw_consent": {"t": "withdraw_consent", "rid": 7, "channel": "settings"},
    "guardian_answer": {"t": "guardian_answer", "rid": 7, "gift_id": "g-1", "ward": "wafa", "approve": False},
    "welcome": {"t": "welcome", "user": "bob", "node": "n1", "epoch": "e1", "offset": 3, "recovered": True,
                "pending": [GIFT, {**SCENE_GIFT, "gift_id": "g-2"}], "heartbeat_s": 20, "pending_more": True,
                "consent_needed": "privacy-v2", "badges": ["green_giver"]},
    "pending": {"t": "pending", "gifts": [GIFT, {**SCENE_GIFT, "gift_id": "g-2"}], "more": True},
    "gift_sent": {"t": "gift_sent", "rid": 7, "gift": GIFT},
    "gift_resolved": {"t": "gift_resolved", "rid": 7, "gift": SCENE_GIFT},
    "balance": {"t": "balance", "rid": 7, "available": {"note": 10}, "held": {"note": 0},
                "units_per_card": 10, "points": 5, "skins": {"note": "sea-tiger"}},
    "get_skins": {"t": "get_skins", "rid": 7},
    "get_guardian_requests": {"t": "get_guardian_requests", "rid": 7, "after": "1700000060000/wafa/g-1"},
    "guardian_requests": {"t": "guardian_requests", "rid": 7, "gifts": [GIFT], "next": "1700000060000/wafa/g-1"},
    "skins": {"t": "skins", "rid": 7, "skins": [{"skin_id": "sea-tiger", "kind": "note", "name": "Tiger",
                                                 "image_url": "https://cdn.example/tiger.png", "optional": False}]},
    "pong": {"t": "pong", "rid": 7, "server_time_ms": 5},
    "error": {"t": "error", "code": "ACCOUNT_FROZEN", "message": "m", "rid": 7, "gift": GIFT,
              "until_ms": 1_700_000_010_000},
    "event": {"t": "event", "epoch": "e1", "offset": 4, "event": "offer", "gift": GIFT},
    "room": {"t": "room", "room": "carol", "viewers": 3, "top": TOP, "rid": 7, "wish_kind": "note",
             "wish_target": 10, "wish_progress": 4, "points": 90, "rank": 2},
    "quote": {"t": "quote", "rid": 7, "quote_id": "q-1", "room": "carol", "cost": 20, "amount": 18, "viewers": 3,
              "expires_at_ms": 1_700_000_010_000},
    "consent": {"t": "consent", "rid": 7, "changed": True, "version": "privacy-v2", "at_ms": 5,
                "channel": "signup"},
    "done": {"t": "done", "rid": 7, "item": "frame:spring", "expires_at_ms": 1_700_000_010_000, "reward": 5},
}


def pack(wire: Any, encoding: Encoding) -> Frame:
    if encoding is MSGPACK:
        return msgpack.packb(wire, use_bin_type=True)
    return orjson.dumps(wire).decode()


def decoder_for(type_name: str) -> Decoder:
    return decode_server if type_name in SERVER_MESSAGES else decode_client


def _locate(wire: dict[str, Any], path: str) -> tuple[Any, Any]:
    """The container holding the last component of ``path``, and that component's key."""
    *parents, leaf = path.split(".")
    target: Any = wire
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    return target, int(leaf) if isinstance(target, list) else leaf


def with_field(type_name: str, path: str, value: Any) -> dict[str, Any]:
    """A copy of VALID[type_name] with ``path`` ("qty", "gift.qty", "pending.0.qty") set."""
    wire = copy.deepcopy(VALID[type_name])
    target, key = _locate(wire, path)
    target[key] = value
    return wire


def without_field(type_name: str, path: str) -> dict[str, Any]:
    wire = copy.deepcopy(VALID[type_name])
    target, key = _locate(wire, path)
    del target[key]
    return wire


def display(path: str) -> str:
    """How an error names a field path: "gift.qty", "pending[1].kind"."""
    out = ""
    for part in path.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def refused(frame: Any, encoding: Encoding, code: ErrorCode, rid: int | None,
            decode: Decoder = decode_client) -> ProtocolError:
    """Decode, expect a refusal with ``code`` and ``rid``, and check it can be reported."""
    with pytest.raises(ProtocolError) as info:
        decode(frame, encoding)
    err = info.value
    assert err.code is code, f"{err.code} ({err.message})"
    assert err.rid == rid
    assert isinstance(err, FieldError if code is ErrorCode.BAD_FIELD else FrameError)
    # The gateway sends exactly this back; it must itself be a valid error frame.
    report = Error(code=err.code, message=err.message, rid=err.rid)
    assert decode_server(encode(report, encoding), encoding) == report
    return err


def test_valid_maps_are_valid() -> None:
    """The base of every case below decodes, so each case fails only for its one defect."""
    assert set(VALID) == set(CLIENT_MESSAGES) | set(SERVER_MESSAGES)
    for name, wire in VALID.items():
        for encoding in ENCODINGS:
            assert name == decoder_for(name)(pack(wire, encoding), encoding).TYPE


# ---------------------------------------------------------------- not a frame at all


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # the one byte msgpack never uses
        b"\x82\xa1t\xa4ping\xa3rid",  # truncated: a key without its value
        b"\x82\xa1t\xa4ping\xa3rid\x07\x00",  # one complete object, then extra bytes
        b"\xdf\xff\xff\xff\xff",  # a map announcing 4 billion entries in five bytes
        b"\x81\xa2\xff\xfe\x01",  # a str key that is not UTF-8
        b'{"t":"ping","rid":7}',  # JSON bytes on a msgpack connection
    ],
    ids=["empty", "never-used-byte", "truncated", "trailing-bytes", "huge-announced-map", "bad-utf8",
         "json-bytes"],
)
def test_not_msgpack(frame: bytes) -> None:
    refused(frame, MSGPACK, ErrorCode.BAD_FRAME, None)


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "{",
        "nope",
        "{'t': 'ping', 'rid': 7}",
        '{"t":"ping","rid":7,}',
        '{"t":"ping","rid":7} {}',
        '{"t":"ping","rid":NaN}',
        '{"t":"ping","rid":Infinity}',
        '{"t":"ping","rid":7,"x":"\ud800"}',  # a lone surrogate is not UTF-8
        '{"t":"ping","rid":07}',
    ],
    ids=["empty", "open-brace", "word", "single-quotes", "trailing-comma", "two-values", "nan", "infinity",
         "lone-surrogate", "leading-zero"],
)
def test_not_json(frame: str) -> None:
    refused(frame, JSON, ErrorCode.BAD_FRAME, None)


def test_wrong_frame_type_for_the_encoding() -> None:
    ping = {"t": "ping", "rid": 7}
    # A text frame on a msgpack connection, even one holding a valid JSON ping.
    refused(orjson.dumps(ping).decode(), MSGPACK, ErrorCode.BAD_FRAME, None)
    # A binary frame on a JSON connection, whether it holds msgpack or JSON bytes.
    refused(msgpack.packb(ping), JSON, ErrorCode.BAD_FRAME, None)
    refused(orjson.dumps(ping), JSON, ErrorCode.BAD_FRAME, None)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("frame", [None, 7, bytearray(b"\x80"), memoryview(b"\x80"), ["ping"]],
                         ids=["none", "int", "bytearray", "memoryview", "list"])
def test_not_a_frame_object(frame: Any, encoding: Encoding) -> None:
    """A careless driver passing the wrong object still gets a ProtocolError, not a TypeError."""
    refused(frame, encoding, ErrorCode.BAD_FRAME, None)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("top", [[], [{"t": "ping", "rid": 7}], 7, 1.5, "ping", None, True],
                         ids=["empty-list", "list-of-map", "int", "float", "str", "null", "bool"])
def test_top_level_not_a_map(top: Any, encoding: Encoding) -> None:
    refused(pack(top, encoding), encoding, ErrorCode.BAD_FRAME, None)


# ---------------------------------------------------------------- the type field


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_missing_t(encoding: Encoding) -> None:
    refused(pack({"rid": 7, "gift_id": "g-1"}, encoding), encoding, ErrorCode.BAD_FRAME, 7)
    refused(pack({}, encoding), encoding, ErrorCode.BAD_FRAME, None)
    refused(pack({"T": "ping", "rid": 7}, encoding), encoding, ErrorCode.BAD_FRAME, 7)
    refused(pack({"t": None, "rid": 7}, encoding), encoding, ErrorCode.BAD_FRAME, 7)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("t", [1, 1.5, True, ["ping"], {"ping": 1}],
                         ids=["int", "float", "bool", "list", "map"])
def test_non_string_t(t: Any, encoding: Encoding) -> None:
    refused(pack({"t": t, "rid": 7}, encoding), encoding, ErrorCode.BAD_FRAME, 7)


def test_bin_t_in_msgpack_is_not_a_string() -> None:
    refused(msgpack.packb({"t": b"ping", "rid": 7}, use_bin_type=True), MSGPACK, ErrorCode.BAD_FRAME, 7)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("t",
                         ["pong", "welcome", "PING", "Ping", "", "ping ", "ping\x00", "send-gift", "gift"])
def test_unknown_type_from_a_client(t: str, encoding: Encoding) -> None:
    err = refused(pack({"t": t, "rid": 7}, encoding), encoding, ErrorCode.UNKNOWN_TYPE, 7)
    assert t not in err.message or t == ""  # the peer's input is never echoed


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("t", ["ping", "hello", "notification", "gift"])
def test_unknown_type_from_a_server(t: str, encoding: Encoding) -> None:
    refused(pack({"t": t, "rid": 7}, encoding), encoding, ErrorCode.UNKNOWN_TYPE, 7, decode_server)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("rid", [-1, MAX_SAFE_INT + 1, True, "7", 7.0, None, [7]],
                         ids=["negative", "above-2**53-1", "bool", "str", "float", "null", "list"])
def test_unknown_type_with_an_invalid_rid_carries_none(rid: Any, encoding: Encoding) -> None:
    refused(pack({"t": "nope", "rid": rid}, encoding), encoding, ErrorCode.UNKNOWN_TYPE, None)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("rid", [0, MAX_SAFE_INT])
def test_unknown_type_with_rid_at_the_edges(rid: int, encoding: Encoding) -> None:
    refused(pack({"t": "nope", "rid": rid}, encoding), encoding, ErrorCode.UNKNOWN_TYPE, rid)


# ---------------------------------------------------------------- missing fields


def _required_paths() -> list[tuple[str, str]]:
    paths = []
    for name, cls in {**CLIENT_MESSAGES, **SERVER_MESSAGES}.items():
        paths += [(name, spec.name) for spec in cls.FIELDS if not spec.optional]
    paths += [("gift_sent", f"gift.{k}") for k in GIFT]
    paths += [("welcome", f"pending.1.{k}") for k in ("gift_id", "state", "expires_at_ms")]
    paths += [("error", f"gift.{k}") for k in ("cost", "recipient")]
    paths += [("gift_resolved", f"gift.{spec.name}") for spec in Gift.FIELDS if not spec.optional]
    paths += [("room", f"top.1.{spec.name}") for spec in RankEntry.FIELDS if not spec.optional]
    return paths


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize(("type_name", "path"), _required_paths())
def test_missing_required_field(type_name: str, path: str, encoding: Encoding) -> None:
    rid = None if path == "rid" else VALID[type_name].get("rid")
    frame = pack(without_field(type_name, path), encoding)
    err = refused(frame, encoding, ErrorCode.BAD_FIELD, rid, decoder_for(type_name))
    assert f"field '{display(path)}' is required" == err.message
    # null is the same as absent: still missing.
    frame = pack(with_field(type_name, path, None), encoding)
    refused(frame, encoding, ErrorCode.BAD_FIELD, rid, decoder_for(type_name))


def test_every_field_of_every_message_is_required_except_the_documented_optional_ones() -> None:
    optional = {(n, s.name) for n, c in {**CLIENT_MESSAGES, **SERVER_MESSAGES}.items() for s in c.FIELDS
                if s.optional}
    assert optional == {
        ("hello", "epoch"), ("hello", "offset"), ("hello", "device"), ("error", "rid"), ("error", "gift"),
        ("error", "until_ms"),
        ("send_gift", "quote"), ("balance", "points"), ("balance", "skins"),
        ("room", "rid"), ("room", "wish_kind"), ("room", "wish_target"), ("room", "wish_progress"),
        ("room", "points"), ("room", "rank"),
        ("done", "expires_at_ms"), ("done", "reward"), ("welcome", "pending_more"), ("pending", "more"),
        ("welcome", "consent_needed"), ("welcome", "badges"), ("give_consent", "channel"),
        ("withdraw_consent", "channel"),
        ("consent", "version"), ("consent", "at_ms"), ("consent", "channel"),
        ("get_guardian_requests", "after"), ("guardian_requests", "next"),
    }
    assert {s.name for s in Gift.FIELDS if s.optional} == {"amount", "payer", "festival", "room", "lucky_table",
                                                           "lucky_version", "lucky_seed", "lucky_bonus", "lucky_paid",
                                                           "skin", "campaign"}
    assert {s.name for s in Gift.FIELDS if not s.optional} == set(GIFT)
    assert not [s.name for s in RankEntry.FIELDS if s.optional]


def _optional_paths() -> list[tuple[str, str]]:
    paths = []
    for name, cls in {**CLIENT_MESSAGES, **SERVER_MESSAGES}.items():
        paths += [(name, spec.name) for spec in cls.FIELDS if spec.optional]
    paths += [("gift_resolved", f"gift.{spec.name}") for spec in Gift.FIELDS if spec.optional]
    paths += [("welcome", f"pending.1.{spec.name}") for spec in Gift.FIELDS if spec.optional]
    return paths


def _read(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize(("type_name", "path"), _optional_paths())
def test_optional_field_may_be_absent_or_null(type_name: str, path: str, encoding: Encoding) -> None:
    """Each optional field: present in VALID and read back; absent or null, it reads as None."""
    decode = decoder_for(type_name)
    present = decode(pack(VALID[type_name], encoding), encoding)
    container, key = _locate(VALID[type_name], path)
    expected = Gift(**container[key]) if path == "gift" else container[key]
    if isinstance(expected, list):
        expected = tuple(expected)  # arrays read back as tuples
    assert _read(present, path) == expected
    absent = decode(pack(without_field(type_name, path), encoding), encoding)
    assert _read(absent, path) is None
    assert absent != present
    # null is the same as absent.
    assert decode(pack(with_field(type_name, path, None), encoding), encoding) == absent


# ---------------------------------------------------------------- wrong types

WRONG_TYPES: list[tuple[str, str, Any]] = [
    # bool where int: Python's True == 1 must not slip through.
    ("send_gift", "qty", True),
    ("hello", "v", True),
    ("welcome", "offset", False),
    ("gift_sent", "gift.cost", True),
    # float where int, even when integral.
    ("send_gift", "qty", 2.0),
    ("send_gift", "qty", 2.5),
    ("pong", "server_time_ms", 5.0),
    ("hello", "offset", 3.0),
    # str where int.
    ("send_gift", "qty", "2"),
    ("balance", "units_per_card", "10"),
    # int / bool / list / map where str.
    ("send_gift", "to", 5),
    ("send_gift", "gift_id", True),
    ("hello", "token", ["a.b"]),
    ("accept", "gift_id", {"id": "g-1"}),
    ("error", "code", 400),
    ("gift_resolved", "gift.state", 1),
    # int / str where bool.
    ("welcome", "recovered", 1),
    ("welcome", "recovered", 0),
    ("welcome", "recovered", "true"),
    # list / str / int where a map (a nested Gift or a balance map).
    ("gift_sent", "gift", [GIFT]),
    ("gift_sent", "gift", list(GIFT.items())),
    ("event", "gift", "g-1"),
    ("error", "gift", 7),
    ("balance", "available", [["note", 10]]),
    ("balance", "held", "note"),
    # map / str where a list.
    ("welcome", "pending", GIFT),
    ("welcome", "pending", "[]"),
    # inside the collections.
    ("welcome", "pending", [GIFT, "g-2"]),
    ("welcome", "pending", [[GIFT]]),
    ("balance", "available", {"note": 1.5}),
    ("balance", "available", {"note": True}),
    ("balance", "available", {"note": "10"}),
    # the scene messages and fields.
    ("send_gift", "quote", 5),
    ("send_gift", "quote", ["q-1"]),
    ("balance", "points", "5"),
    ("balance", "points", True),
    ("join_room", "room", ["carol"]),
    ("leave_room", "room", 7),
    ("open_wish", "target", "10"),
    ("open_wish", "target", 10.0),
    ("open_wish", "kind", {"kind": "note"}),
    ("get_quote", "qty", True),
    ("get_quote", "room", False),
    ("get_room", "top", 10.0),
    ("get_room", "top", "10"),
    ("redeem_frame", "festival", 2025),
    ("bind_mentor", "mentor", {"id": "alice"}),
    ("room", "viewers", True),
    ("room", "top", TOP[0]),
    ("room", "top", "[]"),
    ("room", "top", [TOP[0], "bob"]),
    ("room", "top", [["alice", 180, 1]]),
    ("room", "top.0.points", 1.5),
    ("room", "top.1.rank", True),
    ("room", "top.1.user", 5),
    ("room", "wish_kind", 1),
    ("room", "wish_target", "10"),
    ("room", "wish_progress", 4.0),
    ("room", "points", False),
    ("room", "rank", "2"),
    ("quote", "quote_id", 1),
    ("quote", "cost", 20.0),
    ("quote", "amount", True),
    ("quote", "viewers", "3"),
    ("quote", "expires_at_ms", [1]),
    ("done", "item", ["frame:spring"]),
    ("done", "expires_at_ms", 1.0),
    ("done", "reward", True),
    ("gift_resolved", "gift.amount", True),
    ("gift_resolved", "gift.amount", 18.0),
    ("gift_resolved", "gift.payer", 5),
    ("gift_resolved", "gift.festival", ["spring"]),
    ("gift_resolved", "gift.room", {"room": "carol"}),
    ("welcome", "pending.1.amount", "18"),
]


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize(("type_name", "path", "value"), WRONG_TYPES)
def test_wrong_field_type(type_name: str, path: str, value: Any, encoding: Encoding) -> None:
    frame = pack(with_field(type_name, path, value), encoding)
    err = refused(frame, encoding, ErrorCode.BAD_FIELD, VALID[type_name].get("rid"), decoder_for(type_name))
    assert err.message.startswith(f"field '{display(path)}")


@pytest.mark.parametrize(
    ("type_name", "path"),
    [("send_gift", "to"), ("hello", "token"), ("gift_sent", "gift.kind"), ("error", "message"),
     ("send_gift", "quote"), ("join_room", "room"), ("leave_room", "room"), ("open_wish", "kind"),
     ("get_quote", "room"), ("get_room", "room"), ("redeem_frame", "festival"), ("bind_mentor", "mentor"),
     ("room", "room"), ("room", "wish_kind"), ("room", "top.0.user"), ("quote", "quote_id"), ("done", "item"),
     ("gift_resolved", "gift.payer"), ("gift_resolved", "gift.festival"), ("gift_resolved", "gift.room")],
)
def test_msgpack_bin_where_str(type_name: str, path: str) -> None:
    frame = msgpack.packb(with_field(type_name, path, b"bob"), use_bin_type=True)
    refused(frame, MSGPACK, ErrorCode.BAD_FIELD, VALID[type_name].get("rid"), decoder_for(type_name))


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("rid", [True, 7.0, "7", [7], {"rid": 7}])
def test_ill_typed_rid_is_bad_field_without_rid(rid: Any, encoding: Encoding) -> None:
    refused(pack(with_field("send_gift", "rid", rid), encoding), encoding, ErrorCode.BAD_FIELD, None)


# ---------------------------------------------------------------- out of range

OUT_OF_RANGE: list[tuple[str, str, Any]] = [
    ("send_gift", "qty", 0),
    ("send_gift", "qty", -1),
    ("send_gift", "qty", 1_000_001),
    ("gift_sent", "gift.qty", 0),
    ("gift_sent", "gift.cost", -1),
    ("event", "gift.expires_at_ms", -1),
    ("event", "offset", -1),
    ("event", "offset", MAX_SAFE_INT + 1),
    ("hello", "v", -1),
    ("hello", "v", 1001),
    ("hello", "offset", -1),
    ("welcome", "heartbeat_s", 0),
    ("welcome", "heartbeat_s", 3601),
    ("balance", "units_per_card", 0),
    ("balance", "units_per_card", 1_000_001),
    ("balance", "held", {"note": -1}),
    ("pong", "server_time_ms", -1),
    ("balance", "points", -1),
    ("balance", "points", MAX_SAFE_INT + 1),
    ("open_wish", "target", 0),
    ("open_wish", "target", 1_000_001),
    ("get_quote", "qty", 0),
    ("get_quote", "qty", 1_000_001),
    ("get_room", "top", 0),
    ("get_room", "top", -1),
    ("get_room", "top", 101),
    ("room", "viewers", -1),
    ("room", "viewers", MAX_SAFE_INT + 1),
    ("room", "wish_target", 0),
    ("room", "wish_target", 1_000_001),
    ("room", "wish_progress", -1),
    ("room", "points", -1),
    ("room", "rank", 0),
    ("room", "rank", MAX_SAFE_INT + 1),
    ("room", "top.0.rank", 0),
    ("room", "top.1.points", -1),
    ("room", "top.1.points", MAX_SAFE_INT + 1),
    ("quote", "cost", -1),
    ("quote", "amount", -1),
    ("quote", "viewers", -1),
    ("quote", "expires_at_ms", MAX_SAFE_INT + 1),
    ("done", "expires_at_ms", -1),
    ("done", "reward", -1),
    ("done", "reward", MAX_SAFE_INT + 1),
    ("gift_resolved", "gift.amount", -1),
    ("welcome", "pending.1.amount", MAX_SAFE_INT + 1),
]


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize(("type_name", "path", "value"), OUT_OF_RANGE)
def test_out_of_range(type_name: str, path: str, value: Any, encoding: Encoding) -> None:
    frame = pack(with_field(type_name, path, value), encoding)
    refused(frame, encoding, ErrorCode.BAD_FIELD, VALID[type_name].get("rid"), decoder_for(type_name))


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("rid", [-1, MAX_SAFE_INT + 1, 2**63 - 1], ids=["negative", "2**53", "2**63-1"])
def test_out_of_range_rid_is_bad_field_without_rid(rid: int, encoding: Encoding) -> None:
    err = refused(pack(with_field("send_gift", "rid", rid), encoding), encoding, ErrorCode.BAD_FIELD, None)
    assert "'rid'" in err.message


def test_msgpack_64_bit_extremes_are_out_of_range() -> None:
    for rid in (2**64 - 1, -(2**63)):
        refused(msgpack.packb(with_field("ping", "rid", rid)), MSGPACK, ErrorCode.BAD_FIELD, None)
    refused(msgpack.packb(with_field("send_gift", "qty", 2**64 - 1)), MSGPACK, ErrorCode.BAD_FIELD, 7)


def test_json_integer_beyond_64_bits_is_refused() -> None:
    refused('{"t":"ping","rid":100000000000000000000000000}', JSON, ErrorCode.BAD_FIELD, None)
    err = refused('{"t":"send_gift","rid":7,"gift_id":"g","to":"b","kind":"n","qty":18446744073709551616}',
                  JSON, ErrorCode.BAD_FIELD, 7)
    assert err.message == "field 'qty' must be an integer from 1 to 1000000"


@pytest.mark.parametrize("literal", [str(10**400), str(-(10**400)), "1" * 60_000, "1e400", "-1.5E+999"],
                         ids=["1e400-digits", "negative", "60000-digits", "1e400", "negative-float"])
def test_json_number_beyond_a_double_is_out_of_range_with_the_rid(literal: str) -> None:
    """Not an unreadable frame: a number, out of range for the field, refused with the rid."""
    frame = f'{{"t":"send_gift","rid":7,"gift_id":"g","to":"b","kind":"n","qty":{literal}}}'
    err = refused(frame, JSON, ErrorCode.BAD_FIELD, 7)
    assert "'qty'" in err.message
    # As the rid itself it leaves the error without a rid; in an unknown field it is ignored.
    refused(f'{{"t":"ping","rid":{literal}}}', JSON, ErrorCode.BAD_FIELD, None)
    assert decode_client(f'{{"t":"ping","rid":7,"x":[{literal}]}}', JSON) == Ping(rid=7)


def test_huge_numbers_do_not_make_invalid_json_valid() -> None:
    huge = str(10**400)
    for frame in (f'{{"t":"ping","rid":{huge},}}', f'{{"t":"ping","rid":7,"x":"{huge}}}',
                  f'{{"t":"ping","rid":7,"x":{huge}.}}', f'{{"t":"ping","rid":7,"x":NaN{huge}}}'):
        refused(frame, JSON, ErrorCode.BAD_FRAME, None)


IN_RANGE_EDGES: list[tuple[str, str, Any]] = [
    ("send_gift", "qty", 1),
    ("send_gift", "qty", 1_000_000),
    ("send_gift", "rid", 0),
    ("send_gift", "rid", MAX_SAFE_INT),
    ("hello", "v", 0),
    ("hello", "v", 1000),
    ("welcome", "heartbeat_s", 1),
    ("welcome", "heartbeat_s", 3600),
    ("event", "offset", MAX_SAFE_INT),
    ("send_gift", "gift_id", "x" * 64),
    ("send_gift", "gift_id", "A-z_0.9:x"),
    ("send_gift", "kind", "k" * 32),
    ("hello", "token", "t" * 2048),
    ("hello", "epoch", "e" * 64),
    ("welcome", "node", "n" * 128),
    ("error", "message", "m" * 512),
    ("error", "message", ""),
    ("error", "code", "C" * 64),
    ("balance", "available", {}),
    ("welcome", "pending", []),
    ("send_gift", "quote", "q" * 64),
    ("send_gift", "quote", "A-z_0.9:q"),
    ("balance", "points", 0),
    ("balance", "points", MAX_SAFE_INT),
    ("join_room", "room", "r" * 64),
    ("open_wish", "target", 1),
    ("open_wish", "target", 1_000_000),
    ("get_quote", "qty", 1),
    ("get_quote", "qty", 1_000_000),
    ("get_room", "top", 1),
    ("get_room", "top", 100),
    ("redeem_frame", "festival", "f" * 64),
    ("bind_mentor", "mentor", "u:1.a_b-c"),
    ("room", "viewers", 0),
    ("room", "viewers", MAX_SAFE_INT),
    ("room", "top", []),
    ("room", "rid", 0),
    ("room", "wish_kind", "k" * 32),
    ("room", "wish_target", 1),
    ("room", "wish_target", 1_000_000),
    ("room", "wish_progress", 0),
    ("room", "points", 0),
    ("room", "rank", 1),
    ("room", "rank", MAX_SAFE_INT),
    ("quote", "quote_id", "q" * 64),
    ("quote", "cost", 0),
    ("quote", "amount", 0),
    ("quote", "expires_at_ms", MAX_SAFE_INT),
    ("done", "item", "i" * 64),
    ("done", "expires_at_ms", 0),
    ("done", "reward", 0),
]


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize(("type_name", "path", "value"), IN_RANGE_EDGES)
def test_values_at_the_edges_are_accepted(type_name: str, path: str, value: Any, encoding: Encoding) -> None:
    decoded = decoder_for(type_name)(pack(with_field(type_name, path, value), encoding), encoding)
    got = getattr(decoded, path)
    assert got == (tuple(value) if isinstance(value, list) else value)


# ---------------------------------------------------------------- identifiers and strings

BAD_STRINGS: list[tuple[str, str, Any]] = [
    ("send_gift", "gift_id", ""),
    ("send_gift", "gift_id", "x" * 65),
    ("send_gift", "gift_id", "a b"),
    ("send_gift", "gift_id", "a/b"),
    ("send_gift", "gift_id", "{tag}"),
    ("send_gift", "gift_id", "évil"),
    ("send_gift", "gift_id", "g-1\n"),
    ("send_gift", "gift_id", "g\x00"),
    ("send_gift", "to", "bob*"),
    ("accept", "gift_id", "x" * 1000),
    ("send_gift", "kind", "Note"),
    ("send_gift", "kind", "gold-note"),
    ("send_gift", "kind", "k" * 33),
    ("send_gift", "kind", ""),
    ("hello", "token", "abc.def="),  # base64url padding is not part of the token alphabet
    ("hello", "token", "abc def"),
    ("hello", "token", "t" * 2049),
    ("hello", "token", ""),
    ("hello", "epoch", "a.b"),
    ("hello", "epoch", "e" * 65),
    ("welcome", "node", "n" * 129),
    ("welcome", "user", "bob!"),
    ("error", "code", "bad_field"),
    ("error", "code", "C" * 65),
    ("error", "message", "nul\x00inside"),
    ("error", "message", "m" * 513),
    ("event", "event", "gift"),
    ("event", "event", "offer "),
    ("event", "gift.state", "PENDING"),
    ("event", "gift.state", "cancelled"),
    ("event", "gift.state", "pendingaccepted"),
    ("event", "gift.sender", "a:b/c"),
    ("balance", "available", {"Note": 10}),
    ("balance", "held", {"": 0}),
    ("send_gift", "quote", ""),
    ("send_gift", "quote", "q" * 65),
    ("send_gift", "quote", "q 1"),
    ("join_room", "room", "room 1"),
    ("join_room", "room", "r" * 65),
    ("leave_room", "room", ""),
    ("open_wish", "kind", "Gold"),
    ("open_wish", "kind", "k" * 33),
    ("get_quote", "room", "r/1"),
    ("get_quote", "kind", "gold-note"),
    ("get_room", "room", "évil"),
    ("redeem_frame", "festival", "spring festival"),
    ("redeem_frame", "festival", ""),
    ("bind_mentor", "mentor", "m" * 65),
    ("bind_mentor", "mentor", "{alice}"),
    ("room", "room", "carol\n"),
    ("room", "wish_kind", "NOTE"),
    ("room", "wish_kind", ""),
    ("room", "top.0.user", "a b"),
    ("room", "top.1.user", ""),
    ("quote", "quote_id", "q\x00"),
    ("quote", "room", "c" * 65),
    ("done", "item", "frame:spring/2025"),
    ("done", "item", ""),
    ("gift_resolved", "gift.payer", "promo!"),
    ("gift_resolved", "gift.festival", ""),
    ("gift_resolved", "gift.room", "x" * 65),
    ("welcome", "pending.1.payer", "p q"),
]


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize(("type_name", "path", "value"), BAD_STRINGS)
def test_bad_string(type_name: str, path: str, value: Any, encoding: Encoding) -> None:
    frame = pack(with_field(type_name, path, value), encoding)
    err = refused(frame, encoding, ErrorCode.BAD_FIELD, VALID[type_name].get("rid"), decoder_for(type_name))
    if isinstance(value, str) and len(value) > 3:
        assert value not in err.message  # the peer's input is never echoed


# ---------------------------------------------------------------- nested gifts


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize(
    ("type_name", "path", "value"),
    [
        ("gift_sent", "gift", {}),
        ("gift_resolved", "gift.qty", 0),
        ("event", "gift.state", "held"),
        ("welcome", "pending.1.kind", "NOTE"),
        ("welcome", "pending.0", []),
        ("welcome", "pending.1.created_at_ms", 1.0),
        ("error", "gift.gift_id", "bad id"),  # an optional gift, when present, must be valid
        ("error", "gift", {}),
        ("gift_resolved", "gift.amount", -1),  # the optional scene fields, when present, must be valid
        ("welcome", "pending.1.room", "bad room"),
        ("error", "gift.festival", ""),
        ("room", "top.0", []),
        ("room", "top.1", {}),
        ("room", "top.1", "bob"),
        ("room", "top", [{}]),
        ("room", "top.0.rank", -3),
    ],
)
def test_nested_gift_malformed(type_name: str, path: str, value: Any, encoding: Encoding) -> None:
    frame = pack(with_field(type_name, path, value), encoding)
    refused(frame, encoding, ErrorCode.BAD_FIELD, VALID[type_name].get("rid"), decode_server)


# ---------------------------------------------------------------- msgpack oddities


def _raw_map(*pairs: bytes) -> bytes:
    """A msgpack map built from already-packed key/value bytes (keys msgpack.packb refuses)."""
    assert len(pairs) % 2 == 0
    return bytes([0x80 | len(pairs) // 2]) + b"".join(pairs)


P = msgpack.packb


def test_unhashable_keys_are_bad_frame() -> None:
    # A map keyed by an array and a map keyed by a map: valid msgpack, no Python dict.
    ping = (P("t"), P("ping"), P("rid"), P(7))
    refused(_raw_map(*ping, P([1, 2]), P(1)), MSGPACK, ErrorCode.BAD_FRAME, None)
    refused(_raw_map(*ping, P({"a": 1}), P(1)), MSGPACK, ErrorCode.BAD_FRAME, None)
    nested = _raw_map(P([1]), P(1))
    refused(_raw_map(P("t"), P("gift_sent"), P("rid"), P(7), P("gift"), nested), MSGPACK, ErrorCode.BAD_FRAME,
            None, decode_server)
    top = b"\x91" + nested  # a leaderboard of one line keyed by an array
    refused(_raw_map(P("t"), P("room"), P("room"), P("carol"), P("viewers"), P(1), P("rid"), P(7), P("top"), top),
            MSGPACK, ErrorCode.BAD_FRAME, None, decode_server)


def test_hashable_odd_keys_are_ignored_but_do_not_stand_in_for_names() -> None:
    frame = _raw_map(P("t"), P("ping"), P("rid"), P(7), P(msgpack.ExtType(1, b"k")), P(1), P(b"x"), P(2))
    assert decode_client(frame, MSGPACK).TYPE == "ping"
    # bin "t" / "rid" keys are not the str keys.
    refused(_raw_map(P(b"t", use_bin_type=True), P("ping"), P("rid"), P(7)), MSGPACK, ErrorCode.BAD_FRAME, 7)
    # A gift whose keys are all integers is missing every field.
    gift = P({i: v for i, v in enumerate(GIFT.values())})
    frame = _raw_map(P("t"), P("gift_sent"), P("rid"), P(7), P("gift"), gift)
    refused(frame, MSGPACK, ErrorCode.BAD_FIELD, 7, decode_server)


def test_ext_types() -> None:
    ext = msgpack.ExtType(5, b"\x00\x01")
    refused(P(ext), MSGPACK, ErrorCode.BAD_FRAME, None)
    refused(P({"t": ext, "rid": 7}), MSGPACK, ErrorCode.BAD_FRAME, 7)
    refused(P({"t": "ping", "rid": ext}), MSGPACK, ErrorCode.BAD_FIELD, None)
    refused(P(with_field("send_gift", "qty", ext)), MSGPACK, ErrorCode.BAD_FIELD, 7)
    refused(P(with_field("send_gift", "to", ext)), MSGPACK, ErrorCode.BAD_FIELD, 7)
    refused(P(with_field("gift_sent", "gift", ext)), MSGPACK, ErrorCode.BAD_FIELD, 7, decode_server)
    # ExtType is a tuple subclass in Python: it must not pass for a list of gifts.
    err = refused(P(with_field("welcome", "pending", ext)), MSGPACK, ErrorCode.BAD_FIELD, None, decode_server)
    assert "'pending' must be a list" in err.message
    refused(P(with_field("welcome", "pending", msgpack.ExtType(1, b""))), MSGPACK, ErrorCode.BAD_FIELD, None,
            decode_server)
    err = refused(P(with_field("room", "top", ext)), MSGPACK, ErrorCode.BAD_FIELD, 7, decode_server)
    assert "'top' must be a list" in err.message
    refused(P(with_field("room", "top.0", ext)), MSGPACK, ErrorCode.BAD_FIELD, 7, decode_server)
    refused(P(with_field("send_gift", "quote", ext)), MSGPACK, ErrorCode.BAD_FIELD, 7)
    refused(P(with_field("gift_resolved", "gift.amount", ext)), MSGPACK, ErrorCode.BAD_FIELD, 7, decode_server)


def test_timestamp_ext() -> None:
    # Ext type -1 is msgpack's timestamp; a valid one is an ill-typed value, a broken one a bad frame.
    stamp = msgpack.Timestamp(1_700_000_000, 0)
    refused(P(with_field("pong", "server_time_ms", stamp)), MSGPACK, ErrorCode.BAD_FIELD, 7, decode_server)
    broken = b"\xd7\xff" + b"\xff" * 8  # nanoseconds above 999999999
    refused(_raw_map(P("t"), P("ping"), P("rid"), broken), MSGPACK, ErrorCode.BAD_FRAME, None)


# ---------------------------------------------------------------- size


def _padded(encoding: Encoding, size: int, filler: str = "x") -> Frame:
    """A valid ping of exactly ``size`` bytes on the wire, padded in an unknown field."""
    def size_of(frame: Frame) -> int:
        return len(frame.encode() if isinstance(frame, str) else frame)

    base = size_of(pack({"t": "ping", "rid": 7, "pad": ""}, encoding))
    # msgpack's str header grows with the length, and a wide filler moves in steps of its
    # width: fill with it, then top up with single-byte characters.
    fill = filler * ((size - base - 8) // len(filler.encode()))
    for extra in range(0, 16):
        frame = pack({"t": "ping", "rid": 7, "pad": fill + "x" * extra}, encoding)
        if size_of(frame) == size:
            return frame
    raise AssertionError("could not pad to size")


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_frame_of_exactly_the_limit_is_accepted(encoding: Encoding) -> None:
    assert decode_client(_padded(encoding, MAX_FRAME_BYTES), encoding).TYPE == "ping"


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("size", [MAX_FRAME_BYTES + 1, 4 * MAX_FRAME_BYTES])
def test_oversize_frame(encoding: Encoding, size: int) -> None:
    err = refused(_padded(encoding, size), encoding, ErrorCode.BAD_FRAME, None)
    assert str(MAX_FRAME_BYTES) in err.message


def test_oversize_json_is_counted_in_utf8_bytes_not_characters() -> None:
    # Under the limit in characters, over it in bytes: two bytes per "é", three per "音".
    for filler in ("é", "音"):
        frame = _padded(JSON, MAX_FRAME_BYTES + 1, filler)
        assert isinstance(frame, str)
        assert len(frame) < MAX_FRAME_BYTES
        refused(frame, JSON, ErrorCode.BAD_FRAME, None)
    assert decode_client(_padded(JSON, MAX_FRAME_BYTES - 1, "音"), JSON).TYPE == "ping"


def test_oversize_is_checked_before_parsing() -> None:
    # Not even valid msgpack/JSON: the size alone is the reason.
    err = refused(b"\xc1" * (MAX_FRAME_BYTES + 1), MSGPACK, ErrorCode.BAD_FRAME, None)
    assert "larger" in err.message
    err = refused("{" * (MAX_FRAME_BYTES + 1), JSON, ErrorCode.BAD_FRAME, None)
    assert "larger" in err.message


# ---------------------------------------------------------------- deep nesting


def test_deeply_nested_json() -> None:
    depth = 30_000
    refused("[" * depth + "]" * depth, JSON, ErrorCode.BAD_FRAME, None)
    refused('{"t":"ping","rid":7,"x":' + "[" * depth + "]" * depth + "}", JSON, ErrorCode.BAD_FRAME, None)
    maps = '{"a":' * 10_000 + "1" + "}" * 10_000
    refused('{"t":"ping","rid":7,"x":' + maps + "}", JSON, ErrorCode.BAD_FRAME, None)
    # Moderate nesting in an unknown field is simply ignored.
    assert decode_client('{"t":"ping","rid":7,"x":' + "[" * 200 + "]" * 200 + "}", JSON).TYPE == "ping"
    # Nesting where a gift belongs is an ill-typed field, reported with the rid.
    refused('{"t":"gift_sent","rid":7,"gift":' + "[" * 200 + "]" * 200 + "}", JSON, ErrorCode.BAD_FIELD, 7,
            decode_server)


def test_deeply_nested_msgpack() -> None:
    depth = 60_000
    refused(b"\x91" * depth + b"\xc0", MSGPACK, ErrorCode.BAD_FRAME, None)
    inside = _raw_map(P("t"), P("ping"), P("rid"), P(7), P("x"), b"\x91" * depth + b"\xc0")
    refused(inside, MSGPACK, ErrorCode.BAD_FRAME, None)
    maps = b"\x81\xa1a" * depth + b"\xc0"
    refused(_raw_map(P("t"), P("ping"), P("rid"), P(7), P("x"), maps), MSGPACK, ErrorCode.BAD_FRAME, None)
    moderate = _raw_map(P("t"), P("ping"), P("rid"), P(7), P("x"), b"\x91" * 200 + b"\xc0")
    assert decode_client(moderate, MSGPACK).TYPE == "ping"
    deep_gift = _raw_map(P("t"), P("gift_sent"), P("rid"), P(7), P("gift"), b"\x91" * 200 + b"\xc0")
    refused(deep_gift, MSGPACK, ErrorCode.BAD_FIELD, 7, decode_server)
