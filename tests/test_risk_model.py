"""The model and its evaluation: `notecard risk train` and `eval` as an operator runs them,
on simulated traffic (risk/simulate.py). The seed docs/risk.md reports is used by no test."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from risk.cli import main as risk_main
from risk.evaluate import evaluate
from risk.features import FEATURES
from risk.model import MODEL_FILE, ModelError, load_model

#: Seeds of the tests; docs/risk.md's table comes from another one.
EVAL_SEED = 7
TRAIN_SEED = 11


async def test_the_shipped_model_meets_the_targets_on_traffic_it_was_not_trained_on() -> None:
    model = load_model()
    assert model.card["trained_on_seed"] != EVAL_SEED
    report = await evaluate(EVAL_SEED, model)
    assert report["bad_recall_within_10"] >= 0.95, report
    assert report["normal_fpr"] <= 0.005, report
    assert report["decide_p99_ms"] <= 2.0, report
    by_tier = {t["tier"]: t for t in report["tiers"]}
    assert by_tier["ban"]["recall"] >= 0.95 and by_tier["freeze"]["recall"] >= 0.95, report


@pytest.mark.slow
def test_train_writes_a_model_that_eval_reads_and_eval_refuses_the_training_seed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.json"
    assert risk_main(["train", "--seed", str(TRAIN_SEED), "--out", str(out), "--version", "test-1"]) == 0
    model = load_model(out)
    assert (model.version, model.card["trained_on_seed"]) == ("test-1", TRAIN_SEED)
    assert 0.5 <= model.threshold < 1
    assert risk_main(["eval", "--seed", str(TRAIN_SEED), "--model", str(out)]) == 2
    assert "training seed" in capsys.readouterr().err
    assert risk_main(["eval", "--seed", str(EVAL_SEED), "--model", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "test-1" and len(report["tiers"]) == 3


def test_a_model_made_for_other_features_is_refused(tmp_path: Path) -> None:
    d = orjson.loads(MODEL_FILE.read_bytes())
    d["features"] = [*FEATURES[:-1], "something_else"]
    path = tmp_path / "other.json"
    path.write_bytes(orjson.dumps(d))
    with pytest.raises(ModelError, match="made for features"):
        load_model(path)
    path.write_bytes(b"{")
    with pytest.raises(ModelError):
        load_model(path)
