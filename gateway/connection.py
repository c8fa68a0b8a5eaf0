"""One authenticated client connection: its bounded send queue and its stream position.

Every frame to the client goes through :meth:`ClientConnection.push`, which never waits:
a frame is queued, and a writer task sends the queue in order, waiting on the socket's
drain. A client that does not read fills its queue and is closed with ``SLOW_CONSUMER``
instead of making the node buffer without bound.

The queue and the writer exist only while there is something to send: most connections
are idle most of the time, and an ``asyncio.Queue`` plus a parked writer task cost about
4.4 KiB per connection (a fifth of an idle connection's memory; see docs/benchmarks.md).
A plain deque is created on the first push and dropped when the writer has emptied it.

Events from the user's stream are delivered exactly in offset order: ``last_offset`` is
the newest offset this connection has been sent; older ones are dropped as duplicates
and a gap is reported to the hub, which fetches the missing events from the stream.

Long runs of frames (a replay after a long absence, a long pending list) are queued a page
at a time (:func:`page_size`), each page once the previous one has left the queue
(:meth:`ClientConnection.drained`): a client that reads is never closed for what it missed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from clearing import UserEvent
from gateway.metrics import NodeMetrics
from protocol import CloseCode, Encoding, Error, ErrorCode, Frame, encode

log = logging.getLogger("notecard.gateway.connection")

#: Frames queued at once by a paged sender; far below the default queue of 256 frames.
MAX_PAGE_FRAMES = 64


def page_size(queue_max: int) -> int:
    """Frames a paged sender may queue at once: a quarter of the queue leaves room for the
    replies and live frames that arrive meanwhile."""
    return max(1, min(MAX_PAGE_FRAMES, queue_max // 4))


class ClientConnection:
    __slots__ = (
        "_close_task",
        "_queue",
        "_queue_max",
        "_writer",
        "address",
        "app",
        "buffered",
        "closing",
        "device",
        "encoding",
        "epoch",
        "last_offset",
        "metrics",
        "user_id",
        "ws",
    )

    def __init__(
        self, ws: ServerConnection, user_id: str, app: str, encoding: Encoding, queue_max: int,
        metrics: NodeMetrics, *, device: str = "-", address: str = "",
    ) -> None:
        self.ws = ws
        self.user_id = user_id
        self.app = app
        #: The device fingerprint of the hello ("-": none sent) and the client's address
        #: (gateway/admission.py): what the risk engine attributes this connection's gifts to.
        self.device = device
        self.address = address
        self.encoding = encoding
        self.metrics = metrics
        #: Frames waiting for the writer; None while there are none (see the module docstring).
        self._queue: collections.deque[Frame] | None = None
        self._queue_max = queue_max
        #: The writer task, running while the queue is not empty.
        self._writer: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self.closing = False
        #: Stream epoch and newest offset sent; ``None`` until the welcome is queued.
        self.epoch: str | None = None
        self.last_offset: int | None = None
        #: Live events that arrived before the welcome (delivered right after it).
        self.buffered: list[UserEvent] = []

    def start_writer(self) -> None:
        """Kept for callers: the writer now starts by itself when a frame is queued."""

    async def _write_loop(self, queue: collections.deque[Frame]) -> None:
        try:
            while queue:
                await self.ws.send(queue.popleft())
        except ConnectionClosed:
            pass
        finally:
            # No await between the last check of the queue and here: a push() after this
            # point sees no writer and starts a new one.
            self._writer = None
            if not queue and self._queue is queue:
                self._queue = None

    def push(self, frame: Frame) -> bool:
        """Queue a frame; close the connection as a slow consumer when the queue is full."""
        if self.closing:
            return False
        queue = self._queue
        if queue is None:
            queue = self._queue = collections.deque()
        elif len(queue) >= self._queue_max:
            self.metrics.slow_consumers.inc()
            log.warning("slow consumer disconnected", extra={"user": self.user_id})
            self.close(CloseCode.SLOW_CONSUMER, "send queue full")
            return False
        queue.append(frame)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(queue))
        return True

    @property
    def queued(self) -> int:
        """Frames waiting to be sent (the slow-consumer limit counts these)."""
        return len(self._queue) if self._queue is not None else 0

    @property
    def synced(self) -> bool:
        return self.last_offset is not None

    async def drained(self) -> None:
        """Wait until every queued frame was handed to the socket, or the connection closes."""
        while (writer := self._writer) is not None and not self.closing:
            # wait(), not await: the writer's end (even cancelled) must not raise here.
            await asyncio.wait((writer,))

    def end(self, code: CloseCode, error: ErrorCode, reason: str) -> None:
        """Tell the client why (an ``error`` frame without rid), then close with ``code``."""
        queue = self._queue
        if queue is None or len(queue) < self._queue_max:  # a full queue would close as 3001
            self.push(encode(Error(code=error, message=reason), self.encoding))
        self.close(code, reason)

    def close(self, code: CloseCode, reason: str) -> None:
        """Close once, without waiting (callers are often on another connection's path)."""
        if self.closing:
            return
        self.closing = True
        self.metrics.closes.labels(code=str(int(code))).inc()
        self._close_task = asyncio.create_task(self._close(code, reason))

    async def _close(self, code: CloseCode, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(int(code), reason)

    async def drain_and_close(self, code: CloseCode, reason: str, timeout: float) -> None:
        """Send what is queued (within ``timeout``), then close: the graceful-shutdown path."""
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                # shield: a timeout must not cancel the writer, close() takes over from it.
                await asyncio.wait_for(asyncio.shield(writer), timeout)
        self.close(code, reason)

    async def finish(self) -> None:
        """Stop the writer; called when the connection's handler returns."""
        self.closing = True
        writer = self._writer
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self._close_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._close_task
