"""The SDK's request path against a scripted gateway: replies, deadlines, cancellation,
retries, reconnects with the same ids, failures.

The fake gateway speaks the real protocol over a real WebSocket (msgpack), answers
``hello`` with a ``welcome`` and hands every later frame to the test's ``answer``
function, which may reply, stay silent or close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from notecard_sdk import ConnectionRejected, GiftRefused, NotConnected, NotecardClient, RequestTimeout
from protocol import (
    SUBPROTOCOLS,
    ClientMessage,
    CloseCode,
    Encoding,
    Error,
    Event,
    Gift,
    GiftSent,
    Hello,
    Pending,
    Ping,
    Pong,
    SendGift,
    ServerMessage,
    SessionState,
    Welcome,
    decode_client,
    encode,
)
from tests.gateway_fixtures import eventually

MSGPACK = Encoding.MSGPACK
Answer = Callable[[ClientMessage, int], Awaitable["ServerMessage | int | None"]]


def gift_for(msg: SendGift) -> Gift:
    return Gift(gift_id=msg.gift_id, sender="alice", recipient=msg.to, kind=msg.kind, qty=msg.qty, cost=10,
                state="pending", created_at_ms=1, expires_at_ms=60_001)


class FakeGateway:
    """Answers each request with what ``answer(msg, connection_number)`` returns: a
    message to send, a close code to close with, or None for silence."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[tuple[int, ClientMessage]] = []
        self.connections = 0
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        hello = decode_client(await ws.recv(), MSGPACK)
        assert isinstance(hello, Hello)
        await ws.send(encode(Welcome(user="alice", node="fake", epoch="e", offset=0, recovered=True, pending=(),
                                     heartbeat_s=20), MSGPACK))
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                msg = decode_client(frame, MSGPACK)
                self.received.append((number, msg))
                reply = await self.answer(msg, number)
                if isinstance(reply, int):
                    await ws.close(reply)
                    return
                if reply is not None:
                    await ws.send(encode(reply, MSGPACK))


@pytest.fixture
async def gateway_for() -> AsyncIterator[Callable[[Answer], Awaitable[FakeGateway]]]:
    servers = []

    async def start(answer: Answer) -> FakeGateway:
        fake = FakeGateway(answer)
        server = await serve(fake.handler, "127.0.0.1", 0, subprotocols=[Subprotocol(s) for s in SUBPROTOCOLS])
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        fake.url = f"ws://127.0.0.1:{port}"
        return fake

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., Awaitable[NotecardClient]]]:
    clients = []

    async def make(fake: FakeGateway, **kwargs: Any) -> NotecardClient:
        client = NotecardClient(fake.url, "token", backoff_base_s=0.01, backoff_cap_s=0.05, **kwargs)
        await client.connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture(autouse=True)
def no_lost_exceptions(caplog: pytest.LogCaptureFixture) -> Any:
    """asyncio logs a future whose exception nobody retrieved; none may be left behind."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    yield
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


async def pong(msg: ClientMessage, _connection: int) -> ServerMessage | int | None:
    assert isinstance(msg, Ping)
    return Pong(rid=msg.rid, server_time_ms=5)


async def silent(_msg: ClientMessage, _connection: int) -> ServerMessage | int | None:
    return None


async def test_replies_are_matched_by_rid(gateway_for: Any, client_for: Any) -> None:
    client = await client_for(await gateway_for(pong))
    replies = await asyncio.gather(*(client.ping() for _ in range(50)))
    assert all(isinstance(r, Pong) for r in replies)
    assert len({r.rid for r in replies}) == 50
    assert not client._inflight


async def test_no_answer_is_a_request_timeout_at_the_deadline(gateway_for: Any, client_for: Any) -> None:
    client = await client_for(await gateway_for(silent), request_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(RequestTimeout, match=r"^no answer to ping within 0\.2s$"):
        await client.ping()
    assert 0.19 <= time.monotonic() - started < 1.0
    assert not client._inflight


async def test_a_late_reply_is_dropped_and_the_client_goes_on(gateway_for: Any, client_for: Any) -> None:
    timed_out = asyncio.Event()

    async def late_first(msg: ClientMessage, _connection: int) -> ServerMessage | int | None:
        assert isinstance(msg, Ping)
        if msg.rid == 1:
            await timed_out.wait()  # answered once the client gave up on it
        return Pong(rid=msg.rid, server_time_ms=5)

    fake = await gateway_for(late_first)
    client = await client_for(fake, request_timeout_s=0.15)
    with pytest.raises(RequestTimeout):
        await client.ping()  # rid 1: answered after its deadline
    timed_out.set()
    client.request_timeout_s = 5
    assert (await client.ping()).rid == 2  # the server answers in order: rid 1's pong came first
    assert not client._inflight


async def test_a_cancelled_request_leaves_nothing_behind(gateway_for: Any, client_for: Any) -> None:
    answered = asyncio.Event()

    async def hold_first(msg: ClientMessage, _connection: int) -> ServerMessage | int | None:
        assert isinstance(msg, Ping)
        if msg.rid == 1:
            await answered.wait()
        return Pong(rid=msg.rid, server_time_ms=5)

    fake = await gateway_for(hold_first)
    client = await client_for(fake)
    task = asyncio.create_task(client.ping())
    await eventually(lambda: len(fake.received) == 1, "the ping at the server")  # the server holds its answer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not client._inflight
    answered.set()  # rid 1's pong now arrives and is ignored
    assert (await client.ping()).rid == 2


async def test_wait_for_around_a_request_times_out_cleanly(gateway_for: Any, client_for: Any) -> None:
    client = await client_for(await gateway_for(silent))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.ping(), 0.05)
    assert not client._inflight


async def test_requests_in_flight_are_resent_with_the_same_ids_after_a_reconnect(
        gateway_for: Any, client_for: Any) -> None:
    async def drop_first_connection(msg: ClientMessage, connection: int) -> ServerMessage | int | None:
        if connection == 1:
            return int(CloseCode.SHUTDOWN)  # "reconnect elsewhere", without answering
        assert isinstance(msg, SendGift)
        return GiftSent(rid=msg.rid, gift=gift_for(msg))

    fake = await gateway_for(drop_first_connection)
    client = await client_for(fake)
    gift = await client.send_gift("bob", qty=2)
    assert fake.connections == 2
    (first_conn, first), (second_conn, second) = fake.received
    assert (first_conn, second_conn) == (1, 2)
    assert first == second  # same rid, same gift id, same payload
    assert isinstance(first, SendGift) and gift.gift_id == first.gift_id
    assert not client._inflight


async def test_a_retryable_refusal_is_retried_with_the_same_gift_id(gateway_for: Any, client_for: Any) -> None:
    async def unavailable_once(msg: ClientMessage, _connection: int) -> ServerMessage | int | None:
        assert isinstance(msg, SendGift)
        if msg.rid == 1:
            return Error(code="UNAVAILABLE", message="retry", rid=msg.rid)
        return GiftSent(rid=msg.rid, gift=gift_for(msg))

    fake = await gateway_for(unavailable_once)
    client = await client_for(fake)
    gift = await client.send_gift("bob", gift_id="g-fixed")
    assert gift.gift_id == "g-fixed"
    sent = [m for _, m in fake.received]
    assert [m.rid for m in sent] == [1, 2]
    assert {m.gift_id for m in sent if isinstance(m, SendGift)} == {"g-fixed"}


async def test_retryable_refusals_until_the_deadline(gateway_for: Any, client_for: Any) -> None:
    async def always_unavailable(msg: ClientMessage, _connection: int) -> ServerMessage | int | None:
        assert isinstance(msg, SendGift)
        return Error(code="UNAVAILABLE", message="retry", rid=msg.rid)

    fake = await gateway_for(always_unavailable)
    client = await client_for(fake, request_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises((GiftRefused, RequestTimeout)) as err:
        await client.send_gift("bob", gift_id="g-fixed")
    assert 0.29 <= time.monotonic() - started < 1.0
    if isinstance(err.value, GiftRefused):
        assert err.value.code == "UNAVAILABLE"
    assert len(fake.received) > 2
    assert not client._inflight


async def test_a_final_refusal_is_raised_with_its_code_and_gift(gateway_for: Any, client_for: Any) -> None:
    async def expired(msg: ClientMessage, _connection: int) -> ServerMessage | int | None:
        assert isinstance(msg, SendGift)
        return Error(code="GIFT_EXPIRED", message="too late", rid=msg.rid, gift=gift_for(msg))

    client = await client_for(await gateway_for(expired))
    with pytest.raises(GiftRefused) as err:
        await client.send_gift("bob", gift_id="g-1")
    assert (err.value.code, err.value.message) == ("GIFT_EXPIRED", "too late")
    assert err.value.gift is not None and err.value.gift.gift_id == "g-1"


async def test_a_final_close_fails_the_requests_in_flight(gateway_for: Any, client_for: Any) -> None:
    async def reject(_msg: ClientMessage, _connection: int) -> ServerMessage | int | None:
        return int(CloseCode.INVALID_TOKEN)

    client = await client_for(await gateway_for(reject))
    with pytest.raises(ConnectionRejected) as err:
        await client.ping()
    assert err.value.close_code == CloseCode.INVALID_TOKEN
    assert not client._inflight
    with pytest.raises(ConnectionRejected):
        await client.ping()  # and every later request, at once


async def test_close_fails_the_requests_in_flight(gateway_for: Any, client_for: Any) -> None:
    fake = await gateway_for(silent)
    client = await client_for(fake)
    task = asyncio.create_task(client.ping())
    await eventually(lambda: len(fake.received) == 1, "the ping at the server")  # in flight: the server never answers
    await client.close()
    with pytest.raises(NotConnected):
        await task
    assert not client._inflight


async def test_cancelling_a_request_whose_reply_just_arrived_cancels_it() -> None:
    """The reply and the cancellation land in the same loop turn: the caller is cancelled.

    asyncio.wait_for (Python 3.11) returned the reply instead and swallowed the
    cancellation, so a task cancelled around a request could run on: the load generator's
    shutdown waited forever for such a task.
    """
    sent = asyncio.Event()

    class Connection:
        async def send(self, frame: Any) -> None:
            sent.set()

    client = NotecardClient("ws://127.0.0.1:9", "token")
    client.session.connect("token")  # the session is open on a connection the test plays
    client._dispatch(Welcome(user="alice", node="fake", epoch="e", offset=0, recovered=True, pending=(),
                             heartbeat_s=20))
    client.session.data_to_send()  # the hello
    connection: Any = Connection()
    client._ws = connection
    task = asyncio.create_task(client.ping())
    await sent.wait()  # the request is written and now waits for its reply
    client._dispatch(Pong(rid=1, server_time_ms=5), connection)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not client._inflight


async def test_waiting_for_an_offer_cancelled_as_it_arrives_is_cancelled_and_keeps_it() -> None:
    """The offer and the cancellation land in the same loop turn: the waiter is cancelled
    and the offer stays for the next call (asyncio.wait_for on 3.11 returned it and
    dropped the cancellation)."""
    from protocol import Gift

    gift = Gift(gift_id="g1", sender="ann", recipient="bob", kind="note", qty=1, cost=10, state="pending",
                created_at_ms=1, expires_at_ms=2)
    client = NotecardClient("ws://127.0.0.1:9", "token")  # never connected: the queue is all we use
    waiter = asyncio.create_task(client.next_offer(timeout=5))
    await asyncio.sleep(0)  # it waits on the queue
    client._offers.put_nowait(gift)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await client.next_offer(timeout=1) == gift


async def test_an_offer_wait_times_out_without_losing_a_later_offer() -> None:
    client = NotecardClient("ws://127.0.0.1:9", "token")
    with pytest.raises(TimeoutError):
        await client.next_outcome(timeout=0.01)
    with pytest.raises(TimeoutError):
        await client.wait_connected(timeout=0.01)
    assert client._outcomes.qsize() == 0 and not client._outcomes._getters  # type: ignore[attr-defined]


async def test_a_pending_list_in_parts_is_put_together_and_each_offer_yielded_once() -> None:
    """welcome (pending_more) + pending frames; an offer repeated in a part and replayed as
    an event after a reconnect is still yielded once, and requests wait for the last part."""
    gifts = [Gift(gift_id=f"g{i}", sender="ann", recipient="bob", kind="note", qty=1, cost=10, state="pending",
                  created_at_ms=1, expires_at_ms=2) for i in range(5)]
    frames: list[ServerMessage] = [
        Welcome(user="bob", node="fake", epoch="e", offset=1, recovered=True, pending=tuple(gifts[:2]),
                heartbeat_s=20, pending_more=True),
        Pending(gifts=(gifts[2], gifts[1]), more=True),
        Pending(gifts=(gifts[3],)),
        Event(epoch="e", offset=2, event="offer", gift=gifts[4]),
        Event(epoch="e", offset=3, event="offer", gift=gifts[0]),
    ]
    released = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        assert isinstance(decode_client(await ws.recv(), MSGPACK), Hello)
        await ws.send(encode(frames[0], MSGPACK))
        await released.wait()  # the rest of the list comes later
        with contextlib.suppress(ConnectionClosed):
            for frame in frames[1:]:
                await ws.send(encode(frame, MSGPACK))
            async for frame in ws:
                msg = decode_client(frame, MSGPACK)
                assert isinstance(msg, Ping)
                await ws.send(encode(Pong(rid=msg.rid, server_time_ms=5), MSGPACK))

    server = await serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol(s) for s in SUBPROTOCOLS])
    try:
        port = next(iter(server.sockets)).getsockname()[1]
        client = NotecardClient(f"ws://127.0.0.1:{port}", "token")
        connecting = asyncio.create_task(client.connect())
        # The welcome came and announced more of the list: not connected until it is complete.
        await eventually(lambda: client.session.state is SessionState.RECEIVING_PENDING, "the pending list started")
        assert client._first_welcome is not None and not client._first_welcome.done(), \
            "connected before the list was complete"
        released.set()
        welcome = await connecting
        try:
            assert welcome.pending == (gifts[0], gifts[1], gifts[2], gifts[1], gifts[3])
            assert welcome.pending_more is None
            await client.ping()
            offers = [client._offers.get_nowait() for _ in range(client._offers.qsize())]
            assert [g.gift_id for g in offers] == ["g0", "g1", "g2", "g3", "g4"]
        finally:
            await client.close()
    finally:
        released.set()
        server.close()
        await server.wait_closed()
