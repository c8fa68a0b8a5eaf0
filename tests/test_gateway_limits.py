"""Abuse limits end to end: connections per user (over nodes) and per address, the request
rate per user over connections and nodes, live rooms (open rooms only, a cap per
connection, one Redis call per push tick) and the refused gift id rule. Real nodes, real
WebSocket connections, the test Redis; node_factory checks the invariant at teardown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clearing import GiftRules, KeySchema
from clearing.rooms import Rooms
from clearing.testing import World
from gateway import GatewayNode, GatewaySettings
from gateway.rooms import RoomHub
from notecard.admin_client import AdminApiError, AdminClient
from notecard_sdk import ConnectionRejected, GiftRefused, NotecardClient
from protocol import CloseCode, Encoding
from tests.gateway_fixtures import ADMIN_TOKEN, ClientFactory, NodeFactory, befriend_all, token_for

JSON = [Encoding.JSON.subprotocol]


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    data = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert isinstance(data, dict)
    return data


@asynccontextmanager
async def raw(node: GatewayNode, user: str | None = None, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A JSON connection, authenticated as ``user`` when one is given."""
    async with connect(node.url, subprotocols=JSON, **kwargs) as ws:  # type: ignore[list-item]
        if user is not None:
            await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": token_for(user)}).decode())
            assert (await recv_json(ws))["t"] == "welcome"
        yield ws


async def refused_with(ws: ClientConnection) -> tuple[str, int | None]:
    """The error code sent before the close, and the close code."""
    error = await recv_json(ws)
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed:
        return str(error.get("code")), ws.close_code


async def eventually_connected(url: str, user: str, deadline_s: float = 10.0) -> NotecardClient:
    """Connect, retrying while the server has not yet counted a closed connection out."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        client = NotecardClient(url, token_for(user), reconnect=False)
        try:
            await client.connect()
            return client
        except ConnectionRejected:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------ connections


async def test_a_users_connections_beyond_the_cap_over_two_nodes_are_refused_and_others_are_not(
    node_factory: NodeFactory,
) -> None:
    """Connections per user were unlimited: one token opened hundreds in seconds."""
    a = await node_factory(max_connections_per_user=3)
    b = await node_factory(max_connections_per_user=3)
    async with AsyncExitStack() as stack:
        for url in (a.url, a.url, b.url):
            await stack.enter_async_context(NotecardClient(url, token_for("alice"), reconnect=False))
        for url in (a.url, b.url):
            with pytest.raises(ConnectionRejected) as over:
                await NotecardClient(url, token_for("alice"), reconnect=False).connect()
            assert over.value.close_code == CloseCode.USER_CONNECTION_LIMIT
        async with NotecardClient(b.url, token_for("bob"), reconnect=False) as bob:
            assert (await bob.ping()).rid > 0
        async with raw(a) as ws:
            await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": token_for("alice")}).decode())
            assert await refused_with(ws) == ("TOO_MANY_CONNECTIONS", CloseCode.USER_CONNECTION_LIMIT)
        await stack.aclose()  # alice closes her three: she may connect again
        again = await eventually_connected(b.url, "alice")
        await again.close()
    assert a.metrics.closes.labels(code=str(int(CloseCode.USER_CONNECTION_LIMIT)))._value.get() >= 1


async def test_connections_from_one_address_beyond_the_cap_are_refused_before_hello(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(max_connections_per_ip=2)
    async with raw(node, "alice"), raw(node, "bob"), raw(node) as third:
        assert await refused_with(third) == ("TOO_MANY_CONNECTIONS", CloseCode.ADDRESS_CONNECTION_LIMIT)
    # the slots come back once the server has counted the closes out (a moment later on a
    # busy machine)
    carol = await eventually_connected(node.url, "carol")
    dave = await eventually_connected(node.url, "dave")
    await carol.close()
    await dave.close()


async def test_behind_a_trusted_proxy_the_forwarded_address_counts(node_factory: NodeFactory) -> None:
    """Behind a load balancer every client shares its address; the cap must count the one
    the proxy forwards, and only when the peer is a trusted proxy."""
    node = await node_factory(max_connections_per_ip=1, trusted_proxies=GatewaySettings.from_env(
        {"NOTECARD_TRUSTED_PROXIES": "127.0.0.0/8"}).trusted_proxies)

    def via(client: str) -> dict[str, Any]:
        # a client's own X-Forwarded-For comes first; the proxy appends the address it saw
        return {"additional_headers": {"X-Forwarded-For": f"198.51.100.9, {client}"}}

    async with raw(node, "alice", **via("203.0.113.1")), raw(node, "bob", **via("203.0.113.2")), \
            raw(node, **via("203.0.113.1")) as same:
        assert await refused_with(same) == ("TOO_MANY_CONNECTIONS", CloseCode.ADDRESS_CONNECTION_LIMIT)
    untrusted = await node_factory(max_connections_per_ip=1)
    # from an untrusted peer the header is not believed: both count as 127.0.0.1
    async with raw(untrusted, "alice", **via("203.0.113.1")), raw(untrusted, **via("203.0.113.2")) as spoofed:
        assert await refused_with(spoofed) == ("TOO_MANY_CONNECTIONS", CloseCode.ADDRESS_CONNECTION_LIMIT)


# ------------------------------------------------------------------ request rate


async def test_a_user_spreading_requests_over_connections_on_two_nodes_is_rate_limited(
    node_factory: NodeFactory, redis: aioredis.Redis,
) -> None:
    """The rate limit was per connection: N connections had N budgets. Gifts count inside
    their own script, other requests in a small one; both draw on the same budget."""
    # A refill slower than any test, so the count is exact however slow the machine.
    limits = {"rate_per_s": 100.0, "rate_burst": 100, "user_rate_per_s": 0.001, "user_rate_burst": 3}
    a, b = await node_factory(**limits), await node_factory(**limits)
    rids = iter(range(1, 100))

    async def ask(ws: ClientConnection, t: str, **fields: Any) -> str:
        rid = next(rids)
        await ws.send(orjson.dumps({"t": t, "rid": rid, **fields}).decode())
        reply = await recv_json(ws)
        assert reply.get("rid") == rid
        return str(reply.get("code") or reply["t"])

    send = {"to": "bob", "kind": "note", "qty": 1}
    async with raw(a, "alice") as on_a, raw(b, "alice") as on_b, raw(b, "bob") as bob:
        assert [await ask(on_a, "ping"), await ask(on_b, "send_gift", gift_id="g1", **send),
                await ask(on_a, "accept", gift_id="g0")] == ["pong", "UNKNOWN_USER", "GIFT_NOT_FOUND"]
        assert [await ask(on_b, "send_gift", gift_id="g2", **send), await ask(on_a, "ping"),
                await ask(on_b, "decline", gift_id="g0")] == ["RATE_LIMITED"] * 3
        assert await ask(bob, "ping") == "pong"  # another user has a budget of their own
    keys = KeySchema()
    assert await redis.exists(keys.refused("alice", "g1")) and not await redis.exists(keys.refused("alice", "g2")), \
        "a rate-limited send is not a refusal to remember"


# ------------------------------------------------------------------ live rooms


async def test_only_open_rooms_can_be_joined_and_a_connection_watches_a_bounded_number(
    node_factory: NodeFactory, connect: ClientFactory,
) -> None:
    """join_room took any id: each joined room, streamed or not, cost a script per push tick."""
    node = await node_factory(max_rooms_per_connection=2)
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "fan", "s1", "s2", "s3", cards=0)
    for streamer in ("s1", "s2", "s3"):
        await (await connect(streamer, url=node.url)).open_wish("note", 5)
    fan = await connect("fan", url=node.url)
    with pytest.raises(GiftRefused) as closed:
        await fan.join_room("nobody-streams-here")
    assert closed.value.code == "NO_WISH"
    assert (await fan.join_room("s1")).viewers == 1
    assert (await fan.join_room("s2")).viewers == 1
    assert (await fan.join_room("s2")).viewers == 1  # joining twice counts once
    with pytest.raises(GiftRefused) as full:
        await fan.join_room("s3")
    assert full.value.code == "TOO_MANY_ROOMS"
    await fan.leave_room("s1")
    assert (await fan.join_room("s3")).viewers == 1
    other = await connect("fan", url=node.url)  # the cap is per connection
    assert (await other.join_room("s1")).viewers == 1


class _Viewer:
    """What RoomHub reads of a connection, recording the frames pushed to it."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.encoding = Encoding.MSGPACK
        self.frames: list[object] = []

    def push(self, frame: object) -> bool:
        self.frames.append(frame)
        return True


async def _script_calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_fcall", {}).get("calls", 0))


async def test_a_push_tick_reads_all_rooms_of_the_node_in_one_redis_call(redis: aioredis.Redis) -> None:
    """Each room used to cost its own script on every tick, one after another."""
    world = await World.build(redis)
    rooms = Rooms(redis, world.rules, world.keys, world.clock)
    hub = RoomHub(rooms, world.node, max_rooms=1)
    viewers = []
    for i in range(40):
        streamer = f"star{i}"
        await world.user(streamer)
        await rooms.open_wish(streamer, "note", 5)
        viewer = _Viewer(f"fan{i}")
        await hub.join(viewer, streamer)  # type: ignore[arg-type]
        viewers.append(viewer)
    await hub.push_step()  # the first push of every room (and the script loaded)
    assert all(len(v.frames) == 1 for v in viewers)
    await hub.push_step()
    assert all(len(v.frames) == 1 for v in viewers), "an unchanged room is not pushed again"
    for i in range(40):
        await rooms.open_wish(f"star{i}", "note", 9)  # every room changes
    before = await _script_calls(redis)
    await hub.push_step()
    assert await _script_calls(redis) - before == 1
    assert all(len(v.frames) == 2 for v in viewers)
    assert (await world.check()).ok


# ------------------------------------------------------------------ refused gift ids


async def test_a_refused_gift_id_is_spent_for_the_refusal_memory_and_a_new_attempt_takes_a_new_id(
    node_factory: NodeFactory,
) -> None:
    """docs/protocol.md section 9: the same id repeats the refusal (a late copy never
    creates a refused gift), a new attempt with a new id is judged afresh, and the memory
    lasts the configured retry horizon (it was an hour whatever the setting)."""
    node = await node_factory(GiftRules(refusal_memory_ms=1500))
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "alice", "bob", cards=5)
        async with NotecardClient(node.url, token_for("alice")) as alice:
            with pytest.raises(GiftRefused) as offline:
                await alice.send_gift("bob", gift_id="spent")
            assert offline.value.code == "RECIPIENT_OFFLINE"
            async with NotecardClient(node.url, token_for("bob")) as bob:
                with pytest.raises(GiftRefused) as again:
                    await alice.send_gift("bob", gift_id="spent")  # a late copy, bob now online
                assert again.value.code == "RECIPIENT_OFFLINE"
                with pytest.raises(GiftRefused) as other:
                    await alice.send_gift("bob", qty=2, gift_id="spent")
                assert other.value.code == "IDEMPOTENCY_CONFLICT"
                shown = await admin.gift("spent")
                assert {k: shown[k] for k in ("state", "code", "sender", "recipient", "qty")} == {
                    "state": "refused", "code": "RECIPIENT_OFFLINE", "sender": "alice", "recipient": "bob", "qty": 1}
                fresh = await alice.send_gift("bob")  # a new attempt: the SDK picks a new id
                assert fresh.gift_id != "spent" and fresh.state == "pending"
                await bob.accept((await bob.next_offer(5)).gift_id)
                await _forgotten(admin, "spent")
                assert (await alice.send_gift("bob", gift_id="spent")).state == "pending"
                await bob.decline("spent")


async def _forgotten(admin: AdminClient, gift_id: str, deadline_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        try:
            await admin.gift(gift_id)
        except AdminApiError as exc:
            if exc.status == 404:
                return
            raise
        assert loop.time() < end, "the refusal outlived the refusal memory"
        await asyncio.sleep(0.1)


def test_limit_settings_come_from_the_environment() -> None:
    s = GatewaySettings.from_env({
        "NOTECARD_USER_RATE_PER_S": "5", "NOTECARD_USER_RATE_BURST": "7", "NOTECARD_MAX_CONNECTIONS_PER_USER": "4",
        "NOTECARD_MAX_CONNECTIONS_PER_IP": "50", "NOTECARD_MAX_ROOMS_PER_CONNECTION": "3",
        "NOTECARD_REFUSAL_MEMORY_S": "45", "NOTECARD_TRUSTED_PROXIES": "10.0.0.0/8,::1",
    })
    assert (s.user_rate_per_s, s.user_rate_burst, s.max_connections_per_user, s.max_connections_per_ip,
            s.max_rooms_per_connection, s.rules.refusal_memory_ms) == (5.0, 7, 4, 50, 3, 45_000)
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    defaults = GatewaySettings()
    assert (defaults.max_connections_per_user, defaults.rules.refusal_memory_ms) == (10, 60_000)
