"""docs/protocol.md agrees with the code: field tables, named types, error and close codes,
the token example and every frame of the worked session.

The specification is what implementers in other languages read; these tests make a change
to the wire format fail until the page says the same thing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import types
import typing
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol import (
    CLIENT_MESSAGES,
    MAX_FRAME_BYTES,
    RETRYABLE_CODES,
    SERVER_MESSAGES,
    SUBPROTOCOLS,
    CloseCode,
    Encoding,
    Error,
    ErrorCode,
    Event,
    Gift,
    ProtocolError,
    decode_client,
    decode_server,
    encode,
    should_reconnect,
)
from protocol import messages as messages_module
from protocol.schema import Pattern, Range

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
TOKEN_SECRET = "dev-secret"  # the secret the specification's token example is signed with

#: Named constraint types of messages.py, documented in section 3 under the same names.
NAMED_TYPES = {
    name: getattr(messages_module, name)
    for name in ("Ident", "CardKind", "RequestId", "Quantity", "Offset", "Millis", "Token", "Epoch")
}


def section(title_re: str) -> str:
    """The text under the first heading matching ``title_re``, up to the next heading."""
    match = re.search(rf"^#{{2,3}} {title_re}.*?$(.*?)(?=^#{{2,3}} |\Z)", DOC, re.M | re.S)
    assert match, f"no section {title_re!r} in docs/protocol.md"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``text`` (no header, no separator)."""
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or re.fullmatch(r"\|[-| ]+\|", line):
            continue
        if i + 1 < len(lines) and re.fullmatch(r"\|[-| ]+\|", lines[i + 1]):
            continue  # a header row
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner
    return hint


def _constraint_of(hint: Any) -> Pattern | Range | None:
    if typing.get_origin(hint) is typing.Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Pattern | Range)), None)
    return None


def _named(hint: Any) -> list[str]:
    """The named types equal to ``hint`` (RequestId, Offset and Millis share one constraint)."""
    return [name for name, alias in NAMED_TYPES.items() if alias == hint]


def _names_one_of(cell: str, names: list[str]) -> bool:
    return any(f"`{n}`" in cell for n in names)


def _assert_describes(cell: str, constraint: Pattern | Range, where: str) -> None:
    if isinstance(constraint, Range):
        assert str(constraint.low) in cell, f"{where}: range of {constraint}"
        assert str(constraint.high) in cell, f"{where}: range of {constraint}"
        return
    assert str(constraint.max_len) in cell, f"{where}: max length {constraint.max_len}"
    if constraint.regex == r"[^\x00]*":
        assert "U+0000" in cell, where
    elif re.fullmatch(r"[a-z_]+(\|[a-z_]+)+", constraint.regex):
        for word in constraint.regex.split("|"):
            assert f"`{word}`" in cell, f"{where}: alternative {word}"
    else:
        assert f"`{constraint.regex}`" in cell, f"{where}: regex {constraint.regex}"


def _wire_type(hint: Any) -> str:
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    origin = typing.get_origin(base)
    if origin is tuple:
        return "array"
    if origin is dict:
        return "map"
    return {str: "string", int: "integer", bool: "boolean"}.get(base, getattr(base, "__name__", "?"))


CLASSES = {**CLIENT_MESSAGES, **SERVER_MESSAGES, "Gift": Gift}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_field_table_matches_the_message_class(name: str) -> None:
    cls = CLASSES[name]
    rows = table_rows(section(rf"`{name}` \("))
    assert [r[0] for r in rows] == [f"`{f.name}`" for f in dataclasses.fields(cls)], "fields and their order"
    hints = typing.get_type_hints(cls, include_extras=True)
    optional = {s.name for s in cls.FIELDS if s.optional}
    for (_field_cell, type_cell, required_cell, constraint_cell, meaning), spec in zip(rows, cls.FIELDS,
                                                                                    strict=True):
        where = f"{name}.{spec.name}"
        hint = _unwrap_optional(hints[spec.name])
        assert type_cell == _wire_type(hint), where
        assert required_cell == ("no" if spec.name in optional else "yes"), where
        assert meaning, f"{where}: say what the field means"
        # Either the cell names a section-3 type with this very constraint, or it spells the
        # constraint out (units_per_card happens to share Quantity's range without being one).
        if not _names_one_of(constraint_cell, _named(hint)) and (constraint := _constraint_of(hint)):
            _assert_describes(constraint_cell, constraint, where)
        for other in set(NAMED_TYPES) - set(_named(hint)):
            if typing.get_origin(hint) is typing.Annotated:
                assert f"`{other}`" not in constraint_cell, f"{where}: is not a {other}"
        for arg in typing.get_args(hint):  # dict keys/values, tuple items
            if arg_names := _named(arg):
                assert _names_one_of(constraint_cell, arg_names), f"{where}: names one of {arg_names}"
            elif arg is Gift:
                assert "`Gift`" in constraint_cell, where
        if hint is Gift:
            assert "`Gift`" in constraint_cell, where


def test_named_types_table() -> None:
    rows = {r[0].strip("`"): r for r in table_rows(section(r"3\. Field types"))}
    assert set(rows) == set(NAMED_TYPES)
    for name, alias in NAMED_TYPES.items():
        constraint = _constraint_of(alias)
        assert constraint is not None
        assert rows[name][1] == _wire_type(alias), name
        _assert_describes(rows[name][2], constraint, name)


def test_every_message_type_is_specified() -> None:
    for name in CLIENT_MESSAGES:
        assert re.search(rf"^### `{name}` \(client → server\)$", DOC, re.M), name
    for name in SERVER_MESSAGES:
        assert re.search(rf"^### `{name}` \(server → client\)$", DOC, re.M), name


def test_transport_constants() -> None:
    for subprotocol in SUBPROTOCOLS:
        assert f"`{subprotocol}`" in DOC
    assert str(MAX_FRAME_BYTES) in section(r"1\. Transport")


def test_error_code_table() -> None:
    rows = table_rows(section(r"10\. Errors"))
    table = {r[0].strip("`"): r for r in rows if len(r) == 3}
    assert set(table) == {c.value for c in ErrorCode}, "one row per error code, no more"
    for code in ErrorCode:
        assert table[code.value][2] == ("yes" if code in RETRYABLE_CODES else "no"), code


def test_refusal_order_lists_every_send_gift_rule() -> None:
    listed = re.findall(r"^\d+\. `([A-Z_0-9]+)`", section(r"10\. Errors"), re.M)
    assert listed == [
        "IDEMPOTENCY_CONFLICT", "SELF_GIFT", "UNKNOWN_KIND", "BAD_QUANTITY", "UNKNOWN_USER",
        "SENDER_BANNED", "DEVICE_BANNED", "ACCOUNT_FROZEN", "CONSENT_REQUIRED", "RECIPIENT_BANNED",
        "RECIPIENT_FROZEN", "RECIPIENT_NO_CONSENT", "NOT_VERIFIED", "BLOCKED", "NOT_MUTUAL_3D", "LIMIT_DAILY_SEND",
        "LIMIT_DAILY_RECEIVE", "RISK_LIMITED",
        "INSUFFICIENT_BALANCE", "RECIPIENT_OFFLINE", "GUARDIAN_REQUIRED",
    ]
    assert all(code in ErrorCode.__members__ for code in listed)


def test_close_code_table() -> None:
    rows = [r for r in table_rows(section(r"11\. Close codes")) if r[0].isdigit()]
    table = {int(r[0]): r for r in rows}
    assert set(table) == {int(c) for c in CloseCode}, "one row per close code, no more"
    for code in CloseCode:
        _, name, when, advice = table[code]
        assert name == f"`{code.name}`"
        assert when
        assert advice.startswith("yes" if should_reconnect(code) else "no"), code


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hs256(text: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(TOKEN_SECRET.encode(), text.encode(), hashlib.sha256).digest()
                                    ).rstrip(b"=").decode()


def test_token_examples_verify() -> None:
    tokens = section(r"13\. Tokens")
    jwt = re.search(r"^([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$", tokens, re.M)
    assert jwt, "the JWT example"
    header, claims, signature = jwt.group(1).split(".")
    assert _hs256(f"{header}.{claims}") == signature
    assert orjson.loads(_b64decode(header)) == {"alg": "HS256", "typ": "JWT"}
    assert orjson.loads(_b64decode(claims)) == {"sub": "bob", "aud": "notecard", "exp": 1767225600, "app": "main"}
    assert orjson.dumps(orjson.loads(_b64decode(claims))).decode() in DOC
    legacy = re.search(r"^([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$", section(r"The deprecated format"), re.M)
    assert legacy, "the deprecated format's example"
    body, signature = legacy.group(1).split(".")
    assert _hs256(body) == signature
    payload = orjson.loads(_b64decode(body))
    assert payload == {"sub": "bob", "exp": 1767225600, "app": "main"}
    assert f"`{TOKEN_SECRET}`" in DOC
    assert orjson.dumps(payload).decode() in DOC


def _session_lines() -> list[tuple[str, str]]:
    block = re.search(r"```text\n(# Authenticate.*?)```", section(r"14\. A worked session"), re.S)
    assert block, "the worked session"
    lines = []
    for line in block.group(1).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        prefix, _, frame = line.partition(" ")
        assert prefix in ("C>", "S>", "C!"), line
        lines.append((prefix, frame))
    return lines


def test_worked_session_frames_are_valid_and_consistent() -> None:
    lines = _session_lines()
    assert len(lines) > 20
    pending_rids: dict[int, str] = {}
    last_offset = None
    refused: ProtocolError | None = None
    for prefix, frame in lines:
        if prefix == "C!":
            with pytest.raises(ProtocolError) as err:
                decode_client(frame, Encoding.JSON)
            refused = err.value
            continue
        if prefix == "C>":
            msg = decode_client(frame, Encoding.JSON)
            # Frames in the page are exactly what the reference encoder writes.
            assert encode(msg, Encoding.JSON) == frame
            if hasattr(msg, "rid"):
                assert msg.rid not in pending_rids, "rids are unique in flight"
                pending_rids[msg.rid] = msg.TYPE
            continue
        reply = decode_server(frame, Encoding.JSON)
        assert encode(reply, Encoding.JSON) == frame
        if refused is not None:
            # The documented error is what the codec really reports for that frame.
            assert reply == Error(code=refused.code, message=refused.message, rid=refused.rid)
            refused = None
            continue
        if isinstance(reply, Event):
            assert last_offset is None or reply.offset == last_offset + 1, "offsets increase by one"
            last_offset = reply.offset
        rid = getattr(reply, "rid", None)
        if rid is not None:
            request = pending_rids.pop(rid)
            expected = {"send_gift": ("gift_sent", "error"), "accept": ("gift_resolved", "error"),
                        "get_balance": ("balance",), "ping": ("pong",)}[request]
            assert reply.TYPE in expected, (request, reply.TYPE)
    assert not pending_rids, "every request is answered"
    assert refused is None
