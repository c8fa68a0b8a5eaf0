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


def test_the_ratio_on_f_takes_the_same_shard_cost_as_one_shards() -> None:
    # Same-shard gifts run the one-shard scripts; measured on processes sharing the cores
    # they cost more per gift than c1 did (here 1.25x), and the ratio on F leaves that out:
    # 3 * 500 / (500/3 + 2 * 750/3) = 1500 / 666.7 = 2.25, against c1's 3 * 400 / 666.7 = 1.8.
    model = cm.Model(shards=3, c1_us=400.0, same_us=500.0, cross_us=750.0, idle_one=0.002, idle_n=0.004)
    assert model.ratio_on_f == pytest.approx(2.25)
    assert model.ratio == pytest.approx(1.8 * (1 - 0.004) / (1 - 0.002))
    # Nothing crossing, N shards of F are N times one: the ratio on F is exactly N.
    assert cm.Model(3, 400.0, 500.0, 500.0, 0.0, 0.0).ratio_on_f == pytest.approx(3.0)
    assert model.as_dict()["ratio_on_f"] == model.ratio_on_f
    rounds = [(cm.Cost(0.4, 1000), cm.Cost(0.5, 1000), cm.Cost(0.75, 1000)),
              (cm.Cost(0.4, 1000), cm.Cost(0.5, 1000), cm.Cost(1.0, 1000))]
    paired = cm.paired(rounds, 3, 0.0, 0.0)
    assert paired.spread_on_f.median == pytest.approx((2.25 + 1500 / (500 / 3 + 2000 / 3)) / 2)
    assert paired.as_dict()["ratio_on_f"]["runs"] == 2


def test_paired_rounds_cancel_what_slows_a_whole_round() -> None:
    # The same code in three rounds, the machine 1.0x, 1.3x and 0.8x as slow in each: every
    # phase of a round costs that factor more CPU per gift. Paired, each round's ratio is
    # the code's (1.64 with these figures); unpaired, c1 of a slow minute against F and X of
    # a fast one would read 1.64 * 1.3 / 0.8.
    base = cm.Model(shards=3, c1_us=372.0, same_us=474.0, cross_us=783.0, idle_one=0.003, idle_n=0.003)
    rounds = [(cm.Cost(372e-6 * f * n, n), cm.Cost(474e-6 * f * 2 * n, 2 * n), cm.Cost(783e-6 * f * (n // 2), n // 2))
              for f, n in ((1.0, 1000), (1.3, 800), (0.8, 1200))]
    paired = cm.paired(rounds, 3, 0.003, 0.003)
    assert paired.ratios == pytest.approx([base.ratio] * 3)
    assert paired.spread.median == pytest.approx(base.ratio)
    assert (paired.spread.low, paired.spread.high) == (pytest.approx(base.ratio), pytest.approx(base.ratio))
    assert paired.rounds[1].c1_us == pytest.approx(372.0 * 1.3)
    unpaired = cm.Model(3, rounds[1][0].us_per_gift, rounds[2][1].us_per_gift, rounds[2][2].us_per_gift, 0.003, 0.003)
    assert unpaired.ratio == pytest.approx(base.ratio * 1.3 / 0.8)
    as_dict = paired.as_dict()
    assert as_dict["ratio"]["runs"] == 3 and len(as_dict["rounds"]) == 3
    assert as_dict["summed"]["ratio"] == paired.summed.ratio


def test_paired_summed_model_weighs_each_round_by_its_gifts() -> None:
    # Round 1: c1 300 us over 1,000 gifts; round 2: 500 us over 3,000. Summed: (0.3 + 1.5) s
    # over 4,000 gifts = 450 us, not the rounds' mean 400.
    rounds = [(cm.Cost(0.3, 1000), cm.Cost(0.4, 1000), cm.Cost(0.8, 1000)),
              (cm.Cost(1.5, 3000), cm.Cost(0.4, 1000), cm.Cost(0.8, 1000))]
    paired = cm.paired(rounds, 3, 0.0, 0.0)
    assert paired.summed.c1_us == pytest.approx(450.0)
    assert paired.summed.same_us == pytest.approx(400.0) and paired.summed.cross_us == pytest.approx(800.0)
    assert paired.summed.ratio == pytest.approx(3 * 450 / (400 / 3 + 2 * 800 / 3))
    assert paired.ratios == pytest.approx([3 * 300 / 2000 * 3, 3 * 500 / 2000 * 3])
    assert paired.spread.median == pytest.approx(sum(paired.ratios) / 2)
    # A phase that settled nothing has no cost per gift: its round's ratio is missing, not 0.
    empty = cm.paired([(cm.Cost(0.1, 0), cm.Cost(0.4, 1000), cm.Cost(0.8, 1000)), *rounds], 3, 0.0, 0.0)
    assert math.isnan(empty.ratios[0]) and empty.spread.runs == 2
    with pytest.raises(ValueError, match="at least one round"):
        cm.paired([], 3, 0.0, 0.0)
