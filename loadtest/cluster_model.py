"""From what ``notecard bench --cluster`` measures on a shared machine to what a shard with a
saturated core of its own would do: pure arithmetic, no Redis, so it is unit-tested alone.

Why these corrections: on a 2-core machine shared with other work, the shards run at a few
hundred gifts/s, far from saturation. Two things then show in the figures that a saturated
shard would not have:

- **background CPU**: an idle primary still spends CPU (``serverCron``, and in a cluster the
  cluster bus), about 0.003 cores. Over a phase at 300 gifts/s spread over 3 primaries that
  is tens of microseconds per gift, at thousands of gifts/s per core about one. So each
  topology's idle rate is measured over a window before its phases, and a phase's
  **marginal** CPU is its CPU minus the idle rate times the phase's length. A shard with a
  core of its own settles at most ``(1 - idle cores) / marginal CPU per gift`` gifts/s: the
  background takes its share of the core first, every gift the rest.
- **unbalanced pairs**: a handful of gifting pairs drawn at random do not spread evenly
  over the shards, and in a closed loop the slow (cross-shard) pairs settle fewer gifts, so
  the busiest shard and the crossing share of a random phase say more about the draw than
  about the cluster. The bar is therefore judged on the model of docs/capacity.md section 3,
  from the same run's one-shard cost ``c1`` and the same-shard (``F``) and cross-shard
  (``X``) costs, each phase homogeneous and so free of that artefact:
  ``T(N) = F / N + (N - 1) * X / N`` per gift summed over the shards at the crossing share
  ``1 - 1/N`` of users spread evenly, each of N balanced shards carrying ``T(N) / N``.
- **neighbours**: other processes on the machine move a phase's CPU per gift by +-20% from
  one minute to the next, more than the bar's margin. So ``c1``, ``F`` and ``X`` are also
  measured **paired in time**: short phases alternating ``c1, F, X, c1, F, X, ...`` on two
  clusters running side by side, the model taken per round from that round's three
  phases (``paired``), so that a slowdown lasting longer than a round weighs on the
  numerator and the denominator alike and cancels in the ratio.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from loadtest.report import Row, render_cells


def idle_cores(cpu_s: Sequence[float], window_s: float) -> list[float]:
    """Each primary's background rate (cores) from its CPU-seconds over an idle window."""
    if window_s <= 0:
        raise ValueError("the idle window must last a positive time")
    return [c / window_s for c in cpu_s]


def marginal_cpu_s(cpu_s: Sequence[float], idle: Sequence[float], window_s: float) -> list[float]:
    """CPU-seconds the phase's gifts cost each primary: its CPU less its idle rate over the
    phase. Floored at 0: a primary that did (almost) no gifts can read a hair below its idle
    rate, which is noise, not negative work."""
    if len(cpu_s) != len(idle):
        raise ValueError("one idle rate per primary")
    return [max(0.0, c - i * window_s) for c, i in zip(cpu_s, idle, strict=True)]


def saturated_per_s(idle: float, us_per_gift: float) -> float:
    """Gifts/s of a primary with one core to itself: what the background leaves of the core,
    divided by the marginal CPU of a gift."""
    if us_per_gift <= 0 or math.isnan(us_per_gift):
        return math.nan
    return (1.0 - idle) / us_per_gift * 1e6


def crossing_share(shards: int) -> float:
    """The share of gifts between two users spread evenly over ``shards`` that cross."""
    return 1.0 - 1.0 / shards


@dataclasses.dataclass(frozen=True, slots=True)
class Model:
    """The bar's ratio by the model: N balanced shards at the expected crossing share
    against one shard, each figure a marginal CPU per gift (microseconds) of one run."""

    shards: int
    c1_us: float
    same_us: float
    cross_us: float
    idle_one: float
    idle_n: float

    @property
    def share(self) -> float:
        return crossing_share(self.shards)

    @property
    def total_us(self) -> float:
        """T(N): Redis CPU per gift summed over the shards."""
        return (1.0 - self.share) * self.same_us + self.share * self.cross_us

    @property
    def per_s(self) -> float:
        """The cluster's gifts/s when each balanced shard saturates its own core."""
        return self.shards * saturated_per_s(self.idle_n, self.total_us)

    @property
    def one_per_s(self) -> float:
        return saturated_per_s(self.idle_one, self.c1_us)

    @property
    def ratio(self) -> float:
        return self.per_s / self.one_per_s if self.one_per_s else math.nan

    @property
    def ratio_on_f(self) -> float:
        """The ratio with ``F`` as the one-shard cost: a same-shard gift on N shards runs the
        same two scripts as a gift on one shard (the same instructions, ``notecard bench
        --cluster --instructions``), so a shard with its own core settles either at the same
        cost; ``F`` and ``X`` are measured side by side, on the same processes sharing the
        machine's cores, where ``c1`` had a Redis process to itself. ``N * F / T(N)``."""
        return self.shards * self.same_us / self.total_us if self.total_us else math.nan

    @property
    def formula(self) -> str:
        n = self.shards
        idle_n, idle_one = f"(1 - {self.idle_n:.4f})", f"(1 - {self.idle_one:.4f})"
        return (f"T({n}) = F/{n} + {n - 1}X/{n} = {self.same_us:.0f}/{n} + {n - 1}*{self.cross_us:.0f}/{n} "
                f"= {self.total_us:.0f} us; ratio = {n}*(1 - idle{n})*c1 / ((1 - idle1)*T({n})) "
                f"= {n}*{idle_n}*{self.c1_us:.0f} / ({idle_one}*{self.total_us:.0f}) = {self.ratio:.2f}")

    def as_dict(self) -> dict[str, float | int | str]:
        return {"shards": self.shards, "crossing_share": self.share, "c1_us": self.c1_us, "same_us_F": self.same_us,
                "cross_us_X": self.cross_us, "idle_cores_one_shard": self.idle_one,
                "idle_cores_n_shards": self.idle_n, "total_us_T": self.total_us,
                "per_s_one_core_per_shard": self.per_s, "one_shard_per_s": self.one_per_s,
                "ratio": self.ratio, "formula": self.formula, "ratio_on_f": self.ratio_on_f}


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    """One phase's marginal Redis CPU summed over its primaries, and the gifts it settled."""

    cpu_s: float
    settled: int

    @property
    def us_per_gift(self) -> float:
        return self.cpu_s / self.settled * 1e6 if self.settled else math.nan


#: One round of the paired measurement: c1 (1 shard), F (same-shard pairs), X (cross-shard).
PairedRound = tuple[Cost, Cost, Cost]


@dataclasses.dataclass(frozen=True, slots=True)
class Paired:
    """The bar's model from rounds paired in time: one model per round, from that round's
    adjacent c1, F and X, and one from the CPU and gifts summed over all rounds (each figure
    then weighs by its gifts, as one long phase would, but with c1 and F, X interleaved)."""

    rounds: list[Model]
    summed: Model

    @property
    def ratios(self) -> list[float]:
        return [m.ratio for m in self.rounds]

    @property
    def spread(self) -> Spread:
        return Spread.of(self.ratios)

    @property
    def spread_on_f(self) -> Spread:
        """The rounds' ratios with F as the one-shard cost (``Model.ratio_on_f``)."""
        return Spread.of(m.ratio_on_f for m in self.rounds)

    def as_dict(self) -> dict[str, Any]:
        return {"ratios": self.ratios, "ratio": self.spread.as_dict(), "summed": self.summed.as_dict(),
                "ratio_on_f": self.spread_on_f.as_dict(), "rounds": [m.as_dict() for m in self.rounds]}


def paired(rounds: Sequence[PairedRound], shards: int, idle_one: float, idle_n: float) -> Paired:
    """The model per round and over the summed rounds (``Paired``); the idle rates are the
    topologies' (measured once, both clusters running), as in ``Model``."""
    if not rounds:
        raise ValueError("at least one round")

    def model(c1: Cost, same: Cost, cross: Cost) -> Model:
        return Model(shards=shards, c1_us=c1.us_per_gift, same_us=same.us_per_gift, cross_us=cross.us_per_gift,
                     idle_one=idle_one, idle_n=idle_n)

    def total(k: int) -> Cost:
        return Cost(sum(r[k].cpu_s for r in rounds), sum(r[k].settled for r in rounds))

    return Paired([model(*r) for r in rounds], model(total(0), total(1), total(2)))


def pair_count(concurrency: int, shards: int) -> int:
    """Pairs of the random phase on ``shards``: the multiple of ``shards**2`` nearest to
    ``concurrency`` (at least one), so that every (sender shard, recipient shard)
    combination has the same number of pairs."""
    cells = shards * shards
    return cells * max(1, round(concurrency / cells))


def balanced_shard_pairs(shards: int, pairs: int) -> list[tuple[int, int]]:
    """(sender shard, recipient shard) of each pair, in blocks of ``shards`` pairs where
    every shard sends once and receives once (block ``b`` pairs shard ``s`` with shard
    ``(s + b) % shards``). Any prefix is balanced to within one pair per shard, and with
    ``pairs`` a multiple of ``shards**2`` every combination occurs equally often, so
    exactly ``1 - 1/shards`` of the pairs cross."""
    out: list[tuple[int, int]] = []
    block = 0
    while len(out) < pairs:
        offset = block % shards
        out.extend((s, (s + offset) % shards) for s in range(shards))
        block += 1
    return out[:pairs]


@dataclasses.dataclass(frozen=True, slots=True)
class Spread:
    """One figure over several runs: median and range (NaN and missing values left out)."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread:
        kept = sorted(v for v in values if v is not None and not math.isnan(v))
        if not kept:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(kept), kept[0], kept[-1], len(kept))

    def text(self, digits: int = 2) -> str:
        if not self.runs:
            return "-"
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"

    def as_dict(self) -> dict[str, float | int | None]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else v
        return {"median": num(self.median), "low": num(self.low), "high": num(self.high), "runs": self.runs}


def spreads(runs: Sequence[Mapping[str, float | None]]) -> dict[str, Spread]:
    """Each key's spread over the runs, keys in the order they first appear."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run))
    return {k: Spread.of(run.get(k) for run in runs) for k in keys}


#: A label's per-shard figures, e.g. " (393, 399, 401)": one run's, so left out of a summary.
_PER_SHARD = re.compile(r" \([\d.,\s]+\)")


def summarize_rows(runs: Sequence[Sequence[Row]]) -> list[dict[str, Any]]:
    """Each table row over the runs: median and range of its value and of its ratio to its
    ceiling (the ratio of each run, not the ratio of the medians), and the verdict on the
    median, with how many runs met the target."""
    by_key: dict[str, list[Row]] = {}
    for rows in runs:
        for row in rows:
            by_key.setdefault(row.key, []).append(row)
    out: list[dict[str, Any]] = []
    for key, rows in by_key.items():
        first = rows[0]
        value = Spread.of(r.value for r in rows)
        ratio = Spread.of(r.ratio for r in rows) if first.relative else None
        entry: dict[str, Any] = {"key": key, "label": _PER_SHARD.sub("", first.label), "unit": first.unit,
                                 "value": value.as_dict(),
                                 "ratio": ratio.as_dict() if ratio else None, "ceiling_label": first.ceiling_label,
                                 "target": first.target_text, "verdict": ""}
        if first.target is not None:
            judged = ratio.median if ratio else value.median
            met = sum(1 for r in rows if r.met)
            kind, bound = first.target
            ok = not math.isnan(judged) and (judged >= bound if kind == "min" else judged <= bound)
            entry["verdict"] = f"{'met' if ok else 'MISSED'} by the median ({met} of {len(rows)} runs met)"
        out.append(entry)
    return out


def summary_table(summary: Sequence[Mapping[str, Any]], *, markdown: bool = False) -> str:
    """The summary as a fixed-width text table (or a Markdown table)."""
    header = ("figure", "median (range)", "ratio: median (range)", "target", "verdict")
    body = []
    for entry in summary:
        value = _spread_of(entry["value"])
        ratio = entry["ratio"]
        digits = 4 if entry["unit"] == "cores" else 0 if abs(value.median) >= 100 else 2
        body.append((entry["label"], f"{value.text(digits)} {entry['unit']}".strip(),
                     f"{_spread_of(ratio).text(3)} of {entry['ceiling_label']}" if ratio else "",
                     entry["target"], entry["verdict"]))
    return render_cells(header, body, markdown=markdown)


def _spread_of(d: Mapping[str, Any]) -> Spread:
    def num(v: float | None) -> float:
        return math.nan if v is None else float(v)
    return Spread(num(d["median"]), num(d["low"]), num(d["high"]), int(d["runs"]))
