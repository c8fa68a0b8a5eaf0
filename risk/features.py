"""The scorer's features, kept per account and per device and address block (docs/risk.md).

One code path for the live scorer (Redis) and the simulator (memory): :class:`FeatureState`
updates the counters from one event through a :class:`Backend`, and returns the account's
feature vector. Every counter is a whole number or a float in a hash field: an event is a
handful of commands on the account's slot, the device's and the /24's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

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


class Backend(Protocol):
    async def add_member(self, key: str, member: str) -> int:
        """Add to a set; returns the set's size."""
    async def is_member(self, key: str, member: str) -> bool: ...
    async def get_hash(self, key: str) -> dict[str, str]: ...
    async def set_hash(self, key: str, values: Mapping[str, str]) -> None: ...
    async def add_peer(self, key: str, member: str) -> float:
        """Count one more gift to ``member``; returns the new count."""
    async def has_peer(self, key: str, member: str) -> bool: ...


class MemoryBackend:
    """The simulator's backend: the same operations on dictionaries."""

    def __init__(self) -> None:
        self.sets: dict[str, set[str]] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.peers: dict[str, dict[str, float]] = {}

    async def add_member(self, key: str, member: str) -> int:
        s = self.sets.setdefault(key, set())
        s.add(member)
        return len(s)

    async def is_member(self, key: str, member: str) -> bool:
        return member in self.sets.get(key, ())

    async def get_hash(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    async def set_hash(self, key: str, values: Mapping[str, str]) -> None:
        self.hashes.setdefault(key, {}).update(values)

    async def add_peer(self, key: str, member: str) -> float:
        p = self.peers.setdefault(key, {})
        p[member] = p.get(member, 0.0) + 1
        return p[member]

    async def has_peer(self, key: str, member: str) -> bool:
        return member in self.peers.get(key, {})


class FeatureState:
    """Updates the features from events and returns the acting account's vector."""

    def __init__(self, backend: Backend, keys: KeySchema) -> None:
        self.backend = backend
        self.keys = keys

    async def observe(self, ev: Event) -> dict[str, float]:
        b, k = self.backend, self.keys
        net = network_of(ev.ip)
        dev_accts = await b.add_member(k.device_accounts(ev.device), ev.user) if ev.device != NO_DEVICE else 1
        net_accts = await b.add_member(k.net_members(net, "accts"), ev.user) if net else 1
        net_devs = await b.add_member(k.net_members(net, "devs"), ev.device) if net else 1
        raw = await b.get_hash(k.risk_features(ev.user))
        c = {name: _float(raw.get(name)) for name in _COUNTERS}
        if ev.kind == "send":
            await self._send(ev, c, net)
        elif ev.kind in ("accept", "decline"):
            c["answers"] += 1
            if 0 <= ev.waited_ms < FAST_ACCEPT_MS:
                c["fast"] += 1
        c["dev_accts"], c["net_accts"], c["net_devs"] = (max(c["dev_accts"], dev_accts), max(c["net_accts"], net_accts),
                                                         max(c["net_devs"], net_devs))
        await b.set_hash(k.risk_features(ev.user), {name: _text(c[name]) for name in _COUNTERS})
        return vector(c)

    async def _send(self, ev: Event, c: dict[str, float], net: str) -> None:
        b, k = self.backend, self.keys
        c["sends"] += 1
        if ev.code != "OK":
            c["refused"] += 1
        if c["last_ts"] > 0:
            gap = max(0.0, (ev.ts - c["last_ts"]) / 1000)
            # Welford's running mean and variance of the gaps.
            c["gaps"] += 1
            delta = gap - c["gap_mean"]
            c["gap_mean"] += delta / c["gaps"]
            c["gap_m2"] += delta * (gap - c["gap_mean"])
        c["last_ts"] = ev.ts
        if ev.ts - c["win_start"] > BURST_WINDOW_MS:
            c["win_start"], c["win_n"] = ev.ts, 0
        c["win_n"] += 1
        c["burst"] = max(c["burst"], c["win_n"])
        if ev.to:
            if await b.add_peer(k.risk_peers(ev.user), ev.to) == 1:
                c["distinct"] += 1
            if await b.has_peer(k.risk_peers(ev.to), ev.user):
                c["recip"] += 1
            if net and await b.is_member(k.net_members(net, "accts"), ev.to):
                c["samenet"] += 1


_COUNTERS = ("sends", "refused", "last_ts", "gaps", "gap_mean", "gap_m2", "win_start", "win_n", "burst", "distinct",
             "recip", "samenet", "answers", "fast", "dev_accts", "net_accts", "net_devs")


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
