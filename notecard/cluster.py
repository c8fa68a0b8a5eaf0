"""A local cluster of gateway nodes as separate OS processes, for tests, benchmarks and drills.

Each node is ``python -m notecard serve --worker`` on its own free loopback ports, sharing
one Redis and one pair of secrets. Nodes can be stopped gracefully, killed (``kill -9``),
paused (SIGSTOP) and resumed, and started again; only the processes started here are ever
signalled, by their PID.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from notecard.local_redis import free_port
from notecard.runner import wait_ready

#: Stop waiting for a graceful exit after this long, then SIGKILL.
STOP_TIMEOUT_S = 15.0


@dataclasses.dataclass
class NodeProcess:
    name: str
    port: int
    admin_port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "node not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, log_dir: Path) -> None:
        log = (log_dir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "notecard", "serve", "--worker"], env=self.env, stdout=log, stderr=log
        )
        log.close()
        wait_ready(self.admin_url, self.process)

    def kill(self) -> None:
        """SIGKILL: the node vanishes without any clean-up, as in a crash."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def pause(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM: graceful shutdown; SIGKILL if it does not finish in time."""
        if not self.running:
            return
        assert self.process is not None
        os.kill(self.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


class LocalCluster:
    """N gateway node processes on one Redis. Use as a context manager."""

    def __init__(
        self, redis_url: str, work_dir: Path, nodes: int = 2, *, env: Mapping[str, str] | None = None,
        token_secret: str | None = None, admin_token: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.work_dir = work_dir
        self.token_secret = token_secret or secrets.token_urlsafe(32)
        self.admin_token = admin_token or secrets.token_urlsafe(32)
        self.extra_env = dict(env or {})
        self.nodes = [self._define(f"node{i + 1}") for i in range(nodes)]

    def _define(self, name: str) -> NodeProcess:
        port, admin_port = free_port(), free_port()
        env = dict(os.environ)
        env.update({
            "NOTECARD_REDIS_URL": self.redis_url,
            "NOTECARD_TOKEN_SECRET": self.token_secret,
            "NOTECARD_ADMIN_TOKEN": self.admin_token,
            "NOTECARD_PORT": str(port),
            "NOTECARD_ADMIN_PORT": str(admin_port),
            "NOTECARD_NODE_ID": f"{name}-{secrets.token_hex(2)}",
            "NOTECARD_DATA_DIR": str(self.work_dir / name),
            "NOTECARD_LOG_FORMAT": "json",
            "NOTECARD_WORKERS": "1",
        })
        env.update(self.extra_env)
        return NodeProcess(name, port, admin_port, env)

    def start(self) -> LocalCluster:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            for node in self.nodes:
                node.start(self.work_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self) -> NodeProcess:
        node = self._define(f"node{len(self.nodes) + 1}")
        self.nodes.append(node)
        node.start(self.work_dir)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
