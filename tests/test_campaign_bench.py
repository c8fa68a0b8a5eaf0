"""``notecard campaign bench`` on a tiny campaign: every figure is measured, the campaign ran to
its end with one gift per recipient, the budget balances and conservation holds. No timing
assertions: the numbers live in docs/benchmarks.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.campaign_bench import issuing_rate

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_issuing_rate_runs_from_the_first_issue_to_the_end() -> None:
    samples = [(0.0, 0, "running"), (1.0, 100, "running"), (3.0, 500, "done"), (4.0, 500, "done")]
    assert issuing_rate(samples) == 200.0
    assert math.isnan(issuing_rate([(0.0, 0, "running")]))


def test_a_tiny_campaign_bench_measures_both_phases_and_checks_the_campaign(tmp_path: Path) -> None:
    out = tmp_path / "campaign.json"
    done = subprocess.run(
        [sys.executable, "-m", "notecard", "campaign", "bench", "--recipients", "300", "--campaign-rate", "50",
         "--seconds", "4", "--windows", "2", "--pairs", "4", "--user-rate", "20", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["recipients_per_s"] > 0
    for phase in ("baseline", "campaign"):
        assert result["send_to_offer_ms"][phase]["count"] > 0
        assert result["user_gift_errors"][phase] == 0
    assert result["report"]["recipients"]["pending"] == 300 and result["report"]["balanced"]
    assert result["invariant_ok"] is True
