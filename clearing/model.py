"""Typed records clearing returns. Amounts are integers in minor units."""

from __future__ import annotations

import dataclasses
import enum


class GiftState(enum.StrEnum):
    #: The recipient's side took the gift in (its rules passed, its counters hold a slot);
    #: the sender's side has not been reserved yet. Never shown to a client.
    ADMITTED = "admitted"
    PENDING = "pending"
    #: A gift the recipient's region makes wait for the recipient's guardian (docs/regions.md,
    #: "Guardian confirmation"): held like a pending gift, but not yet offered; its window is
    #: the guardian's. Shown to the sender as pending, never to the recipient.
    AWAITING_GUARDIAN = "awaiting_guardian"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"
    #: An admitted gift that was never reserved (the sender was refused, or the send was
    #: abandoned): nothing moved, the recipient's slots went back. Never shown to a client.
    VOID = "void"


class GiftEvent(enum.StrEnum):
    OFFER = "offer"
    VOID = "void"
    ACCEPT = "accept"
    DECLINE = "decline"
    EXPIRE = "expire"
    #: The recipient's guardian answers a gift awaiting them (docs/regions.md).
    GUARD = "guard"
    APPROVE = "approve"
    REJECT = "reject"


#: The only legal moves of a gift: (state, event) -> next state. Anything else is refused
#: (ALREADY_RESOLVED). clearing/lua.py writes this table into every script as ``MOVES``,
#: and the scripts make every change of state through it, so this is the one source.
MOVES: dict[tuple[GiftState, GiftEvent], GiftState] = {
    (GiftState.ADMITTED, GiftEvent.OFFER): GiftState.PENDING,
    (GiftState.ADMITTED, GiftEvent.VOID): GiftState.VOID,
    (GiftState.ADMITTED, GiftEvent.GUARD): GiftState.AWAITING_GUARDIAN,
    (GiftState.AWAITING_GUARDIAN, GiftEvent.APPROVE): GiftState.PENDING,
    # A rejected gift is declined: the sender is refunded as for a decline, and is not told
    # who said no (the recipient's family is not the sender's business).
    (GiftState.AWAITING_GUARDIAN, GiftEvent.REJECT): GiftState.DECLINED,
    (GiftState.AWAITING_GUARDIAN, GiftEvent.EXPIRE): GiftState.EXPIRED,
    (GiftState.PENDING, GiftEvent.ACCEPT): GiftState.ACCEPTED,
    (GiftState.PENDING, GiftEvent.DECLINE): GiftState.DECLINED,
    (GiftState.PENDING, GiftEvent.EXPIRE): GiftState.EXPIRED,
}

#: The states a client sees (the wire protocol's gift states).
VISIBLE_STATES = frozenset({GiftState.PENDING, GiftState.ACCEPTED, GiftState.DECLINED, GiftState.EXPIRED})
#: What an answer of the recipient asks for.
ANSWER_EVENTS = {GiftState.ACCEPTED: GiftEvent.ACCEPT, GiftState.DECLINED: GiftEvent.DECLINE}


def transitions() -> dict[GiftState, frozenset[GiftState]]:
    """State -> the states it may move to, from :data:`MOVES`."""
    out: dict[GiftState, set[GiftState]] = {state: set() for state in GiftState}
    for (state, _), target in MOVES.items():
        out[state].add(target)
    return {state: frozenset(targets) for state, targets in out.items()}


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
    #: The recipient's guardian, on a gift that waits (or waited) for their answer
    #: (docs/regions.md); never shown to the sender or the recipient.
    guardian: str | None = None
    #: The lucky card (docs/regions.md "Published odds"), on a gift accepted in a region with
    #: published odds: the table and version drawn from, the draw's seed (HMAC-SHA256, hex),
    #: the bonus drawn and what the promotion account paid (0 when it could not), in units.
    lucky_table: str | None = None
    lucky_version: int | None = None
    lucky_seed: str | None = None
    lucky_bonus: int | None = None
    lucky_paid: int | None = None
    #: The card art of the recipient's region for the gift's kind (docs/regions.md), if any.
    skin: str | None = None
    #: The brand campaign that issued the gift, if any (clearing/campaigns.py).
    campaign: str | None = None

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
    #: clearing/regions.py; accounts from before regions are in the default one.
    region: str = "global"
    #: "male", "female" or "" (not given): set by an operator, read by the guardian rule.
    gender: str = ""
    #: The user's guardian (docs/regions.md), linked by an operator; "" when none.
    guardian: str = ""


class EventKind(enum.StrEnum):
    OFFER = "offer"
    OUTCOME = "outcome"
    #: In a guardian's stream: a gift to their ward waits for their answer (``guardian_answer``).
    GUARDIAN = "guardian"
    #: In a guardian's stream: one of their requests was answered (by any of their devices).
    GUARDIAN_DONE = "guardian_done"


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
