"""``notecard bench --quick`` runs every phase briefly and writes well-formed output.

No timing assertions (performance claims live in docs/benchmarks.md, measured as ratios):
only that every figure was measured, ratios are consistent with their figures, and the
JSON, CSV, Markdown table and PNG plot are there and readable.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest import bench
from loadtest.report import Row, table

ROOT = Path(__file__).resolve().parent.parent
#: Rows whose value is a rate or a size that a run which did anything must make positive.
MEASURED = {"echo", "evalsha", "clearing_api", "gifts", "gifts_half", "delivery", "locust", "idle"}

pytestmark = pytest.mark.slow


def test_quick_bench_writes_table_json_series_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "notecard", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "settled gifts/s" in done.stdout and "verdict" in done.stdout

    document = json.loads((out / "bench.json").read_text())
    rows = {row["key"]: row for row in document["table"]}
    assert rows.keys() >= MEASURED
    for key in MEASURED:
        assert rows[key]["value"] is not None and rows[key]["value"] > 0, rows[key]
    for row in rows.values():
        if row["ratio"] is not None:
            assert math.isclose(row["ratio"], row["value"] / row["ceiling"], rel_tol=1e-3), row
    # Targets carry a verdict; the idle target needs 10,000 connections, so --quick says n/a.
    assert rows["gifts"]["verdict"].startswith(("met", "MISSED"))
    assert rows["idle"]["verdict"].startswith("n/a")
    assert {p["name"] for p in document["phases"]} >= {"echo", "clearing", "max", "half", "delivery", "locust", "idle"}
    assert document["node_env"]["NOTECARD_DAILY_SEND_LIMIT"] == "1000000"

    with (out / "series.csv").open(newline="") as fh:
        series = {row["series"] for row in csv.DictReader(fh)}
    assert {"echo/round_trip", "clearing/reserve", "max/send->offer", "max/send->outcome",
            "half/send->offer", "delivery/send->offer", "locust/send->outcome"} <= series

    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "table.md").read_text().startswith("| figure |")
    assert (out / "locust_stats.csv").exists()


def test_verdicts_say_by_how_much_a_target_is_missed() -> None:
    rows = [
        Row("r", "ratio row", 50.0, "/s", 1000.0, "ceiling", ("min", 0.10)),  # 0.05: half the target
        Row("l", "latency row", 30.0, "ms", target=("max", 20.0)),
        Row("ok", "met row", 600.0, "/s", 1000.0, "ceiling", ("min", 0.5)),
        Row("na", "not judged", 17.0, "KiB", target=("max", 20.0), note="too few"),
        Row("nc", "ceiling not measured", 960.0, "/s", None, "echo", ("min", 0.10)),  # --only without it
    ]
    assert [r.verdict for r in rows] == ["MISSED (x2.00 short)", "MISSED (x1.50 short)", "met", "n/a (too few)",
                                         "n/a (no echo ceiling in this run)"]
    assert [r.met for r in rows] == [False, False, True, None, None]
    text = table(rows)
    assert "0.050" in text and "ratio >= 0.1" in text
    assert table(rows, markdown=True).count("\n") == len(rows) + 1


def test_missing_load_extras_stop_the_bench_before_any_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Without matplotlib the bench used to run all its phases and then die in the plot."""
    real_find_spec = importlib.util.find_spec

    def without_matplotlib(name: str, *args: Any) -> Any:
        return None if name == "matplotlib" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_matplotlib)
    out = tmp_path / "never"
    assert bench.main(["--quick", "--only", "echo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "matplotlib not installed" in err and "scripts/setup load" in err
    assert not out.exists()


def test_micro_measures_every_part_briefly() -> None:
    """``notecard micro --quick`` runs each part (its own Redis, a frame server) and prints a
    positive CPU figure for every operation; no timing is asserted."""
    done = subprocess.run([sys.executable, "-m", "notecard", "micro", "--quick"], check=False, capture_output=True,
                          text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    figures = {}
    counts = {}
    part = ""
    for line in done.stdout.splitlines():
        if line.endswith(": CPU per operation"):
            part = line.split(":")[0]
        elif line.strip().endswith(" us"):
            name, value = line.strip().rsplit(maxsplit=2)[0], float(line.split()[-2])
            figures[(part, name)] = value
        elif "(count)" in line:
            name, value = line.strip().rsplit(maxsplit=1)[0], float(line.split()[-1])
            counts[(part, name)] = value
    assert {p for p, _ in figures} == {"redis", "pubsub", "frames", "codec", "scripts", "tokens"}
    assert len(figures) == 2 + 1 + 3 + 8 + 6 + 4  # redis, pubsub, frames, codec, scripts, tokens
    # The client's side of each script call is measured too (what a node spends in clearing).
    assert {n for p, n in figures if p == "scripts" and "client CPU" in n} == {
        "reserve: client CPU (this process)", "accept: client CPU (this process)"}
    assert all(math.isfinite(v) and v > 0 for v in figures.values())
    # Reserve and accept are one script call each on one Redis (the one-script path).
    assert counts == {("scripts", "reserve: script calls (count)"): 1.0,
                      ("scripts", "accept: script calls (count)"): 1.0}
