"""The arithmetic of ``notecard bench --cluster`` (loadtest/cluster_model.py): marginal CPU,
a saturated shard's rate, the bar's model, balanced pairs, and medians over runs."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from loadtest import cluster_model as cm
from loadtest.report import Row


def test_idle_rate_and_marginal_cpu() -> None:
    assert cm.idle_cores([0.0102, 0.0084], 3.0) == pytest.approx([0.0034, 0.0028])
    # 0.5 s of CPU over a 3 s phase on a primary idling at 0.0034 cores: 0.0102 s was background.
    assert cm.marginal_cpu_s([0.5, 0.2], [0.0034, 0.0028], 3.0) == pytest.approx([0.4898, 0.1916])
    # A primary that did no gifts reads a little under its idle rate: noise, not negative work.
    assert cm.marginal_cpu_s([0.001], [0.0034], 3.0) == [0.0]
    with pytest.raises(ValueError, match="one idle rate per primary"):
        cm.marginal_cpu_s([0.5, 0.2], [0.0034], 3.0)
    with pytest.raises(ValueError, match="positive"):
        cm.idle_cores([0.01], 0.0)


def test_saturated_rate_leaves_the_background_its_share() -> None:
    assert cm.saturated_per_s(0.0, 500.0) == pytest.approx(2000.0)
    assert cm.saturated_per_s(0.01, 500.0) == pytest.approx(1980.0)
    assert math.isnan(cm.saturated_per_s(0.0, 0.0))


def test_model_at_the_expected_crossing_share() -> None:
    # docs/capacity.md section 4's Fn figures: T(3) = 474/3 + 2 * 783/3 = 680 us, 3 * 372 / 680 = 1.64.
    model = cm.Model(shards=3, c1_us=372.0, same_us=474.0, cross_us=783.0, idle_one=0.0, idle_n=0.0)
    assert model.share == pytest.approx(2 / 3)
    assert model.total_us == pytest.approx(680.0)
    assert model.ratio == pytest.approx(3 * 372 / 680)
    assert "= 680 us" in model.formula and model.formula.endswith("= 1.64")
    # Background CPU on the N-shard primaries leaves less of each core for gifts.
    busier = cm.Model(shards=3, c1_us=372.0, same_us=474.0, cross_us=783.0, idle_one=0.0, idle_n=0.1)
    assert busier.ratio == pytest.approx(model.ratio * 0.9)
    # One shard against itself is 1: nothing crosses.
    assert cm.Model(1, 400.0, 400.0, 900.0, 0.003, 0.003).ratio == pytest.approx(1.0)
    assert set(model.as_dict()) >= {"ratio", "formula", "total_us_T", "crossing_share"}


@pytest.mark.parametrize(("shards", "pairs"), [(1, 32), (2, 32), (3, 36), (3, 9), (4, 32)])
def test_balanced_pairs_spread_evenly_and_cross_at_one_minus_one_over_n(shards: int, pairs: int) -> None:
    drawn = cm.balanced_shard_pairs(shards, pairs)
    assert len(drawn) == pairs
    senders, recipients = Counter(a for a, _ in drawn), Counter(b for _, b in drawn)
    assert set(senders.values()) == set(recipients.values()) == {pairs // shards}
    assert sorted(senders) == sorted(recipients) == list(range(shards))
    assert Counter(drawn) == {(a, b): pairs // shards**2 for a in range(shards) for b in range(shards)}
    crossing = sum(a != b for a, b in drawn) / pairs
    assert crossing == pytest.approx(cm.crossing_share(shards))


def test_a_prefix_of_balanced_pairs_is_balanced_within_one() -> None:
    drawn = cm.balanced_shard_pairs(3, 32)
    for side in (0, 1):
        counts = Counter(pair[side] for pair in drawn)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_pair_count_is_the_nearest_multiple_of_n_squared() -> None:
    assert cm.pair_count(32, 1) == 32
    assert cm.pair_count(32, 2) == 32
    assert cm.pair_count(32, 3) == 36
    assert cm.pair_count(4, 3) == 9
    assert cm.pair_count(1, 2) == 4


def test_spread_is_median_and_range_without_missing_values() -> None:
    s = cm.Spread.of([1.75, 1.51, float("nan"), 1.96, None])
    assert (s.median, s.low, s.high, s.runs) == (1.75, 1.51, 1.96, 3)
    assert cm.Spread.of([2.0, 1.0]).median == 1.5
    assert cm.Spread.of([]).runs == 0 and cm.Spread.of([]).text() == "-"
    assert s.text() == "1.75 (1.51-1.96)"
    over = cm.spreads([{"a": 1.0, "b": 4.0}, {"a": 3.0}, {"a": 2.0, "b": 6.0}])
    assert list(over) == ["a", "b"]
    assert over["a"].median == 2.0 and (over["b"].median, over["b"].runs) == (5.0, 2)


def test_summary_takes_the_median_of_each_runs_ratio() -> None:
    def rows(value: float, ceiling: float) -> list[Row]:
        return [Row("bar", "3 shards by the model", value, "/s", ceiling, "1 shard", ("min", 2.0)),
                Row("idle", f"idle ({value / 1e6:.4f}, 0.0027), busiest (4 keys)", 0.003, "cores")]

    # Ratios 2.5, 1.5, 1.9: median 1.9, under the bar, though the median value over the
    # median ceiling (5,000 / 2,000 = 2.5) would pass it.
    summary = cm.summarize_rows([rows(5000, 2000), rows(3000, 2000), rows(5700, 3000)])
    bar = summary[0]
    assert bar["ratio"]["median"] == pytest.approx(1.9)
    assert (bar["ratio"]["low"], bar["ratio"]["high"]) == (pytest.approx(1.5), pytest.approx(2.5))
    assert bar["value"]["median"] == 5000
    assert bar["verdict"] == "MISSED by the median (1 of 3 runs met)"
    assert summary[1]["ratio"] is None and summary[1]["verdict"] == ""
    # Per-shard figures in a label are one run's: the summary leaves them out.
    assert summary[1]["label"] == "idle, busiest (4 keys)"
    passing = cm.summarize_rows([rows(5000, 2000), rows(4200, 2000)])
    assert passing[0]["verdict"] == "met by the median (2 of 2 runs met)"
    text = cm.summary_table(summary)
    assert "1.900 (1.500-2.500) of 1 shard" in text and "0.0030 (0.0030-0.0030) cores" in text
    assert cm.summary_table(summary, markdown=True).startswith("| figure |")
