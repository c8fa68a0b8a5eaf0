"""Which reply answers which request: the one table the SDKs, the gateway's dispatch, the
fuzzer and docs/protocol.md (section 5) all read.

Every client message but ``hello`` carries a ``rid``, and the server answers it exactly once:
with the reply named here, carrying the same ``rid``, or with an ``error`` carrying it.
``hello`` is answered by ``welcome`` (no ``rid``). A message type added to the protocol
without a row here fails tests/test_protocol_replies.py, not a client at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .messages import (
    CLIENT_MESSAGES,
    AcceptGift,
    Appeal,
    Balance,
    BindMentor,
    ClientMessage,
    ConsentReply,
    DeclineGift,
    Done,
    Error,
    GetBalance,
    GetGuardianRequests,
    GetQuote,
    GetRoom,
    GetSkins,
    GiftResolved,
    GiftSent,
    GiveConsent,
    GuardianAnswer,
    GuardianRequests,
    Hello,
    JoinRoom,
    LeaveRoom,
    OpenWish,
    Ping,
    Pong,
    QuoteReply,
    RedeemFrame,
    Room,
    SendGift,
    ServerMessage,
    Skins,
    Welcome,
    WithdrawConsent,
)

#: Request type -> the type of its success reply.
REPLIES: Mapping[type[ClientMessage], type[ServerMessage]] = MappingProxyType({
    Hello: Welcome,
    SendGift: GiftSent,
    AcceptGift: GiftResolved,
    DeclineGift: GiftResolved,
    GetBalance: Balance,
    Ping: Pong,
    JoinRoom: Room,
    LeaveRoom: Room,
    OpenWish: Room,
    GetQuote: QuoteReply,
    GetRoom: Room,
    RedeemFrame: Done,
    BindMentor: Done,
    Appeal: Done,
    GiveConsent: ConsentReply,
    WithdrawConsent: ConsentReply,
    GuardianAnswer: GiftResolved,
    GetSkins: Skins,
    GetGuardianRequests: GuardianRequests,
})

#: The same table by wire names (``{"send_gift": "gift_sent", ...}``): what other languages read.
REPLY_NAMES: Mapping[str, str] = MappingProxyType({req.TYPE: rep.TYPE for req, rep in REPLIES.items()})

#: Request types that carry a ``rid`` (every client message but ``hello``), in wire order.
REQUESTS: tuple[type[ClientMessage], ...] = tuple(cls for cls in CLIENT_MESSAGES.values() if cls is not Hello)


def reply_type(request: ClientMessage | type[ClientMessage]) -> type[ServerMessage]:
    """The success reply of ``request`` (a message or its class)."""
    cls = request if isinstance(request, type) else type(request)
    return REPLIES[cls]


def answers(request: ClientMessage, reply: ServerMessage) -> bool:
    """Whether ``reply`` is a well-formed answer to ``request``: its success reply type or an
    ``error``, with the request's ``rid`` (``hello``: a ``welcome``, or an ``error`` without one)."""
    rid = getattr(request, "rid", None)
    if isinstance(reply, Error):
        return reply.rid == rid
    return isinstance(reply, REPLIES[type(request)]) and getattr(reply, "rid", None) == rid
