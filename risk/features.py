"""The scorer's features, kept per account and per device and address block (docs/risk.md).

One code path for the live scorer (Redis) and the simulator (memory): :class:`FeatureState`
updates the counters from one event through a :class:`Backend`, and returns the account's
feature vector. Every counter is a whole number or a float in a hash field: an event is a
handful of commands on the account's slot, the device's and the /24's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
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


#: Where an event is in the events stream: (ms, seq) of its entry and its index in the entry.
EventId = tuple[int, int, int]
#: An event with no place in the stream (the simulator's): always counted.
NO_ID: EventId = (0, 0, 0)

#: One backend operation: (name, key, member?). ``sadd``: add to a set, answers 1 when the
#: member is new, else 0; ``scard``: a set's size; ``ismember``; ``hgetall``; ``hset``
#: (member: a mapping); ``zscore`` (None when absent); ``zincr`` (member: (member, by)):
#: count ``by`` more for member.
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
            new = member not in s
            s.add(member)
            return int(new)
        if name == "scard":
            return len(self.sets.get(key, ()))
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
            peer, by = member
            z[peer] = z.get(peer, 0.0) + by
            return z[peer]
        raise ValueError(name)


@dataclass(frozen=True, slots=True)
class Observation:
    #: The account's features after the event (FEATURES, plus ``answers``).
    x: dict[str, float]
    #: The event was already counted (a redelivery): nothing was written.
    repeated: bool
    #: The highest shadow tier already audited for the account (risk/scorer.py), as stored.
    shadow_seen: int


#: Facts a scorer remembers between batches, at most this many and this long (then it
#: starts again): the age bounds how long a fact stays wrong after its key went away (a
#: Redis wiped and restored, a key deleted by hand).
KNOWN_MAX = 200_000
KNOWN_MAX_AGE_S = 600.0


class Known:
    """What only ever becomes true, remembered so that a batch does not ask again: a member
    of a device's or address block's set (nothing removes one), a (giver, recipient) pair
    that has given (peers are only counted up). A scorer's traffic repeats the same accounts
    on the same devices and blocks, so most of a batch's set and peer questions are answered
    here and cost no command. Forgetting is always safe: the question is asked again."""

    def __init__(self, limit: int = KNOWN_MAX, max_age_s: float = KNOWN_MAX_AGE_S) -> None:
        self.limit = limit
        self.max_age_s = max_age_s
        self._facts: set[tuple[str, str]] = set()
        self._since = time.monotonic()

    def expire(self) -> None:
        """Forget everything once it is older than ``max_age_s`` (called once a batch)."""
        if time.monotonic() - self._since >= self.max_age_s:
            self._facts.clear()
            self._since = time.monotonic()

    def __contains__(self, fact: tuple[str, str]) -> bool:
        return fact in self._facts

    def add(self, fact: tuple[str, str]) -> None:
        if len(self._facts) >= self.limit:
            self._facts.clear()
        self._facts.add(fact)


class FeatureState:
    """Updates the features from a batch of events and returns each acting account's vector
    after its event, exactly as if the events came one by one, in three round trips a
    batch: the accounts' counters and the sizes of the batch's device and address sets; the
    questions :class:`Known` cannot answer (set additions, first gifts between two
    accounts, in event order, so each sees the ones before it); the counters written back
    with the newest entry id they include, and the batch's gift counts per pair. A set's
    size after an event is its size at the start plus the members the batch added before
    and with it: exact for one scorer; with several, another scorer's additions in between
    show in the next batch. An event whose entry id the counters already include (a
    redelivery) changes nothing. A scorer that dies between the second and the third round
    trip leaves set members added whose counters were not written: when the batch is scored
    again, its first-time members are not counted once more (the sizes are read again), and
    the per-pair gift counts, written with the counters, were not written either, so its
    first-time recipients count as new again: the counts stay right."""

    def __init__(self, backend: Backend, keys: KeySchema, known: Known | None = None) -> None:
        self.backend = backend
        self.keys = keys
        self.known = known if known is not None else Known()

    async def observe(self, ev: Event, entry_id: EventId = NO_ID) -> Observation:
        return (await self.observe_many([(ev, entry_id)]))[0]

    async def observe_many(self, items: list[tuple[Event, EventId]]) -> list[Observation]:
        out, writes = await self.prepare(items)
        if writes:
            await self.backend.run(writes)
        return out

    async def prepare(self, items: list[tuple[Event, EventId]]) -> tuple[list[Observation], list[Op]]:
        """The observations of a batch, and the writes that store them (not yet run)."""
        k = self.keys
        self.known.expire()
        users = list(dict.fromkeys(ev.user for ev, _ in items))
        set_keys = list(dict.fromkeys(key for ev, _ in items for key in _set_keys(k, ev)))
        first = await self.backend.run([("hgetall", k.risk_features(u), None) for u in users]
                                       + [("scard", key, None) for key in set_keys])
        raw = {u: {_str(a): _str(b) for a, b in h.items()} for u, h in zip(users, first, strict=False)}
        sizes = {key: int(n) for key, n in zip(set_keys, first[len(users):], strict=True)}
        counters = {u: {name: _float(r.get(name)) for name in _COUNTERS} for u, r in raw.items()}
        last = {u: event_id(r.get("last_id")) for u, r in raw.items()}
        fresh: list[bool] = []
        for ev, entry_id in items:
            new = entry_id == NO_ID or entry_id > last[ev.user]
            fresh.append(new)
            if new and entry_id != NO_ID:
                last[ev.user] = entry_id
        # The questions, in event order; a fact the batch itself makes true (an account
        # added to a set, a first gift) answers the later events' questions.
        ops: list[Op] = []
        made: set[tuple[str, str]] = set()
        steps: list[list[Any]] = []
        gifts: dict[tuple[str, str], int] = {}
        for (ev, _), new in zip(items, fresh, strict=True):
            steps.append(_plan(k, ev, self.known, made, ops) if new else [])
            if new and ev.kind == "send" and ev.to:
                gifts[(ev.user, ev.to)] = gifts.get((ev.user, ev.to), 0) + 1
        got = await self.backend.run(ops) if ops else []
        out = []
        touched: dict[str, None] = {}
        for (ev, _), new, step in zip(items, fresh, steps, strict=True):
            c = counters[ev.user]
            if new:
                _apply(ev, c, [_answer(a, got, sizes, self.known) for a in step])
                touched[ev.user] = None
            out.append(Observation(vector(c), not new, int(c["shadow_seen"])))
        writes: list[Op] = []
        for u in touched:
            # Only the counters the batch changed: a send changes about half of them.
            was = raw[u]
            fields = {name: text for name in _COUNTERS
                      if (text := _text(counters[u][name])) != was.get(name, "0")}
            if last[u] != NO_ID:
                fields["last_id"] = "-".join(map(str, last[u]))
            if fields:  # nothing changed and no newer entry id (events without ids): no write
                writes.append(("hset", k.risk_features(u), fields))
        for (giver, recipient), n in gifts.items():
            writes.append(("zincr", k.risk_peers(giver), (recipient, n)))
        return out, writes


def _set_keys(k: KeySchema, ev: Event) -> list[str]:
    net = network_of(ev.ip)
    keys = [k.device_accounts(ev.device)] if ev.device != NO_DEVICE else []
    return keys + ([k.net_members(net, "accts"), k.net_members(net, "devs")] if net else [])


def _plan(k: KeySchema, ev: Event, known: Known, made: set[tuple[str, str]], ops: list[Op]) -> list[Any]:
    """One event's answers, in the order _apply reads them: ("size", key) after an
    addition (("add", key, op index) when it must be asked), ("fact", bool), or ("ask",
    op index, fact) for a question whose answer, when yes, is remembered as ``fact``."""
    def ask(op: Op, fact: tuple[str, str]) -> list[Any]:
        ops.append(op)
        return ["ask", len(ops) - 1, fact]

    def add(key: str, member: str) -> list[Any]:
        fact = (key, member)
        if fact in known or fact in made:
            return ["size", key, -1]
        made.add(fact)
        ops.append(("sadd", key, member))
        return ["size", key, len(ops) - 1, fact]

    net = network_of(ev.ip)
    steps: list[list[Any]] = []
    if ev.device != NO_DEVICE:
        steps.append(add(k.device_accounts(ev.device), ev.user))
    if net:
        steps += [add(k.net_members(net, "accts"), ev.user), add(k.net_members(net, "devs"), ev.device)]
    if ev.kind == "send" and ev.to:
        # (giver, NUL + recipient): a pair that has given, kept apart from set members
        for fact in ((ev.user, f"\0{ev.to}"), (ev.to, f"\0{ev.user}")):
            giver, recipient = fact[0], fact[1][1:]
            if fact in known or fact in made:
                steps.append(["fact", True])
            else:
                steps.append(ask(("zscore", k.risk_peers(giver), recipient), fact))
        made.add((ev.user, f"\0{ev.to}"))  # this gift: a later one of the batch knows the pair
        if net:
            fact = (k.net_members(net, "accts"), ev.to)
            if fact in known or fact in made:
                steps.append(["fact", True])
            else:
                steps.append(ask(("ismember", fact[0], ev.to), fact))
    return steps


def _answer(step: list[Any], got: list[Any], sizes: dict[str, int], known: Known) -> Any:
    """One planned answer, read in event order (sizes count the batch's additions)."""
    what = step[0]
    if what == "size":
        key, index = step[1], step[2]
        if index >= 0:
            known.add(step[3])
            if int(got[index]):
                sizes[key] += 1
        return sizes[key]
    if what == "fact":
        return step[1]
    value = got[step[1]]
    yes = value is not None and value is not False and value != 0
    if yes:
        known.add(step[2])
    return yes


def _apply(ev: Event, c: dict[str, float], answers: list[Any]) -> None:
    got = iter(answers)
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
            if not known:
                c["distinct"] += 1
            if gave_back:
                c["recip"] += 1
            if net and next(got):
                c["samenet"] += 1
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


def event_id(value: str | None) -> EventId:
    """``ms-seq`` (a stream entry of one event) or ``ms-seq-i`` (the i-th event of a batch
    entry, risk/signals.py) as a tuple that orders like the stream; NO_ID when unreadable."""
    parts = (value or "").split("-")
    try:
        ms, seq, index = (int(p) for p in [*parts, "0"][:3]) if 2 <= len(parts) <= 3 else (0, 0, 0)
    except ValueError:
        return NO_ID
    return ms, seq, index


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
