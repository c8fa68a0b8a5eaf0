"""Carrying out a fault schedule against the drill's processes, and healing afterwards.

Only what the drill started is touched: gateway nodes of its :class:`LocalCluster` (by
PID), the servers and Sentinels of its :class:`RedisHA`, its :class:`FaultProxy`. Every
fault records when it started and ended (wall clock, ms: the same clock the gateways stamp
gifts with, so a gift can be attributed to the faults around its creation).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path

from loadtest.faults.proxy import FaultProxy
from loadtest.faults.redis_ha import RedisHA, command
from loadtest.faults.schedule import FaultKind, FaultSpec
from notecard.cluster import LocalCluster, NodeProcess

log = logging.getLogger("notecard.drill.faults")

#: Waiting for a restarted node or a resynchronised replica never takes longer than this.
HEAL_TIMEOUT_S = 30.0
#: A node that fails to start is started again this many times at most.
RESTART_TRIES = 4


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass(slots=True)
class FaultRecord:
    spec: FaultSpec
    started_ms: int
    ended_ms: int = 0
    detail: str = ""
    error: str = ""

    @property
    def kind_name(self) -> str:
        return self.spec.kind.value

    def to_json(self) -> dict[str, object]:
        return {**self.spec.to_json(), "started_ms": self.started_ms, "ended_ms": self.ended_ms,
                "detail": self.detail, "error": self.error}


class FaultInjector:
    def __init__(self, cluster: LocalCluster, ha: RedisHA, proxy: FaultProxy | None, log_dir: Path) -> None:
        self.cluster = cluster
        self.ha = ha
        self.proxy = proxy
        self.log_dir = log_dir
        self.records: list[FaultRecord] = []
        #: Node starts that failed (each one a process that exited during its start).
        self.restart_failures = 0

    async def run(self, schedule: list[FaultSpec], t0: float, stop: asyncio.Event) -> None:
        """Run the schedule lane by lane (lanes in parallel) relative to ``t0`` (monotonic);
        once ``stop`` is set, the faults still due run without waiting for their time."""
        lanes: dict[str, list[FaultSpec]] = {}
        for spec in schedule:
            lanes.setdefault(spec.lane, []).append(spec)
        await asyncio.gather(*(self._lane(specs, t0, stop) for specs in lanes.values()))

    async def _lane(self, specs: list[FaultSpec], t0: float, stop: asyncio.Event) -> None:
        for spec in specs:
            wait = t0 + spec.at_s - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
            # A lane that overran still runs its remaining faults (back to back once the
            # workload stopped): the schedule is the same for the same seed, so is what ran.
            record = FaultRecord(spec, wall_ms())
            self.records.append(record)
            try:
                record.detail = await self._inject(spec)
            except Exception as exc:
                record.error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("fault %s failed: %s", spec.kind, record.error)
            record.ended_ms = wall_ms()

    def _node(self, index: int) -> NodeProcess:
        return self.cluster.nodes[index % len(self.cluster.nodes)]

    async def _inject(self, spec: FaultSpec) -> str:
        if spec.kind in (FaultKind.NODE_KILL, FaultKind.NODE_PAUSE):
            return await self._node_fault(spec)
        if spec.kind in (FaultKind.PROXY_DELAY, FaultKind.PROXY_BLACKHOLE, FaultKind.PROXY_RESET,
                         FaultKind.PUBSUB_FREEZE):
            return await self._proxy_fault(spec)
        return await self._redis_fault(spec)

    async def _node_fault(self, spec: FaultSpec) -> str:
        node, d = self._node(spec.target), spec.duration_s
        if spec.kind is FaultKind.NODE_KILL:
            await asyncio.to_thread(node.kill)
            await asyncio.sleep(d)
            tries = await self._restart(node)
            return f"{node.name} killed, restarted after {d:.1f}s" + (f" ({tries} tries)" if tries > 1 else "")
        node.pause()
        try:
            await asyncio.sleep(d)
        finally:
            node.resume()
        return f"{node.name} paused {d:.1f}s"

    async def _redis_fault(self, spec: FaultSpec) -> str:
        d = spec.duration_s
        match spec.kind:
            case FaultKind.PRIMARY_KILL:
                old, new = await self.ha.kill_primary()
                await self.ha.restart_as_replica(old)
                synced = await self.ha.wait_replicas_synced(HEAL_TIMEOUT_S, exact=False)
                return f"primary :{old} killed, promoted :{new}, replicas synced: {synced}"
            case FaultKind.REDIS_SLEEP:
                _, port = await self.ha.primary()
                async with self.ha.client(port, d + 10) as r:
                    await command(r, "DEBUG", "SLEEP", f"{d:.2f}")
                new = (await self.ha.primary())[1]
                return f"primary :{port} slept {d:.1f}s" + (f"; failed over to :{new}" if new != port else "")
            case FaultKind.CLIENT_PAUSE:
                _, port = await self.ha.primary()
                async with self.ha.client(port, 2.0) as r:
                    await command(r, "CLIENT", "PAUSE", int(d * 1000), "ALL")
                await asyncio.sleep(d)
                return f"clients of :{port} paused {d:.1f}s"
            case FaultKind.PUBSUB_KILL:
                killed = 0
                for port in self.ha.ports:
                    with contextlib.suppress(Exception):
                        async with self.ha.client(port, 2.0) as r:
                            killed += int(await command(r, "CLIENT", "KILL", "TYPE", "pubsub"))
                return f"{killed} pub/sub connections killed"
        raise AssertionError(spec.kind)

    async def _proxy_fault(self, spec: FaultSpec) -> str:
        proxy, d = self._proxy(), spec.duration_s
        if spec.kind is FaultKind.PROXY_RESET:
            return f"proxy reset {proxy.reset()} connections"
        if spec.kind is FaultKind.PROXY_DELAY:
            proxy.delay(spec.target)
            what = f"delay {spec.target} ms"
        elif spec.kind is FaultKind.PUBSUB_FREEZE:
            what = f"pub/sub freeze ({proxy.freeze_pubsub()} open)"
        else:
            proxy.blackhole()
            what = "blackhole"
        try:
            await asyncio.sleep(d)
        finally:
            proxy.heal()
        return f"proxy {what} for {d:.1f}s"

    def _proxy(self) -> FaultProxy:
        if self.proxy is None:
            raise RuntimeError("no proxy in this drill")
        return self.proxy

    async def heal(self) -> list[str]:
        """Undo whatever is still broken: every node running and unpaused, every Redis
        server running and in sync, the proxy transparent. Returns what it had to fix."""
        fixed: list[str] = []
        if self.proxy is not None:
            self.proxy.heal()
        for node in self.cluster.nodes:
            node.resume()
        for port in await self.ha.restart_dead():
            fixed.append(f"redis :{port} restarted")
        if not await self.ha.wait_replicas_synced(HEAL_TIMEOUT_S):
            fixed.append(f"replicas NOT in sync after heal ({self.ha.last_sync_state})")
        for node in self.cluster.nodes:
            if not node.running:
                await self._restart(node)
                fixed.append(f"{node.name} restarted")
        return fixed

    async def _restart(self, node: NodeProcess) -> int:
        """Start a node again as a supervisor would: a node that could not start (Redis
        unreachable mid-failover makes it exit) is tried again, a few times."""
        for attempt in range(1, RESTART_TRIES + 1):
            try:
                await asyncio.to_thread(node.start, self.log_dir)
                return attempt
            except RuntimeError as exc:
                log.warning("restart of %s failed (try %d): %s", node.name, attempt, exc)
                self.restart_failures += 1
                await asyncio.to_thread(node.kill)
                await asyncio.sleep(1.0)
        raise RuntimeError(f"{node.name} did not start in {RESTART_TRIES} tries")
