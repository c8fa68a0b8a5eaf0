"""The life of one WebSocket connection: authenticate, welcome, serve requests, leave.

States: AWAITING_HELLO -> WELCOMING -> SERVING -> CLOSED. Before ``hello`` only a
``hello`` is accepted (anything else closes with NOT_AUTHENTICATED); after it, every frame
is a request answered in order. A malformed frame gets an ``error`` frame and changes
nothing; too many close the connection. One connection's trouble never reaches another:
every failure here ends at this connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from clearing import Clearing, ClearingError, EventLog, Presence, Refusal, Refused
from clearing.badges import Badges
from clearing.rates import UserRates
from gateway.admission import client_address
from gateway.auth import Identity, Rejection, TokenError
from gateway.config import GatewaySettings
from gateway.connection import ClientConnection
from gateway.hub import Hub
from gateway.logs import ThrottledLog
from gateway.metrics import NodeMetrics
from gateway.ratelimit import TokenBucket
from gateway.requests import RequestHandler
from gateway.tokens import TokenVerifier
from gateway.welcome import Welcomer
from protocol import (
    AcceptGift,
    ClientMessage,
    CloseCode,
    DeclineGift,
    Encoding,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Refuse,
    SendGift,
    ServerMessage,
    ServerSession,
    ServerState,
    encode,
    encoding_for,
)
from risk.devices import device_seen
from risk.signals import SignalLog, device_or_none

log = logging.getLogger("notecard.gateway.session")


@dataclass(frozen=True, slots=True)
class _Rejection:
    code: CloseCode
    error: ErrorCode
    reason: str


BANNED = _Rejection(CloseCode.ACCOUNT_BANNED, ErrorCode.ACCOUNT_BANNED, "account banned")
#: An erased account (GDPR Art. 17) is closed as a banned one, with its own code.
ERASED = _Rejection(CloseCode.ACCOUNT_BANNED, ErrorCode.ACCOUNT_ERASED, "account erased")
EXPIRED = _Rejection(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED, "token expired")
#: A refused token, by reason (docs/protocol.md section 13). The peer is told the class,
#: never the detail (which audience, which key), which goes to the node's log.
_TOKEN_REJECTIONS = {
    Rejection.INVALID: _Rejection(CloseCode.INVALID_TOKEN, ErrorCode.INVALID_TOKEN, "invalid token"),
    Rejection.EXPIRED: EXPIRED,
    Rejection.UNAVAILABLE: _Rejection(CloseCode.SERVICE_UNAVAILABLE, ErrorCode.UNAVAILABLE,
                                      "token keys unavailable; reconnect"),
}


class SessionRunner:
    """The ``websockets`` connection handler of a node."""

    def __init__(
        self, node_id: str, settings: GatewaySettings, tokens: TokenVerifier, hub: Hub,
        requests: RequestHandler, clearing: Clearing, presence: Presence, events: EventLog,
        metrics: NodeMetrics, user_rates: UserRates | None = None, signals: SignalLog | None = None,
    ) -> None:
        self.node_id = node_id
        self.settings = settings
        self.tokens = tokens
        self.hub = hub
        self.requests = requests
        self.clearing = clearing
        self.presence = presence
        self.events = events
        self.metrics = metrics
        #: The per-user request rate over every node; None: per connection only.
        self.user_rates = user_rates
        #: Where hellos, sends and answers are told to the risk engine; None: risk engine off.
        self.signals = signals
        self.welcomer = Welcomer(node_id, settings, hub, clearing, events, requests.consents,
                                Badges(clearing.topology, clearing.gift_rules, clearing.keys, clearing.now,
                                       settings=clearing.settings))
        self.rejected_tokens = ThrottledLog(log, "token rejected")

    async def __call__(self, ws: ServerConnection) -> None:
        encoding = encoding_for(ws.subprotocol)
        outcome = await self._authenticate(ws, encoding)
        if isinstance(outcome, _Rejection):
            await _reject(ws, encoding, outcome)
            self.metrics.closes.labels(code=str(int(outcome.code))).inc()
            return
        if outcome is None:
            return
        identity, hello = outcome
        conn = ClientConnection(ws, identity.user_id, identity.app, encoding, self.settings.send_queue_max,
                                self.metrics, device=device_or_none(hello.device),
                                address=client_address(ws, self.settings.trusted_proxies))
        conn.start_writer()
        self.hub.add(conn)
        # The token is checked once, at hello; the session ends when it expires (with the
        # same leeway for clock skew as at hello, or a token accepted in it would end at once).
        lasts = identity.expires_at + self.settings.jwt_leeway_s - time.time()
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, lasts), conn.end, EXPIRED.code, EXPIRED.error, EXPIRED.reason)
        registered = False
        try:
            if not await self._admit(conn):
                return
            registered = True
            # A banned device is told at its first send (DEVICE_BANNED), not here: the user
            # may still answer offers and appeal. Two small calls, for a hello with a device.
            await device_seen(self.clearing.redis, self.clearing.keys, conn.user_id, conn.device)
            if self.signals is not None:
                self.signals.record("hello", conn.user_id, conn.device, conn.address, conn.app)
            await self.welcomer.welcome(conn, hello)
            await self._serve(conn)
        except ClearingError:
            log.warning("redis unavailable during session", extra={"user": conn.user_id})
            conn.close(CloseCode.SERVICE_UNAVAILABLE, "service unavailable, reconnect")
        except ConnectionClosed:
            pass
        finally:
            expiry.cancel()
            self.hub.remove(conn)
            if self.requests.rooms is not None:
                # Redis may be the reason we are here: the room entries then go with the
                # node's presence when it is reaped; the rest of the clean-up must still run.
                with contextlib.suppress(ClearingError):
                    await self.requests.rooms.leave_all(conn)
            if registered:
                with contextlib.suppress(ClearingError):
                    await self.presence.disconnect(conn.user_id, self.node_id)
            await conn.finish()

    async def _authenticate(self, ws: ServerConnection, encoding: Encoding
                            ) -> tuple[Identity, Hello] | _Rejection | None:
        try:
            frame = await asyncio.wait_for(ws.recv(), self.settings.auth_timeout_s)
        except TimeoutError:
            return _Rejection(CloseCode.AUTH_TIMEOUT, ErrorCode.NOT_AUTHENTICATED, "no hello in time")
        except ConnectionClosed:
            return None
        checked = ServerSession(encoding).receive(frame)
        if isinstance(checked, Refuse):
            assert checked.close is not None
            return _Rejection(checked.close, ErrorCode(checked.error.code), checked.error.message)
        msg = checked
        assert isinstance(msg, Hello)
        try:
            identity = await self.tokens.verify(msg.token)
        except TokenError as exc:
            # Never the token itself; a burst of these usually means clients hold tokens
            # signed with another secret (a node started with other generated secrets), or
            # a login service whose keys or audience differ from the node's settings.
            self.rejected_tokens.log(reason=str(exc), peer=_peer(ws))
            return _TOKEN_REJECTIONS[exc.rejection]
        return identity, msg

    async def _admit(self, conn: ClientConnection) -> bool:
        """Count the connection in the user's presence, in one script with two checks: the
        account is not banned (a ban set later finds this node in the presence hash and
        reaches the connection), and the user is within the cap of connections over all
        live nodes. Either refusal is told to the client, which is closed; nothing counted."""
        try:
            await self.presence.connect(conn.user_id, self.node_id, self.settings.max_connections_per_user)
        except Refused as refusal:
            if refusal.code in (Refusal.ACCOUNT_BANNED, Refusal.ACCOUNT_ERASED):
                rejection = ERASED if refusal.code is Refusal.ACCOUNT_ERASED else BANNED
                await _reject(conn.ws, conn.encoding, rejection)
                self.metrics.closes.labels(code=str(int(rejection.code))).inc()
                return False
            self.metrics.refusals_of(ErrorCode.TOO_MANY_CONNECTIONS).inc()
            self._reply(conn, Error(code=ErrorCode.TOO_MANY_CONNECTIONS, message=str(refusal)))
            await conn.drain_and_close(CloseCode.USER_CONNECTION_LIMIT, "too many connections of this user",
                                       self.settings.auth_timeout_s)
            return False
        return True

    async def _within_user_rate(self, conn: ClientConnection, msg: ClientMessage) -> bool:
        """The user's rate over all connections and nodes. A gift's own script counts its
        request (clearing/rates.py). Fails open: an unreachable Redis fails the request
        itself, and must not also count as the client's fault."""
        if self.user_rates is None or isinstance(msg, SendGift | AcceptGift | DeclineGift):
            return True
        try:
            return await self.user_rates.take(conn.user_id)
        except ClearingError:
            return True

    async def _serve(self, conn: ClientConnection) -> None:
        bucket = TokenBucket(self.settings.rate_per_s, self.settings.rate_burst)
        frames = ServerSession(conn.encoding, max_bad_frames=self.settings.max_bad_frames)
        frames.state = ServerState.SERVING
        strikes = 0
        async for frame in conn.ws:
            if conn.closing:
                return
            msg = frames.receive(frame)
            if isinstance(msg, Refuse):
                self.metrics.bad_frames.labels(code=msg.error.code).inc()
                self._reply(conn, msg.error)
                if msg.close is not None:
                    conn.close(msg.close, "too many malformed frames")
                    return
                continue
            self.metrics.frames_in_of(msg.TYPE).inc()
            if not bucket.allow() or not await self._within_user_rate(conn, msg):
                strikes += 1
                self.metrics.refusals_of(ErrorCode.RATE_LIMITED).inc()
                self._reply(conn, Error(rid=getattr(msg, "rid", None), code=ErrorCode.RATE_LIMITED,
                                        message="too many requests; slow down"))
                if strikes >= self.settings.rate_strikes_max:
                    conn.close(CloseCode.TOO_MANY_REQUESTS, "request rate limit exceeded")
                    return
                continue
            strikes = 0
            self.metrics.requests_in_flight.inc()
            try:
                reply = await self.requests.handle(conn.user_id, msg, app=conn.app, conn=conn)
            except Exception:
                # A bug must cost one request, not the connection or the node; the peer
                # sees a generic code, the log has the details.
                log.exception("request failed", extra={"user": conn.user_id})
                self.metrics.refusals_of(ErrorCode.INTERNAL).inc()
                reply = Error(rid=getattr(msg, "rid", None), code=ErrorCode.INTERNAL, message="internal error")
            finally:
                self.metrics.requests_in_flight.dec()
            checked = frames.reply(msg, reply)
            if checked is not reply:
                log.error("reply does not answer its request", extra={"user": conn.user_id, "request": msg.TYPE,
                                                                       "reply": reply.TYPE})
                self.metrics.refusals_of(ErrorCode.INTERNAL).inc()
            self._reply(conn, checked)

    def _reply(self, conn: ClientConnection, msg: ServerMessage) -> None:
        if conn.push(encode(msg, conn.encoding)):
            self.metrics.frames_out_of(msg.TYPE).inc()


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return str(address[0]) if address else "unknown"


async def _reject(ws: ServerConnection, encoding: Encoding, rejection: _Rejection) -> None:
    """Tell a client why it may not continue, then close with the matching code."""
    frame: Frame = encode(Error(code=rejection.error, message=rejection.reason), encoding)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(frame)
        await ws.close(int(rejection.code), rejection.reason)
