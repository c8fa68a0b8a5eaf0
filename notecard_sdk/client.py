"""The asyncio client of the notecard gateway.

::

    async with NotecardClient(url, token) as client:
        gift = await client.send_gift("bob", qty=1)        # the card is held, offer sent
        async for offer in client.offers():                 # on bob's side
            await client.accept(offer.gift_id)

The client keeps one connection and reconnects by itself (full-jitter exponential backoff)
unless the server's close code says reconnecting cannot help. Requests in flight when the
connection drops are sent again on the new connection with the same ids: a gift id is
chosen before the first try, so a retry never gives a card twice. Events carry offsets;
on reconnect the client resumes from the last one it processed and never yields an event
or an offer twice.

Gift ids (docs/protocol.md section 9): the same id is sent again only while its request
is unanswered (a dropped connection, ``RATE_LIMITED``, ``UNAVAILABLE``), never after an
answer; the server remembers a refusal longer than a copy can be on its way (60 s by
default), so a late copy of a refused send never creates the gift. A refusal spends the
id: each :meth:`NotecardClient.send_gift` call is a new attempt with a new id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from notecard_sdk.errors import ConnectionRejected, GiftRefused, NotConnected, RequestTimeout
from notecard_sdk.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    RETRYABLE_CODES,
    AcceptGift,
    Balance,
    BindMentor,
    ClientMessage,
    CloseCode,
    DeclineGift,
    Done,
    Encoding,
    Error,
    ErrorCode,
    Event,
    EventKind,
    GetBalance,
    GetQuote,
    GetRoom,
    Gift,
    GiftResolved,
    GiftSent,
    Hello,
    JoinRoom,
    LeaveRoom,
    OpenWish,
    Pending,
    Ping,
    Pong,
    ProtocolError,
    QuoteReply,
    RedeemFrame,
    Room,
    SendGift,
    ServerMessage,
    Welcome,
    decode_server,
    encode,
    needs_new_token,
    should_reconnect,
)

log = logging.getLogger("notecard_sdk")

TokenSource = str | Callable[[], Awaitable[str]]
R = TypeVar("R", bound=ServerMessage)
Q = TypeVar("Q")

#: Remembered offer ids, so that an offer shown again after a reconnect is yielded once.
_SEEN_OFFERS_MAX = 10_000


class _Expired(Exception):
    """Set on a request's future when its deadline passes (never seen outside the client)."""


def _expire(future: asyncio.Future[ServerMessage]) -> None:
    if not future.done():
        future.set_exception(_Expired())


class NotecardClient:
    def __init__(
        self,
        url: str | Sequence[str],
        token: TokenSource,
        *,
        encoding: Encoding = Encoding.MSGPACK,
        reconnect: bool = True,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 20.0,
        request_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        #: Gateway URLs (usually one load balancer); reconnects move on to the next one.
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("at least one gateway URL is required")
        self._url_index = 0
        self._token = token
        self.encoding = encoding
        self.reconnect = reconnect
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._rids = itertools.count(1)
        self._inflight: dict[int, tuple[ClientMessage, asyncio.Future[ServerMessage]]] = {}
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._first_welcome: asyncio.Future[Welcome] | None = None
        self._closed = False
        self._failure: ConnectionRejected | None = None
        self._offers: asyncio.Queue[Gift] = asyncio.Queue()
        self._outcomes: asyncio.Queue[Gift] = asyncio.Queue()
        self._room_updates: asyncio.Queue[Room] = asyncio.Queue()
        self._seen_offers: OrderedDict[str, None] = OrderedDict()
        #: A welcome whose pending list comes in parts, with the offers received so far.
        self._partial_welcome: tuple[Welcome, list[Gift]] | None = None
        self._background: set[asyncio.Task[None]] = set()
        #: The newest welcome; ``welcome.node`` says which gateway node serves us.
        self.welcome: Welcome | None = None
        self.epoch: str | None = None
        self.offset: int | None = None
        #: False after a reconnect whose missed events could not all be replayed.
        self.recovered = True
        self.connections = 0

    # ------------------------------------------------------------ life
    async def connect(self) -> Welcome:
        """Connect and authenticate; returns the first welcome or raises ConnectionRejected."""
        if self._runner is not None:
            raise RuntimeError("already connected")
        self._first_welcome = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name="notecard-client")
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await asyncio.shield(self._first_welcome)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.close(int(CloseCode.NORMAL))
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._fail_inflight(NotConnected("client closed"))

    async def __aenter__(self) -> NotecardClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def user(self) -> str | None:
        return self.welcome.user if self.welcome else None

    @property
    def node(self) -> str | None:
        return self.welcome.node if self.welcome else None

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    # ------------------------------------------------------------ requests
    async def send_gift(self, to: str, qty: int = 1, kind: str = "note", gift_id: str | None = None,
                        quote: str | None = None) -> Gift:
        """Give ``qty`` cards of ``kind`` to ``to``. Returns the held gift (state ``pending``).

        Raises :class:`GiftRefused` with the rule's code. ``gift_id`` defaults to a new
        UUID, so every call is a new attempt. Pass your own (persisted before the call) only
        to repeat a call whose outcome you did not learn (RequestTimeout, NotConnected, a
        restart): a refused id is spent, and the same id answers the same refusal.
        ``quote``: the id of a live-room quote (:meth:`quote`) that prices the gift.
        """
        gid = gift_id or uuid.uuid4().hex
        reply = await self._request(
            lambda rid: SendGift(rid=rid, gift_id=gid, to=to, kind=kind, qty=qty, quote=quote), GiftSent
        )
        return reply.gift

    async def accept(self, gift_id: str) -> Gift:
        """Accept an offer; returns the gift in state ``accepted``."""
        return (await self._request(lambda rid: AcceptGift(rid=rid, gift_id=gift_id), GiftResolved)).gift

    async def decline(self, gift_id: str) -> Gift:
        """Decline an offer; the card goes back to the sender."""
        return (await self._request(lambda rid: DeclineGift(rid=rid, gift_id=gift_id), GiftResolved)).gift

    async def balance(self) -> Balance:
        return await self._request(lambda rid: GetBalance(rid=rid), Balance)

    async def ping(self) -> Pong:
        return await self._request(lambda rid: Ping(rid=rid), Pong)

    # ------------------------------------------------------------ scenes
    async def join_room(self, room: str) -> Room:
        """Watch the live room of streamer ``room``; updates arrive via :meth:`next_room_update`."""
        return await self._request(lambda rid: JoinRoom(rid=rid, room=room), Room)

    async def leave_room(self, room: str) -> Room:
        return await self._request(lambda rid: LeaveRoom(rid=rid, room=room), Room)

    async def open_wish(self, kind: str, target: int) -> Room:
        """As a streamer: open a gift wish for ``target`` cards of ``kind`` in your room."""
        return await self._request(lambda rid: OpenWish(rid=rid, kind=kind, target=target), Room)

    async def quote(self, room: str, qty: int = 1, kind: str = "note") -> QuoteReply:
        """The price of a gift to the room's streamer; pass ``quote_id`` to :meth:`send_gift`."""
        return await self._request(lambda rid: GetQuote(rid=rid, room=room, kind=kind, qty=qty), QuoteReply)

    async def room(self, room: str, top: int = 10) -> Room:
        """The room's viewers, wish, top contributors and your own rank."""
        return await self._request(lambda rid: GetRoom(rid=rid, room=room, top=top), Room)

    async def redeem_frame(self, festival: str) -> Done:
        return await self._request(lambda rid: RedeemFrame(rid=rid, festival=festival), Done)

    async def bind_mentor(self, mentor: str) -> Done:
        return await self._request(lambda rid: BindMentor(rid=rid, mentor=mentor), Done)

    async def next_room_update(self, timeout: float | None = None) -> Room:
        """The next pushed update of a room this client watches (throttled by the server)."""
        return await _next(self._room_updates, timeout)

    async def _request(self, build: Callable[[int], ClientMessage], expect: type[R]) -> R:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        attempt = 0
        while True:
            rid = next(self._rids)
            msg = build(rid)
            future: asyncio.Future[ServerMessage] = loop.create_future()
            self._inflight[rid] = (msg, future)
            try:
                if self._failure is not None:
                    raise self._failure
                if self._ws is not None and self._connected.is_set():
                    # Not contextlib.suppress: that is an object and two calls per request.
                    try:  # noqa: SIM105
                        await self._ws.send(encode(msg, self.encoding))
                    except ConnectionClosed:
                        pass  # _run resends every in-flight request on reconnect
                if not future.done():
                    await self._wait(loop, future, deadline, msg)
                reply = future.result()
            finally:
                self._inflight.pop(rid, None)
            if isinstance(reply, Error):
                code = ErrorCode(reply.code) if reply.code in ErrorCode.__members__ else None
                if code in RETRYABLE_CODES and loop.time() < deadline:
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                raise GiftRefused(reply.code, reply.message, reply.gift)
            if not isinstance(reply, expect):
                raise ProtocolError(ErrorCode.BAD_FRAME, f"unexpected reply {reply.TYPE} to {msg.TYPE}")
            return reply

    async def _wait(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[ServerMessage], deadline: float,
                    msg: ClientMessage) -> None:
        """Wait until ``future`` is done, or raise RequestTimeout at ``deadline`` (loop time).

        One timer per request, cancelled by the reply, instead of ``wait_for(shield(...))``,
        which costs two more futures, a timer, their callbacks and two extra event-loop turns per
        reply. The future is this request's own, so the timer may complete it: a late reply
        then finds it done and is dropped, as before.
        """
        if deadline <= loop.time():
            # The deadline passed during a retry's backoff or the send: no wait at all.
            raise RequestTimeout(f"no answer to {msg.TYPE} within {self.request_timeout_s}s")
        timer = loop.call_at(deadline, _expire, future)
        try:
            await future
        except _Expired:
            raise RequestTimeout(f"no answer to {msg.TYPE} within {self.request_timeout_s}s") from None
        except BaseException:
            # Cancelled in the very loop turn the deadline or a failure landed: mark the
            # future's exception as seen, or asyncio logs it as never retrieved.
            if future.done() and not future.cancelled():
                future.exception()
            raise
        finally:
            timer.cancel()

    # ------------------------------------------------------------ pushes
    async def offers(self) -> AsyncIterator[Gift]:
        """Offers addressed to this user, each once, including those pending at connect."""
        while True:
            yield await self._offers.get()

    async def outcomes(self) -> AsyncIterator[Gift]:
        """Final states of gifts this user sent or received (accepted, declined, expired)."""
        while True:
            yield await self._outcomes.get()

    async def next_offer(self, timeout: float | None = None) -> Gift:
        return await _next(self._offers, timeout)

    async def next_outcome(self, timeout: float | None = None) -> Gift:
        return await _next(self._outcomes, timeout)

    def _offer(self, gift: Gift) -> None:
        if gift.gift_id in self._seen_offers:
            return
        self._seen_offers[gift.gift_id] = None
        if len(self._seen_offers) > _SEEN_OFFERS_MAX:
            self._seen_offers.popitem(last=False)
        self._offers.put_nowait(gift)

    def _event(self, event: Event) -> None:
        if event.epoch == self.epoch and self.offset is not None and event.offset <= self.offset:
            return  # already processed (replayed after a reconnect)
        self.epoch, self.offset = event.epoch, event.offset
        if event.event == EventKind.OFFER:
            self._offer(event.gift)
        else:
            self._outcomes.put_nowait(event.gift)

    # ------------------------------------------------------------ connection loop
    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))

    async def _token_value(self) -> str:
        return self._token if isinstance(self._token, str) else await self._token()

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            code: int | None = None
            try:
                code = await self._session()
                attempt = 0
            except (OSError, InvalidHandshake, TimeoutError, InvalidURI) as exc:
                log.debug("connection attempt failed: %s", exc)
                if isinstance(exc, InvalidURI):
                    code = CloseCode.PROTOCOL_VIOLATION
            if self._closed:
                return
            if code is not None and not should_reconnect(code) and not (
                needs_new_token(code) and not isinstance(self._token, str)
            ):
                self._fail(ConnectionRejected(code, f"server closed the connection with {code}"))
                return
            if not self.reconnect:
                self._fail(ConnectionRejected(code or CloseCode.GOING_AWAY, "disconnected"))
                return
            attempt += 1
            self._url_index = (self._url_index + 1) % len(self.urls)
            await asyncio.sleep(self._backoff(attempt))

    @property
    def url(self) -> str:
        """The URL the client is (or will next be) connected to."""
        return self.urls[self._url_index]

    async def _session(self) -> int | None:
        """One connection from hello to close; returns the close code."""
        subprotocol = Subprotocol(self.encoding.subprotocol)
        async with connect(self.url, subprotocols=[subprotocol], max_size=MAX_FRAME_BYTES, compression=None,
                           open_timeout=self.connect_timeout_s, close_timeout=2) as ws:
            hello = Hello(v=PROTOCOL_VERSION, token=await self._token_value(), epoch=self.epoch,
                          offset=self.offset)
            await ws.send(encode(hello, self.encoding))
            try:
                async for frame in ws:
                    try:
                        msg = decode_server(frame, self.encoding)
                    except ProtocolError as exc:
                        log.warning("undecodable frame from the server ignored: %s", exc)
                        continue
                    self._dispatch(msg, ws)
            except ConnectionClosed:
                pass
            finally:
                self._connected.clear()
                self._ws = None
                self._partial_welcome = None
            return ws.close_code

    def _dispatch(self, msg: ServerMessage, ws: ClientConnection) -> None:
        if self._partial_welcome is not None:
            if isinstance(msg, Pending):
                self._pending_part(msg, ws)
                return
            self._welcome_complete(ws)  # the server moved on: take the list as it came
        if isinstance(msg, Welcome):
            if msg.pending_more:
                self._partial_welcome = (msg, list(msg.pending))
            else:
                self._welcomed(msg, ws)
        elif isinstance(msg, Event):
            self._event(msg)
        elif isinstance(msg, Pending):
            for gift in msg.gifts:  # not after a welcome that announced it: offers all the same
                self._offer(gift)
        elif isinstance(msg, Room) and msg.rid is None:
            self._room_updates.put_nowait(msg)
        elif (rid := getattr(msg, "rid", None)) is not None:
            entry = self._inflight.get(rid)
            if entry is not None and not entry[1].done():
                entry[1].set_result(msg)
        elif isinstance(msg, Error):
            log.warning("server error %s: %s", msg.code, msg.message)

    def _pending_part(self, part: Pending, ws: ClientConnection) -> None:
        assert self._partial_welcome is not None
        self._partial_welcome[1].extend(part.gifts)
        if not part.more:
            self._welcome_complete(ws)

    def _welcome_complete(self, ws: ClientConnection) -> None:
        """The welcome as if its pending list had come whole (``client.welcome.pending``)."""
        assert self._partial_welcome is not None
        welcome, pending = self._partial_welcome
        self._partial_welcome = None
        self._welcomed(dataclasses.replace(welcome, pending=tuple(pending), pending_more=None), ws)

    def _welcomed(self, welcome: Welcome, ws: ClientConnection) -> None:
        resumed = self.epoch is not None
        self.welcome = welcome
        self.connections += 1
        self.recovered = welcome.recovered
        if not resumed:
            self.epoch, self.offset = welcome.epoch, welcome.offset
        elif not welcome.recovered or welcome.epoch != self.epoch:
            # History was lost: take whatever the server replays next, and rely on the
            # pending list (offers are de-duplicated by gift id).
            self.epoch, self.offset = welcome.epoch, None
        for gift in welcome.pending:
            self._offer(gift)
        self._ws = ws
        self._connected.set()
        if self._first_welcome is not None and not self._first_welcome.done():
            self._first_welcome.set_result(welcome)
        # Requests that were in flight when the last connection dropped go out again, same ids.
        unanswered = [msg for msg, future in self._inflight.values() if not future.done()]
        if unanswered:
            task = asyncio.create_task(self._resend(ws, unanswered))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _resend(self, ws: ClientConnection, messages: list[ClientMessage]) -> None:
        with contextlib.suppress(ConnectionClosed):
            for msg in messages:
                await ws.send(encode(msg, self.encoding))

    def _fail(self, error: ConnectionRejected) -> None:
        self._failure = error
        self._fail_inflight(error)
        if self._first_welcome is not None and not self._first_welcome.done():
            self._first_welcome.set_exception(error)

    def _fail_inflight(self, error: Exception) -> None:
        for _, future in list(self._inflight.values()):
            if not future.done():
                future.set_exception(error)


async def _next(queue: asyncio.Queue[Q], timeout: float | None) -> Q:
    """The next item of ``queue``, or TimeoutError after ``timeout`` seconds.

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11 wait_for returns an item that
    arrived in the loop turn its caller was cancelled and drops the cancellation, so a task
    cancelled around next_offer() could run on. Here the caller is cancelled and the item
    stays queued for the next call; on a timeout, too.
    """
    if timeout is None:
        return await queue.get()
    async with asyncio.timeout(timeout):
        return await queue.get()
