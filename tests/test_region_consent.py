"""GDPR data-processing consent (docs/regions.md): in a region whose rules ask for it, no gift
is sent, received or accepted by a user without a consent to the region's current text on
record. Real SDK clients against a real node, on one Redis and on a 3-shard cluster, each
on the one-script path and on the cross-shard saga (admit at the recipient, reserve at the
sender); the node fixtures check the conservation invariant after each test."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import pytest

from clearing import GiftRules
from gateway.node import GatewayNode
from notecard.admin_client import AdminClient
from notecard_sdk import NotecardClient
from notecard_sdk.errors import GiftRefused
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ADMIN_TOKEN, NodeFactory, befriend_all, eventually, token_for

pytestmark = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)

RULES = GiftRules(daily_send_limit=100, daily_receive_limit=100)
EU = {"name": "Europe", "consent_required": True, "consent_version": "privacy-v2"}
UNITS = RULES.units_per_card


async def _refused(call: Awaitable[Any]) -> str:
    with pytest.raises(GiftRefused) as info:
        await call
    return info.value.code


@pytest.fixture(params=["fast", "saga"])
async def eu_node(request: pytest.FixtureRequest, node_factory: NodeFactory) -> GatewayNode:
    """A node whose ``eu`` region asks for consent to ``privacy-v2``; gifts take the one-script
    path or, forced, the cross-shard saga."""
    node = await node_factory(RULES)
    node.clearing.force_saga = request.param == "saga"
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await admin.put_region("eu", EU)

    async def applied() -> bool:
        return (await node.clearing.settings.get()).region("eu").consent_required

    await eventually(applied, "the eu rule on the node")
    return node


class Clients:
    def __init__(self, node: GatewayNode) -> None:
        self.node = node
        self.open: list[NotecardClient] = []

    async def __call__(self, user: str) -> NotecardClient:
        client = NotecardClient(self.node.url, token_for(user))
        await client.connect()
        self.open.append(client)
        return client

    async def close(self) -> None:
        for client in self.open:
            await client.close()


@pytest.fixture
async def clients(eu_node: GatewayNode) -> Any:
    made = Clients(eu_node)
    yield made
    await made.close()


async def _available(client: NotecardClient) -> int:
    return (await client.balance()).available["note"]


async def test_a_sender_without_a_consent_to_the_current_text_is_refused_and_moves_nothing(
        eu_node: GatewayNode, clients: Clients) -> None:
    async with AdminClient(eu_node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "anna", "bob", region="eu")
    anna, bob = await clients("anna"), await clients("bob")
    assert anna.welcome is not None and anna.welcome.consent_needed == "privacy-v2"
    await bob.give_consent("privacy-v2", "signup")

    # no consent on record
    assert await _refused(anna.send_gift("bob")) == "CONSENT_REQUIRED"
    # a consent to an older text
    older = await anna.give_consent("privacy-v1", "signup")
    assert (older.changed, older.version, older.channel) == (True, "privacy-v1", "signup")
    assert await _refused(anna.send_gift("bob")) == "CONSENT_REQUIRED"
    assert await _available(anna) == 10 * UNITS and (await anna.balance()).held == {"note": 0}
    # the current text: gifts move
    given = await anna.give_consent("privacy-v2", "settings")
    assert (given.changed, given.version) == (True, "privacy-v2") and given.at_ms
    assert (await anna.give_consent("privacy-v2")).changed is False  # a repeat changes nothing
    gift = await anna.send_gift("bob")
    assert (await bob.accept(gift.gift_id)).state == "accepted"
    # withdrawn: refused again
    withdrawn = await anna.withdraw_consent("settings")
    assert (withdrawn.changed, withdrawn.version) == (True, None)
    assert (await anna.withdraw_consent()).changed is False
    assert await _refused(anna.send_gift("bob")) == "CONSENT_REQUIRED"
    assert await _available(anna) == 9 * UNITS

    history = await eu_node.requests.consents.history("anna")
    assert [(h["action"], h["version"], h["channel"]) for h in history] == [
        ("give", "privacy-v1", "signup"), ("give", "privacy-v2", "settings"), ("withdraw", "privacy-v2", "settings")]
    assert all(isinstance(h["at_ms"], int) for h in history)


async def test_a_recipient_without_consent_is_refused_with_its_own_code_and_the_sender_first(
        eu_node: GatewayNode, clients: Clients) -> None:
    async with AdminClient(eu_node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "anna", "bob", "cara", region="eu")
    anna, bob, cara = await clients("anna"), await clients("bob"), await clients("cara")
    # both lack it: the sender's own code comes first (the documented order)
    assert await _refused(anna.send_gift("bob")) == "CONSENT_REQUIRED"
    await anna.give_consent("privacy-v2")
    assert await _refused(anna.send_gift("bob")) == "RECIPIENT_NO_CONSENT"
    await bob.give_consent("privacy-v1")
    assert await _refused(anna.send_gift("bob")) == "RECIPIENT_NO_CONSENT"
    await bob.give_consent("privacy-v2")
    gift = await anna.send_gift("bob")
    assert (await bob.accept(gift.gift_id)).state == "accepted"
    # a recipient in the region who withdrew: refused, nothing held
    await cara.give_consent("privacy-v2")
    await cara.withdraw_consent()
    assert await _refused(anna.send_gift("cara")) == "RECIPIENT_NO_CONSENT"
    assert (await anna.balance()).held == {"note": 0}
    assert await _available(cara) == 10 * UNITS
    # the operator publishes a new text: every consent to the old one stops counting
    async with AdminClient(eu_node.admin_url, ADMIN_TOKEN) as admin:
        await admin.put_region("eu", {**EU, "consent_version": "privacy-v3"})

    async def bumped() -> bool:
        return (await eu_node.clearing.settings.get()).region("eu").consent_version == "privacy-v3"

    await eventually(bumped, "the new consent text on the node")
    assert await _refused(anna.send_gift("bob")) == "CONSENT_REQUIRED"
    await anna.give_consent("privacy-v3")
    assert await _refused(anna.send_gift("bob")) == "RECIPIENT_NO_CONSENT"


async def test_a_pending_gift_after_a_withdrawal_can_be_declined_or_expire_but_not_accepted(
        eu_node: GatewayNode, clients: Clients) -> None:
    async with AdminClient(eu_node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "anna", "bob", region="eu")
    anna, bob = await clients("anna"), await clients("bob")
    for c in (anna, bob):
        await c.give_consent("privacy-v2")
    first = await anna.send_gift("bob")
    second = await anna.send_gift("bob")
    await bob.withdraw_consent()
    assert await _refused(bob.accept(first.gift_id)) == "CONSENT_REQUIRED"
    assert (await anna.balance()).held == {"note": 2 * UNITS}  # still pending, still held
    assert (await bob.decline(first.gift_id)).state == "declined"
    # consent given again: the recipient's own act is allowed again
    await bob.give_consent("privacy-v2")
    # the sender's later withdrawal does not undo a gift already sent (GDPR Art. 7(3))
    await anna.withdraw_consent()
    assert (await bob.accept(second.gift_id)).state == "accepted"
    assert await _available(anna) == 9 * UNITS and (await anna.balance()).held == {"note": 0}
    assert await _available(bob) == 11 * UNITS


async def test_a_region_without_the_rule_and_the_default_region_are_unaffected(
        eu_node: GatewayNode, clients: Clients) -> None:
    async with AdminClient(eu_node.admin_url, ADMIN_TOKEN) as admin:
        await admin.put_region("us", {"name": "Americas"})
        await befriend_all(admin, "uma", "ugo", region="us")
        await befriend_all(admin, "gil", "gus")
        await befriend_all(admin, "eva", region="eu", cards=0)
        for other in ("uma", "gil"):
            await admin.follow("eva", other, int(time.time() * 1000) - 5 * 86_400_000)
            await admin.follow(other, "eva", int(time.time() * 1000) - 5 * 86_400_000)
    uma, ugo, gil, gus, eva = [await clients(u) for u in ("uma", "ugo", "gil", "gus", "eva")]
    assert uma.welcome is not None and uma.welcome.consent_needed is None
    gift = await uma.send_gift("ugo")
    assert (await ugo.accept(gift.gift_id)).state == "accepted"
    gift = await gil.send_gift("gus")
    assert (await gus.accept(gift.gift_id)).state == "accepted"
    # across regions, the rule follows each party: the eu recipient needs consent
    assert await _refused(uma.send_gift("eva")) == "RECIPIENT_NO_CONSENT"
    await eva.give_consent("privacy-v2")
    gift = await gil.send_gift("eva")
    assert (await eva.accept(gift.gift_id)).state == "accepted"
