"""Purchase-triggered gifts on a real node and a real Redis (one server and a 3-shard cluster):
the shop window checked where it is used, the rule's minimum at its boundary, the signature
and the replay window, an order notified twice, a refund before and after acceptance, and a
refund that comes before its paid notification. The node fixtures check conservation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from clearing.ledger import OrderNote, read_all
from clearing.shops import order_gift_id
from gateway import GatewayNode
from gateway.signed_requests import hmac_signature
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ADMIN_TOKEN, ClientFactory, NodeFactory

both = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)
OPS = {"operator": "ops"}
REPLAY_S = 60
Call = Callable[..., Awaitable[tuple[int, Any]]]


def test_the_signature_covers_the_timestamp_and_every_byte_of_the_body() -> None:
    body = b'{"order_id":"o1","event":"paid","buyer":"bob","spend":5000}'
    good = hmac_signature(b"s3cret", "1700000000000", body)
    assert good.startswith("sha256=") and len(good) == len("sha256=") + 64
    assert hmac_signature(b"s3cret", "1700000000001", body) != good
    assert hmac_signature(b"s3cret", "1700000000000", body.replace(b"5000", b"5001")) != good
    assert hmac_signature(b"other", "1700000000000", body) != good


class Shop:
    def __init__(self, session: aiohttp.ClientSession, node: GatewayNode) -> None:
        self.session = session
        self.node = node
        self.secret = ""

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                   ) -> tuple[int, Any]:
        data = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.session.request(method, self.node.admin_url + path, data=data, headers=headers) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def order(self, body: dict[str, Any], *, at_ms: int | None = None, secret: str | None = None
                    ) -> tuple[int, Any]:
        raw = orjson.dumps(body)
        stamp = at_ms if at_ms is not None else int(time.time() * 1000)
        signature = hmac_signature((secret or self.secret).encode(), str(stamp), raw)
        headers = {"X-Notecard-Timestamp": str(stamp), "X-Notecard-Signature": signature}
        return await self.call("POST", "/admin/shops/mall/orders", raw, headers)


@pytest.fixture
async def shop(node_factory: NodeFactory) -> AsyncIterator[Shop]:
    node = await node_factory(order_replay_s=REPLAY_S)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:
        s = Shop(session, node)
        for user in ("mall", "bob", "eve"):
            assert (await s.call("POST", "/admin/users", {"user_id": user}))[0] == 201
        assert (await s.call("PATCH", "/admin/business/mall", {"business": True, **OPS}))[0] == 200
        status, _ = await s.call("PUT", "/admin/kinds/mall_coupon", {
            "brand": "mall", "name": "Coupon", "artwork": "https://cdn.example/c.png", "budget_cards": 10, **OPS})
        assert status == 201
        yield s


async def balance(shop: Shop, user: str) -> tuple[int, int]:
    status, body = await shop.call("GET", f"/admin/users/{user}")
    assert status == 200
    return body["balances"]["available"].get("mall_coupon", 0), body["balances"]["held"].get("mall_coupon", 0)


@both
async def test_spend_x_get_a_card_at_the_minimum_idempotent_by_order(shop: Shop, connect: ClientFactory) -> None:
    rule = {"kind": "mall_coupon", "min_spend": 5000, "qty": 2, **OPS}
    status, body = await shop.call("PUT", "/admin/shops/mall/rule", rule)
    assert (status, body["error"]) == (403, "SHOP_WINDOW_DISABLED")
    await shop.call("PATCH", "/admin/business/mall", {"shop": True, **OPS})
    status, body = await shop.call("PUT", "/admin/shops/mall/rule", rule)
    assert status == 200 and len(body["secret"]) == 64
    shop.secret = body["secret"]
    assert "secret" not in (await shop.call("PUT", "/admin/shops/mall/rule", rule))[1]  # shown once

    status, body = await shop.order({"order_id": "a1", "event": "paid", "buyer": "bob", "spend": 4999})
    assert (status, body["result"], body["gift"]) == (200, "below_minimum", None)
    status, body = await shop.order({"order_id": "a2", "event": "paid", "buyer": "bob", "spend": 5000})
    assert (status, body["result"], body["gift"]["state"], body["gift"]["qty"]) == (200, "gifted", "pending", 2)
    assert body["gift"]["gift_id"] == order_gift_id("mall", "a2") and body["gift"]["campaign"] == "shop.mall"
    again = await shop.order({"order_id": "a2", "event": "paid", "buyer": "bob", "spend": 5000})
    assert again == (200, body)  # the same gift, nothing held twice
    assert await balance(shop, "mall") == (80, 20)
    bob = await connect("bob")  # offline when it was bought: offered on connecting
    offer = await bob.next_offer(30)
    assert (offer.gift_id, offer.sender, offer.kind, offer.campaign) == (
        order_gift_id("mall", "a2"), "mall", "mall_coupon", "shop.mall")

    # the window is checked where it is used: closed since the rule was set, no more gifts
    await shop.call("PATCH", "/admin/business/mall", {"shop": False, **OPS})
    status, body = await shop.order({"order_id": "a3", "event": "paid", "buyer": "bob", "spend": 9000})
    assert (status, body["error"]) == (403, "SHOP_WINDOW_DISABLED")


@both
async def test_an_unsigned_forged_or_stale_notification_changes_nothing(shop: Shop) -> None:
    await shop.call("PATCH", "/admin/business/mall", {"shop": True, **OPS})
    shop.secret = (await shop.call("PUT", "/admin/shops/mall/rule", {"kind": "mall_coupon", "min_spend": 1, **OPS}))[1][
        "secret"]
    paid = {"order_id": "b1", "event": "paid", "buyer": "bob", "spend": 10}
    status, body = await shop.call("POST", "/admin/shops/mall/orders", paid)
    assert (status, body["error"]) == (401, "BAD_SIGNATURE")
    assert (await shop.order(paid, secret="forged"))[1]["error"] == "BAD_SIGNATURE"
    now = int(time.time() * 1000)
    margin = 15_000  # the node's clock and ours differ by the test's own delays, never by this much
    status, body = await shop.order(paid, at_ms=now - REPLAY_S * 1000 - margin)
    assert (status, body["error"]) == (401, "STALE_ORDER")
    status, body = await shop.order(paid, at_ms=now + REPLAY_S * 1000 + margin)
    assert (status, body["error"]) == (401, "STALE_ORDER")
    # both forged and stale: the signature is checked first (as for payment notifications)
    status, body = await shop.order(paid, secret="forged", at_ms=now - REPLAY_S * 1000 - margin)
    assert (status, body["error"]) == (401, "BAD_SIGNATURE")
    assert await balance(shop, "mall") == (100, 0)
    status, body = await shop.order(paid, at_ms=now - REPLAY_S * 1000 + margin)  # old, but inside the window
    assert (status, body["result"]) == (200, "gifted")
    # a new secret: the old one stops working at once
    new = (await shop.call("POST", "/admin/shops/mall/secret", OPS))[1]["secret"]
    assert (await shop.order({**paid, "order_id": "b2"}))[1]["error"] == "BAD_SIGNATURE"
    shop.secret = new
    assert (await shop.order({**paid, "order_id": "b2"}))[1]["result"] == "gifted"


@both
async def test_a_refund_cancels_a_gift_not_yet_accepted_and_is_reported_after(shop: Shop,
                                                                             connect: ClientFactory) -> None:
    await shop.call("PATCH", "/admin/business/mall", {"shop": True, **OPS})
    shop.secret = (await shop.call("PUT", "/admin/shops/mall/rule", {"kind": "mall_coupon", "min_spend": 100,
                                                                      **OPS}))[1]["secret"]
    for order in ("c1", "c2"):
        await shop.order({"order_id": order, "event": "paid", "buyer": "bob", "spend": 100})
    assert await balance(shop, "mall") == (80, 20)
    status, body = await shop.order({"order_id": "c1", "event": "refunded"})
    assert (status, body["result"], body["gift"]["state"]) == (200, "cancelled", "declined")
    assert await balance(shop, "mall") == (90, 10)  # back to the shop
    assert (await shop.order({"order_id": "c1", "event": "refunded"}))[1]["result"] == "not_pending"

    bob = await connect("bob")
    await bob.accept(order_gift_id("mall", "c2"))
    status, body = await shop.order({"order_id": "c2", "event": "refunded"})
    assert (status, body["result"], body["gift"]["state"]) == (200, "after_acceptance", "accepted")
    assert await balance(shop, "bob") == (10, 0)  # not clawed back
    assert await balance(shop, "mall") == (90, 0)

    # a refund before its paid notification: the order gives nothing when it is paid after
    assert (await shop.order({"order_id": "c3", "event": "refunded"}))[1]["result"] == "refunded"
    late = await shop.order({"order_id": "c3", "event": "paid", "buyer": "eve", "spend": 500})
    assert late[1]["result"] == "refunded"
    assert await balance(shop, "eve") == (0, 0)


async def notes(shop: Shop) -> list[tuple[str, str, int, str]]:
    """The order notes in the ledger streams, as (order, buyer, spend, state), in order."""
    records, problems = await read_all(shop.node.clearing.redis, shop.node.clearing.keys)
    assert problems == []
    return [(r.order_id, r.buyer, r.spend, r.state) for r in records if isinstance(r, OrderNote) and r.shop == "mall"]


@both
async def test_each_paid_and_refunded_order_is_noted_once_in_the_ledger_stream(shop: Shop) -> None:
    await shop.call("PATCH", "/admin/business/mall", {"shop": True, **OPS})
    shop.secret = (await shop.call("PUT", "/admin/shops/mall/rule", {"kind": "mall_coupon", "min_spend": 100,
                                                                      **OPS}))[1]["secret"]
    for body in ({"order_id": "n1", "event": "paid", "buyer": "bob", "spend": 150},
                 {"order_id": "n1", "event": "paid", "buyer": "bob", "spend": 150},  # sent again
                 {"order_id": "n2", "event": "paid", "buyer": "eve", "spend": 99},  # below the minimum
                 {"order_id": "n1", "event": "refunded"}, {"order_id": "n1", "event": "refunded"},
                 {"order_id": "n3", "event": "refunded"},  # refunded before paid: no purchase
                 {"order_id": "n3", "event": "paid", "buyer": "eve", "spend": 500}):
        assert (await shop.order(body))[0] == 200
    assert await notes(shop) == [("n1", "bob", 150, "paid"), ("n2", "eve", 99, "paid"), ("n1", "bob", 150, "refunded")]

    # a record a hand edit broke: the gift is still cancelled, the note refused, nothing written
    await shop.order({"order_id": "n4", "event": "paid", "buyer": "bob", "spend": 200})
    redis, keys = shop.node.clearing.redis, shop.node.clearing.keys
    await redis.hset(keys.shop_order("mall", "n4"), "spend", "12x")
    before = await notes(shop)
    status, body = await shop.order({"order_id": "n4", "event": "refunded"})
    assert (status, body["error"]) == (500, "INTERNAL")  # as any CORRUPT refusal: no detail to the shop
    gift = await shop.node.clearing.get_gift(order_gift_id("mall", "n4"), "mall")
    assert gift is not None and gift.state.value == "declined"
    assert await notes(shop) == before
    assert await redis.hget(keys.shop_order("mall", "n4"), "noted") == b"paid"
