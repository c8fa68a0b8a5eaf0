"""The server's side of a notecard session, sans I/O: the frame-level rules of
docs/protocol.md section 6 that do not depend on storage.

- The first frame must be a valid ``hello`` of version 1; anything else is refused with
  an ``error`` and a close code (3504, 3503).
- A malformed frame later is answered with an ``error`` (with the ``rid`` when it could be
  read) and changes nothing; the ``max_bad_frames``-th closes the connection (3502).
- The welcome's pending list is cut into frames of :data:`PENDING_PER_FRAME` offers.
- A reply must be the one ``protocol.REPLIES`` names for its request, or an ``error`` with
  its ``rid``; anything else becomes ``INTERNAL`` (a server bug reaches no client as a
  reply it cannot match).

The gateway (``gateway/session.py``) drives it with a WebSocket and Redis; the tests drive
it in memory against :class:`protocol.session.ClientSession`, as h11 pairs its client and
server. Token verification, admission and rate limits are the gateway's.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from .close_codes import CloseCode
from .codec import Encoding, Frame, decode_client
from .errors import ErrorCode, ProtocolError
from .messages import PROTOCOL_VERSION, ClientMessage, Error, Gift, Hello, Pending, ServerMessage, Welcome
from .replies import answers

#: Offers per welcome or ``pending`` frame. The largest open gift (64-character ids, 16-digit
#: numbers, every optional field but the lucky card's, which only an accepted gift has) takes
#: about 800 bytes of JSON: 64 of them plus the welcome's own fields stay below
#: MAX_FRAME_BYTES (tests/test_protocol_frame_sizes.py measures both encodings).
PENDING_PER_FRAME = 64
#: Malformed frames on one connection before it is closed (NOTECARD_MAX_BAD_FRAMES).
MAX_BAD_FRAMES = 5


class ServerState(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    #: A valid hello arrived; the gateway checks the token and the account.
    AUTHENTICATING = "authenticating"
    SERVING = "serving"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True, slots=True)
class Refuse:
    """Send ``error``, then close with ``close`` when it is set."""

    error: Error
    close: CloseCode | None = None


def welcome_messages(welcome: Welcome, pending: Sequence[Gift]) -> list[Welcome | Pending]:
    """``welcome`` with the first offers of ``pending``, then one ``pending`` frame per further
    :data:`PENDING_PER_FRAME` offers; ``pending_more`` and ``more`` say another follows."""
    pages = [tuple(pending[i : i + PENDING_PER_FRAME]) for i in range(0, len(pending), PENDING_PER_FRAME)]
    pages = pages or [()]
    last = len(pages) - 1
    first = dataclasses.replace(welcome, pending=pages[0], pending_more=True if last else None)
    return [first, *(Pending(gifts=page, more=True if i < last else None) for i, page in enumerate(pages) if i)]


class ServerSession:
    """One connection, seen from the server."""

    def __init__(self, encoding: Encoding, *, max_bad_frames: int = MAX_BAD_FRAMES) -> None:
        self.encoding = encoding
        self.max_bad_frames = max_bad_frames
        self.state = ServerState.AWAITING_HELLO
        self.bad_frames = 0

    def receive(self, frame: Frame) -> ClientMessage | Refuse:
        """A frame from the client: the message to act on, or what to refuse it with."""
        if self.state is ServerState.AWAITING_HELLO:
            return self._hello(frame)
        try:
            return decode_client(frame, self.encoding)
        except ProtocolError as exc:
            self.bad_frames += 1
            error = Error(rid=exc.rid, code=exc.code, message=exc.message)
            if self.bad_frames >= self.max_bad_frames:
                self.state = ServerState.CLOSED
                return Refuse(error, CloseCode.PROTOCOL_VIOLATION)
            return Refuse(error)

    def _hello(self, frame: Frame) -> Hello | Refuse:
        try:
            msg = decode_client(frame, self.encoding)
        except ProtocolError:
            return self.reject(CloseCode.NOT_AUTHENTICATED, ErrorCode.NOT_AUTHENTICATED,
                               "the first frame must be a valid hello")
        if not isinstance(msg, Hello):
            return self.reject(CloseCode.NOT_AUTHENTICATED, ErrorCode.NOT_AUTHENTICATED,
                               "the first frame must be hello")
        if msg.v != PROTOCOL_VERSION:
            return self.reject(CloseCode.UNSUPPORTED_VERSION, ErrorCode.UNSUPPORTED_VERSION,
                               f"protocol version {PROTOCOL_VERSION} required")
        self.state = ServerState.AUTHENTICATING
        return msg

    def reject(self, close: CloseCode, code: ErrorCode, reason: str) -> Refuse:
        """Refuse the connection: an ``error`` without ``rid``, then the close."""
        self.state = ServerState.CLOSED
        return Refuse(Error(code=code, message=reason), close)

    def welcome(self, welcome: Welcome, pending: Sequence[Gift]) -> list[Welcome | Pending]:
        """The frames that welcome the client: the welcome, then the rest of its pending list."""
        self.state = ServerState.SERVING
        return welcome_messages(welcome, pending)

    def reply(self, request: ClientMessage, reply: ServerMessage) -> ServerMessage:
        """``reply`` when it answers ``request`` as the protocol says, else ``INTERNAL``."""
        if answers(request, reply) or (isinstance(request, Hello) and isinstance(reply, Error)):
            return reply
        return Error(rid=getattr(request, "rid", None), code=ErrorCode.INTERNAL, message="internal error")
