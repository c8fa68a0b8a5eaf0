"""Encoding and decoding of frames, with no I/O.

Two encodings share one message model; the WebSocket subprotocol picks one per connection:

- ``notecard.v1.msgpack``: binary frames holding a MessagePack map (the SDK's default);
- ``notecard.v1.json``: text frames holding a JSON object (browsers, debugging).

Decoding never raises anything but :class:`~protocol.errors.ProtocolError`, whatever
bytes arrive: the gateway's fuzz tests hold it to that.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, cast

import msgpack
import orjson

from protocol.errors import ErrorCode, FrameError, ProtocolError
from protocol.messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    ClientMessage,
    ServerMessage,
    WireObject,
)
from protocol.schema import MAX_SAFE_INT, parse_fields

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

Frame = bytes | str


def encoding_for(subprotocol: str | None) -> Encoding:
    """The encoding a negotiated subprotocol names; JSON when none was negotiated."""
    if subprotocol is None:
        return Encoding.JSON
    return Encoding(subprotocol)


def to_wire(obj: WireObject) -> dict[str, Any]:
    """The plain map a message travels as (``t`` plus its non-``None`` fields)."""
    out: dict[str, Any] = {"t": obj.TYPE}
    out.update(_fields_of(obj))
    return out


def _fields_of(obj: WireObject) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in obj.FIELDS:
        value = getattr(obj, spec.name)
        if value is None:
            continue
        if isinstance(value, WireObject):
            value = _fields_of(value)
        elif isinstance(value, tuple):
            value = [_fields_of(v) if isinstance(v, WireObject) else v for v in value]
        out[spec.name] = value
    return out


def encode(msg: WireObject, encoding: Encoding) -> Frame:
    """One frame: ``bytes`` for msgpack (binary frame), ``str`` for JSON (text frame)."""
    wire = to_wire(msg)
    if encoding is Encoding.MSGPACK:
        return msgpack.packb(wire, use_bin_type=True)
    return orjson.dumps(wire).decode()


def _too_big() -> FrameError:
    return FrameError(ErrorCode.BAD_FRAME, f"frame larger than {MAX_FRAME_BYTES} bytes")


def _load(frame: Frame, encoding: Encoding) -> Any:
    # The frame type is checked before its size so that anything other than bytes/str
    # (None, a bytearray from a careless driver) is still refused with a ProtocolError.
    if encoding is Encoding.MSGPACK:
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
    data = frame.encode("utf-8", "surrogatepass")
    if len(data) > MAX_FRAME_BYTES:
        raise _too_big()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FrameError(ErrorCode.BAD_FRAME, "frame is not valid JSON") from None


def _decode(frame: Frame, encoding: Encoding, table: Mapping[str, type[WireObject]]) -> WireObject:
    raw = _load(frame, encoding)
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
    try:
        return cls(**parse_fields(cls.FIELDS, raw, rid))
    except ProtocolError:
        raise
    except (TypeError, ValueError, RecursionError):
        # Unhashable map keys and similar oddities inside nested values.
        raise FrameError(ErrorCode.BAD_FRAME, "frame has malformed values", rid) from None


def decode_client(frame: Frame, encoding: Encoding) -> ClientMessage:
    """Decode a frame a client sent (the gateway's side)."""
    # cast, not "type: ignore": the table holds only client classes, and a cast does not
    # turn into an unused-ignore error when mypy's union inference changes.
    return cast(ClientMessage, _decode(frame, encoding, CLIENT_MESSAGES))


def decode_server(frame: Frame, encoding: Encoding) -> ServerMessage:
    """Decode a frame the server sent (the SDK's side)."""
    return cast(ServerMessage, _decode(frame, encoding, SERVER_MESSAGES))
