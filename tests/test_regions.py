"""Regions (clearing/regions.py, docs/regions.md): each account has one, set at creation and
changed only by an operator; each region's rules are stored settings every node reads. Real
nodes on the test Redis (one instance and a cluster); the node fixtures check the
conservation invariant after each test."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from clearing.keys import DEFAULT_KEYS
from clearing.regions import RegionRules, decode_regions
from clearing.scene_config import SceneConfigError
from gateway import GatewayNode
from notecard.admin_client import AdminApiError, AdminClient
from tests.gateway_fixtures import ADMIN_TOKEN, NodeFactory


async def test_an_account_is_in_the_region_it_was_created_in_and_only_an_operator_moves_it(
        admin: AdminClient) -> None:
    assert (await admin.create_user("anna", region="eu"))["region"] == "eu"
    assert (await admin.get_user("anna"))["region"] == "eu"
    assert (await admin.create_user("omar"))["region"] == "global"
    moved = await admin.set_flags("anna", region="mena")
    assert (moved["region"], moved["verified"]) == ("mena", True)
    assert (await admin.get_user("anna"))["region"] == "mena"


@pytest.mark.parametrize("region", ["EU", "e u", "", "x" * 17, "1eu", "e{u}"])
async def test_a_malformed_region_is_refused_and_creates_nothing(admin: AdminClient, region: str) -> None:
    with pytest.raises(AdminApiError) as refused:
        await admin.create_user("anna", region=region)
    assert (refused.value.status, refused.value.code) == (400, "BAD_REQUEST")
    with pytest.raises(AdminApiError) as missing:
        await admin.get_user("anna")
    assert missing.value.code == "UNKNOWN_USER"
    await admin.create_user("anna", region="eu")
    with pytest.raises(AdminApiError) as refused:
        await admin.set_flags("anna", region=region)
    assert refused.value.code == "BAD_REQUEST"
    assert (await admin.get_user("anna"))["region"] == "eu"


async def test_bulk_upserts_set_and_change_regions(admin: AdminClient) -> None:
    first = await admin.call("POST", "/admin/bulk/users", {"users": [{"user_id": "a", "region": "sea"},
                                                                    {"user_id": "b"}]})
    assert first["succeeded"] == 2
    assert [(await admin.get_user(u))["region"] for u in ("a", "b")] == ["sea", "global"]
    again = await admin.call("POST", "/admin/bulk/users", {"users": [{"user_id": "b", "region": "eu"}]})
    assert again["results"][0]["created"] is False
    assert (await admin.get_user("b"))["region"] == "eu"


async def test_region_rules_written_on_one_node_are_what_every_node_applies(
        node_factory: NodeFactory) -> None:
    first, second = await node_factory(), await node_factory()
    async with AdminClient(first.admin_url, ADMIN_TOKEN) as one, \
            AdminClient(second.admin_url, ADMIN_TOKEN) as two:
        assert (await one.regions())["regions"] == {}
        stored = await one.put_region("eu", {"name": "Europe"})
        # every rule's field is shown, at its default ("off") unless given
        assert stored == {"region": "eu", **RegionRules("eu", "Europe").to_plain()}
        assert (await two.regions())["regions"] == {"eu": RegionRules("eu", "Europe").to_plain()}
        snapshot = await second.scenes.settings.get()
        assert snapshot.region("eu").name == "Europe"
        assert snapshot.region("sea") == RegionRules("sea")  # not configured: every rule off
        await two.call("DELETE", "/admin/regions/eu")
        assert (await one.regions())["regions"] == {}
        with pytest.raises(AdminApiError) as gone:
            await one.call("DELETE", "/admin/regions/eu")
        assert (gone.value.status, gone.value.code) == (404, "NO_REGION")


async def test_region_rules_with_an_unknown_or_bad_field_are_refused_and_store_nothing(admin: AdminClient) -> None:
    for body in ({"nmae": "Europe"}, {"name": 5}, {"name": "x" * 101}):
        with pytest.raises(AdminApiError) as refused:
            await admin.put_region("eu", body)
        assert (refused.value.status, refused.value.code) == (400, "BAD_REQUEST")
    with pytest.raises(AdminApiError) as refused:
        await admin.put_region("Europe", {})
    assert refused.value.code == "BAD_REQUEST"
    assert (await admin.regions())["regions"] == {}


async def test_a_stored_region_that_does_not_decode_has_no_rules_and_is_reported(
        node: GatewayNode, admin: AdminClient, redis: aioredis.Redis) -> None:
    await admin.put_region("eu", {"name": "Europe"})
    await redis.hset(DEFAULT_KEYS.regions(), mapping={"sea": "{not json", "mena": '{"name": 7}',
                                                       "us": '["a list"]'})
    shown = await admin.regions()
    assert shown["regions"] == {"eu": RegionRules("eu", "Europe").to_plain()}
    assert len(shown["problems"]) == 3 and all("it has no rules" in p for p in shown["problems"])
    assert (await node.scenes.settings.get()).region("mena") == RegionRules("mena")


def test_decoding_keeps_good_regions_and_names_each_bad_one() -> None:
    regions, problems = decode_regions({"eu": '{"name": "Europe"}', "bad": "[]", "x": '{"colour": 1}'})
    assert regions == {"eu": RegionRules("eu", "Europe")}
    assert problems == ["region 'bad': region 'bad' is not an object; it has no rules",
                        "region 'x': unknown region setting(s): colour; it has no rules"]
    with pytest.raises(SceneConfigError):
        RegionRules("Bad Code")
