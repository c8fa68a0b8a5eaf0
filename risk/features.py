"""The scorer's features, kept per account and per device and address block (docs/risk.md).

One code path for the live scorer (Redis) and the simulator (memory): :class:`FeatureState`
updates the counters from one event through a :class:`Backend`, and returns the account's
feature vector. Every counter is a whole number or a float in a hash field: an event is a
handful of commands on the account's slot, the device's and the /24's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from clearing.keys import KeySchema
from risk.signals import NO_DEVICE, network_of

#: The model's inputs, in order (risk/model.json lists them too and must agree).
FEATURES: tuple[str, ...] = (
    "dev_accts",      # accounts seen on the device
    "net_accts",      # accounts seen in the address's /24
    "net_devs",       # devices seen in the /24
    "sends",          # gifts the account tried to send
    "gap_cv",         # variation of the time between sends (0: machine-regular)
    "log_gap",        # log10 of the mean seconds between sends
    "fan_out",        # distinct recipients per send
    "reciprocal",     # share of sends to someone who gave to the account before (value going round)
    "same_net",       # share of sends to accounts seen in the same /24
    "fast_accepts",   # share of answers given within FAST_ACCEPT_MS of the offer
    "refused",        # share of sends refused by the gift rules
    "burst",          # most sends within one BURST_WINDOW_MS
)
FAST_ACCEPT_MS = 1500
BURST_WINDOW_MS = 60_000


@dataclass(frozen=True, slots=True)
class Event:
    kind: str          # hello, send, accept, decline
    user: str
    device: str
    ip: str
    app: str
    ts: int
    to: str = ""       # send: the recipient; answers: the gift's sender
    code: str = "OK"   # send: OK or the refusal
    waited_ms: int = -1

    @staticmethod
    def from_fields(fields: Mapping[str, str]) -> Event:
        return Event(kind=fields.get("k", ""), user=fields.get("u", ""), device=fields.get("d", NO_DEVICE),
                     ip=fields.get("ip", ""), app=fields.get("app", ""), ts=_int(fields.get("ts")),
                     to=fields.get("to", ""), code=fields.get("code", "OK"),
                     waited_ms=_int(fields.get("waited_ms"), -1))


#: One backend operation: (name, key, member?). ``sadd``: add to a set, answers the set's size;
#: ``ismember``; ``hgetall``; ``hset`` (member: a mapping); ``zscore`` (None when absent);
#: ``zincr``: count one more for member.
Op = tuple[str, str, Any]


class Backend(Protocol):
    async def run(self, ops: list[Op]) -> list[Any]:
        """Every operation in order, answered in order (Redis: one pipeline, one round trip)."""


class MemoryBackend:
    """The simulator's backend: the same operations on dictionaries."""

    def __init__(self) -> None:
        self.sets: dict[str, set[str]] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.zsets: dict[str, dict[str, float]] = {}

    async def run(self, ops: list[Op]) -> list[Any]:
        return [self._one(name, key, member) for name, key, member in ops]

    def _one(self, name: str, key: str, member: Any) -> Any:
        if name == "sadd":
            s = self.sets.setdefault(key, set())
            s.add(member)
            return len(s)
        if name == "ismember":
            return member in self.sets.get(key, ())
        if name == "hgetall":
            return dict(self.hashes.get(key, {}))
        if name == "hset":
            self.hashes.setdefault(key, {}).update(member)
            return None
        if name == "zscore":
            return self.zsets.get(key, {}).get(member)
        if name == "zincr":
            z = self.zsets.setdefault(key, {})
            z[member] = z.get(member, 0.0) + 1
            return z[member]
        raise ValueError(name)


@dataclass(frozen=True, slots=True)
class Observation:
    #: The account's features after the event (FEATURES, plus ``answers``).
    x: dict[str, float]
    #: The event was already counted (a redelivery): nothing was written.
    repeated: bool
    #: The highest shadow tier already audited for the account (risk/scorer.py), as stored.
    shadow_seen: int


class FeatureState:
    """Updates the features from a batch of events and returns each acting account's vector
    after its event, exactly as if the events came one by one: three round trips a batch
    (the accounts' counters; the set and peer operations of every new event, in event
    order, so each sees the ones before it; the counters written back with the newest entry
    id they include). An event whose entry id the counters already include (a redelivery)
    changes nothing. A scorer that dies between the second and the third round trip leaves
    peers counted whose counters were not written: at most one distinct recipient or
    reciprocal gift of that batch goes uncounted when it is scored again."""

    def __init__(self, backend: Backend, keys: KeySchema) -> None:
        self.backend = backend
        self.keys = keys

    async def observe(self, ev: Event, entry_id: tuple[int, int] = (0, 0)) -> Observation:
        return (await self.observe_many([(ev, entry_id)]))[0]

    async def observe_many(self, items: list[tuple[Event, tuple[int, int]]]) -> list[Observation]:
        k = self.keys
        users = list(dict.fromkeys(ev.user for ev, _ in items))
        heads = await self.backend.run([("hgetall", k.risk_features(u), None) for u in users])
        raw = {u: {_str(a): _str(b) for a, b in h.items()} for u, h in zip(users, heads, strict=True)}
        counters = {u: {name: _float(r.get(name)) for name in _COUNTERS} for u, r in raw.items()}
        last = {u: _entry(r.get("last_id")) for u, r in raw.items()}
        fresh: list[bool] = []
        for ev, entry_id in items:
            new = entry_id == (0, 0) or entry_id > last[ev.user]
            fresh.append(new)
            if new and entry_id != (0, 0):
                last[ev.user] = entry_id
        ops: list[Op] = []
        for (ev, _), new in zip(items, fresh, strict=True):
            if new:
                ops += _event_ops(k, ev)
        got = iter(await self.backend.run(ops))
        out = []
        touched: dict[str, None] = {}
        for (ev, _), new in zip(items, fresh, strict=True):
            c = counters[ev.user]
            if new:
                _apply(ev, c, got)
                touched[ev.user] = None
            out.append(Observation(vector(c), not new, int(c["shadow_seen"])))
        writes: list[Op] = []
        for u in touched:
            fields = {name: _text(counters[u][name]) for name in _COUNTERS}
            if last[u] != (0, 0):
                fields["last_id"] = f"{last[u][0]}-{last[u][1]}"
            writes.append(("hset", k.risk_features(u), fields))
        if writes:
            await self.backend.run(writes)
        return out


def _event_ops(k: KeySchema, ev: Event) -> list[Op]:
    """The set and peer operations of one event, in the order _apply reads their answers."""
    net = network_of(ev.ip)
    ops: list[Op] = []
    if ev.device != NO_DEVICE:
        ops.append(("sadd", k.device_accounts(ev.device), ev.user))
    if net:
        ops += [("sadd", k.net_members(net, "accts"), ev.user), ("sadd", k.net_members(net, "devs"), ev.device)]
    if ev.kind == "send" and ev.to:
        ops += [("zscore", k.risk_peers(ev.user), ev.to), ("zscore", k.risk_peers(ev.to), ev.user)]
        if net:
            ops.append(("ismember", k.net_members(net, "accts"), ev.to))
        ops.append(("zincr", k.risk_peers(ev.user), ev.to))
    return ops


def _apply(ev: Event, c: dict[str, float], got: Iterator[Any]) -> None:
    net = network_of(ev.ip)
    if ev.device != NO_DEVICE:
        c["dev_accts"] = max(c["dev_accts"], float(next(got)))
    else:
        c["dev_accts"] = max(c["dev_accts"], 1.0)
    if net:
        c["net_accts"] = max(c["net_accts"], float(next(got)))
        c["net_devs"] = max(c["net_devs"], float(next(got)))
    else:
        c["net_accts"], c["net_devs"] = max(c["net_accts"], 1.0), max(c["net_devs"], 1.0)
    if ev.kind == "send":
        c["sends"] += 1
        if ev.code != "OK":
            c["refused"] += 1
        _timing(ev.ts, c)
        if ev.to:
            known, gave_back = next(got), next(got)
            if known is None:
                c["distinct"] += 1
            if gave_back is not None:
                c["recip"] += 1
            if net and next(got):
                c["samenet"] += 1
            next(got)  # the peer count's increment
    elif ev.kind in ("accept", "decline"):
        c["answers"] += 1
        if 0 <= ev.waited_ms < FAST_ACCEPT_MS:
            c["fast"] += 1


def _timing(ts: int, c: dict[str, float]) -> None:
    if c["last_ts"] > 0:
        gap = max(0.0, (ts - c["last_ts"]) / 1000)
        # Welford's running mean and variance of the gaps.
        c["gaps"] += 1
        delta = gap - c["gap_mean"]
        c["gap_mean"] += delta / c["gaps"]
        c["gap_m2"] += delta * (gap - c["gap_mean"])
    c["last_ts"] = ts
    if ts - c["win_start"] > BURST_WINDOW_MS:
        c["win_start"], c["win_n"] = ts, 0
    c["win_n"] += 1
    c["burst"] = max(c["burst"], c["win_n"])


def _entry(value: str | None) -> tuple[int, int]:
    ms, _, seq = (value or "").partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_COUNTERS = ("sends", "refused", "last_ts", "gaps", "gap_mean", "gap_m2", "win_start", "win_n", "burst", "distinct",
             "recip", "samenet", "answers", "fast", "dev_accts", "net_accts", "net_devs", "shadow_seen")


def vector(c: Mapping[str, float]) -> dict[str, float]:
    """The features (FEATURES) from an account's counters."""
    sends = c["sends"]
    gaps = c["gaps"]
    std = math.sqrt(c["gap_m2"] / gaps) if gaps >= 2 else 0.0
    mean = c["gap_mean"]
    return {
        "dev_accts": c["dev_accts"], "net_accts": c["net_accts"], "net_devs": c["net_devs"], "sends": sends,
        # Unknown until there are a few gaps: 1.0 is what a person's irregular timing gives.
        "gap_cv": std / mean if gaps >= 3 and mean > 0 else 1.0,
        "log_gap": math.log10(1 + mean) if gaps >= 1 else 4.0,
        "fan_out": c["distinct"] / sends if sends else 1.0,
        "reciprocal": c["recip"] / sends if sends else 0.0,
        "same_net": c["samenet"] / sends if sends else 0.0,
        "fast_accepts": c["fast"] / c["answers"] if c["answers"] else 0.0,
        "refused": c["refused"] / sends if sends else 0.0,
        "burst": c["burst"],
        "answers": c["answers"],  # not a model input: the script rule's minimum
    }


def _float(value: str | None) -> float:
    try:
        out = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0  # a hand-edited counter starts again
    return out if math.isfinite(out) else 0.0


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _text(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
