"""``notecard bench --cluster --instructions``: the scale-out bar in instructions per settled
gift, every instruction of every ``redis-server`` process, on a real 1-shard and N-shard
local cluster whose servers run under valgrind's callgrind.

Why instructions: the CPU-time measurement (``loadtest.cluster_bench``) runs the shards far
from saturation on this shared 2-core machine (the Python load generator is the
bottleneck), so its CPU per gift depends on how calls arrive: how many per event-loop
wakeup, cold caches after every sleep. The saga, with more round trips per gift, pays that
more, and the bar's model moved from 1.7 to 2.0 with the arrival timing alone. An
instruction count does not depend on the neighbours or on the clock, and a shard with a
saturated core of its own does not sleep between calls either: what it executes per gift
is these instructions (its cycles per instruction aside, see docs/benchmarks.md section 10).

Each server runs as ``valgrind --tool=callgrind redis-server ...`` (``LocalCluster``'s
``launcher``), collecting from its start, in a data folder of its own where its dumps go.
A phase is ``callgrind_control --zero`` of every primary, a fixed number of gifts through
the clearing API (``Clearing.reserve`` then ``Clearing.accept``, the balanced pairs of
``cluster_bench.Bed``, every pair one gift per round), then ``--dump`` of every primary;
then the same again over an idle window as long as the phase, nothing talking to the
servers: their background (serverCron, the cluster bus), subtracted from the phase.

Phases: c1 (1 shard, random pairs: every gift on the one-script path), then on N shards F
(same-shard pairs), X (cross-shard pairs: the saga) and random balanced pairs (``1 - 1/N``
crossing). The bar's model, as docs/capacity.md section 3 has it on CPU time:
``N c1 / T(N)`` with ``T(N) = F / N + (N - 1) X / N``, each figure the marginal
instructions per gift summed over the shards (``instruction_model``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from clearing import Clearing
from clearing.invariant import check_invariant
from clearing.keys import DEFAULT_KEYS
from clearing.topology import Topology, connect_cluster
from loadtest import cluster_model, report
from loadtest.clearing_bench import BENCH_RULES
from loadtest.cluster_bench import Bed, Server, _gift, output_dir, say
from loadtest.micro import Callgrind
from notecard.local_cluster import LocalCluster

#: Under callgrind a server runs tens of times slower: start-up, cluster forming and a
#: client's calls get this long (a machine several times slower than ours included).
VALGRIND_TIMEOUT_S = 300.0
#: A primary is marked failing after this long without answering the cluster bus; under
#: valgrind and a busy phase that must not happen.
_NODE_TIMEOUT_MS = 60_000


class ValgrindMissing(RuntimeError):
    """valgrind (or its callgrind_control) is not on PATH."""


def find_valgrind() -> tuple[str, str]:
    """``valgrind`` and ``callgrind_control``, or ValgrindMissing saying how to install them."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if valgrind is None or control is None:
        raise ValgrindMissing("valgrind is not installed, and --instructions runs every redis-server under "
                              "its callgrind: apt-get install valgrind (scripts/setup test installs it)")
    return valgrind, control


def callgrind_launcher(valgrind: str) -> Callable[[Path], tuple[str, ...]]:
    """A server's launcher prefix: callgrind, its dumps in the server's own data folder."""
    def launcher(data_dir: Path) -> tuple[str, ...]:
        return (valgrind, "--tool=callgrind", f"--callgrind-out-file={data_dir / 'callgrind.out'}")
    return launcher


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    #: Pairs per primary (so N times as many on N shards: the same offered load per shard).
    concurrency: int
    #: Gifts per phase, at least: whole rounds of one gift per pair.
    gifts: int


FULL = Plan(concurrency=8, gifts=400)
QUICK = Plan(concurrency=2, gifts=24)


# ---------------------------------------------------------------- arithmetic
def marginal(instructions: Sequence[int], idle: Sequence[int], seconds: float, idle_seconds: float) -> list[float]:
    """Each server's instructions in a phase less its background over the phase's wall time
    (its idle window's count scaled to the phase's length). Floored at 0: a shard that did
    no gifts may read a hair under its idle count, which is noise, not negative work."""
    if len(instructions) != len(idle):
        raise ValueError("one idle count per server")
    if idle_seconds <= 0:
        raise ValueError("the idle window must last a positive time")
    scale = seconds / idle_seconds
    return [max(0.0, float(n) - i * scale) for n, i in zip(instructions, idle, strict=True)]


@dataclasses.dataclass(frozen=True, slots=True)
class InstrModel:
    """The bar by the model, on instructions per settled gift summed over the shards: N
    balanced shards at the crossing share ``1 - 1/N`` against one shard. Each shard then
    carries ``T(N) / N`` per gift, so N saturated shards settle ``N / T(N)`` gifts per
    instruction budget against ``1 / c1`` for one."""

    shards: int
    c1: float
    same: float
    cross: float

    @property
    def share(self) -> float:
        return cluster_model.crossing_share(self.shards)

    @property
    def total(self) -> float:
        """T(N) = F / N + (N - 1) X / N."""
        return (1.0 - self.share) * self.same + self.share * self.cross

    @property
    def ratio(self) -> float:
        return self.shards * self.c1 / self.total if self.total > 0 else math.nan

    @property
    def formula(self) -> str:
        n = self.shards
        return (f"T({n}) = F/{n} + {n - 1}X/{n} = {self.same:,.0f}/{n} + {n - 1}*{self.cross:,.0f}/{n} "
                f"= {self.total:,.0f} instructions; ratio = {n}*c1/T({n}) = {n}*{self.c1:,.0f}/{self.total:,.0f} "
                f"= {self.ratio:.2f}")

    def as_dict(self) -> dict[str, float | int | str]:
        return {"shards": self.shards, "crossing_share": self.share, "c1": self.c1, "same_F": self.same,
                "cross_X": self.cross, "total_T": self.total, "ratio": self.ratio, "formula": self.formula}


@dataclasses.dataclass(slots=True)
class InstrPhase:
    name: str
    shards: int
    mode: str
    settled: int
    cross: int
    #: Wall time from the zeroing of the counters to their dump.
    seconds: float
    #: Each primary's instructions over the phase (whole process).
    instructions: list[int]
    #: Each primary's instructions over the idle window after it.
    idle_instructions: list[int]
    idle_seconds: float

    @property
    def marginal(self) -> list[float]:
        return marginal(self.instructions, self.idle_instructions, self.seconds, self.idle_seconds)

    @property
    def per_gift_per_shard(self) -> list[float]:
        return [m / self.settled if self.settled else math.nan for m in self.marginal]

    @property
    def per_gift(self) -> float:
        """Marginal instructions per settled gift, summed over the shards."""
        return sum(self.per_gift_per_shard)

    @property
    def raw_per_gift(self) -> float:
        """Instructions per settled gift summed over the shards, background included."""
        return sum(self.instructions) / self.settled if self.settled else math.nan

    @property
    def idle_share(self) -> float:
        """How much of the phase's count was background (what was subtracted)."""
        total = sum(self.instructions)
        return 1.0 - sum(self.marginal) / total if total else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shards": self.shards, "mode": self.mode, "settled": self.settled,
                "cross_shard_share": self.cross / self.settled if self.settled else math.nan,
                "seconds": self.seconds, "instructions_per_shard": self.instructions,
                "idle_instructions_per_shard": self.idle_instructions, "idle_seconds": self.idle_seconds,
                "idle_instructions_per_s_per_shard": [i / self.idle_seconds for i in self.idle_instructions],
                "idle_share_of_phase": self.idle_share,
                "marginal_instructions_per_gift_per_shard": self.per_gift_per_shard,
                "marginal_instructions_per_gift_total": self.per_gift,
                "raw_instructions_per_gift_total": self.raw_per_gift}


def derive(phases: Sequence[InstrPhase]) -> dict[str, Any]:
    """The model from c1, F and X, and the random phase's busiest shard against one shard:
    gifts per instruction budget of its busiest shard (no model) over one shard's."""
    by = {(p.shards, p.mode): p for p in phases}
    one = by.get((1, "mixed"))
    same = next((p for p in phases if p.mode == "same"), None)
    cross = next((p for p in phases if p.mode == "cross"), None)
    out: dict[str, Any] = {}
    if one and same and cross:
        model = InstrModel(same.shards, one.per_gift, same.per_gift, cross.per_gift)
        out["model"] = model.as_dict()
        out[f"model_{model.shards}_over_1_shard"] = model.ratio
        # The same on the raw counts: the background left in. Under valgrind a phase lasts
        # tens of times longer than natively, so this overstates the background by as much;
        # the marginal figure is the saturated shard's, this one a bound.
        out[f"raw_model_{model.shards}_over_1_shard"] = InstrModel(
            same.shards, one.raw_per_gift, same.raw_per_gift, cross.raw_per_gift).ratio
        out["cross_over_same_shard"] = cross.per_gift / same.per_gift
        out["cross_over_one_shard"] = cross.per_gift / one.per_gift
        mixed = by.get((same.shards, "mixed"))
        if mixed:
            out["random_phase_over_model"] = mixed.per_gift / model.total
            out[f"busiest_shard_{mixed.shards}_over_1_shard"] = one.per_gift / max(mixed.per_gift_per_shard)
    return out


# ---------------------------------------------------------------- measurement
class _Counters:
    """callgrind_control of every primary of a cluster, zeroed and dumped together."""

    def __init__(self, control: str, cluster: LocalCluster) -> None:
        self.counters = []
        for shard in cluster.shards:
            process = shard.primary.process
            assert process is not None, "the cluster is started"
            self.counters.append(Callgrind(control, process.pid, shard.primary.data_dir / "callgrind.out"))

    def zero(self) -> None:
        for c in self.counters:
            c.start()

    def dump(self) -> list[int]:
        return [c.stop() for c in self.counters]


async def _rounds(clearing: Clearing, bed: Bed, mode: str, rounds: int, tag: str) -> tuple[int, int]:
    """``rounds`` gifts along every pair of ``mode``, all pairs at once, one round after
    another: settled and cross-shard gifts."""
    pairs = bed.pairs[mode]
    settled = cross = 0
    for n in range(rounds):
        await asyncio.gather(*(_gift(clearing, f"{tag}{i}-{n}", p) for i, p in enumerate(pairs)))
        settled += len(pairs)
        cross += sum(bed.crosses(p) for p in pairs)
    return settled, cross


async def phase(bed: Bed, counters: _Counters, name: str, mode: str, gifts: int) -> InstrPhase:
    """One phase: a warm-up gift per pair (connections open, scripts loaded, settings read),
    then the counted gifts, then the idle window as long as they took."""
    await bed.promotion(False)
    clearing = Clearing(bed.topology, BENCH_RULES, settings=bed.settings)
    pairs = bed.pairs[mode]
    tag = secrets.token_hex(2)
    await _rounds(clearing, bed, mode, 1, f"w{tag}")
    rounds = max(1, math.ceil(gifts / len(pairs)))
    counters.zero()
    t0 = time.perf_counter()
    settled, cross = await _rounds(clearing, bed, mode, rounds, f"g{tag}")
    counts = counters.dump()
    seconds = time.perf_counter() - t0
    counters.zero()
    t1 = time.perf_counter()
    await asyncio.sleep(seconds)
    idle = counters.dump()
    idle_seconds = time.perf_counter() - t1
    return InstrPhase(name=name, shards=len(bed.servers), mode=mode, settled=settled, cross=cross, seconds=seconds,
                      instructions=counts, idle_instructions=idle, idle_seconds=idle_seconds)


@contextlib.asynccontextmanager
async def _cluster(work: Path, shards: int, valgrind: str) -> Any:
    cluster = LocalCluster(work / f"cluster{shards}", shards=shards, replicas=0, node_timeout_ms=_NODE_TIMEOUT_MS,
                           launcher=callgrind_launcher(valgrind), timeout_s=VALGRIND_TIMEOUT_S)
    # The start blocks (a server under valgrind takes seconds): off the event loop's thread.
    await asyncio.to_thread(cluster.start)
    topology = None
    try:
        topology = await connect_cluster([(s.host, s.port) for s in cluster.servers], password=cluster.password,
                                         fence=lambda tag: DEFAULT_KEYS.node_channel(tag, "fence"),
                                         timeout_s=VALGRIND_TIMEOUT_S)
        servers = [Server(s.primary.host, s.primary.port, cluster.password) for s in cluster.shards]
        yield cluster, topology, servers
    finally:
        if topology is not None:
            await topology.aclose()
            await topology.general.aclose()
        cluster.stop()


async def run(plan: Plan, largest: int, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    valgrind, control = find_valgrind()
    phases: list[InstrPhase] = []
    conservation: dict[str, Any] = {}

    async def check(name: str, topology: Topology) -> None:
        found = await check_invariant(topology.general, BENCH_RULES)
        conservation[name] = {"ok": found.ok, "violations": found.violations[:10]}
        say(f"  conservation on {name}: {'ok' if found.ok else found.violations[:3]}")

    def done(p: InstrPhase) -> None:
        phases.append(p)
        say(f"  {p.name}: {p.settled} gifts in {p.seconds:.1f} s, "
            f"{p.per_gift:,.0f} instructions/gift over the shards ("
            + ", ".join(f"{v:,.0f}" for v in p.per_gift_per_shard) + f"), idle {p.idle_share:.1%} taken out")

    for shards, modes in ((1, ["mixed"]), (largest, ["same", "cross", "mixed"])):
        say(f"{shards} shard(s) under callgrind ...")
        async with _cluster(work, shards, valgrind) as (cluster, topology, servers):
            bed = Bed(topology, servers, plan.concurrency * shards, cluster=True)
            bed.draw(modes)
            await bed.provision()
            counters = _Counters(control, cluster)
            for mode in modes:
                label = {"mixed": "random pairs", "same": "same-shard pairs", "cross": "cross-shard pairs"}[mode]
                done(await phase(bed, counters, f"{shards} shard(s), {label}", mode, plan.gifts))
            await check(f"{shards} shard(s)", topology)
    derived = derive(phases)
    if "model" in derived:
        say(f"  model on instructions: {derived['model']['formula']}")
    return {"phases": [p.as_dict() for p in phases], "derived": derived, "conservation": conservation,
            "valgrind": _version(valgrind)}


def _version(valgrind: str) -> str:
    done = subprocess.run([valgrind, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip()


def rows_of(results: dict[str, Any]) -> list[report.Row]:
    rows: list[report.Row] = []
    phases = results["phases"]
    one = next((p for p in phases if p["shards"] == 1), None)
    for p in phases:
        per_shard = ", ".join(f"{v:,.0f}" for v in p["marginal_instructions_per_gift_per_shard"])
        rows.append(report.Row(f"{p['shards']}_shards_{p['mode']}",
                               f"{p['name']} ({p['cross_shard_share']:.0%} cross): instructions/gift, all shards "
                               f"({per_shard})", p["marginal_instructions_per_gift_total"], "",
                               one["marginal_instructions_per_gift_total"] if one else None, "1 shard"))
        rows.append(report.Row(f"{p['shards']}_shards_{p['mode']}_idle",
                               "   idle instructions/s per shard (subtracted: "
                               f"{p['idle_share_of_phase']:.1%} of the phase)",
                               max(p["idle_instructions_per_s_per_shard"]), "/s"))
    model = results["derived"].get("model")
    if model:
        n = model["shards"]
        rows.append(report.Row(f"{n}_shards_model", f"{n} shards / 1 shard by the model on instructions "
                               f"(3 c1 / (F/3 + 2X/3) for 3)" if n == 3 else
                               f"{n} shards / 1 shard by the model on instructions", model["ratio"], "x"))
    return rows


# ---------------------------------------------------------------- CLI
def main(*, quick: bool, largest: int, out: Path | None, concurrency: int | None, gifts: int | None,
         command: str) -> int:
    from loadtest.bench import machine
    from notecard.runner import install_uvloop

    plan = QUICK if quick else FULL
    if concurrency is not None:
        plan = dataclasses.replace(plan, concurrency=concurrency)
    if gifts is not None:
        plan = dataclasses.replace(plan, gifts=gifts)
    if plan.concurrency < 1 or plan.gifts < 1 or largest < 2:
        print("notecard bench: --instructions needs --concurrency and --gifts of at least 1 and a largest "
              "--shards count of at least 2", file=sys.stderr)
        return 2
    try:
        find_valgrind()
    except ValgrindMissing as exc:
        print(f"notecard bench: {exc}", file=sys.stderr)
        return 2
    stamp, out = output_dir(out, "cluster-instructions")
    install_uvloop()
    info = machine()
    say(f"notecard bench --cluster --instructions -> {out}  ({info['cpus']} CPUs, {info['cpu_model']})")
    with _workdir() as work:
        results = asyncio.run(run(plan, largest, work, say))
    rows = rows_of(results)
    say("")
    say(report.table(rows))
    document = {"started_at": stamp, "command": command, "machine": info, "plan": dataclasses.asdict(plan),
                **results, "table": [r.as_dict() for r in rows]}
    (out / "instructions.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    (out / "instructions.md").write_text(report.table(rows, markdown=True) + "\n")
    say(f"\nwrote {out / 'instructions.json'}, {out / 'instructions.md'}")
    if not all(c["ok"] for c in results["conservation"].values()):
        say("conservation check FAILED (see instructions.json)")
        return 1
    return 0


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="notecard-cluster-instr-") as work:
        yield Path(work)
