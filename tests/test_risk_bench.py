"""The risk benchmark's bar by CPU (loadtest/risk_bench.py): pure arithmetic on the rows a
run records, so hand-made rows with known answers. The numbers themselves are in
docs/benchmarks.md section 11."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest import bench
from loadtest.risk_bench import cpu_summary, cpu_us_per_gift


def _row(group: str, key: int, mode: str, cpu_us: float, rate: float = 100.0) -> dict[str, Any]:
    return {group: key, "mode": mode, "settled_per_s": rate, "gift_cpu_us_per_gift": cpu_us}


def test_cpu_per_gift_sums_the_processes_and_is_zero_without_gifts() -> None:
    assert cpu_us_per_gift({"node1": 0.3, "node2": 0.2, "redis": 0.4, "generator": 0.1}, 500) == pytest.approx(2000)
    assert cpu_us_per_gift({"node1": 0.3}, 0) == 0.0


def test_equal_cpu_ratio_is_off_over_on_through_signals_and_scorer_factors() -> None:
    # Throughput swings 4x between rounds; the CPU per gift does not, and decides.
    signal_rows = [_row("round", 0, "off", 1000, 400), _row("round", 0, "signals", 1010, 90),
                   _row("round", 1, "signals", 1030, 300), _row("round", 1, "off", 1000, 80),
                   _row("round", 2, "off", 1100), _row("round", 2, "signals", 1100)]
    phase_rows = [_row("cycle", 0, "none", 1200), _row("cycle", 0, "nice 0", 1500), _row("cycle", 0, "nice 19", 1250),
                  _row("cycle", 1, "nice 0", 1440), _row("cycle", 1, "nice 19", 1200), _row("cycle", 1, "none", 1200)]
    out = cpu_summary(signal_rows, phase_rows, ["nice 0", "nice 19"])
    assert out["off_us_per_gift"] == 1000 and out["signals_us_per_gift"] == 1030
    assert out["signals_ratio"] == pytest.approx(1000 / 1030)
    assert out["signals_ratio_paired"] == pytest.approx(1000 / 1010)  # median of 1000/1010, 1000/1030, 1
    nice19 = out["scorer"]["nice 19"]
    assert nice19["ratio"] == pytest.approx(1200 / 1225)  # median of 1250 and 1200
    assert nice19["ratio_paired"] == pytest.approx((1200 / 1250 + 1) / 2)
    assert nice19["on_us_per_gift"] == pytest.approx(1030 * 1225 / 1200)
    assert nice19["on_over_off"] == pytest.approx(1000 / nice19["on_us_per_gift"])
    nice0 = out["scorer"]["nice 0"]
    assert nice0["on_over_off"] == pytest.approx(1000 / 1030 * 1200 / 1470)
    assert nice0["on_over_off"] < 0.9 < nice19["on_over_off"]


def test_a_phase_without_gifts_is_left_out_and_no_rows_give_zero() -> None:
    signal_rows = [_row("round", 0, "off", 1000), _row("round", 0, "signals", 0.0),
                   _row("round", 1, "off", 1000), _row("round", 1, "signals", 1100)]
    out = cpu_summary(signal_rows, [], ["nice 19"])
    assert out["signals_us_per_gift"] == 1100 and out["signals_ratio_paired"] == pytest.approx(1000 / 1100)
    assert out["scorer"]["nice 19"] == {"with_us_per_gift": 0.0, "ratio": 0.0, "ratio_paired": 0.0,
                                        "on_us_per_gift": 0.0, "on_over_off": 0.0, "on_over_off_paired": 0.0}


def test_the_bench_table_judges_the_bar_by_gifts_per_cpu_second_too() -> None:
    risk = {"bar_mode": "nice 19", "on_settled_per_s": 100.0, "off_settled_per_s": 200.0,  # throughput: missed
            "cpu_on_us_per_gift": 2000.0, "cpu_off_us_per_gift": 1900.0}  # CPU: 0.95, met
    rows = {r.key: r for r in bench.rows_of({"risk": risk}, bench.QUICK)}
    assert rows["risk"].value / (rows["risk"].ceiling or 0) == pytest.approx(0.5)
    cpu = rows["risk_cpu"]
    assert cpu.value == pytest.approx(500) and cpu.ceiling == pytest.approx(1e6 / 1900)
    assert cpu.target == ("min", 0.9)
    assert cpu.value / (cpu.ceiling or 0) == pytest.approx(1900 / 2000)
