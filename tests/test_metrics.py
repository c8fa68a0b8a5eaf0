"""The node's Prometheus series: every one README names is exported by a running node,
under exactly that name (PromQL copied from README must find it), and nothing else is."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from gateway import GatewayNode
from gateway.metrics import NodeMetrics, package_version
from notecard.admin_client import AdminClient
from notecard_sdk import GiftRefused
from tests.gateway_fixtures import ADMIN_TOKEN, ClientFactory, NodeFactory, befriend_all, eventually
from tests.test_operations import http_get

ROOT = Path(__file__).resolve().parent.parent
_SERIES = re.compile(r"`((?:notecard|process)_[a-z_]+)(?:\{([a-z_,]+)\})?`")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def readme_series() -> dict[str, set[str]]:
    """Series README's Metrics section names, with the labels it gives them; ``X_bucket``
    followed by `` / `_sum` / `_count` `` names all three."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("- **Metrics**"):readme.index("- **Logs**")]
    named: dict[str, set[str]] = {}
    for match in _SERIES.finditer(section):
        name, labels = match.group(1), set(filter(None, (match.group(2) or "").split(",")))
        named[name] = labels
        if name.endswith("_bucket"):
            base = name.removesuffix("_bucket")
            named[base + "_sum"] = named[base + "_count"] = labels - {"le"}
    return named


def exposed(text: str) -> dict[str, list[dict[str, str]]]:
    """Series name -> label sets of its samples; a family declared with no sample yet
    (a labelled counter nothing has counted) is there with no label sets."""
    series: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            for suffix in ("_bucket", "_sum", "_count") if kind == "histogram" else ("",):
                series.setdefault(name + suffix, [])
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, line
            labels = dict(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            series.setdefault(match.group(1), []).append(labels)
    return series


def value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


@pytest.fixture
def fast_gauges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.node.LEDGER_GAUGES_S", 0.2)


async def metrics_text(node: GatewayNode) -> str:
    status, body = await http_get(f"http://127.0.0.1:{node.probe_port}/metrics")
    assert status == 200
    return body.decode()


async def test_every_series_readme_names_is_exported_and_nothing_else(
    node_factory: NodeFactory, connect: ClientFactory, fast_gauges: None
) -> None:
    node = await node_factory(probe_port=0)
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "alice", "bob")
        alice, bob = await connect("alice", url=node.url), await connect("bob", url=node.url)
        await alice.send_gift("bob")
        await bob.accept((await bob.next_offer(5)).gift_id)
        with pytest.raises(GiftRefused):
            await alice.send_gift("alice")
        await admin.invariant()
    text = await metrics_text(node)
    series = exposed(text)
    named = readme_series()
    assert len(named) > 30
    missing = sorted(set(named) - set(series))
    assert missing == [], f"README names series the node does not export: {missing}"
    undocumented = sorted(set(series) - set(named))
    assert undocumented == [], f"exported but not in README: {undocumented}"
    for name, labels in named.items():
        for sample in series[name]:
            assert set(sample) == labels, (name, sample, labels)
    assert not any(name.endswith("_created") for name in series)
    assert 'notecard_gifts_total{outcome="accepted"} 1.0' in text
    assert 'notecard_gifts_total{outcome="sent"} 1.0' in text
    assert 'notecard_gifts_total{outcome="refused"} 1.0' in text  # the self-gift
    assert 'notecard_refusals_total{code="SELF_GIFT"} 1.0' in text
    assert 'notecard_refusals_total{code="INTERNAL"} 0.0' in text  # there before the first one
    assert f'notecard_build_info{{python="{value_of_python()}",version="{package_version()}"}} 1.0' in text
    assert (value(text, "process_resident_memory_bytes") or 0) > 0


def value_of_python() -> str:
    import platform

    return platform.python_version()


async def test_pending_gifts_and_held_units_follow_the_ledger(
    node: GatewayNode, node_factory: NodeFactory, connect: ClientFactory, fast_gauges: None
) -> None:
    """Each node reports its share of the slots (the sweeper's), so the deployment's numbers
    are the sum over its nodes, whichever node's share the gift fell in."""
    other = await node_factory(probe_port=0)
    async with AdminClient(other.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "alice", "bob")
    alice, bob = await connect("alice", url=other.url), await connect("bob", url=other.url)

    async def totals() -> tuple[float, float]:
        pending = held = 0.0
        for n in (node, other):
            _, body = await http_get(f"{n.admin_url}/metrics")
            text = body.decode()
            pending += value(text, "notecard_pending_gifts") or 0.0
            held += value(text, 'notecard_held_units{kind="note"}') or 0.0
        return pending, held

    async def until(expected: tuple[float, float]) -> None:
        # Generous: the two nodes split the slots only once each has seen the other's
        # heartbeat; the whole test took 30 s on a busy machine.
        deadline = time.monotonic() + 90
        while await totals() != expected:
            assert time.monotonic() < deadline, f"gauges never summed to {expected}: {await totals()}"
            await asyncio.sleep(0.1)

    await until((0.0, 0.0))
    gift = await alice.send_gift("bob", qty=2)
    await until((1.0, 20.0))
    await bob.decline(gift.gift_id)
    await until((0.0, 0.0))


async def test_the_event_loop_lag_is_sampled(node_factory: NodeFactory) -> None:
    node = await node_factory(probe_port=0)
    await _until(node, lambda t: (value(t, "notecard_event_loop_lag_seconds_count") or 0) >= 2)
    # Block the loop longer than a sampling period, as a slow callback would: the sample
    # due meanwhile wakes at least 0.2 s late.
    time.sleep(0.7)  # noqa: ASYNC251  (the point: a callback that blocks the loop)
    text = await _until(node, lambda t: (value(t, "notecard_event_loop_lag_seconds_sum") or 0) >= 0.15)
    assert value(text, 'notecard_event_loop_lag_seconds_bucket{le="0.1"}') is not None


def test_send_queue_depths_are_read_when_scraped() -> None:
    metrics = NodeMetrics()
    depths = [3, 5, 0]
    metrics.watch_send_queues(lambda: depths)
    text = metrics.render().decode()
    assert value(text, "notecard_send_queue_frames") == 8.0
    assert value(text, "notecard_send_queue_max_frames") == 5.0
    depths.clear()
    text = metrics.render().decode()
    assert (value(text, "notecard_send_queue_frames"), value(text, "notecard_send_queue_max_frames")) == (0.0, 0.0)


async def _until(node: GatewayNode, condition: object, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = await metrics_text(node)
        if condition(text):  # type: ignore[operator]
            return text
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


ISSUED = 'notecard_campaign_recipients_total{outcome="issued"}'
REFUSED = 'notecard_campaign_recipients_total{outcome="refused"}'
LEASES = "notecard_campaign_leases_held"
PAUSED = "notecard_campaigns_paused"


async def test_the_campaign_runner_shows_its_lease_a_pause_and_each_recipient_once(
        node_factory: NodeFactory) -> None:
    # 200 recipients a batch, paced to 200 a second: the lease is held for a second or more
    node = await node_factory(probe_port=0, campaign_poll_s=0.05, campaign_rate_per_s=200.0, brand_min_followers=0)
    ops = {"operator": "ops"}

    async def reads(series: str) -> float | None:
        return value(await metrics_text(node), series)

    text = await metrics_text(node)
    assert [value(text, s) for s in (ISSUED, REFUSED, LEASES, PAUSED)] == [0.0, 0.0, 0.0, 0.0]
    assert value(text, "notecard_campaign_failed_batches_total") == 0.0
    ghosts = [[f"ghost{i}", 1] for i in range(400)]  # never created: each one is refused
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        for user in ("acme", "fan1"):
            await admin.create_user(user)
        await admin.call("PATCH", "/admin/business/acme", {"business": True, **ops})
        await admin.call("PUT", "/admin/kinds/acme_star", {"brand": "acme", "name": "Acme star", "budget_cards": 401,
                                                            "artwork": "https://cdn.example/s.png", **ops})
        ends = int(time.time() * 1000) + 3_600_000
        await admin.call("POST", "/admin/campaigns", {"campaign_id": "c1", "brand": "acme", "kind": "acme_star",
                                                      "ends_at_ms": ends, "recipients": [["fan1", 1], *ghosts], **ops})

        async def leased() -> bool:
            return await reads(LEASES) == 1

        await eventually(leased, "the runner holding the campaign's lease")
        await admin.call("POST", "/admin/campaigns/c1/pause", ops)

        async def seen_paused() -> bool:
            text = await metrics_text(node)
            return (value(text, PAUSED), value(text, LEASES)) == (1, 0)

        await eventually(seen_paused, "the runner seeing the campaign paused")
        await admin.call("POST", "/admin/campaigns/c1/resume", ops)

        async def done() -> bool:
            return bool((await admin.call("GET", "/admin/campaigns/c1"))["state"] == "done")

        await eventually(done, "the campaign done", timeout_s=60)

        async def counted() -> bool:
            text = await metrics_text(node)
            return [value(text, s) for s in (ISSUED, REFUSED, LEASES, PAUSED)] == [1, 400, 0, 0]

        # a batch cut by the pause is issued again after the resume, and counted once
        await eventually(counted, "every recipient counted once, no lease, nothing paused")
        await admin.invariant()
