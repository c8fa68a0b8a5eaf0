"""The risk engine end to end: real WebSocket clients, a gateway node, the scorer consuming
the node's events from Redis, and the admin API. Conservation is checked after each test
(``node_factory``'s teardown); pending gifts of a banned or frozen account expire as usual.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from clearing import GiftRules
from gateway.node import GatewayNode
from notecard.admin_client import AdminApiError, AdminClient
from notecard_sdk import NotecardClient
from notecard_sdk.errors import GiftRefused
from risk.actions import FREEZE_MS
from risk.model import load_model
from risk.scorer import Scorer, expand
from tests.gateway_fixtures import ADMIN_TOKEN, befriend_all, token_for

RULES = GiftRules(daily_send_limit=100, daily_receive_limit=100)
Connect = Callable[..., Awaitable[NotecardClient]]


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _refusal(call: Awaitable[Any]) -> GiftRefused:
    with pytest.raises(GiftRefused) as info:
        await call
    return info.value


@pytest.fixture
async def risk_node(node_factory: Callable[..., Awaitable[GatewayNode]]) -> GatewayNode:
    return await node_factory(RULES)


async def _client(node: GatewayNode, user: str, clients: list[NotecardClient], **kwargs: Any) -> NotecardClient:
    app = kwargs.pop("app", "main")
    client = NotecardClient(node.url, token_for(user, app=app), **kwargs)
    await client.connect()
    clients.append(client)
    return client


async def test_sends_are_attributed_to_user_device_address_and_app(risk_node: GatewayNode) -> None:
    clients: list[NotecardClient] = []
    async with AdminClient(risk_node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "sig-a", "sig-b")
    try:
        a = await _client(risk_node, "sig-a", clients, device="phone-sig-a", app="huoshan")
        await _client(risk_node, "sig-b", clients)
        await a.send_gift("sig-b")
        stream = risk_node.keys.risk_events()

        async def events() -> list[dict[str, str]]:
            # the node's flushes, each one entry of events (risk/signals.py), as the scorer reads them
            return [fields for _, fields in expand(await risk_node.redis.xrange(stream))]

        async def both_recorded() -> bool:
            kinds = {(f["k"], f["u"]) for f in await events()}
            return ("send", "sig-a") in kinds and ("hello", "sig-b") in kinds

        await _eventually(both_recorded, "the hello and the send in the events stream")
        send = next(f for f in await events() if f["k"] == "send")
        assert (send["d"], send["ip"], send["app"], send["to"], send["code"]) == (
            "phone-sig-a", "127.0.0.1", "huoshan", "sig-b", "OK")
    finally:
        for c in clients:
            await c.close()


async def test_a_script_is_banned_its_device_refused_in_every_app_and_an_approved_appeal_lifts_it(
        risk_node: GatewayNode) -> None:
    clients: list[NotecardClient] = []
    scorer = Scorer(risk_node.redis, risk_node.keys, load_model(), name="test-scorer")
    await scorer.ensure_group()
    async with AdminClient(risk_node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "bot-1", "fan-1", "other-1", cards=50)
        try:
            bot = await _client(risk_node, "bot-1", clients, device="farm-phone-7", app="toutiao")
            await _client(risk_node, "fan-1", clients)
            # Bulk sending: ten gifts as fast as the connection allows.
            for _ in range(10):
                await bot.send_gift("fan-1")

            async def banned() -> bool:
                await scorer.step(block_ms=10)
                return (await admin.risk("bot-1"))["risk"].get("tier") == "ban"

            await _eventually(banned, "the scorer to ban the script")
            assert (await _refusal(bot.send_gift("fan-1"))).code == "SENDER_BANNED"

            # Another account on the same device, through another linked app.
            other = await _client(risk_node, "other-1", clients, device="farm-phone-7", app="huoshan")
            assert (await _refusal(other.send_gift("fan-1"))).code == "DEVICE_BANNED"
            # ... and from another device it may send.
            elsewhere = await _client(risk_node, "other-1", clients, device="own-phone", app="huoshan")
            await elsewhere.send_gift("fan-1")

            # The appeal: the evidence the ban's tier asks for, once.
            assert (await _refusal(bot.appeal("face_verification", "upload-1"))).code == "APPEAL_KIND"
            done = await bot.appeal("notarised_document", "upload-2")
            assert done.item == "notarised_document"
            assert (await _refusal(bot.appeal("notarised_document", "upload-3"))).code == "APPEAL_PENDING"
            listed = (await admin.appeals())["appeals"]
            assert [(a["user"], a["tier"], a["evidence"]) for a in listed] == [("bot-1", "ban", "upload-2")]

            decided = await admin.decide_appeal("bot-1", approve=True, operator="ops-ann", note="checked")
            assert decided["approved"] is True and "tier" not in decided["risk"]
            await bot.send_gift("fan-1")
            await other.send_gift("fan-1")  # the device ban went with it
            assert (await admin.appeals())["appeals"] == []

            audit = [f for _, f in await risk_node.redis.xrange(risk_node.keys.risk_audit())]
            whats = [f[b"what"] for f in audit]
            assert whats.index(b"decision") < whats.index(b"appeal_filed") < whats.index(b"appeal_approved")
            decision = next(f for f in audit if f[b"what"] == b"decision" and f[b"tier"] == b"ban")
            assert (decision[b"tier"], decision[b"rule"], decision[b"model"]) == (
                b"ban", b"script", load_model().version.encode())
            assert decision[b"top"].startswith(b"[[")
            approved = next(f for f in audit if f[b"what"] == b"appeal_approved")
            assert (approved[b"operator"], approved[b"lifted"]) == (b"ops-ann", b"ban")
        finally:
            for c in clients:
                await c.close()


async def test_a_frozen_account_learns_until_when_and_its_appeal_can_be_rejected(risk_node: GatewayNode) -> None:
    clients: list[NotecardClient] = []
    async with AdminClient(risk_node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "ice-1", "ice-2")
        try:
            a = await _client(risk_node, "ice-1", clients, device="ice-phone")
            await _client(risk_node, "ice-2", clients)
            pending = await a.send_gift("ice-2")  # in flight when the freeze comes
            before = int(time.time() * 1000)
            await admin.set_risk("ice-1", "freeze", operator="ops-bo")
            refusal = await _refusal(a.send_gift("ice-2"))
            assert refusal.code == "ACCOUNT_FROZEN"
            assert refusal.until_ms is not None
            assert before + FREEZE_MS <= refusal.until_ms <= before + FREEZE_MS + 60_000
            assert (await _refusal(a.appeal("face_verification", "x"))).code == "APPEAL_KIND"
            await a.appeal("carrier_bill", "bill-7")
            rejected = await admin.decide_appeal("ice-1", approve=False, operator="ops-bo")
            assert rejected["approved"] is False and rejected["risk"]["tier"] == "freeze"
            assert (await _refusal(a.send_gift("ice-2"))).code == "ACCOUNT_FROZEN"
            with pytest.raises(AdminApiError):
                await admin.decide_appeal("ice-1", approve=True, operator="ops-bo")  # nothing open any more
            assert pending.state == "pending"  # the earlier gift resolves as usual (the teardown checks the ledger)
        finally:
            for c in clients:
                await c.close()


async def test_an_account_with_nothing_to_appeal_is_told_so(risk_node: GatewayNode,
                                                            ) -> None:
    clients: list[NotecardClient] = []
    async with AdminClient(risk_node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "calm-1")
    try:
        c = await _client(risk_node, "calm-1", clients)
        assert (await _refusal(c.appeal("face_verification", "x"))).code == "NOTHING_TO_APPEAL"
    finally:
        for cl in clients:
            await cl.close()


async def test_the_node_counts_risk_refusals_by_code_and_tier_and_the_signals_it_wrote(
        risk_node: GatewayNode) -> None:
    from tests.test_metrics import value
    from tests.test_operations import http_get

    async def metrics() -> str:
        status, body = await http_get(f"{risk_node.admin_url}/metrics")
        assert status == 200
        return body.decode()

    text = await metrics()
    # there from the start, at zero: a rate() has a series before the first refusal
    assert value(text, 'notecard_risk_refusals_total{code="ACCOUNT_FROZEN",tier="freeze"}') == 0
    assert value(text, 'notecard_risk_refusals_total{code="DEVICE_BANNED",tier="ban"}') == 0
    assert value(text, 'notecard_risk_signals_total{outcome="dropped"}') == 0
    clients: list[NotecardClient] = []
    async with AdminClient(risk_node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "met-1", "met-2")
        try:
            a = await _client(risk_node, "met-1", clients, device="met-phone")
            await _client(risk_node, "met-2", clients)
            await a.send_gift("met-2")
            await admin.set_risk("met-1", "freeze", operator="ops-m")
            assert (await _refusal(a.send_gift("met-2"))).code == "ACCOUNT_FROZEN"
            assert (await _refusal(a.send_gift("met-2"))).code == "ACCOUNT_FROZEN"
        finally:
            for c in clients:
                await c.close()
    text = await metrics()
    assert value(text, 'notecard_risk_refusals_total{code="ACCOUNT_FROZEN",tier="freeze"}') == 2
    assert value(text, 'notecard_refusals_total{code="ACCOUNT_FROZEN"}') == 2  # the same, among all refusals
    assert value(text, 'notecard_risk_refusals_total{code="RISK_LIMITED",tier="limit"}') == 0

    async def written() -> bool:
        # two hellos and three sends, written in the node's next batch
        return (value(await metrics(), 'notecard_risk_signals_total{outcome="written"}') or 0) >= 5

    await _eventually(written, "the node's risk signals to be written")
    assert value(await metrics(), "notecard_risk_signals_queued") == 0
