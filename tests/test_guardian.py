"""Guardian confirmation (docs/regions.md, gift-rules.md section 5, Middle East): a gift the
recipient's region rule covers waits for the recipient's guardian, who approves (it becomes an
offer) or rejects (refunded); the guardian's window expiring refunds it too. Through the SDK
against real nodes, on one Redis and on a 3-shard cluster, where the parties below are
chosen so that the sender, the ward and the guardian each live on another shard (the saga)
or all on one (the one-script path). The node fixture checks the conservation invariant
after each test."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from clearing import GiftRules, check_invariant
from clearing.errors import Refusal, Refused
from clearing.slots import slot_of
from gateway import GatewayNode
from notecard.admin_client import AdminApiError, AdminClient
from notecard_sdk import GiftRefused, NotecardClient
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ClientFactory, NodeFactory, befriend_all, now_ms

pytestmark = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)

UNITS = GiftRules().units_per_card
#: On the test cluster (3 shards of 5461 slots) each of these lives on another shard ...
APART = ("sam", "wafa", "gabe")
#: ... and these three on one.
TOGETHER = ("rami", "noor", "hadi")
WAIT_S = 10.0


@pytest.fixture
async def node(node_factory: NodeFactory) -> GatewayNode:
    return await node_factory(sweep_interval_s=0.05)


@pytest.fixture(params=["apart", "together"])
def parties(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(sender, ward, guardian)."""
    return APART if request.param == "apart" else TOGETHER


def test_the_parties_are_where_the_tests_say(topology_kind: str) -> None:
    assert len({slot_of(u) // 5462 for u in APART}) == 3
    assert len({slot_of(u) // 5462 for u in TOGETHER}) == 1


async def _setup(admin: AdminClient, sender: str, ward: str, guardian: str, *, rule: str = "male_to_female",
                 window_ms: int = 60_000, sender_gender: str = "male", ward_gender: str = "female",
                 link: bool = True) -> None:
    await befriend_all(admin, sender, ward)
    await admin.create_user(guardian)
    if rule != "off":
        await admin.put_region("mena", {"name": "Middle East", "guardian_rule": rule,
                                        "guardian_window_ms": window_ms})
    await admin.set_flags(sender, gender=sender_gender)
    await admin.set_flags(ward, gender=ward_gender, region="mena")
    if link:
        await admin.link_guardian(ward, guardian, operator="ops1")


async def _available(admin: AdminClient, user: str) -> int:
    return int((await admin.get_user(user))["balances"]["available"]["note"])


async def _conserved(redis: aioredis.Redis) -> None:
    """The conservation check, while gifts wait (the node fixture checks again at the end)."""
    report = await check_invariant(redis, GiftRules())
    assert report.ok, report.violations


async def _events(redis: aioredis.Redis, node: GatewayNode, user: str) -> list[tuple[str, str]]:
    """(event, gift id) of every entry of ``user``'s event stream, oldest first: what each of
    their devices is sent, before the SDK drops what it has seen already."""
    entries: Any = await redis.xrange(node.clearing.keys.events(user))
    decoded = [msgpack.unpackb(fields[b"p"]) for _, fields in entries]
    return [(str(e["e"]), str(e["g"]["gift_id"])) for e in decoded]


async def _pending(admin: AdminClient, user: str) -> list[Any]:
    return list((await admin.call("GET", f"/admin/users/{user}/pending"))["gifts"])


async def test_guardians_are_linked_and_unlinked_by_operators_with_an_audit_log(admin: AdminClient) -> None:
    await admin.create_user("wafa")
    await admin.create_user("gabe")
    linked = await admin.link_guardian("wafa", "gabe", operator="ops1")
    assert linked["guardian"] == "gabe"
    for bad in ("wafa", "nobody"):
        with pytest.raises(AdminApiError) as refused:
            await admin.link_guardian("wafa", bad)
        assert refused.value.code in ("BAD_REQUEST", "UNKNOWN_USER")
    with pytest.raises(AdminApiError) as gender:
        await admin.set_flags("wafa", gender="other")
    assert gender.value.code == "BAD_REQUEST"
    await admin.link_guardian("wafa", None, operator="ops2")
    shown = await admin.guardian("wafa")
    assert shown["guardian"] == ""
    assert [(e["operator"], e["from"], e["to"]) for e in shown["log"]] == [("ops2", "gabe", ""), ("ops1", "", "gabe")]
    with pytest.raises(AdminApiError) as bad_rule:
        await admin.put_region("mena", {"guardian_rule": "sometimes"})
    assert bad_rule.value.code == "BAD_REQUEST"


async def test_rule_off_a_male_to_female_gift_is_offered_at_once(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str]) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian, rule="off")
    s, w = await connect(sender), await connect(ward)
    gift = await s.send_gift(ward, 1)
    assert (await w.next_offer(WAIT_S)).gift_id == gift.gift_id


@pytest.mark.parametrize("genders", [("female", "female"), ("male", "male"), ("", "female")])
async def test_rule_male_to_female_leaves_other_pairs_alone(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], genders: tuple[str, str]) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian, sender_gender=genders[0], ward_gender=genders[1])
    s, w = await connect(sender), await connect(ward)
    gift = await s.send_gift(ward, 1)
    assert (await w.next_offer(WAIT_S)).gift_id == gift.gift_id
    assert (await w.accept(gift.gift_id)).state == "accepted"


async def test_rule_any_holds_every_gift_to_the_ward(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str]) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian, rule="any", sender_gender="female")
    s, _w, g = await connect(sender), await connect(ward), await connect(guardian)
    gift = await s.send_gift(ward, 1)
    assert (await g.next_guardian_request(WAIT_S)).gift_id == gift.gift_id
    await g.guardian_answer(gift.gift_id, ward, approve=False)


async def test_a_ward_without_a_guardian_is_refused_and_nothing_moves(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str]) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian, link=False)
    s = await connect(sender)
    with pytest.raises(GiftRefused) as offline:  # the other refusals come first
        await s.send_gift(ward, 1, gift_id="g-offline")
    assert offline.value.code == "RECIPIENT_OFFLINE"
    await connect(ward)
    with pytest.raises(GiftRefused) as refused:
        await s.send_gift(ward, 1, gift_id="g-none")
    assert refused.value.code == "GUARDIAN_REQUIRED"
    with pytest.raises(GiftRefused) as again:  # remembered for its id
        await s.send_gift(ward, 1, gift_id="g-none")
    assert again.value.code == "GUARDIAN_REQUIRED"
    assert await _available(admin, sender) == 10 * UNITS
    assert (await admin.get_user(sender))["balances"]["held"]["note"] == 0
    assert await _pending(admin, ward) == []


async def test_approved_gift_becomes_an_offer_whose_accept_credits_the_ward(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], redis: aioredis.Redis) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, w, g = await connect(sender), await connect(ward), await connect(guardian)
    gift = await s.send_gift(ward, 2)
    assert gift.state == "pending"
    asked = await g.next_guardian_request(WAIT_S)
    assert (asked.gift_id, asked.sender, asked.recipient, asked.qty) == (gift.gift_id, sender, ward, 2)
    assert asked.expires_at_ms <= gift.expires_at_ms
    # Held from the sender, not yet offered to the ward.
    assert (await admin.get_user(sender))["balances"]["held"]["note"] == 2 * UNITS
    assert await _pending(admin, ward) == []
    await _conserved(redis)
    approved = await g.guardian_answer(gift.gift_id, ward, approve=True)
    assert approved.state == "pending"
    offer = await w.next_offer(WAIT_S)
    assert offer.gift_id == gift.gift_id
    # A change of mind is too late: the offer is the ward's, and nothing of it moves.
    with pytest.raises(GiftRefused) as changed_mind:
        await g.guardian_answer(gift.gift_id, ward, approve=False)
    assert (changed_mind.value.code, changed_mind.value.gift.state) == ("ALREADY_RESOLVED", "pending")
    assert (await admin.get_user(sender))["balances"]["held"]["note"] == 2 * UNITS
    await _conserved(redis)
    assert (await w.accept(gift.gift_id)).state == "accepted"
    assert (await s.next_outcome(WAIT_S)).state == "accepted"
    assert await _available(admin, ward) == 12 * UNITS
    assert await _available(admin, sender) == 8 * UNITS
    # Answers after the fact: the same one changes nothing, the other is refused.
    assert (await g.guardian_answer(gift.gift_id, ward, approve=True)).gift_id == gift.gift_id
    with pytest.raises(GiftRefused) as other:
        await g.guardian_answer(gift.gift_id, ward, approve=False)
    assert other.value.code == "ALREADY_RESOLVED"


async def test_rejected_gift_refunds_the_sender_and_the_ward_hears_nothing(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str]) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, w, g = await connect(sender), await connect(ward), await connect(guardian)
    gift = await s.send_gift(ward, 3)
    await g.next_guardian_request(WAIT_S)
    # The ward cannot act on a gift not offered to them; a stranger cannot answer it.
    with pytest.raises(GiftRefused) as hidden:
        await w.accept(gift.gift_id)
    assert hidden.value.code == "GIFT_NOT_FOUND"
    with pytest.raises(GiftRefused) as stranger:
        await s.guardian_answer(gift.gift_id, ward, approve=True)
    assert stranger.value.code == "NOT_GUARDIAN"
    rejected = await g.guardian_answer(gift.gift_id, ward, approve=False)
    assert rejected.state == "declined"
    assert (await s.next_outcome(WAIT_S)).state == "declined"
    assert await _available(admin, sender) == 10 * UNITS
    assert (await admin.get_user(sender))["balances"]["held"]["note"] == 0
    assert await _available(admin, ward) == 10 * UNITS
    # Idempotent: the same answer again, from the same device.
    assert (await g.guardian_answer(gift.gift_id, ward, approve=False)).state == "declined"
    with pytest.raises(GiftRefused) as late:
        await g.guardian_answer(gift.gift_id, ward, approve=True)
    assert late.value.code == "ALREADY_RESOLVED"
    # Nothing is told to the ward of a gift it never saw: the first outcome the ward hears is
    # of a gift it sends afterwards (its events arrive in order, so one told before would be first).
    own = await w.send_gift(sender, 1)
    assert (await s.next_offer(WAIT_S)).gift_id == own.gift_id
    assert (await s.decline(own.gift_id)).state == "declined"
    assert (await w.next_outcome(WAIT_S)).gift_id == own.gift_id


async def test_the_guardian_window_expiring_refunds_the_sender(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str]) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian, window_ms=1_000)
    s, _w, g = await connect(sender), await connect(ward), await connect(guardian)
    gift = await s.send_gift(ward, 1)
    await g.next_guardian_request(WAIT_S)
    assert (await s.next_outcome(WAIT_S)).state == "expired"
    assert await _available(admin, sender) == 10 * UNITS
    with pytest.raises(GiftRefused) as late:
        await g.guardian_answer(gift.gift_id, ward, approve=True)
    assert late.value.code == "GIFT_EXPIRED"


async def test_a_guardian_on_two_devices_answers_once(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], node: GatewayNode,
        redis: aioredis.Redis) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, w = await connect(sender), await connect(ward)
    phone, tablet = await connect(guardian), await connect(guardian)
    gift = await s.send_gift(ward, 1)
    assert (await phone.next_guardian_request(WAIT_S)).gift_id == gift.gift_id
    assert (await tablet.next_guardian_request(WAIT_S)).gift_id == gift.gift_id
    first, second = await asyncio.gather(phone.guardian_answer(gift.gift_id, ward, approve=True),
                                         tablet.guardian_answer(gift.gift_id, ward, approve=True))
    assert first.state == second.state == "pending"
    assert (await w.next_offer(WAIT_S)).gift_id == gift.gift_id
    # Offered once: the next offer the ward hears is of a later gift, approved afterwards.
    later = await s.send_gift(ward, 1)
    assert (await phone.next_guardian_request(WAIT_S)).gift_id == later.gift_id
    await tablet.guardian_answer(later.gift_id, ward, approve=True)
    assert (await w.next_offer(WAIT_S)).gift_id == later.gift_id
    # ... and sent once: the SDK would drop a repeat of an offer it has seen, the stream would not.
    offers = [e for e in await _events(redis, node, ward) if e[0] == "offer"]
    assert offers == [("offer", gift.gift_id), ("offer", later.gift_id)]
    assert (await w.decline(gift.gift_id)).state == "declined"
    assert (await w.decline(later.gift_id)).state == "declined"
    assert await _available(admin, sender) == 10 * UNITS


async def test_a_guardian_who_reconnects_gets_the_requests_missed_meanwhile(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], redis: aioredis.Redis) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, w = await connect(sender), await connect(ward)
    g: NotecardClient = await connect(guardian)
    epoch, offset = g.epoch, g.offset
    await g.close()
    gift = await s.send_gift(ward, 1)
    await _conserved(redis)
    again = await connect(guardian, epoch=epoch, offset=offset)
    replayed = await again.next_guardian_request(WAIT_S)
    assert (replayed.gift_id, replayed.recipient) == (gift.gift_id, ward)
    assert again.recovered
    await again.guardian_answer(gift.gift_id, ward, approve=True)
    assert (await w.next_offer(WAIT_S)).gift_id == gift.gift_id
    assert (await w.accept(gift.gift_id)).state == "accepted"


async def test_a_guardians_new_device_lists_the_requests_made_before_it_connected(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], node: GatewayNode,
        redis: aioredis.Redis) -> None:
    """A device without a stream position is replayed nothing; ``guardian_requests`` lists
    what still waits, a page at a time (pages of 2 here, so the cursor is exercised)."""
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, w = await connect(sender), await connect(ward)
    sent = [await s.send_gift(ward, 1, gift_id=f"g-early-{i}") for i in range(3)]
    await _conserved(redis)
    node.requests.guardian_page = 2
    fresh = await connect(guardian)
    listed = await fresh.guardian_requests()
    assert [(g.gift_id, g.recipient, g.sender, g.state) for g in listed] == [
        (gift.gift_id, ward, sender, "pending") for gift in sent]
    assert all(g.expires_at_ms <= gift.expires_at_ms for g, gift in zip(listed, sent, strict=True))
    await fresh.guardian_answer(sent[1].gift_id, ward, approve=True)
    assert (await w.next_offer(WAIT_S)).gift_id == sent[1].gift_id
    await fresh.guardian_answer(sent[0].gift_id, ward, approve=False)
    assert [g.gift_id for g in await fresh.guardian_requests()] == [sent[2].gift_id]
    await _conserved(redis)
    # A request made after the device connected comes live and is listed too; it is the first
    # request the device hears, so none made before it connected was replayed.
    later = await s.send_gift(ward, 1, gift_id="g-later")
    assert (await fresh.next_guardian_request(WAIT_S)).gift_id == later.gift_id
    assert [g.gift_id for g in await fresh.guardian_requests()] == [sent[2].gift_id, later.gift_id]
    assert await s.guardian_requests() == []  # nobody's guardian


async def test_a_request_whose_window_passed_is_settled_and_not_listed(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str]) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian, window_ms=1_000)
    s, _w, g = await connect(sender), await connect(ward), await connect(guardian)
    gift = await s.send_gift(ward, 1)
    assert [r.gift_id for r in await g.guardian_requests()] == [gift.gift_id]
    assert (await s.next_outcome(WAIT_S)).state == "expired"
    # The sweeper that refunds it also tells the guardian's devices, once.
    settled = await g.next_guardian_settled(WAIT_S)
    assert (settled.gift_id, settled.state) == (gift.gift_id, "expired")
    assert await g.guardian_requests() == []
    # Told once: the next settlement the guardian hears is of a later gift whose window passes
    # too (the sweeper passed over the first one many times meanwhile).
    later = await s.send_gift(ward, 1)
    assert (await s.next_outcome(WAIT_S)).gift_id == later.gift_id
    settled = await g.next_guardian_settled(WAIT_S)
    assert (settled.gift_id, settled.state) == (later.gift_id, "expired")


async def test_an_answer_on_one_device_settles_the_request_on_the_others(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], redis: aioredis.Redis) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, w = await connect(sender), await connect(ward)
    phone, tablet = await connect(guardian), await connect(guardian)
    approved, rejected = await s.send_gift(ward, 1, gift_id="g-yes"), await s.send_gift(ward, 2, gift_id="g-no")
    for device in (phone, tablet):
        assert {(await device.next_guardian_request(WAIT_S)).gift_id for _ in range(2)} == {"g-yes", "g-no"}
    # The tablet goes away knowing both requests; the phone answers both meanwhile.
    epoch, offset = tablet.epoch, tablet.offset
    await tablet.close()
    assert (await phone.guardian_answer(approved.gift_id, ward, approve=True)).state == "pending"
    assert (await phone.guardian_answer(rejected.gift_id, ward, approve=False)).state == "declined"
    told = [await phone.next_guardian_settled(WAIT_S) for _ in range(2)]
    assert [(g.gift_id, g.state, g.recipient) for g in told] == [("g-yes", "pending", ward), ("g-no", "declined", ward)]
    laptop = await connect(guardian)  # a new device: nothing to drop, nothing listed
    assert await laptop.guardian_requests() == []
    # The same answer again changes nothing and tells nobody again.
    assert (await phone.guardian_answer(approved.gift_id, ward, approve=True)).gift_id == approved.gift_id
    # ... so the next settlement both devices hear is of a later request, rejected afterwards.
    after = await s.send_gift(ward, 1, gift_id="g-after")
    assert (await phone.next_guardian_request(WAIT_S)).gift_id == after.gift_id
    assert (await phone.guardian_answer(after.gift_id, ward, approve=False)).state == "declined"
    for device in (phone, laptop):
        assert (await device.next_guardian_settled(WAIT_S)).gift_id == after.gift_id
    # The tablet back from its stream position is replayed both settlements, after the requests.
    back = await connect(guardian, epoch=epoch, offset=offset)
    assert back.recovered
    replayed = [await back.next_guardian_settled(WAIT_S) for _ in range(2)]
    assert [(g.gift_id, g.state) for g in replayed] == [("g-yes", "pending"), ("g-no", "declined")]
    assert await back.guardian_requests() == []
    assert (await w.next_offer(WAIT_S)).gift_id == approved.gift_id
    assert await _available(admin, sender) == 9 * UNITS  # the rejected gift's two cards came back
    await _conserved(redis)


async def test_devices_connected_during_an_answer_are_all_told(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str]) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, _w = await connect(sender), await connect(ward)
    phone, tablet = await connect(guardian), await connect(guardian)
    gift = await s.send_gift(ward, 1)
    await tablet.next_guardian_request(WAIT_S)
    await phone.guardian_answer(gift.gift_id, ward, approve=False)
    for device in (tablet, phone):
        settled = await device.next_guardian_settled(WAIT_S)
        assert (settled.gift_id, settled.state) == (gift.gift_id, "declined")
    assert await _available(admin, sender) == 10 * UNITS


async def test_a_page_cursor_survives_answers_between_pages_and_a_late_ask_lists_nothing(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], node: GatewayNode,
        redis: aioredis.Redis) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, _w, g = await connect(sender), await connect(ward), await connect(guardian)
    sent = [await s.send_gift(ward, 1, gift_id=f"g-page-{i}") for i in range(3)]
    for _ in sent:
        await g.next_guardian_request(WAIT_S)
    first, cursor = await node.clearing.guardian_requests(guardian, None, 1)
    assert [r.gift_id for r in first] == [sent[0].gift_id] and cursor is not None
    # Answered between two pages: the next page resumes after the cursor, skipping nothing.
    await g.guardian_answer(sent[0].gift_id, ward, approve=False)
    await g.guardian_answer(sent[1].gift_id, ward, approve=False)
    second, cursor = await node.clearing.guardian_requests(guardian, cursor, 1)
    assert [r.gift_id for r in second] == [sent[2].gift_id] and cursor is None
    keys = node.clearing.keys
    assert await redis.zrange(keys.guardian_open(guardian), 0, -1) == [f"{ward}|{sent[2].gift_id}".encode()]
    assert await redis.exists(keys.guardian_request(guardian, ward, sent[0].gift_id)) == 0
    assert await redis.exists(keys.guardian_request(guardian, ward, sent[2].gift_id)) == 1
    # An ask arriving after the answer (a recovery retry) neither lists nor announces it again.
    assert await node.clearing.ask_guardian(
        dataclasses.replace(first[0], guardian=guardian), first[0].expires_at_ms) is False
    assert [r.gift_id for r in await g.guardian_requests()] == [sent[2].gift_id]
    assert {(await g.next_guardian_settled(WAIT_S)).gift_id for _ in range(2)} == {sent[0].gift_id, sent[1].gift_id}
    # Nor announced: the next request the guardian hears is of a gift sent afterwards.
    later = await s.send_gift(ward, 1, gift_id="g-page-later")
    assert (await g.next_guardian_request(WAIT_S)).gift_id == later.gift_id
    await g.guardian_answer(later.gift_id, ward, approve=False)
    await _conserved(redis)


async def _keys_of(redis: aioredis.Redis, node: GatewayNode, user: str) -> set[str]:
    """The names of every key in ``user``'s slot (every shard scanned)."""
    keys = node.clearing.keys
    prefix = f"{keys.prefix}:{{{user}}}:"
    return {k.decode().removeprefix(prefix) async for k in redis.scan_iter(match=keys.user_pattern(user), count=1000)}


async def test_erasing_a_ward_refunds_a_gift_awaiting_the_guardian_and_settles_the_request(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], node: GatewayNode,
        redis: aioredis.Redis) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, _w, g = await connect(sender), await connect(ward), await connect(guardian)
    gift = await s.send_gift(ward, 2)
    assert (await g.next_guardian_request(WAIT_S)).gift_id == gift.gift_id
    erased = await admin.call("POST", f"/admin/users/{ward}/erase")
    assert [x["gift_id"] for x in erased["settled"]] == [gift.gift_id]
    assert (await s.next_outcome(WAIT_S)).state == "declined"
    assert await _available(admin, sender) == 10 * UNITS
    assert (await admin.get_user(sender))["balances"]["held"]["note"] == 0
    assert (await g.next_guardian_settled(WAIT_S)).gift_id == gift.gift_id
    assert (await node.clearing.guardian_requests(guardian))[0] == []
    await _conserved(redis)


async def test_erasing_a_sender_refunds_a_gift_awaiting_the_guardian_before_consuming(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], node: GatewayNode,
        redis: aioredis.Redis) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, _w, g = await connect(sender), await connect(ward), await connect(guardian)
    gift = await s.send_gift(ward, 3)
    await g.next_guardian_request(WAIT_S)
    erased = await admin.call("POST", f"/admin/users/{sender}/erase")
    assert [x["gift_id"] for x in erased["settled"]] == [gift.gift_id]
    assert erased["consumed"] == {"note": 10 * UNITS}  # the held cards came back first
    offer = await redis.hgetall(node.clearing.keys.offer(ward, gift.gift_id))
    assert offer[b"state"] == b"declined" and offer[b"sender"] == erased["pseudonym"].encode()
    assert (await g.next_guardian_settled(WAIT_S)).gift_id == gift.gift_id
    await _conserved(redis)


async def test_an_erased_guardian_is_nobody_to_ask_and_nothing_is_written_under_the_erased_id(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], node: GatewayNode,
        redis: aioredis.Redis) -> None:
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, _w, g = await connect(sender), await connect(ward), await connect(guardian)
    waiting = await s.send_gift(ward, 1)
    await g.next_guardian_request(WAIT_S)
    # The request waiting for the guardian is rejected on their behalf: the sender is refunded,
    # and the ward's half no longer names the erased guardian.
    erased = await admin.call("POST", f"/admin/users/{guardian}/erase")
    assert [x["gift_id"] for x in erased["settled"]] == [waiting.gift_id]
    assert (await s.next_outcome(WAIT_S)).state == "declined"
    assert await _available(admin, sender) == 10 * UNITS
    half = await redis.hgetall(node.clearing.keys.offer(ward, waiting.gift_id))
    assert half[b"guardian"] == erased["pseudonym"].encode()
    tomb = await _keys_of(redis, node, guardian)
    assert tomb <= {"user", "bal", "held", "points", "pointlog"}
    # A later gift to the ward (still linked to the erased id) asks nobody and writes nothing
    # there; erasing the ward then settles it without telling the erased guardian anything.
    later = await s.send_gift(ward, 2)
    assert later.state == "pending"
    assert (await admin.get_user(sender))["balances"]["held"]["note"] == 2 * UNITS
    await _conserved(redis)
    assert await _keys_of(redis, node, guardian) == tomb
    ward_erased = await admin.call("POST", f"/admin/users/{ward}/erase")
    assert [x["gift_id"] for x in ward_erased["settled"]] == [later.gift_id]
    assert (await s.next_outcome(WAIT_S)).state == "declined"
    assert await _available(admin, sender) == 10 * UNITS
    assert await _keys_of(redis, node, guardian) == tomb
    await _conserved(redis)


async def test_the_last_erasure_step_refuses_while_a_half_it_would_drop_awaits_a_guardian(
        admin: AdminClient, connect: ClientFactory, parties: tuple[str, str, str], node: GatewayNode,
        redis: aioredis.Redis) -> None:
    """erase.lua on its own (as a repeated or raced erasure could reach it): a gift awaiting
    the guardian is in no inbox and holds nothing of the ward, yet dropping its half would
    hold the sender's cards for ever."""
    sender, ward, guardian = parties
    await _setup(admin, sender, ward, guardian)
    s, _w, g = await connect(sender), await connect(ward), await connect(guardian)
    gift = await s.send_gift(ward, 1)
    await g.next_guardian_request(WAIT_S)
    keys = node.clearing.keys
    for user in (ward, sender):
        drop = sorted((await _keys_of(redis, node, user)) - {"user", "bal", "held", "points", "pointlog"})
        args = {"u": user, "tag": node.clearing.tag(user), "kinds": list(GiftRules().card_kinds), "drop": drop,
                "pseudonym": "erased-test"}
        with pytest.raises(Refused) as pending:
            await node.clearing.lua.run("erase", slot_of(user), keys.user(user), now_ms(), args)
        assert pending.value.code == Refusal.ERASE_PENDING
        assert (await redis.hget(keys.user(user), "erased")) is None
    assert (await redis.hgetall(keys.offer(ward, gift.gift_id)))[b"state"] == b"awaiting_guardian"
    await _conserved(redis)
