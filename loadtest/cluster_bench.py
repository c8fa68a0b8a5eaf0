"""``notecard bench --cluster``: what a settled gift costs each Redis shard, on 1, 2, 3 shards.

Why CPU per gift per shard: this machine has two cores shared with other work, so the
gifts/s of a 3-shard cluster here says more about the load generator and the neighbours
than about the cluster. What predicts a larger cluster, where each primary has its own
core, is how many CPU-seconds each primary spends per settled gift: a shard saturates at
``(1 - its idle cores) / (its marginal CPU-seconds per gift)`` gifts/s, so the cluster at
the rate of its busiest shard. Each primary's ``INFO cpu`` (``used_cpu_user +
used_cpu_sys``) is read before and after every phase, and over an idle window (as long as a
phase) right after each topology is provisioned: its background rate (serverCron, the
cluster bus), which a phase's marginal figures leave out (``loadtest.cluster_model``).
docs/capacity.md turns the figures into shards, nodes and memory.

Phases, back to back in one run (each a fresh set of ``redis-server`` children, stopped
by PID at its end), every one driving the clearing API at its maximum rate from
``concurrency`` asyncio tasks per Redis primary (so ``concurrency`` on one instance and on
1 shard, N times that on N shards), each task sending a gift to its partner and accepting
it (``Clearing.reserve`` then ``Clearing.accept``, the calls a gateway node makes):

- **one instance**: a plain ``redis-server``, every gift on the one-script path; then
  the same server with ``force_saga`` (every gift as the cross-shard saga of one-slot
  steps), which prices the saga itself with no cluster around it;
- **N shards** for each N of ``--shards``: a Redis Cluster of N primaries, random pairs
  balanced over the shards (each shard the sender and the recipient of as many pairs as
  another, ``1 - 1/N`` of the pairs crossing) and gifting in rounds (one gift per pair per
  round), so ``1 - 1/N`` of the gifts cross shards as between users spread evenly;
- on the largest N: **same-shard only** and **cross-shard only** pairs, the fast path
  against the saga on the same cluster; and random pairs again with **newcomer promotion
  on**, as it is by default.

The users are established (a month old, not newcomers) and newcomer promotion is off in
every other phase: with it on, a gift may be charged to the promotion account, so it takes
the one-script path only when its sender, its recipient *and* that account share a node
(``Clearing.reserve``), which on N shards is about 1 gift in N squared. The settings are
read at most once a second, as a gateway node reads them.

Ratios are taken against the baselines of the same run (machines are shared and noisy).
The bar's figure is the model of docs/capacity.md section 3 at the crossing share
``1 - 1/N`` with balanced shards, from the same run's marginal one-shard, same-shard and
cross-shard costs; the random phase's busiest shard stays in the table as measured.
``--runs K`` repeats the whole measurement K times and reports each figure's median and
range.
``--instructions`` counts instead of timing (``loadtest.cluster_instr``): every instruction
of every ``redis-server`` under valgrind's callgrind per settled gift, c1, F, X and random
pairs, the bar's model on them; each phase's CPU here also keeps its kernel share
(``used_cpu_sys``), the part an instruction count leaves out.
Memory: ``MEMORY USAGE`` of every key of one provisioned user (before any gift) and of a
bench user after the run, and each phase's ``used_memory`` growth per settled gift (the
gift records kept for the retry window).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import math
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from clearing import Accounts, Clearing, Presence
from clearing.component import single_topology
from clearing.invariant import check_invariant
from clearing.keys import DEFAULT_KEYS
from clearing.scene_config import SceneConfig
from clearing.scenes import Scenes
from clearing.settings import SettingsCache
from clearing.slots import slot_of
from clearing.topology import Topology, connect_cluster
from loadtest import cluster_model, report
from loadtest.clearing_bench import BENCH_RULES
from loadtest.stats import LatencySummary
from notecard.local_cluster import LocalCluster
from notecard.local_redis import LocalRedis

_NODE = "cb-node"
_FOLLOW_AGE_MS = 4 * 86_400_000
#: Bench users are a month old: established users, not newcomers whose first gifts the
#: promotion account pays for (a sponsor step on the one shard that holds it).
_ACCOUNT_AGE_MS = 30 * 86_400_000
#: A gateway node reads the operators' settings at most this often (settings_refresh_s).
_SETTINGS_MAX_AGE_S = 1.0
#: Provisioning calls in flight at once (accounts, funds, follows).
_PROVISION_AT_ONCE = 32


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    phase_s: float
    concurrency: int
    #: Through 2 gateway nodes (SDK generator, loadtest/gifting.py): warm-up, then the
    #: maximum rate, then half of it, where send->offer is timed.
    gateway_warmup_s: float
    gateway_s: float
    gateway_pairs: int
    #: Each topology's idle window, right after provisioning: its primaries' background CPU
    #: rate (cluster bus, serverCron), subtracted from every phase for the marginal figures.
    #: As long as a phase, so that the INFO reads at its ends weigh the same in both.
    idle_s: float
    #: Paired rounds (``--rounds``; 0: the 1-shard and N-shard phases one topology after the
    #: other, as before): c1, F, X phases alternating on two clusters running side by side.
    rounds: int = 0
    #: Each paired phase's measured window, taken once its callers have run ``ramp_s``.
    pair_phase_s: float = 1.0
    ramp_s: float = 0.3


#: 3 rounds of 1 s windows: 3 s of each of c1, F and X, as the sequential phases had. A
#: round takes about 7 s with its warm-ups, staggered starts and drains (a cross-shard
#: gift's latency is most of a second here): a run took 54 s against 44-46 s for the
#: sequential one; 5 rounds took 73-75 s (docs/benchmarks.md section 10).
FULL = Plan(phase_s=3.0, concurrency=32, gateway_warmup_s=1.0, gateway_s=3.0, gateway_pairs=32, idle_s=3.0,
            rounds=3, pair_phase_s=1.0, ramp_s=0.3)
QUICK = Plan(phase_s=0.5, concurrency=4, gateway_warmup_s=0.3, gateway_s=1.5, gateway_pairs=4, idle_s=0.5,
             rounds=2, pair_phase_s=0.3, ramp_s=0.1)
#: --rounds: each round is three phases of about 1.5 s with their warm-up and ramp.
MAX_ROUNDS = 50


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    """Where to read a primary's INFO from."""

    host: str
    port: int
    password: str | None

    def info(self) -> dict[str, Any]:
        with redis.Redis(host=self.host, port=self.port, password=self.password, socket_timeout=10) as client:
            return dict(client.info("all"))


def _cpu_s(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _sys_s(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"])


def _calls(info: dict[str, Any], *commands: str) -> int:
    """Calls of ``commands`` so far, those made from scripts included (``INFO commandstats``)."""
    return sum(int(info.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands)


#: What a phase counts per shard: script calls (the saga's steps), and messages published
#: to gateway nodes (each one crosses the shard's pub/sub to one node).
_COUNTED = {"script_calls": ("evalsha", "eval", "fcall"), "publishes": ("publish", "spublish")}


def _inside_s(info: dict[str, Any]) -> float:
    """Seconds inside commands (``INFO commandstats``), by the wall clock: on a machine
    with more runnable processes than cores it counts the time Redis waited for a core,
    so it is kept in the JSON only, beside the CPU time that the figures use."""
    return sum(float(v["usec"]) for k, v in info.items() if k.startswith("cmdstat_")) / 1e6


@dataclasses.dataclass(slots=True)
class PhaseResult:
    name: str
    #: 0 for the plain (non-cluster) instance.
    shards: int
    mode: str
    forced_saga: bool
    settled: int
    cross: int
    seconds: float
    #: CPU-seconds each primary spent over the phase.
    redis_cpu_s: list[float]
    #: Seconds each primary spent inside commands over the phase.
    redis_inside_s: list[float]
    #: Per shard: script calls and publishes over the phase (see ``_COUNTED``).
    counts: dict[str, list[int]]
    #: used_memory growth of each primary over the phase (bytes).
    memory_growth: list[int]
    generator_cpu_s: float
    latency: dict[str, float]
    #: Each primary's idle rate (cores), measured on this topology before its phases.
    idle_cores: list[float]
    #: From the INFO reads before the phase to those after it: what the idle rate covers.
    window_s: float
    #: Each settled gift's latency (s), kept so that phases can be combined (``combine``).
    samples: list[float] = dataclasses.field(default_factory=list, repr=False)
    #: The kernel's part of ``redis_cpu_s`` (``used_cpu_sys``): the share that the
    #: instruction counts of ``--instructions`` leave out (valgrind sees user space only).
    redis_sys_s: list[float] = dataclasses.field(default_factory=list)

    @property
    def sys_share(self) -> float:
        total = sum(self.redis_cpu_s)
        return sum(self.redis_sys_s) / total if total > 0 and self.redis_sys_s else math.nan

    @property
    def per_s(self) -> float:
        return self.settled / self.seconds if self.seconds > 0 else 0.0

    @property
    def cross_share(self) -> float:
        return self.cross / self.settled if self.settled else 0.0

    @property
    def cpu_us_per_gift(self) -> list[float]:
        """Each shard's CPU per settled gift of the whole cluster (microseconds)."""
        return [c / self.settled * 1e6 if self.settled else float("nan") for c in self.redis_cpu_s]

    @property
    def inside_us_per_gift(self) -> list[float]:
        return [c / self.settled * 1e6 if self.settled else float("nan") for c in self.redis_inside_s]

    @property
    def busiest_us_per_gift(self) -> float:
        return max(self.cpu_us_per_gift)

    @property
    def total_us_per_gift(self) -> float:
        return sum(self.cpu_us_per_gift)

    @property
    def capacity_per_s(self) -> float:
        """Settled gifts/s when each primary has one core to itself, from the raw figures:
        the busiest one's limit, background CPU counted as if gifts caused it."""
        busiest = self.busiest_us_per_gift
        return 1e6 / busiest if busiest > 0 else float("nan")

    @property
    def marginal_cpu_s(self) -> list[float]:
        return cluster_model.marginal_cpu_s(self.redis_cpu_s, self.idle_cores, self.window_s)

    @property
    def marginal_us_per_gift(self) -> list[float]:
        """Each shard's CPU per settled gift less its background (microseconds)."""
        return [c / self.settled * 1e6 if self.settled else float("nan") for c in self.marginal_cpu_s]

    @property
    def marginal_total_us_per_gift(self) -> float:
        return sum(self.marginal_us_per_gift)

    @property
    def marginal_capacity_per_s(self) -> float:
        """Settled gifts/s when each primary saturates a core of its own: the first primary
        to run out of the core its background leaves."""
        limits = [cluster_model.saturated_per_s(idle, us)
                  for idle, us in zip(self.idle_cores, self.marginal_us_per_gift, strict=True)]
        # A primary that did no gifts (NaN) limits nothing.
        return min((x for x in limits if not math.isnan(x)), default=math.nan)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "shards": self.shards, "mode": self.mode, "forced_saga": self.forced_saga,
            "settled": self.settled,
            "seconds": self.seconds, "settled_per_s": self.per_s, "cross_shard_share": self.cross_share,
            "redis_cpu_s": self.redis_cpu_s, "redis_cpu_us_per_gift_per_shard": self.cpu_us_per_gift,
            "redis_cpu_sys_s": self.redis_sys_s, "redis_cpu_sys_share": self.sys_share,
            "redis_cpu_sys_us_per_gift_total": sum(self.redis_sys_s) / self.settled * 1e6
            if self.settled and self.redis_sys_s else float("nan"),
            "redis_cpu_us_per_gift_total": self.total_us_per_gift,
            "redis_inside_commands_wall_us_per_gift_per_shard": self.inside_us_per_gift,
            "redis_cpu_us_per_gift_busiest_shard": self.busiest_us_per_gift,
            "capacity_per_s_one_core_per_shard": self.capacity_per_s,
            "window_s": self.window_s, "idle_cores_per_shard": self.idle_cores,
            "marginal_redis_cpu_us_per_gift_per_shard": self.marginal_us_per_gift,
            "marginal_redis_cpu_us_per_gift_total": self.marginal_total_us_per_gift,
            "marginal_capacity_per_s_one_core_per_shard": self.marginal_capacity_per_s,
            "memory_bytes_per_gift": sum(self.memory_growth) / self.settled if self.settled else float("nan"),
            **{f"{name}_per_gift_per_shard": [n / self.settled if self.settled else float("nan") for n in per_shard]
               for name, per_shard in self.counts.items()},
            "generator_cpu_us_per_gift": self.generator_cpu_s / self.settled * 1e6 if self.settled else float("nan"),
            "latency_ms": self.latency,
        }


Pair = tuple[str, str]


class Bed:
    """Users, funded, mutual followers and online, on one topology; pairs by placement."""

    def __init__(self, topology: Topology, servers: list[Server], concurrency: int, *, cluster: bool) -> None:
        self.topology = topology
        self.cluster = cluster
        self.settings = SettingsCache(topology.general, DEFAULT_KEYS, max_age_s=_SETTINGS_MAX_AGE_S)
        self.servers = servers
        self.concurrency = concurrency
        self.tag = secrets.token_hex(3)
        self.by_node: dict[str, list[str]] = {}
        self.pairs: dict[str, list[Pair]] = {}

    def _node(self, user: str) -> str:
        return self.topology.node_for(slot_of(user)).name

    def draw(self, modes: Sequence[str]) -> None:
        """Enough users on every primary for the pairs of each mode: ``concurrency`` pairs
        of same-shard or cross-shard users, and for random pairs ("mixed") the multiple of
        N squared nearest to it, balanced (``cluster_model.balanced_shard_pairs``): every
        shard sends and receives for the same number of pairs and exactly ``1 - 1/N`` of
        them cross, as between users spread evenly. Pairs drawn at random instead left one
        shard with up to twice another's gifts, so the busiest shard measured the draw."""
        nodes = {n.name for n in self.topology.nodes()}
        mixed = cluster_model.pair_count(self.concurrency, len(nodes))
        want = 2 * max(self.concurrency, mixed)
        i = 0
        while any(len(self.by_node.get(n, ())) < want for n in nodes):
            user = f"cb{self.tag}u{i}"
            self.by_node.setdefault(self._node(user), []).append(user)
            i += 1
        rng = random.Random(self.tag)
        names = sorted(self.by_node)
        for mode in modes:
            pairs: list[Pair] = []
            if mode == "mixed":
                # Each user in at most one pair: a user in two pairs would make those
                # two contend for one balance.
                pool = {n: rng.sample(self.by_node[n], len(self.by_node[n])) for n in names}
                for sender, recipient in cluster_model.balanced_shard_pairs(len(names), mixed):
                    pairs.append((pool[names[sender]].pop(), pool[names[recipient]].pop()))
                self.pairs[mode] = pairs
                continue
            for k in range(self.concurrency):
                if mode == "same":
                    a, b = rng.sample(self.by_node[names[k % len(names)]], 2)
                else:  # cross
                    here, there = rng.sample(names, 2)
                    a, b = rng.choice(self.by_node[here]), rng.choice(self.by_node[there])
                pairs.append((a, b))
            self.pairs[mode] = pairs

    async def promotion(self, on: bool) -> None:
        """Newcomer promotion on (the default: 5 free gifts paid by the ``promo`` account)
        or off. On, a gift takes the one-script path only when its sender, its recipient
        and the promotion account share a node, since the script may charge any of them."""
        default = SceneConfig().newcomer_free_gifts
        await Scenes(self.topology, BENCH_RULES, settings=self.settings).set_config(
            {"newcomer_free_gifts": default if on else 0})
        self.settings.invalidate()

    async def provision(self) -> None:
        accounts = Accounts(self.topology, BENCH_RULES)
        presence = Presence(self.topology, BENCH_RULES)
        users = sorted({u for pairs in self.pairs.values() for pair in pairs for u in pair})
        now = int(time.time() * 1000)
        since = now - _FOLLOW_AGE_MS
        await presence.heartbeat(_NODE)

        async def make(user: str) -> None:
            await accounts.create_user(user, verified=True, created_at_ms=now - _ACCOUNT_AGE_MS)
            await accounts.mint(user, "note", 10**8)
            await presence.connect(user, _NODE)

        # A bounded number at once: the clearing client's pools are sized for a node's calls,
        # and a large --concurrency would ask for more connections than they hold.
        at_once = asyncio.Semaphore(_PROVISION_AT_ONCE)

        async def bounded(call: Awaitable[object]) -> None:
            async with at_once:
                await call

        await asyncio.gather(*(bounded(make(u)) for u in users))
        pairs = {p for ps in self.pairs.values() for p in ps}
        await asyncio.gather(*(bounded(accounts.follow(a, b, since)) for a, b in pairs),
                             *(bounded(accounts.follow(b, a, since)) for a, b in pairs))
        await self.promotion(False)

    def crosses(self, pair: Pair) -> bool:
        return not self.topology.colocated([slot_of(pair[0]), slot_of(pair[1])])


async def measure_idle(servers: Sequence[Server], seconds: float) -> list[float]:
    """Each primary's background CPU rate (cores) over ``seconds`` in which nothing but
    these two INFO reads talks to it."""
    before = [_cpu_s(s.info()) for s in servers]
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    after = [_cpu_s(s.info()) for s in servers]
    return cluster_model.idle_cores([b - a for a, b in zip(before, after, strict=True)], time.perf_counter() - t0)


async def drive(bed: Bed, name: str, mode: str, seconds: float, idle: list[float], *, force_saga: bool = False,
                promotion: bool = False, rounds: bool = False) -> PhaseResult:
    """Gift and accept along each pair of ``mode`` from one task per pair for ``seconds``.

    With ``rounds``, every pair gifts once per round and the next round starts when all
    have settled, so each pair settles the same number of gifts and the phase's crossing
    share is its pairs' (``1 - 1/N`` for balanced random pairs). Free-running, a
    cross-shard pair (five script calls) settles fewer gifts than a same-shard one (two),
    and the phases in loadtest/reference-run/cluster settled 22-71% crossing, not 67%."""
    await bed.promotion(promotion)
    clearing = Clearing(bed.topology, BENCH_RULES, settings=bed.settings, force_saga=force_saga)
    pairs = bed.pairs[mode]
    run = secrets.token_hex(2)
    # One warm-up gift per pair: connections opened and scripts loaded outside the window.
    await asyncio.gather(*(_gift(clearing, f"w{run}{i}", pair) for i, pair in enumerate(pairs)))
    latencies: list[float] = []
    settled = cross = 0
    opened = time.perf_counter()
    before = [s.info() for s in bed.servers]
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + seconds

    async def gift(index: int, n: int, pair: Pair) -> None:
        nonlocal settled, cross
        began = time.perf_counter()
        await _gift(clearing, f"g{run}{index}-{n}", pair)
        latencies.append(time.perf_counter() - began)
        settled += 1
        cross += bed.crosses(pair)

    async def worker(index: int, pair: Pair) -> None:
        n = 0
        while time.perf_counter() < deadline:
            await gift(index, n, pair)
            n += 1

    if rounds:
        n = 0
        while time.perf_counter() < deadline:
            await asyncio.gather(*(gift(i, n, p) for i, p in enumerate(pairs)))
            n += 1
    else:
        await asyncio.gather(*(worker(i, p) for i, p in enumerate(pairs)))
    elapsed, generator = time.perf_counter() - t0, time.process_time() - cpu0
    after = [s.info() for s in bed.servers]
    window = time.perf_counter() - opened
    return PhaseResult(
        name=name, shards=len(bed.servers) if bed.cluster else 0, mode=mode if not promotion else f"{mode}+promotion",
        forced_saga=force_saga,
        settled=settled, cross=cross, seconds=elapsed, **_server_deltas(before, after),
        generator_cpu_s=generator, latency=_summary(latencies), idle_cores=idle, window_s=window, samples=latencies)


async def drive_steady(bed: Bed, name: str, mode: str, seconds: float, ramp_s: float,
                       idle: list[float]) -> PhaseResult:
    """Gift and accept along each pair of ``mode``, one task per pair, and measure a window
    of ``seconds`` while every caller is running: the short phases of the paired rounds,
    where the ramp at the start (callers starting together) and the tail at the end
    (callers finishing one by one, each shard less busy) would weigh more than in a 3 s
    phase.

    A gift is counted when it completes inside the window, and the window holds the work
    of the gifts in flight at its opening, not that of those in flight at its close; the two
    balance only if the callers are out of step. Started together, they stay in step (a
    gift here takes up to half a second, the window holds two or three of a caller's gifts)
    and the count jumps by one gift per caller with where the window falls: the first
    version measured X between 475 and 715 us in one run. So the callers start spread over
    one gift's latency (the warm-up's: every pair one gift at once, as in the phase), and
    the window opens ``ramp_s`` after the last has started.

    The INFO reads at both ends are synchronous, so the event loop is held while they run:
    no gift completes between the counts and the reads."""
    await bed.promotion(False)
    clearing = Clearing(bed.topology, BENCH_RULES, settings=bed.settings)
    pairs = bed.pairs[mode]
    run = secrets.token_hex(2)
    began = time.perf_counter()
    await asyncio.gather(*(_gift(clearing, f"w{run}{i}", pair) for i, pair in enumerate(pairs)))
    stagger = time.perf_counter() - began
    latencies: list[float] = []
    settled = cross = 0
    counting = stopping = False

    async def worker(index: int, pair: Pair) -> None:
        nonlocal settled, cross
        await asyncio.sleep(stagger * index / len(pairs))
        n = 0
        while not stopping:
            began = time.perf_counter()
            await _gift(clearing, f"g{run}{index}-{n}", pair)
            n += 1
            if counting:
                latencies.append(time.perf_counter() - began)
                settled += 1
                cross += bed.crosses(pair)

    # Pairs in a random order of start: the pairs of one shard are not all late.
    order = random.Random(run).sample(range(len(pairs)), len(pairs))
    tasks = [asyncio.ensure_future(worker(k, pairs[i])) for k, i in enumerate(order)]
    try:
        await asyncio.sleep(stagger + ramp_s)
        opened = time.perf_counter()
        before = [s.info() for s in bed.servers]
        cpu0, t0 = time.process_time(), time.perf_counter()
        counting = True
        await asyncio.sleep(seconds)
        counting = False
        elapsed, generator = time.perf_counter() - t0, time.process_time() - cpu0
        after = [s.info() for s in bed.servers]
        window = time.perf_counter() - opened
    finally:
        stopping = True
        # Every caller finishes its gift in flight: a gift left half-done would hold cards
        # until its expiry and fail the conservation check.
        await asyncio.gather(*tasks)
    return PhaseResult(
        name=name, shards=len(bed.servers) if bed.cluster else 0, mode=mode, forced_saga=False,
        settled=settled, cross=cross, seconds=elapsed, **_server_deltas(before, after),
        generator_cpu_s=generator, latency=_summary(latencies), idle_cores=idle, window_s=window, samples=latencies)


def combine(name: str, parts: Sequence[PhaseResult]) -> PhaseResult:
    """Phases of one kind on one topology as one: every counter, CPU time and window
    summed, so that its per-gift figures are the summed CPU over the summed gifts and its
    marginal CPU takes the idle rate out over the summed windows."""
    first = parts[0]
    if any((p.shards, p.mode, p.forced_saga, p.idle_cores) != (first.shards, first.mode, first.forced_saga,
                                                               first.idle_cores) for p in parts):
        raise ValueError("only phases of one kind on one topology combine")

    def column(values: Sequence[Sequence[float]]) -> list[float]:
        return [sum(v) for v in zip(*values, strict=True)]

    samples = [x for p in parts for x in p.samples]
    return PhaseResult(
        name=name, shards=first.shards, mode=first.mode, forced_saga=first.forced_saga,
        settled=sum(p.settled for p in parts), cross=sum(p.cross for p in parts),
        seconds=sum(p.seconds for p in parts),
        redis_cpu_s=column([p.redis_cpu_s for p in parts]), redis_inside_s=column([p.redis_inside_s for p in parts]),
        counts={k: [int(v) for v in column([p.counts[k] for p in parts])] for k in first.counts},
        memory_growth=[int(v) for v in column([p.memory_growth for p in parts])],
        generator_cpu_s=sum(p.generator_cpu_s for p in parts), latency=_summary(samples),
        idle_cores=first.idle_cores, window_s=sum(p.window_s for p in parts), samples=samples,
        redis_sys_s=column([p.redis_sys_s for p in parts]))


def cost_of(phase: PhaseResult) -> cluster_model.Cost:
    return cluster_model.Cost(sum(phase.marginal_cpu_s), phase.settled)


def _server_deltas(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What each primary spent between two ``INFO all`` readings, as PhaseResult's fields."""
    pairs = list(zip(before, after, strict=True))
    return {
        "redis_cpu_s": [_cpu_s(b) - _cpu_s(a) for a, b in pairs],
        "redis_sys_s": [_sys_s(b) - _sys_s(a) for a, b in pairs],
        "redis_inside_s": [_inside_s(b) - _inside_s(a) for a, b in pairs],
        "memory_growth": [int(b["used_memory"]) - int(a["used_memory"]) for a, b in pairs],
        "counts": {name: [_calls(b, *cmds) - _calls(a, *cmds) for a, b in pairs] for name, cmds in _COUNTED.items()},
    }


async def _gift(clearing: Clearing, gift_id: str, pair: Pair) -> None:
    sender, recipient = pair
    await clearing.reserve(gift_id, sender, recipient, "note", 1)
    await clearing.accept(gift_id, recipient, sender_hint=sender)


def _summary(latencies: list[float]) -> dict[str, float]:
    s = LatencySummary.of(latencies)
    return {"p50_ms": s.p50_ms, "p99_ms": s.p99_ms}


async def user_memory(topology: Topology, user: str) -> dict[str, Any]:
    """Bytes (``MEMORY USAGE``, samples 0 = exact) of every key under ``user``'s hash tag,
    in all and by the kind of key (``user``, ``bal``, ``gift``, ``offer``, ...)."""
    client = topology.node_for(slot_of(user)).client
    total = count = 0
    by_kind: dict[str, list[int]] = {}
    head = f"{DEFAULT_KEYS.prefix}:{{{user}}}:"
    async for key in client.scan_iter(match=head + "*", count=1000):
        size = int(await client.memory_usage(key, samples=0) or 0)
        kind = key.decode()[len(head):].split(":", 1)[0]
        entry = by_kind.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += size
        total += size
        count += 1
    return {"bytes": total, "keys": count,
            "by_kind": {k: {"keys": n, "bytes": b} for k, (n, b) in sorted(by_kind.items())}}


async def through_gateway(plan: Plan, work: Path, redis_url: str | None) -> dict[str, Any]:
    """Settled gifts/s at the maximum rate and send->offer at half of it, through 2 gateway
    nodes (each sender on node 1, its recipient on node 2), on ``redis_url`` or a fresh Redis."""
    from loadtest import gifting
    from loadtest.cpu import CpuMeter
    from loadtest.stats import Recorder
    from loadtest.target import LoadTarget
    from notecard.admin_client import AdminClient

    rec = Recorder()
    with LoadTarget(work, nodes=2, redis_url=redis_url) as target:
        tgt = target.target
        async with AdminClient(tgt.admin_url, tgt.admin_token) as admin:
            pairs = await gifting.provision_pairs(admin, plan.gateway_pairs)
        async with gifting.GiftLoad(tgt.urls[0], tgt.urls[-1], tgt.token, pairs, rec) as load:
            await load.run_closed(plan.gateway_warmup_s, "warmup")
            meter = CpuMeter({f"node{i + 1}": pid for i, pid in enumerate(target.node_pids())})
            top = await load.run_closed(plan.gateway_s, "max")
            cores = meter.read()
            half = await load.run_paced(max(1.0, top.settled_per_s / 2), plan.gateway_s, "half")
    out: dict[str, Any] = {"pairs": plan.gateway_pairs, "settled_per_s_max": top.settled_per_s,
                           "settled_per_s_half": half.settled_per_s, "errors": top.errors + half.errors,
                           "lost": top.lost + half.lost,
                           # CPU-seconds of both gateway nodes per gift settled at the maximum rate
                           "nodes_cpu_us_per_gift": sum(cores[f"node{i + 1}"] for i in range(2)) * top.seconds
                           / max(1, top.settled) * 1e6}
    for phase in ("max", "half"):
        series = rec.series.get(f"{phase}/send->offer")
        out[f"send_offer_{phase}"] = dataclasses.asdict(LatencySummary.of(series.latency if series else []))
    return out


# ---------------------------------------------------------------- topologies
@contextlib.asynccontextmanager
async def _single(work: Path) -> Any:
    server = LocalRedis(work / "single").start()
    client = aioredis.Redis.from_url(server.url)
    try:
        yield single_topology(client, DEFAULT_KEYS), [Server(server.host, server.port, server.password)]
    finally:
        await client.aclose()
        server.stop()


#: Starts of a cluster that lost one of its ports (``_start_cluster``).
_CLUSTER_STARTS = 3


def _start_cluster(work: Path, shards: int) -> LocalCluster:
    """A started cluster of ``shards`` primaries. Its ports are picked free before its
    servers start, and on this shared machine another process, or one of this bench's own
    connections to the cluster already running beside it, can take one in between
    ("Address already in use"): then again with fresh ports."""
    for attempt in range(1, _CLUSTER_STARTS + 1):
        try:
            return LocalCluster(work / f"cluster{shards}-{attempt}", shards=shards, replicas=0).start()
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == _CLUSTER_STARTS:
                raise
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def _cluster(work: Path, shards: int) -> Any:
    cluster = _start_cluster(work, shards)
    topology = None
    try:
        topology = await connect_cluster([(s.host, s.port) for s in cluster.servers], password=cluster.password,
                                         fence=lambda tag: DEFAULT_KEYS.node_channel(tag, "fence"))
        # Primaries in the topology's order, so that per-shard figures line up with its nodes.
        servers = [Server(s.primary.host, s.primary.port, cluster.password) for s in cluster.shards]
        yield topology, servers, cluster.url
    finally:
        if topology is not None:
            await topology.aclose()
            await topology.general.aclose()
        cluster.stop()


# ---------------------------------------------------------------- the run
class _Run:
    """One whole measurement: its phases, idle rates, conservation checks and memory."""

    def __init__(self, plan: Plan, work: Path, say: Callable[[str], None], *, gateway: bool) -> None:
        self.plan, self.work, self.say, self.gateway = plan, work, say, gateway
        self.phases: list[PhaseResult] = []
        self.memory: dict[str, Any] = {}
        self.gateways: dict[str, Any] = {}
        #: Each topology's idle rate per primary (cores), measured right after provisioning.
        self.idle: dict[str, list[float]] = {}
        #: The conservation check after each topology's phases: a fast bench that loses cards
        #: measures nothing.
        self.conservation: dict[str, Any] = {}
        #: The paired rounds' (c1, F, X) phases.
        self.rounds: list[tuple[PhaseResult, PhaseResult, PhaseResult]] = []

    async def check(self, name: str, topology: Topology) -> None:
        found = await check_invariant(topology.general, BENCH_RULES)
        self.conservation[name] = {"ok": found.ok, "violations": found.violations[:10]}
        self.say(f"  conservation on {name}: {'ok' if found.ok else found.violations[:3]}")

    def done(self, result: PhaseResult) -> None:
        self.phases.append(result)
        self.say(f"  {result.name}: {result.per_s:,.0f} settled/s, busiest shard "
                 f"{result.busiest_us_per_gift:.1f} us/gift ({max(result.marginal_us_per_gift):.1f} marginal), "
                 f"cross-shard {result.cross_share:.0%}")

    async def quiet(self, name: str, servers: list[Server]) -> list[float]:
        rates = self.idle[name] = await measure_idle(servers, self.plan.idle_s)
        self.say(f"  idle on {name}: " + ", ".join(f"{r:.4f}" for r in rates) + " cores per primary")
        return rates

    async def one_instance(self) -> None:
        plan, memory = self.plan, self.memory
        self.say("one instance ...")
        async with _single(self.work) as (topology, servers):
            bed = Bed(topology, servers, plan.concurrency, cluster=False)
            bed.draw(["mixed"])
            await bed.provision()
            fresh = bed.pairs["mixed"][0][0]
            memory["fresh_user"] = {**await user_memory(topology, fresh), "user": fresh,
                                    "state": "created, funded, 1 mutual follow, online"}
            rates = await self.quiet("one instance", servers)
            self.done(await drive(bed, "one instance, one-script path", "mixed", plan.phase_s, rates))
            self.done(await drive(bed, "one instance, saga forced", "mixed", plan.phase_s, rates, force_saga=True))
            gifts = sum(1 for p in bed.pairs["mixed"] if fresh in p)
            memory["bench_user"] = {**await user_memory(topology, fresh), "user": fresh,
                                    "state": f"after the one-instance phases (in {gifts} of the pairs)"}
            await self.check("one instance", topology)
        if self.gateway:
            self.say("through 2 gateway nodes on one instance ...")
            self.gateways["one_instance"] = await through_gateway(plan, self.work / "gw-single", None)

    def bed_on(self, topology: Topology, servers: list[Server], modes: list[str]) -> Bed:
        # The same offered load per shard as on one instance: a cluster sized to its load
        # gets N times the callers, and a shard handed a third of the baseline's calls per
        # event-loop turn pays more CPU per call than a saturated shard would.
        bed = Bed(topology, servers, self.plan.concurrency * len(servers), cluster=True)
        bed.draw(modes)
        return bed

    async def unpaired_phases(self, bed: Bed, modes: list[str], rates: list[float], *, largest: bool) -> None:
        """One phase of each of ``modes`` (random pairs in rounds on more than one shard, so
        that they settle at the crossing share of their pairs, see ``drive``), and on the
        largest cluster random pairs with newcomer promotion on."""
        shards = len(bed.servers)
        for mode in modes:
            self.done(await drive(bed, f"{shards} shard(s), {_MODES[mode]}", mode, self.plan.phase_s, rates,
                                  rounds=shards > 1 and mode == "mixed"))
        if largest and shards > 1:
            self.done(await drive(bed, f"{shards} shard(s), random pairs, newcomer promotion on", "mixed",
                                  self.plan.phase_s, rates, promotion=True, rounds=True))

    async def through_gateway_on(self, shards: int, url: str) -> None:
        if self.gateway:
            self.say(f"through 2 gateway nodes on {shards} shard(s) ...")
            self.gateways[f"{shards}_shards"] = await through_gateway(self.plan, self.work / f"gw-{shards}", url)

    async def sequential(self, shards: int, *, largest: bool) -> None:
        """One topology on its own: its idle rate, then its phases one after the other."""
        self.say(f"{shards} shard(s) ...")
        async with _cluster(self.work, shards) as (topology, servers, url):
            modes = ["mixed", "same", "cross"] if largest and shards > 1 else ["mixed"]
            bed = self.bed_on(topology, servers, modes)
            await bed.provision()
            rates = await self.quiet(f"{shards} shard(s)", servers)
            await self.unpaired_phases(bed, modes, rates, largest=largest)
            await self.check(f"{shards} shard(s)", topology)
            if largest:
                await self.through_gateway_on(shards, url)

    async def paired(self, largest: int) -> None:
        """The 1-shard and the ``largest``-shard clusters side by side, c1, F and X in
        alternating short phases (``drive_steady``), then the largest one's random phases."""
        plan, say = self.plan, self.say
        say(f"1 shard and {largest} shards side by side, {plan.rounds} paired rounds ...")
        async with _cluster(self.work, 1) as (one_topology, one_servers, _):
            one = self.bed_on(one_topology, one_servers, ["mixed"])
            await one.provision()
            await self.quiet("1 shard(s) alone", one_servers)
            async with _cluster(self.work, largest) as (topology, servers, url):
                bed = self.bed_on(topology, servers, ["mixed", "same", "cross"])
                await bed.provision()
                # Both idle together: the other cluster's background runs during every phase.
                both = await measure_idle([*one_servers, *servers], plan.idle_s)
                one_rates = self.idle["1 shard(s)"] = both[:1]
                rates = self.idle[f"{largest} shard(s)"] = both[1:]
                say("  idle, both clusters up: " + ", ".join(f"{r:.4f}" for r in both) + " cores per primary")
                for k in range(plan.rounds):
                    c1 = await drive_steady(one, f"1 shard(s), random pairs, round {k + 1}", "mixed",
                                            plan.pair_phase_s, plan.ramp_s, one_rates)
                    same, cross = [await drive_steady(bed, f"{largest} shard(s), {_MODES[mode]}, round {k + 1}",
                                                      mode, plan.pair_phase_s, plan.ramp_s, rates)
                                   for mode in ("same", "cross")]
                    self.rounds.append((c1, same, cross))
                    model = model_of(c1, same, cross)
                    say(f"  round {k + 1}: c1 {model.c1_us:.0f}, F {model.same_us:.0f}, X {model.cross_us:.0f} "
                        f"us/gift marginal; model {largest} shards / 1 shard = {model.ratio:.2f}")
                self.done(combine("1 shard(s), random pairs", [r[0] for r in self.rounds]))
                for k, mode in ((1, "same"), (2, "cross")):
                    self.done(combine(f"{largest} shard(s), {_MODES[mode]}", [r[k] for r in self.rounds]))
                await self.unpaired_phases(bed, ["mixed"], rates, largest=True)
                await self.check(f"{largest} shard(s)", topology)
                await self.through_gateway_on(largest, url)
            await self.check("1 shard(s)", one_topology)

    def pairing(self) -> dict[str, Any]:
        """The paired rounds' model, per round and summed, for the JSON (empty without them)."""
        if not self.rounds:
            return {}
        first = self.rounds[0]
        result = cluster_model.paired([(cost_of(a), cost_of(b), cost_of(c)) for a, b, c in self.rounds],
                                      len(first[1].idle_cores), max(first[0].idle_cores), max(first[1].idle_cores))
        self.say(f"  paired rounds: model {len(first[1].idle_cores)} shards / 1 shard, median "
                 f"{result.spread.text()} of {len(self.rounds)} rounds, summed CPU {result.summed.ratio:.2f}")
        return {**result.as_dict(), "phase_s": self.plan.pair_phase_s, "ramp_s": self.plan.ramp_s,
                "phases": [[p.as_dict() for p in trio] for trio in self.rounds]}


async def run(plan: Plan, shard_counts: Sequence[int], work: Path, say: Callable[[str], None], *,
              gateway: bool = True) -> dict[str, Any]:
    """The one-instance phases, then each N of ``shard_counts``; with ``plan.rounds`` and
    both 1 and a larger N among them, 1 and the largest N side by side in paired rounds."""
    state = _Run(plan, work, say, gateway=gateway)
    await state.one_instance()
    largest = max(shard_counts)
    paired = plan.rounds > 0 and 1 in shard_counts and largest > 1
    for shards in shard_counts:
        if not (paired and shards in (1, largest)):
            await state.sequential(shards, largest=shards == largest)
    if paired:
        await state.paired(largest)
    derived = derive(state.phases)
    pairing = state.pairing()
    if pairing:
        spread, n = pairing["ratio"], largest
        derived.update({f"paired_model_{n}_over_1_shard_median": spread["median"],
                        f"paired_model_{n}_over_1_shard_low": spread["low"],
                        f"paired_model_{n}_over_1_shard_high": spread["high"],
                        f"paired_model_{n}_over_1_shard_summed": pairing["summed"]["ratio"],
                        f"paired_model_on_f_{n}_over_1_shard_median": pairing["ratio_on_f"]["median"],
                        f"paired_model_on_f_{n}_over_1_shard_summed": pairing["summed"]["ratio_on_f"]})
    if "model" in derived:
        say(f"  model at {derived['model']['crossing_share']:.0%} crossing, balanced shards, marginal CPU: "
            f"{derived['model']['formula']}")
    return {"phases": [p.as_dict() for p in state.phases], "memory": state.memory,
            "conservation": state.conservation, "gateway": state.gateways, "idle_cores": state.idle,
            "derived": derived, "paired": pairing}


_MODES = {"mixed": "random pairs", "same": "same-shard pairs only", "cross": "cross-shard pairs only"}


def derive(phases: Sequence[PhaseResult]) -> dict[str, Any]:
    """The ratios the bars are about, each against a baseline of the same run: of the raw
    CPU figures under their names, of the marginal ones (background CPU taken out, as a
    saturated shard shows them) under ``marginal_``; ``capacity_*`` are the random phases'
    busiest shards. ``model`` is the bar's figure (``model_of``)."""
    by = {(p.shards, p.mode, p.forced_saga): p for p in phases}
    single, forced, one = by.get((0, "mixed", False)), by.get((0, "mixed", True)), by.get((1, "mixed", False))
    same = next((p for p in phases if p.mode == "same"), None)
    cross = next((p for p in phases if p.mode == "cross"), None)
    out: dict[str, Any] = {}

    def cpu(name: str, a: PhaseResult | None, b: PhaseResult | None) -> None:
        if a and b:
            out[name] = a.total_us_per_gift / b.total_us_per_gift
            out[f"marginal_{name}"] = a.marginal_total_us_per_gift / b.marginal_total_us_per_gift

    cpu("one_instance_saga_over_one_script_cpu", forced, single)
    cpu("one_shard_cluster_over_one_instance_cpu", one, single)
    cpu("cross_over_same_shard_cpu_total", cross, same)
    cpu("cross_shard_over_one_instance_cpu_total", cross, single)
    cpu("cross_over_one_shard_cpu_total", cross, one)
    # The same two scripts per gift on 3 processes sharing the cores as on 1: what differs
    # is the machine (see cluster_model.Model.ratio_on_f).
    cpu("same_shard_over_one_shard_cpu_total", same, one)
    for p in phases:
        if one and p.mode == "mixed" and p.shards > 1:
            out[f"capacity_{p.shards}_over_1_shard"] = p.capacity_per_s / one.capacity_per_s
            out[f"marginal_capacity_{p.shards}_over_1_shard"] = p.marginal_capacity_per_s / one.marginal_capacity_per_s
    if one and same and cross:
        model = model_of(one, same, cross)
        out["model"] = model.as_dict()
        out[f"model_{model.shards}_over_1_shard"] = model.ratio
        out[f"model_on_f_{model.shards}_over_1_shard"] = model.ratio_on_f
        mixed = by.get((same.shards, "mixed", False))
        if mixed:
            # The random phase (balanced, at the model's crossing share) against the model:
            # how far the additive model is from what a mix of both kinds of gift cost.
            out["random_phase_over_model_cpu_total"] = mixed.marginal_total_us_per_gift / model.total_us
    return out


def model_of(one: PhaseResult, same: PhaseResult, cross: PhaseResult) -> cluster_model.Model:
    """The bar by the model, from this run's marginal c1, F and X. The N-shard idle rate is
    its busiest primary's: the first to saturate."""
    return cluster_model.Model(shards=same.shards, c1_us=one.marginal_total_us_per_gift,
                               same_us=same.marginal_total_us_per_gift, cross_us=cross.marginal_total_us_per_gift,
                               idle_one=max(one.idle_cores), idle_n=max(same.idle_cores))


def _key(p: dict[str, Any]) -> str:
    if p["shards"] == 0:
        return "one_instance_saga" if p["forced_saga"] else "one_instance"
    return f"{p['shards']}_shards_{p['mode']}"


def rows_of(results: dict[str, Any]) -> list[report.Row]:
    """The table: each topology's idle rate; per phase its rate, its Redis CPU per gift raw
    and marginal (against the one-script path on one instance) and its rate at one core per
    shard, raw and saturated (against one shard); then the bar's figure by the model."""
    rows: list[report.Row] = []
    for name, rates in results.get("idle_cores", {}).items():
        rows.append(report.Row("idle_" + name.replace("(s)", "s").replace(" ", "_"),
                               f"{name}: idle Redis CPU, busiest primary ({', '.join(f'{r:.4f}' for r in rates)})",
                               max(rates), "cores"))
    phases = {_key(p): p for p in results["phases"]}
    single, one = phases.get("one_instance"), phases.get("1_shards_mixed")
    for key, p in phases.items():
        rows.append(report.Row(f"{key}_per_s", f"{p['name']}: settled gifts/s ({p['cross_shard_share']:.0%} cross)",
                               p["settled_per_s"], "/s"))
        per_shard = ", ".join(f"{v:.0f}" for v in p["redis_cpu_us_per_gift_per_shard"])
        kernel = p.get("redis_cpu_sys_share")
        kernel_text = f", {kernel:.1%} of it kernel" if kernel is not None and not math.isnan(kernel) else ""
        rows.append(report.Row(f"{key}_cpu",
                               f"   Redis CPU us/gift, all shards ({per_shard}), as measured{kernel_text}",
                               p["redis_cpu_us_per_gift_total"], "us",
                               single["redis_cpu_us_per_gift_total"] if single else None, "one instance"))
        per_shard = ", ".join(f"{v:.0f}" for v in p["marginal_redis_cpu_us_per_gift_per_shard"])
        rows.append(report.Row(f"{key}_marginal_cpu", f"   the same less idle CPU x phase time ({per_shard})",
                               p["marginal_redis_cpu_us_per_gift_total"], "us",
                               single["marginal_redis_cpu_us_per_gift_total"] if single else None, "one instance"))
        if p["shards"] == 0:
            continue
        rows.append(report.Row(f"{key}_capacity", "   gifts/s at one core per shard, as measured (1 / busiest shard)",
                               p["capacity_per_s_one_core_per_shard"], "/s",
                               one["capacity_per_s_one_core_per_shard"] if one else None, "1 shard"))
        rows.append(report.Row(f"{key}_marginal_capacity",
                               "   the same saturated ((1 - idle) / busiest shard's marginal CPU)",
                               p["marginal_capacity_per_s_one_core_per_shard"], "/s",
                               one["marginal_capacity_per_s_one_core_per_shard"] if one else None, "1 shard"))
    model = results.get("derived", {}).get("model")
    pairing = results.get("paired")
    if model:
        n = model["shards"]
        summed = ", summed over the paired rounds" if pairing else ""
        rows.append(report.Row(
            f"{n}_shards_model_capacity",
            f"{n} shards, balanced, {model['crossing_share']:.0%} crossing: gifts/s at one saturated core per "
            f"shard by the model (marginal c1, F, X{summed})",
            model["per_s_one_core_per_shard"], "/s", model["one_shard_per_s"], "1 shard",
            ("min", 2.0) if n == 3 else None))
    if model:
        n = model["shards"]
        rows.append(report.Row(
            f"{n}_shards_model_on_f",
            f"   the same with F as one shard's cost (same scripts; F/c1 {model['same_us_F'] / model['c1_us']:.2f} "
            "here from sharing the cores)",
            model["ratio_on_f"], "x", 1.0, "1 shard", ("min", 2.0) if n == 3 else None))
    if pairing:
        # The model row above is then the summed CPU of all rounds; this one the median of
        # the rounds' ratios, each from adjacent phases (the figures in brackets are this
        # run's lowest and highest round, left out of a summary over runs).
        spread = pairing["ratio"]
        n = pairing["summed"]["shards"]
        rows.append(report.Row(
            f"{n}_shards_paired_model_median",
            f"   the same, median of {spread['runs']} rounds paired in time "
            f"({spread['low']:.2f}, {spread['high']:.2f})",
            # A ratio already: against 1.0, so that the table prints it as one (3 decimals).
            spread["median"], "x", 1.0, "1 shard", ("min", 2.0) if n == 3 else None))
        on_f = pairing["ratio_on_f"]
        rows.append(report.Row(
            f"{n}_shards_paired_model_on_f_median",
            f"   the same with F as one shard's cost, median of the rounds ({on_f['low']:.2f}, {on_f['high']:.2f})",
            on_f["median"], "x", 1.0, "1 shard", ("min", 2.0) if n == 3 else None))
    gateway = results.get("gateway", {})
    base = gateway.get("one_instance")
    for name, g in gateway.items():
        where = "one instance" if name == "one_instance" else name.replace("_", " ")
        label = f"2 gateway nodes on {where}: settled gifts/s ({g['pairs']} pairs)"
        rows.append(report.Row(f"gateway_{name}_per_s", label,
                               g["settled_per_s_max"], "/s", base["settled_per_s_max"] if base else None,
                               "one instance"))
        rows.append(report.Row(f"gateway_{name}_p99", "   send->offer p99 at half that rate (cross-node)",
                               g["send_offer_half"]["p99_ms"], "ms", target=("max", 20.0)))
    if single:
        rows.append(report.Row("memory_per_gift", "used_memory growth per settled gift (one instance)",
                               single["memory_bytes_per_gift"], "B"))
    memory = results.get("memory", {})
    for name in ("fresh_user", "bench_user"):
        if name in memory:
            m = memory[name]
            rows.append(report.Row(f"memory_{name}", f"memory of a {name.replace('_', ' ')} ({m['keys']} keys)",
                                   float(m["bytes"]), "B"))
    return rows


# ---------------------------------------------------------------- CLI
def parse_shards(text: str) -> list[int]:
    problem = "--shards takes shard counts from 1 to 16, e.g. 1,2,3"
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(problem) from None
    if not counts or counts[0] < 1 or counts[-1] > 16:
        raise ValueError(problem)
    return counts


def plan_of(*, quick: bool, concurrency: int | None, rounds: int | None, runs: int) -> Plan:
    """The plan for the command's options, or ValueError saying which one is out of range."""
    plan = QUICK if quick else FULL
    if concurrency is not None:
        if concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        plan = dataclasses.replace(plan, concurrency=concurrency)
    if rounds is not None:
        if not 0 <= rounds <= MAX_ROUNDS:
            raise ValueError(f"--rounds takes 0 to {MAX_ROUNDS}")
        plan = dataclasses.replace(plan, rounds=rounds)
    if not 1 <= runs <= MAX_RUNS:
        raise ValueError(f"--runs takes 1 to {MAX_RUNS}")
    return plan


def main(*, quick: bool, shards: str, out: Path | None, concurrency: int | None, command: str,
         gateway: bool = True, runs: int = 1, rounds: int | None = None) -> int:
    from loadtest.bench import machine
    from notecard.runner import install_uvloop

    try:
        counts = parse_shards(shards)
        plan = plan_of(quick=quick, concurrency=concurrency, rounds=rounds, runs=runs)
    except ValueError as exc:
        print(f"notecard bench: {exc}", file=sys.stderr)
        return 2
    stamp, out = output_dir(out, "cluster")
    install_uvloop()
    info = machine()
    say(f"notecard bench --cluster {'--quick ' if quick else ''}-> {out}  ({info['cpus']} CPUs, {info['cpu_model']})")
    every: list[dict[str, Any]] = []
    tables: list[list[report.Row]] = []
    with _workdir() as work:
        for k in range(runs):
            if runs > 1:
                say(f"run {k + 1} of {runs}")
            results = asyncio.run(run(plan, counts, work / f"run{k + 1}", say, gateway=gateway))
            rows = rows_of(results)
            say("")
            say(report.table(rows))
            say("")
            every.append({**results, "table": [r.as_dict() for r in rows]})
            tables.append(rows)
    summary_rows = cluster_model.summarize_rows(tables)
    derived = cluster_model.spreads([{k: v for k, v in r["derived"].items() if isinstance(v, float | int)}
                                     for r in every])
    summary = {"table": summary_rows, "derived": {k: v.as_dict() for k, v in derived.items()}}
    markdown = [report.table(rows, markdown=True) for rows in tables]
    if runs > 1:
        say(f"over the {runs} runs:")
        say(cluster_model.summary_table(summary_rows))
        markdown = [f"Over {runs} runs:\n\n" + cluster_model.summary_table(summary_rows, markdown=True),
                    *(f"Run {k + 1}:\n\n{text}" for k, text in enumerate(markdown))]
    document = {"started_at": stamp, "command": command, "machine": info, "plan": dataclasses.asdict(plan),
                "shards": counts, "summary": summary, "runs": every}
    (out / "cluster.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    (out / "cluster.md").write_text("\n\n".join(markdown) + "\n")
    say(f"\nwrote {out / 'cluster.json'}, {out / 'cluster.md'}")
    if not all(c["ok"] for r in every for c in r["conservation"].values()):
        say("conservation check FAILED (see cluster.json)")
        return 1
    return 0


def output_dir(out: Path | None, prefix: str) -> tuple[str, Path]:
    """The run's UTC stamp and its output folder (``bench-results/<prefix>-<stamp>`` unless
    given), made."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out or Path("bench-results") / f"{prefix}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    return stamp, out


def say(text: str) -> None:
    """A line of the run's progress, at once (a bench runs for minutes)."""
    print(text, flush=True)


#: --runs: each full run takes about a minute (``--shards 1,3 --no-gateway``).
MAX_RUNS = 20


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="notecard-cluster-bench-") as work:
        yield Path(work)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", action="store_true",
                        help="Redis CPU per settled gift on 1..N-shard local clusters (loadtest.cluster_bench)")
    parser.add_argument("--shards", default="1,2,3", help="with --cluster: shard counts to measure (default 1,2,3)")
    parser.add_argument("--runs", type=int, default=1,
                        help="with --cluster: repeat the whole measurement this many times and report the median "
                             "and range of every figure (default 1)")
    parser.add_argument("--rounds", type=int,
                        help="with --cluster: measure c1 (1 shard), F and X (same-shard and cross-shard pairs on the "
                             "largest cluster) in this many rounds of short phases alternating on both clusters side "
                             f"by side (default {FULL.rounds}, --quick {QUICK.rounds}; 0: one 3 s phase each, "
                             "one topology after the other)")
    parser.add_argument("--instructions", action="store_true",
                        help="with --cluster: instructions per settled gift of every redis-server process under "
                             "valgrind's callgrind, c1 on 1 shard, F, X and random pairs on the largest --shards "
                             "count, and the bar's model on them (loadtest.cluster_instr; needs valgrind)")
    parser.add_argument("--gifts", type=int,
                        help="with --cluster --instructions: gifts per phase (default 400, --quick 24)")
    parser.add_argument("--no-gateway", action="store_true",
                        help="with --cluster: skip the phases through 2 gateway nodes (one instance, largest cluster)")
