"""Latency samples on one clock, and the summaries the bench prints and plots.

Why one recorder for the whole run: every figure in the bench table is a ratio to a ceiling
measured in the same invocation, and the plot shows the phases on one time axis, so every
sample carries the run-relative instant it was taken at (``time.perf_counter`` of the
process that saw both ends of the measured path: send and offer are timed by the same
generator, never by two machines' clocks).
"""

from __future__ import annotations

import dataclasses
import math
import time
from array import array
from collections.abc import Callable, Iterable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclasses.dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, latencies_s: Iterable[float]) -> LatencySummary:
        values = sorted(latencies_s)
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            count=len(values),
            p50_ms=percentile(values, 0.50) * 1000,
            p90_ms=percentile(values, 0.90) * 1000,
            p99_ms=percentile(values, 0.99) * 1000,
            max_ms=values[-1] * 1000,
            mean_ms=sum(values) / len(values) * 1000,
        )


class Series:
    """Samples of one measured path: (instant since the run started, latency in seconds).

    Kept in ``array('d')``, not lists: the garbage collector walks every item of a list on a
    full collection, and a run records millions of samples (72 ms pauses in the generator,
    straight into its p99, before this).
    """

    __slots__ = ("at", "latency", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.at: array[float] = array("d")
        self.latency: array[float] = array("d")

    def add(self, at: float, latency: float) -> None:
        self.at.append(at)
        self.latency.append(latency)

    def __len__(self) -> int:
        return len(self.at)

    def window(self, start: float, end: float) -> list[float]:
        """Latencies of the samples taken in ``[start, end)``."""
        return [lat for at, lat in zip(self.at, self.latency, strict=True) if start <= at < end]

    def count_in(self, start: float, end: float) -> int:
        return sum(1 for at in self.at if start <= at < end)


class Recorder:
    """All series of a run, on the run's clock (seconds since ``t0``)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.t0 = clock()
        self.series: dict[str, Series] = {}

    def now(self) -> float:
        """Seconds since the run started."""
        return self.clock() - self.t0

    def get(self, name: str) -> Series:
        found = self.series.get(name)
        if found is None:
            found = self.series[name] = Series(name)
        return found

    def add(self, name: str, at: float, latency: float) -> None:
        self.get(name).add(at, latency)


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    """One second (or ``width``) of one series: throughput and latency percentiles."""

    start: float
    count: int
    rate: float
    p50_ms: float
    p99_ms: float


def buckets(series: Series, start: float, end: float, width: float = 1.0, min_span: float = 0.0) -> list[Bucket]:
    """The series cut into ``width``-second buckets between ``start`` and ``end``.

    A last bucket shorter than ``min_span`` seconds is left out: a rate over a sliver of
    time (the few samples after the last full second) says nothing.
    """
    if end <= start:
        return []
    n = max(1, math.ceil((end - start) / width))
    grouped: list[list[float]] = [[] for _ in range(n)]
    for at, lat in zip(series.at, series.latency, strict=True):
        if start <= at < end:
            grouped[min(n - 1, int((at - start) / width))].append(lat)
    out = []
    for i, values in enumerate(grouped):
        values.sort()
        span = min(width, end - (start + i * width))
        if span < min_span:
            continue
        out.append(Bucket(
            start=start + i * width,
            count=len(values),
            rate=len(values) / span if span > 0 else 0.0,
            p50_ms=percentile(values, 0.5) * 1000,
            p99_ms=percentile(values, 0.99) * 1000,
        ))
    return out
