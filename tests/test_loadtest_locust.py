"""The Locust scenarios run headless against a local cluster and report every step.

A short run (a few seconds) of the three user classes on a 2-node LocalCluster: the CSV
must list each request and push with its latency and no failure. No timing assertions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.blocking_client import BlockingConnection, RequestFailed
from loadtest.locust_run import LocustResult, LocustRow, LocustWindow, run_locust
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


def test_the_measuring_window_opens_once_every_user_is_set_up(served: LoadTarget, tmp_path: Path) -> None:
    """The run is timed from the moment every user is set up, not from the spawn: on a
    starved machine the set-up of 8 users outlasted a whole 8-second run, which then
    measured no gift at all. Here the window is shorter than any set-up could promise to be."""
    target_file = tmp_path / "target.json"
    served.target.write(target_file)
    users = 4
    result = run_locust(target_file, tmp_path / "run", users=users, duration_s=2)
    assert result.returncode == 0, (tmp_path / "run_locust.log").read_text()[-3000:]
    window = result.window
    assert window is not None, (tmp_path / "run_locust.log").read_text()[-3000:]
    assert window.users == users and window.users_failed == 0
    assert window.seconds >= 2
    # Every account and connection was made before the window opened and none inside it.
    assert window.before["provision"] == window.after["provision"] == users
    assert window.before["connect"] == window.after["connect"] == 2 * users
    assert window.requests("send->outcome") > 0
    assert result.steady_rate("send->outcome") == window.rate("send->outcome") > 0


def test_the_steady_rate_is_the_window_s_not_the_whole_run_s() -> None:
    # A run that spent 10 s setting up and then settled 30 gifts in 3 s: its history (and
    # Locust's own average) would stretch those over the set-up.
    window = LocustWindow(started=110.0, ended=113.0, users=8, users_failed=0,
                          before={"send->outcome": 0, "connect": 16}, after={"send->outcome": 30, "connect": 16})
    result = LocustResult(_result({}, requests=30).rows, {"send->outcome": [(101.0, 1), (112.0, 20), (113.0, 30)]},
                          0, Path("unused"), window)
    assert result.steady_rate("send->outcome") == 10.0
    assert window.requests("connect") == 0 and window.rate("send->offer") == 0.0
    # Without a window (a run ended early by `until`), the history still gives a rate.
    assert _result({"send->outcome": [(101.0, 1), (112.0, 20), (113.0, 30)]}, requests=30).steady_rate(
        "send->outcome") == 29 / 12
