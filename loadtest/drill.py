"""``notecard drill``: Jepsen's bank test for notecard, under injected faults.

Why: the promise is that a card is never lost or created out of thin air, and that an
offer reaches an online recipient, while gateway nodes and Redis primaries die. Unit tests
cannot show that; a run of the real processes under real faults, checked against what
every client was told, can (or shows where it does not hold).

One run: a Redis primary with two replicas and three Sentinels, a small TCP proxy, and
gateway nodes as OS processes (all on loopback ports, all ours, all stopped in a
``finally``); every node but the last finds Redis through Sentinel, the last through the
proxy (which follows the Sentinel primary, as HAProxy would). Users with balances give
cards to their friends through the SDK (loadtest/drill_workload.py) while a seeded
schedule (loadtest/faults/schedule.py) kills and pauses nodes, kills, sleeps and pauses
the primary, kills pub/sub connections, delays, blackholes and resets the proxy, and
freezes the proxied node's pub/sub connections (open, but carrying nothing). Then
everything is healed, unknown outcomes are settled by resending the same gift ids, the
confirm window runs out, and loadtest/drill_checks.py gives the verdict. A few users
(``wards``) are wards of a region with the guardian rule (docs/regions.md): gifts to them
from their (male) friends wait for their guardian, another drill user, whose agent approves
some, rejects some and leaves the rest to expire; the bank check covers them like any gift. A summary is
printed and a JSON report written; the exit status is 1 when anything was violated.

The drill raises the gift rules' daily limits and the rate limits through the nodes'
environment (NOTECARD_DAILY_SEND_LIMIT, ..._RECEIVE_LIMIT, NOTECARD_RATE_PER_S,
NOTECARD_RATE_BURST, NOTECARD_USER_RATE_PER_S, ..._BURST): a bank workload sends far more
than 5 gifts a day per user. It also shortens the confirm window, heartbeats, node TTL and
Redis timeout so that the whole cycle fits in minutes.

    notecard drill --profile ci                    # ~90 s, a couple of faults of each kind
    notecard drill --profile long                  # the docs/guarantees.md numbers
    notecard drill --seed 7 --faults node_kill,primary_kill --duration 60 --durability replicated
    notecard drill --cluster [--shards 3] [--site-loss]   # on a Redis Cluster: loadtest/cluster_drill.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from clearing import GiftRules, KeySchema
from loadtest.drill_checks import Verdict, verify
from loadtest.drill_common import (
    PRESETS,
    BoundedDrill,
    DurabilityPreset,
    close_agents,
    configure_logging,
    connect_agents,
    drill_env,
    end_agents,
    minted_for,
    per_fault_lines,
    resend_unknown,
    setup_population,
    write_report,
)
from loadtest.drill_ledger import FAULTS_WAIT_S, LedgerRig
from loadtest.faults.injector import FaultInjector
from loadtest.faults.proxy import FaultProxy
from loadtest.faults.redis_ha import RedisHA
from loadtest.faults.schedule import FaultKind, make_schedule, parse_kinds
from notecard.admin_client import AdminApiError, AdminClient
from notecard.cluster import LocalCluster

log = logging.getLogger("notecard.drill")

#: Replicas of the drill's primary (RedisHA's default).
REPLICAS = 2


@dataclasses.dataclass(frozen=True, slots=True)
class DrillSettings:
    seed: int = 1
    users: int = 24
    friends: int = 5
    cards: int = 30
    nodes: int = 3
    duration_s: float = 45.0
    per_kind: int = 2
    kinds: tuple[FaultKind, ...] = tuple(FaultKind)
    durability: DurabilityPreset = PRESETS["fast"]
    confirm_window_s: float = 6.0
    send_pause_s: float = 0.6
    #: Users whose gifts wait for a guardian (0: no guardian rule in the run).
    wards: int = 3
    work_dir: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "users": self.users, "friends": self.friends, "cards": self.cards,
            "nodes": self.nodes, "duration_s": self.duration_s, "per_kind": self.per_kind,
            "kinds": [k.value for k in self.kinds], "durability": self.durability.name,
            "appendonly": self.durability.redis.appendonly, "appendfsync": self.durability.redis.appendfsync,
            "wait_replicas": self.durability.wait_replicas, "wait_timeout_ms": self.durability.wait_timeout_ms,
            "confirm_window_s": self.confirm_window_s, "wards": self.wards,
        }  # fmt: skip


PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"users": 20, "duration_s": 40.0, "per_kind": 2},
    "long": {"users": 48, "duration_s": 180.0, "per_kind": 8},
}


def node_env(s: DrillSettings, ha: RedisHA) -> dict[str, str]:
    """What every gateway node of the drill runs with (the limits raised, the clocks shortened)."""
    return {**ha.node_env(), **drill_env(s.confirm_window_s, s.durability, s.durability.wait_replicas)}


async def _primary_client(ha: RedisHA) -> aioredis.Redis:
    _, port = await ha.primary()
    return ha.client(port, timeout_s=10)


#: Time the drill may spend beyond its workload and confirm window: start-up (Sentinels,
#: nodes, users), the fault lane's last fault, healing, resends, settling and the checks.
PHASE_BUDGET_S = 300.0
#: Stopping every process the drill started; each stop is itself bounded.
STOP_BUDGET_S = 90.0


class DrillTimeout(RuntimeError):
    """The drill did not finish within its time budget."""


class Drill(BoundedDrill):
    """One run, phase by phase; :meth:`run` always stops every process it started."""

    name = "drill"
    timeout_error = DrillTimeout

    def __init__(self, s: DrillSettings) -> None:
        super().__init__(s.work_dir or Path(tempfile.mkdtemp(prefix="notecard-drill-")))
        self.s = s
        self.rng = random.Random(s.seed)
        self.schedule = make_schedule(s.seed, s.kinds, s.per_kind, s.duration_s - 2.0, s.nodes)
        self.ha = RedisHA(self.work / "redis", durability=s.durability.redis)
        self.proxy: FaultProxy | None = None
        self.cluster: LocalCluster | None = None
        self.injector: FaultInjector | None = None
        self.minted: dict[str, int] = {}
        self.healed: list[str] = []
        #: Risk-engine actions taken during the workload (freeze, then lift): the bank check
        #: covers accounts whose gifts are refused and whose pending gifts resolve meanwhile.
        self.risk_actions: list[dict[str, Any]] = []
        #: ward -> guardian (loadtest/drill_common.py setup_guardians).
        self.guardians: dict[str, str] = {}
        self.leftover = 0
        #: PostgreSQL and the `notecard ledger` members, live through the drill
        self.books: LedgerRig | None = None

    async def run(self) -> dict[str, Any]:
        budget_s = self.s.duration_s + self.s.confirm_window_s + PHASE_BUDGET_S
        verdict = await self.run_phases(budget_s, STOP_BUDGET_S)
        faults = self.injector.records if self.injector else []
        return self.report(verdict, self.s.to_json(), [r.to_json() for r in faults],
                           schedule=[f.to_json() for f in self.schedule], healed=self.healed,
                           risk_actions=self.risk_actions, guardians=self.guardians,
                           pending_left_at_deadline=self.leftover)

    async def _start(self) -> None:
        s = self.s
        await asyncio.to_thread(self.ha.start)
        self.proxy = await FaultProxy(self.ha.primary).start()
        self.cluster = cluster = LocalCluster(self.proxy.url, self.work / "nodes", s.nodes, env=node_env(s, self.ha))
        proxied = cluster.nodes[-1]  # reaches Redis through the proxy, with a plain URL
        proxied.env.update({"NOTECARD_SENTINELS": "", "NOTECARD_REDIS_URL": self.proxy.url})
        await asyncio.to_thread(cluster.start)
        # the members find Redis as the first node does (through the Sentinels)
        self.books = LedgerRig(cluster.nodes[0].env, self.work / "ledger", lambda: _primary_client(self.ha))
        await self.books.start()
        async with AdminClient(cluster.nodes[0].admin_url, cluster.admin_token) as admin:
            friends, self.guardians = await setup_population(admin, self.rng, s)
        if not await self.ha.wait_replicas_synced(30):
            raise RuntimeError("replicas did not catch up with the set-up")
        self.minted = minted_for(friends, s.cards)
        self.agents = await connect_agents(s, friends, cluster.urls, cluster.token_secret, self.history)
        self.injector = FaultInjector(cluster, self.ha, self.proxy, self.work / "nodes")

    async def _workload(self) -> None:
        assert self.injector is not None
        stop_faults = asyncio.Event()
        t0 = time.monotonic()
        self.runs = [asyncio.create_task(a.run()) for a in self.agents]
        fault_task = asyncio.create_task(self.injector.run(self.schedule, t0, stop_faults))
        risk_task = asyncio.create_task(self._risk_actions())
        assert self.books is not None
        books_task = asyncio.create_task(self.books.run_faults(self.s.duration_s))
        await asyncio.sleep(self.s.duration_s)
        await risk_task
        with contextlib.suppress(TimeoutError):
            # the clients keep sending while the books' faults wait for a batch in flight
            await asyncio.wait_for(books_task, FAULTS_WAIT_S)
        for a in self.agents:
            a.stop_sending.set()
        self.timings["sending_s"] = time.monotonic() - t0
        stop_faults.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fault_task, 60)
        self.timings["workload_s"] = time.monotonic() - t0

    async def _risk_actions(self) -> None:
        """Freeze two users at a third of the workload and lift it at two thirds, through any
        node's admin API that answers (nodes may be down by the fault schedule)."""
        assert self.cluster is not None
        users = self.rng.sample(sorted(a.user for a in self.agents), k=min(2, len(self.agents)))
        for at, tier in ((0.3, "freeze"), (0.6, "none")):
            await asyncio.sleep(self.s.duration_s * 0.3)
            for user in users:
                done = None
                for node in self.cluster.nodes:
                    with contextlib.suppress(OSError, AdminApiError, TimeoutError):
                        async with AdminClient(node.admin_url, self.cluster.admin_token) as admin:
                            done = await admin.set_risk(user, tier, operator="drill")
                        break
                self.risk_actions.append({"at": at, "user": user, "tier": tier, "done": done is not None})

    async def _settle(self) -> None:
        """Heal, settle unknown outcomes, let every window run out, stop the clients."""
        assert self.injector is not None
        t1 = time.monotonic()
        self.healed = await self.injector.heal()
        self.timings["heal_s"] = time.monotonic() - t1
        await resend_unknown(self.agents, self.history, guardian_answers=True)
        self.leftover = await _wait_no_pending(self.ha, self.s.confirm_window_s + 20)
        await asyncio.sleep(2.0)  # the last outcome events reach the clients
        await end_agents(self.agents, self.runs, runs_may_hang=False)
        self.timings["settle_s"] = time.monotonic() - t1

    async def _verify(self) -> Verdict:
        redis = await _primary_client(self.ha)
        try:
            durable = self.s.durability.wait_replicas >= REPLICAS
            verdict = await verify(redis, GiftRules(), self.history, self.minted,
                                   self.injector.records if self.injector else [], KeySchema(),
                                   durable=durable)
            assert self.books is not None
            await self.books.check(redis, verdict, durable=durable)
        finally:
            await redis.aclose()
        return verdict

    async def _stop(self) -> None:
        await close_agents(self.agents)
        if self.books is not None:
            await self.books.close()
        if self.cluster is not None:
            await asyncio.gather(*(asyncio.to_thread(n.stop) for n in self.cluster.nodes), return_exceptions=True)
        if self.proxy is not None:
            await self.proxy.stop()
        await asyncio.to_thread(self.ha.stop)


async def run_drill(s: DrillSettings) -> dict[str, Any]:
    """One drill; returns its report (``report["ok"]`` is the verdict)."""
    return await Drill(s).run()


async def _wait_no_pending(ha: RedisHA, timeout_s: float) -> int:
    """Wait until the sweepers expired every pending gift; returns how many are left."""
    deadline = time.monotonic() + timeout_s
    left = -1
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            redis = await _primary_client(ha)
            try:
                keys = KeySchema()
                left = 0
                async for key in redis.scan_iter(match=keys.pattern("expiry"), count=1000):
                    left += int(await redis.zcard(key))
            finally:
                await redis.aclose()
            if left == 0:
                return 0
        await asyncio.sleep(0.5)
    return left


# ---------------------------------------------------------------- reporting


def summary_lines(report: dict[str, Any]) -> list[str]:
    n = report["numbers"]
    s = report["settings"]
    lines = [
        f"drill seed={s['seed']} durability={s['durability']} "
        f"(aof={'on/' + s['appendfsync'] if s['appendonly'] else 'off'}, WAIT {s['wait_replicas']}) "
        f"users={s['users']} nodes={s['nodes']} workload={s['duration_s']}s "
        f"-> {'OK' if report['ok'] else 'VIOLATIONS'} in {report['timings'].get('total_s', 0)}s",
        f"  gifts: attempted {n['gifts_attempted']}, acknowledged {n['gifts_acked']}, refused {n['gifts_refused']}, "
        f"with an unknown outcome at first {n['sends_with_unknown_outcome']}, "
        f"never settled {n['unknown_never_settled']}; "
        f"final {n['final_states']}",
        f"  acknowledged-then-lost {n['acked_then_lost']}; offers of gifts later lost {n['offers_of_lost_gifts']}; "
        f"states told in replies then lost {n['anomalies'].get('reply_state_lost', 0)}, in events "
        f"{n['anomalies'].get('event_state_lost', 0)}; ledger mismatches {n['ledger_mismatches']}",
        f"  book of record (PostgreSQL): {books_summary(n.get('books', 'not checked'))}",
        f"  guardian-confirmed gifts: {n.get('guardian', {})}",
        f"  arrival (recipient online): {n['arrival_online']['delivered']}/{n['arrival_online']['total']} "
        f"= {n['arrival_online']['rate']:.2%}; all recipients {n['arrival']['rate']:.2%}",
        "  per fault kind: faults / gifts during / acked-then-lost / violating / arrival missed",
    ]
    lines += per_fault_lines(report["per_fault"], 16)
    lines += [f"  VIOLATION {v}" for v in report["violations"][:20]]
    return lines


def books_summary(books: dict[str, Any] | str) -> str:
    """One line: reconcile's verdict, then what each ledger fault did."""
    if isinstance(books, str):
        return books
    def fault(f: dict[str, Any]) -> str:
        what = (f"of {f['member']} holding {f['pending_before']} entries" if f["kind"] == "consumer_kill"
                else f"({f['took_s']}s) under a batch of {f['pending_before']}")
        return (f"{f['kind']} at {f['at_s']}s {what}" + (f" ERROR {f['error']}" if f["error"] else "")
                + (f" ({f['note']})" if f.get("note") else ""))

    faults = "; ".join(fault(f) for f in books.get("faults", []))
    members = ", ".join(f"{name} started {m['starts']}x, {m['postgres_retries']} PostgreSQL retries"
                        for name, m in books.get("members", {}).items())
    return (f"{books['entries']} entries, {books['accounts']} accounts, drift {books['drift']}, drained in "
            f"{books.get('drain_s', 0)}s; {faults}; {members}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notecard drill", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--profile", choices=sorted(PROFILES), help="preset sizes: ci (~90 s) or long")
    p.add_argument("--seed", type=int, default=1, help="same seed, same users, friends and fault schedule")
    p.add_argument("--users", type=int)
    p.add_argument("--nodes", type=int, default=3, help="gateway processes (the last one behind the proxy)")
    p.add_argument("--duration", type=float, help="workload seconds (faults happen within it)")
    p.add_argument("--per-kind", type=int, help="faults of each kind")
    p.add_argument("--faults", default="all", help=f"'all', 'none' or some of: {', '.join(k.value for k in FaultKind)}")
    p.add_argument("--durability", default="fast",
                   help=f"comma-separated presets, one run each: {', '.join(PRESETS)} (see docs/guarantees.md)")
    p.add_argument("--confirm-window", type=float, default=6.0, help="seconds (NOTECARD_CONFIRM_WINDOW_S)")
    p.add_argument("--wards", type=int, help="users whose gifts wait for a guardian (default 3; 0: none)")
    p.add_argument("--report", type=Path, help="JSON report path (default drill-results/drill-<seed>-<time>.json)")
    p.add_argument("--work-dir", type=Path, help="keep Redis and node logs here (default: a temporary folder)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--cluster", action="store_true",
                   help="the drill on a local Redis Cluster instead (loadtest/cluster_drill.py; its own options: "
                        "notecard drill --cluster --help)")
    return p


def settings_from(args: argparse.Namespace) -> list[DrillSettings]:
    sizes: dict[str, Any] = dict(PROFILES.get(args.profile or "", {}))
    for flag, key in (("users", "users"), ("duration", "duration_s"), ("per_kind", "per_kind"), ("wards", "wards")):
        if getattr(args, flag) is not None:
            sizes[key] = getattr(args, flag)
    if args.profile == "long" and args.durability == "fast":
        args.durability = ",".join(PRESETS)
    out = []
    for name in args.durability.split(","):
        if name not in PRESETS:
            raise SystemExit(f"notecard drill: unknown durability preset {name!r}")
        work = args.work_dir / name if args.work_dir else None
        out.append(DrillSettings(seed=args.seed, nodes=args.nodes, kinds=parse_kinds(args.faults),
                                 durability=PRESETS[name], confirm_window_s=args.confirm_window, work_dir=work,
                                 **sizes))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    if "--cluster" in (argv or ()):
        from loadtest import cluster_drill  # imported here: it imports this module

        return cluster_drill.main(argv)
    args = build_parser().parse_args(list(argv or []))
    configure_logging(args.verbose)
    try:
        runs = settings_from(args)
    except ValueError as exc:
        print(f"notecard drill: {exc}", file=sys.stderr)
        return 2
    reports = []
    for s in runs:
        report = asyncio.run(run_drill(s))
        reports.append(report)
        print("\n".join(summary_lines(report)), flush=True)
    write_report(args.report, f"drill-{args.seed}", {"ok": all(r["ok"] for r in reports), "runs": reports})
    return 0 if all(r["ok"] for r in reports) else 1
