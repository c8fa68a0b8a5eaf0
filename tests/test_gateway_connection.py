"""Connections: authentication, bad input, rate limit, reconnect and resume, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgpack
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway import GatewayNode
from notecard.admin_client import AdminClient
from notecard_sdk import ConnectionRejected, NotecardClient
from protocol import MAX_FRAME_BYTES, CloseCode, Encoding
from tests.gateway_fixtures import ADMIN_TOKEN, ClientFactory, NodeFactory, befriend_all, token_for

JSON = [Encoding.JSON.subprotocol]


async def recv_json(ws: ClientConnection) -> dict[str, object]:
    frame = await asyncio.wait_for(ws.recv(), 5)
    data = orjson.loads(frame)
    assert isinstance(data, dict)
    return data


async def closed_with(ws: ClientConnection) -> int | None:
    """Read until the server closes (a timeout fails the test); the close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    except ConnectionClosed:
        return ws.close_code


async def hello(ws: ClientConnection, user: str) -> dict[str, object]:
    await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": token_for(user)}).decode())
    welcome = await recv_json(ws)
    assert welcome["t"] == "welcome"
    return welcome


async def test_forged_and_expired_tokens_are_refused(node: GatewayNode) -> None:
    forged = token_for("alice")[:-2] + "xx"
    with pytest.raises(ConnectionRejected) as bad:
        await NotecardClient(node.url, forged, reconnect=False).connect()
    assert bad.value.close_code == CloseCode.INVALID_TOKEN
    expired = token_for("alice", ttl_s=-60)  # past the default 30 s leeway (NOTECARD_JWT_LEEWAY_S)
    with pytest.raises(ConnectionRejected) as old:
        await NotecardClient(node.url, expired).connect()
    assert old.value.close_code == CloseCode.TOKEN_EXPIRED


async def test_frames_before_hello_close_the_connection(node: GatewayNode) -> None:
    async with connect(node.url, subprotocols=JSON) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"t": "ping", "rid": 1}).decode())
        error = await recv_json(ws)
        assert (error["t"], error["code"]) == ("error", "NOT_AUTHENTICATED")
        assert await closed_with(ws) == CloseCode.NOT_AUTHENTICATED


async def test_wrong_protocol_version_is_refused(node: GatewayNode) -> None:
    async with connect(node.url, subprotocols=JSON) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"t": "hello", "v": 99, "token": token_for("a")}).decode())
        assert (await recv_json(ws))["code"] == "UNSUPPORTED_VERSION"
        assert await closed_with(ws) == CloseCode.UNSUPPORTED_VERSION


async def test_malformed_frames_get_errors_then_a_close_and_others_are_unharmed(
    node: GatewayNode, admin: AdminClient, connect: ClientFactory
) -> None:
    await befriend_all(admin, "alice", "bob")
    bystander = await connect("bob")
    async with connect_raw(node) as ws:
        await hello(ws, "alice")
        bad_frames: list[str | bytes] = [
            "not json",
            "[1, 2]",
            orjson.dumps({"t": "launch_rockets", "rid": 7}).decode(),
            orjson.dumps({"t": "send_gift", "rid": 8, "gift_id": "g", "to": "bob", "kind": "note",
                          "qty": "1"}).decode(),
            msgpack.packb({"t": "ping", "rid": 9}),  # binary frame on a JSON connection
        ]
        codes = []
        for frame in bad_frames[:4]:
            await ws.send(frame)
            codes.append((await recv_json(ws))["code"])
        assert codes == ["BAD_FRAME", "BAD_FRAME", "UNKNOWN_TYPE", "BAD_FIELD"]
        await ws.send(bad_frames[4])
        assert (await recv_json(ws))["code"] == "BAD_FRAME"
        assert await closed_with(ws) == CloseCode.PROTOCOL_VIOLATION
    assert (await bystander.ping()).rid > 0
    user = await admin.get_user("alice")
    assert user["balances"]["available"]["note"] == 100  # nothing changed


async def test_oversized_frame_closes_with_1009(node: GatewayNode) -> None:
    async with connect_raw(node) as ws:
        await hello(ws, "alice")
        await ws.send("x" * (MAX_FRAME_BYTES + 1))
        assert await closed_with(ws) == 1009


async def test_request_ids_correlate_and_a_second_hello_is_refused(node: GatewayNode) -> None:
    async with connect_raw(node) as ws:
        welcome = await hello(ws, "alice")
        assert welcome["user"] == "alice" and welcome["recovered"] is True
        await ws.send(orjson.dumps({"t": "ping", "rid": 41}).decode())
        await ws.send(orjson.dumps({"t": "get_balance", "rid": 42}).decode())
        assert [(await recv_json(ws))["rid"] for _ in range(2)] == [41, 42]
        await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": token_for("mallory")}).decode())
        assert (await recv_json(ws))["code"] == "ALREADY_AUTHENTICATED"


async def test_rate_limit_refuses_then_disconnects(node_factory: NodeFactory) -> None:
    node = await node_factory(rate_per_s=1.0, rate_burst=2, rate_strikes_max=3)
    async with connect_raw(node) as ws:
        await hello(ws, "alice")
        for rid in range(1, 6):
            await ws.send(orjson.dumps({"t": "ping", "rid": rid}).decode())
        replies = [await recv_json(ws) for _ in range(5)]
        assert [r["t"] for r in replies[:2]] == ["pong", "pong"]
        assert [r.get("code") for r in replies[2:]] == ["RATE_LIMITED"] * 3
        assert await closed_with(ws) == CloseCode.TOO_MANY_REQUESTS


async def test_offer_is_shown_again_after_reconnect(admin: AdminClient, connect: ClientFactory,
                                                   node: GatewayNode) -> None:
    await befriend_all(admin, "alice", "bob")
    alice, bob = await connect("alice"), await connect("bob")
    gift = await alice.send_gift("bob")
    await bob.next_offer(5)
    await bob.close()
    async with NotecardClient(node.url, token_for("bob")) as bob_again:
        assert [g.gift_id for g in bob_again.welcome.pending] == [gift.gift_id]  # type: ignore[union-attr]
        assert (await bob_again.next_offer(5)).gift_id == gift.gift_id
        assert (await bob_again.accept(gift.gift_id)).state == "accepted"
    assert (await alice.next_outcome(5)).state == "accepted"


async def test_sdk_resumes_after_a_dropped_connection_without_duplicates(
    admin: AdminClient, connect: ClientFactory
) -> None:
    await befriend_all(admin, "alice", "bob")
    alice = await connect("alice")
    phone, tablet = await connect("bob"), await connect("bob")  # the tablet keeps bob online
    warmup = await alice.send_gift("bob")
    assert (await phone.next_offer(5)).gift_id == warmup.gift_id
    await phone.accept(warmup.gift_id)
    assert (await phone.next_outcome(5)).state == "accepted"

    phone._backoff = lambda attempt: 0.5  # type: ignore[method-assign]  # a fixed, known gap
    ws = phone._ws
    assert ws is not None
    ws.transport.abort()  # the network drops under the SDK
    await wait_for(lambda: not phone._connected.is_set())
    missed = await alice.send_gift("bob")  # while the phone is away
    await tablet.accept(missed.gift_id)

    await wait_for(lambda: phone.connections == 2)
    assert phone.recovered
    assert (await phone.next_offer(5)).gift_id == missed.gift_id
    outcome = await phone.next_outcome(5)
    assert (outcome.gift_id, outcome.state) == (missed.gift_id, "accepted")
    # Nothing delivered twice: the next offer and outcome the phone hears are of a later gift
    # (its events arrive in order, so a repeat would come first).
    later = await alice.send_gift("bob")
    assert (await phone.next_offer(5)).gift_id == later.gift_id
    await tablet.decline(later.gift_id)
    assert (await phone.next_outcome(5)).gift_id == later.gift_id


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_graceful_shutdown_sends_clients_elsewhere(node_factory: NodeFactory) -> None:
    first, second = await node_factory(), await node_factory()
    async with connect_raw(first) as ws:
        await hello(ws, "alice")
        await first.stop()
        assert await closed_with(ws) == CloseCode.SHUTDOWN
    async with connect_raw(second) as ws:
        await hello(ws, "alice")


async def test_a_silent_peer_is_dropped_by_the_heartbeat(node_factory: NodeFactory) -> None:
    node = await node_factory(heartbeat_s=0.2, pong_timeout_s=0.2)
    host, port = node.settings.host, node.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    assert b"101" in await asyncio.wait_for(reader.readline(), 5)
    # Never answer the server's pings: the connection must be closed by the server.
    async def drained() -> None:
        while await reader.read(4096):
            pass
    await asyncio.wait_for(drained(), 5)
    writer.close()


def connect_raw(node: GatewayNode) -> connect:
    return connect(node.url, subprotocols=JSON)  # type: ignore[list-item]


async def test_a_send_cut_off_by_a_dropped_connection_is_retried_once(
    admin: AdminClient, connect: ClientFactory
) -> None:
    await befriend_all(admin, "alice", "bob", cards=5)
    bob = await connect("bob")
    alice = await connect("alice", backoff_base_s=0.05)
    ws = alice._ws
    assert ws is not None
    ws.transport.abort()  # the request below leaves into a dead connection
    gift = await alice.send_gift("bob", qty=2, gift_id="cut-off")
    assert gift.gift_id == "cut-off"
    assert alice.connections == 2
    assert (await bob.next_offer(5)).gift_id == "cut-off"
    assert (await alice.balance()).available["note"] == 30  # charged once


async def test_retryable_refusals_are_retried_by_the_sdk_with_the_same_id(node_factory: NodeFactory) -> None:
    node = await node_factory(rate_per_s=2.0, rate_burst=1)
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "alice", "bob", cards=5)
        async with NotecardClient(node.url, token_for("bob")) as bob, \
                NotecardClient(node.url, token_for("alice"), backoff_base_s=0.2) as alice:
            await alice.ping()  # uses the only token: the send is RATE_LIMITED at first
            gift = await alice.send_gift("bob", gift_id="patient")
            assert (await bob.next_offer(5)).gift_id == gift.gift_id
        assert node.metrics.refusals.labels(code="RATE_LIMITED")._value.get() >= 1
        assert (await admin.get_user("alice"))["balances"]["available"]["note"] == 40


async def test_no_subprotocol_means_json_and_an_unknown_one_is_refused(node: GatewayNode) -> None:
    async with connect(node.url) as ws:  # a browser console offers none
        assert ws.subprotocol is None
        welcome = await hello(ws, "alice")
        assert welcome["user"] == "alice"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(node.url, subprotocols=["notecard.v9.xml"]):  # type: ignore[list-item]
            pass
    assert refused.value.response.status_code == 400


async def test_an_integer_of_any_size_is_bad_field_with_the_rid(node: GatewayNode) -> None:
    async with connect_raw(node) as ws:
        await hello(ws, "alice")
        huge = str(10**400)  # beyond a double: JSON parsers that read numbers as doubles fail on it
        await ws.send(f'{{"t":"send_gift","rid":8,"gift_id":"g","to":"bob","kind":"note","qty":{huge}}}')
        error = await recv_json(ws)
        assert (error["t"], error["code"], error["rid"]) == ("error", "BAD_FIELD", 8)
        await ws.send(orjson.dumps({"t": "ping", "rid": 9}).decode())
        assert (await recv_json(ws))["t"] == "pong"


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(node: GatewayNode) -> None:
    """RFC 6455 section 8.1, as docs/protocol.md says: no error frame, close code 1007."""
    async with connect_raw(node) as ws:
        await hello(ws, "alice")
        await ws.send(b'{"t":"ping","rid":9,"x":"\xff"}', text=True)
        assert await closed_with(ws) == CloseCode.INVALID_PAYLOAD


async def test_broken_websocket_framing_closes_with_1002(node: GatewayNode) -> None:
    """docs/protocol.md section 11: the WebSocket layer closes with 1002, no error frame."""
    host, port = node.settings.host, node.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.write(b"\x81\x02hi")  # a text frame a client failed to mask
    await writer.drain()
    header = await asyncio.wait_for(reader.readexactly(4), 5)
    assert header[0] == 0x88  # a close frame, first and only
    assert int.from_bytes(header[2:4], "big") == CloseCode.PROTOCOL_ERROR
    writer.close()
