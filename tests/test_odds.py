"""Published odds (clearing/odds.py, docs/regions.md "Published odds"): the lucky card of a
region draws a bonus for every accepted gift from a public table, the promotion account pays
it in the accept's own script, and anyone can check each draw once the key is revealed.
Real nodes on the test Redis (one instance and a cluster), SDK clients over WebSockets; the
node fixtures check the conservation invariant after each test."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from clearing.keys import DEFAULT_KEYS
from clearing.ledger import LedgerEntry, read_all
from clearing.odds import (
    CHI2_CRITICAL_P001,
    OddsEntry,
    OddsTable,
    OddsVersion,
    chi_square,
    commitment,
    decode_odds,
    draw,
    draw_with,
)
from clearing.regions import RegionRules
from clearing.scene_config import SceneConfigError
from clearing.slots import SLOTS, slot_of
from gateway import GatewayNode
from notecard import odds as odds_cli
from notecard.admin_client import AdminApiError, AdminClient
from notecard_sdk import NotecardClient
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ClientFactory, befriend_all, now_ms

BOTH = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)

#: A table as an operator would publish it: mostly nothing, sometimes one card, rarely five.
TABLE = [{"bonus": 0, "weight": 700}, {"bonus": 1, "weight": 250}, {"bonus": 2, "weight": 40},
         {"bonus": 5, "weight": 10}]
UNITS = 10  # GiftRules().units_per_card


# ------------------------------------------------------------------ the draw itself
def test_the_draws_follow_the_published_odds_chi_square_on_100k() -> None:
    """100,000 draws through the function the node uses, one per gift id: Pearson's
    statistic against the table's weights stays below the critical value at p = 0.001 for
    the table's degrees of freedom (entries - 1). A draw biased by a few per cent fails it."""
    # A fixed key: the same 100k draws every run, so the test is reproducible (with a fresh
    # key it would fail once in a thousand runs by design, p = 0.001)
    table = OddsTable("sea-lucky", OddsVersion(1, tuple(OddsEntry(**e) for e in TABLE), "5e" * 32, now_ms()))
    observed = [0] * len(TABLE)
    for i in range(100_000):
        observed[draw(table, "bob", f"g-{i}").index] += 1
    weights = [e["weight"] for e in TABLE]
    statistic = chi_square(observed, weights)
    assert statistic < CHI2_CRITICAL_P001[len(TABLE) - 1], (statistic, observed)
    # the same test catches a draw that does not follow the table: 2% moved from the first entry
    skewed = [observed[0] - 2000, observed[1] + 2000, *observed[2:]]
    assert chi_square(skewed, weights) > CHI2_CRITICAL_P001[len(TABLE) - 1]


def test_a_draw_is_a_function_of_the_revealed_key_and_the_gift() -> None:
    table = OddsTable.first("t", [OddsEntry(**e) for e in TABLE], 1)
    drawn = draw(table, "bob", "g-1")
    again = draw_with(table.current.key, "t", 1, table.current.entries, "bob", "g-1")
    assert drawn == again
    assert draw(table, "bob", "g-2").seed != drawn.seed and draw(table, "carol", "g-1").seed != drawn.seed
    newer = table.republished(table.current.entries, 2)
    assert newer.current.version == 2 and newer.current.key != table.current.key
    assert newer.history[0].key == table.current.key and newer.history[0].retired_ms == 2
    assert newer.public()["revealed"][0]["key"] == table.current.key
    assert "key" not in newer.public()["current"]
    assert newer.public()["current"]["commitment"] == commitment(newer.current.key)


@pytest.mark.parametrize("entries", [[], [{"bonus": -1, "weight": 1}], [{"bonus": 1, "weight": 0}],
                                     [{"bonus": 1.5, "weight": 1}], [{"bonus": 1}], [{"bonus": 1001, "weight": 1}],
                                     [{"bonus": 1, "weight": 1}] * 33, "nope"])
async def test_a_bad_table_is_refused_and_publishes_nothing(admin: AdminClient, entries: Any) -> None:
    with pytest.raises(AdminApiError) as refused:
        await admin.publish_odds("sea-lucky", entries)
    assert (refused.value.status, refused.value.code) == (400, "BAD_REQUEST")
    assert (await admin.odds())["tables"] == []


def test_the_region_rule_names_a_table() -> None:
    assert RegionRules("sea", lucky_odds="sea-lucky").lucky_odds == "sea-lucky"
    for bad in ("no spaces", 5, "x" * 65):
        with pytest.raises(SceneConfigError):
            RegionRules("sea", lucky_odds=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ GET /odds
@BOTH
async def test_odds_are_public_and_a_new_version_reveals_the_old_key(node: GatewayNode, admin: AdminClient) -> None:
    first = await admin.publish_odds("sea-lucky", TABLE)
    await admin.put_region("sea", {"lucky_odds": "sea-lucky"})
    async with aiohttp.ClientSession() as anyone, anyone.get(node.admin_url + "/odds") as response:  # no token
        assert response.status == 200
        shown = await response.json()
    assert "HMAC-SHA256" in shown["algorithm"]
    [table] = shown["tables"]
    assert table["table"] == "sea-lucky" and table["regions"] == ["sea"] and table["revealed"] == []
    current = table["current"]
    assert current["version"] == 1 and "key" not in current
    assert current["commitment"] == first["current"]["commitment"]
    assert [(e["bonus"], e["weight"]) for e in current["entries"]] == [(e["bonus"], e["weight"]) for e in TABLE]
    assert sum(e["probability"] for e in current["entries"]) == pytest.approx(1.0)
    stored = (await node.scenes.odds())["sea-lucky"]
    await admin.publish_odds("sea-lucky", TABLE[:2])
    [table] = (await admin.odds())["tables"]
    assert table["current"]["version"] == 2
    [old] = table["revealed"]
    assert old["version"] == 1 and old["key"] == stored.current.key
    assert commitment(old["key"]) == current["commitment"]


# ------------------------------------------------------------------ through the SDK
async def _lucky_region(admin: AdminClient, promo_cards: int) -> None:
    await admin.publish_odds("sea-lucky", [{"bonus": 2, "weight": 1}])  # always two cards: a certain draw
    await admin.put_region("sea", {"name": "South-East Asia", "lucky_odds": "sea-lucky"})
    await admin.set_scenes(newcomer_free_gifts=0)  # every gift here is paid by its sender
    await admin.create_user("promo", verified=True)
    if promo_cards:
        await admin.mint("promo", promo_cards)


async def _accept_one(connect: ClientFactory, sender: str, recipient: str) -> tuple[Any, NotecardClient]:
    alice, bob = await connect(sender), await connect(recipient)
    sent = await alice.send_gift(recipient, 1)
    return await bob.accept(sent.gift_id), bob


@BOTH
async def test_a_gift_accepted_in_a_lucky_region_carries_its_paid_bonus(
        node: GatewayNode, admin: AdminClient, connect: ClientFactory, redis: aioredis.Redis) -> None:
    await _lucky_region(admin, promo_cards=10)
    await befriend_all(admin, "alice", cards=5)
    await befriend_all(admin, "bob", cards=0, region="sea")
    for a, b in (("alice", "bob"), ("bob", "alice")):
        await admin.follow(a, b, now_ms() - 4 * 86_400_000)
    accepted, bob = await _accept_one(connect, "alice", "bob")
    table = (await node.scenes.odds())["sea-lucky"]
    expected = draw(table, "bob", accepted.gift_id)
    assert (accepted.lucky_table, accepted.lucky_version, accepted.lucky_seed) == ("sea-lucky", 1, expected.seed)
    assert (accepted.lucky_bonus, accepted.lucky_paid) == (2 * UNITS, 2 * UNITS)
    balance = await bob.balance()
    assert balance.available["note"] == 1 * UNITS + 2 * UNITS
    assert (await admin.get_user("promo"))["balances"]["available"]["note"] == 8 * UNITS
    records, _ = await read_all(redis, DEFAULT_KEYS)
    kinds = {e.entry_kind for e in records if isinstance(e, LedgerEntry) and e.gift_id == accepted.gift_id}
    assert {"lucky_pay", "lucky_credit"} <= kinds
    # the same answer again changes nothing and pays nothing more
    again = await bob.accept(accepted.gift_id)
    assert again.lucky_paid == 2 * UNITS
    assert (await bob.balance()).available["note"] == 3 * UNITS


@BOTH
async def test_a_gift_accepted_outside_a_lucky_region_draws_nothing(
        admin: AdminClient, connect: ClientFactory) -> None:
    await _lucky_region(admin, promo_cards=10)
    await befriend_all(admin, "alice", "bob", cards=5)  # both in "global": no rule
    accepted, bob = await _accept_one(connect, "alice", "bob")
    assert accepted.lucky_table is None and accepted.lucky_paid is None
    assert (await bob.balance()).available["note"] == 6 * UNITS
    assert (await admin.get_user("promo"))["balances"]["available"]["note"] == 10 * UNITS


@BOTH
async def test_a_gift_declined_in_a_lucky_region_draws_nothing(admin: AdminClient, connect: ClientFactory) -> None:
    await _lucky_region(admin, promo_cards=10)
    await befriend_all(admin, "alice", cards=5)
    await befriend_all(admin, "bob", cards=0, region="sea")
    for a, b in (("alice", "bob"), ("bob", "alice")):
        await admin.follow(a, b, now_ms() - 4 * 86_400_000)
    alice, bob = await connect("alice"), await connect("bob")
    sent = await alice.send_gift("bob", 1)
    declined = await bob.decline(sent.gift_id)
    assert declined.state == "declined" and declined.lucky_table is None and declined.lucky_paid is None
    assert (await admin.get_user("promo"))["balances"]["available"]["note"] == 10 * UNITS


@BOTH
async def test_an_unfunded_draw_is_recorded_and_pays_nothing(admin: AdminClient, connect: ClientFactory) -> None:
    await _lucky_region(admin, promo_cards=1)  # one card: short of the two drawn
    await befriend_all(admin, "alice", cards=5)
    await befriend_all(admin, "bob", cards=0, region="sea")
    for a, b in (("alice", "bob"), ("bob", "alice")):
        await admin.follow(a, b, now_ms() - 4 * 86_400_000)
    accepted, bob = await _accept_one(connect, "alice", "bob")
    assert (accepted.lucky_bonus, accepted.lucky_paid) == (2 * UNITS, 0)
    assert (await bob.balance()).available["note"] == 1 * UNITS
    assert (await admin.get_user("promo"))["balances"]["available"]["note"] == 1 * UNITS


@BOTH
async def test_the_lucky_card_across_shards_pays_once_through_the_saga(
        node: GatewayNode, admin: AdminClient, connect: ClientFactory) -> None:
    """The answer as one-slot steps (answer, settle, lucky at the promotion account, close),
    whatever the topology: a retry of any step pays nothing more."""
    await _lucky_region(admin, promo_cards=10)
    await befriend_all(admin, "alice", cards=5)
    await befriend_all(admin, "bob", cards=0, region="sea")
    for a, b in (("alice", "bob"), ("bob", "alice")):
        await admin.follow(a, b, now_ms() - 4 * 86_400_000)
    await connect("bob")  # online, to be offered the gift
    clearing = node.clearing
    clearing.force_saga = True
    gift_id = f"g-{random.randrange(10**9)}"
    await clearing.reserve(gift_id, "alice", "bob", "note", 1)
    saga = await clearing.answer_saga(gift_id, "bob", "accept")
    gift, changed, _ = await saga.answer()
    assert changed and gift["lucky_bonus"] == 2 * UNITS
    await saga.settle(gift)
    await saga.pay_lucky({k: v for k, v in gift.items() if k != "lucky_paid"})  # a retry of the step
    record = await saga.close(gift)
    assert (record.lucky_bonus, record.lucky_paid) == (2 * UNITS, 2 * UNITS)
    assert (await admin.get_user("promo"))["balances"]["available"]["note"] == 8 * UNITS
    assert (await admin.get_user("bob"))["balances"]["available"]["note"] == 3 * UNITS


@BOTH
async def test_a_lucky_accept_stopped_after_its_decision_keeps_three_steps_and_recovery_pays_once(
        node: GatewayNode, admin: AdminClient, connect: ClientFactory) -> None:
    """A bonus to pay keeps the answer's three-step path: the answer only decides (the
    payer may be short of the bonus, so what the recipient gets is not known yet); the
    recovery of its `settle` entry settles, pays the bonus and credits both, once."""
    await _lucky_region(admin, promo_cards=10)
    await befriend_all(admin, "alice", cards=5)
    await befriend_all(admin, "bob", cards=0, region="sea")
    for a, b in (("alice", "bob"), ("bob", "alice")):
        await admin.follow(a, b, now_ms() - 4 * 86_400_000)
    await connect("bob")
    clearing = node.clearing
    clearing.force_saga = True
    gift_id = f"g-{random.randrange(10**9)}"
    await clearing.reserve(gift_id, "alice", "bob", "note", 1)
    saga = await clearing.answer_saga(gift_id, "bob", "accept")
    gift, changed, _ = await saga.answer()
    assert changed and (gift["closed"], gift["lucky_bonus"]) == (0, 2 * UNITS)
    assert (await admin.get_user("bob"))["balances"]["available"]["note"] == 0  # nothing credited yet
    for _ in range(2):  # the sweeper's recovery at the deadline, and a second runner
        await clearing.recover(f"settle|bob|{gift_id}")
    assert (await admin.get_user("bob"))["balances"]["available"]["note"] == 3 * UNITS
    assert (await admin.get_user("promo"))["balances"]["available"]["note"] == 8 * UNITS
    assert (await admin.get_user("alice"))["balances"]["held"]["note"] == 0


async def test_notecard_odds_verify_checks_a_draw_once_its_key_is_revealed(
        node: GatewayNode, admin: AdminClient, connect: ClientFactory, capsys: pytest.CaptureFixture[str]) -> None:
    await _lucky_region(admin, promo_cards=10)
    await admin.publish_odds("sea-lucky", TABLE)  # version 2, drawn from below
    await befriend_all(admin, "alice", cards=5)
    await befriend_all(admin, "bob", cards=0, region="sea")
    for a, b in (("alice", "bob"), ("bob", "alice")):
        await admin.follow(a, b, now_ms() - 4 * 86_400_000)
    accepted, _ = await _accept_one(connect, "alice", "bob")
    assert accepted.lucky_version == 2 and accepted.lucky_seed is not None
    args = ["verify", "--url", node.admin_url, "--table", "sea-lucky", "--version", "2", "--recipient", "bob",
            "--gift", accepted.gift_id, "--seed", accepted.lucky_seed, "--bonus", str(accepted.lucky_bonus)]
    assert await asyncio.to_thread(odds_cli.main, args) == 2  # still in force: its key is secret
    await admin.publish_odds("sea-lucky", TABLE)  # version 3 retires 2 and reveals its key
    capsys.readouterr()
    assert await asyncio.to_thread(odds_cli.main, args) == 0
    assert '"matches": true' in capsys.readouterr().out
    wrong = [*args[:-1], str((accepted.lucky_bonus or 0) + UNITS)]
    assert await asyncio.to_thread(odds_cli.main, wrong) == 1


def _shard(user: str) -> int:
    # the test cluster splits the slots evenly over 3 primaries (notecard/local_cluster.py)
    return slot_of(user) * 3 // SLOTS


@pytest.mark.parametrize("topology_kind", ["cluster"], indirect=True)
async def test_a_bonus_whose_payer_is_on_another_shard_is_paid_through_the_saga(
        admin: AdminClient, connect: ClientFactory) -> None:
    """Sender and recipient share a shard, so the answer tries the one-script path; the
    promotion account lives on another, the script stops at its first read of it, before any
    write, and the saga pays the bonus."""
    sender = next(f"near{i}" for i in range(1000) if _shard(f"near{i}") == _shard("bob"))
    payer = next(f"promo{i}" for i in range(1000) if _shard(f"promo{i}") != _shard("bob"))
    await admin.set_scenes(promo_account=payer, newcomer_free_gifts=0)
    await admin.publish_odds("sea-lucky", [{"bonus": 2, "weight": 1}])
    await admin.put_region("sea", {"lucky_odds": "sea-lucky"})
    await admin.create_user(payer, verified=True)
    await admin.mint(payer, 10)
    await befriend_all(admin, sender, cards=5)
    await befriend_all(admin, "bob", cards=0, region="sea")
    for a, b in ((sender, "bob"), ("bob", sender)):
        await admin.follow(a, b, now_ms() - 4 * 86_400_000)
    accepted, bob = await _accept_one(connect, sender, "bob")
    assert (accepted.lucky_bonus, accepted.lucky_paid) == (2 * UNITS, 2 * UNITS)
    assert (await bob.balance()).available["note"] == 3 * UNITS
    assert (await admin.get_user(payer))["balances"]["available"]["note"] == 8 * UNITS


async def test_publishing_odds_needs_the_admin_token_and_a_stored_table_that_does_not_read_draws_nothing(
        node: GatewayNode, admin: AdminClient, redis: aioredis.Redis) -> None:
    async with aiohttp.ClientSession() as anyone, \
            anyone.put(node.admin_url + "/admin/odds/sea-lucky", json={"entries": TABLE}) as response:
        assert response.status == 401
    assert (await admin.odds())["tables"] == []
    await admin.publish_odds("good", TABLE)
    await redis.hset(DEFAULT_KEYS.odds(), mapping={"bad": "{not json", "worse": '{"current": {"version": 0}}'})
    assert [t["table"] for t in (await admin.odds())["tables"]] == ["good"]
    problems = (await node.scenes.settings.get()).problems
    assert sum("no lucky draws from it" in p for p in problems) == 2
    tables, about = decode_odds({"x": '{"current": {"version": 1, "entries": [{"bonus": 1, "weight": 1}], '
                                      '"key": "00", "published_ms": 1}}'})
    assert tables == {} and "64 lower-case hex digits" in about[0]
