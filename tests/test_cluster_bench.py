"""``notecard bench --cluster --quick`` measures every phase and writes its table and JSON.

No speed is asserted (docs/capacity.md quotes measured runs): only that each phase settled
gifts, that Redis CPU was charged to the shards it measured, that pairs land where the
phase says (same-shard pairs never cross, cross-shard pairs always do), that a gift on one
instance is two script calls (send, resolve), that cards were conserved on every topology,
that gifts went through the gateway nodes with none lost, that the derived ratios agree
with the phase figures, that each topology's idle rate was measured and taken out of the
marginal figures, that the random phase on N shards is balanced and crosses at ``1 - 1/N``,
that the paired rounds (1 shard and N shards side by side, the default) give a model per
round and their combined phases the summed one, and that ``--runs 2`` reports the median
of the two runs' figures (with ``--rounds 0``: the topologies one after the other).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest import cluster_model
from loadtest.cluster_bench import parse_shards

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_quick_cluster_bench_writes_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "cluster"
    done = subprocess.run(
        [sys.executable, "-m", "notecard", "bench", "--cluster", "--quick", "--shards", "1,2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gifts/s at one core per shard" in done.stdout
    assert "model at 50% crossing, balanced shards, marginal CPU: T(2) = F/2 + 1X/2" in done.stdout

    document = json.loads((out / "cluster.json").read_text())
    assert len(document["runs"]) == 1
    run = document["runs"][0]
    phases = {(p["shards"], p["mode"], p["forced_saga"]): p for p in run["phases"]}
    assert set(phases) == {(0, "mixed", False), (0, "mixed", True), (1, "mixed", False), (2, "mixed", False),
                           (2, "same", False), (2, "cross", False), (2, "mixed+promotion", False)}
    plan = document["plan"]
    for key, p in phases.items():
        # c1, F and X are each the sum of the paired rounds' windows.
        _check_phase(p, run, plan["pair_phase_s"] * plan["rounds"] if key[1] in ("same", "cross") or key[0] == 1
                     else plan["phase_s"])
    # Random pairs on 2 shards: balanced, gifting in rounds, so exactly half the gifts crossed.
    assert phases[(2, "mixed", False)]["cross_shard_share"] == 0.5
    assert phases[(2, "mixed+promotion", False)]["cross_shard_share"] == 0.5
    assert phases[(2, "cross", False)]["cross_shard_share"] == 1.0
    assert phases[(2, "same", False)]["cross_shard_share"] == 0.0
    assert phases[(0, "mixed", False)]["cross_shard_share"] == 0.0

    assert run["conservation"] and all(c["ok"] for c in run["conservation"].values())
    derived = run["derived"]
    one, two = phases[(1, "mixed", False)], phases[(2, "mixed", False)]
    assert math.isclose(derived["capacity_2_over_1_shard"],
                        two["capacity_per_s_one_core_per_shard"] / one["capacity_per_s_one_core_per_shard"])
    assert derived["one_instance_saga_over_one_script_cpu"] > 0
    assert derived["cross_over_same_shard_cpu_total"] > 0
    same, cross = phases[(2, "same", False)], phases[(2, "cross", False)]
    model = cluster_model.Model(2, one["marginal_redis_cpu_us_per_gift_total"],
                                same["marginal_redis_cpu_us_per_gift_total"],
                                cross["marginal_redis_cpu_us_per_gift_total"],
                                max(one["idle_cores_per_shard"]), max(same["idle_cores_per_shard"]))
    assert derived["model"]["ratio"] == pytest.approx(model.ratio) == pytest.approx(derived["model_2_over_1_shard"])
    assert derived["model"]["total_us_T"] == pytest.approx((same["marginal_redis_cpu_us_per_gift_total"]
                                                            + cross["marginal_redis_cpu_us_per_gift_total"]) / 2)

    gateway = run["gateway"]
    assert set(gateway) == {"one_instance", "2_shards"}
    for g in gateway.values():
        assert g["settled_per_s_max"] > 0 and g["lost"] == 0, g
        assert g["send_offer_max"]["count"] > 0 and g["send_offer_max"]["p99_ms"] > 0, g
        assert g["nodes_cpu_us_per_gift"] > 0, g

    memory = run["memory"]
    assert memory["fresh_user"]["keys"] > 0 and memory["fresh_user"]["bytes"] > 0
    assert memory["bench_user"]["bytes"] >= memory["fresh_user"]["bytes"]
    assert {"user", "bal"} <= set(memory["fresh_user"]["by_kind"])
    # The one-script path is two calls a gift (send, resolve); the saga six (admit, reserve,
    # offer; answer, settle, settled), forced on one instance or across shards.
    calls = {key: sum(p["script_calls_per_gift_per_shard"]) for key, p in phases.items()}
    for key, expected in (((0, "mixed", False), 2.0), ((0, "mixed", True), 6.0), ((2, "same", False), 2.0),
                          ((2, "cross", False), 6.0)):
        assert calls[key] == pytest.approx(expected, rel=0.05), (key, calls[key])

    _check_paired(run, plan, shards=2)

    rows = {row["key"]: row for row in run["table"]}
    assert rows["2_shards_paired_model_median"]["ratio"] == pytest.approx(run["paired"]["ratio"]["median"])
    assert rows["2_shards_paired_model_on_f_median"]["ratio"] == pytest.approx(run["paired"]["ratio_on_f"]["median"])
    assert rows["2_shards_model_on_f"]["ratio"] == pytest.approx(run["derived"]["model"]["ratio_on_f"])
    assert rows["2_shards_mixed_capacity"]["ceiling"] == pytest.approx(one["capacity_per_s_one_core_per_shard"])
    assert rows["2_shards_model_capacity"]["ratio"] == pytest.approx(model.ratio, rel=1e-5)
    assert rows["2_shards_mixed_marginal_capacity"]["ceiling"] == pytest.approx(
        one["marginal_capacity_per_s_one_core_per_shard"])
    assert (out / "cluster.md").read_text().startswith("| figure |")


def _check_phase(p: dict[str, Any], run: dict[str, Any], phase_s: float) -> None:
    shards = p["shards"]
    assert p["settled"] > 0 and p["settled_per_s"] > 0, p
    per_shard = p["redis_cpu_us_per_gift_per_shard"]
    assert len(per_shard) == max(1, shards), p
    assert all(v >= 0 for v in per_shard) and p["redis_cpu_us_per_gift_total"] > 0, p
    assert math.isclose(p["redis_cpu_us_per_gift_total"], sum(per_shard), rel_tol=1e-9)
    assert math.isclose(p["redis_cpu_us_per_gift_busiest_shard"], max(per_shard), rel_tol=1e-9)
    assert p["latency_ms"]["p99_ms"] >= p["latency_ms"]["p50_ms"] > 0
    # The idle rate is its topology's, measured before the phases; the marginal figure is
    # the raw one less that rate over the phase, never more than the raw one.
    idle = run["idle_cores"]["one instance" if shards == 0 else f"{shards} shard(s)"]
    assert p["idle_cores_per_shard"] == idle and all(0 < r < 0.5 for r in idle), p
    marginal = p["marginal_redis_cpu_us_per_gift_per_shard"]
    for raw, m, rate in zip(per_shard, marginal, idle, strict=True):
        assert m == pytest.approx(max(0.0, raw - rate * p["window_s"] / p["settled"] * 1e6), rel=1e-6)
        assert m <= raw
    assert p["window_s"] >= phase_s


def _check_paired(run: dict[str, Any], plan: dict[str, Any], *, shards: int) -> None:
    """The rounds: each one's c1, F and X from a window of its own after the ramp, the
    model per round from them, and the combined phases their sums."""
    paired = run["paired"]
    assert plan["rounds"] >= 2 and len(paired["phases"]) == len(paired["ratios"]) == plan["rounds"]
    # 1 shard idle alone, then with the N-shard cluster up: the rates its phases use.
    assert len(run["idle_cores"]["1 shard(s) alone"]) == 1 and len(run["idle_cores"][f"{shards} shard(s)"]) == shards
    for (c1, same, cross), model in zip(paired["phases"], paired["rounds"], strict=True):
        assert [p["shards"] for p in (c1, same, cross)] == [1, shards, shards]
        assert [p["mode"] for p in (c1, same, cross)] == ["mixed", "same", "cross"]
        for p in (c1, same, cross):
            _check_phase(p, run, plan["pair_phase_s"])
        assert (same["cross_shard_share"], cross["cross_shard_share"]) == (0.0, 1.0)
        assert model["c1_us"] == pytest.approx(c1["marginal_redis_cpu_us_per_gift_total"])
        assert model["same_us_F"] == pytest.approx(same["marginal_redis_cpu_us_per_gift_total"])
        assert model["cross_us_X"] == pytest.approx(cross["marginal_redis_cpu_us_per_gift_total"])
    ratios = sorted(paired["ratios"])
    assert paired["ratio"]["low"] == ratios[0] and paired["ratio"]["high"] == ratios[-1]
    assert ratios[0] <= paired["ratio"]["median"] <= ratios[-1]
    phases = {(p["shards"], p["mode"]): p for p in run["phases"]}
    for k, key in enumerate(((1, "mixed"), (shards, "same"), (shards, "cross"))):
        assert phases[key]["settled"] == sum(trio[k]["settled"] for trio in paired["phases"])
    derived = run["derived"]
    assert paired["summed"]["ratio"] == pytest.approx(derived["model"]["ratio"])
    assert derived[f"paired_model_{shards}_over_1_shard_median"] == paired["ratio"]["median"]
    assert run["conservation"]["1 shard(s)"]["ok"] and run["conservation"][f"{shards} shard(s)"]["ok"]


def test_shard_counts_are_checked() -> None:
    assert parse_shards("3,1,2,1") == [1, 2, 3]
    for bad in ("", "0,1", "1,17", "a"):
        with pytest.raises(ValueError, match="shard counts from 1 to 16"):
            parse_shards(bad)


def test_runs_report_the_median_of_each_figure(tmp_path: Path) -> None:
    out = tmp_path / "cluster"
    done = subprocess.run(
        [sys.executable, "-m", "notecard", "bench", "--cluster", "--quick", "--shards", "1,3", "--no-gateway",
         "--runs", "2", "--rounds", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "run 2 of 2" in done.stdout and "over the 2 runs:" in done.stdout

    document = json.loads((out / "cluster.json").read_text())
    runs = document["runs"]
    assert len(runs) == 2 and all(all(c["ok"] for c in r["conservation"].values()) for r in runs)
    assert document["plan"]["rounds"] == 0
    for r in runs:
        assert r["paired"] == {} and "1 shard(s) alone" not in r["idle_cores"]
        random_phase = next(p for p in r["phases"] if p["shards"] == 3 and p["mode"] == "mixed")
        # 9 balanced pairs on 3 shards (the multiple of 9 nearest 4), in rounds: 2 gifts in 3 cross.
        assert random_phase["cross_shard_share"] == pytest.approx(2 / 3)
    summary = {entry["key"]: entry for entry in document["summary"]["table"]}
    bar = summary["3_shards_model_capacity"]
    ratios = sorted(next(row["ratio"] for row in r["table"] if row["key"] == "3_shards_model_capacity")
                    for r in runs)
    assert bar["ratio"]["median"] == pytest.approx(sum(ratios) / 2, rel=1e-5)
    assert (bar["ratio"]["low"], bar["ratio"]["high"]) == (pytest.approx(ratios[0]), pytest.approx(ratios[1]))
    assert bar["target"] == "ratio >= 2" and "runs met)" in bar["verdict"]
    models = sorted(r["derived"]["model_3_over_1_shard"] for r in runs)
    assert document["summary"]["derived"]["model_3_over_1_shard"]["median"] == pytest.approx(sum(models) / 2)
    assert (out / "cluster.md").read_text().startswith("Over 2 runs:")


def test_runs_are_checked() -> None:
    done = subprocess.run([sys.executable, "-m", "notecard", "bench", "--cluster", "--runs", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "--runs takes 1 to 20" in done.stderr
