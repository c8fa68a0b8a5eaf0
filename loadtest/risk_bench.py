"""The risk engine's cost to the gift path (docs/risk.md, docs/benchmarks.md): settled
gifts/s through 2 gateway nodes and one Redis, with the risk engine off and on, in two
parts of one run.

1. **The signals** (what the nodes pay): rounds alternating the risk engine off
   (RISK_ENGINE=false) and on without a scorer, each round on fresh processes (the setting
   is read at start).
2. **The scorer** (what a ``notecard risk run`` process costs the gift path while it
   shares this machine): one set of nodes with the risk engine on, shadow mode (the
   benchmark's machine-like traffic is scored and audited, never refused), and one scorer
   process per priority; short phases alternate, in turned order, with no scorer running
   (the others stopped with SIGSTOP) and with each scorer running alone. Every phase is on
   the same processes and connections, so the machine's drift falls on all of them alike.
   Each phase reports the running scorer's CPU per event it scored (from /proc) and how
   many of the phase's events it scored.

Every round and phase also reads the CPU time (/proc) of the gift path, the nodes, Redis
and this process (the load generator), per settled gift: the bar is judged by CPU per
gift, off against on (``cpu_summary``), because the machine's neighbours move gifts/s far
more than the CPU a gift costs (docs/benchmarks.md section 11).

In production the scorer is a process of its own on machines of its own. On this one
machine it shares the cores with the nodes and Redis, so it is measured at two priorities:
``nice 0`` (an equal: what a scorer on the nodes' own machines would cost) and ``nice 19``
(only CPU the gift path leaves idle: the nearest this machine comes to a scorer on cores
of its own; Redis still serves its commands, and the nodes pay for the signals).

    .venv/bin/python -m loadtest.risk_bench [--seconds 5] [--rounds 3] [--cycles 4] [--pairs 16]
                                            [--nice 0 --nice 19] [--json out.json]

Also the ``risk`` phase of ``notecard bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from clearing.keys import DEFAULT_KEYS
from loadtest import gifting
from loadtest.stats import Recorder
from loadtest.target import LoadTarget
from notecard.admin_client import AdminClient
from risk.scorer import GROUP

#: The scorer's priorities measured by default: an equal, and only idle CPU.
DEFAULT_NICES = (0, 19)
SCORER_NAME = "bench"
READY_TIMEOUT_S = 30.0
#: Before a scorer's phase is measured, it scores the backlog the phases before it left,
#: for at most DRAIN_MAX_S, until no more than DRAINED_LAG entries wait.
DRAIN_MAX_S = 15.0
DRAINED_LAG = 100


async def _measure(target: LoadTarget, pairs: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    tgt = target.target
    async with AdminClient(tgt.admin_url, tgt.admin_token) as admin:
        provisioned = await gifting.provision_pairs(admin, pairs)
    async with gifting.GiftLoad(tgt.urls[0], tgt.urls[-1], tgt.token, provisioned, Recorder()) as load:
        await load.run_closed(warmup_s, "warmup")
        pids = gift_path_pids(target)
        cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        result = await load.run_closed(seconds, "max")
        cpu = {name: _cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    return {"settled_per_s": float(result.settled_per_s), "settled": result.settled,
            "gift_cpu_us_per_gift": cpu_us_per_gift(cpu, result.settled),
            "gift_cpu_s": {name: round(v, 3) for name, v in cpu.items()}}


def gift_path_pids(target: LoadTarget) -> dict[str, int]:
    """The processes a settled gift costs CPU in: the nodes, Redis and the load generator
    (this process: the SDK clients run in its event loop). A scorer is not among them: in
    production it has machines of its own, so its CPU is reported per event, apart."""
    assert target.redis.process is not None
    pids = {f"node{i + 1}": pid for i, pid in enumerate(target.node_pids())}
    return pids | {"redis": target.redis.process.pid, "generator": os.getpid()}


def _split(row: dict[str, Any], settled: int) -> str:
    """A phase's gift-path CPU per gift by process kind: where a difference comes from."""
    cpu = row["gift_cpu_s"]
    nodes = sum(v for k, v in cpu.items() if k.startswith("node"))
    parts = {"nodes": nodes, "Redis": cpu["redis"], "generator": cpu["generator"]}
    return ", ".join(f"{k} {1e6 * v / settled:.0f}" for k, v in parts.items()) if settled else "no gifts"


def cpu_us_per_gift(cpu_s: dict[str, float], settled: int) -> float:
    """The processes' CPU-seconds over a phase, in µs per gift settled in it (0 without gifts)."""
    return 1e6 * sum(cpu_s.values()) / settled if settled > 0 else 0.0


async def _scorer_lag(url: str) -> dict[str, int]:
    redis = aioredis.Redis.from_url(url)
    try:
        events, read = await _group_read(redis)
    finally:
        await redis.aclose()
    # events after the group's last delivered entry: not yet taken by any scorer
    return {"events": events, "unscored": events - read}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _scorer_joined(url: str, deadline_s: float) -> bool:
    """Whether the scorer has made its group (it is loaded and reading), waiting up to ``deadline_s``."""
    redis = aioredis.Redis.from_url(url)
    stream = DEFAULT_KEYS.risk_events()
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # no stream or no group yet
                groups = await redis.xinfo_groups(stream)
                if any(g["name"] in (GROUP, GROUP.encode()) for g in groups):
                    return True
            await asyncio.sleep(0.05)
        return False
    finally:
        await redis.aclose()


def mode_name(nice: int | None) -> str:
    """``off``, ``signals`` (signals, no scorer) or ``nice <n>`` (signals and a scorer)."""
    return "off" if nice is None else "signals" if nice < 0 else f"nice {nice}"


def run_round(work: Path, nice: int | None, pairs: int, seconds: float, warmup_s: float,
              say: Callable[[str], None]) -> dict[str, Any]:
    """One round on fresh processes. ``nice``: None, risk engine off; negative, the signals
    without a scorer; else a scorer at that nice value."""
    risk_on = nice is not None
    env = {"NOTECARD_RISK_ENGINE": "true" if risk_on else "false"}
    out: dict[str, Any] = {"mode": mode_name(nice)}
    with LoadTarget(work, nodes=2, env=env) as target:
        scorer: subprocess.Popen[bytes] | None = None
        if nice is not None and nice >= 0:
            tgt = target.target

            async def shadow() -> None:
                async with AdminClient(tgt.admin_url, tgt.admin_token) as admin:
                    await admin.risk_switches("bench", shadow=True)

            asyncio.run(shadow())
            prefix = ["nice", "-n", str(nice)] if nice and shutil.which("nice") else []
            scorer = subprocess.Popen(  # ended below, by this handle
                [*prefix, sys.executable, "-m", "notecard", "risk", "run", "--name", SCORER_NAME],
                env={**os.environ, "NOTECARD_REDIS_URL": target.redis.url}, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        try:
            cpu0 = 0.0
            if scorer is not None:
                if not asyncio.run(_scorer_joined(target.redis.url, READY_TIMEOUT_S)):
                    raise RuntimeError("the scorer did not start")
                cpu0 = _cpu_seconds(scorer.pid)  # its start (imports, model) is not scoring
            out |= asyncio.run(_measure(target, pairs, seconds, warmup_s))
            if scorer is not None:
                cpu = _cpu_seconds(scorer.pid) - cpu0
                out |= asyncio.run(_scorer_lag(target.redis.url))
                scored = out["events"] - out["unscored"]
                out["scorer_cpu_s"] = cpu
                out["scorer_cpu_us_per_event"] = 1e6 * cpu / scored if scored else 0.0
        finally:
            if scorer is not None:
                scorer.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    scorer.wait(10)
    lag = (f" (scorer: {out['events'] - out['unscored']} of {out['events']} events scored, "
           f"{out['scorer_cpu_us_per_event']:.0f} us CPU per event)" if "events" in out else "")
    say(f"risk {out['mode']}: {out['settled_per_s']:.0f} settled gifts/s, gift path "
        f"{out['gift_cpu_us_per_gift']:.0f} us CPU per gift ({_split(out, out['settled'])}){lag}")
    return out


async def _group_read(redis: aioredis.Redis) -> tuple[int, int]:
    """(events in the events stream, events the scorers' group has read). A node's entry
    holds a flush of events (``n`` of them, risk/signals.py); the benchmark's stream is
    small enough to be read whole."""
    stream = DEFAULT_KEYS.risk_events()
    last = "0-0"
    for group in await redis.xinfo_groups(stream):
        if group["name"] in (GROUP, GROUP.encode()):
            raw = group["last-delivered-id"]
            last = raw.decode() if isinstance(raw, bytes) else str(raw)
    done = tuple(map(int, last.split("-")))
    total = read = 0
    for entry_id, fields in await redis.xrange(stream) or []:
        n = int((fields or {}).get(b"n", 1))
        total += n
        text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        if tuple(map(int, text.split("-"))) <= done:
            read += n
    return total, read


def _start_scorer(url: str, nice: int, name: str) -> subprocess.Popen[bytes]:
    prefix = ["nice", "-n", str(nice)] if nice and shutil.which("nice") else []
    return subprocess.Popen(  # ended by the caller, by this handle
        [*prefix, sys.executable, "-m", "notecard", "risk", "run", "--name", name],
        env={**os.environ, "NOTECARD_REDIS_URL": url}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _phases(target: LoadTarget, scorers: dict[str, subprocess.Popen[bytes]], pairs: int, phase_s: float,
                  settle_s: float, cycles: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    tgt = target.target
    async with AdminClient(tgt.admin_url, tgt.admin_token) as admin:
        await admin.risk_switches("bench", shadow=True)
        provisioned = await gifting.provision_pairs(admin, pairs)
    redis = aioredis.Redis.from_url(target.redis.url)
    pids = gift_path_pids(target)
    modes = ["none", *scorers]
    rows: list[dict[str, Any]] = []
    try:
        async with gifting.GiftLoad(tgt.urls[0], tgt.urls[-1], tgt.token, provisioned, Recorder()) as load:
            await load.run_closed(settle_s, "warmup")
            for cycle in range(cycles):
                for mode in modes[cycle % len(modes):] + modes[:cycle % len(modes)]:
                    for name, proc in scorers.items():
                        os.kill(proc.pid, signal.SIGCONT if name == mode else signal.SIGSTOP)
                    # The running scorer takes in what the previous phases left, unmeasured, so
                    # that its phase pays for its own traffic only (if it can keep up at all).
                    await load.run_closed(settle_s, "settle")
                    drain_until = time.monotonic() + DRAIN_MAX_S
                    while mode in scorers and time.monotonic() < drain_until:
                        length, read = await _group_read(redis)
                        if length - read <= DRAINED_LAG:
                            break
                        await load.run_closed(0.5, "settle")
                    length0, read0 = await _group_read(redis)
                    cpu0 = _cpu_seconds(scorers[mode].pid) if mode in scorers else 0.0
                    gift_cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
                    result = await load.run_closed(phase_s, mode)
                    gift_cpu = {name: _cpu_seconds(pid) - gift_cpu0[name] for name, pid in pids.items()}
                    redis_cpu = gift_cpu["redis"]
                    length1, read1 = await _group_read(redis)
                    row: dict[str, Any] = {"cycle": cycle, "mode": mode, "settled_per_s": result.settled_per_s,
                                           "events": length1 - length0, "scored": read1 - read0,
                                           # Redis's CPU per settled gift: the scorer's commands show here
                                           "redis_cpu_us_per_gift": 1e6 * redis_cpu / result.settled
                                           if result.settled else 0.0,
                                           "settled": result.settled,
                                           "gift_cpu_us_per_gift": cpu_us_per_gift(gift_cpu, result.settled),
                                           "gift_cpu_s": {name: round(v, 3) for name, v in gift_cpu.items()}}
                    if mode in scorers:
                        cpu = _cpu_seconds(scorers[mode].pid) - cpu0
                        row["scorer_cpu_s"] = cpu
                        row["scorer_cpu_us_per_event"] = 1e6 * cpu / row["scored"] if row["scored"] else 0.0
                    rows.append(row)
                    extra = (f" (scorer: {row['scored']} scored of {row['events']} events, "
                             f"{row['scorer_cpu_us_per_event']:.0f} us CPU per event)" if mode in scorers else "")
                    extra += (f" Redis {row['redis_cpu_us_per_gift']:.0f} us CPU per gift, gift path "
                              f"{row['gift_cpu_us_per_gift']:.0f} us CPU per gift ({_split(row, result.settled)})")
                    say(f"scorer {mode}: {row['settled_per_s']:.0f} settled gifts/s{extra}")
    finally:
        for proc in scorers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process does not end on SIGTERM
        await redis.aclose()
    return rows


def run_scorer_phases(work: Path, *, pairs: int, phase_s: float, cycles: int, nices: Sequence[int],
                      settle_s: float = 1.0, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Part 2: phases without a scorer and with each scorer alone, on one set of processes."""
    with LoadTarget(work, nodes=2, env={"NOTECARD_RISK_ENGINE": "true"}) as target:
        scorers = {mode_name(n): _start_scorer(target.redis.url, n, f"bench-{n}") for n in nices}
        try:
            if not asyncio.run(_scorer_joined(target.redis.url, READY_TIMEOUT_S)):
                raise RuntimeError("the scorers did not start")
            return asyncio.run(_phases(target, scorers, pairs, phase_s, settle_s, cycles, say))
        finally:
            for proc in scorers.values():
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


def _mean(rows: Sequence[dict[str, Any]], mode: str, key: str = "settled_per_s") -> float:
    values = [r[key] for r in rows if r["mode"] == mode]
    return statistics.mean(values) if values else 0.0


def _paired(rows: Sequence[dict[str, Any]], mode: str, base: str, group: str, key: str = "settled_per_s") -> float:
    """The median over cycles (or rounds) of mode / base within the same cycle."""
    ratios = []
    for cycle in sorted({r[group] for r in rows}):
        here = [r[key] for r in rows if r[group] == cycle and r["mode"] == mode]
        under = [r[key] for r in rows if r[group] == cycle and r["mode"] == base]
        if here and under and under[0] > 0:
            ratios.append(here[0] / under[0])
    return statistics.median(ratios) if ratios else 0.0


def _median(rows: Sequence[dict[str, Any]], mode: str, key: str) -> float:
    values = [r[key] for r in rows if r["mode"] == mode and r.get(key)]
    return statistics.median(values) if values else 0.0


CPU = "gift_cpu_us_per_gift"


def cpu_summary(signal_rows: Sequence[dict[str, Any]], phase_rows: Sequence[dict[str, Any]],
                modes: Sequence[str]) -> dict[str, Any]:
    """The bar by CPU: the gift path's (nodes + Redis + generator) CPU per settled gift, off
    and on, and the settled-gifts ratio on/off they imply at equal CPU (off / on per gift).

    A neighbour that takes the cores slows every process of a phase alike, so the phase's
    gifts/s moves with it; the CPU a gift costs moves much less (docs/benchmarks.md
    section 10). "On" is the signals (part 1: signals / off) times a scorer's presence
    (part 2: with it / without it, on the same processes), so per scorer mode
    ``on = signals * mode / none``; each factor is also given as the median of the ratios
    paired within a round or cycle. The scorer's own CPU is not in it (reported per event)."""
    off, sig = _median(signal_rows, "off", CPU), _median(signal_rows, "signals", CPU)
    none = _median(phase_rows, "none", CPU)
    signals_ratio = off / sig if sig else 0.0
    signals_paired = _paired(signal_rows, "off", "signals", "round", CPU)
    out: dict[str, Any] = {"off_us_per_gift": off, "signals_us_per_gift": sig, "no_scorer_us_per_gift": none,
                           "signals_ratio": signals_ratio, "signals_ratio_paired": signals_paired, "scorer": {}}
    for mode in modes:
        with_it = _median(phase_rows, mode, CPU)
        ratio = none / with_it if with_it else 0.0
        paired = _paired(phase_rows, "none", mode, "cycle", CPU)
        out["scorer"][mode] = {"with_us_per_gift": with_it, "ratio": ratio, "ratio_paired": paired,
                               "on_us_per_gift": sig * with_it / none if none else 0.0,
                               "on_over_off": signals_ratio * ratio, "on_over_off_paired": signals_paired * paired}
    return out


def run(work: Path, *, pairs: int, seconds: float, rounds: int, warmup_s: float = 1.0,
        say: Callable[[str], None] = print, nices: Sequence[int] = DEFAULT_NICES, cycles: int = 4) -> dict[str, Any]:
    """Both parts. Returns every round and phase, the means, and on/off per scorer priority:
    the signals' factor (signals / off, part 1) times the scorer's (with it / without it,
    part 2), as ratios of means and as medians of paired ratios."""
    signal_rows = []
    for i in range(rounds):
        order: list[int | None] = [None, -1] if i % 2 == 0 else [-1, None]
        for nice in order:
            row = run_round(work / f"r{i}-{mode_name(nice)}", nice, pairs, seconds, warmup_s, say)
            row["round"] = i
            signal_rows.append(row)
    phase_rows = run_scorer_phases(work / "phases", pairs=pairs, phase_s=seconds, cycles=cycles, nices=nices,
                                   say=say) if nices else []
    signals = _mean(signal_rows, "signals") / _mean(signal_rows, "off") if _mean(signal_rows, "off") else 0.0
    signals_paired = _paired(signal_rows, "signals", "off", "round")
    scorer: dict[str, dict[str, float]] = {}
    none = _mean(phase_rows, "none")
    for n in nices:
        mode = mode_name(n)
        factor = _mean(phase_rows, mode) / none if none else 0.0
        paired = _paired(phase_rows, mode, "none", "cycle")
        events = sum(r["events"] for r in phase_rows if r["mode"] == mode)
        scorer[mode] = {"factor": factor, "factor_paired": paired, "on_over_off": signals * factor,
                        "on_over_off_paired": signals_paired * paired,
                        "cpu_us_per_event": _mean(phase_rows, mode, "scorer_cpu_us_per_event"),
                        "redis_cpu_us_per_gift": _mean(phase_rows, mode, "redis_cpu_us_per_gift"),
                        "scored_share": sum(r["scored"] for r in phase_rows if r["mode"] == mode) / events
                        if events else 0.0}
    # What answers the bar: the scorer kept off the gift path's CPU (the most idle priority
    # measured), as a deployment gives it machines of its own (docs/risk.md).
    bar_mode = mode_name(max(nices)) if nices else ""
    off = _mean(signal_rows, "off")
    on_over_off = scorer[bar_mode]["on_over_off"] if bar_mode else signals
    cpu = cpu_summary(signal_rows, phase_rows, [mode_name(n) for n in nices])
    cpu_on_over_off = cpu["scorer"][bar_mode]["on_over_off"] if bar_mode else cpu["signals_ratio"]
    return {"signal_rounds": signal_rows, "scorer_phases": phase_rows, "signals_factor": signals,
            "signals_factor_paired": signals_paired, "no_scorer_settled_per_s": none, "scorer": scorer,
            "no_scorer_redis_cpu_us_per_gift": _mean(phase_rows, "none", "redis_cpu_us_per_gift"),
            "bar_mode": bar_mode, "off_settled_per_s": off, "on_settled_per_s": off * on_over_off,
            "on_over_off": on_over_off, "cpu": cpu, "cpu_on_over_off": cpu_on_over_off,
            "cpu_off_us_per_gift": cpu["off_us_per_gift"],
            "cpu_on_us_per_gift": cpu["scorer"][bar_mode]["on_us_per_gift"] if bar_mode
            else cpu["signals_us_per_gift"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.risk_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round and per phase")
    parser.add_argument("--rounds", type=int, default=3, help="part 1: off / signals rounds")
    parser.add_argument("--cycles", type=int, default=4, help="part 2: cycles of the scorer phases")
    parser.add_argument("--pairs", type=int, default=16, help="gift pairs")
    parser.add_argument("--nice", type=int, action="append",
                        help="a scorer's nice value, one phase each (repeat; default "
                             f"{' and '.join(map(str, DEFAULT_NICES))})")
    parser.add_argument("--json", type=Path, help="also write every round, phase and summary here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="notecard-risk-bench-") as work:
        result = run(Path(work), pairs=args.pairs, seconds=args.seconds, rounds=args.rounds, cycles=args.cycles,
                     nices=tuple(args.nice) if args.nice is not None else DEFAULT_NICES)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"signals (part 1): off {_mean(result['signal_rounds'], 'off'):.0f}, "
          f"signals {_mean(result['signal_rounds'], 'signals'):.0f} settled gifts/s: factor "
          f"{result['signals_factor']:.3f} (median of rounds {result['signals_factor_paired']:.3f})")
    for mode, s in result["scorer"].items():
        print(f"scorer {mode} (part 2): factor {s['factor']:.3f} (median of cycles {s['factor_paired']:.3f}) "
              f"against {result['no_scorer_settled_per_s']:.0f} gifts/s without; {s['cpu_us_per_event']:.0f} us "
              f"CPU per event, {100 * s['scored_share']:.0f} % of the phases' events scored, Redis "
              f"{s['redis_cpu_us_per_gift']:.0f} us CPU per gift (without: "
              f"{result['no_scorer_redis_cpu_us_per_gift']:.0f}); on/off "
              f"{s['on_over_off']:.3f} (medians {s['on_over_off_paired']:.3f})")
    print(f"bar (on/off >= 0.90) answered by the scorer at {result['bar_mode'] or 'none'}: "
          f"{result['on_over_off']:.3f} by throughput")
    cpu = result["cpu"]
    print(f"gift path CPU per gift (nodes + Redis + generator; medians): off {cpu['off_us_per_gift']:.0f} us, "
          f"signals {cpu['signals_us_per_gift']:.0f} us: ratio at equal CPU {cpu['signals_ratio']:.3f} "
          f"(median of rounds {cpu['signals_ratio_paired']:.3f})")
    for mode, c in cpu["scorer"].items():
        print(f"scorer {mode}: gift path {c['with_us_per_gift']:.0f} us per gift against "
              f"{cpu['no_scorer_us_per_gift']:.0f} without: ratio {c['ratio']:.3f} (median of cycles "
              f"{c['ratio_paired']:.3f}); on {c['on_us_per_gift']:.0f} us per gift against off "
              f"{cpu['off_us_per_gift']:.0f}: on/off at equal CPU {c['on_over_off']:.3f} "
              f"(medians {c['on_over_off_paired']:.3f})")
    print(f"bar (on/off >= 0.90) by CPU per gift, scorer at {result['bar_mode'] or 'none'}: "
          f"{result['cpu_on_over_off']:.3f} ({'met' if result['cpu_on_over_off'] >= 0.9 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
