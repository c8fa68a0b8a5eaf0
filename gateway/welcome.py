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
from clearing.codec import text_hash
from clearing.consent import Consents, consent_needed
from clearing.guard import guarded, guarded_pipeline
from clearing.regions import DEFAULT_REGION, consent_versions
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
        consent, badges = await self._consent_and_badges(conn.user_id)
        welcome = Welcome(
            user=conn.user_id, node=self.node_id, epoch=replay.epoch, offset=replay.head,
            recovered=replay.recovered, pending=(), heartbeat_s=max(1, round(self.settings.heartbeat_s)),
            consent_needed=consent, badges=badges,
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

    async def _consent_and_badges(self, user_id: str) -> tuple[str | None, tuple[str, ...] | None]:
        """The welcome's ``consent_needed`` (the version the user's region asks for, when the
        user has no consent to it on record) and ``badges`` (the ids earned; None when the
        user's region has none). No Redis call when no region has either rule; otherwise one
        round trip reads the user's region and consent, and the badge counters when some
        region has badges (one slot: the user's), where each used to read the region itself."""
        snapshot = await self.clearing.settings.get()
        versions = consent_versions(snapshot.regions) if self.consents is not None else {}
        badged = self.badges is not None and any(r.eco_badges for r in snapshot.regions.values())
        if not versions and not badged:
            return None, None
        keys = self.clearing.keys
        async with guarded_pipeline(self.clearing.redis, transaction=False) as pipe:
            pipe.hmget(keys.user(user_id), "region", "consent")
            if badged:
                pipe.hgetall(keys.stats(user_id))
            replies = await guarded(pipe.execute())
        region_raw, version_raw = (_text(v) for v in replies[0])
        region = region_raw or DEFAULT_REGION
        consent = consent_needed(versions, region, version_raw)
        rules = snapshot.region(region).eco_badges
        if self.badges is None or not badged or not rules:
            return consent, None
        shown = self.badges.shown(user_id, region, rules, text_hash(replies[1]))
        return consent, tuple(shown["earned"])

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


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
