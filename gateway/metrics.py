"""Prometheus metrics of one gateway node.

Each node owns its :class:`CollectorRegistry` (no process-global registry), so several
nodes can run in one test process and each ``/metrics`` shows only its own numbers. The
series are named in README ("Metrics") exactly as exposed (counters end in ``_total``),
and tests/test_metrics.py checks that a running node exports every one of them and no
other. Counters have no ``_created`` series: one more series per counter that no alert or
dashboard reads.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib import metadata
from typing import Generic, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

M = TypeVar("M", Counter, Histogram)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Event-loop lag is sampled this often: a sleep that wakes late by X means every callback
#: ready meanwhile (frames, replies, probes) waited about X too.
LOOP_LAG_PERIOD_S = 0.5
#: Outcomes and codes exported from the start at zero, so that a rate() over them (an
#: alert on INTERNAL answers, a dashboard's accept ratio) has a series before the first one.
_GIFT_OUTCOMES = ("sent", "accepted", "declined", "expired", "refused", "guardian_approved", "guardian_rejected")
_SEEDED_REFUSALS = ("INTERNAL", "RATE_LIMITED", "UNAVAILABLE")
#: The refusals the risk engine's stored actions cause (docs/risk.md), and the tier of the
#: action behind each; all exported from the start at zero.
RISK_REFUSAL_TIERS = {"SENDER_BANNED": "ban", "DEVICE_BANNED": "ban", "RECIPIENT_BANNED": "ban",
                      "ACCOUNT_FROZEN": "freeze", "RECIPIENT_FROZEN": "freeze", "RISK_LIMITED": "limit"}


class SignalCounts(Protocol):
    """What a node's risk signal log (risk/signals.py) has done so far."""

    written: int
    dropped: int

    @property
    def queued(self) -> int: ...


class _SignalsCollector(Collector):
    """The node's risk signals, read from the signal log when scraped (zeros when the risk
    engine is off), not counted on the hot path."""

    def __init__(self) -> None:
        self.source: SignalCounts | None = None

    def collect(self) -> Iterator[Metric]:
        src = self.source
        sent = CounterMetricFamily("notecard_risk_signals", "Risk events this node wrote to the events stream "
                                   "(written) or dropped because its queue was full (dropped)", labels=["outcome"])
        sent.add_metric(["written"], src.written if src else 0)
        sent.add_metric(["dropped"], src.dropped if src else 0)
        yield sent
        yield GaugeMetricFamily("notecard_risk_signals_queued", "Risk events queued on this node, not yet written",
                                value=src.queued if src else 0)


class CampaignCounts(Protocol):
    """What a node's campaign runner (clearing/campaigns.py CampaignRunner) has done so far."""

    issued: int
    refused: int
    failed_batches: int
    paused: int
    leases_held: int


class _CampaignsCollector(Collector):
    """The node's campaign runner, read when scraped (its own counts, kept as plain ints:
    the runner stays free of Prometheus)."""

    def __init__(self) -> None:
        self.source: CampaignCounts | None = None

    def collect(self) -> Iterator[Metric]:
        src = self.source
        recipients = CounterMetricFamily(
            "notecard_campaign_recipients", "Campaign recipients this node's runner handled: given their gift "
            "(issued) or refused (refused: in the campaign's report)", labels=["outcome"])
        recipients.add_metric(["issued"], src.issued if src else 0)
        recipients.add_metric(["refused"], src.refused if src else 0)
        yield recipients
        yield CounterMetricFamily("notecard_campaign_failed_batches", "Campaign batches this node's runner gave up "
                                  "because Redis was unavailable (issued again later)",
                                  value=src.failed_batches if src else 0)
        yield GaugeMetricFamily("notecard_campaigns_paused", "Campaigns paused, as this node's runner saw them on "
                                "its last pass", value=src.paused if src else 0)
        yield GaugeMetricFamily("notecard_campaign_leases_held", "Campaigns this node's runner is issuing now "
                                "(holding their lease)", value=src.leases_held if src else 0)


@cache
def package_version() -> str:
    """The installed notecard version (``notecard --version``, ``notecard_build_info``)."""
    try:
        return metadata.version("notecard")
    except metadata.PackageNotFoundError:
        return "unknown"


class Children(Generic[M]):
    """The labelled children of a one-label metric, each looked up once.

    ``labels()`` takes a lock and builds a key on every call (about 2 us); the hot path
    counts several per gift, so it asks here (a dict lookup). The label values are a
    closed set (message types, error codes, operations), so the cache stays small.
    """

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._cache: dict[str, M] = {}

    def __call__(self, value: str) -> M:
        child = self._cache.get(value)
        if child is None:
            child = self._cache[value] = self._metric.labels(value)
        return child


class NodeMetrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide in prometheus_client; nothing here wants them
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        Info("notecard_build", "The running version", registry=r).info(
            {"version": package_version(), "python": platform.python_version()})
        self.connections = Gauge("notecard_connections", "Open authenticated connections", registry=r)
        self.frames_in = Counter("notecard_frames_in", "Frames received", ["type"], registry=r)
        self.frames_out = Counter("notecard_frames_out", "Frames sent", ["type"], registry=r)
        self.bad_frames = Counter("notecard_bad_frames", "Frames refused as malformed", ["code"], registry=r)
        self.gifts = Counter(
            "notecard_gifts", "Gift operations by outcome (sent, accepted, declined, expired, refused, "
            "guardian_approved, guardian_rejected)",
            ["outcome"], registry=r,
        )
        self.refusals = Counter("notecard_refusals", "Refused requests by error code", ["code"], registry=r)
        self.clearing_latency = Histogram(
            "notecard_clearing_seconds", "Clearing call latency", ["op"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.delivery_lag = Histogram(
            "notecard_delivery_lag_seconds", "Time from a gift event's creation to its push on this node",
            ["event"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.slow_consumers = Counter(
            "notecard_slow_consumer_disconnects", "Connections closed for a full send queue", registry=r
        )
        self.closes = Counter("notecard_closes", "Connections closed by the server, by close code", ["code"],
                              registry=r)
        self.tokens = Counter("notecard_tokens", "Client tokens checked at hello, by format and outcome",
                              ["format", "outcome"], registry=r)
        self.subscriber_reconnects = Counter(
            "notecard_subscriber_reconnects", "Times the pub/sub subscriber was re-established", registry=r
        )
        self.catchup_events = Counter(
            "notecard_catchup_events", "Events delivered from the stream instead of pub/sub", registry=r
        )
        self.redis_up = Gauge("notecard_redis_up", "1 when the last Redis call succeeded", registry=r)
        self.frames_in_of = Children(self.frames_in)
        self.frames_out_of = Children(self.frames_out)
        self.gifts_of = Children(self.gifts)
        self.refusals_of = Children(self.refusals)
        self.clearing_latency_of = Children(self.clearing_latency)
        self.swept = Counter("notecard_swept_gifts", "Gifts expired by this node's sweeper", registry=r)
        self.background_restarts = Counter(
            "notecard_background_restarts", "Background tasks restarted after they ended, raised or got stuck",
            ["task"], registry=r,
        )
        self.probe_age = Gauge(
            "notecard_subscriber_probe_age_seconds", "Seconds since the pub/sub probe was last heard back",
            registry=r,
        )
        self.deaf_leaves = Counter(
            "notecard_deaf_presence_leaves", "Times the node left presence because its subscriber could not hear",
            registry=r,
        )
        self.redis_replicas = Gauge("notecard_redis_replicas", "Replicas attached to the Redis primary, as last seen",
                                    registry=r)
        self.loop_lag = Histogram(
            "notecard_event_loop_lag_seconds", "How late the event loop runs a timer (sampled every 0.5 s)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.requests_in_flight = Gauge("notecard_requests_in_flight", "Client requests being handled", registry=r)
        self.send_queue_frames = Gauge(
            "notecard_send_queue_frames", "Frames queued for clients, all connections together", registry=r)
        self.send_queue_max_frames = Gauge(
            "notecard_send_queue_max_frames", "Frames queued for the most backed-up connection (closed as a slow "
            "consumer at NOTECARD_SEND_QUEUE_MAX)", registry=r)
        self.pending_gifts = Gauge(
            "notecard_pending_gifts", "Gifts pending (held, waiting for an answer) in this node's share of slots",
            registry=r)
        self.held_units = Gauge(
            "notecard_held_units", "Minor units held by pending gifts in this node's share of slots", ["kind"],
            registry=r)
        self.invariant_violations = Gauge(
            "notecard_invariant_violations", "Violations the last conservation check run on this node found",
            registry=r)
        self.invariant_checked_at = Gauge(
            "notecard_invariant_checked_timestamp_seconds", "When this node last ran the conservation check",
            registry=r)
        self.risk_refusals = Counter(
            "notecard_risk_refusals", "Gift requests refused at this node by the risk engine's stored actions, by "
            "code and the tier of the action", ["code", "tier"], registry=r)
        self._risk_refusals_of = {code: self.risk_refusals.labels(code, tier)
                                  for code, tier in RISK_REFUSAL_TIERS.items()}
        self._signals = _SignalsCollector()
        r.register(self._signals)
        self._campaigns = _CampaignsCollector()
        r.register(self._campaigns)
        for outcome in _GIFT_OUTCOMES:
            self.gifts_of(outcome)
        for code in _SEEDED_REFUSALS:
            self.refusals_of(code)
        self.slow_consumers.inc(0)

    def refused(self, code: str) -> None:
        """A request refused with ``code``; a risk engine refusal is counted by tier too."""
        self.refusals_of(code).inc()
        risk = self._risk_refusals_of.get(code)
        if risk is not None:
            risk.inc()

    def watch_signals(self, signals: SignalCounts | None) -> None:
        """Export the node's risk signal counts (None: the risk engine is off, zeros)."""
        self._signals.source = signals

    def watch_campaigns(self, runner: CampaignCounts) -> None:
        """Export the node's campaign runner's counts."""
        self._campaigns.source = runner

    def watch_send_queues(self, depths: Callable[[], Iterable[int]]) -> None:
        """Send-queue depths, read when scraped (a pass over the connections, not a count
        kept up to date on every frame of the hot path)."""
        self.send_queue_frames.set_function(lambda: sum(depths()))
        self.send_queue_max_frames.set_function(lambda: max(depths(), default=0))

    async def watch_loop_lag(self) -> None:
        """Sample the event loop's lag for ever (a supervised background task)."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LOOP_LAG_PERIOD_S)
            self.loop_lag.observe(max(0.0, loop.time() - start - LOOP_LAG_PERIOD_S))

    def invariant_checked(self, violations: int) -> None:
        self.invariant_violations.set(violations)
        self.invariant_checked_at.set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)
