"""Resident memory per idle authenticated connection on one gateway node.

Why: most of a gateway's connections are idle most of the time, so memory per
connection, not CPU, decides how many users a node holds. The node's resident set
(``VmRSS`` of its process) is read before and after ``count`` connections have each
sent ``hello`` and received their ``welcome``; the difference divided by ``count`` is the
figure. The node should be fresh (started for this measurement), so that its heap holds
no garbage from earlier load that new connections could reuse and hide.

The clients are bare ``websockets`` connections (no SDK: no reconnect task, no queues),
opened ``concurrency`` at a time, answering the server's pings by themselves and sending
nothing else. They are dropped (TCP reset, no closing handshake) at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from protocol import MAX_FRAME_BYTES, PROTOCOL_VERSION, Encoding, Hello, Welcome, decode_server, encode

#: Time for the node to finish its per-connection work (presence, writer start) before
#: its memory is read.
SETTLE_S = 1.5
#: File descriptors this process needs beyond the connections themselves.
_SPARE_FDS = 512


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def ensure_fd_limit(needed: int) -> int:
    """Raise this process's open-file soft limit towards ``needed``; returns the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclasses.dataclass(frozen=True, slots=True)
class IdleResult:
    connections: int
    rss_before_kib: int
    rss_after_kib: int
    seconds_to_open: float

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.connections if self.connections else 0.0


async def _open(url: str, token: str) -> ClientConnection:
    ws = await connect(url, subprotocols=[Subprotocol(Encoding.MSGPACK.subprotocol)], compression=None,
                       max_size=MAX_FRAME_BYTES, ping_interval=None, open_timeout=30)
    await ws.send(encode(Hello(v=PROTOCOL_VERSION, token=token), Encoding.MSGPACK))
    reply = decode_server(await asyncio.wait_for(ws.recv(), 30), Encoding.MSGPACK)
    if not isinstance(reply, Welcome):
        await ws.close()
        raise RuntimeError(f"connection refused: {reply}")
    return ws


async def measure_idle(url: str, node_pid: int, count: int, token_for: Callable[[str], str],
                       concurrency: int = 25, user_prefix: str = "idle") -> IdleResult:
    """Open ``count`` authenticated connections to one node and read its memory growth."""
    limit = ensure_fd_limit(count + _SPARE_FDS)
    if limit < count + _SPARE_FDS:
        raise RuntimeError(f"open-file limit {limit} is too low for {count} connections")
    tokens = [token_for(f"{user_prefix}-{i}") for i in range(count)]
    opened: list[ClientConnection] = []
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()

    async def one(token: str) -> None:
        async with gate:
            opened.append(await _open(url, token))

    await asyncio.sleep(SETTLE_S)
    before = rss_kib(node_pid)
    started = loop.time()
    try:
        await asyncio.gather(*(one(t) for t in tokens))
        took = loop.time() - started
        await asyncio.sleep(SETTLE_S)
        after = rss_kib(node_pid)
    finally:
        for ws in opened:
            ws.transport.abort()
    return IdleResult(len(opened), before, after, took)
