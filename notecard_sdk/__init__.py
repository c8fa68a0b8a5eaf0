"""The notecard client SDK: an asyncio WebSocket client of the gateway.

Depends on the ``protocol`` package alone (never on the server's code).
"""

from notecard_sdk.client import NotecardClient, TokenSource
from notecard_sdk.errors import ConnectionRejected, GiftRefused, NotConnected, NotecardError, RequestTimeout
from notecard_sdk.protocol import Balance, Encoding, ErrorCode, Gift, GiftState

__all__ = [
    "Balance",
    "ConnectionRejected",
    "Encoding",
    "ErrorCode",
    "Gift",
    "GiftRefused",
    "GiftState",
    "NotConnected",
    "NotecardClient",
    "NotecardError",
    "RequestTimeout",
    "TokenSource",
]
