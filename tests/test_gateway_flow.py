"""End to end over real WebSocket connections: give, offer, accept / decline / expire."""

from __future__ import annotations

import asyncio

import pytest

from clearing import GiftRules
from notecard.admin_client import AdminClient
from notecard_sdk import GiftRefused, NotecardClient
from protocol import Encoding
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ADMIN_TOKEN, ClientFactory, NodeFactory, befriend_all, token_for

#: Every test here runs on one Redis and on a 3-shard cluster (users on different shards).
pytestmark = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)

UNITS = GiftRules().units_per_card


async def test_gift_accepted_moves_the_card_and_tells_both(admin: AdminClient, connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob", cards=10)
    alice, bob = await connect("alice"), await connect("bob")

    gift = await alice.send_gift("bob", qty=2)
    assert gift.state == "pending"
    assert gift.cost == 2 * UNITS
    held = await alice.balance()
    assert held.available["note"] == 8 * UNITS
    assert held.held["note"] == 2 * UNITS

    offer = await bob.next_offer(5)
    assert (offer.gift_id, offer.sender, offer.qty) == (gift.gift_id, "alice", 2)
    accepted = await bob.accept(offer.gift_id)
    assert accepted.state == "accepted"

    assert (await alice.next_outcome(5)).state == "accepted"
    assert (await bob.next_outcome(5)).gift_id == gift.gift_id
    after_alice, after_bob = await alice.balance(), await bob.balance()
    assert after_alice.available["note"] == 8 * UNITS
    assert after_alice.held.get("note", 0) == 0
    assert after_bob.available["note"] == 12 * UNITS


async def test_declined_gift_goes_back_to_the_sender(admin: AdminClient, connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob", cards=3)
    alice, bob = await connect("alice"), await connect("bob", encoding=Encoding.JSON)
    gift = await alice.send_gift("bob", qty=3)
    offer = await bob.next_offer(5)
    declined = await bob.decline(offer.gift_id)
    assert declined.state == "declined"
    assert (await alice.next_outcome(5)).state == "declined"
    assert (await alice.balance()).available["note"] == 3 * UNITS
    assert (await bob.balance()).available["note"] == 3 * UNITS
    # A declined gift gives both daily slots back: bob can still receive 3 gifts today.
    for _ in range(3):
        await alice.send_gift("bob", qty=1)
    with pytest.raises(GiftRefused) as limit:
        await alice.send_gift("bob", qty=1)
    assert limit.value.code == "LIMIT_DAILY_RECEIVE"
    assert gift.state == "pending"  # the reply to the send, as it was then


async def test_unanswered_gift_expires_refunds_and_tells_both(node_factory: NodeFactory) -> None:
    node = await node_factory(rules=GiftRules(confirm_window_ms=400), sweep_interval_s=0.05)
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "alice", "bob", cards=1)
    async with NotecardClient(node.url, token_for("alice")) as alice, \
            NotecardClient(node.url, token_for("bob")) as bob:
        gift = await alice.send_gift("bob")
        assert (await bob.next_offer(5)).gift_id == gift.gift_id
        expired = await alice.next_outcome(5)
        assert (expired.gift_id, expired.state) == (gift.gift_id, "expired")
        assert (await bob.next_outcome(5)).state == "expired"
        assert (await alice.balance()).available["note"] == UNITS
        with pytest.raises(GiftRefused) as refused:
            await bob.accept(gift.gift_id)
        assert refused.value.code in ("ALREADY_RESOLVED", "GIFT_EXPIRED")


async def test_retry_with_the_same_gift_id_gives_once(admin: AdminClient, connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob", cards=5)
    alice, bob = await connect("alice"), await connect("bob")
    first = await alice.send_gift("bob", qty=1, gift_id="g-retry")
    again = await alice.send_gift("bob", qty=1, gift_id="g-retry")
    assert first == again
    assert (await alice.balance()).available["note"] == 4 * UNITS
    with pytest.raises(GiftRefused) as conflict:
        await alice.send_gift("bob", qty=2, gift_id="g-retry")
    assert conflict.value.code == "IDEMPOTENCY_CONFLICT"
    await bob.accept("g-retry")
    assert (await bob.accept("g-retry")).state == "accepted"  # an accept retry answers the same
    with pytest.raises(GiftRefused) as late:
        await bob.decline("g-retry")
    assert late.value.code == "ALREADY_RESOLVED"
    assert late.value.gift is not None and late.value.gift.state == "accepted"


async def test_concurrent_sends_race_for_the_last_card(admin: AdminClient, connect: ClientFactory,
                                                      topology_kind: str) -> None:
    await befriend_all(admin, "alice", "bob", cards=1)
    await connect("bob")
    devices = [await connect("alice") for _ in range(5)]
    results = await asyncio.gather(*(d.send_gift("bob") for d in devices), return_exceptions=True)
    sent = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, GiftRefused)]
    assert len(sent) == 1 and len(refused) == 4
    # Across shards a send in flight holds bob's daily slot from its admission until its
    # sender's side decides (docs/protocol.md section 10): a concurrent one may find the slots
    # taken by sends that then fail for want of cards.
    expected = {"INSUFFICIENT_BALANCE"} | ({"LIMIT_DAILY_RECEIVE"} if topology_kind == "cluster" else set())
    assert {r.code for r in refused} <= expected and "INSUFFICIENT_BALANCE" in {r.code for r in refused}


async def test_answering_someone_elses_gift_is_refused(admin: AdminClient, connect: ClientFactory) -> None:
    """Its sender is told it is not the recipient; anyone else finds no gift of theirs with
    that id (a gift is looked up with the user answering: nothing is told about others')."""
    await befriend_all(admin, "alice", "bob", "carol")
    alice, _bob, carol = await connect("alice"), await connect("bob"), await connect("carol")
    gift = await alice.send_gift("bob")
    with pytest.raises(GiftRefused) as refused:
        await alice.accept(gift.gift_id)
    assert refused.value.code == "NOT_RECIPIENT"
    with pytest.raises(GiftRefused) as stranger:
        await carol.accept(gift.gift_id)
    assert stranger.value.code == "GIFT_NOT_FOUND"
    with pytest.raises(GiftRefused) as missing:
        await carol.accept("no-such-gift")
    assert missing.value.code == "GIFT_NOT_FOUND"
    assert (await admin.gift(gift.gift_id))["state"] == "pending"


async def test_every_device_sees_the_offer_and_the_first_answer_wins(
    admin: AdminClient, connect: ClientFactory
) -> None:
    await befriend_all(admin, "alice", "bob")
    alice = await connect("alice")
    phone, tablet = await connect("bob"), await connect("bob", encoding=Encoding.JSON)
    gift = await alice.send_gift("bob")
    assert (await phone.next_offer(5)).gift_id == gift.gift_id
    assert (await tablet.next_offer(5)).gift_id == gift.gift_id
    await phone.accept(gift.gift_id)
    with pytest.raises(GiftRefused) as late:
        await tablet.decline(gift.gift_id)
    assert late.value.code == "ALREADY_RESOLVED"
    assert (await tablet.next_outcome(5)).state == "accepted"
    assert (await alice.next_outcome(5)).state == "accepted"
