"""A seeded fault schedule: which fault, when, against what, for how long.

The schedule is a pure function of ``(seed, kinds, per_kind, duration)``, so the same seed
replays the same faults at the same offsets (the system's reactions to them still depend
on timing, as in any Jepsen run). Faults run in three lanes at once, one per layer, the
way real incidents overlap: gateway processes, the Redis group, and the network between
a node and Redis. Within a lane faults never overlap, each is followed by a quiet gap,
and every one ends (is healed) before the workload stops.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Iterable


class FaultKind(enum.StrEnum):
    NODE_KILL = "node_kill"  # kill -9 of a gateway node, restarted after `duration`
    NODE_PAUSE = "node_pause"  # SIGSTOP, SIGCONT after `duration`
    PRIMARY_KILL = "primary_kill"  # kill -9 of the Redis primary; Sentinel promotes a replica
    REDIS_SLEEP = "redis_sleep"  # DEBUG SLEEP on the primary (long ones make Sentinel fail over)
    CLIENT_PAUSE = "client_pause"  # CLIENT PAUSE <ms> ALL on the primary
    PUBSUB_KILL = "pubsub_kill"  # CLIENT KILL TYPE pubsub on every Redis server
    PROXY_DELAY = "proxy_delay"  # the proxied node's Redis link gets slow
    PROXY_BLACKHOLE = "proxy_blackhole"  # ... stops forwarding, then delivers what it held
    PROXY_RESET = "proxy_reset"  # ... every connection reset (RST)
    PUBSUB_FREEZE = "pubsub_freeze"  # ... its pub/sub connections stay open but carry nothing


LANES: dict[str, tuple[FaultKind, ...]] = {
    "nodes": (FaultKind.NODE_KILL, FaultKind.NODE_PAUSE),
    "redis": (FaultKind.PRIMARY_KILL, FaultKind.REDIS_SLEEP, FaultKind.CLIENT_PAUSE, FaultKind.PUBSUB_KILL),
    "network": (FaultKind.PROXY_DELAY, FaultKind.PROXY_BLACKHOLE, FaultKind.PROXY_RESET, FaultKind.PUBSUB_FREEZE),
}

#: (min, max) seconds a fault of each kind lasts; 0 for instantaneous ones. A Redis sleep
#: longer than Sentinel's down-after (1.5 s in drills) turns into a failover with the old
#: primary waking up and still answering for a moment: the case that loses writes.
DURATIONS: dict[FaultKind, tuple[float, float]] = {
    FaultKind.NODE_KILL: (1.0, 3.0),
    FaultKind.NODE_PAUSE: (1.0, 4.0),
    FaultKind.PRIMARY_KILL: (0.0, 0.0),
    FaultKind.REDIS_SLEEP: (0.5, 3.0),
    FaultKind.CLIENT_PAUSE: (0.5, 2.0),
    FaultKind.PUBSUB_KILL: (0.0, 0.0),
    FaultKind.PROXY_DELAY: (1.0, 3.0),
    FaultKind.PROXY_BLACKHOLE: (1.0, 3.5),
    FaultKind.PROXY_RESET: (0.0, 0.0),
    # Up to twice the drill's deafness limit (3 probe periods = 3 s): short freezes end
    # while the node still counts as hearing, long ones make it leave presence.
    FaultKind.PUBSUB_FREEZE: (1.0, 6.0),
}
#: What an instantaneous fault costs in lane time (a failover takes seconds to settle).
SETTLE_S: dict[FaultKind, float] = {FaultKind.PRIMARY_KILL: 5.0, FaultKind.PUBSUB_KILL: 0.5,
                                    FaultKind.PROXY_RESET: 0.5}
GAP_S = (0.5, 2.0)


@dataclasses.dataclass(frozen=True, slots=True)
class FaultSpec:
    at_s: float
    kind: FaultKind
    lane: str
    duration_s: float
    #: Which node (by index) for node faults; a parameter for others (delay ms).
    target: int

    def to_json(self) -> dict[str, object]:
        return {"at_s": round(self.at_s, 3), "kind": self.kind.value, "lane": self.lane,
                "duration_s": round(self.duration_s, 3), "target": self.target}


def parse_kinds(text: str) -> tuple[FaultKind, ...]:
    """``"all"``, ``"none"`` or a comma-separated list of kinds."""
    if text == "all":
        return tuple(FaultKind)
    if text in ("", "none"):
        return ()
    return tuple(FaultKind(part.strip()) for part in text.split(",") if part.strip())


def make_schedule(seed: int, kinds: Iterable[FaultKind], per_kind: int, window_s: float, nodes: int,
                  start_s: float = 2.0) -> list[FaultSpec]:
    """``per_kind`` faults of each kind, lane by lane, shuffled, within ``[start_s, window_s]``.

    When a lane's faults do not fit the window, the lane's later ones are dropped (the
    caller can see it: fewer specs than asked) rather than running past the workload.
    """
    wanted = set(kinds)
    rng = random.Random(seed)
    out: list[FaultSpec] = []
    for lane, lane_kinds in LANES.items():
        todo = [k for k in lane_kinds if k in wanted for _ in range(per_kind)]
        rng.shuffle(todo)
        t = start_s + rng.uniform(0, 1.0)
        for kind in todo:
            low, high = DURATIONS[kind]
            duration = rng.uniform(low, high)
            target = rng.randrange(nodes) if lane == "nodes" else rng.randrange(100, 800)
            cost = duration + SETTLE_S.get(kind, 0.0)
            if t + cost > window_s:
                break
            out.append(FaultSpec(at_s=t, kind=kind, lane=lane, duration_s=duration, target=target))
            t += cost + rng.uniform(*GAP_S)
    return sorted(out, key=lambda f: f.at_s)
