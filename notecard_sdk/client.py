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

The session's rules (hello and resume, request ids and their replies, offsets, epochs,
de-duplication, what to resend, what a close code means) live in the sans-I/O
:class:`~protocol.session.ClientSession`; this class moves its frames over a WebSocket and
keeps its timers (deadlines, backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from notecard_sdk.errors import ConnectionRejected, GiftRefused, NotConnected, RequestTimeout
from notecard_sdk.protocol import (
    MAX_FRAME_BYTES,
    AcceptGift,
    Answered,
    Appeal,
    Balance,
    BindMentor,
    Call,
    ClientMessage,
    ClientSession,
    CloseCode,
    ConsentReply,
    DeclineGift,
    Done,
    Encoding,
    Error,
    ErrorCode,
    FrameIgnored,
    GetBalance,
    GetGuardianRequests,
    GetQuote,
    GetRoom,
    GetSkins,
    Gift,
    GiftResolved,
    GiftSent,
    GiveConsent,
    GuardianAnswer,
    GuardianRequested,
    GuardianRequests,
    GuardianSettled,
    JoinRoom,
    LeaveRoom,
    OfferReceived,
    OpenWish,
    OutcomeReceived,
    Ping,
    Pong,
    ProtocolError,
    QuoteReply,
    RedeemFrame,
    Room,
    RoomUpdated,
    SendGift,
    ServerError,
    ServerMessage,
    Skin,
    Skins,
    Welcome,
    Welcomed,
    WithdrawConsent,
    backoff_delay,
)

log = logging.getLogger("notecard_sdk")

TokenSource = str | Callable[[], Awaitable[str]]
R = TypeVar("R", bound=ServerMessage)
Q = TypeVar("Q")


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
        epoch: str | None = None,
        offset: int | None = None,
        device: str | None = None,
    ) -> None:
        """``epoch`` and ``offset``: a stream position the application stored (``client.epoch``,
        ``client.offset`` of an earlier run), to resume from on the first connection.
        ``device``: the device's fingerprint, sent in every hello (docs/risk.md; the app derives
        it, e.g. a hash of the platform's install id)."""
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
        #: The session's state (positions, requests in flight, seen offers), sans I/O.
        self.session = ClientSession(encoding, epoch=epoch, offset=offset, device=device)
        #: The future each waiting request is answered through.
        self._inflight: dict[Call, asyncio.Future[ServerMessage]] = {}
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._first_welcome: asyncio.Future[Welcome] | None = None
        self._closed = False
        self._failure: ConnectionRejected | None = None
        self._offers: asyncio.Queue[Gift] = asyncio.Queue()
        self._outcomes: asyncio.Queue[Gift] = asyncio.Queue()
        self._room_updates: asyncio.Queue[Room] = asyncio.Queue()
        self._guardian_requests: asyncio.Queue[Gift] = asyncio.Queue()
        self._guardian_settled: asyncio.Queue[Gift] = asyncio.Queue()

    @property
    def welcome(self) -> Welcome | None:
        """The newest welcome; ``welcome.node`` says which gateway node serves us."""
        return self.session.welcome

    @property
    def epoch(self) -> str | None:
        return self.session.epoch

    @property
    def offset(self) -> int | None:
        return self.session.offset

    @property
    def recovered(self) -> bool:
        """False after a reconnect whose missed events could not all be replayed."""
        return self.session.recovered

    @property
    def connections(self) -> int:
        return self.session.connections

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
        self.session.close()
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

    async def guardian_answer(self, gift_id: str, ward: str, approve: bool) -> Gift:
        """As the recipient's guardian, approve (the gift becomes the ward's offer; returned
        pending) or reject (the sender is refunded; returned declined) a gift from
        :meth:`next_guardian_request`. The same answer again returns the gift as it stands."""
        return (await self._request(
            lambda rid: GuardianAnswer(rid=rid, gift_id=gift_id, ward=ward, approve=approve), GiftResolved)).gift

    async def next_guardian_request(self, timeout: float | None = None) -> Gift:
        """The next gift to a ward of this user waiting for their answer (live, or replayed
        after a reconnect from the stream position)."""
        return await _next(self._guardian_requests, timeout)

    async def next_guardian_settled(self, timeout: float | None = None) -> Gift:
        """The next request of this guardian answered (by any of their devices, this one
        included), the gift as it then stood: drop it from what waits for an answer."""
        return await _next(self._guardian_settled, timeout)

    async def guardian_requests(self) -> list[Gift]:
        """Every request still waiting for this guardian's answer, soonest end of their window
        first, read a page at a time: what a device lists after connecting, since a device
        without a stream position is not replayed the ``guardian`` events sent before."""
        gifts: list[Gift] = []
        page = await self._guardian_page(None)
        gifts.extend(page.gifts)
        while page.next is not None:
            page = await self._guardian_page(page.next)
            gifts.extend(page.gifts)
        return gifts

    async def _guardian_page(self, after: str | None) -> GuardianRequests:
        return await self._request(lambda rid: GetGuardianRequests(rid=rid, after=after), GuardianRequests)

    async def balance(self) -> Balance:
        return await self._request(lambda rid: GetBalance(rid=rid), Balance)

    async def ping(self) -> Pong:
        return await self._request(lambda rid: Ping(rid=rid), Pong)

    async def skins(self) -> tuple[Skin, ...]:
        """The card art this user's region may see: its own per kind (``optional`` false: what
        offers and balances name in ``skin`` / ``skins``) and the optional ones."""
        return (await self._request(lambda rid: GetSkins(rid=rid), Skins)).skins

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

    async def appeal(self, kind: str, evidence: str) -> Done:
        """Appeal the risk engine's action on this account with the evidence its tier asks
        for (docs/risk.md): ``face_verification``, ``carrier_bill`` or ``notarised_document``."""
        return await self._request(lambda rid: Appeal(rid=rid, kind=kind, evidence=evidence), Done)

    async def give_consent(self, version: str, channel: str = "sdk") -> ConsentReply:
        """Give data-processing consent to the text ``version`` the user was shown (the
        welcome's ``consent_needed`` names the one the user's region asks for)."""
        return await self._request(lambda rid: GiveConsent(rid=rid, version=version, channel=channel),
                                   ConsentReply)

    async def withdraw_consent(self, channel: str = "sdk") -> ConsentReply:
        """Withdraw the consent on record: where the region asks for it, no gift moves any more."""
        return await self._request(lambda rid: WithdrawConsent(rid=rid, channel=channel), ConsentReply)

    async def next_room_update(self, timeout: float | None = None) -> Room:
        """The next pushed update of a room this client watches (throttled by the server)."""
        return await _next(self._room_updates, timeout)

    async def _request(self, build: Callable[[int], ClientMessage], expect: type[R]) -> R:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise NotConnected("client closed")  # as the TypeScript SDK: not the session's RuntimeError
        call = self.session.request(build)
        try:
            while True:
                future: asyncio.Future[ServerMessage] = loop.create_future()
                self._inflight[call] = future
                await self._flush()
                if not future.done():
                    await self._wait(loop, future, deadline, call.message)
                reply = future.result()
                if isinstance(reply, Error):
                    if Answered(call, reply).retryable and loop.time() < deadline:
                        await asyncio.sleep(self._backoff(call.tries))
                        self.session.retry(call)
                        continue
                    raise GiftRefused(reply.code, reply.message, reply.gift, reply.until_ms)
                if not isinstance(reply, expect):
                    raise ProtocolError(ErrorCode.BAD_FRAME, f"unexpected reply {reply.TYPE} to {call.message.TYPE}")
                return reply
        finally:
            self._inflight.pop(call, None)
            self.session.forget(call)

    async def _flush(self) -> None:
        """Write what the session has to send; a closed connection keeps it for the next
        (the session sends every request in flight again after the next welcome)."""
        frames = self.session.data_to_send()
        ws = self._ws
        if ws is None or not frames:
            return
        try:
            for frame in frames:
                await ws.send(frame)
        except ConnectionClosed:
            pass

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

    # ------------------------------------------------------------ connection loop
    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s)

    async def _token_value(self) -> str:
        return self._token if isinstance(self._token, str) else await self._token()

    async def _run(self) -> None:
        while not self._closed:
            code: int | None = None
            try:
                code = await self._connection()
            except (OSError, InvalidHandshake, TimeoutError, InvalidURI) as exc:
                log.debug("connection attempt failed: %s", exc)
                if isinstance(exc, InvalidURI):
                    code = CloseCode.PROTOCOL_VIOLATION
            if self._closed:
                return
            advice = self.session.disconnected(code)
            if not advice.reconnect or (advice.new_token and isinstance(self._token, str)):
                self._fail(ConnectionRejected(code or CloseCode.GOING_AWAY,
                                              f"server closed the connection with {code}"))
                return
            if not self.reconnect:
                self._fail(ConnectionRejected(code or CloseCode.GOING_AWAY, "disconnected"))
                return
            self._url_index = (self._url_index + 1) % len(self.urls)
            attempt = self.session.reconnect_attempt
            self.session.reconnect_attempt += 1
            await asyncio.sleep(self._backoff(attempt))

    @property
    def url(self) -> str:
        """The URL the client is (or will next be) connected to."""
        return self.urls[self._url_index]

    async def _connection(self) -> int | None:
        """One connection from hello to close; returns the close code."""
        subprotocol = Subprotocol(self.encoding.subprotocol)
        async with connect(self.url, subprotocols=[subprotocol], max_size=MAX_FRAME_BYTES, compression=None,
                           open_timeout=self.connect_timeout_s, close_timeout=2) as ws:
            self.session.connect(await self._token_value())
            self._ws = ws
            try:
                await self._flush()
                async for frame in ws:
                    self.session.receive(frame)
                    self._handle_events()
                    await self._flush()
            except ConnectionClosed:
                pass
            finally:
                self._connected.clear()
                self._ws = None
            return ws.close_code

    def _dispatch(self, msg: ServerMessage, ws: ClientConnection | None = None) -> None:
        """A decoded server message (``ws`` is kept for callers that pass it)."""
        self.session.receive_message(msg)
        self._handle_events()

    def _handle_events(self) -> None:
        for event in self.session.events_received():
            if isinstance(event, Answered):
                future = self._inflight.get(event.call)
                if future is not None and not future.done():
                    future.set_result(event.reply)
            elif isinstance(event, OfferReceived):
                self._offers.put_nowait(event.gift)
            elif isinstance(event, OutcomeReceived):
                self._outcomes.put_nowait(event.gift)
            elif isinstance(event, GuardianRequested):
                self._guardian_requests.put_nowait(event.gift)
            elif isinstance(event, GuardianSettled):
                self._guardian_settled.put_nowait(event.gift)
            elif isinstance(event, RoomUpdated):
                self._room_updates.put_nowait(event.room)
            elif isinstance(event, Welcomed):
                self._connected.set()
                if self._first_welcome is not None and not self._first_welcome.done():
                    self._first_welcome.set_result(event.welcome)
            elif isinstance(event, ServerError):
                log.warning("server error %s: %s", event.error.code, event.error.message)
            elif isinstance(event, FrameIgnored):
                log.warning("undecodable frame from the server ignored: %s", event.problem)

    def _fail(self, error: ConnectionRejected) -> None:
        self._failure = error
        self.session.close()
        self._fail_inflight(error)
        if self._first_welcome is not None and not self._first_welcome.done():
            self._first_welcome.set_exception(error)

    def _fail_inflight(self, error: Exception) -> None:
        for future in list(self._inflight.values()):
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
