"""``notecard drill --cluster``: the bank test on a local Redis Cluster, under shard faults.

Why: on a cluster a gift between users of two shards is a saga of one-shard steps, and
the promise (nothing lost or created, nothing settled twice, no saga left half-done) must
hold while a shard's primary dies, a gateway node dies between two steps of its sagas, a
shard stalls, or a whole site is lost. Only a run of the real processes shows it.

One run: ``shards`` primaries with a replica each (and, with ``--site-loss``, a second
replica each at "site B") formed into a cluster, ``nodes`` gateway processes on it, and the
drill's users (loadtest/drill_workload.py) giving cards to friends on their own shard and
on others. The faults run one after another while the users keep going:

- ``node_kill``: kill -9 of a gateway node (its sagas in flight are finished by the other
  nodes' recovery workers), started again after a moment;
- ``primary_kill``: kill -9 of a shard's primary; the cluster promotes its replica; the old
  primary comes back as a replica;
- ``shard_pause``: SIGSTOP of a shard's primary for a few seconds, then SIGCONT (longer
  than the cluster's node timeout: its replica may take over, and the old one wakes up
  still believing it is the primary);
- ``link_cut``: one gateway node's connections to one shard's primary closed and new ones
  refused for a few seconds (its own Redis user disabled on that server), while its links
  to the other shards work;
- ``site_loss`` (with ``--site-loss``, always last): every site-A process (each shard's
  first primary and replica, the first half of the gateway nodes) killed at once, site B's
  replicas promoted with ``CLUSTER FAILOVER TAKEOVER``; clients move to site B's nodes.

Then: everything healed, unknown outcomes settled by resending the same gift ids, and a
wait until every confirm window and the saga recovery deadline have passed and the
clearing's queues (pending offers, cross-shard steps due) are empty. The verdict is the
single-instance drill's (loadtest/drill_checks.py) plus the cluster's own: nothing in
transit between shards, no step left due. Exit status 1 on any violation.

    notecard drill --cluster                          # 3 shards, every fault but the site loss
    notecard drill --cluster --site-loss              # ... and the data-centre switch at the end
    notecard drill --cluster --faults node_kill,primary_kill --duration 20 --users 12
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import logging
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

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
from loadtest.faults.cluster_faults import (
    ClusterFaultKind,
    ClusterFaultRecord,
    ClusterFaults,
    parse_cluster_kinds,
)
from notecard.admin_client import AdminClient
from notecard.cluster import LocalCluster as GatewayNodes
from notecard.local_cluster import LocalCluster as RedisNodes

log = logging.getLogger("notecard.drill.cluster")

#: (min, max) seconds a node stays dead, a primary stopped, site B alone.
DURATIONS: dict[ClusterFaultKind, tuple[float, float]] = {
    ClusterFaultKind.NODE_KILL: (1.0, 3.0),
    # Around the cluster's node timeout (2 s): short pauses end before anyone notices, long
    # ones make the replica take over while the old primary sleeps.
    ClusterFaultKind.SHARD_PAUSE: (1.5, 5.0),
    ClusterFaultKind.PRIMARY_KILL: (0.0, 0.0),
    ClusterFaultKind.LINK_CUT: (2.0, 5.0),
    # How long site B runs alone (no replicas) before site A's servers come back.
    ClusterFaultKind.SITE_LOSS: (4.0, 4.0),
}
#: Quiet time between two faults, and the workload's time after the last one.
GAP_S = 2.0
#: Start-up, faults beyond the workload, healing, settling and the checks (the drill is bounded).
PHASE_BUDGET_S = 300.0
STOP_BUDGET_S = 60.0
#: Tries to start the Redis servers when a free port was taken before a server bound it.
START_TRIES = 3


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterDrillSettings:
    seed: int = 1
    shards: int = 3
    nodes: int = 3
    users: int = 24
    friends: int = 5
    cards: int = 30
    #: The workload runs at least this long, and until the last fault is over plus a gap.
    duration_s: float = 30.0
    per_kind: int = 1
    kinds: tuple[ClusterFaultKind, ...] = parse_cluster_kinds("all")
    site_loss: bool = False
    durability: DurabilityPreset = PRESETS["strict"]
    confirm_window_s: float = 6.0
    #: NOTECARD_SAGA_STEP_S: a step not finished this long after it started is the recovery worker's.
    saga_step_s: float = 3.0
    send_pause_s: float = 0.6
    #: Users whose gifts wait for a guardian (loadtest/drill_common.py setup_guardians; 0: none).
    wards: int = 3
    #: The cluster's failure detection (a killed primary is replaced after about this long).
    node_timeout_ms: int = 2000
    work_dir: Path | None = None

    @property
    def replicas(self) -> int:
        """Replicas per shard: one at site A, plus one at site B for the site-loss fault."""
        return 2 if self.site_loss else 1

    @property
    def wait_replicas(self) -> int:
        """The preset's WAIT on this shape: ``strict`` waits for every replica of the shard."""
        if self.durability.name == "strict":
            return self.replicas
        return min(self.durability.wait_replicas, self.replicas)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "shards": self.shards, "replicas_per_shard": self.replicas, "nodes": self.nodes,
            "users": self.users, "duration_s": self.duration_s, "per_kind": self.per_kind,
            "kinds": [k.value for k in self.kinds], "site_loss": self.site_loss,
            "durability": self.durability.name, "appendfsync": self.durability.redis.appendfsync,
            "appendonly": self.durability.redis.appendonly, "wait_replicas": self.wait_replicas,
            "confirm_window_s": self.confirm_window_s, "saga_step_s": self.saga_step_s,
        }  # fmt: skip


def fault_plan(s: ClusterDrillSettings) -> list[ClusterFaultRecord]:
    """The faults in order: each kind ``per_kind`` times, round-robin, then the site loss
    (it changes which servers and nodes exist, so nothing follows it but the workload)."""
    rng = random.Random(s.seed)
    plan = []
    for _ in range(s.per_kind):
        for kind in s.kinds:
            if kind is ClusterFaultKind.SITE_LOSS:
                continue
            low, high = DURATIONS[kind]
            plan.append(ClusterFaultRecord(kind, rng.randrange(1000), rng.uniform(low, high)))
    if s.site_loss:
        plan.append(ClusterFaultRecord(ClusterFaultKind.SITE_LOSS, 0, DURATIONS[ClusterFaultKind.SITE_LOSS][0]))
    return plan


class ClusterDrill(BoundedDrill):
    """One run; :meth:`run` always stops every process it started."""

    name = "cluster drill"
    timeout_error = TimeoutError

    def __init__(self, s: ClusterDrillSettings) -> None:
        super().__init__(s.work_dir or Path(tempfile.mkdtemp(prefix="notecard-cluster-drill-")))
        self.s = s
        self.rng = random.Random(s.seed)
        self.plan = fault_plan(s)
        #: The servers' password; each gateway node logs in with it as its own user.
        self.password = secrets.token_urlsafe(24)
        self.redis_users = [f"gw{i + 1}" for i in range(s.nodes)]
        self.redis = self._redis_nodes(0)
        self.gateways: GatewayNodes | None = None
        self.faults: ClusterFaults | None = None
        self.minted: dict[str, int] = {}
        self.shard_of: dict[str, int] = {}
        self.healed: list[str] = []
        self.left: dict[str, int] = {}
        #: ward -> guardian (loadtest/drill_common.py setup_guardians).
        self.guardians: dict[str, str] = {}

    def _redis_nodes(self, attempt: int) -> RedisNodes:
        s, r = self.s, self.s.durability.redis
        fsync = ("--appendfsync", r.appendfsync) if r.appendonly else ()
        # A user per gateway node, given as a hash (the command line is visible to local users).
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        users = [arg for user in self.redis_users for arg in ("--user", user, "on", f"#{digest}", "~*", "&*", "+@all")]
        return RedisNodes(self.work / f"redis-{attempt}", shards=s.shards, replicas=s.replicas,
                          node_timeout_ms=s.node_timeout_ms, appendonly=r.appendonly, password=self.password,
                          extra_args=(*fsync, "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                                      *users))

    async def _start_redis(self) -> None:
        """Free ports are picked before the servers bind them: on a busy machine another
        process can take one in between; the cluster is then built again on new ports."""
        for attempt in range(START_TRIES):
            try:
                await asyncio.to_thread(self.redis.start)
                return
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == START_TRIES - 1:
                    raise
                log.warning("a port was taken while the cluster started; starting it again")
                self.redis = self._redis_nodes(attempt + 1)

    async def run(self) -> dict[str, Any]:
        budget_s = self.s.duration_s + self.s.confirm_window_s + PHASE_BUDGET_S
        verdict = await self.run_phases(budget_s, STOP_BUDGET_S)
        faults = self.faults.records if self.faults else []
        return self.report(verdict, self.s.to_json(), [f.to_json() for f in faults], healed=self.healed,
                           left_at_deadline=self.left, guardians=self.guardians)

    async def _start(self) -> None:
        s = self.s
        await self._start_redis()
        env = drill_env(s.confirm_window_s, s.durability, s.wait_replicas)
        env.update({"NOTECARD_SAGA_STEP_S": str(s.saga_step_s), "NOTECARD_SENTINELS": ""})
        self.gateways = gateways = GatewayNodes(self.redis.url, self.work / "nodes", s.nodes, env=env)
        # With a site B, the second half of the nodes is there (at least one on each site).
        site_b = [n.name for n in gateways.nodes[max(1, s.nodes // 2):]] if s.site_loss else []
        for node, user in zip(gateways.nodes, self.redis_users, strict=True):
            node.env["NOTECARD_REDIS_URL"] = f"redis+cluster://{user}:{self.password}@{self.redis.addresses}"
        await asyncio.to_thread(gateways.start)
        self.faults = ClusterFaults(self.redis, gateways, self.work / "nodes", site_b_nodes=site_b,
                                    redis_users=dict(zip((n.name for n in gateways.nodes), self.redis_users,
                                                         strict=True)))
        ranges = await self.faults.slot_map()
        async with AdminClient(gateways.nodes[0].admin_url, gateways.admin_token) as admin:
            friends, self.guardians = await setup_population(admin, self.rng, s)
        keys = KeySchema()
        for user in friends:
            slot = key_slot(keys.balance(user).encode())
            self.shard_of[user] = next(i for i, r in enumerate(ranges) if r.low <= slot <= r.high)
        if not await self.faults.wait_healthy():
            raise RuntimeError(f"the cluster is not healthy after the set-up: {self.faults.last_health}")
        self.minted = minted_for(friends, s.cards)
        self.agents = await connect_agents(s, friends, gateways.urls, gateways.token_secret, self.history)

    async def _workload(self) -> None:
        assert self.faults is not None
        t0 = time.monotonic()
        self.runs = [asyncio.create_task(a.run()) for a in self.agents]
        await asyncio.sleep(GAP_S)  # sagas are in flight before the first fault
        for record in self.plan:
            await self.faults.inject(record)
            await asyncio.sleep(GAP_S)
        left = self.s.duration_s - (time.monotonic() - t0)
        if left > 0:
            await asyncio.sleep(left)
        for a in self.agents:
            a.stop_sending.set()
        self.timings["workload_s"] = time.monotonic() - t0

    async def _settle(self) -> None:
        """Heal, settle unknown outcomes, wait for every window and the recovery deadline."""
        assert self.faults is not None
        t1 = time.monotonic()
        self.healed = await self.faults.heal()
        self.timings["heal_s"] = time.monotonic() - t1
        # Unlike loadtest/drill.py, a guardian's answer whose outcome stayed unknown is not
        # resent: it took effect or its gift expires with the guardian window.
        await resend_unknown(self.agents, self.history, guardian_answers=False)
        # Past this, every gift's window is over and every saga step is overdue.
        rest_at = time.monotonic() + self.s.confirm_window_s + self.s.saga_step_s
        deadline = rest_at + 60.0
        while True:
            self.left = {"expiry": await self.faults.count_queued("expiry"),
                         "due": await self.faults.count_queued("due")}
            now = time.monotonic()
            if (now >= rest_at and not any(self.left.values())) or now >= deadline:
                break
            await asyncio.sleep(0.5)
        await end_agents(self.agents, self.runs, runs_may_hang=True)
        self.timings["settle_s"] = time.monotonic() - t1

    async def _verify(self) -> Verdict:
        assert self.faults is not None
        live = self.faults.live_ports()
        redis = RedisCluster(startup_nodes=[ClusterNode(self.redis.host, p) for p in live],
                             password=self.redis.password, socket_timeout=10)
        try:
            verdict = await verify(redis, GiftRules(), self.history, self.minted, self.faults.records, KeySchema(),
                                   durable=self.s.wait_replicas >= self.s.replicas)
            # The cluster's own checks: every saga finished, nothing between two shards.
            due, expiry = self.left.get("due", -1), self.left.get("expiry", -1)
            transit = sum(t.get("transit", 0) for t in verdict.numbers["per_kind"].values())
            if due != 0:
                verdict.violations.append(f"sagas_unfinished: {due} cross-shard steps still due after the deadline")
            if expiry != 0:
                verdict.violations.append(f"left_pending: {expiry} offers still queued after every window")
            if transit != 0:
                verdict.violations.append(f"transit: {transit} units still between shards at rest")
            verdict.numbers.update({"sagas_unfinished": due, "offers_queued": expiry, "transit_at_rest": transit,
                                    **self._shard_mix()})
        finally:
            await redis.aclose()
        for record in self.faults.records:
            if record.error:
                verdict.violations.append(f"fault {record.kind_name} did not run as planned: {record.error}")
        return verdict

    def _shard_mix(self) -> dict[str, int]:
        """How many gifts crossed shards (a saga) and how many stayed on one (the fast path)."""
        cross = [g for g in self.history.gifts.values() if self.shard_of[g.sender] != self.shard_of[g.recipient]]
        same = len(self.history.gifts) - len(cross)
        acked_cross = sum(1 for g in cross if g.acked)
        acked_same = sum(1 for g in self.history.gifts.values() if g.acked) - acked_cross
        return {"gifts_cross_shard": len(cross), "gifts_same_shard": same,
                "acked_cross_shard": acked_cross, "acked_same_shard": acked_same}

    async def _stop(self) -> None:
        await close_agents(self.agents)
        if self.gateways is not None:
            await asyncio.gather(*(asyncio.to_thread(n.stop) for n in self.gateways.nodes), return_exceptions=True)
        await asyncio.to_thread(self.redis.stop)


async def run_cluster_drill(s: ClusterDrillSettings) -> dict[str, Any]:
    """One cluster drill; returns its report (``report["ok"]`` is the verdict)."""
    return await ClusterDrill(s).run()


# ---------------------------------------------------------------- reporting


def summary_lines(report: dict[str, Any]) -> list[str]:
    n, s = report["numbers"], report["settings"]
    lines = [
        f"cluster drill seed={s['seed']} shards={s['shards']} x (1 + {s['replicas_per_shard']} replicas) "
        f"nodes={s['nodes']} users={s['users']} durability={s['durability']} (WAIT {s['wait_replicas']}) "
        f"-> {'OK' if report['ok'] else 'VIOLATIONS'} in {report['timings'].get('total_s', 0)}s",
        f"  gifts: attempted {n['gifts_attempted']} ({n['gifts_cross_shard']} cross-shard, {n['gifts_same_shard']} "
        f"same-shard), acknowledged {n['gifts_acked']} ({n['acked_cross_shard']} cross-shard), refused "
        f"{n['gifts_refused']}, unknown at first {n['sends_with_unknown_outcome']}, never settled "
        f"{n['unknown_never_settled']}; final {n['final_states']}",
        "  bank check:",
        f"    cards lost or created (conservation, transit summed over every shard): "
        f"{_lost_or_created(report)}",
        f"    gifts settled twice (balances replayed from the records): {n['ledger_mismatches']}",
        f"    acknowledged gifts lost: {n['acked_then_lost']}"
        + (" (a violation under this preset)" if s["wait_replicas"] >= s["replicas_per_shard"] else " (measured)"),
        f"    sagas unfinished after the recovery deadline: {n['sagas_unfinished']}; in transit at rest: "
        f"{n['transit_at_rest']}; offers still pending: {n['offers_queued']}",
        "  per fault: kind / faults / gifts during / acked-then-lost / violating gifts / offers missed",
    ]
    lines += per_fault_lines(report["per_fault"], 14)
    lines += [f"  fault: {f['kind']}: {f['detail'] or f['error']}" for f in report["faults"]]
    lines += [f"  healed: {h}" for h in report["healed"]]
    lines += [f"  VIOLATION {v}" for v in report["violations"][:20]]
    return lines


def _lost_or_created(report: dict[str, Any]) -> int:
    """Units minted but in no balance, hold, consumption or transit (negative: created)."""
    total = 0
    for row in report["numbers"]["per_kind"].values():
        total += row.get("minted", 0) - row.get("available", 0) - row.get("held", 0) - row.get("consumed", 0) \
            - row.get("transit", 0)
    return total


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notecard drill --cluster",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cluster", action="store_true", help="(this drill)")
    p.add_argument("--shards", type=int, default=3, help="primaries, a replica each (default 3)")
    p.add_argument("--nodes", type=int, default=3, help="gateway processes (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--users", type=int, default=24)
    p.add_argument("--duration", type=float, default=30.0, help="workload seconds at least (faults within it)")
    p.add_argument("--per-kind", type=int, default=1, help="faults of each kind")
    p.add_argument("--faults", default="all",
                   help=f"'all' (all but site_loss), 'none' or some of: {', '.join(k.value for k in ClusterFaultKind)}")
    p.add_argument("--site-loss", action="store_true",
                   help="a second replica per shard at site B, and the loss of site A as the last fault")
    p.add_argument("--durability", default="strict", choices=sorted(PRESETS),
                   help="strict (default): AOF always, WAIT for every replica of the shard")
    p.add_argument("--confirm-window", type=float, default=6.0, help="seconds (NOTECARD_CONFIRM_WINDOW_S)")
    p.add_argument("--report", type=Path, help="JSON report path (default drill-results/cluster-drill-...json)")
    p.add_argument("--work-dir", type=Path, help="keep Redis and node logs here (default: a temporary folder)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def settings_from(args: argparse.Namespace) -> ClusterDrillSettings:
    if not 1 <= args.shards <= 16:
        raise ValueError("--shards is between 1 and 16")
    if args.nodes < (2 if args.site_loss else 1):
        raise ValueError("--site-loss needs a gateway node on each site: --nodes 2 or more")
    kinds = parse_cluster_kinds(args.faults)
    site_loss = args.site_loss or ClusterFaultKind.SITE_LOSS in kinds
    return ClusterDrillSettings(seed=args.seed, shards=args.shards, nodes=args.nodes, users=args.users,
                                duration_s=args.duration, per_kind=args.per_kind, kinds=kinds, site_loss=site_loss,
                                durability=PRESETS[args.durability], confirm_window_s=args.confirm_window,
                                work_dir=args.work_dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv or []))
    configure_logging(args.verbose)
    try:
        s = settings_from(args)
    except ValueError as exc:
        print(f"notecard drill: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(run_cluster_drill(s))
    print("\n".join(summary_lines(report)), flush=True)
    write_report(args.report, f"cluster-drill-{args.seed}", report)
    return 0 if report["ok"] else 1
