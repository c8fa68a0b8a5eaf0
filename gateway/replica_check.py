"""Does the Redis deployment keep the durability the node was told to promise?

``NOTECARD_WAIT_REPLICAS`` is a number the operator chose for a deployment they had in
mind; nothing in Redis enforces that the two agree. This check reads the primary's
``INFO replication`` (``connected_slaves``) and ``INFO persistence`` (``aof_enabled``) at
start and then every few seconds, and says so when they disagree with the settings
(docs/guarantees.md, "Checked at run time"):

- fewer replicas than WAIT: every gift write will answer ``UNAVAILABLE`` until enough
  replicas attach. A warning, and the node stays ready: under ``strict`` this is the price
  the preset documents (a replica resynchronising), and taking every node out of the load
  balancer would also stop what still works (connections, balances, answers that are
  already settled).
- more replicas than WAIT under ``strict``: an acknowledged gift could be lost when a
  replica that was not waited for is promoted, which is exactly what ``strict`` rules out.
  The node reports not ready (``/readyz`` 503 names the reason) until the settings match.
- more replicas than WAIT with no preset: a warning that a failover can lose acknowledged
  gifts, and that ``NOTECARD_DURABILITY`` says which preset is meant. ``fast``, ``aof``
  and ``replicated`` wait for fewer replicas by design: no warning.
- AOF off under a preset that assumes it (``aof``, ``replicated``, ``strict``): a warning.

Each finding is logged when it appears and when it clears, not on every check.
"""

from __future__ import annotations

import dataclasses
import logging

from redis.exceptions import RedisError

from clearing.topology import Topology
from gateway.config import PREFIX, GatewaySettings
from gateway.metrics import NodeMetrics

log = logging.getLogger("notecard.gateway.replicas")

#: How often the deployment is looked at again (replicas come and go with failovers).
CHECK_INTERVAL_S = 5.0
_PRESETS_WITH_AOF = ("aof", "replicated", "strict")


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    message: str
    #: False: the node must not take traffic while this holds.
    ready: bool


def assess(settings: GatewaySettings, replicas: int, aof_enabled: bool) -> list[Finding]:
    """What is wrong with ``replicas`` attached to the primary, given the settings."""
    preset, wait = settings.durability_preset, settings.wait_replicas
    findings = []
    if wait > replicas:
        findings.append(Finding(
            f"{PREFIX}WAIT_REPLICAS={wait} but the primary has {replicas} replica(s): every gift write "
            "answers UNAVAILABLE until enough replicas attach", ready=True))
    if wait < replicas and preset == "strict":
        findings.append(Finding(
            f"{PREFIX}DURABILITY=strict waits for every replica, but {PREFIX}WAIT_REPLICAS={wait} is below the "
            f"{replicas} replicas of the primary: an acknowledged gift could be lost when another one is "
            f"promoted; set {PREFIX}WAIT_REPLICAS={replicas}", ready=False))
    elif wait < replicas and not preset:
        findings.append(Finding(
            f"{PREFIX}WAIT_REPLICAS={wait} is below the {replicas} replicas of the primary: a failover can lose "
            f"acknowledged gifts; set {PREFIX}DURABILITY to the preset meant (docs/guarantees.md)", ready=True))
    if preset in _PRESETS_WITH_AOF and not aof_enabled:
        findings.append(Finding(f"{PREFIX}DURABILITY={preset} assumes AOF, but Redis runs with appendonly no",
                                ready=True))
    return findings


class ReplicaCheck:
    """The latest findings; :meth:`step` refreshes them (a Redis error keeps the last)."""

    def __init__(self, topology: Topology, settings: GatewaySettings, metrics: NodeMetrics) -> None:
        self.topology = topology
        self.settings = settings
        self.metrics = metrics
        self.findings: list[Finding] = []

    @property
    def ready(self) -> bool:
        return all(f.ready for f in self.findings)

    @property
    def reasons(self) -> list[str]:
        """Why the node is not ready, for /readyz."""
        return [f.message for f in self.findings if not f.ready]

    async def step(self) -> None:
        """Every primary's replicas (on a cluster, the fewest of any shard's count: WAIT is
        per shard) and AOF (off on any shard counts as off)."""
        replicas, aof = None, True
        for node in self.topology.nodes():
            try:
                info = await node.client.info("replication", "persistence")
            except (RedisError, OSError) as exc:
                log.debug("replica check skipped: redis unavailable", extra={"reason": str(exc)[:200]})
                return
            seen = int(info.get("connected_slaves", 0))
            replicas = seen if replicas is None else min(replicas, seen)
            aof = aof and bool(int(info.get("aof_enabled", 0)))
        if replicas is None:
            return
        self.metrics.redis_replicas.set(replicas)
        findings = assess(self.settings, replicas, aof)
        for finding in findings:
            if finding not in self.findings:
                (log.warning if finding.ready else log.error)(finding.message)
        for finding in self.findings:
            if finding not in findings:
                log.info("cleared: %s", finding.message)
        self.findings = findings
