"""The backend's admin routes on real nodes and a real Redis: a gift sent for a user, a user
disconnected on every node, bulk upserts of users and follows. The node fixtures check the
conservation invariant after each test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway import GatewayNode
from gateway.admin_backend import MAX_BATCH
from notecard.admin_client import AdminClient
from notecard_sdk import NotecardClient
from protocol import CloseCode, Encoding
from tests.gateway_fixtures import ADMIN_TOKEN, ClientFactory, NodeFactory, befriend_all, token_for

UNITS = 10
Call = Callable[..., Any]


@pytest.fixture
async def api(node: GatewayNode) -> AsyncIterator[Call]:
    """``await api(method, path, body)`` -> (status, JSON answer) with the admin token."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            data = None if body is None else orjson.dumps(body)
            async with session.request(method, node.admin_url + path, data=data) as resp:
                return resp.status, orjson.loads(await resp.read())

        yield call


async def test_a_gift_sent_for_a_user_is_the_clients_send(api: Call, admin: AdminClient,
                                                          connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob", cards=5)
    bob = await connect("bob")
    status, gift = await api("POST", "/admin/gifts", {"gift_id": "g-1", "sender": "alice", "recipient": "bob",
                                                      "qty": 2})
    assert status == 200 and (gift["state"], gift["cost"], gift["sender"]) == ("pending", 2 * UNITS, "alice")
    offer = await bob.next_offer(5)
    assert (offer.gift_id, offer.sender, offer.qty) == ("g-1", "alice", 2)
    # A retry (the backend's call timed out, say) answers the same gift and holds nothing more.
    again = await api("POST", "/admin/gifts", {"gift_id": "g-1", "sender": "alice", "recipient": "bob", "qty": 2})
    assert again == (200, gift)
    user = await admin.get_user("alice")
    assert (user["balances"]["available"]["note"], user["balances"]["held"]["note"]) == (3 * UNITS, 2 * UNITS)
    conflict = await api("POST", "/admin/gifts", {"gift_id": "g-1", "sender": "alice", "recipient": "bob",
                                                  "qty": 1})
    assert conflict[0] == 409 and conflict[1]["error"] == "IDEMPOTENCY_CONFLICT"
    assert (await bob.accept("g-1")).state == "accepted"
    assert (await bob.balance()).available["note"] == 7 * UNITS


async def test_a_refused_send_for_a_user_changes_nothing_and_says_which_rule(api: Call, admin: AdminClient,
                                                                            connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob", cards=5)
    await admin.create_user("carol", verified=True)
    body = {"gift_id": "g-off", "sender": "alice", "recipient": "bob"}
    status, error = await api("POST", "/admin/gifts", body)  # bob is not online
    assert (status, error["error"]) == (422, "RECIPIENT_OFFLINE")
    await connect("bob")
    # The refusal is remembered: the same id answers it again, as for a client.
    assert (await api("POST", "/admin/gifts", body))[1]["error"] == "RECIPIENT_OFFLINE"
    refused = {
        (422, "NOT_MUTUAL_3D"): {"gift_id": "g-2", "sender": "alice", "recipient": "carol"},
        (404, "UNKNOWN_USER"): {"gift_id": "g-3", "sender": "alice", "recipient": "nobody"},
        (422, "INSUFFICIENT_BALANCE"): {"gift_id": "g-4", "sender": "alice", "recipient": "bob", "qty": 6},
        (400, "SELF_GIFT"): {"gift_id": "g-5", "sender": "alice", "recipient": "alice"},
        (400, "BAD_REQUEST"): {"gift_id": "g 6", "sender": "alice", "recipient": "bob"},
    }
    for expected, payload in refused.items():
        status, error = await api("POST", "/admin/gifts", payload)
        assert (status, error["error"]) == expected, payload
    for payload in ({"gift_id": "g-7", "sender": "alice"}, {"gift_id": "g-7", "sender": "alice", "recipient": "bob",
                                                            "qty": "1"},
                    {"gift_id": "g-7", "sender": "alice", "recipient": "bob", "amount": 1}):
        status, error = await api("POST", "/admin/gifts", payload)
        assert status == 400 and error["error"] == "BAD_REQUEST" and "Traceback" not in error["message"]
    user = await admin.get_user("alice")
    assert user["balances"]["available"]["note"] == 5 * UNITS and not user["balances"]["held"].get("note")


async def test_a_user_is_disconnected_on_every_node(node_factory: NodeFactory, admin: AdminClient) -> None:
    first, second = await node_factory(), await node_factory()
    await admin.create_user("alice", verified=True)
    # An SDK client on each node, and a raw connection to see the frame and the code.
    phone = NotecardClient(first.url, token_for("alice"), backoff_base_s=0.01)
    tablet = NotecardClient(second.url, token_for("alice"), backoff_base_s=0.01)
    await phone.connect()
    await tablet.connect()
    bystander = NotecardClient(first.url, token_for("bob"))
    await bystander.connect()
    try:
        async with connect(second.url, subprotocols=[Encoding.JSON.subprotocol]) as ws:  # type: ignore[list-item]
            await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": token_for("alice")}).decode())
            assert orjson.loads(await ws.recv())["t"] == "welcome"
            status, answer = await _post(first, "/admin/users/alice/disconnect")
            assert (status, answer) == (200, {"ok": True, "nodes": 2})
            frames = await _frames_until_closed(ws)
            assert ws.close_code == CloseCode.SESSION_ENDED
            assert [(f["t"], f["code"]) for f in frames if f["t"] == "error"] == [("error", "SESSION_ENDED")]
        for client in (phone, tablet):  # the SDK does not reconnect by itself after 3506
            await _until(lambda c=client: c._failure is not None)  # type: ignore[misc]
            assert client._failure is not None and client._failure.close_code == CloseCode.SESSION_ENDED
            assert client.connections == 1
        assert (await bystander.ping()) is not None  # another user is untouched
        # Nobody connected: nothing to do, and a user without an account is no error.
        assert await _post(first, "/admin/users/nobody/disconnect") == (200, {"ok": True, "nodes": 0})
        assert (await _post(first, "/admin/users/bad%20id/disconnect"))[0] == 400
    finally:
        for client in (phone, tablet, bystander):
            await client.close()


async def test_bulk_upsert_of_users_reports_each_item(api: Call, admin: AdminClient) -> None:
    await admin.create_user("old", verified=False)
    status, answer = await api("POST", "/admin/bulk/users", {"users": [
        {"user_id": "new-1", "verified": True, "app": "toutiao"},
        {"user_id": "old", "verified": True, "vip": True},
        {"user_id": "bad id"},
        {"user_id": "new-2", "verifed": True},
        "not an object",
        {"user_id": "new-3", "created_at_ms": 10**15},
    ]})
    assert status == 200
    results = answer["results"]
    assert [r["ok"] for r in results] == [True, True, False, False, False, False]
    assert (results[0]["created"], results[1]["created"]) == (True, False)
    assert [r.get("error") for r in results[2:]] == ["BAD_REQUEST"] * 4
    assert "verifed" in results[3]["message"]
    assert (answer["succeeded"], answer["failed"]) == (2, 4)
    new = await admin.get_user("new-1")
    assert (new["verified"], new["app"]) == (True, "toutiao")
    old = await admin.get_user("old")
    assert (old["verified"], old["vip"]) == (True, True)
    with pytest.raises(Exception, match="404"):
        await admin.get_user("new-2")  # a failed item changed nothing
    # Again: the same outcome for the good items (upsert), nothing created twice.
    again = await api("POST", "/admin/bulk/users", {"users": [{"user_id": "new-1", "verified": True}]})
    assert again[1]["results"] == [{"user_id": "new-1", "ok": True, "created": False}]


async def test_bulk_follows_upsert_and_report_each_item(api: Call, admin: AdminClient, connect: ClientFactory
                                                       ) -> None:
    for user in ("alice", "bob"):
        await admin.create_user(user, verified=True)
    await admin.mint("alice", 1)
    old = 1_000_000  # long ago: past the 3-day rule
    status, answer = await api("POST", "/admin/bulk/follows", {"follows": [
        {"follower": "alice", "followee": "bob", "since_ms": old, "mutual": True},
        {"follower": "alice", "followee": "ghost"},
        {"follower": "alice"},
    ]})
    assert status == 200
    assert [(r["ok"], r.get("error")) for r in answer["results"]] == [(True, None), (False, "UNKNOWN_USER"),
                                                                      (False, "BAD_REQUEST")]
    # The follows are real: the 3-day mutual rule lets alice give to bob.
    await connect("bob")
    alice = await connect("alice")
    assert (await alice.send_gift("bob")).state == "pending"


async def test_a_bulk_call_is_bounded(api: Call, node: GatewayNode) -> None:
    too_many = [{"user_id": f"u{i}"} for i in range(MAX_BATCH + 1)]
    status, error = await api("POST", "/admin/bulk/users", {"users": too_many})
    assert (status, error["error"]) == (400, "TOO_MANY_ITEMS")
    assert (await api("GET", "/admin/users/u0"))[0] == 404  # nothing was done
    for body in ({"users": []}, {"users": {"user_id": "x"}}, {"people": []}):
        assert (await api("POST", "/admin/bulk/users", body))[0] == 400
    huge = {"users": [{"user_id": "u", "app": "a" * 300_000}]}
    status, error = await api("POST", "/admin/bulk/users", huge)
    assert (status, error["error"]) == (413, "TOO_LARGE")
    full = [{"user_id": f"user-{i:04d}", "verified": True} for i in range(MAX_BATCH)]
    status, answer = await api("POST", "/admin/bulk/users", {"users": full})
    assert (status, answer["succeeded"]) == (200, MAX_BATCH)


async def _post(node: GatewayNode, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session, \
            session.post(node.admin_url + path) as resp:
        return resp.status, orjson.loads(await resp.read())


async def _frames_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = []
    try:
        while True:
            frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
    except ConnectionClosed:
        return frames


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
