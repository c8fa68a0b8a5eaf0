"""The client's side of a notecard session, sans I/O: one object owns the session's state
and the drivers only move frames and keep time (the layout of the ``websockets`` library).

What it owns (docs/protocol.md sections 5 to 9 and 11):

- the ``hello`` of each connection, resuming from the last ``(epoch, offset)`` processed;
- the welcome, whose pending list may continue in ``pending`` frames;
- request ids, and which reply answers which request (``protocol.REPLIES``);
- the requests in flight, sent again with the same ids (and gift ids) after a reconnect;
- offsets and epochs: an event at or below the last offset of its epoch is not yielded
  again; an offer is yielded once per gift id, whether it came in a welcome, a ``pending``
  frame or an event;
- what a close code means: reconnect, get a new token first, or stop.

A driver calls :meth:`ClientSession.connect` when a connection is open, hands every frame
to :meth:`~ClientSession.receive`, writes :meth:`~ClientSession.data_to_send`, reads
:meth:`~ClientSession.events_received`, and calls :meth:`~ClientSession.disconnected` when
the connection ends. The asyncio SDK (``notecard_sdk``) and the Locust client
(``loadtest.blocking_client``) are such drivers; the TypeScript SDK (``clients/js``)
mirrors this class state for state. Timers (request deadlines, backoff) belong to the
drivers; :func:`backoff_delay` is the one formula they share.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import random
from collections import OrderedDict
from collections.abc import Callable

from .close_codes import needs_new_token, should_reconnect
from .codec import Encoding, Frame, decode_server, encode
from .errors import RETRYABLE_CODES, ProtocolError
from .messages import (
    PROTOCOL_VERSION,
    ClientMessage,
    Error,
    Event,
    EventKind,
    Gift,
    Hello,
    Pending,
    Room,
    ServerMessage,
    Welcome,
)
from .replies import answers

#: Offer ids remembered so that an offer shown again (after a reconnect) is yielded once.
SEEN_OFFERS_MAX = 10_000
#: Full-jitter backoff (docs/protocol.md section 9): base and cap, seconds.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 20.0


def backoff_delay(attempt: int, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S,
                  uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait before try ``attempt`` (from 0): uniform in [0, min(cap, base * 2**attempt)]."""
    return uniform(0.0, min(cap_s, base_s * 2 ** min(attempt, 32)))


class SessionState(enum.Enum):
    #: No connection (before the first, or between a close and the next).
    IDLE = "idle"
    #: ``hello`` sent; waiting for ``welcome``.
    AWAITING_WELCOME = "awaiting_welcome"
    #: ``welcome`` said ``pending_more``: its list continues in ``pending`` frames.
    RECEIVING_PENDING = "receiving_pending"
    #: Welcomed: requests go out at once.
    OPEN = "open"
    #: Ended for good (closed by the application, or a close code that says stop).
    CLOSED = "closed"


@dataclasses.dataclass(eq=False, slots=True)
class Call:
    """One request of the application, over one or more tries and connections. ``message``
    is the try in flight; a retry rebuilds it with a new ``rid`` from ``build`` (a gift id
    is chosen by the caller before the first try, so every try carries the same one)."""

    build: Callable[[int], ClientMessage]
    message: ClientMessage
    #: Tries so far (a resend of the same try after a reconnect is not a new one).
    tries: int = 1

    @property
    def rid(self) -> int:
        rid: int = self.message.rid  # type: ignore[union-attr]  # every request has one
        return rid


# ---------------------------------------------------------------- events for the driver


@dataclasses.dataclass(frozen=True, slots=True)
class Welcomed:
    """A connection was welcomed; ``welcome.pending`` is the whole pending list."""

    welcome: Welcome
    #: The hello asked to resume (so ``welcome.recovered`` says whether nothing was lost).
    resumed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class OfferReceived:
    """An offer to this user, first seen now (welcome, ``pending`` frame or event)."""

    gift: Gift


@dataclasses.dataclass(frozen=True, slots=True)
class OutcomeReceived:
    """A gift this user sent or received reached a final state."""

    gift: Gift


@dataclasses.dataclass(frozen=True, slots=True)
class GuardianRequested:
    """To a guardian: a gift to their ward (``gift.recipient``) waits for their answer until
    ``gift.expires_at_ms`` (answer with ``guardian_answer``; docs/regions.md)."""

    gift: Gift


@dataclasses.dataclass(frozen=True, slots=True)
class GuardianSettled:
    """To a guardian: a request of theirs was answered (by one of their devices; ``gift`` as
    it now stands): drop it (docs/regions.md)."""

    gift: Gift


@dataclasses.dataclass(frozen=True, slots=True)
class RoomUpdated:
    """A push of a live room this connection watches."""

    room: Room


@dataclasses.dataclass(frozen=True, slots=True)
class Answered:
    """The server answered ``call``: ``reply`` is its success reply or an ``error``."""

    call: Call
    reply: ServerMessage

    @property
    def error(self) -> Error | None:
        return self.reply if isinstance(self.reply, Error) else None

    @property
    def retryable(self) -> bool:
        """The same request may succeed if tried again (RATE_LIMITED, UNAVAILABLE)."""
        return isinstance(self.reply, Error) and self.reply.code in RETRYABLE_CODES

    @property
    def unexpected(self) -> bool:
        """The reply is not one ``protocol.REPLIES`` allows for the request (a server bug)."""
        return not answers(self.call.message, self.reply)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` without ``rid``: a refused hello, or a frame whose rid was unreadable;
    before a close it says why the connection ends."""

    error: Error


@dataclasses.dataclass(frozen=True, slots=True)
class FrameIgnored:
    """A frame that could not be read, or of a type this client does not know (a newer
    server's, docs/protocol.md section 15): ignored, reported for the logs."""

    problem: ProtocolError


SessionEvent = (Welcomed | OfferReceived | OutcomeReceived | GuardianRequested | GuardianSettled | RoomUpdated
                | Answered | ServerError | FrameIgnored)


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnect:
    """What to do after a connection ended with ``code`` (None: no close frame)."""

    code: int | None
    #: Connecting again can help (docs/protocol.md section 11).
    reconnect: bool
    #: Only with a new token (TOKEN_EXPIRED).
    new_token: bool


class ClientSession:
    """The state of one user's session over any number of connections."""

    def __init__(self, encoding: Encoding = Encoding.MSGPACK, *, epoch: str | None = None,
                 offset: int | None = None, seen_offers_max: int = SEEN_OFFERS_MAX,
                 device: str | None = None) -> None:
        self.encoding = encoding
        #: The device fingerprint every hello carries (docs/risk.md), or None.
        self.device = device
        self.state = SessionState.IDLE
        #: Position of the last event processed; sent in each hello to resume from there.
        self.epoch = epoch
        self.offset = offset
        #: False after a welcome whose missed events could not all be replayed.
        self.recovered = True
        #: The newest complete welcome.
        self.welcome: Welcome | None = None
        #: Connections welcomed so far.
        self.connections = 0
        #: Reconnect tries since the last welcome (the driver's backoff attempt).
        self.reconnect_attempt = 0
        self._rids = itertools.count(1)
        self._in_flight: dict[int, Call] = {}
        self._seen_offers: OrderedDict[str, None] = OrderedDict()
        self._seen_max = seen_offers_max
        self._partial: tuple[Welcome, list[Gift]] | None = None
        self._resuming = False
        self._out: list[Frame] = []
        self._events: list[SessionEvent] = []

    # ------------------------------------------------------------ connection
    def connect(self, token: str) -> None:
        """A connection is open: queue its ``hello`` (resuming from the last position)."""
        if self.state is SessionState.CLOSED:
            raise RuntimeError("session closed")
        self._partial = None
        # Both or neither (section 7): an epoch without an offset (after a welcome that could
        # not recover, before any event) is no position to resume from.
        self._resuming = self.epoch is not None and self.offset is not None
        self.state = SessionState.AWAITING_WELCOME
        if self._resuming:
            self._send(Hello(v=PROTOCOL_VERSION, token=token, epoch=self.epoch, offset=self.offset,
                             device=self.device))
        else:
            self._send(Hello(v=PROTOCOL_VERSION, token=token, device=self.device))

    def disconnected(self, code: int | None) -> Disconnect:
        """The connection ended; calls in flight stay, to be sent again after the next welcome."""
        self._partial = None
        self._out.clear()  # frames for the old connection; the next one starts with hello
        advice = Disconnect(code, should_reconnect(code) or needs_new_token(code), needs_new_token(code))
        if self.state is not SessionState.CLOSED:
            self.state = SessionState.IDLE if advice.reconnect else SessionState.CLOSED
        return advice

    def reconnect_delay(self, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
        """Seconds to wait before the next connection try (full jitter; the attempt counts
        from 0 and starts again after a welcome)."""
        delay = backoff_delay(self.reconnect_attempt, base_s, cap_s)
        self.reconnect_attempt += 1
        return delay

    def close(self) -> list[Call]:
        """End the session; returns the calls still in flight (their outcome is unknown)."""
        self.state = SessionState.CLOSED
        self._out.clear()
        calls = list(self._in_flight.values())
        self._in_flight.clear()
        return calls

    # ------------------------------------------------------------ requests
    def request(self, build: Callable[[int], ClientMessage]) -> Call:
        """Start a request: ``build(rid)`` makes the message. It goes out now when the
        session is open, else after the next welcome."""
        if self.state is SessionState.CLOSED:
            raise RuntimeError("session closed")
        rid = next(self._rids)
        call = Call(build, build(rid))
        self._in_flight[rid] = call
        if self.state is SessionState.OPEN:
            self._send(call.message)
        return call

    def retry(self, call: Call) -> None:
        """Try ``call`` again (after a retryable error and the driver's backoff): a new rid,
        the same payload."""
        self._in_flight.pop(call.rid, None)
        rid = next(self._rids)
        call.message = call.build(rid)
        call.tries += 1
        self._in_flight[rid] = call
        if self.state is SessionState.OPEN:
            self._send(call.message)

    def forget(self, call: Call) -> None:
        """Stop waiting for ``call`` (a deadline passed); a late reply is then dropped."""
        if self._in_flight.get(call.rid) is call:
            del self._in_flight[call.rid]

    @property
    def in_flight(self) -> list[Call]:
        return list(self._in_flight.values())

    # ------------------------------------------------------------ frames
    def data_to_send(self) -> list[Frame]:
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[SessionEvent]:
        events, self._events = self._events, []
        return events

    def receive(self, frame: Frame) -> None:
        """A frame from the server."""
        try:
            msg = decode_server(frame, self.encoding)
        except ProtocolError as problem:
            self._events.append(FrameIgnored(problem))
            return
        self.receive_message(msg)

    def receive_message(self, msg: ServerMessage) -> None:
        """A decoded server message (drivers whose transport decodes for them)."""
        if self._partial is not None:
            if isinstance(msg, Pending):
                self._partial[1].extend(msg.gifts)
                if not msg.more:
                    self._complete_welcome()
                return
            self._complete_welcome()  # the server moved on: take the list as it came
        if isinstance(msg, Welcome):
            if msg.pending_more:
                self._partial = (msg, list(msg.pending))
                self.state = SessionState.RECEIVING_PENDING
            else:
                self._welcomed(msg)
        elif isinstance(msg, Event):
            self._event(msg)
        elif isinstance(msg, Pending):
            for gift in msg.gifts:  # not after a welcome that announced it: offers all the same
                self._offer(gift)
        elif isinstance(msg, Room) and msg.rid is None:
            self._events.append(RoomUpdated(msg))
        elif (rid := getattr(msg, "rid", None)) is not None:
            call = self._in_flight.pop(rid, None)
            if call is not None:
                self._events.append(Answered(call, msg))
        elif isinstance(msg, Error):
            self._events.append(ServerError(msg))

    # ------------------------------------------------------------ inside
    def _send(self, msg: ClientMessage) -> None:
        self._out.append(encode(msg, self.encoding))

    def _complete_welcome(self) -> None:
        assert self._partial is not None
        welcome, pending = self._partial
        self._partial = None
        self._welcomed(dataclasses.replace(welcome, pending=tuple(pending), pending_more=None))

    def _welcomed(self, welcome: Welcome) -> None:
        resumed = self._resuming
        self.welcome = welcome
        self.connections += 1
        self.reconnect_attempt = 0
        self.recovered = welcome.recovered
        if not resumed:
            self.epoch, self.offset = welcome.epoch, welcome.offset
        elif not welcome.recovered or welcome.epoch != self.epoch:
            # History was lost: take whatever the server replays next, and rely on the
            # pending list (offers are de-duplicated by gift id).
            self.epoch, self.offset = welcome.epoch, None
        self.state = SessionState.OPEN
        self._events.append(Welcomed(welcome, resumed))
        for gift in welcome.pending:
            self._offer(gift)
        # Requests in flight when the last connection dropped go out again, same ids.
        for call in self._in_flight.values():
            self._send(call.message)

    def _offer(self, gift: Gift) -> None:
        if gift.gift_id in self._seen_offers:
            return
        self._seen_offers[gift.gift_id] = None
        if len(self._seen_offers) > self._seen_max:
            self._seen_offers.popitem(last=False)
        self._events.append(OfferReceived(gift))

    def _event(self, event: Event) -> None:
        if event.epoch == self.epoch and self.offset is not None and event.offset <= self.offset:
            return  # already processed (replayed after a reconnect)
        self.epoch, self.offset = event.epoch, event.offset
        if event.event == EventKind.OFFER:
            self._offer(event.gift)
        elif event.event == EventKind.GUARDIAN:
            self._events.append(GuardianRequested(event.gift))
        elif event.event == EventKind.GUARDIAN_DONE:
            self._events.append(GuardianSettled(event.gift))
        else:
            self._events.append(OutcomeReceived(event.gift))
