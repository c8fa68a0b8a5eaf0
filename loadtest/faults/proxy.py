"""A small TCP proxy between a gateway node and Redis that delays, blackholes and resets.

``tc netem`` is not available on the drill machines, so network faults are made here, in
user space, on loopback only. Each accepted connection gets one upstream connection to
the address the *resolver* names at that moment (with Sentinel: the current primary, as
HAProxy does with a ``role:master`` check), and two one-way pipes. A pipe reads as fast
as the peer writes and stamps each chunk with its arrival time; a separate writer sends
the chunk once ``arrival + delay`` has passed and the gate is open, so a delay adds
latency without cutting throughput, and order is kept.

Faults, all reversible and all bounded by the caller:

- ``delay(ms)``: every chunk, both ways, waits that long;
- ``blackhole()``: nothing is forwarded, new connections are accepted but hang. Held data
  is *delivered* when the hole heals, the way TCP retransmits after a partition that
  heals before the sockets give up: a command the client already timed out on can still
  run late. That is the case where "the outcome is unknown" matters;
- ``reset()``: every open connection is aborted with an RST (SO_LINGER 0), both sides;
- ``freeze_pubsub()``: a blackhole for pub/sub connections only (those on which the client
  sent SUBSCRIBE, including any opened during the freeze): they stay open at the TCP level
  and carry nothing either way, while the node's other connections flow. That is the
  half-open or stalled subscriber socket that no error reveals (a NAT or load balancer
  dropping an idle flow, a peer stuck in its kernel); only the node's probe notices.

When the resolver's answer changes (a failover), connections to the old address are
reset, since a demoted primary would otherwise answer READONLY on them forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("notecard.drill.proxy")

Address = tuple[str, int]
Resolver = Callable[[], Awaitable[Address]]

#: How often the resolver is asked whether the target moved.
WATCH_INTERVAL_S = 0.25
#: Bytes read per chunk; Redis replies to our scripts are small.
CHUNK = 64 * 1024
#: A connection attempt upstream that takes longer than this is dropped.
CONNECT_TIMEOUT_S = 2.0
#: A client-to-server chunk carrying a (P/S)SUBSCRIBE command in RESP: the connection is
#: a pub/sub one from then on. redis-py writes a command in one piece, so it is not split.
_SUBSCRIBE = re.compile(rb"\$1?\d\r\n[PS]?SUBSCRIBE\r\n", re.IGNORECASE)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN: the peer sees ECONNRESET."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: a client side, an upstream side, two pipes."""

    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter, target: Address) -> None:
        self.proxy = proxy
        self.client = client
        self.target = target
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        #: The client subscribed on this connection (freeze_pubsub() holds it).
        self.pubsub = False

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _abort(writer)
        for task in self.tasks:
            task.cancel()

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        proxy = self.proxy

        async def gates() -> None:
            await proxy.gate.wait()
            if self.pubsub:
                await proxy.pubsub_gate.wait()

        async def send() -> None:
            with contextlib.suppress(OSError, RuntimeError):
                await forward()

        async def forward() -> None:
            while True:
                arrived, data = await queue.get()
                await gates()
                wait = arrived + proxy.delay_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await gates()
                if not data:
                    writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await reader.read(CHUNK)
                if from_client and not self.pubsub and _SUBSCRIBE.search(data):
                    self.pubsub = True
                queue.put_nowait((time.monotonic(), data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            sender.cancel()
        finally:
            if not sender.done():
                sender.cancel()


class FaultProxy:
    """``await FaultProxy(resolver).start()``; point a Redis client at ``proxy.url``."""

    def __init__(self, resolver: Resolver, host: str = "127.0.0.1") -> None:
        self.resolver = resolver
        self.host = host
        self.port = 0
        self.delay_s = 0.0
        #: Open: data flows. Cleared: a blackhole.
        self.gate = asyncio.Event()
        self.gate.set()
        #: The same for pub/sub connections only (freeze_pubsub).
        self.pubsub_gate = asyncio.Event()
        self.pubsub_gate.set()
        self.links: set[_Link] = set()
        self.target: Address | None = None
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self.resets = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    async def start(self) -> FaultProxy:
        self.target = await self.resolver()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._watch = asyncio.create_task(self._watch_target())
        return self

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # ------------------------------------------------------------ faults
    def delay(self, ms: float) -> None:
        self.delay_s = max(0.0, ms / 1000)

    def blackhole(self) -> None:
        self.gate.clear()

    def freeze_pubsub(self) -> int:
        """Hold every byte of pub/sub connections, open ones and new ones, until heal();
        returns how many are open now."""
        self.pubsub_gate.clear()
        return sum(1 for link in self.links if link.pubsub)

    def heal(self) -> None:
        """No delay, no hole, nothing frozen (held data is delivered now)."""
        self.delay_s = 0.0
        self.gate.set()
        self.pubsub_gate.set()

    def reset(self, only_target: Address | None = None) -> int:
        """Abort open connections (all, or those to ``only_target``); returns how many."""
        doomed = [link for link in self.links if only_target is None or link.target == only_target]
        for link in doomed:
            link.reset()
            self.links.discard(link)
        self.resets += len(doomed)
        return len(doomed)

    # ------------------------------------------------------------ plumbing
    async def _watch_target(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                target = await self.resolver()
            except Exception as exc:  # the resolver's own outage: keep the last answer
                log.debug("proxy resolver failed: %s", exc)
                continue
            if target != self.target:
                old, self.target = self.target, target
                if old is not None:
                    log.info("proxy target moved %s -> %s; resetting %d links", old, target, self.reset(old))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.target
        if target is None:
            _abort(writer)
            return
        link = _Link(self, writer, target)
        self.links.add(link)
        try:
            await self.gate.wait()  # a blackhole also swallows the SYN's follow-up
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*target), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            self.links.discard(link)
            _abort(writer)
            return
        except asyncio.CancelledError:
            self.links.discard(link)
            raise
        link.upstream = up_writer
        link.tasks = [
            asyncio.create_task(link.pipe(reader, up_writer, from_client=True)),
            asyncio.create_task(link.pipe(up_reader, writer, from_client=False)),
        ]
        try:
            await asyncio.gather(*link.tasks)
        except asyncio.CancelledError:
            pass
        finally:
            self.links.discard(link)
            for w in (writer, up_writer):
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()
