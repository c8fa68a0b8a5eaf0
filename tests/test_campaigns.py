"""Brand campaigns against a real Redis (one server, then a 3-shard cluster): custom kinds
funded by a mint, the privileges each step checks, campaigns issued by runners racing for
the lease, a runner killed mid-batch and another resuming, offline recipients, declines and
expiries back to the brand. Every test ends with the conservation check and the campaign's
own balance (budget = accepted + the brand's available + held)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from clearing import ClearingUnavailable, GiftRecord, GiftRules, GiftState, Refusal, Refused
from clearing.business import BusinessAccounts, BusinessRefusal, BusinessRefused
from clearing.campaigns import CampaignRunner, Campaigns, campaign_gift_id
from clearing.ledger import reconcile
from clearing.testing import World
from clearing.topology import Topology
from gateway.metrics import NodeMetrics
from tests.test_metrics import value

UNIT = GiftRules().units_per_card
HOUR_MS = 3_600_000
THRESHOLD = 1000


class Shop:
    def __init__(self, w: World) -> None:
        self.w = w
        self.business = BusinessAccounts(w.redis, w.keys, w.clock)
        self.campaigns = Campaigns(w.clearing, self.business, min_followers=THRESHOLD)

    def runner(self, name: str, **kw: object) -> CampaignRunner:
        return CampaignRunner(self.campaigns, name, rate_per_s=1_000_000, **kw)  # type: ignore[arg-type]

    async def brand(self, user: str = "acme", budget: int = 100) -> None:
        await self.w.user(user, verified=False, online=False)
        await self.business.update(user, operator="ops", business=True, followers=THRESHOLD)
        await self.campaigns.define_kind(user, "acme_star", name="Acme star", artwork="https://cdn.example/star.png",
                                         budget_cards=budget, operator="ops")

    async def fans(self, n: int, online: bool = True) -> list[str]:
        users = [f"fan{i:03d}" for i in range(n)]
        for u in users:
            await self.w.user(u, verified=False, online=online)
        return users

    async def balanced(self, campaign_id: str) -> None:
        report = await self.campaigns.report(campaign_id)
        assert report.balanced, report.to_json()
        assert report.budget["accepted"] == report.budget["recipients_hold"] == report.units["accepted"]
        check = await self.w.check()
        assert check.ok, check.violations
        # the budget's mint and every gift are in the ledger: its replay equals Redis, per account
        ledger = await reconcile(self.w.redis, self.w.keys)
        assert ledger.ok, ledger.drift


@pytest.fixture
async def shop(store: Topology) -> AsyncIterator[Shop]:
    s = Shop(await World.build(store))
    yield s
    check = await s.w.check()
    assert check.ok, check.violations


async def business_refusal(call: object) -> BusinessRefusal:
    with pytest.raises(BusinessRefused) as info:
        await call  # type: ignore[misc]
    return info.value.code


async def test_kinds_need_a_verified_business_and_brand_marketing_the_follower_threshold(shop: Shop) -> None:
    await shop.w.user("corner", online=False)
    fan = (await shop.fans(1))[0]
    define = shop.campaigns.define_kind
    args = {"name": "Corner", "artwork": "https://cdn.example/c.png", "budget_cards": 5, "operator": "ops"}
    assert await business_refusal(define("corner", "corner_k", **args)) is BusinessRefusal.NOT_BUSINESS  # type: ignore[arg-type]
    assert (await shop.w.clearing.balances("corner")).available.get("corner_k", 0) == 0
    await shop.business.update("corner", operator="ops", business=True, followers=THRESHOLD - 1)
    kind = await define("corner", "corner_k", **args)  # type: ignore[arg-type]
    assert kind.brand == "corner"
    # the budget is a mint: the brand holds it, and the audit says who did it
    assert (await shop.w.clearing.balances("corner")).available["corner_k"] == 5 * UNIT
    assert await shop.campaigns.budget_units("corner", "corner_k") == 5 * UNIT
    assert await business_refusal(define("corner", "corner_k", **args)) is BusinessRefusal.KIND_EXISTS  # type: ignore[arg-type]
    whats = [e["what"] for e in await shop.business.audit_log()]
    assert whats[:3] == ["kind_funded", "kind", "business"]

    ends = shop.w.clock() + HOUR_MS
    below = shop.campaigns.create("c", "corner", "corner_k", [(fan, 1)], ends_at_ms=ends, operator="ops")
    assert await business_refusal(below) is BusinessRefusal.BELOW_FOLLOWER_THRESHOLD
    await shop.business.update("corner", operator="ops", business=False)
    group = shop.campaigns.create("c", "corner", "corner_k", [(fan, 1)], ends_at_ms=ends, operator="ops",
                                  source="fan_group")
    assert await business_refusal(group) is BusinessRefusal.NOT_BUSINESS
    await shop.business.update("corner", operator="ops", business=True, followers=THRESHOLD)
    assert (await shop.campaigns.create("c", "corner", "corner_k", [(fan, 1)], ends_at_ms=ends,
                                        operator="ops")).state == "running"
    await shop.runner("n").step()
    await shop.balanced("c")


async def test_a_campaign_offers_every_recipient_one_gift_online_or_not_and_returns_the_rest(shop: Shop) -> None:
    await shop.brand(budget=20)
    online = await shop.fans(3)
    offline = [f"off{i}" for i in range(2)]
    for u in offline:
        await shop.w.user(u, verified=False, online=False)
    ends = shop.w.clock() + HOUR_MS
    status = await shop.campaigns.create("launch", "acme", "acme_star", [(u, 2) for u in online + offline],
                                         ends_at_ms=ends, operator="ops")
    assert (status.state, status.total, status.issued) == ("running", 5, 0)

    assert await shop.runner("node-a").step() == 5
    status = await shop.campaigns.status("launch")
    assert (status.state, status.issued) == ("done", 5)
    for u in online + offline:
        [gift] = await shop.w.clearing.pending_for(u)
        assert (gift.sender, gift.kind, gift.qty, gift.campaign, gift.expires_at_ms) == (
            "acme", "acme_star", 2, "launch", ends)
    # no friendship rule and no daily counter applies, and nothing was counted
    assert await shop.w.redis.get(shop.w.keys.receive_quota("campaign", online[0])) is None

    await shop.w.clearing.accept(campaign_gift_id("launch", online[0]), online[0])
    await shop.w.clearing.decline(campaign_gift_id("launch", online[1]), online[1])
    await shop.balanced("launch")
    await shop.w.tick(HOUR_MS)
    await shop.w.clearing.expire_due()
    report = await shop.campaigns.report("launch")
    assert report.recipients == {"pending": 0, "accepted": 1, "declined": 1, "expired": 3, "refused": 0,
                                 "not_issued": 0}
    assert report.units == {"accepted": 2 * UNIT, "returned": 8 * UNIT, "held": 0}
    assert (await shop.w.clearing.balances("acme")).available["acme_star"] == 18 * UNIT
    await shop.balanced("launch")


async def test_refused_recipients_are_reported_and_cost_nothing(shop: Shop) -> None:
    await shop.brand(budget=10)
    fans = await shop.fans(2)
    await shop.w.accounts.set_flags(fans[0], banned=True)
    await shop.w.accounts.block(fans[1], "acme")
    await shop.campaigns.create("c2", "acme", "acme_star", [(fans[0], 1), (fans[1], 1), ("ghost", 1)],
                                ends_at_ms=shop.w.clock() + HOUR_MS, operator="ops")
    await shop.runner("n").step()
    report = await shop.campaigns.report("c2")
    assert report.recipients["refused"] == 3
    refused = await shop.w.redis.hgetall(shop.w.keys.campaign_refused("acme", "c2"))
    assert {k.decode(): v.decode() for k, v in refused.items()} == {
        fans[0]: "RECIPIENT_BANNED", fans[1]: "BLOCKED", "ghost": "UNKNOWN_USER"}
    assert (await shop.w.clearing.balances("acme")).available["acme_star"] == 10 * UNIT
    await shop.balanced("c2")


async def test_a_campaign_beyond_the_budget_or_of_another_brands_kind_is_refused(shop: Shop) -> None:
    await shop.brand(budget=3)
    fans = await shop.fans(2)
    ends = shop.w.clock() + HOUR_MS
    create = shop.campaigns.create
    assert await business_refusal(create("big", "acme", "acme_star", [(f, 2) for f in fans], ends_at_ms=ends,
                                         operator="ops")) is BusinessRefusal.BUDGET_EXCEEDED
    await shop.w.user("rival", online=False)
    await shop.business.update("rival", operator="ops", business=True, followers=THRESHOLD)
    assert await business_refusal(create("steal", "rival", "acme_star", [(fans[0], 1)], ends_at_ms=ends,
                                         operator="ops")) is BusinessRefusal.NOT_KIND_OWNER
    with pytest.raises(Refused) as info:
        await create("old", "acme", "acme_star", [(fans[0], 1)], ends_at_ms=shop.w.clock(), operator="ops")
    assert info.value.code is Refusal.BAD_REQUEST
    assert await shop.campaigns.all() == {}


async def test_tiered_issuing_to_a_fan_group_by_level(shop: Shop) -> None:
    await shop.brand(budget=50)
    fans = await shop.fans(4)
    for level, fan in enumerate(fans, start=1):
        await shop.business.set_member("acme", "club", fan, level, operator="ops")
    assert await shop.business.remove_member("acme", "club", fans[3], operator="ops")
    recipients = await shop.campaigns.fan_group_recipients("acme", "club", 2, {2: 1, 3: 5})
    assert recipients == [(fans[1], 1), (fans[2], 5)]
    assert await business_refusal(shop.campaigns.fan_group_recipients("acme", "club", 9)) is \
        BusinessRefusal.NO_FAN_GROUP
    await shop.campaigns.create("tier", "acme", "acme_star", recipients, ends_at_ms=shop.w.clock() + HOUR_MS,
                                operator="ops", source="fan_group")
    await shop.runner("n").step()
    assert [g.qty for g in await shop.w.clearing.pending_for(fans[2])] == [5]
    await shop.balanced("tier")


async def test_followers_are_found_from_the_follows(shop: Shop) -> None:
    await shop.brand()
    fans = await shop.fans(3)
    await shop.w.accounts.follow(fans[0], "acme")
    await shop.w.accounts.follow(fans[2], "acme")
    assert await shop.campaigns.follower_recipients("acme", 2) == [(fans[0], 2), (fans[2], 2)]


async def test_pause_stops_issuing_resume_continues_cancel_ends(shop: Shop) -> None:
    await shop.brand(budget=50)
    fans = await shop.fans(6)
    await shop.campaigns.create("p", "acme", "acme_star", [(f, 1) for f in fans],
                                ends_at_ms=shop.w.clock() + HOUR_MS, operator="ops")
    await shop.campaigns.change("p", "pause", operator="ops")
    assert await shop.runner("n").step() == 0
    assert (await shop.campaigns.status("p")).state == "paused"
    assert await business_refusal(shop.campaigns.change("p", "pause", operator="ops")) is \
        BusinessRefusal.CAMPAIGN_STATE
    await shop.campaigns.change("p", "resume", operator="ops")
    assert await shop.runner("n", batch=2).run_campaign("p", "acme") == 6
    assert (await shop.campaigns.status("p")).state == "done"
    assert await business_refusal(shop.campaigns.change("p", "cancel", operator="ops")) is \
        BusinessRefusal.CAMPAIGN_STATE
    await shop.balanced("p")


async def test_a_closed_window_ends_the_campaign(shop: Shop) -> None:
    await shop.brand(budget=10)
    fans = await shop.fans(2)
    await shop.campaigns.create("late", "acme", "acme_star", [(f, 1) for f in fans],
                                ends_at_ms=shop.w.clock() + 1000, operator="ops")
    await shop.w.tick(1000)
    assert await shop.runner("n").step() == 0
    status = await shop.campaigns.status("late")
    assert (status.state, status.issued) == ("ended", 0)
    await shop.balanced("late")


class _Killed(CampaignRunner):
    """A runner that stops dead after ``after`` gifts, in the middle of a batch, as a node
    killed there would: its task never returns and is cancelled."""

    def __init__(self, *args: object, after: int, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.left = after
        self.stuck = asyncio.Event()

    async def _issue(self, *args: object) -> bool:
        if self.left == 0:
            self.stuck.set()
            await asyncio.Event().wait()
        self.left -= 1
        return await super()._issue(*args)  # type: ignore[arg-type]


async def test_a_runner_killed_mid_batch_is_resumed_by_another_and_every_recipient_gets_one_card(
        shop: Shop) -> None:
    await shop.brand(budget=200)
    fans = await shop.fans(40, online=False)
    await shop.campaigns.create("crash", "acme", "acme_star", [(f, 1 + i % 3) for i, f in enumerate(fans)],
                                ends_at_ms=shop.w.clock() + HOUR_MS, operator="ops")
    lease = 5000
    first = _Killed(shop.campaigns, "node-a", rate_per_s=1_000_000, batch=16, concurrency=4, lease_ms=lease,
                    after=23)
    task = asyncio.create_task(first.run_campaign("crash", "acme"))
    await asyncio.wait_for(first.stuck.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    status = await shop.campaigns.status("crash")
    assert (status.state, status.issued) == ("running", 16)  # the second batch was cut mid-way
    await shop.balanced("crash")

    second = shop.runner("node-b", batch=16, lease_ms=lease)
    assert await second.step() == 0  # the dead runner's lease is still current
    await shop.w.tick(lease)
    assert await second.step() == 40 - 16
    status = await shop.campaigns.status("crash")
    assert (status.state, status.issued) == ("done", 40)
    for i, fan in enumerate(fans):
        [gift] = await shop.w.clearing.pending_for(fan)
        assert (gift.qty, gift.state) == (1 + i % 3, GiftState.PENDING)
    held = (await shop.w.clearing.balances("acme")).held["acme_star"]
    assert held == sum(1 + i % 3 for i in range(40)) * UNIT
    await shop.balanced("crash")


async def test_a_batch_cut_by_an_outage_is_counted_failed_then_issued_again_and_counted_once(
        shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis unavailable in the middle of a batch: the runner gives the batch up, the node's
    failed-batches counter shows it, and the next pass issues the batch again; the gift whose
    reply was lost is found made, and every recipient is counted once."""
    await shop.brand(budget=100)
    fans = await shop.fans(10, online=False)
    await shop.campaigns.create("outage", "acme", "acme_star", [(f, 1) for f in fans],
                                ends_at_ms=shop.w.clock() + HOUR_MS, operator="ops")
    clearing = shop.w.clearing
    issue, calls = clearing.issue, 0

    async def reply_lost_once(*args: Any, **kw: Any) -> GiftRecord:
        nonlocal calls
        calls += 1
        made = await issue(*args, **kw)
        if calls == 6:  # in the second batch: the gift is made, its reply never comes
            raise ClearingUnavailable("redis unavailable: TimeoutError: injected")
        return made

    monkeypatch.setattr(clearing, "issue", reply_lost_once)
    runner = shop.runner("n", batch=4, concurrency=1)
    metrics = NodeMetrics()
    metrics.watch_campaigns(runner)

    def shown() -> tuple[float | None, float | None]:
        text = metrics.render().decode()
        return (value(text, "notecard_campaign_failed_batches_total"),
                value(text, 'notecard_campaign_recipients_total{outcome="issued"}'))

    assert shown() == (0.0, 0.0)
    assert await runner.step() == 4  # the first batch; the second was given up
    assert (runner.failed_batches, runner.issued) == (1, 4)
    assert shown() == (1.0, 4.0)
    status = await shop.campaigns.status("outage")
    assert (status.state, status.issued) == ("running", 4)
    await shop.balanced("outage")

    assert await runner.step() == 6  # the second batch again, then the last
    assert shown() == (1.0, 10.0)
    status = await shop.campaigns.status("outage")
    assert (status.state, status.issued) == ("done", 10)
    for fan in fans:
        assert len(await clearing.pending_for(fan)) == 1
    assert (await clearing.balances("acme")).held["acme_star"] == 10 * UNIT
    await shop.balanced("outage")


async def test_two_runners_at_once_give_every_recipient_one_card(shop: Shop) -> None:
    await shop.brand(budget=100)
    fans = await shop.fans(30, online=False)
    await shop.campaigns.create("race", "acme", "acme_star", [(f, 1) for f in fans],
                                ends_at_ms=shop.w.clock() + HOUR_MS, operator="ops")
    done = await asyncio.gather(shop.runner("a", batch=7).step(), shop.runner("b", batch=7).step())
    assert sum(done) == 30
    for fan in fans:
        assert len(await shop.w.clearing.pending_for(fan)) == 1
    assert (await shop.w.clearing.balances("acme")).held["acme_star"] == 30 * UNIT
    await shop.balanced("race")


async def test_a_long_list_is_loaded_in_parts_then_started_within_the_budget(shop: Shop) -> None:
    await shop.brand(budget=5)
    fans = await shop.fans(4)
    ends = shop.w.clock() + HOUR_MS
    status = await shop.campaigns.create("file", "acme", "acme_star", [(fans[0], 1), (fans[1], 1)],
                                         ends_at_ms=ends, operator="ops", open_list=True)
    assert (status.state, status.total) == ("loading", 2)
    assert await shop.runner("n").step() == 0  # nothing is issued while it loads
    await shop.campaigns.add_recipients("file", [(fans[2], 2), (fans[3], 2)], operator="ops")
    assert await business_refusal(shop.campaigns.start("file", operator="ops")) is BusinessRefusal.BUDGET_EXCEEDED
    await shop.campaigns.fund_kind("acme", "acme_star", 1, operator="ops")
    assert (await shop.campaigns.start("file", operator="ops")).state == "running"
    assert await business_refusal(shop.campaigns.add_recipients("file", [("x", 1)], operator="ops")) is \
        BusinessRefusal.CAMPAIGN_STATE
    assert await shop.runner("n").step() == 4
    await shop.balanced("file")


async def test_a_creation_that_stopped_before_its_record_may_be_made_again_by_its_brand(shop: Shop) -> None:
    await shop.brand(budget=5)
    fans = await shop.fans(1)
    # as a crash right after the id was registered leaves it
    await shop.w.redis.hset(shop.w.keys.campaigns(), "half", "acme")
    ends = shop.w.clock() + HOUR_MS
    assert await shop.runner("n").step() == 0
    status = await shop.campaigns.create("half", "acme", "acme_star", [(fans[0], 1)], ends_at_ms=ends, operator="ops")
    assert status.state == "running"
    again = shop.campaigns.create("half", "acme", "acme_star", [(fans[0], 1)], ends_at_ms=ends, operator="ops")
    assert await business_refusal(again) is BusinessRefusal.CAMPAIGN_EXISTS
    await shop.runner("n").step()
    await shop.balanced("half")
