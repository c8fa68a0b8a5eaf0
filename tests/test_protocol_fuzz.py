"""Fuzzing the decoders: whatever arrives, the answer is a message or a ProtocolError.

Four sources of input, about 2000 examples in all (a few seconds):

- random bytes and random text, on both encodings;
- random JSON-like / msgpack-like values, most of them shaped like our messages (known
  keys and type names, valid maps with a few fields replaced);
- byte- and character-level mutations of valid frames.

For each input and both decoders: a decoded message re-encodes to a frame that decodes to
the same message; a refusal is a ProtocolError with a documented code, a valid or absent
rid (the frame's own rid whenever it had a valid one), and a message the server can send
back as an ``error`` frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocol import (
    CLIENT_MESSAGES,
    MAX_FRAME_BYTES,
    SERVER_MESSAGES,
    AcceptGift,
    Balance,
    Encoding,
    Error,
    ErrorCode,
    Event,
    Frame,
    Gift,
    GiftResolved,
    GiftSent,
    Hello,
    Ping,
    ProtocolError,
    SendGift,
    Welcome,
    WireObject,
    decode_client,
    decode_server,
    encode,
    to_wire,
)
from protocol.schema import MAX_SAFE_INT

MSGPACK, JSON = Encoding.MSGPACK, Encoding.JSON
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_GIFT = Gift(gift_id="g-1", sender="alice", recipient="bob", kind="note", qty=2, cost=20, state="pending",
             created_at_ms=1_700_000_000_000, expires_at_ms=1_700_000_060_000)
SEEDS: list[WireObject] = [
    Hello(v=1, token="a.b", epoch="e1", offset=3),
    SendGift(rid=7, gift_id="g-1", to="bob", kind="note", qty=2),
    AcceptGift(rid=8, gift_id="g-1"),
    Ping(rid=9),
    Welcome(user="bob", node="n1", epoch="e1", offset=3, recovered=False, pending=(_GIFT,), heartbeat_s=20),
    GiftSent(rid=7, gift=_GIFT),
    GiftResolved(rid=8, gift=_GIFT),
    Balance(rid=10, available={"note": 10}, held={"note": 0}, units_per_card=10),
    Error(code="BAD_FIELD", message="m", rid=7, gift=_GIFT),
    Event(epoch="e1", offset=4, event="offer", gift=_GIFT),
]
SEED_FRAMES: dict[Encoding, list[Frame]] = {e: [encode(m, e) for m in SEEDS] for e in Encoding}

TYPE_NAMES = sorted(CLIENT_MESSAGES) + sorted(SERVER_MESSAGES)
FIELD_NAMES = sorted(
    {"t"} | {s.name for c in (*CLIENT_MESSAGES.values(), *SERVER_MESSAGES.values(), Gift) for s in c.FIELDS}
)

# ---------------------------------------------------------------- the property


def _size(frame: Frame) -> int:
    return len(frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame)


def check(frame: Frame, encoding: Encoding, raw: Any = None) -> None:
    """The decoding contract, for both sides. ``raw`` is the value the frame was packed from."""
    expected_rid = None
    if isinstance(raw, dict) and _size(frame) <= MAX_FRAME_BYTES:
        rid = raw.get("rid")
        if type(rid) is int and 0 <= rid <= MAX_SAFE_INT:
            expected_rid = rid
    for decode in (decode_client, decode_server):
        outcome = _outcome(decode, frame, encoding)
        if isinstance(outcome, ProtocolError):
            err = outcome
            event(f"{decode.__name__}: {err.code}")  # --hypothesis-show-statistics shows the mix
            assert err.code in (ErrorCode.BAD_FRAME, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_FIELD)
            if expected_rid is not None:
                assert err.rid == expected_rid
            else:
                assert err.rid is None or (type(err.rid) is int and 0 <= err.rid <= MAX_SAFE_INT)
            report = Error(code=err.code, message=err.message, rid=err.rid)
            assert decode_server(encode(report, encoding), encoding) == report
        else:
            msg = outcome
            event(f"{decode.__name__}: decoded")
            assert decode(encode(msg, encoding), encoding) == msg
            assert isinstance(msg, tuple(CLIENT_MESSAGES.values()) if decode is decode_client
                              else tuple(SERVER_MESSAGES.values()))


def _outcome(decode: Callable[[Frame, Encoding], WireObject], frame: Frame, encoding: Encoding
             ) -> WireObject | ProtocolError:
    """The message, or the ProtocolError; any other exception propagates and fails the test."""
    try:
        return decode(frame, encoding)
    except ProtocolError as err:
        return err


# ---------------------------------------------------------------- random frames


@settings(FUZZ, max_examples=300)
@given(st.binary(max_size=256))
def test_random_bytes(data: bytes) -> None:
    check(data, MSGPACK)
    check(data, JSON)  # bytes on a text connection


@settings(FUZZ, max_examples=200)
@given(st.text(max_size=256))
def test_random_text(text: str) -> None:
    check(text, JSON)
    check(text, MSGPACK)  # text on a binary connection


# ---------------------------------------------------------------- random values

_ints = st.integers(-(2**63), 2**64 - 1) | st.sampled_from([-1, 0, 1, 1_000_000, 1_000_001, MAX_SAFE_INT,
                                                           MAX_SAFE_INT + 1])
_names = st.sampled_from([*TYPE_NAMES, "pending", "accepted", "declined", "expired", "offer", "outcome",
                          "note", "g-1", "bob", "a.b", "e1"])
_json_scalars = st.none() | st.booleans() | _ints | st.floats() | st.text(max_size=40) | _names
_keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=10)


def _containers(keys: st.SearchStrategy[Any]) -> Any:
    return lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6)


json_values = st.recursive(_json_scalars, _containers(_keys), max_leaves=15)
_msgpack_scalars = (
    _json_scalars
    | st.binary(max_size=16)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
)
_msgpack_keys = _keys | _ints | st.binary(max_size=4) | st.none() | st.booleans() | st.floats(allow_nan=False)
msgpack_values = st.recursive(_msgpack_scalars, _containers(_msgpack_keys), max_leaves=15)


@st.composite
def _patched(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> dict[str, Any]:
    """A valid message map with one to three of its own fields (or its gift's) replaced."""
    wire = dict(draw(st.sampled_from([to_wire(m) for m in SEEDS])))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(list(wire)))
        if key == "gift" and isinstance(wire["gift"], dict) and wire["gift"] and draw(st.booleans()):
            gift = dict(wire["gift"])
            gift[draw(st.sampled_from(list(gift)))] = draw(values)
            wire["gift"] = gift
        else:
            wire[key] = draw(values)
    return wire


def _message_like(values: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Maps that look like messages: valid ones with fields replaced or added, or made-up ones."""
    valid = st.sampled_from([to_wire(m) for m in SEEDS])
    added = st.builds(lambda base, extra: {**base, **extra}, valid, st.dictionaries(keys, values, max_size=3))
    made_up = st.builds(lambda t, rest: {"t": t, **rest}, _names | values,
                        st.dictionaries(keys, values, max_size=8))
    return st.one_of(_patched(values), _patched(values), added, made_up, values)


@settings(FUZZ, max_examples=400)
@given(_message_like(json_values, _keys))
def test_json_like_values(raw: Any) -> None:
    text = orjson.dumps(raw).decode()
    # orjson writes NaN/inf as null; rid expectations are computed from what travels.
    check(text, JSON, orjson.loads(text))
    packed = msgpack.packb(raw, use_bin_type=True)
    check(packed, MSGPACK, raw)


@settings(FUZZ, max_examples=300)
@given(_message_like(msgpack_values, _msgpack_keys))
def test_msgpack_like_values(raw: Any) -> None:
    check(msgpack.packb(raw, use_bin_type=True), MSGPACK, raw)


# ---------------------------------------------------------------- mutations of valid frames


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEED_FRAMES[MSGPACK])))  # type: ignore[arg-type]
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xA0, 0xC0, 0xC1, 0xC2, 0xC4, 0xCC, 0xCF,
                                             0xD3, 0xD4, 0xD7, 0xDC, 0xDE, 0xDF, 0xFF]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@settings(FUZZ, max_examples=400)
@given(mutated_bytes())
def test_mutated_msgpack_frames(frame: bytes) -> None:
    check(frame, MSGPACK)


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEED_FRAMES[JSON]))
    assert isinstance(text, str)
    for _ in range(draw(st.integers(1, 3))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        piece = draw(st.sampled_from(['"', "{", "}", "[", "]", ",", ":", "-", "0", "1e9", "true", "null",
                                      "\\", "\\u0000", "\ud800", "9007199254740992", " "])
                     | st.text(max_size=3))
        if op == "replace":
            text = text[:at] + piece + text[at + 1 :]
        elif op == "insert":
            text = text[:at] + piece + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 6)) :]
        else:
            text = text[:at]
    return text


@settings(FUZZ, max_examples=300)
@given(mutated_text())
def test_mutated_json_frames(frame: str) -> None:
    check(frame, JSON)


def test_seed_frames_decode() -> None:
    """The mutation seeds are valid, so mutations start from the deep end of the decoder."""
    for encoding, frames in SEED_FRAMES.items():
        for frame, msg in zip(frames, SEEDS, strict=True):
            decode = decode_client if msg.TYPE in CLIENT_MESSAGES else decode_server
            assert decode(frame, encoding) == msg
