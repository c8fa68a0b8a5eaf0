"""``notecard bench --cluster --instructions`` (loadtest/cluster_instr.py): its arithmetic,
the launcher prefix of the local servers, the missing-valgrind message, and one quick run
end to end under callgrind (valgrind is installed by ``scripts/setup test``: without it the
run fails here, it is not skipped)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import cluster_instr as ci
from notecard.local_cluster import LocalCluster
from notecard.local_redis import LocalRedis

ROOT = Path(__file__).resolve().parent.parent


def test_marginal_takes_the_background_out_over_the_phase_time() -> None:
    # 2 s of phase; the idle window lasted 2.5 s and counted 1M, so 0.8M of the phase was background.
    assert ci.marginal([10_000_000, 900_000], [1_000_000, 1_000_000], 2.0, 2.5) == pytest.approx(
        [9_200_000.0, 100_000.0])
    # A shard that did nothing reads a little under its idle count: noise, not negative work.
    assert ci.marginal([700_000], [1_000_000], 2.0, 2.5) == [0.0]
    with pytest.raises(ValueError, match="one idle count per server"):
        ci.marginal([1, 2], [1], 1.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        ci.marginal([1], [1], 1.0, 0.0)


def test_model_on_instructions() -> None:
    # c1 1.9M, F 1.95M, X 2.6M: T(3) = 1.95/3 + 2 * 2.6/3 = 2.3833M, ratio 3 * 1.9 / 2.3833 = 2.39.
    model = ci.InstrModel(shards=3, c1=1_900_000, same=1_950_000, cross=2_600_000)
    assert model.share == pytest.approx(2 / 3)
    assert model.total == pytest.approx(2_383_333.33, rel=1e-6)
    assert model.ratio == pytest.approx(3 * 1_900_000 / 2_383_333.33, rel=1e-6)
    assert model.formula.endswith("= 2.39")
    # Two shards cross half the time.
    assert ci.InstrModel(2, 100.0, 100.0, 300.0).ratio == pytest.approx(1.0)
    assert math.isnan(ci.InstrModel(3, 1.0, 0.0, 0.0).ratio)


def _phase(shards: int, mode: str, counts: list[int], idle: list[int], settled: int) -> ci.InstrPhase:
    return ci.InstrPhase(name=mode, shards=shards, mode=mode, settled=settled, cross=0, seconds=1.0,
                         instructions=counts, idle_instructions=idle, idle_seconds=1.0)


def test_phase_figures_and_derived_ratios() -> None:
    one = _phase(1, "mixed", [2_100_000_000], [100_000_000], 1000)  # 2M per gift marginal
    same = _phase(3, "same", [700_000_000] * 3, [10_000_000] * 3, 1000)  # 690k per shard
    cross = _phase(3, "cross", [900_000_000, 800_000_000, 910_000_000], [10_000_000] * 3, 1000)
    mixed = _phase(3, "mixed", [800_000_000, 840_000_000, 760_000_000], [10_000_000] * 3, 900)
    assert one.per_gift == pytest.approx(2_000_000)
    assert one.idle_share == pytest.approx(100 / 2100)
    assert same.per_gift_per_shard == pytest.approx([690_000] * 3)
    derived = ci.derive([one, same, cross, mixed])
    f, x = 2_070_000, 2_580_000
    t = f / 3 + 2 * x / 3
    assert derived["model"]["ratio"] == pytest.approx(3 * 2_000_000 / t)
    assert derived["model_3_over_1_shard"] == derived["model"]["ratio"]
    assert derived["cross_over_same_shard"] == pytest.approx(x / f)
    # Raw: 2.1M for c1, 2.1M for F, 2.61M for X per gift, background left in.
    assert derived["raw_model_3_over_1_shard"] == pytest.approx(3 * 2.1e6 / (2.1e6 / 3 + 2 * 2.61e6 / 3))
    assert derived["random_phase_over_model"] == pytest.approx((790 + 830 + 750) * 1e6 / 900 / t)
    # The busiest shard of the random phase (830M / 900 gifts) against one shard's 2M per gift.
    assert derived["busiest_shard_3_over_1_shard"] == pytest.approx(2_000_000 / (830e6 / 900))
    assert ci.derive([one]) == {}


def test_missing_valgrind_is_said_clearly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    monkeypatch.setattr(ci.shutil, "which", lambda name: None)
    with pytest.raises(ci.ValgrindMissing, match="apt-get install valgrind"):
        ci.find_valgrind()
    assert ci.main(quick=True, largest=3, out=tmp_path, concurrency=None, gifts=None, command="test") == 2
    assert "valgrind is not installed" in capsys.readouterr().err


def test_local_servers_start_under_a_launcher_prefix(tmp_path: Path) -> None:
    # A shell that leaves a file in the server's data folder (given to the launcher), then
    # execs the rest of the command line: the file shows the prefix ran each server, the
    # cluster forming shows the server got its arguments. The default (no prefix) is what
    # every other test runs.
    script = 'echo launched > "$0/launched"; exec "$@"'
    with LocalCluster(tmp_path, shards=2, replicas=0, launcher=lambda d: ("sh", "-c", script, str(d))) as cluster:
        for server in cluster.servers:
            assert (server.data_dir / "launched").read_text() == "launched\n"
    assert LocalRedis(tmp_path / "plain").launcher == ()


@pytest.mark.slow
def test_quick_instruction_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "instr"
    done = subprocess.run(
        [sys.executable, "-m", "notecard", "bench", "--cluster", "--instructions", "--quick", "--shards", "1,3",
         "--gifts", "12", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "model on instructions: T(3) = F/3 + 2X/3" in done.stdout
    document = json.loads((out / "instructions.json").read_text())
    phases = {(p["shards"], p["mode"]): p for p in document["phases"]}
    assert set(phases) == {(1, "mixed"), (3, "same"), (3, "cross"), (3, "mixed")}
    for p in phases.values():
        assert p["settled"] >= 12
        assert len(p["instructions_per_shard"]) == p["shards"]
        # Every shard did work in every phase (each has pairs in each), and idled a little.
        assert all(n > 0 for n in p["marginal_instructions_per_gift_per_shard"])
        assert all(n > 0 for n in p["idle_instructions_per_shard"])
        assert 0 < p["idle_share_of_phase"] < 1
    assert phases[(3, "same")]["cross_shard_share"] == 0.0
    assert phases[(3, "cross")]["cross_shard_share"] == 1.0
    assert phases[(3, "mixed")]["cross_shard_share"] == pytest.approx(2 / 3)
    model = document["derived"]["model"]
    c1, f, x = (phases[k]["marginal_instructions_per_gift_total"] for k in ((1, "mixed"), (3, "same"), (3, "cross")))
    assert model["ratio"] == pytest.approx(3 * c1 / (f / 3 + 2 * x / 3))
    assert model["ratio"] > 0
    assert all(c["ok"] for c in document["conservation"].values())
    assert "valgrind" in document["valgrind"]
