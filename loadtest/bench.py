"""``notecard bench``: throughput and latency of the gateway against this machine's ceilings.

Why ratios: the machine is shared and virtual, so an absolute number says as much about
the neighbours as about the code. One invocation measures the ceilings and the system
back to back on the same machine and reports each figure as a ratio to its ceiling:

a. raw ``websockets`` echo round trips/s (the framing ceiling)          :mod:`loadtest.echo`
b. FCALL rate of ``reserve.lua`` driven by ``redis-benchmark``          :mod:`loadtest.clearing_bench`
c. the clearing API's reserve rate at the same concurrency               (ratio to b)
d. settled gifts/s through 2 gateway nodes, SDK load generator, with
   p50/p99 of send->offer and send->outcome, at the maximum rate and at
   half of it (paced, open loop)                                         :mod:`loadtest.gifting`
e. cross-node offer delivery rate and latency (ratio to Redis pub/sub
   into one redis-py subscriber)
f. Locust's settled gifts/s at the same concurrency (ratio to d)         :mod:`loadtest.locust_run`
g. resident memory per idle authenticated connection on a fresh node     :mod:`loadtest.idle`

It prints one table (figure, ceiling, ratio, target, verdict) and writes ``bench.json``
(every number), ``series.csv`` (per-second throughput and latency of every measured path),
``bench.png`` (the same over time) and ``table.md`` into ``--out``. Every phase is bounded
in time, every process it starts is stopped by PID, and all traffic stays on 127.0.0.1.
The gateway nodes run with the load-test settings of :data:`loadtest.target.LOAD_ENV`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from loadtest import (
    clearing_bench,
    cluster_bench,
    cluster_instr,
    echo,
    gifting,
    idle,
    ledger_bench,
    locust_run,
    profiling,
    report,
    risk_bench,
)
from loadtest.cpu import CpuMeter
from loadtest.stats import LatencySummary, Recorder
from loadtest.target import LOAD_ENV, LoadTarget
from notecard.admin_client import AdminClient
from notecard.local_redis import free_port
from notecard.runner import settle_heap


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Durations (seconds) and sizes of one run."""

    echo_s: float
    clearing_s: float
    pubsub_messages: int
    warmup_s: float
    max_s: float
    half_s: float
    delivery_s: float
    locust_s: float
    concurrency: int
    pairs: int
    idle_connections: int


FULL = Plan(echo_s=6, clearing_s=6, pubsub_messages=30_000, warmup_s=2, max_s=12, half_s=8, delivery_s=6,
            locust_s=15, concurrency=32, pairs=64, idle_connections=10_000)
#: ``locust_s`` is Locust's measuring window, which opens once its users are set up
#: (accounts, connections): on a starved machine Locust's start and that set-up used up a
#: whole 8-second ``-t``, and the run measured nothing (loadtest/locust_window.py).
QUICK = Plan(echo_s=1.0, clearing_s=1.0, pubsub_messages=5_000, warmup_s=0.3, max_s=2.5, half_s=1.5, delivery_s=1.0,
             locust_s=8, concurrency=16, pairs=8, idle_connections=200)
#: The idle-memory target is stated for this many connections on one node.
IDLE_TARGET_CONNECTIONS = 10_000
PHASES = ("echo", "clearing", "gifts", "locust", "idle", "risk", "ledger")
#: Phases run unless --only names others: the risk engine's cost (loadtest/risk_bench.py)
#: and the ledger's (loadtest/ledger_bench.py: outbox off/on, a `notecard ledger` member
#: into PostgreSQL) start four more targets each, so they run when asked for
#: (`--only gifts,risk`, `--only gifts,ledger`).
DEFAULT_PHASES = ("echo", "clearing", "gifts", "locust", "idle")


# ---------------------------------------------------------------- machine facts
def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    redis_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        server = shutil.which("redis-server")
        if server:
            redis_version = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10,
                                           check=False).stdout.strip()
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(), "redis": redis_version,
        "loadavg_at_start": os.getloadavg(),
    }


# ---------------------------------------------------------------- the run
class Bench:
    def __init__(self, plan: Plan, out: Path, work: Path, *, phases: Sequence[str], locust_processes: int,
                 say: Callable[[str], None], profile: bool = False) -> None:
        self.plan = plan
        self.profile = profile
        self.out = out
        self.work = work
        self.phases = set(phases)
        self.locust_processes = locust_processes
        self.say = say
        self.rec = Recorder()
        self.wall_t0 = time.time()
        self.spans: list[report.Phase] = []
        self.results: dict[str, Any] = {}

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = self.rec.now()
        self.say(f"[{start:6.1f}s] {name} ...")
        try:
            yield
        finally:
            self.spans.append(report.Phase(name, start, self.rec.now()))

    # -------------------------------------------------------- a. echo
    def run_echo(self) -> None:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "loadtest.echo", "--port", str(port), "--lifetime", "300"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=Path(__file__).parent.parent,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()  # "echo server on ..." once it listens
            with self.span("echo"):
                meter = CpuMeter({"echo_server": server.pid, "generator": os.getpid()})
                result = asyncio.run(echo.measure_echo(f"ws://127.0.0.1:{port}", self.plan.concurrency,
                                                       self.plan.echo_s, self.rec))
                cpu = meter.read()
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        lat = LatencySummary.of(self.rec.get("echo/round_trip").latency)
        self.results["echo"] = {"round_trips_per_s": result.per_s, "connections": result.connections,
                                "round_trips": result.round_trips, "seconds": result.seconds,
                                "latency": dataclasses.asdict(lat), "cpu": cpu}

    # -------------------------------------------------------- b, c, e-ceiling
    def run_clearing(self, target: LoadTarget) -> None:
        redis = target.redis
        with self.span("clearing"):
            command = asyncio.run(clearing_bench.prepare(redis.url))
            meter = CpuMeter({"redis": self._redis_pid(target)})
            ceiling = clearing_bench.evalsha_ceiling(redis.host, redis.port, command, self.plan.concurrency,
                                                     self.plan.clearing_s, password=redis.password)
            ceiling_cpu = meter.read()
            meter = CpuMeter({"redis": self._redis_pid(target), "generator": os.getpid()})
            api = asyncio.run(clearing_bench.clearing_api_rate(redis.url, self.plan.concurrency,
                                                               self.plan.clearing_s, self.rec))
            api_cpu = meter.read()
            pubsub = asyncio.run(clearing_bench.pubsub_ceiling(redis.host, redis.port, self.plan.pubsub_messages,
                                                               password=redis.password))
        self.results["evalsha_ceiling"] = {"per_s": ceiling.per_s, "concurrency": ceiling.concurrency,
                                           "requests": ceiling.ops, "cpu": ceiling_cpu,
                                           "command": " ".join(command[:4]) + " ... (reserve.lua, fresh gift ids)"}
        self.results["clearing_api"] = {"per_s": api.per_s, "concurrency": api.concurrency, "ops": api.ops,
                                        "seconds": api.seconds, "p50_ms": api.p50_ms, "p99_ms": api.p99_ms,
                                        "cpu": api_cpu}
        self.results["pubsub_ceiling"] = {"per_s": pubsub.per_s, "messages": pubsub.ops,
                                          "payload_bytes": clearing_bench.PUBSUB_PAYLOAD_BYTES}

    @staticmethod
    def _redis_pid(target: LoadTarget) -> int:
        assert target.redis.process is not None
        return target.redis.process.pid

    # -------------------------------------------------------- d, e
    async def _gifts(self, target: LoadTarget) -> None:
        tgt = target.target
        async with AdminClient(tgt.admin_url, tgt.admin_token) as admin:
            pairs = await gifting.provision_pairs(admin, self.plan.pairs)
        pids = {f"node{i + 1}": pid for i, pid in enumerate(target.node_pids())}
        pids["redis"] = self._redis_pid(target)
        pids["generator"] = os.getpid()
        async with gifting.GiftLoad(tgt.urls[0], tgt.urls[-1], tgt.token, pairs, self.rec) as load:
            with self.span("warm-up"):
                await load.run_closed(self.plan.warmup_s, "warmup")
            # The generator's clients live through every phase: out of the collector's way,
            # as a node does it, so that its pauses are not measured as the gateway's latency.
            settle_heap()
            with self.span("max"):
                profile = (profiling.recording({k: v for k, v in pids.items() if k != "redis"},
                                               self.out / "profile", self.plan.max_s - 1)
                           if self.profile else contextlib.nullcontext())
                with profile:
                    meter = CpuMeter(pids)
                    top = await load.run_closed(self.plan.max_s, "max")
                    cpu = meter.read()
            self.results["gifts_max"] = self._phase(top, cpu)
            half_rate = max(1.0, top.settled_per_s / 2)
            with self.span("half"):
                meter = CpuMeter(pids)
                half = await load.run_paced(half_rate, self.plan.half_s, "half")
                cpu = meter.read()
            self.results["gifts_half"] = {**self._phase(half, cpu), "target_rate_per_s": half_rate}
            with self.span("delivery"):
                meter = CpuMeter(pids)
                delivery = await load.run_firehose(self.plan.delivery_s)
                cpu = meter.read()
            self.results["delivery"] = self._phase(delivery, cpu)

    def _phase(self, result: gifting.PhaseResult, cpu: dict[str, float]) -> dict[str, Any]:
        latencies = {}
        for path in ("send_gift", "send->offer", "accept", "decline", "send->outcome"):
            series = self.rec.series.get(f"{result.name}/{path}")
            if series is not None and len(series):
                latencies[path] = dataclasses.asdict(LatencySummary.of(series.latency))
        return {"settled_per_s": result.settled_per_s, "offers_per_s": result.offers_per_s,
                "settled": result.settled, "offers": result.offers, "errors": result.errors, "lost": result.lost,
                "seconds": result.seconds, "pairs": self.plan.pairs, "latency": latencies, "cpu": cpu}

    def run_gifts(self, target: LoadTarget) -> None:
        asyncio.run(self._gifts(target))

    # -------------------------------------------------------- f. Locust
    def run_locust(self, target: LoadTarget) -> None:
        target_file = self.work / "target.json"
        target.target.write(target_file)
        prefix = self.out / "locust"
        started = time.time()
        with self.span("locust"):
            result = locust_run.run_locust(target_file, prefix, users=self.plan.pairs, duration_s=self.plan.locust_s,
                                           processes=self.locust_processes)
        ended = time.time()
        # Locust's history carries unix times; put its per-second rows on the run's clock.
        for name in ("send->offer", "send->outcome"):
            row = result.rows.get(name)
            if row is None:
                continue
            series = self.rec.get(f"locust/{name}")
            for at in result.request_times(name, started, ended):
                series.add(at - self.wall_t0, row.median_ms / 1000)
        rows = {name: dataclasses.asdict(row) for name, row in result.rows.items()}
        window = result.window
        self.results["locust"] = {"settled_per_s": result.steady_rate("send->outcome"), "users": self.plan.pairs,
                                  "processes": self.locust_processes, "returncode": result.returncode,
                                  "stats": rows,
                                  # None: the users never all got set up within the cap, and the
                                  # rate above falls back to Locust's history over the whole run.
                                  "window": None if window is None else {
                                      "seconds": window.seconds, "opened_after_s": window.started - started,
                                      "users": window.users, "users_failed": window.users_failed,
                                      "settled": window.requests("send->outcome")}}
        with contextlib.suppress(OSError):
            target_file.unlink()  # it holds the run's secrets

    # -------------------------------------------------------- g. idle memory
    def run_idle(self, target: LoadTarget) -> None:
        assert target.cluster is not None
        with self.span("idle"):
            node = target.cluster.add_node()  # fresh: no heap left over from the load phases
            try:
                result = asyncio.run(idle.measure_idle(node.url, node.pid, self.plan.idle_connections,
                                                       target.target.token))
            finally:
                node.stop()
        self.results["idle"] = {"connections": result.connections, "kib_per_connection": result.kib_per_connection,
                                "rss_before_kib": result.rss_before_kib, "rss_after_kib": result.rss_after_kib,
                                "seconds_to_open": result.seconds_to_open}

    # -------------------------------------------------------- all
    def run(self) -> None:
        if "echo" in self.phases:
            self.run_echo()
        if "risk" in self.phases:
            self.results["risk"] = risk_bench.run(self.work / "risk", pairs=self.plan.pairs,
                                                  seconds=max(2.0, self.plan.max_s), rounds=2, cycles=2,
                                                  say=self.say)
        if "ledger" in self.phases:
            with self.span("ledger"):
                self.results["ledger"] = ledger_bench.run(self.work / "ledger", pairs=self.plan.pairs,
                                                          seconds=max(2.0, self.plan.max_s), rounds=2, say=self.say)
        needs_target = self.phases & {"clearing", "gifts", "locust", "idle"}
        if not needs_target:
            return
        # The clearing phases use their own key prefix, so the nodes can be up meanwhile.
        with LoadTarget(self.work / "target", nodes=2) as target:
            if "clearing" in self.phases:
                self.run_clearing(target)
            if "gifts" in self.phases:
                self.run_gifts(target)
            if "locust" in self.phases:
                self.run_locust(target)
            if "idle" in self.phases:
                self.run_idle(target)


# ---------------------------------------------------------------- the table
def ledger_rows(ledger: dict[str, Any]) -> list[report.Row]:
    """The outbox's cost and the member's lag (loadtest/ledger_bench.py)."""
    with_member = [r for r in ledger["rounds"] if "lag_at_end" in r]
    lag = max((r["lag_at_end"]["oldest_unacked_ms"] for r in with_member), default=0)
    drain = max((r["drain_s"] for r in with_member), default=0.0)
    return [
        report.Row("ledger", "i. settled gifts/s, ledger on (entries + a notecard ledger member)",
                   ledger["on_settled_per_s"], "/s", ledger["off_settled_per_s"], "ledger off", ("min", 0.9)),
        report.Row("ledger_cpu", "i. CPU ms (nodes + Redis) per settled gift, ledger on",
                   ledger["on_cpu_ms_per_gift"], "ms", ledger["off_cpu_ms_per_gift"], "ledger off"),
        report.Row("ledger_lag", "i. oldest entry not in PostgreSQL at the end of the max phase",
                   lag, "ms"),
        report.Row("ledger_drain", "i. the ledger member's drain of what is left, after the max phase",
                   drain * 1000, "ms", target=("max", ledger_bench.KEEPS_UP_S * 1000)),
    ]


def rows_of(results: dict[str, Any], plan: Plan) -> list[report.Row]:
    """The table: every figure with its ceiling and target (docs/benchmarks.md explains each)."""
    nan = float("nan")
    rows: list[report.Row] = []
    echo_rate = results.get("echo", {}).get("round_trips_per_s")
    ceiling = results.get("evalsha_ceiling", {}).get("per_s")
    c = plan.concurrency
    if echo_rate is not None:
        rows.append(report.Row("echo", f"a. websockets echo round trips/s ({c} conns)", echo_rate, "/s"))
    if ceiling is not None:
        rows.append(report.Row("evalsha", f"b. FCALL reserve.lua, redis-benchmark ({c} conns)", ceiling, "/s"))
    api = results.get("clearing_api")
    if api is not None:
        rows.append(report.Row("clearing_api", f"c. clearing API Clearing.reserve/s ({c} tasks)", api["per_s"], "/s",
                               ceiling, "FCALL", ("min", 0.5)))
    top = results.get("gifts_max")
    if top is not None:
        pairs = top["pairs"]
        rows.append(report.Row("gifts", f"d. settled gifts/s, 2 nodes, SDK ({pairs} pairs)", top["settled_per_s"],
                               "/s", echo_rate, "echo", ("min", 0.10)))
        for path in ("send->offer", "send->outcome"):
            lat = top["latency"].get(path, {})
            rows.append(report.Row(f"max_{path}_p50", f"   {path} p50 at max rate", lat.get("p50_ms", nan), "ms"))
            rows.append(report.Row(f"max_{path}_p99", f"   {path} p99 at max rate", lat.get("p99_ms", nan), "ms"))
    half = results.get("gifts_half")
    if half is not None:
        rows.append(report.Row("gifts_half", "d. settled gifts/s paced at half the max", half["settled_per_s"], "/s"))
        for path in ("send->offer", "send->outcome"):
            lat = half["latency"].get(path, {})
            target = ("max", 20.0) if path == "send->offer" else None
            rows.append(report.Row(f"half_{path}_p50", f"   {path} p50 at half rate", lat.get("p50_ms", nan), "ms"))
            rows.append(report.Row(f"half_{path}_p99", f"   {path} p99 at half rate (cross-node)",
                                   lat.get("p99_ms", nan), "ms", target=target))
    delivery = results.get("delivery")
    pubsub = results.get("pubsub_ceiling", {}).get("per_s")
    if delivery is not None:
        rows.append(report.Row("delivery", "e. cross-node offers delivered/s", delivery["offers_per_s"], "/s",
                               pubsub, "pub/sub"))
        lat = delivery["latency"].get("send->offer", {})
        rows.append(report.Row("delivery_p50", "   send->offer p50 (delivery)", lat.get("p50_ms", nan), "ms"))
        rows.append(report.Row("delivery_p99", "   send->offer p99 (delivery)", lat.get("p99_ms", nan), "ms"))
    locust = results.get("locust")
    if locust is not None:
        rows.append(report.Row("locust", f"f. Locust settled gifts/s ({locust['users']} users)",
                               locust["settled_per_s"], "/s", top["settled_per_s"] if top else None, "SDK",
                               ("min", 0.5)))
    risk = results.get("risk")
    if risk is not None:
        rows.append(report.Row("risk", f"h. settled gifts/s, risk engine on (signals + shadow scorer, "
                               f"{risk['bar_mode']})",
                               risk["on_settled_per_s"], "/s", risk["off_settled_per_s"], "risk off", ("min", 0.9)))
        # The same bar by CPU: gifts per CPU-second of the nodes, Redis and the generator,
        # which neighbours on a shared machine disturb far less than gifts/s (section 11).
        rows.append(report.Row("risk_cpu", "   settled gifts per gift-path CPU-second, risk engine on",
                               1e6 / risk["cpu_on_us_per_gift"] if risk["cpu_on_us_per_gift"] else 0.0, "/cpu-s",
                               1e6 / risk["cpu_off_us_per_gift"] if risk["cpu_off_us_per_gift"] else None,
                               "risk off", ("min", 0.9)))
    ledger = results.get("ledger")
    if ledger is not None:
        rows += ledger_rows(ledger)
    idle_result = results.get("idle")
    if idle_result is not None:
        n = idle_result["connections"]
        note = "" if n >= IDLE_TARGET_CONNECTIONS else f"{n} < {IDLE_TARGET_CONNECTIONS} conns"
        rows.append(report.Row("idle", f"g. RSS per idle authenticated connection ({n:,} on 1 node)",
                               idle_result["kib_per_connection"], "KiB", target=("max", 20.0), note=note))
    return rows


# ---------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="notecard bench", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="about 20 s instead of about 2 min (used by the tests)")
    parser.add_argument("--out", type=Path, help="output folder (default bench-results/<UTC time>)")
    parser.add_argument("--only", default=",".join(DEFAULT_PHASES),
                        help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all but risk and ledger)")
    parser.add_argument("--pairs", type=int, help="gift pairs (and Locust users)")
    parser.add_argument("--concurrency", type=int,
                        help="connections/tasks for the echo and clearing phases"
                             " (with --cluster: callers per Redis primary)")
    parser.add_argument("--idle", type=int, help="idle connections opened on one node")
    parser.add_argument("--locust-processes", type=int, default=1, help="Locust --processes (default 1)")
    parser.add_argument("--check-targets", action="store_true", help="exit with 1 when a target is missed")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the nodes and the generator during the max phase (into OUT/profile)")
    cluster_bench.add_arguments(parser)
    args = parser.parse_args(list(argv))
    unknown = set(args.only.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    return args


def missing_tools(phases: Sequence[str], *, profile: bool) -> list[str]:
    """What this run needs from the ``load`` extras and cannot find, checked before any phase
    runs so that a long run does not fail at its end (the plot) or half way (Locust)."""
    wanted = {"matplotlib": True, "locust": "locust" in phases, "py-spy": profile}
    missing = []
    for name, needed in wanted.items():
        if not needed:
            continue
        found = profiling.find_py_spy() is not None if name == "py-spy" else importlib.util.find_spec(name) is not None
        if not found:
            missing.append(name)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.cluster and args.instructions:
        try:
            largest = max(cluster_bench.parse_shards(args.shards))
        except ValueError as exc:
            print(f"notecard bench: {exc}", file=sys.stderr)
            return 2
        return cluster_instr.main(quick=args.quick, largest=largest, out=args.out, concurrency=args.concurrency,
                                  gifts=args.gifts,
                                  command="notecard bench " + " ".join(sys.argv[2:] if argv is None else argv))
    if args.cluster:
        return cluster_bench.main(quick=args.quick, shards=args.shards, out=args.out, concurrency=args.concurrency,
                                  command="notecard bench " + " ".join(sys.argv[2:] if argv is None else argv),
                                  gateway=not args.no_gateway, runs=args.runs, rounds=args.rounds)
    return _main(args, argv)


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    plan = QUICK if args.quick else FULL
    overrides = {k: v for k, v in (("pairs", args.pairs), ("concurrency", args.concurrency),
                                   ("idle_connections", args.idle)) if v is not None}
    if any(v < 1 for v in overrides.values()):
        print("notecard bench: --pairs, --concurrency and --idle must be at least 1", file=sys.stderr)
        return 2
    plan = dataclasses.replace(plan, **overrides)
    missing = missing_tools(args.only.split(","), profile=args.profile)
    if missing:
        print(f"notecard bench: {', '.join(missing)} not installed; install the load extras first: "
              "scripts/setup load (or .venv/bin/pip install -e '.[load]')", file=sys.stderr)
        return 2
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("bench-results") / stamp
    out.mkdir(parents=True, exist_ok=True)
    from notecard.runner import install_uvloop

    install_uvloop()

    def say(text: str) -> None:
        print(text, flush=True)

    work = Path(tempfile.mkdtemp(prefix="notecard-bench-"))
    bench = Bench(plan, out, work, phases=args.only.split(","), locust_processes=args.locust_processes, say=say,
                  profile=args.profile)
    info = machine()
    say(f"notecard bench {'--quick ' if args.quick else ''}-> {out}  ({info['cpus']} CPUs, {info['cpu_model']})")
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds: children are stopped
    meter = CpuMeter({})
    try:
        bench.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(work, ignore_errors=True)
    info["run"] = meter.read()
    rows = rows_of(bench.results, plan)
    text = report.table(rows)
    say("")
    say(text)
    others = {name: r["cpu"]["others_cores"] for name, r in bench.results.items()
              if isinstance(r, dict) and "others_cores" in r.get("cpu", {})}
    if others:
        worst = max(others, key=lambda k: others[k])
        say(f"\nCPU taken by other processes on this machine: up to {others[worst]:.2f} cores (phase {worst}); "
            "ratios are fairest when this stays near 0.")
    document = {
        "started_at": dt.datetime.fromtimestamp(bench.wall_t0, dt.UTC).isoformat(),
        "command": "notecard bench " + " ".join(sys.argv[2:] if argv is None else argv),
        "machine": info, "plan": dataclasses.asdict(plan), "node_env": dict(LOAD_ENV),
        "phases": [dataclasses.asdict(p) for p in bench.spans], "results": bench.results,
        "table": [r.as_dict() for r in rows],
    }
    (out / "bench.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    (out / "table.md").write_text(report.table(rows, markdown=True) + "\n")
    report.write_series_csv(out / "series.csv", bench.rec)
    title = (f"notecard bench {stamp}: {info['cpus']} CPUs, steal {info['run']['machine_steal_share']:.0%}, "
             f"other processes up to {max(others.values(), default=0.0):.2f} cores in a phase"
             f"{' (quick)' if args.quick else ''}")
    report.plot(out / "bench.png", bench.rec, bench.spans, title)
    if args.profile:
        summaries = [profiling.summarize(raw) for raw in sorted((out / "profile").glob("*.txt"))
                     if raw.name != "summary.txt"]
        (out / "profile" / "summary.txt").write_text("\n".join(summaries))
        say(f"profiles of the max phase in {out / 'profile'} (summary.txt)")
    say(f"\nwrote {out / 'bench.json'}, {out / 'series.csv'}, {out / 'bench.png'}, {out / 'table.md'}")
    if args.check_targets and any(r.met is False for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
