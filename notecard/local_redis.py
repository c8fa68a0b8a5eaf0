"""A local ``redis-server`` child process: the embedded default when no Redis is configured.

Used by ``notecard dev`` / ``notecard serve`` without ``REDIS_URL``, by the test fixtures
and by the drills. It runs the distribution's ``redis-server`` binary on a loopback port,
with its data in a folder of ours (mode 700), and stops it by its PID only.

It always requires a password (``requirepass``): a loopback port is open to every local
user and process. The password is given (the gateway's comes from the data folder's
secrets) or generated; :attr:`LocalRedis.url` carries it, so every client made from the URL
authenticates. A replica authenticates to its primary with its own password
(``masterauth``), so the servers of one group share theirs.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

READY_TIMEOUT_S = 30.0
#: What a password of ours looks like (URL-safe, so the URL carries it as it is, and no
#: quote or newline to break the config file it is written to).
_PASSWORD_RE = re.compile(r"[A-Za-z0-9_\-]{16,128}")


class RedisNotInstalled(RuntimeError):
    """``redis-server`` is not on PATH."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisNotInstalled(
            "redis-server is not installed: install it (Debian/Ubuntu: apt-get install redis-server) "
            "or point REDIS_URL at a running Redis"
        )
    return path


class LocalRedis:
    """One ``redis-server`` child. ``start()`` returns once it answers PING."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        appendonly: bool = False,
        extra_args: tuple[str, ...] = (),
        password: str | None = None,
        launcher: tuple[str, ...] = (),
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.data_dir = data_dir.resolve()  # redis-server chdirs into --dir before opening files
        self.host = host
        self.port = port or free_port(host)
        self.appendonly = appendonly
        self.extra_args = extra_args
        if password is not None and not _PASSWORD_RE.fullmatch(password):
            raise ValueError("a managed Redis password is 16-128 characters of A-Z a-z 0-9 _ -")
        self.password = password or secrets.token_urlsafe(24)
        #: A command the server runs under (valgrind's callgrind for the instruction
        #: counts of ``notecard bench --cluster --instructions``); empty: redis-server itself.
        self.launcher = launcher
        #: How long ``start()`` waits for PING: a server under valgrind starts far slower.
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://:password@host:port/0``: what a client needs, password included."""
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        """``host:port``, for logs and messages (the URL carries the password)."""
        return f"{self.host}:{self.port}"

    def start(self) -> LocalRedis:
        binary = find_redis_server()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        args = [
            *self.launcher,
            binary,
            str(self._auth_file()),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", str(self.data_dir / "redis.log"),
            # Scripts use caller-supplied time; effects replication keeps replicas exact.
            "--maxmemory-policy", "noeviction",
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited at start: {err or tail}")
            if self._answers_ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on {self.address} in {self.ready_timeout_s}s")

    def _auth_file(self) -> Path:
        """The password in a config file of mode 600: on the command line, any local user
        could read it from the process list."""
        path = self.data_dir / "auth.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f'requirepass "{self.password}"\nmasterauth "{self.password}"\n')
        return path

    def _answers_ping(self) -> bool:
        try:
            with redis.Redis(host=self.host, port=self.port, password=self.password, socket_timeout=0.5,
                             socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False  # not listening yet, or still loading its data

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after a grace period)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_pipe()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self._close_pipe()

    def _close_pipe(self) -> None:
        # The stderr pipe is only read when the server fails to start; close it once the
        # child is gone, or it leaks a file descriptor per restart.
        if self.process is not None and self.process.stderr is not None:
            with contextlib.suppress(OSError):
                self.process.stderr.close()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
