"""A campaign survives the crash of the node issuing it: two real gateway node processes on a
real redis-server; the node that holds the campaign's lease is killed (SIGKILL) in the
middle of the campaign, and the other node's runner takes the campaign over once the lease
lapses and finishes it. Every recipient then has exactly one gift, the budget balances and
the conservation check passes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from loadtest.target import LoadTarget
from notecard.admin_client import AdminClient

pytestmark = pytest.mark.slow
RECIPIENTS = 1500
OPS = {"operator": "ops"}


async def until_status(admin: AdminClient, check: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, object] = await admin.call("GET", "/admin/campaigns/crash")
        if (check == "midway" and int(str(status["issued"])) >= RECIPIENTS // 4) or status["state"] == check:
            return status
        assert time.monotonic() < deadline, f"campaign not {check} in time: {status}"
        await asyncio.sleep(0.1)


async def test_killing_the_node_that_issues_a_campaign_leaves_it_to_another(tmp_path: Path) -> None:
    env = {"NOTECARD_CAMPAIGN_RATE_PER_S": "100", "NOTECARD_CAMPAIGN_POLL_S": "0.2",
           "NOTECARD_BRAND_MIN_FOLLOWERS": "0"}
    with LoadTarget(tmp_path, nodes=2, env=env) as deployment:
        cluster = deployment.cluster
        assert cluster is not None
        users = [f"r{i:05d}" for i in range(RECIPIENTS)]
        redis = aioredis.Redis.from_url(deployment.redis.url)
        try:
            async with AdminClient(cluster.nodes[0].admin_url, cluster.admin_token, timeout_s=120) as first:
                for start in range(0, RECIPIENTS, 500):
                    await first.bulk_users([{"user_id": u} for u in users[start : start + 500]])
                await first.create_user("brand")
                await first.call("PATCH", "/admin/business/brand", {"business": True, **OPS})
                await first.call("PUT", "/admin/kinds/brand_card", {
                    "brand": "brand", "name": "Card", "artwork": "https://cdn.example/c.png",
                    "budget_cards": 2 * RECIPIENTS, **OPS})
                await first.call("POST", "/admin/campaigns", {
                    "campaign_id": "crash", "brand": "brand", "kind": "brand_card", **OPS,
                    "ends_at_ms": int(time.time() * 1000) + 3_600_000, "recipients": [[u, 1] for u in users]})
                await until_status(first, "midway", 60)
            holder = (await redis.hget("nc:{brand}:camp:crash", "holder") or b"").decode()
            [victim] = [n for n in cluster.nodes if n.env["NOTECARD_NODE_ID"] == holder]
            [survivor] = [n for n in cluster.nodes if n is not victim]
            victim.kill()
            async with AdminClient(survivor.admin_url, cluster.admin_token, timeout_s=300) as admin:
                killed_at = await admin.call("GET", "/admin/campaigns/crash")
                assert killed_at["state"] == "running" and int(killed_at["issued"]) < RECIPIENTS
                done = await until_status(admin, "done", 120)
                assert done["issued"] == RECIPIENTS
                report = await admin.call("GET", "/admin/campaigns/crash/report")
                assert report["recipients"] == {"pending": RECIPIENTS, "accepted": 0, "declined": 0, "expired": 0,
                                                "refused": 0, "not_issued": 0}
                # one card each and no more: the brand holds exactly one card per recipient
                assert report["budget"]["brand_held"] == RECIPIENTS * 10
                assert report["balanced"]
                invariant = await admin.call("GET", "/admin/invariant")
                assert invariant["ok"], invariant["violations"]
            assert (await redis.hget("nc:{brand}:camp:crash", "holder")) is None
        finally:
            await redis.aclose()
