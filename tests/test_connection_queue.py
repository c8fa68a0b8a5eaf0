"""Unit tests of the per-connection send queue (no Redis, no sockets: a stand-in peer)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.connection import ClientConnection
from gateway.metrics import NodeMetrics
from gateway.ratelimit import TokenBucket
from protocol import CloseCode, Encoding
from tests.gateway_fixtures import eventually


class StalledPeer:
    """Accepts the first frame into the socket, then never drains: a client that stopped reading."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.closed_with: tuple[int, str] | None = None
        self._never = asyncio.Event()

    async def send(self, frame: Any) -> None:
        self.sent.append(frame)
        await self._never.wait()

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


async def test_a_client_that_stops_reading_is_closed_as_a_slow_consumer() -> None:
    metrics = NodeMetrics()
    peer = StalledPeer()
    conn = ClientConnection(peer, "bob", "main", Encoding.MSGPACK, queue_max=3, metrics=metrics)  # type: ignore[arg-type]
    conn.start_writer()
    assert conn.push(b"first")
    # The writer took the first frame and blocks in the socket.
    await eventually(lambda: peer.sent == [b"first"], "the first frame in the socket")
    accepted = [conn.push(b"frame-%d" % i) for i in range(5)]
    await eventually(lambda: peer.closed_with is not None, "the connection closed")
    # Three frames wait in the queue; the fourth overflows it and closes the connection.
    assert accepted == [True, True, True, False, False]
    assert peer.sent == [b"first"]
    assert peer.closed_with == (CloseCode.SLOW_CONSUMER, "send queue full")
    assert metrics.slow_consumers._value.get() == 1
    assert conn.push(b"late") is False
    await conn.finish()


async def test_queued_frames_go_out_in_order() -> None:
    sent: list[bytes] = []

    class Peer:
        async def send(self, frame: bytes) -> None:
            sent.append(frame)

    conn = ClientConnection(Peer(), "bob", "main", Encoding.MSGPACK, queue_max=10, metrics=NodeMetrics())  # type: ignore[arg-type]
    conn.start_writer()
    for i in range(5):
        conn.push(b"%d" % i)
    await eventually(lambda: len(sent) == 5, "five frames sent")
    assert sent == [b"0", b"1", b"2", b"3", b"4"]
    await conn.finish()


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back at 2/s
    assert [bucket.allow(), bucket.allow()] == [True, False]
    now[0] += 100  # refills to the burst, not beyond
    assert sum(bucket.allow() for _ in range(10)) == 3
