"""Sampling profiles of the processes under load, with py-spy, and where their time goes.

Why py-spy: it attaches to running processes from outside (the gateway nodes are separate
processes started by :class:`notecard.cluster.LocalCluster`), needs no change to them, and
with ``--nonblocking`` does not pause them. It costs CPU of its own, which on a 2-core
machine lowers what it measures: ``notecard bench --profile`` is for finding the hot path,
the table of a run without it is the one to quote.

Each profile is py-spy's "raw" format (one collapsed stack and its sample count a line);
:func:`summarize` folds it into shares by package of the innermost frame (where the CPU
was actually spent: websockets, redis, asyncio, logging...) and the functions with the
largest inclusive share.
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

#: Samples per second per process; py-spy's default is 100.
RATE_HZ = 100
_FRAME_PATH = re.compile(r"\((?P<path>[^():]+)(?::\d+)?\)$")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


@contextlib.contextmanager
def recording(pids: Mapping[str, int], out: Path, duration_s: float) -> Iterator[None]:
    """py-spy on every process of ``pids`` for ``duration_s`` while the block runs."""
    binary = find_py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy, or the 'load' extra)")
    out.mkdir(parents=True, exist_ok=True)
    children = [
        subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(duration_s))), "--rate",
             str(RATE_HZ), "--nonblocking", "--format", "raw", "--output", str(out / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    try:
        yield
    finally:
        for child in children:
            try:
                child.wait(timeout=duration_s + 30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)


def _package(frame: str) -> str:
    if frame.startswith("Runner.run (asyncio/runners.py"):
        # uvloop is C: time in its loop (epoll, socket reads and writes) lands here.
        return "event loop (uvloop: epoll, socket I/O)"
    match = _FRAME_PATH.search(frame)
    if match is None:
        return "?"
    path = match.group("path")
    if path.startswith("<frozen"):
        return "stdlib"
    parts = Path(path).parts
    return parts[0] if len(parts) > 1 else Path(path).stem


def summarize(raw: Path, top: int = 25) -> str:
    """Shares of the samples by package of the innermost frame, and top inclusive functions."""
    by_package: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        by_package[_package(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return f"{raw.name}: no samples\n"
    lines = [f"{raw.stem}: {total} samples (on-CPU only)", "", "by package of the innermost frame:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_package.most_common(12)]
    lines += ["", "functions by inclusive share (entry points that hold every sample left out):"]
    shares = [(name, n) for name, n in inclusive.most_common() if n < 0.99 * total]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in shares[:top]]
    return "\n".join(lines) + "\n"
