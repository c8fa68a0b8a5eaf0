"""Eco badges (docs/regions.md "Eco badges"): earned by a region's configured thresholds on
the counters the gift scripts keep, shown in the welcome and by the admin API. Real SDK
clients against a real node, on one Redis and on a 3-shard cluster, on the one-script path
and on the saga; the node fixture checks the conservation invariant after each test."""

from __future__ import annotations

from typing import Any

import pytest

from clearing import GiftRules
from clearing.regions import RegionRules
from clearing.scene_config import SceneConfigError
from gateway.node import GatewayNode
from notecard.admin_client import AdminApiError, AdminClient
from notecard_sdk import NotecardClient
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ADMIN_TOKEN, NodeFactory, befriend_all, eventually, token_for

pytestmark = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)

RULES = GiftRules(daily_send_limit=100, daily_receive_limit=100)
BADGES = [
    {"id": "seedling", "name": "Seedling", "metric": "accepted", "at_least": 1},
    {"id": "green_giver", "name": "Green giver", "metric": "given_month", "at_least": 2},
    {"id": "forest", "name": "Forest", "metric": "given", "at_least": 3},
]


@pytest.fixture(params=["fast", "saga"])
async def eco_node(request: pytest.FixtureRequest, node_factory: NodeFactory) -> GatewayNode:
    node = await node_factory(RULES)
    node.clearing.force_saga = request.param == "saga"
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await admin.put_region("eu", {"name": "Europe", "eco_badges": BADGES})

    async def applied() -> bool:
        return bool((await node.clearing.settings.get()).region("eu").eco_badges)

    await eventually(applied, "the eu badges on the node")
    return node


@pytest.fixture
async def clients(eco_node: GatewayNode) -> Any:
    made: list[NotecardClient] = []

    async def make(user: str) -> NotecardClient:
        client = NotecardClient(eco_node.url, token_for(user))
        await client.connect()
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def test_badges_are_earned_at_their_thresholds_and_shown_in_the_welcome_and_admin_api(
        eco_node: GatewayNode, clients: Any) -> None:
    async with AdminClient(eco_node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "anna", "bob", region="eu")
        await befriend_all(admin, "gil", "gus")
        anna, bob = await clients("anna"), await clients("bob")
        assert anna.welcome is not None and anna.welcome.badges == ()  # the region has badges, none held
        gift = await anna.send_gift("bob")
        await bob.accept(gift.gift_id)
        declined = await anna.send_gift("bob")
        await bob.decline(declined.gift_id)  # only accepted gifts count

        shown = await admin.call("GET", "/admin/users/anna/badges")
        assert shown["region"] == "eu" and shown["earned"] == []
        assert {b["id"]: b["value"] for b in shown["badges"]} == {"seedling": 0, "green_giver": 1, "forest": 1}
        assert (await admin.call("GET", "/admin/users/bob/badges"))["earned"] == ["seedling"]

        second = await anna.send_gift("bob")
        await bob.accept(second.gift_id)
        assert (await admin.call("GET", "/admin/users/anna/badges"))["earned"] == ["green_giver"]
        later = await clients("anna")
        assert later.welcome is not None and later.welcome.badges == ("green_giver",)
        again = await clients("bob")
        assert again.welcome is not None and again.welcome.badges == ("seedling",)

        # an operator lowering a threshold changes who holds the badge at once
        await admin.put_region("eu", {"eco_badges": [{**BADGES[2], "at_least": 2}]})

        async def lowered() -> bool:
            rules = (await eco_node.clearing.settings.get()).region("eu")
            return len(rules.eco_badges) == 1
        await eventually(lowered, "the new thresholds on the node")
        assert (await admin.call("GET", "/admin/users/anna/badges"))["earned"] == ["forest"]

        # a region without badges: nothing shown
        gil = await clients("gil")
        assert gil.welcome is not None and gil.welcome.badges is None
        assert (await admin.call("GET", "/admin/users/gil/badges")) == {
            "user": "gil", "region": "global", "badges": [], "earned": []}
        with pytest.raises(AdminApiError) as missing:
            await admin.call("GET", "/admin/users/nobody/badges")
        assert (missing.value.status, missing.value.code) == (404, "UNKNOWN_USER")


async def test_the_welcome_shows_the_consent_a_region_asks_for_and_its_badges_together(
        node_factory: NodeFactory) -> None:
    """A region with both rules: the welcome reads the user's region, consent and counters
    at once (gateway/welcome.py) and shows each as the rule says."""
    node = await node_factory(RULES)
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await admin.put_region("eu", {"name": "Europe", "consent_required": True, "consent_version": "privacy-v2",
                                      "eco_badges": BADGES[:1]})

        async def applied() -> bool:
            rules = (await node.clearing.settings.get()).region("eu")
            return rules.consent_required and bool(rules.eco_badges)

        await eventually(applied, "the eu rules on the node")
        await befriend_all(admin, "ines", region="eu")
        await befriend_all(admin, "otto")
    opened: list[NotecardClient] = []

    async def welcome(user: str) -> Any:
        client = NotecardClient(node.url, token_for(user))
        await client.connect()
        opened.append(client)
        return client.welcome

    try:
        first = await welcome("ines")
        assert (first.consent_needed, first.badges) == ("privacy-v2", ())
        await opened[0].give_consent("privacy-v2")
        again = await welcome("ines")
        assert (again.consent_needed, again.badges) == (None, ())
        outside = await welcome("otto")  # a region with neither rule
        assert (outside.consent_needed, outside.badges) == (None, None)
    finally:
        for client in opened:
            await client.close()


@pytest.mark.parametrize("badges", [
    "not a list",
    [{"id": "x", "metric": "planted_trees", "at_least": 1}],
    [{"id": "x", "metric": "given", "at_least": 0}],
    [{"id": "x", "metric": "given", "at_least": True}],
    [{"id": "Bad Id", "metric": "given", "at_least": 1}],
    [{"id": "x", "metric": "given", "at_least": 1}, {"id": "x", "metric": "accepted", "at_least": 1}],
    [{"id": "x", "metric": "given", "at_least": 1, "colour": "green"}],
    [{"id": f"b{i}", "metric": "given", "at_least": 1} for i in range(21)],
])
async def test_badge_rules_that_do_not_validate_are_refused_and_store_nothing(
        eco_node: GatewayNode, badges: Any) -> None:
    with pytest.raises(SceneConfigError):
        RegionRules("us", eco_badges=badges)
    async with AdminClient(eco_node.admin_url, ADMIN_TOKEN) as admin:
        with pytest.raises(AdminApiError) as refused:
            await admin.put_region("us", {"eco_badges": badges})
        assert (refused.value.status, refused.value.code) == (400, "BAD_REQUEST")
        assert "us" not in (await admin.regions())["regions"]
