"""``notecard admin appeals / risk / risk-switches`` as an operator types them, against a
running node; every change is in the audit stream with the operator's name."""

from __future__ import annotations

import asyncio

import orjson

from gateway import GatewayNode
from risk.appeals import Appeals
from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET
from tests.test_cli import bare_env, run_cli


async def test_an_operator_freezes_lists_and_approves_an_appeal_and_sets_switches(node: GatewayNode) -> None:
    env = bare_env(NOTECARD_TOKEN_SECRET=TOKEN_SECRET, NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN,
                   NOTECARD_ADMIN_URL=node.admin_url)

    async def cli(*args: str) -> object:
        done = await asyncio.to_thread(run_cli, "admin", *args, env=env)
        assert done.returncode == 0, (args, done.stderr)
        return orjson.loads(done.stdout)

    await cli("create-user", "dora")
    frozen = await cli("risk", "dora", "--tier", "freeze", "--operator", "ops-eve")
    assert frozen["risk"]["tier"] == "freeze"  # type: ignore[index]
    await Appeals(node.redis, node.keys).file("dora", "carrier_bill", "bill-1")
    listed = await cli("appeals")
    assert [a["user"] for a in listed["appeals"]] == ["dora"]  # type: ignore[index]
    decided = await cli("appeals", "approve", "dora", "--operator", "ops-eve", "--note", "ok")
    assert decided["approved"] is True and "tier" not in decided["risk"]  # type: ignore[index]
    switches = await cli("risk-switches", "--shadow", "--rule", "model=off", "--operator", "ops-eve")
    assert switches == {"shadow": True, "rules": {"script": "enforce", "ip_ring": "enforce",
                                                  "device_farm": "enforce", "model": "off"}}
    audit = [f for _, f in await node.redis.xrange(node.keys.risk_audit())]
    assert [(f[b"what"], f.get(b"operator")) for f in audit] == [
        (b"operator_action", b"ops-eve"), (b"appeal_filed", None), (b"appeal_approved", b"ops-eve"),
        (b"switches", b"ops-eve")]


async def test_bad_switches_and_tiers_are_refused_and_change_nothing(node: GatewayNode) -> None:
    env = bare_env(NOTECARD_TOKEN_SECRET=TOKEN_SECRET, NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN,
                   NOTECARD_ADMIN_URL=node.admin_url)
    done = await asyncio.to_thread(run_cli, "admin", "risk-switches", "--rule", "nosuch=off", env=env)
    assert done.returncode == 1 and "enforce, shadow or off" in done.stderr and "Traceback" not in done.stderr
    assert await node.redis.exists(node.keys.risk_switches()) == 0
