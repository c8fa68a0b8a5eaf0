"""Open sessions follow their credentials: a token that expires, or an account banned by an
operator, ends the connections it holds, with the codes docs/protocol.md documents; and a
genuine token of a user the service does not know is welcomed, as documented."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clearing import KeySchema
from gateway import GatewayNode
from notecard.admin_client import AdminClient
from notecard_sdk import ConnectionRejected, GiftRefused, NotecardClient
from protocol import CloseCode, Encoding
from tests.gateway_fixtures import ADMIN_TOKEN, ClientFactory, NodeFactory, befriend_all, token_for

JSON = [Encoding.JSON.subprotocol]


async def recv_json(ws: ClientConnection, timeout: float = 10) -> dict[str, object]:
    data = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(data, dict)
    return data


async def hello(ws: ClientConnection, token: str) -> dict[str, object]:
    await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": token}).decode())
    return await recv_json(ws)


async def ending(ws: ClientConnection, timeout: float = 10) -> tuple[list[dict[str, object]], int | None]:
    """The frames until the server closes, and its close code."""
    frames = []
    try:
        while True:
            frames.append(await recv_json(ws, timeout))
    except ConnectionClosed:
        return frames, ws.close_code


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def rejected_with(client: NotecardClient, code: CloseCode) -> None:
    """Wait until the SDK gave up on its connection; it must be for ``code``."""
    await wait_for(lambda: client._failure is not None)
    assert client._failure is not None and client._failure.close_code == code


def token_expiring_in(user: str, seconds: int) -> str:
    return token_for(user, ttl_s=seconds)


# ---------------------------------------------------------------- token expiry


@pytest.fixture
async def node(node_factory: NodeFactory) -> GatewayNode:
    """No clock-skew leeway: a session ends exactly at its token's ``exp`` (the default
    leeway, 30 s, would make these tests wait that long)."""
    return await node_factory(jwt_leeway_s=0)


async def test_a_token_that_expires_while_connected_ends_the_session(node: GatewayNode) -> None:
    async with connect(node.url, subprotocols=JSON) as ws:  # type: ignore[list-item]
        welcome = await hello(ws, token_expiring_in("alice", 3))
        assert welcome["t"] == "welcome"
        frames, code = await ending(ws)
    assert code == CloseCode.TOKEN_EXPIRED
    assert [(f["t"], f["code"], "rid" in f) for f in frames] == [("error", "TOKEN_EXPIRED", False)]


async def test_the_sdk_stops_on_an_expired_token_or_reconnects_with_a_new_one(node: GatewayNode) -> None:
    # A fixed token: the client stops instead of reconnecting forever with it.
    fixed = NotecardClient(node.url, token_expiring_in("alice", 3), backoff_base_s=0.01)
    await fixed.connect()
    try:
        await rejected_with(fixed, CloseCode.TOKEN_EXPIRED)
        assert fixed.connections == 1
        with pytest.raises(ConnectionRejected):
            await fixed.ping()
    finally:
        await fixed.close()
    # A token provider: the client asks it for a new token and carries on.
    tokens = itertools.chain([token_expiring_in("alice", 3)], iter(lambda: token_for("alice"), None))

    async def provider() -> str:
        return next(tokens)

    async with NotecardClient(node.url, provider, backoff_base_s=0.01) as renewing:
        await wait_for(lambda: renewing.connections == 2)
        assert (await renewing.ping()).rid > 0


# ---------------------------------------------------------------- bans


async def test_a_ban_closes_the_users_connections_on_every_node(node_factory: NodeFactory) -> None:
    first, second = await node_factory(), await node_factory()
    async with AdminClient(first.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "alice", "bob")
        bystander = NotecardClient(first.url, token_for("alice"))
        phone = NotecardClient(first.url, token_for("bob"))
        tablet = NotecardClient(second.url, token_for("bob"))
        raw = connect(second.url, subprotocols=JSON)  # type: ignore[list-item]
        async with bystander, phone, tablet, raw as ws:
            assert (await hello(ws, token_for("bob")))["t"] == "welcome"
            await admin.set_flags("bob", banned=True)
            frames, code = await ending(ws)
            assert code == CloseCode.ACCOUNT_BANNED
            assert [(f["t"], f["code"]) for f in frames] == [("error", "ACCOUNT_BANNED")]
            for client in (phone, tablet):  # the SDK does not reconnect
                await rejected_with(client, CloseCode.ACCOUNT_BANNED)
            assert (await bystander.ping()).rid > 0  # other users are not touched
            await wait_for(lambda: "bob" not in first.hub.users and "bob" not in second.hub.users)

            # Coming back is refused at hello, on any node, until the ban is lifted.
            async with connect(first.url, subprotocols=JSON) as again:  # type: ignore[list-item]
                refused = await hello(again, token_for("bob"))
                assert (refused["t"], refused["code"]) == ("error", "ACCOUNT_BANNED")
                assert (await ending(again))[1] == CloseCode.ACCOUNT_BANNED
            with pytest.raises(ConnectionRejected) as rejected:
                await NotecardClient(second.url, token_for("bob")).connect()
            assert rejected.value.close_code == CloseCode.ACCOUNT_BANNED
            await admin.set_flags("bob", banned=False)
            async with NotecardClient(second.url, token_for("bob")) as back:
                assert (await back.ping()).rid > 0


async def test_a_ban_missed_while_the_subscriber_was_down_still_closes(
    node: GatewayNode, redis: aioredis.Redis, connect: ClientFactory
) -> None:
    bob = await connect("bob")
    # The flag set with no control message: what a node sees when pub/sub lost it.
    await redis.hset(KeySchema().user("bob"), "banned", "1")
    before = node.subscriber.subscriptions
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await wait_for(lambda: node.subscriber.subscriptions > before)
    await rejected_with(bob, CloseCode.ACCOUNT_BANNED)


async def test_a_node_reaped_while_alive_closes_a_user_banned_meanwhile(
    node_factory: NodeFactory, redis: aioredis.Redis
) -> None:
    node = await node_factory(node_heartbeat_s=0.2)
    async with NotecardClient(node.url, token_for("alice")) as alice, \
            NotecardClient(node.url, token_for("bob")) as bob:
        await redis.hset(KeySchema().user("bob"), "banned", "1")
        await redis.zrem(KeySchema().nodes(), node.node_id)  # as the reaper does to a paused node
        await rejected_with(bob, CloseCode.ACCOUNT_BANNED)
        # The node announced its other connections again; alice was not touched.
        deadline = asyncio.get_running_loop().time() + 10
        while await node.presence.nodes_of("alice") != [node.node_id]:
            assert asyncio.get_running_loop().time() < deadline, "alice not announced again"
            await asyncio.sleep(0.05)
        assert await node.presence.nodes_of("bob") == []
        assert (await alice.ping()).rid > 0


# ---------------------------------------------------------------- unknown users


async def test_a_genuine_token_of_an_unknown_user_is_welcomed_and_cannot_give(
    admin: AdminClient, connect: ClientFactory
) -> None:
    await befriend_all(admin, "bob")
    stranger = await connect("nobody-yet")
    assert stranger.user == "nobody-yet"
    await connect("bob")
    with pytest.raises(GiftRefused) as refused:
        await stranger.send_gift("bob")
    assert refused.value.code == "UNKNOWN_USER"
