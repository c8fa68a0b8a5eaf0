"""Error codes and the protocol's exception tree.

Every refusal a peer can see is one :class:`ErrorCode`. The codes are part of the wire
contract (``docs/protocol.md``): they never change meaning and are never reused.

Exception tree::

    ProtocolError            a frame or message the peer sent is unacceptable
     +-- FrameError          the frame cannot be decoded at all (BAD_FRAME, UNKNOWN_TYPE)
     +-- FieldError          a known message with a missing or ill-typed field (BAD_FIELD)

``ProtocolError.code`` is what goes back to the peer; ``str(error)`` is a short
human-readable reason that never contains internal details.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Stable error codes carried by ``error`` frames."""

    # The frame or message itself.
    BAD_FRAME = "BAD_FRAME"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    BAD_FIELD = "BAD_FIELD"
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    ALREADY_AUTHENTICATED = "ALREADY_AUTHENTICATED"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    INVALID_TOKEN = "INVALID_TOKEN"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    RATE_LIMITED = "RATE_LIMITED"
    ACCOUNT_BANNED = "ACCOUNT_BANNED"
    SESSION_ENDED = "SESSION_ENDED"
    # Gift rules (gift-rules.md section 1).
    UNKNOWN_USER = "UNKNOWN_USER"
    SELF_GIFT = "SELF_GIFT"
    UNKNOWN_KIND = "UNKNOWN_KIND"
    BAD_QUANTITY = "BAD_QUANTITY"
    NOT_VERIFIED = "NOT_VERIFIED"
    SENDER_BANNED = "SENDER_BANNED"
    RECIPIENT_BANNED = "RECIPIENT_BANNED"
    BLOCKED = "BLOCKED"
    NOT_MUTUAL_3D = "NOT_MUTUAL_3D"
    RECIPIENT_OFFLINE = "RECIPIENT_OFFLINE"
    LIMIT_DAILY_SEND = "LIMIT_DAILY_SEND"
    LIMIT_DAILY_RECEIVE = "LIMIT_DAILY_RECEIVE"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    # Answering a gift.
    GIFT_NOT_FOUND = "GIFT_NOT_FOUND"
    NOT_RECIPIENT = "NOT_RECIPIENT"
    ALREADY_RESOLVED = "ALREADY_RESOLVED"
    GIFT_EXPIRED = "GIFT_EXPIRED"
    # Scenes: live rooms, festivals, newcomers.
    QUOTE_EXPIRED = "QUOTE_EXPIRED"
    QUOTE_MISMATCH = "QUOTE_MISMATCH"
    NO_WISH = "NO_WISH"
    NOT_IN_ROOM = "NOT_IN_ROOM"
    NO_FESTIVAL = "NO_FESTIVAL"
    ALREADY_REDEEMED = "ALREADY_REDEEMED"
    ALREADY_BOUND = "ALREADY_BOUND"
    NOT_NEWCOMER = "NOT_NEWCOMER"
    PROMOTION_EXHAUSTED = "PROMOTION_EXHAUSTED"
    # Abuse limits (per user, per client address, per connection).
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    TOO_MANY_ROOMS = "TOO_MANY_ROOMS"
    # The risk engine (docs/risk.md).
    ACCOUNT_FROZEN = "ACCOUNT_FROZEN"
    RECIPIENT_FROZEN = "RECIPIENT_FROZEN"
    DEVICE_BANNED = "DEVICE_BANNED"
    RISK_LIMITED = "RISK_LIMITED"
    NOTHING_TO_APPEAL = "NOTHING_TO_APPEAL"
    APPEAL_KIND = "APPEAL_KIND"
    APPEAL_PENDING = "APPEAL_PENDING"
    # Regional rules (docs/regions.md): GDPR data-processing consent and erasure.
    CONSENT_REQUIRED = "CONSENT_REQUIRED"
    RECIPIENT_NO_CONSENT = "RECIPIENT_NO_CONSENT"
    ACCOUNT_ERASED = "ACCOUNT_ERASED"
    GUARDIAN_REQUIRED = "GUARDIAN_REQUIRED"
    NOT_GUARDIAN = "NOT_GUARDIAN"
    # A send that stopped half-way across shards and was abandoned (nothing moved).
    SEND_ABORTED = "SEND_ABORTED"
    # The service.
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


#: Codes after which the very same request may succeed later; the SDK retries these
#: with the same gift id (the outcome of the first try is unknown, never "failed").
RETRYABLE_CODES: frozenset[ErrorCode] = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE})


class ProtocolError(Exception):
    """A peer sent something the protocol does not accept."""

    def __init__(self, code: ErrorCode, message: str, rid: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: The request id, when it could be read from the offending message.
        self.rid = rid


class FrameError(ProtocolError):
    """The frame cannot be decoded into a known message."""


class FieldError(ProtocolError):
    """A known message type with a missing or ill-typed field."""
