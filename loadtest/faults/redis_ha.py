"""A Redis primary, its replicas and three Sentinels, as local child processes.

The production shape (deploy/sentinel.conf, docker-compose.yml) on loopback ports, with
timings shrunk so a failover takes seconds: Sentinels declare the primary down after
``down_after_ms`` and need a quorum of 2. There is no ``redis-sentinel`` binary here:
``redis-server <conf> --sentinel`` is the same program. Sentinel rewrites its
configuration file, so each one gets its own under the work folder.

Authentication is on, as in production (docker-compose.yml): the Redis servers share one
password (``requirepass``, and ``masterauth`` for replication), the Sentinels require
another (their ``requirepass``, also used between Sentinels) and know the servers' one
(``sentinel auth-pass``). Nodes get both through :meth:`RedisHA.node_env`.

Every process is ours and is stopped by PID (:meth:`RedisHA.stop`, always called from a
``finally``). A killed primary is started again only once Sentinel has promoted a
replica, and then explicitly as a replica of the new primary: restarted empty as a
primary, it could make the others resynchronise from nothing (the Redis docs' warning
about persistence-less primaries with automatic restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis

from notecard.local_redis import LocalRedis, find_redis_server, free_port

MASTER_NAME = "notecard"
Fsync = Literal["no", "everysec", "always"]
Address = tuple[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class RedisDurability:
    """Server-side durability: AOF on/off and its fsync policy."""

    appendonly: bool = False
    appendfsync: Fsync = "everysec"

    @property
    def label(self) -> str:
        return f"aof-{self.appendfsync}" if self.appendonly else "aof-off"


class RedisHA:
    def __init__(
        self, work_dir: Path, *, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 1500,
        failover_timeout_ms: int = 6000, durability: RedisDurability | None = None, host: str = "127.0.0.1",
    ) -> None:
        self.work_dir = work_dir.resolve()
        self.host = host
        self.durability = durability or RedisDurability()
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.ports = [free_port(host) for _ in range(1 + replicas)]
        self.servers: dict[int, LocalRedis] = {}
        self.sentinel_ports = [free_port(host) for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self._initial_primary = self.ports[0]
        #: What the last replication check saw (for a report that says why it failed).
        self.last_sync_state = ""
        self.password = secrets.token_urlsafe(24)
        self.sentinel_password = secrets.token_urlsafe(24)

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [(self.host, p) for p in self.sentinel_ports]

    @property
    def sentinel_env(self) -> str:
        """The value of NOTECARD_SENTINELS."""
        return ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)

    def node_env(self) -> dict[str, str]:
        """What a gateway node needs to find the primary through the Sentinels."""
        return {
            "NOTECARD_SENTINELS": self.sentinel_env,
            "NOTECARD_SENTINEL_MASTER": MASTER_NAME,
            "NOTECARD_REDIS_PASSWORD": self.password,
            "NOTECARD_SENTINEL_PASSWORD": self.sentinel_password,
        }

    # ------------------------------------------------------------ life
    def _server(self, port: int, replica_of: int | None) -> LocalRedis:
        args = ["--enable-debug-command", "local", "--appendfsync", self.durability.appendfsync,
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if replica_of is not None:
            args += ["--replicaof", self.host, str(replica_of)]
        return LocalRedis(self.work_dir / f"redis-{port}", port=port, host=self.host,
                          appendonly=self.durability.appendonly, extra_args=tuple(args), password=self.password)

    def start(self) -> RedisHA:
        """Start everything and wait until the Sentinels see the whole group."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            for port in self.ports:
                server = self._server(port, None if port == self._initial_primary else self._initial_primary)
                self.servers[port] = server.start()
            binary = find_redis_server()
            for port in self.sentinel_ports:
                folder = self.work_dir / f"sentinel-{port}"
                folder.mkdir(parents=True, exist_ok=True)
                conf = folder / "sentinel.conf"
                _write_private(conf, "\n".join([
                    f"port {port}", f"bind {self.host}", f"dir {folder}", f"logfile {folder / 'sentinel.log'}",
                    f"requirepass {self.sentinel_password}",
                    f"sentinel monitor {MASTER_NAME} {self.host} {self._initial_primary} 2",
                    f"sentinel auth-pass {MASTER_NAME} {self.password}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                    f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {MASTER_NAME} 2", "",
                ]))  # fmt: skip
                self.sentinels.append(subprocess.Popen([binary, str(conf), "--sentinel"],
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            asyncio.run(self._wait_formed(deadline_s=30.0))
        except BaseException:
            self.stop()
            raise
        return self

    async def _wait_formed(self, deadline_s: float) -> None:
        """Each Sentinel knows the replicas and the other Sentinels (a failover needs both)."""
        deadline = time.monotonic() + deadline_s
        want_replicas, want_peers = len(self.ports) - 1, len(self.sentinel_ports) - 1
        while time.monotonic() < deadline:
            ok = True
            for port in self.sentinel_ports:
                try:
                    async with self.sentinel_client(port, 1.0) as s:
                        info = await command(s, "SENTINEL", "MASTER", MASTER_NAME)
                except Exception:
                    ok = False
                    break
                fields = _pairs(info)
                if int(fields.get("num-slaves", 0)) < want_replicas or int(
                        fields.get("num-other-sentinels", 0)) < want_peers:
                    ok = False
                    break
            if ok:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("the Sentinel group did not form in time")

    def stop(self) -> None:
        for proc in self.sentinels:
            _stop_process(proc)
        self.sentinels.clear()
        for server in self.servers.values():
            if server.process is not None and server.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    server.process.send_signal(18)  # SIGCONT: a stopped process cannot exit
            server.stop()

    # ------------------------------------------------------------ queries
    async def primary(self, timeout_s: float = 1.0) -> Address:
        """The primary as most Sentinels see it now."""
        votes: dict[Address, int] = {}
        for port in self.sentinel_ports:
            try:
                async with self.sentinel_client(port, timeout_s) as s:
                    reply = await command(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            except Exception:
                continue
            if reply:
                addr = (_text(reply[0]), int(reply[1]))
                votes[addr] = votes.get(addr, 0) + 1
        if not votes:
            raise ConnectionError("no Sentinel answered")
        return max(votes, key=lambda a: votes[a])

    def client(self, port: int, timeout_s: float = 5.0) -> aioredis.Redis:
        """A client of the Redis server on ``port``."""
        return aioredis.Redis(host=self.host, port=port, password=self.password, socket_timeout=timeout_s,
                              socket_connect_timeout=timeout_s)

    def sentinel_client(self, port: int, timeout_s: float = 1.0) -> aioredis.Redis:
        """A client of the Sentinel on ``port``."""
        return aioredis.Redis(host=self.host, port=port, password=self.sentinel_password, socket_timeout=timeout_s,
                              socket_connect_timeout=timeout_s)

    async def role(self, port: int) -> str:
        try:
            async with self.client(port, 1.0) as r:
                reply = await command(r, "ROLE")
        except Exception:
            return "down"
        return _text(reply[0])

    # ------------------------------------------------------------ faults
    async def kill_primary(self) -> tuple[int, int | None]:
        """kill -9 the primary and wait for a promotion; returns (old port, new port or None)."""
        old = (await self.primary())[1]
        server = self.servers[old]
        await asyncio.to_thread(server.kill)
        new = await self.wait_new_primary(old, (self.down_after_ms + self.failover_timeout_ms) / 1000 + 5)
        return old, new

    async def wait_new_primary(self, old: int, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ConnectionError):
                _, port = await self.primary()
                if port != old and await self.role(port) == "master":
                    return port
            await asyncio.sleep(0.2)
        return None

    async def restart_as_replica(self, port: int) -> None:
        """Start a killed server again, following the current primary."""
        primary = (await self.primary())[1]
        if primary == port:
            return  # never promoted away: it is still the primary's address; start it as is
        server = self._server(port, primary)
        self.servers[port] = server
        await asyncio.to_thread(server.start)

    async def restart_dead(self) -> list[int]:
        """Start every server that is not running (as replicas of the current primary)."""
        started = []
        for port, server in list(self.servers.items()):
            if server.process is None or server.process.poll() is not None:
                await self.restart_as_replica(port)
                started.append(port)
        return started

    async def wait_replicas_synced(self, timeout_s: float, *, exact: bool = True) -> bool:
        """The primary reports every other server online as a replica, and caught up: at
        least at the offset the primary had when this wait began (``exact``: every write
        made before the call is on every replica), or acknowledging within the last second
        (under load, where a replica's reported offset always trails a little).

        ``exact`` does not ask for the primary's offset *now*: while gateway nodes run,
        their heartbeats, probes and sweeps write several times a second, and a replica
        reports its offset about once a second, so "equal to the current offset" is almost
        never seen although the replicas are perfectly in sync.
        """
        deadline = time.monotonic() + timeout_s
        target: tuple[int, int] | None = None  # (primary port, offset every replica must reach)
        while time.monotonic() < deadline:
            try:
                _, port = await self.primary()
                async with self.client(port, 1.0) as r:
                    info = await r.info("replication")
                    offset = int(info.get("master_repl_offset", -1))
                    if target is None or target[0] != port:  # first look, or a failover meanwhile
                        target = (port, offset)
                    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
                    self.last_sync_state = f"primary :{port} offset {offset} (waiting for {target[1]}); " + ", ".join(
                        f":{v.get('port')} {v.get('state')} offset {v.get('offset')} lag {v.get('lag')}"
                        for v in replicas)
                    if len(replicas) == len(self.ports) - 1 and all(
                            v.get("state") == "online"
                            and (int(v.get("offset", -1)) >= target[1] if exact else int(v.get("lag", 99)) <= 1)
                            for v in replicas):
                        return True
            except Exception as exc:
                self.last_sync_state = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2)
        return False


async def command(client: aioredis.Redis, *args: object) -> Any:
    """A raw command (SENTINEL, ROLE, DEBUG, CLIENT ...), which redis-py leaves untyped."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def _write_private(path: Path, text: str) -> None:
    """A file only its owner reads: it holds passwords."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: object) -> dict[str, str]:
    if isinstance(flat, dict):
        return {_text(k): _text(v) for k, v in flat.items()}
    items = list(flat) if isinstance(flat, list | tuple) else []
    return {_text(items[i]): _text(items[i + 1]) for i in range(0, len(items) - 1, 2)}
