"""The Locust scenarios run headless against a local cluster and report every step.

A short run (a few seconds) of the three user classes on a 2-node LocalCluster: the CSV
must list each request and push with its latency and no failure. No timing assertions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.blocking_client import BlockingConnection, RequestFailed
from loadtest.locust_run import LocustResult, LocustRow, run_locust
from loadtest.target import LoadTarget, Target
from protocol import Ping, Pong

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadTarget]:
    with LoadTarget(tmp_path_factory.mktemp("locust-target"), nodes=2) as target:
        yield target


def test_headless_run_reports_requests_and_pushes(served: LoadTarget, tmp_path: Path) -> None:
    target_file = tmp_path / "target.json"
    served.target.write(target_file)
    assert Target.from_json(target_file.read_bytes()) == served.target
    names = ("provision", "connect", "send_gift", "send->offer", "accept", "send->outcome", "ping")
    # Bounded by 120 s, ended as soon as every step was seen a few times: a slow or busy
    # machine sets its users up slowly, and a fixed few seconds may end before the first gift.
    result = run_locust(target_file, tmp_path / "run", users=6, duration_s=120,
                        classes=("GiftingPair", "IdleConnection", "ReconnectStorm"), until=(3, names))
    assert result.returncode == 0, (tmp_path / "run_locust.log").read_text()[-3000:]
    rows = result.rows
    for name in names:
        assert name in rows, sorted(rows)
        assert rows[name].requests > 0
        assert rows[name].failures == 0, (name, (tmp_path / "run_failures.csv").read_text())
    assert rows["send->offer"].kind == "PUSH" and rows["send_gift"].kind == "WS"
    # Every offer of a settled gift was seen, and each gift's steps are counted once.
    assert rows["send->outcome"].requests <= rows["send->offer"].requests <= rows["send_gift"].requests
    assert result.steady_rate("send->outcome") > 0
    assert (tmp_path / "run_stats_history.csv").exists()


def test_blocking_client_speaks_the_protocol_without_locust(served: LoadTarget) -> None:
    target = served.target
    conn = BlockingConnection(target.urls[0], target.token("bc-user"), timeout_s=5)
    welcome = conn.connect()
    assert welcome.msg.TYPE == "welcome" and welcome.size > 0
    sent, pong = conn.request(lambda rid: Ping(rid=rid), Pong)
    assert pong.at >= sent and isinstance(pong.msg, Pong)
    conn.close()
    assert conn.close_code == 1000 and not conn.alive
    forged = BlockingConnection(target.urls[0], "bm90LWEtdG9rZW4.c2lnbmF0dXJl", timeout_s=5)
    with pytest.raises(RequestFailed) as refused:
        forged.connect()
    assert refused.value.code == "INVALID_TOKEN"


def _result(history: dict[str, list[tuple[float, int]]], requests: int) -> LocustResult:
    row = LocustRow(kind="WS", name="send->outcome", requests=requests, failures=0, median_ms=2.0, p99_ms=9.0,
                    per_s=1.0)
    return LocustResult({"send->outcome": row}, history, 0, Path("unused"))


def test_request_times_follow_the_history_rows() -> None:
    result = _result({"send->outcome": [(100.0, 0), (101.0, 4), (102.0, 6)]}, requests=6)
    times = result.request_times("send->outcome", 99.0, 103.0)
    assert len(times) == 6
    assert all(100.0 < t < 101.0 for t in times[:4]) and all(101.0 < t < 102.0 for t in times[4:])


@pytest.mark.parametrize("history", [[], [(101.0, 5)]])
def test_a_run_with_under_two_history_rows_still_has_its_requests(history: list[tuple[float, int]]) -> None:
    """A slow machine's 3-second run may leave one history row or none: the requests it made
    are spread over the run instead of vanishing from the series (they did before)."""
    result = _result({"send->outcome": history}, requests=5)
    times = result.request_times("send->outcome", 100.0, 103.0)
    assert len(times) == 5 and all(100.0 < t < 103.0 for t in times)
    assert result.request_times("send->offer", 100.0, 103.0) == []
