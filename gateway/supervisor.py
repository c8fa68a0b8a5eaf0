"""Keeps a node's background tasks running, and says so when one stops.

A background task that ends (it returned, or raised something its own loop did not catch,
such as a ``CancelledError`` out of a Redis call that nobody cancelled) used to stay dead
without a word while the node looked healthy: a sweeper that no longer expires gifts, a
subscriber that no longer hears. Here every such end is logged with its exception, counted
in ``notecard_background_restarts{task}``, and the task is started again after a short,
growing pause. :meth:`TaskSupervisor.restart` is the watchdog's lever on a task that is
alive but stuck; a task that does not end when cancelled cannot be restarted cleanly, and
the node is then asked to stop (``on_fatal``) so that its process manager starts a fresh
process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.metrics import NodeMetrics

log = logging.getLogger("notecard.gateway.supervisor")

TaskFactory = Callable[[], Coroutine[Any, Any, None]]

#: The first restart comes this soon; each one within RESET_AFTER_S of its start doubles it.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
#: A task that ran at least this long before ending is restarted at once.
RESET_AFTER_S = 30.0


@dataclasses.dataclass(slots=True)
class _Job:
    name: str
    factory: TaskFactory
    task: asyncio.Task[None] | None = None
    started_at: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    #: Set while the supervisor itself is ending the task (restart, stop): not a failure.
    ending: bool = False
    pending_start: asyncio.TimerHandle | None = None


class TaskSupervisor:
    def __init__(self, prefix: str, metrics: NodeMetrics, on_fatal: Callable[[str], None]) -> None:
        self.prefix = prefix
        self.metrics = metrics
        self.on_fatal = on_fatal
        self._jobs: dict[str, _Job] = {}
        self.stopping = False

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` as a task now, and again whenever it ends until :meth:`stop`."""
        if name in self._jobs:
            raise ValueError(f"task {name!r} already supervised")
        job = self._jobs[name] = _Job(name, factory)
        self._launch(job)

    def task(self, name: str) -> asyncio.Task[None] | None:
        """The current task of a job (None between a crash and its restart)."""
        return self._jobs[name].task

    async def restart(self, name: str, reason: str, grace_s: float) -> bool:
        """Cancel a job's task and start it again. False (and ``on_fatal``) when the task
        did not end within ``grace_s`` of its cancellation."""
        job = self._jobs[name]
        task = job.task
        log.error("restarting a stuck background task", extra={"task": name, "reason": reason})
        self.metrics.background_restarts.labels(task=name).inc()
        if task is not None and not task.done():
            job.ending = True
            task.cancel()
            await asyncio.wait({task}, timeout=grace_s)
            if not task.done():
                self.on_fatal(f"background task {name} ignored its cancellation")
                return False
        job.ending = False
        if not self.stopping and job.pending_start is None:
            self._launch(job)
        return True

    async def stop(self, grace_s: float) -> list[str]:
        """Cancel every task; returns the names of those still running after ``grace_s``."""
        self.stopping = True
        tasks = []
        for job in self._jobs.values():
            if job.pending_start is not None:
                job.pending_start.cancel()
                job.pending_start = None
            if job.task is not None and not job.task.done():
                job.ending = True
                job.task.cancel()
                tasks.append(job.task)
        if not tasks:
            return []
        _, stuck = await asyncio.wait(tasks, timeout=grace_s)
        return sorted(t.get_name() for t in stuck)

    # ------------------------------------------------------------ plumbing
    def _launch(self, job: _Job) -> None:
        job.pending_start = None
        job.started_at = time.monotonic()
        job.task = asyncio.create_task(job.factory(), name=f"{self.prefix}:{job.name}")
        job.task.add_done_callback(lambda task: self._ended(job, task))

    def _ended(self, job: _Job, task: asyncio.Task[None]) -> None:
        if job.task is not task or job.ending or self.stopping:
            return
        job.task = None
        ran_s = time.monotonic() - job.started_at
        if task.cancelled():
            how, exc_info = "was cancelled", None
        elif (exc := task.exception()) is not None:
            how, exc_info = "raised", exc
        else:
            how, exc_info = "returned", None
        if ran_s >= RESET_AFTER_S:
            job.backoff_s = FIRST_BACKOFF_S
        delay = job.backoff_s
        job.backoff_s = min(MAX_BACKOFF_S, job.backoff_s * 2)
        log.error("background task %s %s; restarting it", job.name, how, exc_info=exc_info,
                  extra={"task": job.name, "ran_s": round(ran_s, 3), "restart_in_s": delay})
        self.metrics.background_restarts.labels(task=job.name).inc()
        job.pending_start = asyncio.get_running_loop().call_later(delay, self._launch, job)
