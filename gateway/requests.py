"""Requests of an authenticated client, answered through clearing.

Each request maps to one clearing call and one reply. :data:`RequestHandler.HANDLERS` says
which method answers which message type, one row per client message (tests check that
it covers every type of ``protocol.CLIENT_MESSAGES`` and that each answer is the reply
``protocol.REPLIES`` names). Refusals become ``error`` frames with
the code of the same name; an unreachable Redis becomes ``UNAVAILABLE`` (retryable: the
outcome is unknown, and a retry with the same gift id tells it). Nothing internal (a
traceback, a Redis message) ever reaches the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from clearing import Clearing, ClearingUnavailable, GiftRules, Refusal, Refused
from clearing.consent import Consents
from clearing.scenes import Scenes
from clearing.skins import region_art, region_of, visible
from gateway.connection import ClientConnection
from gateway.metrics import NodeMetrics
from gateway.rooms import RoomHub
from gateway.views import gift_view, room_view
from protocol import (
    PENDING_PER_FRAME,
    AcceptGift,
    Appeal,
    Balance,
    BindMentor,
    ClientMessage,
    ConsentReply,
    DeclineGift,
    Done,
    Error,
    ErrorCode,
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
    SendGift,
    ServerMessage,
    Skin,
    Skins,
    WithdrawConsent,
)
from risk.appeals import Appeals
from risk.signals import SignalLog

log = logging.getLogger("notecard.gateway.requests")
T = TypeVar("T")


Handler = Callable[["RequestHandler", str, Any, str, "ClientConnection | None"], Awaitable[ServerMessage]]


class RequestHandler:
    #: Message type -> the method answering it (filled in below the class).
    HANDLERS: Mapping[type[ClientMessage], Handler]

    def __init__(self, clearing: Clearing, rules: GiftRules, metrics: NodeMetrics,
                 scenes: Scenes | None = None, rooms: RoomHub | None = None,
                 sender_of: Callable[[str], str | None] = lambda gift_id: None,
                 signals: SignalLog | None = None, appeals: Appeals | None = None,
                 consents: Consents | None = None) -> None:
        self.clearing = clearing
        self.rules = rules
        self.metrics = metrics
        self.scenes = scenes
        self.rooms = rooms
        #: The sender of a gift this node offered lately, when it knows (Hub.sender_of).
        self.sender_of = sender_of
        #: The risk engine's event log (None: off) and its appeals desk.
        self.signals = signals
        self.appeals = appeals
        #: Requests per ``guardian_requests`` page: as many gifts as a ``pending`` frame holds.
        self.guardian_page = PENDING_PER_FRAME
        #: Data-processing consent (docs/regions.md); built on clearing's store when not given.
        self.consents = consents or Consents(clearing.topology, rules, clearing.keys, settings=clearing.settings)

    async def handle(self, user_id: str, msg: ClientMessage, *, app: str = "main",
                     conn: ClientConnection | None = None) -> ServerMessage:
        """The reply to one request of ``user_id``, on a connection from ``app``."""
        rid = getattr(msg, "rid", None)
        try:
            return await self.HANDLERS[type(msg)](self, user_id, msg, app, conn)
        except Refused as refusal:
            self.metrics.refused(refusal.code.value)
            if isinstance(msg, SendGift):
                self.metrics.gifts_of("refused").inc()  # README: gifts by outcome, refused among them
            # BAD_REQUEST is clearing's word for a field the wire accepted but the rule did not.
            code = ErrorCode.BAD_FIELD if refusal.code is Refusal.BAD_REQUEST else ErrorCode(refusal.code.value)
            gift = gift_view(refusal.gift) if refusal.gift is not None else None
            # The text is clearing's fixed reason for the code (REFUSAL_TEXT), never internals.
            return Error(rid=rid, code=code, message=str(refusal), gift=gift, until_ms=refusal.until_ms)
        except ClearingUnavailable:
            self.metrics.refusals_of(ErrorCode.UNAVAILABLE).inc()
            return Error(rid=rid, code=ErrorCode.UNAVAILABLE,
                         message="service temporarily unavailable; retry with the same ids")

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.metrics.clearing_latency_of(op).observe(time.perf_counter() - started)

    async def _hello(self, user_id: str, msg: Hello, app: str, conn: ClientConnection | None) -> ServerMessage:
        return Error(code=ErrorCode.ALREADY_AUTHENTICATED, message="this connection is authenticated")

    async def _send(self, user_id: str, msg: SendGift, app: str, conn: ClientConnection | None) -> ServerMessage:
        device = conn.device if conn is not None else None
        try:
            gift = await self._timed(
                "reserve",
                self.clearing.reserve(msg.gift_id, user_id, msg.to, msg.kind, msg.qty, app=app,
                                      quote_id=msg.quote or "", device=device),
            )
        except Refused as refusal:
            self._signal("send", user_id, conn, app, to=msg.to, qty=msg.qty, gift=msg.gift_id,
                         code=refusal.code.value, room=1 if msg.quote else None)
            raise
        self._signal("send", user_id, conn, app, to=msg.to, qty=msg.qty, gift=msg.gift_id, code="OK",
                     room=1 if msg.quote else None)
        self.metrics.gifts_of("sent").inc()
        log.debug("gift sent", extra={"user": user_id, "gift": msg.gift_id, "to": msg.to})
        return GiftSent(rid=msg.rid, gift=gift_view(gift))

    async def _resolve(self, user_id: str, msg: AcceptGift | DeclineGift, app: str,
                       conn: ClientConnection | None) -> ServerMessage:
        if isinstance(msg, AcceptGift):
            op, outcome = "accept", "accepted"
            resolution = await self._timed(op, self.clearing.accept(msg.gift_id, user_id, app,
                                                                    sender_hint=self.sender_of(msg.gift_id)))
        else:
            op, outcome = "decline", "declined"
            resolution = await self._timed(op, self.clearing.decline(msg.gift_id, user_id, app,
                                                                     sender_hint=self.sender_of(msg.gift_id)))
        if resolution.changed:
            gift = resolution.gift
            self._signal(op, user_id, conn, app, to=gift.sender, qty=gift.qty, gift=msg.gift_id,
                         waited_ms=max(0, int(time.time() * 1000) - gift.created_at_ms))
            self.metrics.gifts_of(outcome).inc()
            log.debug("gift %s", outcome, extra={"user": user_id, "gift": msg.gift_id})
        return GiftResolved(rid=msg.rid, gift=gift_view(resolution.gift))

    async def _guardian(self, user_id: str, msg: GuardianAnswer, app: str,
                        conn: ClientConnection | None) -> ServerMessage:
        """The guardian's answer (docs/regions.md); the reply shows the gift as it now stands."""
        resolution = await self._timed("guardian", self.clearing.guardian_answer(msg.gift_id, user_id, msg.ward,
                                                                                 msg.approve, app))
        if resolution.changed:
            self.metrics.gifts_of("guardian_approved" if msg.approve else "guardian_rejected").inc()
        return GiftResolved(rid=msg.rid, gift=gift_view(resolution.gift))

    async def _guardian_requests(self, user_id: str, msg: GetGuardianRequests, app: str,
                                 conn: ClientConnection | None) -> ServerMessage:
        """A page of the requests waiting for this guardian (docs/regions.md): what a device
        without a stream position lists after connecting. A page holds as many gifts as a
        ``pending`` frame, so it fits one frame like that one."""
        after: tuple[int, str, str] | None = None
        if msg.after is not None:  # the pattern guarantees three parts, the first digits
            ms, ward, gift_id = msg.after.split("/")
            after = (int(ms), ward, gift_id)
        gifts, cursor = await self.clearing.guardian_requests(user_id, after, self.guardian_page)
        return GuardianRequests(rid=msg.rid, gifts=tuple(gift_view(g) for g in gifts),
                                next="/".join(map(str, cursor)) if cursor is not None else None)

    def _signal(self, kind: str, user_id: str, conn: ClientConnection | None, app: str, **fields: Any) -> None:
        if self.signals is not None:
            self.signals.record(kind, user_id, conn.device if conn is not None else None,
                                conn.address if conn is not None else "", app, **fields)

    async def _appeal(self, user_id: str, msg: Appeal, app: str, conn: ClientConnection | None) -> ServerMessage:
        if self.appeals is None:
            raise Refused(Refusal.NOTHING_TO_APPEAL)
        await self.appeals.file(user_id, msg.kind, msg.evidence)
        return Done(rid=msg.rid, item=msg.kind)

    async def _consent(self, user_id: str, msg: GiveConsent | WithdrawConsent, app: str,
                       conn: ClientConnection | None) -> ServerMessage:
        channel = msg.channel or "sdk"
        if isinstance(msg, GiveConsent):
            state = await self.consents.give(user_id, msg.version, channel, app)
        else:
            state = await self.consents.withdraw(user_id, channel, app)
        return ConsentReply(rid=msg.rid, changed=state.changed, version=state.version, at_ms=state.at_ms,
                            channel=state.channel)

    async def _balance(self, user_id: str, msg: GetBalance, app: str, conn: ClientConnection | None) -> ServerMessage:
        balances = await self._timed("balance", self.clearing.balances(user_id))
        points = (await self.scenes.points(user_id)).points if self.scenes is not None else None
        snapshot = await self.clearing.settings.get()
        art = region_art(snapshot.skins, await self._region(user_id)) if snapshot.skins else None
        return Balance(rid=msg.rid, available=balances.available, held=balances.held,
                       units_per_card=self.rules.units_per_card, points=points, skins=art or None)

    async def _region(self, user_id: str) -> str:
        return await region_of(self.clearing.redis, self.clearing.keys, user_id)

    async def _skins(self, user_id: str, msg: GetSkins, app: str, conn: ClientConnection | None) -> ServerMessage:
        """The card art the user's region may see (docs/regions.md "Regional card art")."""
        snapshot = await self.clearing.settings.get()
        shown = visible(snapshot.skins, await self._region(user_id)) if snapshot.skins else []
        return Skins(rid=msg.rid, skins=tuple(Skin(skin_id=s.skin_id, kind=s.kind, name=s.name,
                                                   image_url=s.image_url, optional=s.optional) for s in shown))

    async def _ping(self, user_id: str, msg: Ping, app: str, conn: ClientConnection | None) -> ServerMessage:
        return Pong(rid=msg.rid, server_time_ms=int(time.time() * 1000))

    # ------------------------------------------------------------ scenes (gift-rules.md section 3)
    def _scenes(self, msg: ClientMessage) -> tuple[Scenes, RoomHub]:
        if self.scenes is None or self.rooms is None:
            raise AssertionError(f"scenes are not configured for {type(msg).__name__}")
        return self.scenes, self.rooms

    async def _membership(self, user_id: str, msg: JoinRoom | LeaveRoom, app: str,
                          conn: ClientConnection | None) -> ServerMessage:
        _, hub = self._scenes(msg)
        if conn is None:
            raise AssertionError("room membership needs the connection")
        if isinstance(msg, JoinRoom):
            await hub.join(conn, msg.room)
        else:
            await hub.leave(conn, msg.room)
        return room_view(await hub.rooms.state(msg.room, user_id), msg.rid)

    async def _get_room(self, user_id: str, msg: GetRoom, app: str, conn: ClientConnection | None) -> ServerMessage:
        _, hub = self._scenes(msg)
        return room_view(await hub.rooms.state(msg.room, user_id, msg.top), msg.rid)

    async def _open_wish(self, user_id: str, msg: OpenWish, app: str, conn: ClientConnection | None) -> ServerMessage:
        _, hub = self._scenes(msg)
        await hub.rooms.open_wish(user_id, msg.kind, msg.target)
        return room_view(await hub.rooms.state(user_id, user_id), msg.rid)

    async def _quote(self, user_id: str, msg: GetQuote, app: str, conn: ClientConnection | None) -> ServerMessage:
        _, hub = self._scenes(msg)
        q = await hub.rooms.quote(user_id, msg.room, msg.kind, msg.qty)
        return QuoteReply(rid=msg.rid, quote_id=q.quote_id, room=q.room, cost=q.cost, amount=q.amount,
                          viewers=q.viewers, expires_at_ms=q.expires_at_ms)

    async def _redeem(self, user_id: str, msg: RedeemFrame, app: str, conn: ClientConnection | None) -> ServerMessage:
        scenes, _ = self._scenes(msg)
        got = await scenes.redeem_frame(user_id, msg.festival)
        return Done(rid=msg.rid, item=got.item, expires_at_ms=got.expires_at_ms)

    async def _mentor(self, user_id: str, msg: BindMentor, app: str, conn: ClientConnection | None) -> ServerMessage:
        scenes, _ = self._scenes(msg)
        bound = await scenes.bind_mentor(user_id, msg.mentor)
        return Done(rid=msg.rid, item=bound.mentor, reward=bound.apprentice_reward)


# One row per client message: tests/test_protocol_replies.py checks that the rows are exactly
# protocol.CLIENT_MESSAGES, and that each answers with the reply protocol.REPLIES names.
RequestHandler.HANDLERS = MappingProxyType({
    Hello: RequestHandler._hello,
    SendGift: RequestHandler._send,
    AcceptGift: RequestHandler._resolve,
    DeclineGift: RequestHandler._resolve,
    GetBalance: RequestHandler._balance,
    Ping: RequestHandler._ping,
    JoinRoom: RequestHandler._membership,
    LeaveRoom: RequestHandler._membership,
    GetRoom: RequestHandler._get_room,
    OpenWish: RequestHandler._open_wish,
    GetQuote: RequestHandler._quote,
    RedeemFrame: RequestHandler._redeem,
    BindMentor: RequestHandler._mentor,
    Appeal: RequestHandler._appeal,
    GiveConsent: RequestHandler._consent,
    WithdrawConsent: RequestHandler._consent,
    GuardianAnswer: RequestHandler._guardian,
    GetSkins: RequestHandler._skins,
    GetGuardianRequests: RequestHandler._guardian_requests,
})
