"""Turn what Redis and the scripts return into clearing's typed records.

Two shapes arrive: msgpack maps built by the scripts (strings decoded, numbers already
integers) and raw hashes read directly (bytes). Both end up in the same constructors, so
a record looks the same whichever path produced it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clearing.model import Balances, EventKind, GiftRecord, GiftState, UserEvent, UserRecord
from clearing.regions import DEFAULT_REGION

#: Value -> member, looked up directly: ``GiftState(value)`` goes through the enum
#: machinery (about a microsecond), and every reply and event names a state and a kind.
#: A value not listed still goes through the enum, which raises as before.
_STATES: dict[object, GiftState] = {s.value: s for s in GiftState}
_KINDS: dict[object, EventKind] = {k.value: k for k in EventKind}


def gift_from_map(m: Mapping[str, Any]) -> GiftRecord:
    resolved = m.get("resolved_at_ms")
    return GiftRecord(
        gift_id=str(m["gift_id"]),
        sender=str(m["sender"]),
        recipient=str(m["recipient"]),
        kind=str(m["kind"]),
        qty=int(m["qty"]),
        cost=int(m["cost"]),
        amount=int(m["amount"]),
        state=_STATES.get(m["state"]) or GiftState(m["state"]),
        created_at_ms=int(m["created_at_ms"]),
        expires_at_ms=int(m["expires_at_ms"]),
        resolved_at_ms=None if resolved is None else int(resolved),
        payer=_opt(m.get("payer")),
        app=str(m.get("app", "main")),
        festival=_opt(m.get("festival")),
        room=_opt(m.get("room")),
        guardian=_opt(m.get("guardian")) or None,
        lucky_table=_opt(m.get("lucky_table")),
        lucky_version=_opt_int(m.get("lucky_version")),
        lucky_seed=_opt(m.get("lucky_seed")),
        lucky_bonus=_opt_int(m.get("lucky_bonus")),
        lucky_paid=_opt_int(m.get("lucky_paid")),
        skin=_opt(m.get("skin")),
        campaign=_opt(m.get("camp")),
    )


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def text_hash(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash read with HGETALL by a client that does not decode responses."""
    return {_text(k): _text(v) for k, v in raw.items()}


def gift_from_hash(gift_id: str, raw: Mapping[bytes | str, bytes | str]) -> GiftRecord:
    return gift_from_map({"gift_id": gift_id, **text_hash(raw)})


def pairs(flat: Sequence[Any]) -> dict[str, str]:
    """An HGETALL reply as the scripts return it: [field, value, field, value, ...]."""
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


def balances_from(available: Mapping[str, str], held: Mapping[str, str], kinds: Iterable[str]) -> Balances:
    """Every configured kind appears (0 when never touched), so callers need no defaults."""
    return Balances(
        available={**dict.fromkeys(kinds, 0), **{k: int(v) for k, v in available.items()}},
        held={**dict.fromkeys(kinds, 0), **{k: int(v) for k, v in held.items()}},
    )


def user_from(user_id: str, fields: Mapping[str, str], balances: Balances) -> UserRecord:
    return UserRecord(
        user_id=user_id,
        verified=fields["verified"] == "1",
        vip=fields["vip"] == "1",
        banned=fields["banned"] == "1",
        created_at_ms=int(fields["created_at_ms"]),
        app=fields["app"],
        balances=balances,
        region=fields.get("region") or DEFAULT_REGION,
        gender=fields.get("gender", ""),
        guardian=fields.get("guardian", ""),
    )


def event_from_map(m: Mapping[str, Any]) -> UserEvent:
    """An event as the scripts build it: ``{u, ep, o, e, g}`` (see clearing/events.py)."""
    return UserEvent(
        user=str(m["u"]),
        epoch=str(m["ep"]),
        offset=int(m["o"]),
        kind=_KINDS.get(m["e"]) or EventKind(m["e"]),
        gift=gift_from_map(m["g"]),
    )
