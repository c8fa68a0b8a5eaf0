"""``notecard bench --cluster --quick`` measures every phase and writes its table and JSON.

No speed is asserted (docs/capacity.md quotes measured runs): only that each phase settled
gifts, that Redis CPU was charged to the shards it measured, that pairs land where the
phase says (same-shard pairs never cross, cross-shard pairs always do), that a gift on one
instance is two script calls (send, resolve), that cards were conserved on every topology,
that gifts went through the gateway nodes with none lost, and that the derived ratios agree
with the phase figures.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

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

    document = json.loads((out / "cluster.json").read_text())
    phases = {(p["shards"], p["mode"], p["forced_saga"]): p for p in document["phases"]}
    assert set(phases) == {(0, "mixed", False), (0, "mixed", True), (1, "mixed", False), (2, "mixed", False),
                           (2, "same", False), (2, "cross", False), (2, "mixed+promotion", False)}
    for (shards, _mode, _forced), p in phases.items():
        assert p["settled"] > 0 and p["settled_per_s"] > 0, p
        per_shard = p["redis_cpu_us_per_gift_per_shard"]
        assert len(per_shard) == max(1, shards), p
        assert all(v >= 0 for v in per_shard) and p["redis_cpu_us_per_gift_total"] > 0, p
        assert math.isclose(p["redis_cpu_us_per_gift_total"], sum(per_shard), rel_tol=1e-9)
        assert math.isclose(p["redis_cpu_us_per_gift_busiest_shard"], max(per_shard), rel_tol=1e-9)
        assert p["latency_ms"]["p99_ms"] >= p["latency_ms"]["p50_ms"] > 0
    assert phases[(2, "cross", False)]["cross_shard_share"] == 1.0
    assert phases[(2, "same", False)]["cross_shard_share"] == 0.0
    assert phases[(0, "mixed", False)]["cross_shard_share"] == 0.0

    assert document["conservation"] and all(c["ok"] for c in document["conservation"].values())
    derived = document["derived"]
    one, two = phases[(1, "mixed", False)], phases[(2, "mixed", False)]
    assert math.isclose(derived["capacity_2_over_1_shard"],
                        two["capacity_per_s_one_core_per_shard"] / one["capacity_per_s_one_core_per_shard"])
    assert derived["one_instance_saga_over_one_script_cpu"] > 0
    assert derived["cross_over_same_shard_cpu_total"] > 0

    gateway = document["gateway"]
    assert set(gateway) == {"one_instance", "2_shards"}
    for g in gateway.values():
        assert g["settled_per_s_max"] > 0 and g["lost"] == 0, g
        assert g["send_offer_max"]["count"] > 0 and g["send_offer_max"]["p99_ms"] > 0, g
        assert g["nodes_cpu_us_per_gift"] > 0, g

    memory = document["memory"]
    assert memory["fresh_user"]["keys"] > 0 and memory["fresh_user"]["bytes"] > 0
    assert memory["bench_user"]["bytes"] >= memory["fresh_user"]["bytes"]
    assert {"user", "bal"} <= set(memory["fresh_user"]["by_kind"])
    # The one-script path is two calls a gift (send, resolve); the saga five (admit, reserve,
    # offer; answer, settle), forced on one instance or across shards.
    calls = {key: sum(p["script_calls_per_gift_per_shard"]) for key, p in phases.items()}
    for key, expected in (((0, "mixed", False), 2.0), ((0, "mixed", True), 5.0), ((2, "same", False), 2.0),
                          ((2, "cross", False), 5.0)):
        assert calls[key] == pytest.approx(expected, rel=0.05), (key, calls[key])

    rows = {row["key"]: row for row in document["table"]}
    assert rows["2_shards_mixed_capacity"]["ceiling"] == pytest.approx(one["capacity_per_s_one_core_per_shard"])
    assert (out / "cluster.md").read_text().startswith("| figure |")


def test_shard_counts_are_checked() -> None:
    assert parse_shards("3,1,2,1") == [1, 2, 3]
    for bad in ("", "0,1", "1,17", "a"):
        with pytest.raises(ValueError, match="shard counts from 1 to 16"):
            parse_shards(bad)
