"""Regional card art (clearing/skins.py, docs/regions.md "Regional card art"): a catalogue of
skins per card kind and region, managed through the admin API; offers and balances name the
skin of the recipient's (owner's) region, and ``get_skins`` lists what a region may see.
Real nodes on the test Redis (one instance and a cluster), SDK clients over WebSockets; the
node fixtures check the conservation invariant after each test."""

from __future__ import annotations

from typing import Any

import pytest

from clearing.scene_config import SceneConfigError
from clearing.skins import MAX_REGION_SKINS, Skin, decode_skins, kind_art, region_art
from notecard.admin_client import AdminApiError, AdminClient
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ClientFactory, befriend_all

BOTH = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)

TIGER = {"kind": "note", "name": "Tiger", "image_url": "https://cdn.example/sea/tiger.png", "regions": ["sea"]}
LANTERN = {"kind": "note", "name": "Lantern", "image_url": "https://cdn.example/mena/lantern.png",
           "regions": ["mena"], "optional": True}
ELEPHANT = {"kind": "note", "name": "Elephant", "image_url": "https://cdn.example/sea/elephant.png",
            "regions": ["sea", "mena"], "optional": True}


async def _catalogue(admin: AdminClient) -> None:
    for skin_id, body in (("sea-tiger", TIGER), ("mena-lantern", LANTERN), ("elephant", ELEPHANT)):
        await admin.call("PUT", f"/admin/skins/{skin_id}", body)


@BOTH
async def test_offers_and_balances_carry_the_recipients_regional_art(
        admin: AdminClient, connect: ClientFactory) -> None:
    await _catalogue(admin)
    await befriend_all(admin, "alice", cards=5)
    await befriend_all(admin, "bob", cards=5, region="sea")
    await befriend_all(admin, "omar", cards=5, region="mena")
    for a, b in (("alice", "bob"), ("bob", "alice")):
        await admin.follow(a, b, 0)
    alice, bob, omar = await connect("alice"), await connect("bob"), await connect("omar")

    sent = await alice.send_gift("bob", 1)
    offer = await bob.next_offer(5)
    assert offer.gift_id == sent.gift_id and offer.skin == "sea-tiger"
    accepted = await bob.accept(offer.gift_id)
    assert accepted.skin == "sea-tiger"
    assert (await bob.next_outcome(5)).skin == "sea-tiger"
    # the other way: alice's region ("global") has no art of its own
    back = await bob.send_gift("alice", 1)
    assert (await alice.next_offer(5)).skin is None
    await alice.decline(back.gift_id)

    assert (await bob.balance()).skins == {"note": "sea-tiger"}
    assert (await alice.balance()).skins is None
    assert (await omar.balance()).skins is None  # mena's skins are optional: none is its own

    assert [(s.skin_id, s.optional) for s in await bob.skins()] == [("elephant", True), ("sea-tiger", False)]
    assert [s.skin_id for s in await omar.skins()] == ["elephant", "mena-lantern"]
    assert await alice.skins() == ()


async def test_the_catalogue_is_managed_through_the_admin_api(admin: AdminClient) -> None:
    await _catalogue(admin)
    shown = await admin.call("GET", "/admin/skins")
    assert [s["skin_id"] for s in shown["skins"]] == ["elephant", "mena-lantern", "sea-tiger"]
    assert shown["problems"] == []
    assert shown["skins"][2] == {"skin_id": "sea-tiger", **TIGER, "optional": False}
    # a second art of sea's own for notes would leave clients guessing: refused
    with pytest.raises(AdminApiError) as clash:
        await admin.call("PUT", "/admin/skins/sea-monkey", {**TIGER, "name": "Monkey"})
    assert (clash.value.status, clash.value.code) == (400, "BAD_REQUEST") and "sea-tiger" in clash.value.message
    # ... but as an option it may join, and the same skin may be replaced
    await admin.call("PUT", "/admin/skins/sea-monkey", {**TIGER, "name": "Monkey", "optional": True})
    await admin.call("PUT", "/admin/skins/sea-tiger", {**TIGER, "name": "Tiger II"})
    await admin.call("DELETE", "/admin/skins/sea-monkey")
    with pytest.raises(AdminApiError) as gone:
        await admin.call("DELETE", "/admin/skins/sea-monkey")
    assert (gone.value.status, gone.value.code) == (404, "NO_SKIN")
    names = {s["skin_id"]: s["name"] for s in (await admin.call("GET", "/admin/skins"))["skins"]}
    assert names == {"elephant": "Elephant", "mena-lantern": "Lantern", "sea-tiger": "Tiger II"}


@pytest.mark.parametrize("body", [
    {**TIGER, "kind": "diamond"},  # not a configured card kind
    {**TIGER, "image_url": "ftp://cdn.example/x.png"}, {**TIGER, "image_url": "https://a b"},
    {**TIGER, "regions": []}, {**TIGER, "regions": ["SEA"]}, {**TIGER, "regions": "sea"},
    {**TIGER, "name": ""}, {**TIGER, "optional": "yes"}, {**TIGER, "colour": "red"},
    {k: v for k, v in TIGER.items() if k != "image_url"},
])
async def test_a_bad_skin_is_refused_and_stores_nothing(admin: AdminClient, body: dict[str, Any]) -> None:
    with pytest.raises(AdminApiError) as refused:
        await admin.call("PUT", "/admin/skins/x", body)
    assert (refused.value.status, refused.value.code) == (400, "BAD_REQUEST")
    assert (await admin.call("GET", "/admin/skins"))["skins"] == []


def test_a_stored_catalogue_that_does_not_read_or_clashes_is_reported_not_applied() -> None:
    def doc(name: str) -> str:
        return f'{{"kind": "note", "name": "{name}", "image_url": "https://x/{name}", "regions": ["sea"]}}'

    skins, problems = decode_skins({"a": doc("A"), "b": doc("B"), "c": "{not json"})
    assert list(skins) == ["a"] and len(problems) == 2
    assert region_art(skins, "sea") == {"note": "a"} and region_art(skins, "eu") == {}
    assert kind_art(skins, "note") == {"sea": "a"} and kind_art(skins, "gold_note") == {}
    with pytest.raises(SceneConfigError):
        Skin("x", "note", "X", "https://x", ())


async def test_a_region_sees_no_more_skins_than_one_reply_carries(admin: AdminClient,
                                                                  connect: ClientFactory) -> None:
    """Every skin a region sees goes in one ``skins`` frame (64 KiB): a skin that would make
    it more than MAX_REGION_SKINS is refused, for each region it names, and changes nothing."""
    for i in range(MAX_REGION_SKINS):
        await admin.call("PUT", f"/admin/skins/opt-{i}", {**ELEPHANT, "regions": ["sea"]})
    with pytest.raises(AdminApiError) as full:
        await admin.call("PUT", "/admin/skins/one-more", {**LANTERN, "regions": ["mena", "sea"]})
    assert (full.value.status, full.value.code) == (400, "BAD_REQUEST") and "'sea'" in full.value.message
    stored = (await admin.call("GET", "/admin/skins"))["skins"]
    assert len(stored) == MAX_REGION_SKINS and "one-more" not in {s["skin_id"] for s in stored}
    # replacing one already counted, and another region's own art, still work
    await admin.call("PUT", "/admin/skins/opt-0", {**ELEPHANT, "regions": ["sea"], "name": "Elephant II"})
    await admin.call("PUT", "/admin/skins/mena-lantern", LANTERN)
    await admin.create_user("sia", region="sea")
    sia = await connect("sia")
    assert len(await sia.skins()) == MAX_REGION_SKINS
