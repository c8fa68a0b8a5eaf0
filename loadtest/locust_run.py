"""Run the Locust scenarios headless as a child process and read back what they measured.

Why a child process: Locust monkey-patches the standard library with gevent when it is
imported, which must never happen inside the bench's asyncio process. The bench (and the
tests) start ``python -m locust`` on :mod:`loadtest.locustfile`, bounded by ``-t`` and by
a timeout of our own, then parse its ``--csv`` files and its measuring window
(:mod:`loadtest.locust_window`): ``duration_s`` seconds that start once every user is set
up, however long that takes on a busy machine, within :data:`SETUP_CAP_S`.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
#: How long the users may take to set themselves up before the window opens. Generous: a
#: starved machine took over 8 s for 8 users; ``-t`` is this plus the window.
SETUP_CAP_S = 90.0
#: Beyond ``-t``: Locust's start-up and its stop.
_GRACE_S = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class LocustRow:
    kind: str
    name: str
    requests: int
    failures: int
    median_ms: float
    p99_ms: float
    per_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class LocustWindow:
    """The measuring window: unix times of its ends and the request counts at each."""

    started: float
    ended: float
    #: Users whose set-up was over when it opened, and how many of them had given up.
    users: int
    users_failed: int
    before: dict[str, int]
    after: dict[str, int]

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def requests(self, name: str) -> int:
        return self.after.get(name, 0) - self.before.get(name, 0)

    def rate(self, name: str) -> float:
        return self.requests(name) / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def read(cls, path: Path) -> LocustWindow | None:
        """The window the run wrote, or None when it never opened (the run ended first)."""
        if not path.exists():
            return None
        doc = json.loads(path.read_bytes())
        return cls(started=float(doc["started"]), ended=float(doc["ended"]), users=int(doc["users"]),
                   users_failed=int(doc["users_failed"]),
                   before={str(k): int(v) for k, v in doc["before"].items()},
                   after={str(k): int(v) for k, v in doc["after"].items()})


@dataclasses.dataclass(frozen=True, slots=True)
class LocustResult:
    rows: dict[str, LocustRow]
    #: Per name: (unix time, cumulative requests) from the history file.
    history: dict[str, list[tuple[float, int]]]
    returncode: int
    csv_prefix: Path
    window: LocustWindow | None = None

    def steady_rate(self, name: str) -> float:
        """Requests per second of ``name`` over the measuring window, which opened once
        every user was set up; without one (a run ended by ``until``, or one whose users
        never all got set up), between its first and last history rows.

        Users set themselves up (accounts, connections) before their first request, so
        Locust's own average (requests over the whole run) understates the steady rate.
        """
        if self.window is not None:
            return self.window.rate(name)
        points = [p for p in self.history.get(name, []) if p[1] > 0]
        if len(points) >= 3 and points[-1][0] > points[0][0]:
            return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
        row = self.rows.get(name)
        return row.per_s if row else 0.0

    def request_times(self, name: str, started: float, ended: float) -> list[float]:
        """One unix time per request of ``name``, for a per-second series.

        Each history row adds the requests since the previous row, spread evenly over that
        second. A run too short or a machine too slow for two history rows (Locust writes
        one a second, and only once its users are set up) still made requests: those are
        spread over the whole run, ``started`` to ``ended``, so no measured path goes
        missing from the series.
        """
        points = self.history.get(name, [])
        times = [t_prev + (k + 0.5) / (c - c_prev) * (t - t_prev)
                 for (t_prev, c_prev), (t, c) in itertools.pairwise(points) for k in range(c - c_prev)]
        row = self.rows.get(name)
        if times or row is None or row.requests <= 0:
            return times
        return [started + (k + 0.5) / row.requests * (ended - started) for k in range(row.requests)]


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def read_stats(prefix: Path) -> dict[str, LocustRow]:
    rows: dict[str, LocustRow] = {}
    with Path(f"{prefix}_stats.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["Name"]
            rows[name] = LocustRow(
                kind=row["Type"], name=name, requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]), median_ms=_float(row["Median Response Time"]),
                p99_ms=_float(row["99%"]), per_s=_float(row["Requests/s"]),
            )
    return rows


def read_history(prefix: Path) -> dict[str, list[tuple[float, int]]]:
    history: dict[str, list[tuple[float, int]]] = {}
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return history
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            history.setdefault(row["Name"], []).append((float(row["Timestamp"]), int(row["Total Request Count"])))
    return history


def run_locust(target_file: Path, csv_prefix: Path, *, users: int, duration_s: float,
               classes: Sequence[str] = ("GiftingPair",), processes: int = 1,
               log_file: Path | None = None, until: tuple[int, Sequence[str]] | None = None,
               setup_cap_s: float = SETUP_CAP_S) -> LocustResult:
    """``locust --headless`` with ``users`` users, all started at once, measuring for
    ``duration_s`` seconds from the moment every user is set up (``setup_cap_s`` at most).

    ``until=(n, names)`` ends the run earlier, once every name has ``n`` requests: a test
    waits for the work it needs, however slow the machine, with ``duration_s`` as the bound.
    """
    csv_prefix, target_file = csv_prefix.resolve(), target_file.resolve()  # the child runs elsewhere
    window_file = csv_prefix.with_name(csv_prefix.name + "_window.json")
    window_file.unlink(missing_ok=True)  # a window left by an earlier run in the same place
    cap_s = setup_cap_s + duration_s
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{max(1, math.ceil(cap_s))}s",
        "--csv", str(csv_prefix), "--csv-full-history", "--only-summary", "--stop-timeout", "5",
        "--notecard-target", str(target_file), "--loglevel", "WARNING",
        "--notecard-window", str(duration_s), "--notecard-window-file", str(window_file),
    ]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    if until is not None:
        cmd += ["--notecard-until", f"{until[0]}:{','.join(until[1])}"]
    cmd += list(classes)
    env = dict(os.environ)
    root = str(LOCUSTFILE.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    log = (log_file or csv_prefix.with_name(csv_prefix.name + "_locust.log")).open("wb")
    try:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=csv_prefix.parent,
                              timeout=cap_s + _GRACE_S, check=False)
    finally:
        log.close()
    return LocustResult(read_stats(csv_prefix), read_history(csv_prefix), done.returncode, csv_prefix,
                        LocustWindow.read(window_file))
