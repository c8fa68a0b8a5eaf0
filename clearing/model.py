"""Typed records clearing returns. Amounts are integers in minor units."""

from __future__ import annotations

import dataclasses
import enum


class GiftState(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"


#: The only legal moves of a gift. Anything else is refused (ALREADY_RESOLVED).
TRANSITIONS: dict[GiftState, frozenset[GiftState]] = {
    GiftState.PENDING: frozenset({GiftState.ACCEPTED, GiftState.DECLINED, GiftState.EXPIRED}),
    GiftState.ACCEPTED: frozenset(),
    GiftState.DECLINED: frozenset(),
    GiftState.EXPIRED: frozenset(),
}


@dataclasses.dataclass(frozen=True, slots=True)
class GiftRecord:
    gift_id: str
    sender: str
    recipient: str
    kind: str
    qty: int
    #: Charged to the sender's available balance and held while pending.
    cost: int
    #: Credited to the recipient on accept (cost - amount is consumed on accept).
    amount: int
    state: GiftState
    created_at_ms: int
    expires_at_ms: int
    resolved_at_ms: int | None = None
    #: The account charged when it is not the sender: the promotion account, for a
    #: newcomer's free gift. Refunds on decline or expiry go back to it.
    payer: str | None = None
    #: The app the gift was sent from (its sender's perks apply on accept).
    app: str = "main"
    #: The festival whose window priced the gift, if any.
    festival: str | None = None
    #: The live room (its streamer's id) whose quote priced the gift, if any.
    room: str | None = None

    @property
    def charged_to(self) -> str:
        return self.payer or self.sender


@dataclasses.dataclass(frozen=True, slots=True)
class RefusedSend:
    """A refused send, remembered under its gift id for ``GiftRules.refusal_memory_ms``: a
    copy of the same request gets ``code`` again; no gift exists under that id."""

    gift_id: str
    code: str
    sender: str
    recipient: str
    kind: str
    qty: int
    #: How much longer the refusal is remembered; afterwards the id names nothing.
    remembered_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Resolution:
    """Result of accept / decline: the gift, and whether this call made the change."""

    gift: GiftRecord
    changed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Balances:
    available: dict[str, int]
    held: dict[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    verified: bool
    vip: bool
    banned: bool
    created_at_ms: int
    app: str
    balances: Balances


class EventKind(enum.StrEnum):
    OFFER = "offer"
    OUTCOME = "outcome"


@dataclasses.dataclass(frozen=True, slots=True)
class UserEvent:
    """One entry of a user's event stream, as published to the user's nodes."""

    user: str
    epoch: str
    offset: int
    kind: EventKind
    gift: GiftRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Replay:
    """What a reconnecting client missed."""

    epoch: str
    #: Offset of the newest event in the stream now.
    head: int
    events: list[UserEvent]
    #: False when the client's epoch differs or events after its offset were trimmed.
    recovered: bool
