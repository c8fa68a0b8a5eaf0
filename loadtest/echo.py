"""The framing ceiling: raw ``websockets`` echo round trips per second on this machine.

Why: a gateway cannot settle gifts faster than the WebSocket library moves frames, and
the absolute number depends on the machine (and on how much CPU its neighbours take at
the moment). The bench therefore measures this ceiling in the same invocation and reports
the gateway's figures as ratios to it.

The server runs as its own process (``python -m loadtest.echo --port N``), like a gateway
node: uvloop when present, the same ``websockets`` settings as the gateway (no
compression, 64 KiB frames), and nothing but ``send(recv())``. The client opens
``connections`` connections and keeps one frame in flight on each; the frame is a real
``send_gift`` message, so frame sizes match the gift traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from loadtest.stats import Recorder
from protocol import MAX_FRAME_BYTES, Encoding, SendGift, encode

#: The echo server stops by itself after this long, even if nobody stops it.
SERVER_LIFETIME_S = 900.0


def sample_frame() -> bytes:
    """A msgpack ``send_gift`` frame with realistic ids (what a sender puts on the wire)."""
    msg = SendGift(rid=123456, gift_id="g1a2b3c-000123", to="lg1a2b3c-r17", kind="note", qty=1)
    frame = encode(msg, Encoding.MSGPACK)
    assert isinstance(frame, bytes)
    return frame


async def _echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def serve_echo(host: str, port: int, lifetime_s: float = SERVER_LIFETIME_S) -> None:
    async with serve(_echo, host, port, compression=None, max_size=MAX_FRAME_BYTES, ping_interval=None):
        print(f"echo server on ws://{host}:{port}", flush=True)
        await asyncio.sleep(lifetime_s)


@dataclasses.dataclass(frozen=True, slots=True)
class EchoResult:
    connections: int
    round_trips: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.round_trips / self.seconds if self.seconds > 0 else 0.0


async def measure_echo(url: str, connections: int, duration_s: float, rec: Recorder,
                       series: str = "echo/round_trip") -> EchoResult:
    """Round trips per second with one frame in flight on each of ``connections``."""
    frame = sample_frame()
    opened = [await connect(url, compression=None, max_size=MAX_FRAME_BYTES, ping_interval=None)
              for _ in range(connections)]
    start = rec.now()
    deadline = start + duration_s
    done = 0
    samples = rec.get(series)

    async def loop(ws: ClientConnection) -> None:
        nonlocal done
        while True:
            sent = rec.now()
            if sent >= deadline:
                return
            await ws.send(frame)
            await ws.recv()
            now = rec.now()
            samples.add(now, now - sent)
            done += 1

    try:
        await asyncio.gather(*(loop(ws) for ws in opened))
        end = rec.now()
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return EchoResult(connections, done, end - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.echo", description="raw websockets echo server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=SERVER_LIFETIME_S, help="exit after this many seconds")
    args = parser.parse_args(argv)
    from notecard.runner import install_uvloop

    install_uvloop()
    asyncio.run(serve_echo(args.host, args.port, args.lifetime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
