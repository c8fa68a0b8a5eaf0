"""One authenticated client connection: its bounded send queue and its stream position.

Every frame to the client goes through :meth:`ClientConnection.push`, which never waits:
a frame is queued, and one writer task per connection sends the queue in order, waiting
on the socket's drain. A client that does not read fills its queue and is closed with
``SLOW_CONSUMER`` instead of making the node buffer without bound.

Events from the user's stream are delivered exactly in offset order: ``last_offset`` is
the newest offset this connection has been sent; older ones are dropped as duplicates
and a gap is reported to the hub, which fetches the missing events from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from clearing import UserEvent
from gateway.metrics import NodeMetrics
from protocol import CloseCode, Encoding, Frame

log = logging.getLogger("notecard.gateway.connection")


class ClientConnection:
    __slots__ = (
        "_close_task",
        "_queue",
        "_writer",
        "app",
        "buffered",
        "closing",
        "encoding",
        "epoch",
        "last_offset",
        "metrics",
        "user_id",
        "ws",
    )

    def __init__(
        self, ws: ServerConnection, user_id: str, app: str, encoding: Encoding, queue_max: int,
        metrics: NodeMetrics,
    ) -> None:
        self.ws = ws
        self.user_id = user_id
        self.app = app
        self.encoding = encoding
        self.metrics = metrics
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=queue_max)
        self._writer: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self.closing = False
        #: Stream epoch and newest offset sent; ``None`` until the welcome is queued.
        self.epoch: str | None = None
        self.last_offset: int | None = None
        #: Live events that arrived before the welcome (delivered right after it).
        self.buffered: list[UserEvent] = []

    def start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"writer:{self.user_id}")

    async def _write_loop(self) -> None:
        try:
            while True:
                frame = await self._queue.get()
                try:
                    await self.ws.send(frame)
                finally:
                    self._queue.task_done()
        except ConnectionClosed:
            pass

    def push(self, frame: Frame) -> bool:
        """Queue a frame; close the connection as a slow consumer when the queue is full."""
        if self.closing:
            return False
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.metrics.slow_consumers.inc()
            log.warning("slow consumer disconnected", extra={"user": self.user_id})
            self.close(CloseCode.SLOW_CONSUMER, "send queue full")
            return False
        return True

    @property
    def synced(self) -> bool:
        return self.last_offset is not None

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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        self.close(code, reason)

    async def finish(self) -> None:
        """Stop the writer; called when the connection's handler returns."""
        self.closing = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._close_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._close_task
