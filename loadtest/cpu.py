"""CPU used by named processes over a span, from Linux /proc: every benchmark's one reader
(loadtest/bench.py, cluster_bench.py, ledger_bench.py), so that their cores mean the same."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection
from pathlib import Path


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU time of a process so far (Linux /proc); with ``children``, plus
    that of its live children (a PostgreSQL postmaster does its work in them)."""
    tick = os.sysconf("SC_CLK_TCK")
    if not children:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        # a process may end between the listing and the read
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _cpu_times() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal)."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


class CpuMeter:
    """CPU seconds used by named processes (and the machine's steal time) over a span."""

    def __init__(self, pids: dict[str, int], *, with_children: Collection[str] = ()) -> None:
        """``with_children``: the names whose live children count as theirs."""
        self.pids = pids
        self._children = frozenset(with_children)
        self._start = {name: self._seconds(name) for name in pids}
        self._machine = _cpu_times()
        self._wall = time.perf_counter()

    def read(self) -> dict[str, float]:
        """Cores used per process over the span, plus the machine's steal and idle shares."""
        wall = time.perf_counter() - self._wall
        out = {name: round((self._seconds(name) - self._start[name]) / wall, 3) for name in self.pids}
        now = _cpu_times()
        delta = [b - a for a, b in zip(self._machine, now, strict=True)]
        total = sum(delta) or 1
        out["machine_steal_share"] = round(delta[7] / total, 3)
        out["machine_idle_share"] = round((delta[3] + delta[4]) / total, 3)
        cpus = os.cpu_count() or 1
        # Interrupt time (loopback TCP is processed there) is charged to no process.
        out["softirq_cores"] = round((delta[5] + delta[6]) / total * cpus, 3)
        # Cores kept busy by processes other than ours (the neighbours on a shared machine):
        # the one disturbance a ratio within the run does not cancel when it varies by phase.
        busy = (delta[0] + delta[1] + delta[2]) / total * cpus
        if self.pids:
            out["others_cores"] = round(max(0.0, busy - sum(out[name] for name in self.pids)), 3)
        else:
            out["busy_cores"] = round(busy, 3)
        return out

    def _seconds(self, name: str) -> float:
        return cpu_seconds(self.pids[name], children=name in self._children)
