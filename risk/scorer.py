"""Scores the gateway's risk events and acts on the decisions (docs/risk.md).

A Redis Streams consumer group over the events stream: any number of scorers (``notecard
risk run`` processes, or nodes) share the work, each entry goes to one of them, and an entry
is acknowledged only after its decision is stored. Entries a scorer took and never
acknowledged (it died) are claimed by another after CLAIM_IDLE_MS. A redelivered entry is
not counted twice: each account's features remember the newest entry they include.

The account's counters are read, updated and written by one scorer at a time per entry;
two scorers handling the same account's entries at the same instant may lose one update of
a counter (features are statistics and the actions only move up; see docs/risk.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from clearing.keys import KeySchema
from clearing.topology import AnyRedis
from risk.actions import SEVERITY, RiskActions, Tier, audit
from risk.engine import Decision, Switches, decide
from risk.features import Backend, Event, FeatureState, Op, event_id
from risk.model import Model

log = logging.getLogger("notecard.risk.scorer")

GROUP = "scorers"
CLAIM_IDLE_MS = 30_000
#: Entries abandoned by a dead scorer are looked for this often (they wait CLAIM_IDLE_MS
#: anyway), not at every batch: a round trip less per batch.
CLAIM_EVERY_S = 5.0
#: Entries a batch takes at most.
BATCH = 200
#: After a batch smaller than BATCH, ``notecard risk run`` waits this long before the next
#: read, so that batches grow with the traffic: a batch's round trips are paid by more
#: events, and a decision comes at most this much later (it never delays a gift).
LINGER_S = 0.25
SWITCHES_MAX_AGE_S = 1.0


class RedisBackend:
    """The feature operations on Redis, one pipeline per call (keys in the account's, the
    device's and the address block's slots; a cluster client splits it by node)."""

    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis

    async def run(self, ops: list[Op]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, key, member in ops:
                if name == "sadd":
                    pipe.sadd(key, member)
                elif name == "scard":
                    pipe.scard(key)
                elif name == "ismember":
                    pipe.sismember(key, member)
                elif name == "hgetall":
                    pipe.hgetall(key)
                elif name == "hset":
                    pipe.hset(key, mapping=member)
                elif name == "zscore":
                    pipe.zscore(key, member)
                elif name == "zincr":
                    pipe.zincrby(key, member[1], member[0])
                elif name == "xack":  # the scorer's acknowledgement of a batch (member: group, ids)
                    pipe.xack(key, member[0], *member[1])
                else:
                    raise ValueError(name)
            answers = await pipe.execute()
        return [bool(value) if name == "ismember" else value for (name, _, _), value in zip(ops, answers, strict=True)]


class RiskMetrics:
    """Decisions per tier and mode, the model's decision time, shadow/enforced disagreements."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter("notecard_risk_decisions", "risk decisions by tier and mode (enforce, shadow)",
                                 ["tier", "mode"], registry=self.registry)
        self.latency = Histogram("notecard_risk_decision_seconds", "time to decide one event (features to tier)",
                                 buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01), registry=self.registry)
        self.disagreements = Counter("notecard_risk_shadow_disagreements",
                                     "events whose shadow tier differs from the enforced one", registry=self.registry)
        self.events = Counter("notecard_risk_events", "risk events scored", ["kind"], registry=self.registry)


class Scorer:
    def __init__(self, redis: AnyRedis, keys: KeySchema, model: Model, *, name: str,
                 metrics: RiskMetrics | None = None, backend: Backend | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.model = model
        self.name = name
        self.metrics = metrics or RiskMetrics()
        self.features = FeatureState(backend or RedisBackend(redis), keys)
        self.actions = RiskActions(redis, keys)
        self.stream = keys.risk_events()
        self._switches = Switches()
        self._switches_at = -1e9
        self._claimed_at = -1e9
        self.full = False

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def switches(self) -> Switches:
        """The operators' switches (``notecard admin risk``), reread at most once a second."""
        if time.monotonic() - self._switches_at >= SWITCHES_MAX_AGE_S:
            raw = {_text(k): _text(v) for k, v in (await self.redis.hgetall(self.keys.risk_switches())).items()}
            self._switches = Switches(
                shadow=raw.get("shadow") == "1",
                off=frozenset(k[5:] for k, v in raw.items() if k.startswith("rule:") and v == "off"),
                shadow_rules=frozenset(k[5:] for k, v in raw.items() if k.startswith("rule:") and v == "shadow"))
            self._switches_at = time.monotonic()
        return self._switches

    async def step(self, count: int = BATCH, block_ms: int = 1000) -> int:
        """Score one batch of up to ``count`` entries: entries abandoned by a dead scorer
        first (looked for every CLAIM_EVERY_S), then new ones. Returns how many events they
        held; ``full`` says whether the read took ``count`` entries (more may wait)."""
        entries: list[Any] = []
        if time.monotonic() - self._claimed_at >= CLAIM_EVERY_S:
            claimed: Any = await self.redis.xautoclaim(self.stream, GROUP, self.name, CLAIM_IDLE_MS, "0-0",
                                                       count=count)
            entries = list(claimed[1]) if claimed else []
            if len(entries) < count:  # none left behind: look again in CLAIM_EVERY_S
                self._claimed_at = time.monotonic()
        if not entries:
            got: Any = await self.redis.xreadgroup(GROUP, self.name, {self.stream: ">"}, count=count, block=block_ms)
            entries = [e for _, batch in got for e in batch] if got else []
        self.full = len(entries) >= count
        # A claimed entry trimmed away meanwhile has no fields; it is acknowledged all the same.
        events = expand(entries)
        await self.handle_many(events, ack=[_text(entry_id) for entry_id, _ in entries])
        return len(events)

    async def handle(self, entry_id: str, fields: Mapping[str, str]) -> Decision | None:
        return (await self.handle_many([(entry_id, fields)]))[0]

    async def handle_many(self, entries: Sequence[tuple[str, Mapping[str, str]]], *,
                          ack: list[str] | None = None) -> list[Decision | None]:
        """Score a batch in stream order: its features read in two round trips, a decision
        per event (None for an entry already scored, or one without a user), then the
        features written and the ``ack`` entries acknowledged.

        The acknowledgement comes after every decision of the batch is stored and its
        counters are written: a scorer dying before it leaves the batch to another, whose
        redelivered entries the features recognise. On one Redis it goes in the counters'
        pipeline (one connection runs them in order); a cluster client may send a pipeline's
        commands to several servers at once, so there it is a call of its own after them."""
        parsed = [(Event.from_fields(fields), event_id(entry_id)) for entry_id, fields in entries]
        items = [(ev, eid) for ev, eid in parsed if ev.user]
        observed, writes = await self.features.prepare(items)
        seen = iter(observed)
        switches = await self.switches()
        shadow_levels: dict[str, int] = {}
        out: list[Decision | None] = []
        kinds: dict[str, int] = {}
        for ev, _ in parsed:
            if not ev.user:
                out.append(None)
                continue
            obs = next(seen)
            if obs.repeated:
                out.append(None)  # redelivered after its features were stored
                continue
            kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
            if ev.kind == "hello" and ev.device != "-" and await self.redis.exists(self.keys.device_ban(ev.device)):
                # The device was banned before this hello's account was known on it.
                await self.redis.hset(self.keys.risk(ev.user), f"dev:{ev.device}", "1")
            started = time.perf_counter()
            decision = decide(obs.x, self.model, switches)
            self.metrics.latency.observe(time.perf_counter() - started)
            level = max(obs.shadow_seen, shadow_levels.get(ev.user, 0))
            shadow_levels[ev.user] = await self.act(ev, decision, level)
            out.append(decision)
        for kind, n in kinds.items():
            self.metrics.events.labels(kind=kind).inc(n)
        together = bool(ack) and isinstance(self.features.backend, RedisBackend) and not isinstance(
            self.redis, RedisCluster)
        if together and ack:
            writes.append(("xack", self.stream, (GROUP, ack)))
        if writes:
            await self.features.backend.run(writes)
        if ack and not together:
            await self.redis.xack(self.stream, GROUP, *ack)
        return out

    async def act(self, ev: Event, d: Decision, shadow_seen: int = 0) -> int:
        """Apply (or, in shadow, only audit) a decision; returns the account's audited shadow level."""
        m = self.metrics
        if d.tier is not Tier.NONE:
            m.decisions.labels(tier=d.tier.value, mode="enforce").inc()
        if d.shadow_tier is not Tier.NONE:
            m.decisions.labels(tier=d.shadow_tier.value, mode="shadow").inc()
            if d.shadow_tier is not d.tier:
                m.disagreements.inc()
        if d.tier is Tier.NONE and d.shadow_tier is Tier.NONE:
            return shadow_seen
        moved = d.tier is not Tier.NONE and await self.actions.apply(
            ev.user, d.tier, device=ev.device, reason=d.rule, at_ms=ev.ts or None)
        # A shadow decision is audited when the account first reaches its tier, not at every
        # later event that says the same.
        shadow_new = SEVERITY[d.shadow_tier] > shadow_seen
        if shadow_new:
            await self.redis.hset(self.keys.risk_features(ev.user), "shadow_seen", SEVERITY[d.shadow_tier])
        if moved or shadow_new:
            await audit(self.redis, self.keys, decision_entry(ev, d, applied=moved))
        return max(shadow_seen, SEVERITY[d.shadow_tier])


def decision_entry(ev: Event, d: Decision, *, applied: bool) -> dict[str, Any]:
    return {"what": "decision", "user": ev.user, "device": ev.device, "ip": ev.ip, "app": ev.app,
            "event": ev.kind, "at_ms": ev.ts, "tier": d.tier.value, "rule": d.rule, "applied": "1" if applied else "0",
            "shadow_tier": d.shadow_tier.value, "shadow_rule": d.shadow_rule, "score": round(d.score, 4),
            "top": [[k, round(v, 3)] for k, v in d.top], "model": d.model_version}


def expand(entries: list[Any]) -> list[tuple[str, dict[str, str]]]:
    """Stream entries as (event id, fields) per event: a node's batch entry (``n``, ``b``:
    risk/signals.py) gives ``<entry id>-<i>`` for its i-th event; an entry of one event (the
    fields themselves, as older nodes wrote them) keeps its entry id. An entry that does not
    read gives nothing (it is acknowledged with its batch)."""
    out: list[tuple[str, dict[str, str]]] = []
    for raw_id, raw_fields in entries:
        if not raw_fields:
            continue
        entry_id = _text(raw_id)
        fields = {_text(k): v for k, v in raw_fields.items()}
        batch = fields.get("b")
        if batch is None:
            out.append((entry_id, {k: _text(v) for k, v in fields.items()}))
            continue
        try:
            events = orjson.loads(batch)
        except orjson.JSONDecodeError:
            log.warning("unreadable risk events entry skipped", extra={"entry": entry_id})
            continue
        out += [(f"{entry_id}-{i}", {str(k): str(v) for k, v in ev.items()})
                for i, ev in enumerate(events) if isinstance(ev, dict)]
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
