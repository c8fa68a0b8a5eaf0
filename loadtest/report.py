"""The bench's outputs: one table of figures and ratios, raw numbers as JSON and CSV, a plot.

Why a module apart from the measuring code: the table is the product (docs/benchmarks.md
quotes it), and keeping its rows, the targets they are held to and the way ratios are
computed in one place keeps the printed table, the JSON and the docs in agreement.
matplotlib is imported inside :func:`plot` with the Agg backend, so nothing needs a
display and importing this module costs nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.stats import Recorder, buckets


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a figure, what it is compared with, and its target."""

    key: str
    label: str
    value: float
    unit: str
    ceiling: float | None = None
    ceiling_label: str = ""
    #: ("min" | "max", bound): the ratio (or, without a ceiling, the value) must be >= / <=.
    target: tuple[str, float] | None = None
    #: Why no verdict (e.g. the quick mode is too small for the target's conditions).
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ceiling is None or not self.ceiling or math.isnan(self.value):
            return None
        return self.value / self.ceiling

    @property
    def relative(self) -> bool:
        """Judged as a ratio to a ceiling (even when this run did not measure the ceiling)."""
        return bool(self.ceiling_label)

    @property
    def judged(self) -> float | None:
        return self.ratio if self.relative else self.value

    @property
    def met(self) -> bool | None:
        if self.target is None or self.note or (self.relative and not self.ceiling):
            return None
        judged = self.judged
        if judged is None or math.isnan(judged):
            return False
        kind, bound = self.target
        return judged >= bound if kind == "min" else judged <= bound

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        kind, bound = self.target
        what = "ratio" if self.relative else self.unit
        sign = ">=" if kind == "min" else "<="
        return f"{what} {sign} {bound:g}"

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.note:
            return f"n/a ({self.note})"
        if self.relative and not self.ceiling:
            return f"n/a (no {self.ceiling_label} ceiling in this run)"
        met = self.met
        judged = self.judged
        if met:
            return "met"
        if judged is None or math.isnan(judged):
            return "MISSED (no data)"
        kind, bound = self.target
        short = (bound / judged if kind == "min" else judged / bound) if judged else math.inf
        return f"MISSED (x{short:.2f} short)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "label": self.label, "value": _num(self.value), "unit": self.unit,
            "ceiling": _num(self.ceiling), "ceiling_label": self.ceiling_label, "ratio": _num(self.ratio),
            "target": self.target_text, "met": self.met, "verdict": self.verdict,
        }


def _num(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, 6)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def table(rows: Sequence[Row], markdown: bool = False) -> str:
    """The rows as a fixed-width text table (or a Markdown table)."""
    header = ("figure", "value", "ceiling", "ratio", "target", "verdict")
    body = [
        (r.label, _fmt(r.value, r.unit), f"{_fmt(r.ceiling)} {r.ceiling_label}".strip() if r.ceiling else "",
         "" if r.ratio is None else f"{r.ratio:.3f}", r.target_text, r.verdict)
        for r in rows
    ]
    return render_cells(header, body, markdown=markdown)


def render_cells(header: Sequence[str], body: Sequence[Sequence[str]], *, markdown: bool = False) -> str:
    """Rows of text cells under ``header``: fixed-width columns, or a Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*cells) for cells in body]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True, slots=True)
class Phase:
    """A span of the run, shaded and labelled on the plot."""

    name: str
    start: float
    end: float


def write_series_csv(path: Path, rec: Recorder, width: float = 1.0) -> None:
    """Per-second throughput and latency of every series: the data behind the plot."""
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["series", "t_start_s", "count", "per_s", "p50_ms", "p99_ms"])
        for name, series in sorted(rec.series.items()):
            if not len(series):
                continue
            for b in buckets(series, min(series.at), max(series.at) + 1e-9, width):
                out.writerow([name, f"{b.start:.3f}", b.count, f"{b.rate:.2f}",
                              "" if math.isnan(b.p50_ms) else f"{b.p50_ms:.3f}",
                              "" if math.isnan(b.p99_ms) else f"{b.p99_ms:.3f}"])


#: Series drawn on the plot, with their legend labels.
PLOTTED = (
    ("echo/round_trip", "echo round trips"),
    ("clearing/reserve", "clearing API reserve"),
    ("max/send->outcome", "settled gifts (max)"),
    ("half/send->outcome", "settled gifts (half rate)"),
    ("delivery/send->offer", "cross-node offers"),
    ("locust/send->outcome", "Locust settled gifts"),
)
LATENCY_PLOTTED = (
    ("echo/round_trip", "echo round trip"),
    ("clearing/reserve", "clearing reserve"),
    ("max/send->offer", "send->offer (max)"),
    ("max/send->outcome", "send->outcome (max)"),
    ("half/send->offer", "send->offer (half)"),
    ("half/send->outcome", "send->outcome (half)"),
    ("delivery/send->offer", "send->offer (delivery)"),
)


def plot(path: Path, rec: Recorder, phases: Sequence[Phase], title: str, width: float = 1.0) -> None:
    """Throughput (top) and p50/p99 latency (bottom) per second over the whole run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 8), sharex=True)
    for name, label in PLOTTED:
        series = rec.series.get(name)
        if series is None or not len(series):
            continue
        bs = buckets(series, min(series.at), max(series.at) + 1e-9, width, min_span=width / 2)
        top.plot([b.start for b in bs], [b.rate for b in bs], label=label, marker=".", linewidth=1)
    top.set_yscale("log")
    top.set_ylabel("operations / s (log)")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    top.grid(True, which="both", alpha=0.3)
    for index, (name, label) in enumerate(LATENCY_PLOTTED):
        series = rec.series.get(name)
        if series is None or not len(series):
            continue
        bs = [b for b in buckets(series, min(series.at), max(series.at) + 1e-9, width, min_span=width / 2)
              if b.count]
        color = f"C{index % 10}"
        xs = [b.start for b in bs]
        bottom.plot(xs, [b.p50_ms for b in bs], color=color, linestyle="-", linewidth=1, label=f"{label} p50")
        bottom.plot(xs, [b.p99_ms for b in bs], color=color, linestyle=":", linewidth=1, label=f"{label} p99")
    bottom.set_yscale("log")
    bottom.set_ylabel("latency, ms (log): p50 solid, p99 dotted")
    bottom.set_xlabel("seconds since the bench started")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")
    bottom.grid(True, which="both", alpha=0.3)
    for axis in (top, bottom):
        for i, phase in enumerate(phases):
            axis.axvspan(phase.start, phase.end, color="grey", alpha=0.08 if i % 2 else 0.16, linewidth=0)
    for phase in phases:
        top.text((phase.start + phase.end) / 2, 1.01, phase.name, transform=top.get_xaxis_transform(),
                 ha="center", va="bottom", fontsize="x-small", rotation=30)
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
