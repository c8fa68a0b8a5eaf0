"""GDPR access (Art. 15) and erasure (Art. 17) through the admin API of a real node, with
real SDK clients making the gifts, on one Redis and on a 3-shard cluster. After an erasure
the conservation check and the ledger's reconciliation pass (checked here, and by the node
fixture's teardown)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from clearing import GiftRules, check_invariant
from clearing.keys import DEFAULT_KEYS
from clearing.ledger import reconcile
from gateway.node import GatewayNode
from notecard.admin_client import AdminApiError, AdminClient
from notecard_sdk import NotecardClient
from notecard_sdk.errors import GiftRefused, NotecardError
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ADMIN_TOKEN, NodeFactory, befriend_all, eventually, token_for

pytestmark = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)

RULES = GiftRules(daily_send_limit=100, daily_receive_limit=100)
UNITS = RULES.units_per_card
K = DEFAULT_KEYS


@pytest.fixture
async def gdpr_node(node_factory: NodeFactory) -> GatewayNode:
    return await node_factory(RULES)


@pytest.fixture
async def clients(gdpr_node: GatewayNode) -> Any:
    made: list[NotecardClient] = []

    async def make(user: str) -> NotecardClient:
        client = NotecardClient(gdpr_node.url, token_for(user), reconnect=False)
        await client.connect()
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def _world(node: GatewayNode, clients: Any) -> tuple[NotecardClient, NotecardClient, dict[str, str]]:
    """anna and bob (eu, consenting), cara who follows and blocks anna; an accepted gift each
    way, then one pending each way."""
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await admin.put_region("eu", {"consent_required": True, "consent_version": "v1"})
        await befriend_all(admin, "anna", "bob", region="eu")
        await befriend_all(admin, "cara", cards=0)
        await admin.follow("cara", "anna")
        await admin.block("cara", "anna")
        await admin.follow("anna", "cara")

    async def applied() -> bool:
        return (await node.clearing.settings.get()).region("eu").consent_required

    await eventually(applied, "the eu rule on the node")
    anna, bob = await clients("anna"), await clients("bob")
    for c in (anna, bob):
        await c.give_consent("v1", "signup")
    gifts = {}
    gifts["anna_accepted"] = (await anna.send_gift("bob")).gift_id
    await bob.accept(gifts["anna_accepted"])
    gifts["bob_accepted"] = (await bob.send_gift("anna")).gift_id
    await anna.accept(gifts["bob_accepted"])
    gifts["anna_pending"] = (await anna.send_gift("bob", qty=2)).gift_id
    gifts["bob_pending"] = (await bob.send_gift("anna", qty=3)).gift_id
    return anna, bob, gifts


async def test_the_export_holds_everything_about_the_user(gdpr_node: GatewayNode, clients: Any) -> None:
    _, _, gifts = await _world(gdpr_node, clients)
    async with AdminClient(gdpr_node.admin_url, ADMIN_TOKEN) as admin:
        export = await admin.call("GET", "/admin/users/anna/export")
        with pytest.raises(AdminApiError) as missing:
            await admin.call("GET", "/admin/users/nobody/export")
    assert (missing.value.status, missing.value.code) == (404, "UNKNOWN_USER")
    assert export["user"] == "anna" and export["region"] == "eu"
    assert export["account"]["region"] == "eu" and export["account"]["verified"] == "1"
    assert export["consent"]["version"] == "v1" and export["consent"]["channel"] == "signup"
    assert [orjson.loads(h)["action"] for h in export["consent"]["history"]] == ["give"]
    assert export["balances"] == {"available": {"note": 10 * UNITS - UNITS - 2 * UNITS + UNITS},
                                  "held": {"note": 2 * UNITS}}
    assert set(export["gifts_sent"]) == {gifts["anna_accepted"], gifts["anna_pending"]}
    assert set(export["gifts_received"]) == {gifts["bob_accepted"], gifts["bob_pending"]}
    assert export["gifts_received"][gifts["bob_pending"]]["state"] == "pending"
    assert set(export["follows"]) == {"bob", "cara"}
    assert export["followed_by"] == ["bob", "cara"] and export["blocked_by"] == ["cara"]
    assert export["blocks"] == []
    assert "anna" in str(export["presence"]) or export["presence"]  # connected now
    ledger_gifts = {r["gift_id"] for r in export["ledger"] if r["record"] == "entry"}
    assert {gifts["anna_accepted"], gifts["bob_accepted"], gifts["anna_pending"]} <= ledger_gifts
    assert any(r["kind"] == "mint" and r["credit"] == "avail:anna" for r in export["ledger"] if r["record"] == "entry")
    assert "ev" in export["other"]  # the user's event stream
    assert export["gaps"]


async def test_an_erasure_settles_pending_gifts_removes_personal_data_and_keeps_the_books_balanced(
        gdpr_node: GatewayNode, clients: Any, redis: aioredis.Redis) -> None:
    anna, bob, gifts = await _world(gdpr_node, clients)
    async with AdminClient(gdpr_node.admin_url, ADMIN_TOKEN) as admin:
        erased = await admin.call("POST", "/admin/users/anna/erase")
        # both pending gifts were declined first: bob's cards back to bob, anna's to anna
        assert {s["gift_id"] for s in erased["settled"]} == {gifts["anna_pending"], gifts["bob_pending"]}
        assert erased["consumed"] == {"note": 10 * UNITS}  # what anna held at the end: her cards back, consumed
        pseudonym = erased["pseudonym"]
        assert pseudonym.startswith("erased-") and "anna" not in pseudonym

        assert (await check_invariant(redis, RULES)).ok
        assert (await reconcile(redis)).ok, (await reconcile(redis)).drift
        bob_balance = await bob.balance()
        assert bob_balance.available == {"note": 10 * UNITS} and bob_balance.held == {"note": 0}

        # the user's own slot: a tombstone, zeroed balances and the points total, nothing else
        left = [k.decode().split("}:", 1)[1] async for k in redis.scan_iter(match=K.user_pattern("anna"))]
        assert set(left) <= {"user", "bal", "held", "points", "pointlog"}
        tomb = await redis.hgetall(K.user("anna"))
        assert tomb[b"erased"] == b"1" and tomb[b"banned"] == b"1" and b"region" not in tomb
        assert await redis.hget(K.balance("anna"), "note") == b"0"
        # other users' references: follows and blocks gone, retained halves pseudonymised
        assert await redis.hget(K.follows("cara"), "anna") is None
        assert not await redis.sismember(K.blocks("cara"), "anna")
        assert await redis.hget(K.offer("bob", gifts["anna_accepted"]), "sender") == pseudonym.encode()
        assert await redis.hget(K.gift("bob", gifts["bob_accepted"]), "recipient") == pseudonym.encode()

        # the connection was closed, and the account cannot come back
        async def closed() -> bool:
            try:
                await anna.ping()
            except NotecardError:
                return True
            return False

        await eventually(closed, "anna's connection closed")
        async with ws_connect(gdpr_node.url, subprotocols=[Subprotocol("notecard.v1.json")]) as ws:
            await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": token_for("anna")}).decode())
            refusal = orjson.loads(await ws.recv())
        assert (refusal["t"], refusal["code"]) == ("error", "ACCOUNT_ERASED")
        with pytest.raises(GiftRefused) as refused:
            await bob.send_gift("anna")
        assert refused.value.code == "RECIPIENT_BANNED"

        # repeating it is harmless; the export shows the tombstone only
        again = await admin.call("POST", "/admin/users/anna/erase")
        assert (again["already_erased"], again["pseudonym"]) == (True, pseudonym)
        shown = await admin.get_user("anna")
        assert shown["banned"] is True and shown["balances"]["available"] == {"note": 0}
        export = await admin.call("GET", "/admin/users/anna/export")
        assert export["account"]["pseudonym"] == pseudonym and export["gifts_sent"] == {}
        assert export["followed_by"] == [] and export["consent"]["history"] == []
    assert (await check_invariant(redis, RULES)).ok
