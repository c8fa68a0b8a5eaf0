"""Running nodes: one in this process, N worker processes, or the local dev cluster.

With no Redis configured, a local ``redis-server`` child is started with its data (AOF)
in ``<data_dir>/redis`` and stopped with us: the embedded default. It requires the
password generated into the data folder's secrets; the URL handed to the node (and to
worker processes, in their environment) carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from gateway import GatewayNode, GatewaySettings, close_store, connect_store
from gateway.config import production_problems
from gateway.logs import configure_logging
from gateway.node import default_node_id
from ledger.cli import POSTGRES_ENV
from notecard import secrets
from notecard.dev_books import books_check, ledger_books
from notecard.local_cluster import LocalCluster
from notecard.local_redis import LocalRedis

log = logging.getLogger("notecard.runner")

#: How long a started worker may take to answer /readyz: a deadline for a failure, not a
#: wait, generous for a slow or busy machine (a worker imports the whole product first).
READY_TIMEOUT_S = 60.0


def install_uvloop() -> None:
    """uvloop when present (it is a dependency on Linux), asyncio's loop otherwise."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@contextlib.contextmanager
def local_redis_if_needed(settings: GatewaySettings) -> Iterator[str | None]:
    """Yield the Redis URL to use, starting a managed local server if none is configured."""
    if settings.redis_url or settings.sentinels or settings.redis_cluster:
        yield settings.redis_url
        return
    if not settings.dev:
        # A private Redis per process outside development would be a silent private ledger.
        raise RuntimeError("; ".join(production_problems(settings)))
    secrets.ensure_data_dir(settings.data_dir)
    server = LocalRedis(settings.data_dir / "redis", appendonly=True,
                        password=secrets.redis_password(settings.data_dir))
    server.start()
    log.info("started local redis-server", extra={"address": server.address, "dir": str(server.data_dir)})
    try:
        yield server.url
    finally:
        server.stop()


def node_secrets(settings: GatewaySettings) -> tuple[str | None, str]:
    """(token secret, admin token) of a node. Development generates missing ones into the
    data folder; a deployment's come from its settings only (production_problems refused
    to start without them), and with a JWKS alone the node holds no token secret at all."""
    if settings.dev:
        keys = secrets.load_or_create(settings.data_dir, settings.token_secret, settings.admin_token)
        return keys.token_secret, keys.admin_token
    if settings.admin_token is None or (settings.token_secret is None and not settings.jwks_url):
        raise RuntimeError("; ".join(production_problems(settings)))
    return settings.token_secret, settings.admin_token


async def run_node(settings: GatewaySettings) -> None:
    """One node in this process until SIGTERM or SIGINT; then a graceful shutdown."""
    token_secret, admin_token = node_secrets(settings)
    store = await connect_store(settings)
    node = GatewayNode(settings, store, token_secret=token_secret, admin_token=admin_token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settle_heap()
    try:
        await node.serve_forever(stop)
    finally:
        await close_store(store)
        await _end_stray_tasks()


#: First-generation threshold of the garbage collector in a node (Python's default: 700).
#: A node allocates a few hundred container objects per gift; at 700 it ran a young
#: collection every couple of gifts.
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Keep the garbage collector's pauses out of the latency of gifts.

    Everything alive before the node serves (modules, settings, compiled schemas) lives as
    long as the process: ``gc.freeze()`` moves it where no collection walks it again, and
    young collections run less often. Measured in docs/benchmarks.md (sections 7 and 8):
    no pause over 3 ms in a node serving gifts; a node opening 10,000 connections at once
    paused up to 108 ms instead of 552 ms with Python's defaults.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


#: After a graceful stop, how long leftover tasks get to end once cancelled.
STRAY_TASKS_GRACE_S = 5.0


async def _end_stray_tasks() -> None:
    """Cancel what the node's shutdown left running and wait for it, briefly.

    asyncio.run() would wait for leftover tasks without a limit, and one that ignores its
    cancellation (seen once: a worker that stayed up after SIGTERM) keeps the process alive
    for ever. Such tasks are logged with their stacks, and the process exits all the same.
    """
    me = asyncio.current_task()
    stray = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in stray:
        task.cancel()
    if not stray:
        return
    _, stuck = await asyncio.wait(stray, timeout=STRAY_TASKS_GRACE_S)
    if stuck:
        for task in stuck:
            log.error("task ignored its cancellation at shutdown", extra={"task": repr(task),
                                                                         "stack": repr(task.get_stack(limit=8))})
        logging.shutdown()
        os._exit(0)  # the node has stopped gracefully; only the stuck tasks are left


def serve(settings: GatewaySettings) -> int:
    """``notecard serve``: one node, or ``workers`` processes sharing the port."""
    node_id = settings.node_id or default_node_id()
    configure_logging(settings.log_level, settings.log_format, node_id)
    with local_redis_if_needed(settings) as url:
        if settings.workers == 1:
            install_uvloop()
            from dataclasses import replace

            asyncio.run(run_node(replace(settings, redis_url=url, node_id=node_id)))
            return 0
        return supervise_workers(settings, url)


def worker_env(settings: GatewaySettings, url: str | None, index: int, port: int | None = None,
               admin_port: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if url:
        env["NOTECARD_REDIS_URL"] = url
    env["NOTECARD_WORKERS"] = "1" if port is not None else str(settings.workers)
    env["NOTECARD_PORT"] = str(port if port is not None else settings.port)
    env["NOTECARD_ADMIN_PORT"] = str(admin_port if admin_port is not None else settings.admin_port + index)
    env["NOTECARD_DATA_DIR"] = str(settings.data_dir)
    if settings.probe_port:  # like the admin port: worker i listens on PROBE_PORT + i
        env["NOTECARD_PROBE_PORT"] = str(settings.probe_port + index)
    if settings.dev:  # the workers of `dev` and `serve --dev` use the generated secrets too
        env["NOTECARD_DEV"] = "true"
    return env


def spawn_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Workers get their settings from the environment (secrets from the shared data folder).
    return subprocess.Popen([sys.executable, "-m", "notecard", "serve", "--worker"], env=env)


def wait_ready(admin_url: str, process: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway worker exited with status {process.returncode} during start")
        with contextlib.suppress(OSError), urllib.request.urlopen(admin_url + "/readyz", timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"gateway worker at {admin_url} not ready within {timeout}s")


def supervise_workers(settings: GatewaySettings, url: str | None) -> int:
    """Start ``workers`` processes on one port (SO_REUSEPORT); stop them all on a signal."""
    # Generated secrets exist before the workers read them, so that all of them share them.
    node_secrets(settings)
    workers = [spawn_worker(worker_env(settings, url, i)) for i in range(settings.workers)]
    return _wait_for_signal(workers)


def _wait_for_signal(workers: list[subprocess.Popen[bytes]]) -> int:
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping and all(p.poll() is None for p in workers):
        time.sleep(0.2)
    forward(signal.SIGTERM, None)
    status = 0
    for proc in workers:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        status = status or (proc.returncode if proc.returncode and proc.returncode > 0 else 0)
    return status


def dev_nodes(settings: GatewaySettings, url: str | None, count: int, postgres_url: str | None = None
              ) -> list[tuple[subprocess.Popen[bytes], str, str]]:
    """Start ``count`` nodes on consecutive port pairs; return (process, ws url, admin url).
    ``postgres_url``: the book of record their admin API's dashboards read."""
    started = []
    for index in range(count):
        port = settings.port + 2 * index
        admin_port = port + 1
        env = worker_env(settings, url, index, port=port, admin_port=admin_port)
        env["NOTECARD_HOST"] = settings.host
        env["NOTECARD_ADMIN_HOST"] = settings.host
        env.setdefault("NOTECARD_LOG_FORMAT", "text")
        env.setdefault("NOTECARD_LOG_LEVEL", "WARNING")  # keep the demo output readable
        if postgres_url:
            env[POSTGRES_ENV] = postgres_url
        proc = spawn_worker(env)
        admin_url = f"http://{settings.host}:{admin_port}"
        started.append((proc, f"ws://{settings.host}:{port}", admin_url))
    try:
        for proc, _, admin_url in started:
            wait_ready(admin_url, proc)
    except BaseException:
        # One node could not start (a port taken, say): the others must not outlive us.
        for proc, _, _ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=15)
        raise
    return started


@contextlib.contextmanager
def local_cluster(settings: GatewaySettings, shards: int) -> Iterator[str]:
    """A fresh local Redis Cluster in the data folder (``cluster/``, emptied first: its
    servers take free ports, so a previous run's cannot be reused); its URL."""
    secrets.ensure_data_dir(settings.data_dir)
    work_dir = settings.data_dir / "cluster"
    shutil.rmtree(work_dir, ignore_errors=True)
    cluster = LocalCluster(work_dir, shards=shards, replicas=1, password=secrets.redis_password(settings.data_dir))
    with cluster:
        log.info("started a local Redis Cluster", extra={"nodes": cluster.addresses})
        yield cluster.url


def dev(settings: GatewaySettings, nodes: int, demo: bool, once: bool, shards: int = 0) -> int:
    """``notecard dev``: local Redis (or a local cluster of ``shards`` primaries), ``nodes``
    gateway processes, then the demo."""
    configure_logging(settings.log_level, "text", "dev")
    keys = secrets.load_or_create(settings.data_dir, settings.token_secret, settings.admin_token)
    store = local_cluster(settings, shards) if shards else local_redis_if_needed(settings)
    with store as url, ledger_books(url) as books_url:
        started = dev_nodes(settings, url, nodes, books_url)
        procs = [p for p, _, _ in started]
        try:
            for i, (_, ws_url, admin_url) in enumerate(started):
                print(f"node {i + 1}: websocket {ws_url}  admin/metrics {admin_url}", flush=True)
            if shards:
                where = f"a local Redis Cluster of {shards} shards, a replica each (gone when this command ends)"
            elif url and not settings.redis_url:
                where = "a local redis-server (password in the secrets)"
            else:
                where = "configured"
            print(f"redis: {where}; secrets in {settings.data_dir / secrets.FILE_NAME}", flush=True)
            print(admin_hint(settings, started[0][2]), flush=True)
            if books_url:
                print(f"ledger: notecard ledger writes the ledger streams to PostgreSQL ({POSTGRES_ENV}="
                      f"{books_url}; notecard ledger reconcile compares)", flush=True)
            if demo:
                from notecard.demo import run_demo

                install_uvloop()
                asyncio.run(run_demo([u for _, u, _ in started], started[0][2], keys,
                                     say=lambda line: print(line, flush=True)))
                if books_url:
                    print(books_check(settings, url, books_url), flush=True)
            if once:
                return 0
            print("gateway running; Ctrl-C stops it", flush=True)
            return _wait_for_signal(procs)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)
                if proc.poll() is None:
                    proc.kill()


def admin_hint(settings: GatewaySettings, admin_url: str) -> str:
    """How to reach these nodes with ``notecard admin``: the URL, and where its token is."""
    data_dir = "" if settings.data_dir == Path(".notecard") else f"NOTECARD_DATA_DIR={settings.data_dir.absolute()} "
    where = "from this folder" if not data_dir else "from any folder"
    return (f"admin: {data_dir}notecard admin --url {admin_url} user USER  ({where}; or export "
            f"NOTECARD_ADMIN_URL={admin_url})")


def data_dir_default() -> Path:
    return Path(os.environ.get("NOTECARD_DATA_DIR", ".notecard"))
