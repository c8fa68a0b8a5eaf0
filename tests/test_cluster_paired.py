"""The paired rounds of ``notecard bench --cluster`` (loadtest/cluster_bench.py) without
Redis: the rounds' phases combine into one per kind whose figures are the summed CPU over
the summed gifts, and ``--rounds`` is checked. tests/test_cluster_bench.py runs them."""

from __future__ import annotations

import pytest

from loadtest import cluster_model
from loadtest.cluster_bench import FULL, MAX_ROUNDS, QUICK, PhaseResult, combine, cost_of, model_of, plan_of


def _phase(shards: int, mode: str, settled: int, cpu: list[float], window: float, samples: list[float]) -> PhaseResult:
    return PhaseResult(name="x", shards=shards, mode=mode, forced_saga=False, settled=settled, cross=0,
                       seconds=window - 0.01, redis_cpu_s=cpu, redis_inside_s=[c / 2 for c in cpu],
                       counts={"script_calls": [2 * settled // len(cpu)] * len(cpu), "publishes": [0] * len(cpu)},
                       memory_growth=[100] * len(cpu), generator_cpu_s=0.1, latency={}, idle_cores=[0.01] * len(cpu),
                       window_s=window, samples=samples, redis_sys_s=[c / 50 for c in cpu])


def test_combined_phase_is_the_summed_cpu_over_the_summed_gifts() -> None:
    a = _phase(3, "same", 1000, [0.1, 0.2, 0.3], 1.0, [0.001] * 9 + [0.1])
    b = _phase(3, "same", 3000, [0.3, 0.4, 0.5], 2.0, [0.002] * 10)
    both = combine("3 shard(s), same-shard pairs only", [a, b])
    assert (both.settled, both.window_s, both.redis_cpu_s) == (4000, 3.0, pytest.approx([0.4, 0.6, 0.8]))
    assert both.counts["script_calls"] == [666 + 2000] * 3 and both.memory_growth == [200] * 3
    # The kernel's part sums too: a fiftieth of each phase's CPU, so of the combined one.
    assert both.redis_sys_s == pytest.approx([0.008, 0.012, 0.016]) and both.sys_share == pytest.approx(0.02)
    # Per gift: 1.8 s over 4,000 gifts; marginal: less 0.01 cores over the 3 s of both windows.
    assert both.total_us_per_gift == pytest.approx(450.0)
    assert both.marginal_total_us_per_gift == pytest.approx((1.8 - 3 * 0.01 * 3.0) / 4000 * 1e6)
    assert both.latency["p50_ms"] == pytest.approx(2.0) and len(both.samples) == 20
    assert cost_of(both) == cluster_model.Cost(pytest.approx(1.8 - 0.09), 4000)
    with pytest.raises(ValueError, match="one kind"):
        combine("mixed", [a, _phase(3, "cross", 10, [0.1, 0.1, 0.1], 1.0, [])])


def test_the_summed_rounds_give_the_model_of_the_combined_phases() -> None:
    # What the bench reports twice: the model of the combined phases (derived.model) and
    # cluster_model.paired's summed model from the rounds' costs must agree.
    rounds = [(_phase(1, "mixed", 500 + 100 * k, [0.15 + 0.01 * k], 1.0, []),
               _phase(3, "same", 1200, [0.12, 0.13, 0.14 + 0.02 * k], 1.0, []),
               _phase(3, "cross", 400, [0.1, 0.11, 0.12 + 0.01 * k], 1.0, [])) for k in range(3)]
    combined = model_of(*(combine("c", [r[i] for r in rounds]) for i in range(3)))
    paired = cluster_model.paired([(cost_of(a), cost_of(b), cost_of(c)) for a, b, c in rounds], 3, 0.01, 0.01)
    assert paired.summed.ratio == pytest.approx(combined.ratio)
    assert paired.ratios == pytest.approx([model_of(*r).ratio for r in rounds])


def test_rounds_are_checked() -> None:
    assert FULL.rounds == 3 and QUICK.rounds >= 2
    assert plan_of(quick=False, concurrency=None, rounds=None, runs=1) == FULL
    assert plan_of(quick=True, concurrency=8, rounds=0, runs=3).rounds == 0
    for rounds in (-1, MAX_ROUNDS + 1):
        with pytest.raises(ValueError, match=f"--rounds takes 0 to {MAX_ROUNDS}"):
            plan_of(quick=False, concurrency=None, rounds=rounds, runs=1)
    with pytest.raises(ValueError, match="--runs takes 1 to 20"):
        plan_of(quick=False, concurrency=None, rounds=None, runs=0)
    with pytest.raises(ValueError, match="--concurrency must be at least 1"):
        plan_of(quick=False, concurrency=0, rounds=None, runs=1)
