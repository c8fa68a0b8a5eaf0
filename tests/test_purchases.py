"""Purchases per region (clearing/purchases.py, gateway/payments_http.py, docs/regions.md
"Purchases"): a payment provider's signed notification mints the bought cards, a refund
claws back what is unspent, each once per payment id; a bad signature, a stale timestamp,
an unknown provider or one the buyer's region does not allow change nothing. Real nodes on
the test Redis (one instance and a cluster); the node fixtures check the conservation
invariant after each test, and the ledger's replay must give back every account."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from clearing.keys import DEFAULT_KEYS
from clearing.ledger import LedgerEntry, read_all, reconcile
from gateway import GatewayNode
from gateway.config import ConfigError, GatewaySettings, declarations
from gateway.payments_http import SIGNATURE_HEADER, TIMESTAMP_HEADER, parse_secrets, sign
from notecard.admin_client import AdminClient
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ADMIN_TOKEN, ClientFactory, NodeFactory, befriend_all

BOTH = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)
SECRETS = ("ewallet:" + "e" * 40, "card:" + "c" * 40, "paypal:" + "p" * 40, "crypto:" + "x" * 40)
KEYS = parse_secrets(SECRETS)
UNITS = 10


@pytest.fixture
async def shop(node_factory: NodeFactory) -> GatewayNode:
    return await node_factory(payment_secrets=SECRETS, payment_window_s=300)


async def notify(node: GatewayNode, provider: str, body: dict[str, Any], *, secret: bytes | None = None,
                 at: float | None = None, signature: str | None = None) -> tuple[int, dict[str, Any]]:
    raw = orjson.dumps(body)
    stamp = str(int(time.time() if at is None else at))
    headers = {TIMESTAMP_HEADER: stamp, "Content-Type": "application/json",
               SIGNATURE_HEADER: signature or sign(secret or KEYS.get(provider, b"-"), stamp, raw)}
    async with aiohttp.ClientSession() as http, \
            http.post(f"{node.admin_url}/payments/{provider}/notify", data=raw, headers=headers) as response:
        return response.status, orjson.loads(await response.read())


def bought(payment_id: str, user: str, cards: int, kind: str = "note") -> dict[str, Any]:
    return {"type": "purchase", "payment_id": payment_id, "user": user, "kind": kind, "cards": cards}


def refunded(payment_id: str, user: str) -> dict[str, Any]:
    return {"type": "refund", "payment_id": payment_id, "user": user}


async def available(admin: AdminClient, user: str) -> int:
    return int((await admin.get_user(user))["balances"]["available"].get("note", 0))


@BOTH
async def test_a_signed_purchase_mints_once_and_its_retry_is_answered_the_same(
        shop: GatewayNode, redis: aioredis.Redis) -> None:
    async with AdminClient(shop.admin_url, ADMIN_TOKEN) as admin:
        await admin.create_user("ana", region="sea")
        status, paid = await notify(shop, "ewallet", bought("pay-1", "ana", 5))
        assert status == 200, paid
        assert (paid["state"], paid["units"], paid["replayed"]) == ("paid", 5 * UNITS, False)
        assert await available(admin, "ana") == 5 * UNITS
        # the provider retries (fresh timestamp and signature): the same answer, nothing minted
        status, again = await notify(shop, "ewallet", bought("pay-1", "ana", 5), at=time.time() + 2)
        assert (status, again["replayed"], again["units"]) == (200, True, 5 * UNITS)
        assert await available(admin, "ana") == 5 * UNITS
        # the same payment id with another content is a conflict
        status, clash = await notify(shop, "ewallet", bought("pay-1", "ana", 7))
        assert (status, clash["error"]) == (409, "IDEMPOTENCY_CONFLICT")
        assert await available(admin, "ana") == 5 * UNITS
    records, _ = await read_all(redis, DEFAULT_KEYS)
    entries = [r for r in records if isinstance(r, LedgerEntry) and r.entry_kind == "purchase"]
    assert [(e.credit, e.units, e.cause) for e in entries] == [("avail:ana", 5 * UNITS, "pay:ewallet:pay-1")]
    assert (await reconcile(redis, DEFAULT_KEYS)).ok


@BOTH
async def test_a_bad_signature_a_stale_timestamp_or_an_unknown_provider_change_nothing(shop: GatewayNode) -> None:
    async with AdminClient(shop.admin_url, ADMIN_TOKEN) as admin:
        await admin.create_user("ana")
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            ("ewallet", {"secret": b"not the provider's key" * 2}, 401, "BAD_SIGNATURE"),
            ("ewallet", {"secret": KEYS["card"]}, 401, "BAD_SIGNATURE"),  # another provider's key
            ("ewallet", {"signature": "sha256=" + "0" * 64}, 401, "BAD_SIGNATURE"),
            ("ewallet", {"at": -330.0}, 401, "STALE_NOTIFICATION"),  # a replay from the past
            ("ewallet", {"at": 330.0}, 401, "STALE_NOTIFICATION"),
            # both forged and stale: the signature is checked first (as for shops' orders)
            ("ewallet", {"secret": KEYS["card"], "at": -330.0}, 401, "BAD_SIGNATURE"),
            ("giftcard", {}, 404, "UNKNOWN_PROVIDER"),
        ]
        for provider, given, status, code in cases:
            # "at": an offset from now, taken at the call (a slow machine moves on between cases)
            how = {**given, "at": time.time() + given["at"]} if "at" in given else given
            got = await notify(shop, provider, bought("pay-x", "ana", 5), **how)
            assert got == (status, got[1]) and got[1]["error"] == code, (provider, how, got)
        # just inside the window is fine
        status, _ = await notify(shop, "ewallet", bought("pay-y", "ana", 1), at=time.time() - 270)
        assert status == 200
        assert await available(admin, "ana") == 1 * UNITS


@pytest.mark.parametrize("body", [
    {"type": "purchase", "payment_id": "p", "user": "ana", "kind": "note"},  # no cards
    {"type": "purchase", "payment_id": "p", "user": "ana", "kind": "note", "cards": 0},
    {"type": "purchase", "payment_id": "p", "user": "ana", "kind": "note", "cards": "5"},
    {"type": "purchase", "payment_id": "p", "user": "ana", "kind": "diamond", "cards": 1},
    {"type": "purchase", "payment_id": "a b", "user": "ana", "kind": "note", "cards": 1},
    {"type": "gift", "payment_id": "p", "user": "ana"},
    {"type": "refund", "payment_id": "p", "user": "ana", "cards": 1},
])
async def test_a_malformed_notification_is_refused_and_mints_nothing(shop: GatewayNode, body: dict[str, Any]) -> None:
    async with AdminClient(shop.admin_url, ADMIN_TOKEN) as admin:
        await admin.create_user("ana")
        status, refused = await notify(shop, "card", body)
        assert status == 400 and refused["error"] in ("BAD_REQUEST", "BAD_QUANTITY", "UNKNOWN_KIND"), refused
        assert await available(admin, "ana") == 0


@BOTH
async def test_a_region_buys_only_through_the_providers_it_allows(shop: GatewayNode) -> None:
    async with AdminClient(shop.admin_url, ADMIN_TOKEN) as admin:
        await admin.put_region("sea", {"payment_providers": ["ewallet"]})
        await admin.put_region("eu", {"payment_providers": ["paypal", "crypto"]})
        for user, region in (("ana", "sea"), ("eva", "eu"), ("gus", "global")):
            await admin.create_user(user, region=region)
        assert (await notify(shop, "card", bought("c-1", "ana", 1)))[1]["error"] == "PROVIDER_NOT_ALLOWED"
        assert (await notify(shop, "card", bought("c-1", "ana", 1)))[0] == 403
        assert (await notify(shop, "ewallet", bought("e-1", "ana", 1)))[0] == 200
        assert (await notify(shop, "ewallet", bought("e-2", "eva", 1)))[0] == 403
        assert (await notify(shop, "crypto", bought("x-1", "eva", 1)))[0] == 200
        assert (await notify(shop, "card", bought("c-2", "gus", 1)))[0] == 200  # no rule: every provider
        assert [await available(admin, u) for u in ("ana", "eva", "gus")] == [UNITS] * 3
        status, missing = await notify(shop, "card", bought("c-3", "nobody", 1))
        assert (status, missing["error"]) == (404, "UNKNOWN_USER")


@BOTH
async def test_a_refund_claws_back_what_is_unspent_and_flags_what_was_spent(
        shop: GatewayNode, connect: ClientFactory, redis: aioredis.Redis) -> None:
    async with AdminClient(shop.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "ana", "bob", cards=0)
        await admin.set_scenes(newcomer_free_gifts=0)  # ana pays her own gift
        assert (await notify(shop, "paypal", bought("pp-1", "ana", 5)))[0] == 200
        ana, bob = await connect("ana"), await connect("bob")
        sent = await ana.send_gift("bob", 3)
        await bob.accept(sent.gift_id)
        assert await available(admin, "ana") == 2 * UNITS
        status, back = await notify(shop, "paypal", refunded("pp-1", "ana"))
        assert status == 200, back
        assert (back["state"], back["clawed"], back["short"], back["replayed"]) == ("refunded", 2 * UNITS,
                                                                                    3 * UNITS, False)
        assert await available(admin, "ana") == 0  # never below zero
        assert await available(admin, "bob") == 3 * UNITS  # what was given stays given
        risk = await redis.hgetall(DEFAULT_KEYS.risk("ana"))
        assert int(risk[b"refund_short"]) == 3 * UNITS
        # the provider's retry changes nothing
        status, again = await notify(shop, "paypal", refunded("pp-1", "ana"))
        assert (status, again["replayed"], again["clawed"]) == (200, True, 2 * UNITS)
        assert await available(admin, "ana") == 0
        # a refund of nothing this provider sold the user
        for provider, payment_id, user in (("paypal", "pp-2", "ana"), ("card", "pp-1", "ana"),
                                           ("paypal", "pp-1", "bob")):
            status, unknown = await notify(shop, provider, refunded(payment_id, user))
            assert (status, unknown["error"]) == (404, "UNKNOWN_PAYMENT")
    records, _ = await read_all(redis, DEFAULT_KEYS)
    refunds = [(e.debit, e.units) for e in records if isinstance(e, LedgerEntry) and e.entry_kind == "refund"]
    assert refunds == [("avail:ana", 2 * UNITS)]
    assert (await reconcile(redis, DEFAULT_KEYS)).ok


def test_payment_secrets_are_provider_key_pairs_and_never_printed() -> None:
    assert next(d for d in declarations() if d.env == "PAYMENT_SECRETS").secret  # notecard config hides it
    settings = GatewaySettings(payment_secrets=SECRETS)
    assert parse_secrets(settings.payment_secrets)["card"] == b"c" * 40
    for bad in (("card:short",), ("Card:" + "c" * 40,), ("card" + "c" * 40,)):
        with pytest.raises(ConfigError):
            GatewaySettings(payment_secrets=bad)
