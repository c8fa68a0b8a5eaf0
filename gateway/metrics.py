"""Prometheus metrics of one gateway node.

Each node owns its :class:`CollectorRegistry` (no process-global registry), so several
nodes can run in one test process and each ``/metrics`` shows only its own numbers.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

M = TypeVar("M", Counter, Histogram)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("notecard_connections", "Open authenticated connections", registry=r)
        self.frames_in = Counter("notecard_frames_in", "Frames received", ["type"], registry=r)
        self.frames_out = Counter("notecard_frames_out", "Frames sent", ["type"], registry=r)
        self.bad_frames = Counter("notecard_bad_frames", "Frames refused as malformed", ["code"], registry=r)
        self.gifts = Counter(
            "notecard_gifts", "Gift operations by outcome (sent, accepted, declined, expired, refused)",
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
