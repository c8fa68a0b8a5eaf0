"""WebSocket close codes and what a client should do after each.

The ranges follow the convention of mature gateways: 3000-3499 means "reconnect (with
backoff)", 3500-3999 means "do not reconnect with the same credentials". Standard codes
from RFC 6455 that the server may use are listed too, with the same advice.
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Close codes the gateway sends."""

    NORMAL = 1000
    GOING_AWAY = 1001
    #: Sent by the WebSocket layer: a framing violation (RFC 6455), e.g. an unmasked frame.
    PROTOCOL_ERROR = 1002
    #: Sent by the WebSocket layer: a text frame that is not valid UTF-8 (RFC 6455 8.1).
    INVALID_PAYLOAD = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    # 3000-3499: transient, reconnect with backoff (possibly to another node).
    SHUTDOWN = 3000
    SLOW_CONSUMER = 3001
    TOO_MANY_REQUESTS = 3002
    AUTH_TIMEOUT = 3003
    SERVICE_UNAVAILABLE = 3004
    # 3500-3999: permanent for these credentials or this client build.
    INVALID_TOKEN = 3500
    TOKEN_EXPIRED = 3501
    PROTOCOL_VIOLATION = 3502
    UNSUPPORTED_VERSION = 3503
    NOT_AUTHENTICATED = 3504
    ACCOUNT_BANNED = 3505
    #: The platform ended the user's sessions (``POST /admin/users/{user}/disconnect``: a
    #: sign-out everywhere, say); the client does not reconnect by itself.
    SESSION_ENDED = 3506
    # Connection limits: reconnecting by itself would only repeat the refusal (and be the very
    # load the limit is there to stop); a connection may succeed once another one is closed.
    USER_CONNECTION_LIMIT = 3510
    ADDRESS_CONNECTION_LIMIT = 3511


#: Reconnecting after these cannot help without a new token or a fixed client.
_PERMANENT_STANDARD = frozenset({1002, 1003, 1007, 1008})


def should_reconnect(code: int | None) -> bool:
    """Whether a client should reconnect after the server closed with ``code``.

    ``None`` (the connection dropped without a close frame) means reconnect. A normal
    close (1000) is a deliberate end and is not retried.
    """
    if code is None:
        return True
    if code == CloseCode.NORMAL:
        return False
    if 3500 <= code <= 3999:
        return False
    return code not in _PERMANENT_STANDARD


def needs_new_token(code: int | None) -> bool:
    """Whether the close means the token must be replaced before reconnecting."""
    return code == CloseCode.TOKEN_EXPIRED
