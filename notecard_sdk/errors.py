"""The SDK's exception tree::

    NotecardError
     +-- GiftRefused          the server refused a request; ``code`` is the protocol error code
     +-- ConnectionRejected   the server closed with a code after which reconnecting cannot help
     +-- NotConnected         the client was closed
     +-- RequestTimeout       no answer in time (the outcome is unknown; retry with the same gift id)
"""

from __future__ import annotations

from notecard_sdk.protocol import Gift


class NotecardError(Exception):
    """Base of the SDK's errors."""


class GiftRefused(NotecardError):
    def __init__(self, code: str, message: str, gift: Gift | None = None, until_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        #: For ALREADY_RESOLVED / GIFT_EXPIRED: the gift as it stands now.
        self.gift = gift
        #: For ACCOUNT_FROZEN: when the freeze ends (server clock, ms).
        self.until_ms = until_ms


class ConnectionRejected(NotecardError):
    def __init__(self, close_code: int, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code


class NotConnected(NotecardError):
    pass


class RequestTimeout(NotecardError):
    pass
