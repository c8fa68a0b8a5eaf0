"""Encoding and decoding of frames, with no I/O.

Two encodings share one message model; the WebSocket subprotocol picks one per connection:

- ``notecard.v1.msgpack``: binary frames holding a MessagePack map (the SDK's default);
- ``notecard.v1.json``: text frames holding a JSON object (browsers, debugging).

Decoding never raises anything but :class:`~protocol.errors.ProtocolError`, whatever
bytes arrive: the gateway's fuzz tests hold it to that.

Every frame either side receives or sends passes through here, so the common case is
kept cheap: decoders and encoders generated per message class (``protocol.compiled``),
with the table-driven validator of ``protocol.schema`` deciding every refusal.
"""

from __future__ import annotations

import enum
import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgpack
import orjson

from .compiled import Invalid, compile_decoder, compile_encoder
from .errors import ErrorCode, FrameError, ProtocolError
from .messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    ClientMessage,
    ServerMessage,
    WireObject,
)
from .schema import MAX_SAFE_INT, parse_fields

#: Largest frame either side accepts. Every legal message is far smaller; the limit keeps
#: a hostile client from making the gateway buffer and parse megabytes.
MAX_FRAME_BYTES = 64 * 1024


class Encoding(enum.Enum):
    MSGPACK = "notecard.v1.msgpack"
    JSON = "notecard.v1.json"

    @property
    def subprotocol(self) -> str:
        return self.value

    @property
    def binary(self) -> bool:
        return self is Encoding.MSGPACK


#: Subprotocols in the server's order of preference.
SUBPROTOCOLS: tuple[str, ...] = tuple(e.subprotocol for e in Encoding)
# Compared on every frame: a module global is cheaper to read than the enum's attribute.
_MSGPACK = Encoding.MSGPACK

Frame = bytes | str


def encoding_for(subprotocol: str | None) -> Encoding:
    """The encoding a negotiated subprotocol names; JSON when none was negotiated."""
    if subprotocol is None:
        return Encoding.JSON
    return Encoding(subprotocol)


def to_wire(obj: WireObject) -> dict[str, Any]:
    """The plain map a message travels as (``t`` plus its non-``None`` fields)."""
    encoder = _encoders.get(type(obj))
    if encoder is None:
        encoder = _encoders[type(obj)] = compile_encoder(type(obj))
    return encoder(obj)


#: The generated encoder per class, keyed by the class alone: one lookup per frame.
_encoders: dict[type, Callable[[Any], dict[str, Any]]] = {}

# One msgpack Packer per thread instead of msgpack.packb, which builds a new Packer (and
# allocates its 256 KiB buffer) for every frame: 40% of packing a small frame. Per thread,
# because a Packer holds its buffer between calls (it resets it itself when packing
# fails). The buffer starts small and grows to the largest frame packed: under gevent
# (Locust) "per thread" means per greenlet, one per simulated user.
_packers = threading.local()
_PACKER_BUFFER = 1024


def _new_packer() -> msgpack.Packer:
    # buf_size exists in msgpack's C Packer only (the type stubs describe the pure-Python
    # fallback, hence the untyped options).
    options: dict[str, Any] = {"use_bin_type": True, "buf_size": _PACKER_BUFFER}
    try:
        return msgpack.Packer(**options)
    except TypeError:
        return msgpack.Packer(use_bin_type=True)


def _pack(wire: dict[str, Any]) -> bytes:
    try:
        packer: msgpack.Packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = _new_packer()
    return packer.pack(wire)


def encode(msg: WireObject, encoding: Encoding) -> Frame:
    """One frame: ``bytes`` for msgpack (binary frame), ``str`` for JSON (text frame)."""
    wire = to_wire(msg)
    if encoding is _MSGPACK:
        return _pack(wire)
    return orjson.dumps(wire).decode()


def _too_big() -> FrameError:
    return FrameError(ErrorCode.BAD_FRAME, f"frame larger than {MAX_FRAME_BYTES} bytes")


def _load(frame: Frame, encoding: Encoding) -> Any:
    # The frame type is checked before its size so that anything other than bytes/str
    # (None, a bytearray from a careless driver) is still refused with a ProtocolError.
    if encoding is _MSGPACK:
        if not isinstance(frame, bytes):
            raise FrameError(ErrorCode.BAD_FRAME, "this connection expects binary msgpack frames")
        if len(frame) > MAX_FRAME_BYTES:
            raise _too_big()
        try:
            return msgpack.unpackb(frame, raw=False, strict_map_key=False)
        except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException):
            raise FrameError(ErrorCode.BAD_FRAME, "frame is not valid msgpack") from None
    if not isinstance(frame, str):
        raise FrameError(ErrorCode.BAD_FRAME, "this connection expects text JSON frames")
    # The limit is in bytes, as on the wire: a text frame is UTF-8, so a str of 64 Ki
    # characters can be up to four times larger. The cheap character count rejects huge
    # strings before encoding them. "surrogatepass" keeps a lone surrogate (which no valid
    # text frame carries) from raising here; orjson then refuses the invalid UTF-8.
    if len(frame) > MAX_FRAME_BYTES:
        raise _too_big()
    # A code point takes at most 4 bytes in UTF-8, so a text of up to a quarter of the
    # limit cannot exceed it, and orjson reads the str itself (refusing lone surrogates
    # exactly as it refuses their bytes) without the copy.
    data: str | bytes = frame
    if len(frame) > _SHORT_TEXT:
        data = frame.encode("utf-8", "surrogatepass")
        if len(data) > MAX_FRAME_BYTES:
            raise _too_big()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses a number beyond a double's range (an integer of 309 digits and more)
    # as unreadable, while a smaller one past 64 bits reads as a float: both are numbers,
    # out of range for any field, and must be refused as such (BAD_FIELD, with the rid).
    tamed = _tame_huge_numbers(frame)
    if tamed is not None:
        try:
            return orjson.loads(tamed)
        except orjson.JSONDecodeError:
            pass
    raise FrameError(ErrorCode.BAD_FRAME, "frame is not valid JSON") from None


_SHORT_TEXT = MAX_FRAME_BYTES // 4

# A JSON string (skipped whole, so digits inside one are never touched) or a number. The
# string branch is the unrolled loop: linear, whatever the input.
_STRING_OR_NUMBER = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|-?\d+(\.\d+)?([eE][+-]?\d+)?')
# What a number beyond a double's range becomes: an integer stays an integer that is out of
# range for every field (orjson reads 64-bit integers exactly), anything else a float.
_HUGE_INT = ("18446744073709551615", "-9223372036854775808")
_HUGE_FLOAT = ("1e308", "-1e308")
# A double ends near 1.8e308: a huge number has a run of 309 digits or a 3-digit exponent.
_MAYBE_HUGE = re.compile(r"\d{309}|[eE][+-]?\d{3}")


def _tame_huge_numbers(text: str) -> str | None:
    """``text`` with every number beyond a double's range replaced by one inside it, or
    None when it has none. Only numbers change, into numbers: a text that was not JSON for
    another reason still is not."""
    if _MAYBE_HUGE.search(text) is None:
        return None
    found = False

    def tame(match: re.Match[str]) -> str:
        nonlocal found
        token = match.group()
        if token[0] == '"' or not math.isinf(float(token)):
            return token
        found = True
        negative = token[0] == "-"
        is_integer = match.group(1) is None and match.group(2) is None
        return (_HUGE_INT if is_integer else _HUGE_FLOAT)[negative]

    tamed = _STRING_OR_NUMBER.sub(tame, text)
    return tamed if found else None


M = TypeVar("M", bound=WireObject)


def _decode(frame: Frame, encoding: Encoding, fast: Mapping[str, Callable[[Any], M]],
            table: Mapping[str, type[M]]) -> M:
    raw = _load(frame, encoding)
    if not isinstance(raw, dict):
        raise FrameError(ErrorCode.BAD_FRAME, "a frame must hold a map")
    type_name = raw.get("t")
    # The fast decoder accepts exactly the valid messages; anything else (including a `t`
    # that is not a plain str, which may not even be hashable) takes the reference path,
    # the only one that words refusals.
    if type(type_name) is str:
        decoder = fast.get(type_name)
        if decoder is not None:
            try:
                return decoder(raw)
            except Invalid:
                pass
    return _reference_decode(raw, table)


def _reference_decode(raw: dict[Any, Any], table: Mapping[str, type[M]]) -> M:
    rid = raw.get("rid")
    if type(rid) is not int or not 0 <= rid <= MAX_SAFE_INT:
        rid = None
    type_name = raw.get("t")
    if not isinstance(type_name, str):
        raise FrameError(ErrorCode.BAD_FRAME, "a frame must have a string field 't'", rid)
    cls = table.get(type_name)
    if cls is None:
        raise FrameError(ErrorCode.UNKNOWN_TYPE, "unknown message type", rid)
    try:
        return cls(**parse_fields(cls.FIELDS, raw, rid))
    except ProtocolError:
        raise
    except (TypeError, ValueError, RecursionError):
        # Unhashable map keys and similar oddities inside nested values.
        raise FrameError(ErrorCode.BAD_FRAME, "frame has malformed values", rid) from None


_FAST_CLIENT: dict[str, Callable[[Any], ClientMessage]] = {
    name: compile_decoder(cls) for name, cls in CLIENT_MESSAGES.items()
}
_FAST_SERVER: dict[str, Callable[[Any], ServerMessage]] = {
    name: compile_decoder(cls) for name, cls in SERVER_MESSAGES.items()
}


def decode_client(frame: Frame, encoding: Encoding) -> ClientMessage:
    """Decode a frame a client sent (the gateway's side)."""
    return _decode(frame, encoding, _FAST_CLIENT, CLIENT_MESSAGES)


def decode_server(frame: Frame, encoding: Encoding) -> ServerMessage:
    """Decode a frame the server sent (the SDK's side)."""
    return _decode(frame, encoding, _FAST_SERVER, SERVER_MESSAGES)
