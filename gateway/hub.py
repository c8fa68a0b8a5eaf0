"""The node's local connections per user, and in-order delivery of user events to them.

Pub/sub is the fast path and the user's Redis stream is the truth: an event that arrives
out of order, or after the subscriber was down, opens a gap that :meth:`Hub.catch_up`
fills from the stream, a page at a time. Each event is encoded once per encoding, not once
per device.
"""

from __future__ import annotations

import asyncio
import logging
import time

from clearing import ClearingError, EventKind, EventLog, UserEvent
from gateway.connection import MAX_PAGE_FRAMES, ClientConnection
from gateway.metrics import NodeMetrics
from gateway.views import event_view
from protocol import CloseCode, Encoding, ErrorCode, Frame, encode

log = logging.getLogger("notecard.gateway.hub")

#: Offers whose sender a node remembers (about 100 bytes each).
_SENDERS_KEPT = 100_000

#: How long a catch-up waits for a page to leave a device's queue before it queues the next
#: anyway: one device that stopped reading must not hold up the user's others for long (it
#: is then closed as a slow consumer, and resumes when it reconnects).
DRAIN_WAIT_S = 10.0


class Hub:
    def __init__(self, events: EventLog, metrics: NodeMetrics, page: int = MAX_PAGE_FRAMES) -> None:
        self.events = events
        self.metrics = metrics
        #: Events read from a stream and queued to a connection at once (see catch_up).
        self.page = page
        # Labelled metric children, looked up once: ``labels()`` costs a few microseconds
        # per call, and every delivered event used two (docs/benchmarks.md, profile).
        self._lag = {kind: metrics.delivery_lag.labels(event=kind.value) for kind in EventKind}
        self._events_out = metrics.frames_out.labels(type="event")
        self.users: dict[str, set[ClientConnection]] = {}
        #: gift id -> sender of the offers delivered lately (see sender_of).
        self._senders: dict[str, str] = {}
        self._catching_up: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._everyone: asyncio.Task[None] | None = None
        self._everyone_again = False

    # ------------------------------------------------------------ membership
    def add(self, conn: ClientConnection) -> None:
        self.users.setdefault(conn.user_id, set()).add(conn)
        self.metrics.connections.inc()

    def remove(self, conn: ClientConnection) -> bool:
        """Forget a connection; True when it was the user's last one on this node."""
        conns = self.users.get(conn.user_id)
        if conns is None or conn not in conns:
            return False
        conns.discard(conn)
        self.metrics.connections.dec()
        if not conns:
            del self.users[conn.user_id]
            return True
        return False

    def all_connections(self) -> list[ClientConnection]:
        return [c for conns in self.users.values() for c in conns]

    def close_banned(self, user_id: str) -> int:
        """Close every local connection of a banned user; how many there were."""
        return self.close_user(user_id, CloseCode.ACCOUNT_BANNED, ErrorCode.ACCOUNT_BANNED, "account banned")

    def close_user(self, user_id: str, code: CloseCode, error: ErrorCode, reason: str) -> int:
        """Close every local connection of the user with ``code``; how many there were."""
        conns = list(self.users.get(user_id, ()))
        for conn in conns:
            conn.end(code, error, reason)
        return len(conns)

    # ------------------------------------------------------------ delivery
    def sender_of(self, gift_id: str) -> str | None:
        """The sender of an offer this node delivered lately, if it remembers it: lets an
        answer on a cluster take the one-script path when both sides share a node."""
        return self._senders.get(gift_id)

    def publish_received(self, event: UserEvent) -> None:
        """An event from pub/sub: deliver it to the user's local connections, in order."""
        conns = self.users.get(event.user)
        if not conns:
            return
        if event.kind is EventKind.OFFER:
            senders = self._senders
            senders[event.gift.gift_id] = event.gift.sender
            if len(senders) > _SENDERS_KEPT:
                del senders[next(iter(senders))]  # the oldest: dicts keep insertion order
        self._lag[event.kind].observe(max(0.0, time.time() - _event_time_ms(event) / 1000))
        if self.deliver(conns, event):
            self._schedule_catch_up(event.user)

    def deliver(self, conns: set[ClientConnection], event: UserEvent) -> bool:
        """Send ``event`` to each synced connection that is exactly one behind it.

        Returns True when some connection has a gap before this event (a catch-up is due).
        """
        frames: dict[Encoding, Frame] = {}
        gap = False
        for conn in list(conns):
            if not conn.synced:
                conn.buffered.append(event)
                continue
            if event.epoch != conn.epoch:
                # The stream was lost and restarted (Redis data loss): offsets mean nothing
                # any more. The client reconnects, gets recovered=false and the pending list.
                conn.close(CloseCode.SERVICE_UNAVAILABLE, "event stream reset, reconnect")
                continue
            last = conn.last_offset or 0
            if event.offset <= last:
                continue
            if event.offset > last + 1:
                gap = True
                continue
            frame = frames.get(conn.encoding)
            if frame is None:
                frame = frames[conn.encoding] = encode(event_view(event), conn.encoding)
            if conn.push(frame):
                conn.last_offset = event.offset
                self._events_out.inc()
        return gap

    def _schedule_catch_up(self, user_id: str) -> None:
        task = asyncio.create_task(self.catch_up(user_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def catch_up(self, user_id: str) -> None:
        """Fill every local connection of the user from the stream, up to its head."""
        if user_id in self._catching_up:
            self._again.add(user_id)
            return
        self._catching_up.add(user_id)
        try:
            while True:
                self._again.discard(user_id)
                conns = self.users.get(user_id)
                synced = [c for c in conns or () if c.synced]
                if not synced:
                    return
                epoch = synced[0].epoch
                after = min(c.last_offset or 0 for c in synced)
                while True:
                    replay = await self.events.replay(user_id, epoch, after, limit=self.page)
                    for event in replay.events:
                        self.metrics.catchup_events.inc()
                        self.deliver(set(synced), event)
                        after = event.offset
                    if len(replay.events) < self.page or replay.epoch != epoch:
                        break  # the stream's end (or a new epoch, which closed the connections)
                    await _drained(synced)
                if user_id not in self._again:
                    return
        except ClearingError:
            log.warning("catch-up failed; retried on the next event or resubscribe", extra={"user": user_id})
        finally:
            self._catching_up.discard(user_id)

    async def catch_up_everyone(self) -> None:
        """After the subscriber was down: fill every local user from the stream."""
        users = list(self.users)
        for start in range(0, len(users), 200):
            await asyncio.gather(*(self.catch_up(u) for u in users[start : start + 200]))

    def catch_up_everyone_soon(self) -> None:
        """Start :meth:`catch_up_everyone` in the background. Called whenever pub/sub may
        have missed events (subscription lost, heard again, node out of presence or back);
        calls made while one runs make it run once more afterwards instead of piling up."""
        if self._everyone is not None and not self._everyone.done():
            self._everyone_again = True
            return
        self._everyone = asyncio.create_task(self._catch_up_everyone_until_settled())
        self._tasks.add(self._everyone)
        self._everyone.add_done_callback(self._tasks.discard)

    async def _catch_up_everyone_until_settled(self) -> None:
        while True:
            self._everyone_again = False
            try:
                await self.catch_up_everyone()
            except Exception:
                log.exception("catch-up of every local user failed")
            if not self._everyone_again:
                return

    def flush_buffered(self, conn: ClientConnection) -> None:
        """Deliver events that arrived while the connection was being welcomed."""
        buffered, conn.buffered = sorted(conn.buffered, key=lambda e: e.offset), []
        for event in buffered:
            if self.deliver({conn}, event):
                self._schedule_catch_up(conn.user_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _drained(conns: list[ClientConnection]) -> None:
    """Wait until a page has left the connections' queues (or :data:`DRAIN_WAIT_S`)."""
    waits = [asyncio.ensure_future(c.drained()) for c in conns]
    try:
        await asyncio.wait(waits, timeout=DRAIN_WAIT_S)
    finally:
        for task in waits:
            task.cancel()


def _event_time_ms(event: UserEvent) -> int:
    gift = event.gift
    return gift.resolved_at_ms if gift.resolved_at_ms is not None else gift.created_at_ms
