"""A throw-away local deployment to put load on: one ``redis-server`` and N gateway nodes.

Why a module of its own: the bench, the Locust scenarios and the docs must all load the
same set-up, with the daily gift limits and the per-connection rate limit lifted (a real
user sends at most 5 gifts a day; a load generator sends thousands a second through a few
hundred users) and everything else at its production default. The overrides are
:data:`LOAD_ENV`; docs/benchmarks.md lists them.

Run it by hand to point Locust (or anything else) at it::

    .venv/bin/python -m loadtest.target --out bench-results/target.json --for 600

It writes a :class:`Target` (URLs, admin URL and the run's random secrets) as JSON, serves
until SIGINT/SIGTERM or until ``--for`` seconds have passed, then stops the processes it
started (by PID) and removes its working folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from gateway.auth import mint_token
from notecard.cluster import LocalCluster
from notecard.local_redis import LocalRedis

#: Settings of every node under load. Limits a real user never reaches in a day are
#: lifted; the confirm window outlasts any run so that no offer expires mid-measurement.
LOAD_ENV: Mapping[str, str] = {
    "NOTECARD_DAILY_SEND_LIMIT": "1000000",
    "NOTECARD_DAILY_RECEIVE_LIMIT": "1000000",
    "NOTECARD_RATE_PER_S": "1000000",
    "NOTECARD_RATE_BURST": "1000000",
    "NOTECARD_USER_RATE_PER_S": "1000000",
    "NOTECARD_USER_RATE_BURST": "1000000",
    "NOTECARD_MAX_CONNECTIONS_PER_IP": "1000000",
    "NOTECARD_CONFIRM_WINDOW_S": "900",
}

#: Upper bound of ``--for``: a forgotten target must not serve for days.
MAX_SERVE_S = 3600.0


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What a load generator needs to reach a deployment (written as JSON for Locust)."""

    urls: tuple[str, ...]
    admin_url: str
    admin_token: str
    token_secret: str

    def token(self, user_id: str, ttl_s: int = 24 * 3600) -> str:
        return mint_token(self.token_secret, user_id, ttl_s=ttl_s)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes | str) -> Target:
        raw: Any = orjson.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("a target file holds a JSON object")
        urls = raw.get("urls")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ValueError("target 'urls' must be a non-empty list of ws:// URLs")
        fields = {}
        for name in ("admin_url", "admin_token", "token_secret"):
            value = raw.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"target {name!r} must be a non-empty string")
            fields[name] = value
        return cls(urls=tuple(urls), **fields)

    def write(self, path: Path) -> None:
        """Write with owner-only permissions: the file holds the run's secrets."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.to_json())


class LoadTarget:
    """Redis plus ``nodes`` gateway processes under :data:`LOAD_ENV`. A context manager.

    ``redis_url``: put the nodes on a Redis that is already running (a local cluster's
    ``redis+cluster://`` URL, for ``notecard bench --cluster``) instead of a fresh one.
    """

    def __init__(self, work_dir: Path, nodes: int = 2, env: Mapping[str, str] | None = None, *,
                 redis_url: str | None = None) -> None:
        self.work_dir = work_dir
        self._own = LocalRedis(work_dir / "redis") if redis_url is None else None
        self.redis_url = redis_url or (self._own.url if self._own is not None else "")
        self.env = {**LOAD_ENV, **(env or {})}
        self.nodes = nodes
        self.cluster: LocalCluster | None = None

    def start(self) -> LoadTarget:
        if self._own is not None:
            self._own.start()
        try:
            self.cluster = LocalCluster(self.redis_url, self.work_dir / "nodes", self.nodes, env=self.env).start()
        except BaseException:
            if self._own is not None:
                self._own.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            if self.cluster is not None:
                self.cluster.stop()
        finally:
            if self._own is not None:
                self._own.stop()

    @property
    def redis(self) -> LocalRedis:
        """The target's own ``redis-server`` (there is none with ``redis_url``)."""
        assert self._own is not None, "this target runs on a Redis it did not start"
        return self._own

    def __enter__(self) -> LoadTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def target(self) -> Target:
        assert self.cluster is not None, "target not started"
        return Target(
            urls=tuple(self.cluster.urls),
            admin_url=self.cluster.nodes[0].admin_url,
            admin_token=self.cluster.admin_token,
            token_secret=self.cluster.token_secret,
        )

    def node_pids(self) -> list[int]:
        assert self.cluster is not None, "target not started"
        return [n.pid for n in self.cluster.nodes if n.running]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.target",
        description="Serve a local Redis and gateway nodes with load-test limits; write their target JSON.",
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the target JSON")
    parser.add_argument("--nodes", type=int, default=2, help="gateway node processes (default 2)")
    parser.add_argument("--for", dest="duration", type=float, default=600.0,
                        help=f"stop after this many seconds (default 600, at most {MAX_SERVE_S:g})")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_SERVE_S:
        parser.error(f"--for must be in (0, {MAX_SERVE_S:g}]")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    work = Path(tempfile.mkdtemp(prefix="notecard-target-"))
    try:
        with LoadTarget(work, args.nodes) as served:
            served.target.write(args.out)
            print(f"target written to {args.out}: {', '.join(served.target.urls)}", flush=True)
            print(f"serving for at most {args.duration:g}s; Ctrl-C stops", flush=True)
            stop.wait(args.duration)
    finally:
        with contextlib.suppress(OSError):
            args.out.unlink()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
