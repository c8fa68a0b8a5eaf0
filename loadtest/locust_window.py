"""The measuring window of a Locust run: it opens once every user is set up.

Why: a gifting user first creates two accounts through the admin API and opens two
WebSocket connections. How long that, and Locust's own start of the test, take depends on
the machine and on what else runs on it: on a starved machine they used up a whole
8-second ``-t`` (which starts with the test), and the run measured no gift at all. So the
run is not timed from its start: each user says when its set-up is over (done or given
up), and once all of them have, the window opens, lasts ``--notecard-window`` seconds, and
the run quits. ``-t`` stays as the overall cap.

The window's request counts are read from Locust's own stats at both ends, on one clock
(``time.time``), so a rate over it counts no set-up time. With ``--processes`` or
``--master``, the master counts the set-ups its workers report, and its stats are as of the
workers' last reports (every few seconds).

Imported only by :mod:`loadtest.locustfile`, inside the Locust process (gevent).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from locust.env import Environment
from locust.runners import WorkerRunner

#: Message a user's process sends to the master (or to itself when alone) after set-up.
SET_UP = "notecard_set_up"
#: How often the master looks whether every user is set up.
_POLL_S = 0.1


class _SetUps:
    """Users whose set-up is over, as the counting process has heard of them."""

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0

    def add(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        self.done += 1
        if not msg.data.get("ok", False):
            self.failed += 1


#: One Locust process runs one test; reset by :func:`on_init` in the counting process.
_set_ups = _SetUps()


def user_set_up(environment: Environment, *, ok: bool) -> None:
    """Called by every user when its ``on_start`` is over, whether it succeeded or gave up:
    a user that gave up will never be ready, and the window must not wait for it."""
    runner: Any = environment.runner
    if runner is not None:
        runner.send_message(SET_UP, {"ok": ok})


def on_init(environment: Environment, **_kwargs: Any) -> None:
    """The master or the only process counts set-ups; a worker only sends them."""
    runner: Any = environment.runner
    if runner is not None and not isinstance(runner, WorkerRunner):
        _set_ups.done = _set_ups.failed = 0
        runner.register_message(SET_UP, _set_ups.add)


def request_counts(environment: Environment) -> dict[str, int]:
    """Requests per name so far (all request types of a name together)."""
    counts: dict[str, int] = {}
    for entry in environment.stats.entries.values():
        counts[entry.name] = counts.get(entry.name, 0) + entry.num_requests
    return counts


def measure(environment: Environment, window_s: float, path: str) -> None:
    """Wait until every user is set up, measure for ``window_s`` seconds, write the window
    to ``path`` (if given) and quit the run."""
    import gevent  # Locust's own dependency; imported here so the module imports without it

    runner: Any = environment.runner
    while runner.target_user_count <= 0 or _set_ups.done < runner.target_user_count:
        gevent.sleep(_POLL_S)
    started, before = time.time(), request_counts(environment)
    gevent.sleep(window_s)
    ended, after = time.time(), request_counts(environment)
    if path:
        Path(path).write_bytes(orjson.dumps({
            "started": started, "ended": ended, "users": _set_ups.done, "users_failed": _set_ups.failed,
            "before": before, "after": after,
        }))
    runner.quit()
