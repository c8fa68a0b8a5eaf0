"""Every rule of gift-rules.md section 1 at its boundary, through the gateway and the SDK."""

from __future__ import annotations

import pytest

from clearing import Refused
from gateway import GatewayNode
from notecard.admin_client import AdminClient
from notecard_sdk import GiftRefused, NotecardClient
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import DAY_MS, ClientFactory, befriend_all, now_ms

#: Every test here runs on one Redis and on a 3-shard cluster (users on different shards).
pytestmark = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)


async def refused_code(client: NotecardClient, to: str, qty: int = 1) -> str:
    with pytest.raises(GiftRefused) as refused:
        await client.send_gift(to, qty=qty)
    return refused.value.code


async def test_fifth_gift_of_the_day_is_allowed_the_sixth_is_not(admin: AdminClient, connect: ClientFactory) -> None:
    friends = ["bob", "carol"]
    await befriend_all(admin, "alice", *friends)
    alice = await connect("alice")
    for user in friends:
        await connect(user)
    for i in range(5):
        await alice.send_gift(friends[i % 2])
    assert await refused_code(alice, "carol") == "LIMIT_DAILY_SEND"


async def test_vip_sends_seven_a_day(admin: AdminClient, connect: ClientFactory) -> None:
    friends = ["bob", "carol", "dave"]
    await befriend_all(admin, "vera", *friends)
    await admin.set_flags("vera", vip=True)
    vera = await connect("vera")
    for user in friends:
        await connect(user)
    for i in range(7):
        await vera.send_gift(friends[i % 3])
    assert await refused_code(vera, "dave") == "LIMIT_DAILY_SEND"


async def test_a_user_receives_at_most_three_a_day(admin: AdminClient, connect: ClientFactory) -> None:
    senders = ["s1", "s2", "s3", "s4"]
    await befriend_all(admin, "bob", *senders)
    await connect("bob")
    clients = [await connect(s) for s in senders]
    for client in clients[:3]:
        await client.send_gift("bob")
    assert await refused_code(clients[3], "bob") == "LIMIT_DAILY_RECEIVE"


async def test_follow_must_be_three_days_old_both_ways(admin: AdminClient, connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob")
    alice = await connect("alice")
    await connect("bob")
    # bob followed alice back one second less than three days ago.
    await admin.follow("bob", "alice", now_ms() - 3 * DAY_MS + 1000)
    assert await refused_code(alice, "bob") == "NOT_MUTUAL_3D"
    await admin.follow("bob", "alice", now_ms() - 3 * DAY_MS - 1000)
    await alice.send_gift("bob")
    await admin.unfollow("bob", "alice")  # one-way is not enough
    assert await refused_code(alice, "bob") == "NOT_MUTUAL_3D"


@pytest.mark.parametrize(("blocker", "blocked"), [("alice", "bob"), ("bob", "alice")])
async def test_a_block_either_way_stops_gifts(admin: AdminClient, connect: ClientFactory, blocker: str,
                                             blocked: str) -> None:
    await befriend_all(admin, "alice", "bob")
    alice = await connect("alice")
    await connect("bob")
    await admin.block(blocker, blocked)
    assert await refused_code(alice, "bob") == "BLOCKED"
    await admin.unblock(blocker, blocked)
    await alice.send_gift("bob")


async def test_unverified_sender_is_refused(admin: AdminClient, connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob")
    await admin.set_flags("alice", verified=False)
    alice = await connect("alice")
    await connect("bob")
    assert await refused_code(alice, "bob") == "NOT_VERIFIED"


async def test_banned_accounts_neither_give_nor_receive(node: GatewayNode, admin: AdminClient,
                                                      connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob")
    alice, _bob = await connect("alice"), await connect("bob")
    await admin.set_flags("bob", banned=True)
    assert await refused_code(alice, "bob") == "RECIPIENT_BANNED"
    # The ban also closed bob's connection (tests/test_gateway_session_end.py); a gift of his
    # that was already on its way when it struck meets the rule:
    with pytest.raises(Refused) as refused:
        await node.clearing.reserve("late", "bob", "alice", "note", 1)
    assert refused.value.code == "SENDER_BANNED"


async def test_offline_recipient_and_short_balance_and_unknowns(admin: AdminClient, connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob", cards=2)
    alice = await connect("alice")
    assert await refused_code(alice, "bob") == "RECIPIENT_OFFLINE"
    await connect("bob")
    assert await refused_code(alice, "bob", qty=3) == "INSUFFICIENT_BALANCE"
    await alice.send_gift("bob", qty=2)  # exactly the balance
    assert await refused_code(alice, "nobody") == "UNKNOWN_USER"
    assert await refused_code(alice, "alice") == "SELF_GIFT"
    with pytest.raises(GiftRefused) as kind:
        await alice.send_gift("bob", kind="gold")
    assert kind.value.code == "UNKNOWN_KIND"
    bal = await alice.balance()
    assert bal.available.get("note", 0) == 0 and bal.held["note"] == 2 * bal.units_per_card
