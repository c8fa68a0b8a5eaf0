"""What the single-instance drill (loadtest/drill.py) and the cluster drill
(loadtest/cluster_drill.py) share: the durability presets, the nodes' raised limits, the
drill's users and guardians, the bounded run of the phases, the clients' start and end,
and the pieces of the report.

Why one place: both drills must set up the same population and judge it the same way,
so that a number in one report means what it means in the other.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from clearing import GiftRules
from gateway.auth import mint_token
from loadtest.drill_checks import Verdict
from loadtest.drill_workload import History, UserAgent, WorkloadConfig
from loadtest.faults.redis_ha import RedisDurability
from notecard.admin_client import AdminClient

DAY_MS = 86_400_000
UNITS_PER_CARD = GiftRules().units_per_card


@dataclasses.dataclass(frozen=True, slots=True)
class DurabilityPreset:
    name: str
    redis: RedisDurability
    wait_replicas: int
    wait_timeout_ms: int = 500


PRESETS: dict[str, DurabilityPreset] = {
    "fast": DurabilityPreset("fast", RedisDurability(appendonly=False), 0),
    "aof": DurabilityPreset("aof", RedisDurability(appendonly=True, appendfsync="everysec"), 0),
    "replicated": DurabilityPreset("replicated", RedisDurability(appendonly=True, appendfsync="everysec"), 1),
    "strict": DurabilityPreset("strict", RedisDurability(appendonly=True, appendfsync="always"), 2),
}


def drill_env(confirm_window_s: float, durability: DurabilityPreset, wait_replicas: int) -> dict[str, str]:
    """The gift rules' limits raised and the clocks shortened, whatever the Redis topology."""
    return {
        "NOTECARD_DAILY_SEND_LIMIT": "1000000",
        "NOTECARD_DAILY_RECEIVE_LIMIT": "1000000",
        "NOTECARD_RATE_PER_S": "500",
        "NOTECARD_RATE_BURST": "1000",
        "NOTECARD_USER_RATE_PER_S": "500",
        "NOTECARD_USER_RATE_BURST": "1000",
        "NOTECARD_CONFIRM_WINDOW_S": str(confirm_window_s),
        "NOTECARD_NODE_HEARTBEAT_S": "0.5",
        "NOTECARD_NODE_TTL_S": "2.5",
        "NOTECARD_SUBSCRIBER_PROBE_S": "1",
        "NOTECARD_REDIS_TIMEOUT_S": "2",
        "NOTECARD_HEARTBEAT_S": "5",
        "NOTECARD_PONG_TIMEOUT_S": "5",
        "NOTECARD_SHUTDOWN_GRACE_S": "2",
        "NOTECARD_DURABILITY": durability.name,  # the nodes check the deployment against it
        "NOTECARD_WAIT_REPLICAS": str(wait_replicas),
        "NOTECARD_WAIT_TIMEOUT_MS": str(durability.wait_timeout_ms),
        "NOTECARD_LOG_LEVEL": "INFO",
    }


#: The region of the drill's wards and its rule.
WARD_REGION = "mena"


async def setup_guardians(admin: AdminClient, rng: random.Random, users: Sequence[str], wards_n: int,
                          window_s: float) -> dict[str, str]:
    """``wards_n`` of ``users`` become female wards in a region with the male-to-female guardian
    rule, each with a guardian among the other users; everybody else is male, so a gift from
    a friend to a ward waits for the ward's guardian. Returns ward -> guardian."""
    if wards_n <= 0:
        return {}
    await admin.put_region(WARD_REGION, {"name": "drill wards", "guardian_rule": "male_to_female",
                                         "guardian_window_ms": max(1000, int(window_s * 1000))})
    wards = rng.sample(sorted(users), min(wards_n, len(users) - 1))
    others = [u for u in sorted(users) if u not in wards]
    linked: dict[str, str] = {}
    for user in users:
        if user in wards:
            await admin.set_flags(user, gender="female", region=WARD_REGION)
            linked[user] = rng.choice(others)
            await admin.link_guardian(user, linked[user], operator="drill")
        else:
            await admin.set_flags(user, gender="male")
    return linked


async def setup_users(admin: AdminClient, rng: random.Random, *, users_n: int, friends_n: int,
                      cards: int) -> dict[str, list[str]]:
    """Verified users with ``cards`` each, every one with ``friends_n`` mutual old-enough follows."""
    users = [f"u{i:03d}" for i in range(users_n)]
    since = int(time.time() * 1000) - 4 * DAY_MS
    friends: dict[str, set[str]] = {u: set() for u in users}
    for u in users:
        others = [o for o in users if o != u]
        for o in rng.sample(others, min(friends_n, len(others))):
            friends[u].add(o)
            friends[o].add(u)
    sem = asyncio.Semaphore(16)

    async def make(u: str) -> None:
        async with sem:
            await admin.create_user(u, verified=True)
            await admin.mint(u, cards)

    await asyncio.gather(*(make(u) for u in users))

    async def link(a: str, b: str) -> None:
        async with sem:
            await admin.befriend(a, b, since)

    await asyncio.gather(*(link(a, b) for a in users for b in friends[a] if a < b))
    return {u: sorted(fs) for u, fs in friends.items()}


class PopulationSettings(Protocol):
    """The settings both drills' users are made from."""

    @property
    def seed(self) -> int: ...
    @property
    def users(self) -> int: ...
    @property
    def friends(self) -> int: ...
    @property
    def cards(self) -> int: ...
    @property
    def wards(self) -> int: ...
    @property
    def confirm_window_s(self) -> float: ...
    @property
    def send_pause_s(self) -> float: ...


async def setup_population(admin: AdminClient, rng: random.Random,
                           s: PopulationSettings) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The drill's users with their friends, and its wards with their guardians (ward -> guardian)."""
    friends = await setup_users(admin, rng, users_n=s.users, friends_n=s.friends, cards=s.cards)
    guardians = await setup_guardians(admin, rng, sorted(friends), s.wards, s.confirm_window_s)
    return friends, guardians


def minted_for(friends: Mapping[str, list[str]], cards: int) -> dict[str, int]:
    """The units each user was given at the set-up (the bank check's starting balances)."""
    return {u: cards * UNITS_PER_CARD for u in friends}


async def connect_agents(s: PopulationSettings, friends: Mapping[str, list[str]], urls: list[str],
                         token_secret: str, history: History) -> list[UserAgent]:
    """One connected client per user, each with its own seeded randomness, all writing to ``history``."""
    config = WorkloadConfig(confirm_window_s=s.confirm_window_s, send_pause_s=s.send_pause_s)
    agents = []
    for u in sorted(friends):
        token = mint_token(token_secret, u, ttl_s=3600)
        agents.append(UserAgent(u, friends[u], urls, token, random.Random(f"{s.seed}:{u}"), history, config))
    await asyncio.gather(*(a.connect() for a in agents))
    return agents


async def resend_unknown(agents: list[UserAgent], history: History, *, guardian_answers: bool) -> None:
    """After the heal: one more try of every request whose outcome stayed unknown (the
    guardians' answers too when ``guardian_answers``)."""
    by_user = {a.user: a for a in agents}
    calls = []
    for entry in history.gifts.values():
        if not entry.send_settled:
            calls.append(by_user[entry.sender].send(entry, final_try=True))
        elif entry.answer in ("accept", "decline") and not entry.answer_settled and entry.offered_at_ms:
            calls.append(by_user[entry.recipient].answer(entry, final_try=True))
        if guardian_answers and entry.guardian_answer in ("approve", "reject") and not entry.guardian_settled:
            calls.append(by_user[entry.guardian].guardian_answer(entry, final_try=True))
    history.count("settled_after_heal", len(calls))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)


async def end_agents(agents: list[UserAgent], runs: list[asyncio.Task[None]], *, runs_may_hang: bool) -> None:
    """Tell every client it is done, wait for their runs (a run still going after 30 s is a
    timeout unless ``runs_may_hang``), then close them (what is left is closed by the stop)."""
    for a in agents:
        a.done.set()
    with contextlib.suppress(*((TimeoutError,) if runs_may_hang else ())):
        await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 30)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(a.close() for a in agents), return_exceptions=True), 30)


async def close_agents(agents: list[UserAgent]) -> None:
    """Close every client, each within 5 s, whatever state it is in (the run's last step)."""
    for a in agents:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(a.close(), 5)


class BoundedDrill(abc.ABC):
    """A drill's phases (start, workload, settle, verify) within one time budget, and its
    stop within another whatever happened.

    Why bounded: a step that waits on something that never comes (a server that does not
    answer, a client that does not close) ends the run with the name of that step instead
    of hanging the caller (CI) until its own limit."""

    #: What the timeout message calls the drill.
    name = "drill"
    #: Raised, with the budget and the step, when the phases exceed their budget.
    timeout_error: type[Exception] = TimeoutError

    def __init__(self, work: Path) -> None:
        self.work = work
        self.phase = "new"
        self.timings: dict[str, float] = {}
        self.history = History()
        self.agents: list[UserAgent] = []
        self.runs: list[asyncio.Task[None]] = []

    async def run_phases(self, budget_s: float, stop_budget_s: float) -> Verdict:
        """Every phase then the stop; writes every client's log to ``history.json`` (for
        reading a violation in full: the report keeps examples) and returns the verdict."""
        started = time.monotonic()
        self.work.mkdir(parents=True, exist_ok=True)
        self.phase = "start"
        try:
            async with asyncio.timeout(budget_s):
                await self._start()
                self.timings["setup_s"] = time.monotonic() - started
                self.phase = "workload"
                await self._workload()
                self.phase = "settle"
                await self._settle()
                self.phase = "verify"
                verdict = await self._verify()
        except TimeoutError:
            raise self.timeout_error(f"the {self.name} exceeded its {budget_s:.0f} s budget in its "
                                     f"'{self.phase}' step; logs in {self.work}") from None
        finally:
            self.phase = "stop"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(stop_budget_s):
                    await self._stop()
        self.timings["total_s"] = time.monotonic() - started
        (self.work / "history.json").write_bytes(orjson.dumps(
            {"gifts": [dataclasses.asdict(g) for g in self.history.gifts.values()],
             "offline": self.history.offline}))
        return verdict

    def report(self, verdict: Verdict, settings: dict[str, Any], faults: list[dict[str, Any]],
               **extra: Any) -> dict[str, Any]:
        """The report both drills write; ``extra`` holds what only one of them has."""
        return {
            "ok": verdict.ok,
            "settings": settings,
            "violations": verdict.violations,
            "numbers": verdict.numbers,
            "per_fault": verdict.per_fault,
            "faults": faults,
            **extra,
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
            "work_dir": str(self.work),
        }

    @abc.abstractmethod
    async def _start(self) -> None: ...

    @abc.abstractmethod
    async def _workload(self) -> None: ...

    @abc.abstractmethod
    async def _settle(self) -> None: ...

    @abc.abstractmethod
    async def _verify(self) -> Verdict: ...

    @abc.abstractmethod
    async def _stop(self) -> None: ...


# ---------------------------------------------------------------- reporting and the command line


def per_fault_lines(per_fault: dict[str, dict[str, Any]], kind_width: int) -> list[str]:
    """A summary's table: a row per fault kind (faults, gifts during, acked-then-lost,
    violating gifts, offers missed)."""
    lines = []
    for kind, row in sorted(per_fault.items()):
        errors = f"  ({row['errors']} fault errors)" if row["errors"] else ""
        lines.append(f"    {kind:{kind_width}} {row['faults']:3} {row['gifts_during']:6} {row['acked_then_lost']:4} "
                     f"{row['violating_gifts']:4} {row['arrival_missed']:4}{errors}")
    return lines


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def write_report(path: Path | None, default_name: str, payload: dict[str, Any]) -> None:
    """The JSON report at ``path``, or at drill-results/<default_name>-<time>.json; prints where."""
    path = path or Path("drill-results") / f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    print(f"report: {path}")
