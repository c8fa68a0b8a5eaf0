"""What a connection receives right after ``hello``: the welcome, the pending offers and the
events it missed, then the live events that arrived meanwhile.

A client back after a long absence may have hundreds of missed events and offers waiting.
All of it at once would overflow the connection's send queue and close it as a slow
consumer, again at every reconnect; and a welcome holding every offer could outgrow the
frame limit. So the pending list is cut into frames of :data:`protocol.server_session.PENDING_PER_FRAME` offers
(the welcome carries the first, ``pending`` frames the rest), and the frames go out a page
at a time, each page once the one before has left the queue. The events are read from the
stream a page at a time too. Live events arriving meanwhile wait in the connection's
``buffered`` list and follow the replay, in offset order, without duplicates.
"""

from __future__ import annotations

import logging

from clearing import Clearing, EventLog, Replay
from clearing.badges import Badges
from clearing.consent import Consents
from gateway.config import GatewaySettings
from gateway.connection import ClientConnection, page_size
from gateway.hub import Hub
from gateway.views import event_view, gift_view
from protocol import CloseCode, Frame, Hello, Welcome, encode
from protocol.server_session import welcome_messages

# The session's logger: "connected" stays where operators have always found it.
log = logging.getLogger("notecard.gateway.session")


class Welcomer:
    def __init__(self, node_id: str, settings: GatewaySettings, hub: Hub, clearing: Clearing,
                 events: EventLog, consents: Consents | None = None, badges: Badges | None = None) -> None:
        self.node_id = node_id
        self.settings = settings
        self.hub = hub
        self.clearing = clearing
        self.events = events
        self.consents = consents
        self.badges = badges
        self.page = page_size(settings.send_queue_max)

    async def welcome(self, conn: ClientConnection, hello: Hello) -> None:
        """Send the welcome, the pending offers, the missed events, then the buffered live ones."""
        replay = await self.events.replay(conn.user_id, hello.epoch, hello.offset, limit=self.page)
        pending = [gift_view(g) for g in await self.clearing.pending_for(conn.user_id)]
        welcome = Welcome(
            user=conn.user_id, node=self.node_id, epoch=replay.epoch, offset=replay.head,
            recovered=replay.recovered, pending=(), heartbeat_s=max(1, round(self.settings.heartbeat_s)),
            consent_needed=await self.consents.needed(conn.user_id) if self.consents is not None else None,
            badges=await self.badges.earned(conn.user_id) if self.badges is not None else None,
        )
        if not await self._send_paged(conn, [encode(m, conn.encoding) for m in welcome_messages(welcome, pending)]):
            return
        last = await self._replay(conn, replay)
        if last is None:
            return
        conn.epoch = replay.epoch
        conn.last_offset = last
        self.hub.flush_buffered(conn)
        log.info("connected", extra={"user": conn.user_id, "app": conn.app, "recovered": replay.recovered})

    async def _send_paged(self, conn: ClientConnection, frames: list[Frame]) -> bool:
        """Queue ``frames`` a page at a time; False when the connection ended meanwhile."""
        for start in range(0, len(frames), self.page):
            if start:
                await conn.drained()
            for frame in frames[start : start + self.page]:
                conn.push(frame)
        return not conn.closing

    async def _replay(self, conn: ClientConnection, first: Replay) -> int | None:
        """Queue the missed events, reading and sending a page at a time up to the head the
        welcome announced. The newest offset queued (at least that head), or None when the
        connection ended meanwhile."""
        page = first
        while True:
            for event in page.events:
                conn.push(encode(event_view(event), conn.encoding))
            if len(page.events) < self.page or page.events[-1].offset >= first.head:
                if conn.closing:
                    return None
                return max(first.head, page.events[-1].offset) if page.events else first.head
            await conn.drained()
            if conn.closing:
                return None
            page = await self.events.replay(conn.user_id, first.epoch, page.events[-1].offset, limit=self.page)
            if page.epoch != first.epoch or not page.recovered:
                # The stream was recreated, or trimmed past what we sent, while we read it:
                # the client reconnects and learns it from the welcome (recovered=false).
                conn.close(CloseCode.SERVICE_UNAVAILABLE, "event stream reset, reconnect")
                return None
