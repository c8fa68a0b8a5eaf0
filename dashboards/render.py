"""The three dashboards as PNG charts (matplotlib, the ``dashboards`` extra, with the Agg
backend: no display). matplotlib is imported inside :func:`render` only, so the queries and
the admin API work without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dashboards.queries import Conversion, ProfileBreakdown, Retention

#: Every chart's size: WIDTH_IN x HEIGHT_IN inches at DPI, so WIDTH_IN * DPI pixels wide.
WIDTH_IN, HEIGHT_IN, DPI = 12.0, 7.0, 100
FILES = ("profile.png", "conversion.png", "retention.png")
_TITLES = {"region": "Region", "age": "Age bucket", "app": "App", "fan_level": "Fan level"}


def _scope_text(brand: str | None, campaign: str | None) -> str:
    parts = [f"brand {brand}" if brand else "", f"campaign {campaign}" if campaign else ""]
    return ", ".join(p for p in parts if p) or "every brand"


def _profile(plt: Any, report: ProfileBreakdown, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    for ax, (name, rows) in zip(axes.flat, report.breakdown.items(), strict=True):
        labels = [value for value, _ in rows]
        counts = [count for _, count in rows]
        bars = ax.bar(labels, counts, color="#4c72b0")
        ax.bar_label(bars, fontsize=8)
        ax.set_title(_TITLES[name])
        ax.set_ylabel("recipients")
    fig.suptitle(f"Recipients' profile: {report.recipients} recipients of "
                 f"{_scope_text(report.scope.brand, report.scope.campaign)}")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _conversion(plt: Any, report: Conversion, path: Path) -> None:
    fig, (funnel, cost) = plt.subplots(1, 2, figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI,
                                       gridspec_kw={"width_ratios": [3, 2]})
    names = [row.campaign for row in report.campaigns]
    width = 0.27
    for i, (label, values) in enumerate((("issued", [r.issued for r in report.campaigns]),
                                         ("accepted", [r.accepted for r in report.campaigns]),
                                         ("purchased", [r.purchased for r in report.campaigns]))):
        bars = funnel.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=label)
        funnel.bar_label(bars, fontsize=8)
    funnel.set_xticks(range(len(names)), names)
    funnel.set_ylabel("recipients")
    funnel.set_title(f"Issued -> accepted -> purchase (within {report.window_days} days)")
    funnel.legend()
    per = [row.cost_per_conversion_cents or 0.0 for row in report.campaigns]
    bars = cost.bar(names, [value / 100 for value in per], color="#dd8452")
    labels = [f"{value / 100:.2f}" + (f"\nROI {row.roi:+.0%}" if row.roi is not None else "")
              for value, row in zip(per, report.campaigns, strict=True)]
    cost.bar_label(bars, labels=labels, fontsize=8)
    cost.set_ylabel("cost per purchase (currency units)")
    cost.set_title("Cost per conversion")
    fig.suptitle(f"ROI / conversion: {_scope_text(report.scope.brand, report.scope.campaign)}")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _retention(plt: Any, report: Retention, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    grid = [[rate if rate is not None else 0.0 for rate in cohort.rates()] for cohort in report.cohorts]
    image = ax.imshow(grid or [[0.0] * report.days], aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    for y, row in enumerate(grid):
        for x, rate in enumerate(row):
            ax.text(x, y, f"{rate:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if rate < 0.5 else "black")
    ax.set_xticks(range(report.days), [str(d) for d in range(1, report.days + 1)])
    ax.set_yticks(range(len(report.cohorts)),
                  [f"{c.day.isoformat()} ({c.recipients})" for c in report.cohorts])
    ax.set_xlabel("days after the first card")
    ax.set_ylabel(f"cohort: day of the first card ({report.timezone}), recipients")
    ax.set_title(f"Retention: share of each cohort active again, "
                 f"{_scope_text(report.scope.brand, report.scope.campaign)}")
    fig.colorbar(image, ax=ax, label="active share")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def render(out: Path, profile: ProfileBreakdown, conversion: Conversion, retention: Retention) -> list[Path]:
    """Write the three PNGs into ``out`` (created); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    _profile(plt, profile, paths[0])
    _conversion(plt, conversion, paths[1])
    _retention(plt, retention, paths[2])
    return paths
