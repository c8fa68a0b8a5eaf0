"""Clearing's exception tree.

::

    ClearingError             base
     +-- Refused              a rule refused the operation; nothing was written
     +-- ClearingUnavailable  Redis could not be reached or timed out: the outcome is UNKNOWN
                              (the operation may or may not have happened); retry with the
                              same gift id to learn it
     +-- StepRefused          a step of a cross-shard saga found its gift elsewhere than it
                              expected (a sweep that came early, a conflict that the state
                              table rules out); clearing's own callers handle it, and it
                              never reaches a client as such

``Refused.code`` values equal the wire protocol's error codes of the same name, so the
gateway maps them by value without clearing importing the wire format.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clearing.model import GiftRecord


class Refusal(enum.StrEnum):
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    SELF_GIFT = "SELF_GIFT"
    UNKNOWN_KIND = "UNKNOWN_KIND"
    BAD_QUANTITY = "BAD_QUANTITY"
    UNKNOWN_USER = "UNKNOWN_USER"
    SENDER_BANNED = "SENDER_BANNED"
    RECIPIENT_BANNED = "RECIPIENT_BANNED"
    NOT_VERIFIED = "NOT_VERIFIED"
    BLOCKED = "BLOCKED"
    NOT_MUTUAL_3D = "NOT_MUTUAL_3D"
    LIMIT_DAILY_SEND = "LIMIT_DAILY_SEND"
    LIMIT_DAILY_RECEIVE = "LIMIT_DAILY_RECEIVE"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    RECIPIENT_OFFLINE = "RECIPIENT_OFFLINE"
    GIFT_NOT_FOUND = "GIFT_NOT_FOUND"
    NOT_RECIPIENT = "NOT_RECIPIENT"
    ALREADY_RESOLVED = "ALREADY_RESOLVED"
    GIFT_EXPIRED = "GIFT_EXPIRED"
    USER_EXISTS = "USER_EXISTS"
    BAD_REQUEST = "BAD_REQUEST"
    ACCOUNT_BANNED = "ACCOUNT_BANNED"
    # Scenes (gift-rules.md sections 2 and 3).
    QUOTE_EXPIRED = "QUOTE_EXPIRED"
    QUOTE_MISMATCH = "QUOTE_MISMATCH"
    NO_WISH = "NO_WISH"
    NOT_IN_ROOM = "NOT_IN_ROOM"
    NO_FESTIVAL = "NO_FESTIVAL"
    ALREADY_REDEEMED = "ALREADY_REDEEMED"
    ALREADY_BOUND = "ALREADY_BOUND"
    NOT_NEWCOMER = "NOT_NEWCOMER"
    PROMOTION_EXHAUSTED = "PROMOTION_EXHAUSTED"
    # Abuse limits.
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    TOO_MANY_ROOMS = "TOO_MANY_ROOMS"
    # A send that stopped half-way across shards and was abandoned: nothing moved.
    SEND_ABORTED = "SEND_ABORTED"
    # The risk engine's actions (docs/risk.md), read in the same step as the other rules.
    DEVICE_BANNED = "DEVICE_BANNED"
    ACCOUNT_FROZEN = "ACCOUNT_FROZEN"
    RECIPIENT_FROZEN = "RECIPIENT_FROZEN"
    RISK_LIMITED = "RISK_LIMITED"
    NOTHING_TO_APPEAL = "NOTHING_TO_APPEAL"
    APPEAL_KIND = "APPEAL_KIND"
    APPEAL_PENDING = "APPEAL_PENDING"
    # Regional rules (docs/regions.md): GDPR data-processing consent.
    CONSENT_REQUIRED = "CONSENT_REQUIRED"
    RECIPIENT_NO_CONSENT = "RECIPIENT_NO_CONSENT"
    ACCOUNT_ERASED = "ACCOUNT_ERASED"
    ERASE_PENDING = "ERASE_PENDING"
    # Guardian confirmation (docs/regions.md): the rule applies and the ward has no guardian;
    # a guardian's answer from someone who is not the gift's guardian.
    GUARDIAN_REQUIRED = "GUARDIAN_REQUIRED"
    NOT_GUARDIAN = "NOT_GUARDIAN"


#: The order in which a send's rules are checked: the first that fails is the refusal, on
#: whichever side of the gift (sender's or recipient's shard) it is checked. The scripts get
#: it as RANK (clearing/lua.py); the codes after GUARDIAN_REQUIRED never compete.
_SEND_ORDER = (
    Refusal.RATE_LIMITED, Refusal.IDEMPOTENCY_CONFLICT, Refusal.SEND_ABORTED, Refusal.SELF_GIFT,
    Refusal.UNKNOWN_KIND, Refusal.BAD_QUANTITY, Refusal.UNKNOWN_USER, Refusal.SENDER_BANNED,
    Refusal.DEVICE_BANNED, Refusal.ACCOUNT_FROZEN, Refusal.CONSENT_REQUIRED, Refusal.RECIPIENT_BANNED,
    Refusal.RECIPIENT_FROZEN, Refusal.RECIPIENT_NO_CONSENT, Refusal.NOT_VERIFIED, Refusal.BLOCKED,
    Refusal.NOT_MUTUAL_3D, Refusal.LIMIT_DAILY_SEND, Refusal.LIMIT_DAILY_RECEIVE, Refusal.RISK_LIMITED,
    Refusal.QUOTE_EXPIRED, Refusal.QUOTE_MISMATCH, Refusal.INSUFFICIENT_BALANCE, Refusal.RECIPIENT_OFFLINE,
    # Last: the recipient's side knows whether the rule applies only once its own rules passed
    # (docs/regions.md), so any refusal of either side comes first, on every path.
    Refusal.GUARDIAN_REQUIRED,
)
REFUSAL_ORDER: tuple[Refusal, ...] = (*_SEND_ORDER, *(code for code in Refusal if code not in _SEND_ORDER))


#: A short reason per code for people (logs, the wire's ``message``); never internal details.
REFUSAL_TEXT: dict[Refusal, str] = {
    Refusal.IDEMPOTENCY_CONFLICT: "this gift id was already used for a different gift",
    Refusal.SELF_GIFT: "a gift cannot be sent to oneself",
    Refusal.UNKNOWN_KIND: "no such card kind",
    Refusal.BAD_QUANTITY: "quantity out of range",
    Refusal.UNKNOWN_USER: "no such user",
    Refusal.SENDER_BANNED: "the sender's account is banned",
    Refusal.RECIPIENT_BANNED: "the recipient's account is banned",
    Refusal.NOT_VERIFIED: "the sender has not completed real-name verification",
    Refusal.BLOCKED: "one of the two users has blocked the other",
    Refusal.NOT_MUTUAL_3D: "the users must have followed each other for at least 3 days",
    Refusal.LIMIT_DAILY_SEND: "daily send limit reached",
    Refusal.LIMIT_DAILY_RECEIVE: "the recipient has reached the daily receive limit",
    Refusal.INSUFFICIENT_BALANCE: "not enough cards",
    Refusal.RECIPIENT_OFFLINE: "the recipient is not online",
    Refusal.GIFT_NOT_FOUND: "no such gift",
    Refusal.NOT_RECIPIENT: "only the recipient can answer this gift",
    Refusal.ALREADY_RESOLVED: "the gift was already answered",
    Refusal.GIFT_EXPIRED: "the confirm window has passed; the gift went back to the sender",
    Refusal.USER_EXISTS: "the user already exists",
    Refusal.BAD_REQUEST: "malformed request",
    Refusal.ACCOUNT_BANNED: "the account is banned",
    Refusal.QUOTE_EXPIRED: "the quote is unknown, used or lapsed; ask for a new one",
    Refusal.QUOTE_MISMATCH: "the quote was given for another gift",
    Refusal.NO_WISH: "the streamer has no open gift wish",
    Refusal.NOT_IN_ROOM: "join the live room first",
    Refusal.NO_FESTIVAL: "no festival with a frame is running",
    Refusal.ALREADY_REDEEMED: "already redeemed",
    Refusal.ALREADY_BOUND: "the apprentice already has a mentor",
    Refusal.NOT_NEWCOMER: "only an account younger than the newcomer window can be an apprentice",
    Refusal.PROMOTION_EXHAUSTED: "the promotion budget cannot pay this reward",
    Refusal.RATE_LIMITED: "too many requests; slow down",
    Refusal.TOO_MANY_CONNECTIONS: "too many connections of this user; close another one first",
    Refusal.TOO_MANY_ROOMS: "this connection watches as many live rooms as it may; leave one first",
    Refusal.SEND_ABORTED: "the send did not complete and was abandoned; nothing moved; send again with a new gift id",
    Refusal.DEVICE_BANNED: "this device is banned from sending gifts",
    Refusal.ACCOUNT_FROZEN: "the account is frozen for now; see until_ms, or appeal",
    Refusal.RECIPIENT_FROZEN: "the recipient's account is frozen for now",
    Refusal.RISK_LIMITED: "the account is limited for now (gifts per day, live-room gifts); appeal to lift it",
    Refusal.NOTHING_TO_APPEAL: "the account has no risk action to appeal",
    Refusal.APPEAL_KIND: "this action is appealed with another kind of evidence",
    Refusal.APPEAL_PENDING: "an appeal of this action is already waiting for an operator",
    Refusal.CONSENT_REQUIRED: "give data-processing consent to the current text first",
    Refusal.RECIPIENT_NO_CONSENT: "the recipient has not given data-processing consent",
    Refusal.ACCOUNT_ERASED: "the account was erased",
    Refusal.ERASE_PENDING: "the account still has gifts in flight; settle them and erase again",
    Refusal.GUARDIAN_REQUIRED: "the recipient's region asks a guardian to confirm this gift, and none is linked",
    Refusal.NOT_GUARDIAN: "only the recipient's guardian can answer this gift",
}


class ClearingError(Exception):
    """Base of every error clearing raises."""


class Refused(ClearingError):
    """A rule refused the operation. ``gift`` is set for ALREADY_RESOLVED / GIFT_EXPIRED."""

    def __init__(self, code: Refusal, message: str = "", gift: GiftRecord | None = None,
                 until_ms: int | None = None) -> None:
        super().__init__(message or REFUSAL_TEXT[code])
        self.code = code
        self.gift = gift
        #: ACCOUNT_FROZEN: when the freeze ends (ms), when it reads.
        self.until_ms = until_ms


class ClearingUnavailable(ClearingError):
    """Redis did not answer in time; the outcome of a write is unknown."""


class StepRefused(ClearingError):
    """A saga step's own code (NOT_DUE, SAGA_CONFLICT): for clearing's callers only."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
