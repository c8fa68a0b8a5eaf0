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
    Balance,
    DeclineGift,
    Encoding,
    Error,
    ErrorCode,
    Event,
    EventKind,
    FieldError,
    FrameError,
    GetBalance,
    Gift,
    GiftResolved,
    GiftSent,
    GiftState,
    Hello,
    Message,
    Ping,
    Pong,
    ProtocolError,
    SendGift,
    Welcome,
    decode_client,
    decode_server,
    encode,
    encoding_for,
    to_wire,
)
from protocol.schema import MAX_SAFE_INT, Pattern, Range, compile_fields

T0 = 1_700_000_000_000

OFFER = Gift(
    gift_id="g-01HV3K9Z", sender="alice", recipient="bob", kind="note", qty=2, cost=20,
    state="pending", created_at_ms=T0, expires_at_ms=T0 + 60_000,
)
ACCEPTED = dataclasses.replace(OFFER, state="accepted")
EXPIRED = dataclasses.replace(OFFER, gift_id="g-old", state="expired", kind="gold_note", qty=1_000_000,
                              cost=MAX_SAFE_INT)

#: Every message class with its optional fields absent and present, nested Gift included,
#: and values at the edges of their ranges.
SAMPLES: dict[str, Message] = {
    "hello/fresh": Hello(v=PROTOCOL_VERSION, token="eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"),
    "hello/resume": Hello(v=1, token="a.b", epoch="9f2c41d07a3b", offset=41),
    "hello/resume-from-zero": Hello(v=1, token="a.b", epoch="e", offset=0),
    "send_gift": SendGift(rid=1, gift_id="g-01HV3K9Z", to="bob", kind="note", qty=2),
    "send_gift/edges": SendGift(rid=MAX_SAFE_INT, gift_id="x" * 64, to="u:1.a_b-c", kind="k" * 32,
                                qty=1_000_000),
    "send_gift/rid-zero": SendGift(rid=0, gift_id="g", to="b", kind="n", qty=1),
    "accept": AcceptGift(rid=2, gift_id="g-01HV3K9Z"),
    "decline": DeclineGift(rid=3, gift_id="g-01HV3K9Z"),
    "get_balance": GetBalance(rid=4),
    "ping": Ping(rid=5),
    "welcome/empty": Welcome(user="bob", node="node-1", epoch="9f2c41d07a3b", offset=0, recovered=True,
                             pending=(), heartbeat_s=20),
    "welcome/pending": Welcome(user="bob", node="gw-a:8765", epoch="9f2c41d07a3b", offset=41,
                               recovered=False, pending=(OFFER, EXPIRED), heartbeat_s=3600),
    "gift_sent": GiftSent(rid=1, gift=OFFER),
    "gift_resolved": GiftResolved(rid=2, gift=ACCEPTED),
    "balance": Balance(rid=4, available={"note": 980, "gold_note": 0}, held={"note": 20},
                       units_per_card=10),
    "balance/empty": Balance(rid=4, available={}, held={}, units_per_card=1),
    "pong": Pong(rid=5, server_time_ms=T0),
    "error/frame": Error(code="BAD_FRAME", message="frame is not valid JSON"),
    "error/request": Error(code="INSUFFICIENT_BALANCE", message="not enough cards of this kind", rid=1),
    "error/with-gift": Error(code="ALREADY_RESOLVED", message="the gift was already resolved", rid=3,
                             gift=ACCEPTED),
    "error/unicode": Error(code="INTERNAL", message="désolé, 出错了 \n\t ok", rid=9),
    "error/empty-message": Error(code="X", message=""),
    "event/offer": Event(epoch="9f2c41d07a3b", offset=42, event="offer", gift=OFFER),
    "event/outcome": Event(epoch="9f2c41d07a3b", offset=43, event="outcome", gift=ACCEPTED),
}

ENCODINGS = list(Encoding)


def _decoder(msg: Message):  # type: ignore[no-untyped-def]
    return decode_client if msg.TYPE in CLIENT_MESSAGES else decode_server


# ---------------------------------------------------------------- round trips


def test_samples_cover_every_message_class() -> None:
    covered = {type(m) for m in SAMPLES.values()}
    assert covered == set(CLIENT_MESSAGES.values()) | set(SERVER_MESSAGES.values())


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
    # Nested gifts come back as Gift objects and lists as tuples, not raw maps and lists.
    for field in dataclasses.fields(decoded):
        value = getattr(decoded, field.name)
        if isinstance(value, tuple):
            assert all(type(item) is Gift for item in value)
        assert not isinstance(value, list)


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
    wire["gift"]["amount"] = 18
    frame = msgpack.packb(wire) if encoding is Encoding.MSGPACK else orjson.dumps(wire).decode()
    assert decode_server(frame, encoding) == SAMPLES["gift_sent"]


def test_keys_that_are_not_strings_are_ignored_in_msgpack() -> None:
    frame = msgpack.packb({"t": "ping", "rid": 1, 7: "x", b"rid": 99, 1.5: None, None: 0, True: 1})
    assert decode_client(frame, Encoding.MSGPACK) == Ping(rid=1)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_null_optional_field_reads_as_absent(encoding: Encoding) -> None:
    wire = {"t": "hello", "v": 1, "token": "a.b", "epoch": None, "offset": None}
    frame = msgpack.packb(wire) if encoding is Encoding.MSGPACK else orjson.dumps(wire).decode()
    assert decode_client(frame, encoding) == Hello(v=1, token="a.b")


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
    assert set(CLIENT_MESSAGES) == {"hello", "send_gift", "accept", "decline", "get_balance", "ping"}
    assert set(SERVER_MESSAGES) == {
        "welcome", "gift_sent", "gift_resolved", "balance", "pong", "error", "event",
    }
    for name, cls in {**CLIENT_MESSAGES, **SERVER_MESSAGES}.items():
        assert name == cls.TYPE


def test_every_request_carries_a_rid_and_every_reply_echoes_it() -> None:
    requests = {n for n, c in CLIENT_MESSAGES.items() if "rid" in {f.name for f in dataclasses.fields(c)}}
    assert requests == {"send_gift", "accept", "decline", "get_balance", "ping"}
    replies = {n for n, c in SERVER_MESSAGES.items() if "rid" in {f.name for f in dataclasses.fields(c)}}
    assert replies == {"gift_sent", "gift_resolved", "balance", "pong", "error"}


def test_error_codes_are_stable_strings() -> None:
    for code in ErrorCode:
        assert code.value == code.name
    assert len({c.value for c in ErrorCode}) == len(ErrorCode)
    assert {ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE} == RETRYABLE_CODES


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
    assert [k.value for k in EventKind] == ["offer", "outcome"]


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
