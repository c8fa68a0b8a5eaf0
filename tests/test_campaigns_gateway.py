"""The business channel end to end, on real gateway nodes, a real Redis (one server and a
3-shard cluster) and real WebSocket clients: business profiles and fan groups through the
admin API with their codes, a custom kind funded by a mint, a campaign issued by the nodes'
own runners, an online fan offered it live and an offline fan on connecting, pause and
resume, and the report's balance. The node fixtures check conservation after each test."""

from __future__ import annotations

import asyncio
import functools
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway import GatewayNode
from notecard import campaign_cli
from notecard.cli import build_parser
from tests.conftest import TOPOLOGIES
from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET, ClientFactory, NodeFactory, now_ms
from tests.test_cli import bare_env, run_cli

pytestmark = pytest.mark.parametrize("topology_kind", TOPOLOGIES, indirect=True)
Call = Callable[..., Awaitable[tuple[int, Any]]]
OPS = {"operator": "ops"}


@pytest.fixture
async def fast_node(node_factory: NodeFactory) -> GatewayNode:
    return await node_factory(campaign_poll_s=0.05, brand_min_followers=100)


@pytest.fixture
async def api(fast_node: GatewayNode) -> AsyncIterator[Call]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            data = None if body is None else orjson.dumps(body)
            async with session.request(method, fast_node.admin_url + path, data=data) as resp:
                return resp.status, orjson.loads(await resp.read())

        yield call


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def ok(call: Awaitable[tuple[int, Any]], status: int = 200) -> Any:
    got, body = await call
    assert got == status, body
    return body


async def test_a_campaign_through_the_admin_api_reaches_online_and_offline_fans(
        api: Call, fast_node: GatewayNode, node_factory: NodeFactory) -> None:
    for user in ("acme", "fan1", "fan2", "fan3"):
        await ok(api("POST", "/admin/users", {"user_id": user}), 201)
    # each privilege answers its own code where it is used
    kind = {"brand": "acme", "name": "Acme star", "artwork": "https://cdn.example/s.png", "budget_cards": 10, **OPS}
    status, body = await api("PUT", "/admin/kinds/acme_star", kind)
    assert (status, body["error"]) == (403, "NOT_BUSINESS")
    status, body = await api("PATCH", "/admin/business/acme", {"business": True})
    assert (status, body["error"]) == (400, "BAD_REQUEST")  # no operator: not audited, not done
    await ok(api("PATCH", "/admin/business/acme", {"business": True, "followers": 99, **OPS}))
    assert (await ok(api("PUT", "/admin/kinds/acme_star", kind), 201))["budget_units"] == 100
    ends = now_ms() + 3_600_000
    campaign = {"campaign_id": "launch", "brand": "acme", "kind": "acme_star", "ends_at_ms": ends, **OPS,
                "recipients": [["fan1", 1], ["fan2", 2]]}
    status, body = await api("POST", "/admin/campaigns", campaign)
    assert (status, body["error"]) == (403, "BELOW_FOLLOWER_THRESHOLD")
    await ok(api("PATCH", "/admin/business/acme", {"followers": 100, **OPS}))
    profile = await ok(api("GET", "/admin/business/acme"))
    assert (profile["business"], profile["followers"], profile["shop"]) == (True, 100, False)

    fan1 = await connect_fan(fast_node, "fan1")
    await ok(api("POST", "/admin/campaigns", campaign), 201)
    offer = await fan1.next_offer(30)
    assert (offer.sender, offer.kind, offer.qty, offer.expires_at_ms, offer.campaign) == (
        "acme", "acme_star", 1, ends, "launch")
    await fan1.accept(offer.gift_id)

    async def done() -> bool:
        return bool((await ok(api("GET", "/admin/campaigns/launch")))["state"] == "done")

    await until(done)
    fan2 = await connect_fan(fast_node, "fan2")  # offline while the campaign ran
    late = await fan2.next_offer(30)
    assert (late.sender, late.qty, late.campaign) == ("acme", 2, "launch")
    await fan2.decline(late.gift_id)
    report = await ok(api("GET", "/admin/campaigns/launch/report"))
    assert report["balanced"] and report["recipients"]["accepted"] == 1 and report["recipients"]["declined"] == 1
    assert report["budget"] == {"minted": 100, "brand_available": 90, "brand_held": 0, "accepted": 10,
                                "recipients_hold": 10}
    await fan1.close()
    await fan2.close()


async def connect_fan(node: GatewayNode, user: str) -> Any:
    from notecard_sdk import NotecardClient
    from tests.gateway_fixtures import token_for

    client = NotecardClient(node.url, token_for(user))
    await client.connect()
    return client


async def test_fan_groups_pause_and_resume_through_the_admin_api(api: Call, connect: ClientFactory) -> None:
    for user in ("club", "m1", "m2", "m3"):
        await ok(api("POST", "/admin/users", {"user_id": user}), 201)
    await ok(api("PATCH", "/admin/business/club", {"business": True, **OPS}))
    for level, member in enumerate(("m1", "m2", "m3"), start=1):
        await ok(api("PUT", f"/admin/business/club/fans/vip/{member}", {"level": level, **OPS}))
    assert (await ok(api("GET", "/admin/business/club/fans/vip?min_level=2")))["members"] == {"m2": 2, "m3": 3}
    assert (await ok(api("DELETE", "/admin/business/club/fans/vip/m1", OPS)))["removed"] is True
    await ok(api("PUT", "/admin/kinds/club_badge", {"brand": "club", "name": "Badge", "budget_cards": 20,
                                                    "artwork": "https://cdn.example/b.png", **OPS}), 201)
    status, body = await api("POST", "/admin/campaigns", {
        "campaign_id": "tiers", "brand": "club", "kind": "club_badge", "ends_at_ms": now_ms() + 60_000, **OPS,
        "fan_group": {"group": "vip", "min_level": 9}})
    assert (status, body["error"]) == (404, "NO_FAN_GROUP")
    created = await ok(api("POST", "/admin/campaigns", {
        "campaign_id": "tiers", "brand": "club", "kind": "club_badge", "ends_at_ms": now_ms() + 60_000, **OPS,
        "fan_group": {"group": "vip", "min_level": 2, "per_level": {"3": 4}}}), 201)
    assert created["total"] == 2
    # paused at once or already done: either way, a state the table allows
    status, body = await api("POST", "/admin/campaigns/tiers/pause", OPS)
    if status == 200:
        assert body["state"] == "paused"
        await ok(api("POST", "/admin/campaigns/tiers/resume", OPS))
    else:
        assert (status, body["error"]) == (409, "CAMPAIGN_STATE")

    async def done() -> bool:
        return bool((await ok(api("GET", "/admin/campaigns/tiers")))["state"] == "done")

    await until(done)
    m3 = await connect("m3")
    assert (await m3.next_offer(30)).qty == 4
    listed = await ok(api("GET", "/admin/campaigns"))
    assert [c["campaign_id"] for c in listed["campaigns"]] == ["tiers"]


async def test_the_cli_starts_a_campaign_from_a_file_in_parts_and_watches_it_to_the_end(
        api: Call, fast_node: GatewayNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = [f"u{i:04d}" for i in range(12)]
    await ok(api("POST", "/admin/bulk/users", {"users": [{"user_id": u} for u in ["brand", *users]]}))
    env = bare_env(NOTECARD_TOKEN_SECRET=TOKEN_SECRET, NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN,
                   NOTECARD_ADMIN_URL=fast_node.admin_url)
    cli = functools.partial(asyncio.to_thread, run_cli, env=env)
    done = await cli("campaign", "business", "brand", "--business", "--followers", "100")
    assert done.returncode == 0 and orjson.loads(done.stdout)["followers"] == 100, done.stderr
    done = await cli("campaign", "kind", "brand_pin", "--brand", "brand", "--name", "Pin", "--artwork",
                     "https://cdn.example/p.png", "--budget", "30")
    assert orjson.loads(done.stdout)["budget_units"] == 300, done.stderr
    listing = tmp_path / "fans.txt"
    listing.write_text("# the fans\n" + "\n".join(f"{u},2" if i % 2 else u for i, u in enumerate(users)) + "\n")
    monkeypatch.setattr(campaign_cli, "FILE_PART", 5)  # the file goes in three parts
    args = build_parser().parse_args(["campaign", "--url", fast_node.admin_url, "start", "spring", "--brand",
                                      "brand", "--kind", "brand_pin", "--file", str(listing)])
    started = await campaign_cli.run(args, ADMIN_TOKEN)
    assert (started["total"], started["state"]) in ((12, "running"), (12, "done"))
    shown = io.StringIO()
    watched = build_parser().parse_args(["campaign", "--url", fast_node.admin_url, "status", "spring", "--watch"])
    final = await campaign_cli.run(watched, ADMIN_TOKEN, shown)
    assert final["state"] == "done" and f"[{'#' * campaign_cli.BAR_WIDTH}] 12/12 100.0% done" in shown.getvalue()
    report = orjson.loads((await cli("campaign", "report", "spring")).stdout)
    assert report["recipients"]["pending"] == 12 and report["units"]["held"] == 18 * 10 and report["balanced"]
    status, body = await api("POST", "/admin/campaigns/spring/pause", OPS)
    assert (status, body["error"]) == (409, "CAMPAIGN_STATE")


async def test_a_part_of_an_open_list_names_its_operator_in_the_audit(api: Call, fast_node: GatewayNode) -> None:
    for user in ("acme", "fan1", "fan2"):
        await ok(api("POST", "/admin/users", {"user_id": user}), 201)
    await ok(api("PATCH", "/admin/business/acme", {"business": True, "followers": 100, **OPS}))
    await ok(api("PUT", "/admin/kinds/acme_star", {"brand": "acme", "name": "Acme star", "budget_cards": 5,
                                                    "artwork": "https://cdn.example/s.png", **OPS}), 201)
    await ok(api("POST", "/admin/campaigns", {"campaign_id": "file", "brand": "acme", "kind": "acme_star",
                                              "ends_at_ms": now_ms() + 3_600_000, "recipients": [["fan1", 1]],
                                              "open": True, **OPS}), 201)
    # no operator: refused, and the list is as it was
    status, body = await api("POST", "/admin/campaigns/file/recipients", {"recipients": [["fan2", 1]]})
    assert (status, body["error"]) == (400, "BAD_REQUEST") and "operator" in body["message"]
    assert (await ok(api("GET", "/admin/campaigns/file")))["total"] == 1
    added = await ok(api("POST", "/admin/campaigns/file/recipients", {"recipients": [["fan2", 1]], "operator": "ann"}))
    assert added["total"] == 2
    latest = (await fast_node.business.audit_log())[0]
    assert {k: latest[k] for k in ("what", "operator", "user", "campaign", "recipients")} == {
        "what": "campaign_recipients", "operator": "ann", "user": "acme", "campaign": "file", "recipients": "1"}
