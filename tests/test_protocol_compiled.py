"""The generated decoders and encoders (protocol/compiled.py) against the reference ones.

The fast path must accept exactly what the table-driven validator of protocol/schema.py
accepts, build equal objects, and leave every refusal to it; the encoders must write the
same maps and bytes. Checked here on tens of thousands of generated inputs: valid maps of
every message with one to three things broken (at the top, in gifts, leaderboards and
balance maps), hypothesis-made values, and class shapes no message uses yet.

``oracle_decode`` is the decoder as it was before the fast path (byte for byte the old
``protocol.codec._decode``), kept here as the specification.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random
import threading
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    CLIENT_MESSAGES,
    MAX_FRAME_BYTES,
    SERVER_MESSAGES,
    Encoding,
    ErrorCode,
    FrameError,
    Gift,
    GiftSent,
    Ping,
    ProtocolError,
    RankEntry,
    Welcome,
    decode_client,
    decode_server,
    encode,
    to_wire,
)
from protocol import codec as codec_module
from protocol.compiled import Invalid, compile_decoder, compile_encoder, reference_wire
from protocol.messages import CardKind, Ident, Millis, Quantity, WireObject, message
from protocol.schema import MAX_SAFE_INT, Range, compile_fields, parse_fields
from tests.test_protocol_codec import OFFER, SAMPLES
from tests.test_protocol_fuzz import _message_like, json_values, msgpack_values
from tests.test_protocol_malformed import VALID

MSGPACK, JSON = Encoding.MSGPACK, Encoding.JSON
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TABLES: dict[str, Mapping[str, type[WireObject]]] = {"client": CLIENT_MESSAGES, "server": SERVER_MESSAGES}
DECODERS: dict[str, Callable[[Any, Encoding], Any]] = {"client": decode_client, "server": decode_server}

# ---------------------------------------------------------------- the oracle


def oracle_load(frame: Any, encoding: Encoding) -> Any:
    """The loader before the fast path (it always encoded text frames to bytes first)."""
    too_big = FrameError(ErrorCode.BAD_FRAME, f"frame larger than {MAX_FRAME_BYTES} bytes")
    if encoding is MSGPACK:
        if not isinstance(frame, bytes):
            raise FrameError(ErrorCode.BAD_FRAME, "this connection expects binary msgpack frames")
        if len(frame) > MAX_FRAME_BYTES:
            raise too_big
        try:
            return msgpack.unpackb(frame, raw=False, strict_map_key=False)
        except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException):
            raise FrameError(ErrorCode.BAD_FRAME, "frame is not valid msgpack") from None
    if not isinstance(frame, str):
        raise FrameError(ErrorCode.BAD_FRAME, "this connection expects text JSON frames")
    if len(frame) > MAX_FRAME_BYTES:
        raise too_big
    data = frame.encode("utf-8", "surrogatepass")
    if len(data) > MAX_FRAME_BYTES:
        raise too_big
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FrameError(ErrorCode.BAD_FRAME, "frame is not valid JSON") from None


def oracle_parse(raw: Any, table: Mapping[str, type[WireObject]]) -> Any:
    if not isinstance(raw, dict):
        raise FrameError(ErrorCode.BAD_FRAME, "a frame must hold a map")
    rid = raw.get("rid")
    if type(rid) is not int or not 0 <= rid <= MAX_SAFE_INT:
        rid = None
    type_name = raw.get("t")
    if not isinstance(type_name, str):
        raise FrameError(ErrorCode.BAD_FRAME, "a frame must have a string field 't'", rid)
    cls = table.get(type_name)
    if cls is None:
        raise FrameError(ErrorCode.UNKNOWN_TYPE, "unknown message type", rid)
    return reference_object(cls, raw, rid)


def reference_object(cls: type[WireObject], raw: dict[Any, Any], rid: int | None) -> Any:
    try:
        return cls(**parse_fields(cls.FIELDS, raw, rid))
    except ProtocolError:
        raise
    except (TypeError, ValueError, RecursionError):
        raise FrameError(ErrorCode.BAD_FRAME, "frame has malformed values", rid) from None


def oracle_decode(frame: Any, encoding: Encoding, side: str) -> Any:
    return oracle_parse(oracle_load(frame, encoding), TABLES[side])


# ---------------------------------------------------------------- comparing outcomes


def deep(value: Any) -> Any:
    """``value`` with every type spelled out: True and 1, a list and a tuple differ."""
    if isinstance(value, WireObject):
        return type(value), tuple((s.name, deep(getattr(value, s.name))) for s in value.FIELDS)
    if isinstance(value, list | tuple):
        return type(value), tuple(deep(v) for v in value)
    if isinstance(value, dict):
        return type(value), tuple((deep(k), deep(v)) for k, v in value.items())
    return type(value), value


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return "decoded", deep(call())
    except ProtocolError as err:
        return "refused", type(err), err.code, err.message, err.rid


def assert_same_decoding(frame: Any, encoding: Encoding) -> None:
    for side, decode in DECODERS.items():
        expected = outcome(lambda side=side: oracle_decode(frame, encoding, side))  # type: ignore[misc]
        assert outcome(lambda decode=decode: decode(frame, encoding)) == expected, (side, frame)  # type: ignore[misc]


def assert_same_parsing(raw: Any) -> None:
    """On a loaded map: the fast decoder accepts exactly when the reference does, equally."""
    type_name = raw.get("t") if isinstance(raw, dict) else None
    for table in TABLES.values():
        expected = outcome(lambda table=table: oracle_parse(raw, table))  # type: ignore[misc]
        cls = table.get(type_name) if type(type_name) is str else None
        if cls is None:
            continue
        try:
            fast = ("decoded", deep(compile_decoder(cls)(raw)))
        except Invalid:
            fast = None
        if expected[0] == "decoded":
            assert fast == expected, raw
        else:
            assert fast is None, (raw, expected)


# ---------------------------------------------------------------- generated maps

HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 2, 3, 100, 101, 1000, 1001, 3600, 3601, 1_000_000, 1_000_001,
    MAX_SAFE_INT, MAX_SAFE_INT + 1, 2**63 - 1, -(2**63), 2**64 - 1, 1.0, 2.0, -0.0, 1.5,
    "", "x", "x" * 16, "x" * 17, "x" * 32, "x" * 33, "x" * 64, "x" * 65, "x" * 128, "x" * 129, "m" * 512, "m" * 513,
    "t" * 2048, "t" * 2049, "a b", "a.b", "a:b", "a-b", "a_b", "a/b", "A", "Z9", "é", "\x00", "nul\x00inside", "\n",
    "g-1\n", "\u2028", "note", "Note", "gold_note", "gold-note", "pending", "PENDING", "accepted", "declined",
    "expired", "held", "offer", "outcome", "offer ", "BAD_FIELD", "bad_field", "abc.def=", "e1", "9f2c41d07a3b",
    b"bob", b"", msgpack.ExtType(5, b"\x00"), msgpack.Timestamp(1, 0),
    [], [1], ["a"], {}, {"note": 1}, {"Note": 1}, {"": 0}, {"note": -1}, {"note": True}, {"note": "1"},
    {"note": MAX_SAFE_INT + 1}, (1, 2), ("a",),
]
KEYS: list[Any] = ["t", "rid", "x", "gift", "pending", "top", "qty", "gift_id", 7, b"rid", None, 1.5, True]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a wire map a mutation can hit (keys of nested maps and list items)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _at(root: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        root = root[part]
    return root


def mutate(rng: random.Random, wire: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``wire`` with one to three things changed anywhere in it."""
    wire = copy.deepcopy(wire)

    def hostile() -> Any:
        return copy.deepcopy(rng.choice(HOSTILE))  # a copy: later mutations may change it

    for _ in range(rng.randint(1, 3)):
        paths = _paths(wire)[1:]
        if not paths:
            break  # every key was deleted: an empty map is mutation enough
        path = rng.choice(paths)
        parent, key = _at(wire, path[:-1]), path[-1]
        roll = rng.random()
        if roll < 0.55:
            parent[key] = hostile()
        elif roll < 0.65:
            parent[key] = None
        elif roll < 0.75 and isinstance(parent, dict):
            del parent[key]
        elif roll < 0.85 and isinstance(parent, dict):
            parent[rng.choice(KEYS + HOSTILE[:20])] = parent.pop(key)  # the value under another key
        elif isinstance(parent, dict):
            parent[rng.choice(KEYS)] = hostile()
        else:
            parent.append(hostile() if rng.random() < 0.5 else copy.deepcopy(parent[key]))
    return wire


def _bases() -> list[dict[str, Any]]:
    """Valid maps of every message: every optional field present, and the samples' shapes."""
    return [*VALID.values(), *(to_wire(m) for m in SAMPLES.values())]


def pack(raw: Any, encoding: Encoding) -> Any:
    if encoding is MSGPACK:
        return msgpack.packb(raw, use_bin_type=True)
    return orjson.dumps(raw, default=repr).decode()


def test_every_valid_map_takes_the_fast_path() -> None:
    """No fallback for valid input: the reference would be correct but slow."""
    for raw in _bases():
        cls = {**CLIENT_MESSAGES, **SERVER_MESSAGES}[raw["t"]]
        assert deep(compile_decoder(cls)(raw)) == deep(reference_object(cls, raw, None))


@pytest.mark.parametrize("seed", range(4))
def test_mutated_maps_decode_as_the_reference_decides(seed: int) -> None:
    rng = random.Random(seed)
    bases = _bases()
    for _ in range(5_000):
        raw = mutate(rng, rng.choice(bases))
        assert_same_parsing(raw)
        # Through the wire too: what survives packing is decoded as the oracle decodes it.
        for encoding in (MSGPACK, JSON):
            try:
                frame = pack(raw, encoding)
            except (TypeError, ValueError, OverflowError, orjson.JSONEncodeError):
                continue
            assert_same_decoding(frame, encoding)


@settings(FUZZ, max_examples=400)
@given(_message_like(json_values, st.sampled_from(sorted({k for b in _bases() for k in b})) | st.text(max_size=8)))
def test_json_like_values_decode_as_the_reference_decides(raw: Any) -> None:
    assert_same_parsing(raw)
    text = orjson.dumps(raw).decode()
    assert_same_decoding(text, JSON)
    assert_same_decoding(msgpack.packb(raw, use_bin_type=True), MSGPACK)


@settings(FUZZ, max_examples=300)
@given(_message_like(msgpack_values, st.sampled_from(KEYS)))
def test_msgpack_like_values_decode_as_the_reference_decides(raw: Any) -> None:
    assert_same_parsing(raw)
    assert_same_decoding(msgpack.packb(raw, use_bin_type=True), MSGPACK)


@settings(FUZZ, max_examples=300)
@given(st.text(max_size=80) | st.binary(max_size=80))
def test_any_frame_decodes_as_the_reference_decides(frame: Any) -> None:
    for encoding in (MSGPACK, JSON):
        assert_same_decoding(frame, encoding)


def test_text_frames_around_the_short_text_cut() -> None:
    """Text up to a quarter of the limit skips the UTF-8 copy; the answers do not change."""
    for length in (MAX_FRAME_BYTES // 4 - 1, MAX_FRAME_BYTES // 4, MAX_FRAME_BYTES // 4 + 1):
        for filler in ("x", "é", "音", "😀"):
            base = '{"t":"ping","rid":7,"pad":""}'
            body = filler * ((length - len(base)) // len(filler))
            frame = base[:-2] + body + base[-2:]
            assert_same_decoding(frame, JSON)
            assert_same_decoding(frame[:-1] + "\ud800}", JSON)  # a lone surrogate: not UTF-8
            assert_same_decoding(frame.replace('"pad":"', '"pad":"\udfff'), JSON)


# ---------------------------------------------------------------- decoded objects


def test_decoded_objects_are_ordinary_frozen_instances() -> None:
    """Built through a mutable twin, a decoded gift is indistinguishable from a made one."""
    for name, msg in SAMPLES.items():
        for encoding in (MSGPACK, JSON):
            decoded = DECODERS["client" if msg.TYPE in CLIENT_MESSAGES else "server"](encode(msg, encoding), encoding)
            assert type(decoded) is type(msg), name
            assert decoded == msg and repr(decoded) == repr(msg), name
            assert pickle.loads(pickle.dumps(decoded)) == msg, name
            assert copy.deepcopy(decoded) == msg, name
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(decoded, dataclasses.fields(decoded)[0].name, None)
    gift = decode_server(encode(SAMPLES["gift_sent"], MSGPACK), MSGPACK)
    assert isinstance(gift, GiftSent)
    assert hash(gift.gift) == hash(SAMPLES["gift_sent"].gift)  # type: ignore[union-attr]
    assert dataclasses.replace(gift.gift, qty=3).qty == 3
    assert not hasattr(gift.gift, "__dict__")


def test_classes_the_fast_path_cannot_build_are_refused_at_compile_time() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots(WireObject):
        x: int

    NoSlots.FIELDS = compile_fields(NoSlots)

    @message("with_post_init")
    class WithPostInit(WireObject):
        x: int

        def __post_init__(self) -> None:
            pass

    for cls in (NoSlots, WithPostInit):
        with pytest.raises(TypeError, match="not a plain slotted dataclass"):
            compile_decoder(cls)


# ---------------------------------------------------------------- shapes no message has yet


@message("odd")
class Odd(WireObject):
    """Every shape the schema supports, including the ones today's messages do not use."""

    maybe: Millis | None  # optional without a default: the reference refuses it absent
    names: tuple[Ident, ...]
    gifts: dict[Ident, Gift]
    grid: tuple[tuple[Quantity, ...], ...]
    lines: dict[CardKind, tuple[RankEntry, ...]]
    flag: bool
    note: str
    count: int
    level: Annotated[int, Range(-5, 5)] = 3  # a default that is not None
    extra: Ident | None = None


ODD: dict[str, Any] = {
    "t": "odd", "maybe": 5, "names": ["a", "b"], "gifts": {"g-1": VALID["gift_sent"]["gift"]},
    "grid": [[1, 2], [], [1_000_000]], "lines": {"note": [{"user": "u", "points": 1, "rank": 1}]},
    "flag": False, "note": "any text\x00", "count": -(2**70), "level": -5, "extra": "x",
}


def test_odd_shapes_valid() -> None:
    assert deep(compile_decoder(Odd)(ODD)) == deep(reference_object(Odd, ODD, None))
    absent = {k: v for k, v in ODD.items() if k not in ("level", "extra")}
    assert compile_decoder(Odd)(absent).level == 3


def test_odd_shapes_mutated() -> None:
    rng = random.Random(7)
    table = {"odd": Odd}
    for _ in range(5_000):
        raw = mutate(rng, ODD)
        expected = outcome(lambda raw=raw: oracle_parse(raw, table))  # type: ignore[misc]
        try:
            fast = ("decoded", deep(compile_decoder(Odd)(raw))) if raw.get("t") == "odd" else None
        except Invalid:
            fast = None
        assert fast == (expected if expected[0] == "decoded" else None), raw
        odd = reference_object(Odd, raw, None) if fast else None
        if odd is not None:
            assert list(compile_encoder(Odd)(odd).items()) == list(reference_wire(odd).items())


# ---------------------------------------------------------------- encoding


def _same_wire(msg: WireObject) -> None:
    fast, reference = to_wire(msg), reference_wire(msg)
    assert deep(fast) == deep(reference), msg
    assert encode(msg, MSGPACK) == msgpack.packb(reference, use_bin_type=True)
    assert encode(msg, JSON) == orjson.dumps(reference).decode()


def test_samples_encode_as_the_reference() -> None:
    for msg in SAMPLES.values():
        _same_wire(msg)
    _same_wire(OFFER)  # a nested class on its own


@pytest.mark.parametrize("seed", range(2))
def test_decoded_messages_encode_as_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    bases = _bases()
    seen = 0
    for _ in range(5_000):
        raw = mutate(rng, rng.choice(bases)) if rng.random() < 0.7 else rng.choice(bases)
        for table in TABLES.values():
            try:
                msg = oracle_parse(raw, table)
            except ProtocolError:
                continue
            seen += 1
            _same_wire(msg)
    assert seen > 1_000


def test_messages_built_wrongly_still_encode_as_the_reference() -> None:
    """A required field left None, a map or list where an object belongs: no fast path."""
    gift, welcome = OFFER, SAMPLES["welcome/pending"]
    assert isinstance(welcome, Welcome)
    # Typed Any: what mypy keeps the gateway from writing.
    wrong: Any = None
    wire_gift: Any = to_wire(gift)
    gift_list: Any = [gift]
    mixed: Any = (gift, wire_gift)
    odd = [
        Ping(rid=wrong),
        GiftSent(rid=1, gift=wire_gift),
        GiftSent(rid=wrong, gift=gift),
        dataclasses.replace(welcome, pending=gift_list),
        dataclasses.replace(welcome, pending=mixed),
        dataclasses.replace(welcome, user=wrong),
        Welcome(user="u", node="n", epoch="e", offset=0, recovered=True, pending=(), heartbeat_s=wrong),
    ]
    for msg in odd:
        assert deep(to_wire(msg)) == deep(reference_wire(msg)), msg


def test_the_shared_packer_survives_failures_and_threads() -> None:
    with pytest.raises(TypeError):
        encode(Ping(rid=object()), MSGPACK)  # type: ignore[arg-type]
    assert encode(Ping(rid=7), MSGPACK) == b"\x82\xa1t\xa4ping\xa3rid\x07"
    # Larger than the packer's first buffer, then small again.
    welcome = SAMPLES["welcome/pending"]
    assert isinstance(welcome, Welcome)
    big = dataclasses.replace(welcome, pending=(OFFER,) * 200)
    assert len(encode(big, MSGPACK)) > 16 * codec_module._PACKER_BUFFER
    _same_wire(big)
    _same_wire(Ping(rid=7))
    errors: list[str] = []

    def work(n: int) -> None:
        for i in range(2_000):
            msg = SAMPLES["event/offer"] if (i + n) % 2 else SAMPLES["room/reply"]
            if encode(msg, MSGPACK) != msgpack.packb(reference_wire(msg), use_bin_type=True):
                errors.append(f"thread {n}: {i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert codec_module._packers.packer is not None


def test_the_pure_python_msgpack_packer_is_used_without_a_buffer_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """msgpack's fallback Packer (no C extension) takes no buf_size; packing still works."""
    from msgpack import fallback

    monkeypatch.setattr(msgpack, "Packer", fallback.Packer)
    packer = codec_module._new_packer()
    assert isinstance(packer, fallback.Packer)
    assert packer.pack(to_wire(Ping(rid=7))) == b"\x82\xa1t\xa4ping\xa3rid\x07"
