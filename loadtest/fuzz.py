"""``notecard fuzz``: random and mutated frames against the decoder and a live gateway.

Why: every byte a client sends reaches the decoder and the session loop before any rule
is checked; a crash there takes down every connection of the node, and a frame that
slips through could move cards. The contract (docs/protocol.md sections 2, 6, 10, 11):

- **decoder**: any frame decodes to a message that re-encodes to itself, or raises
  ProtocolError with BAD_FRAME, UNKNOWN_TYPE or BAD_FIELD and a valid (or no) ``rid``;
  never any other exception;
- **gateway**: a running node answers every frame of an authenticated connection with
  exactly one frame, in order: for an unreadable frame the ``error`` the decoder's code
  names, with the frame's ``rid``; for a readable request a reply of its type or a
  documented refusal, never INTERNAL. A frame over 64 KiB closes with 1009; a first frame
  that is not a valid ``hello`` gets ``error`` and a 35xx close. No frame changes the
  ledger (the fuzzing user has no cards and no friends), and the node still serves after.

Frames come from a seeded mutator (fast enough for hundreds of thousands): random bytes
and text, bit flips, insertions, truncations and splices of valid frames, valid maps with
fields replaced by hostile values (huge and negative integers, floats, booleans, bad
characters, deep nesting, binary and ext values), and frames of the wrong type for the
connection. The test suite drives the same contract through hypothesis
(tests/test_fuzz_*.py). With ``--atheris`` and the atheris package installed, the decoder
is also run under coverage-guided fuzzing.

    notecard fuzz                         # 100,000 decoder frames + 20,000 through a live node
    notecard fuzz --frames 1000000 --live-frames 100000 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway import GatewayNode, GatewaySettings, connect_redis, mint_token
from notecard.admin_client import AdminClient
from notecard.local_redis import LocalRedis
from protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    REPLIES,
    AcceptGift,
    ClientMessage,
    CloseCode,
    DeclineGift,
    Encoding,
    Error,
    ErrorCode,
    Frame,
    GetBalance,
    GiftResolved,
    GiftSent,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    SendGift,
    ServerMessage,
    decode_client,
    decode_server,
    encode,
    to_wire,
)
from protocol.schema import MAX_SAFE_INT

FRAME_CODES = frozenset({ErrorCode.BAD_FRAME, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_FIELD})
#: Documented close codes a first frame (not a valid hello) may end with.
AUTH_CLOSES = frozenset({CloseCode.NOT_AUTHENTICATED, CloseCode.UNSUPPORTED_VERSION, CloseCode.INVALID_TOKEN,
                         CloseCode.TOKEN_EXPIRED, CloseCode.MESSAGE_TOO_BIG})
#: Keys that change by themselves (presence, heartbeats, event stream bookkeeping).
#: Keys a well-formed but refused request may legitimately write: presence and streams,
#: the short-lived memory of a refused gift id (clearing/scripts/reserve.lua) and the
#: user's request rate (clearing/rates.py).
#: Keys a fuzzed connection may change without touching the ledger: presence, the node
#: registry, event streams, refusal memory and request rates (names after the hash tag).
#: The ledger stream is not among them: a request that changes no value writes no entry.
VOLATILE = ("presence", "beats", "stats", "nodeusers:", "ev", "evmeta", "refused:", "rate")
FUZZ_USER = "fuzzer"
#: Frames sent before their replies are read (keeps the live pass fast, and ordered).
BATCH = 64

SEED_MESSAGES: list[ClientMessage] = [
    Hello(v=1, token="a.b", epoch="e1", offset=3),
    SendGift(rid=7, gift_id="g-1", to="bob", kind="note", qty=2),
    AcceptGift(rid=8, gift_id="g-1"),
    DeclineGift(rid=9, gift_id="g-2"),
    GetBalance(rid=10),
    Ping(rid=11),
]
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**53 - 1, 2**53, 2**63 - 1, -(2**63), 2**64 - 1, 1.0, 2.0, -0.0, 1e308,
    "", "x" * 65, "x" * 2049, "a b", "é", "\x00", "\u2028", "g-1", "bob", "note", "ping",
    [], {}, [1, 2], {"t": "ping"}, {"a": {"b": {"c": {}}}},
]


@dataclasses.dataclass(slots=True)
class Stats:
    frames: int = 0
    decoded: int = 0
    refused: dict[str, int] = dataclasses.field(default_factory=dict)
    closes: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)

    def fail(self, text: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(text[:500])

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


class Mutator:
    """Seeded frames for one encoding; ``frame()`` gives the next one."""

    def __init__(self, seed: int, encoding: Encoding) -> None:
        self.rng = random.Random(f"{seed}:{encoding.value}")
        self.encoding = encoding
        self.valid = [to_wire(m) for m in SEED_MESSAGES]

    def _pack(self, value: Any) -> Frame:
        if self.encoding is Encoding.MSGPACK:
            return msgpack.packb(value, use_bin_type=True)
        return orjson.dumps(value, default=str).decode()

    def _hostile(self, depth: int = 0) -> Any:
        r = self.rng
        roll = r.random()
        if roll < 0.5 or depth > 3:
            value = r.choice(HOSTILE)
        elif roll < 0.6:
            value = r.randint(-(2**63), 2**64 - 1)
        elif roll < 0.7:
            value = "".join(chr(r.randint(0, 0x2FFF)) for _ in range(r.randint(0, 20))).replace("\ud800", "")
        elif roll < 0.8 and self.encoding is Encoding.MSGPACK:
            value = r.choice([b"\x00\xff", msgpack.ExtType(r.randint(0, 127), b"xx"),
                              msgpack.Timestamp(r.randint(0, 2**34 - 1), 0)])
        elif roll < 0.9:
            value = [self._hostile(depth + 1) for _ in range(r.randint(0, 3))]
        else:
            value = {str(self._hostile(depth + 1))[:8]: self._hostile(depth + 1) for _ in range(r.randint(0, 3))}
        return value

    def _structured(self) -> Frame:
        r = self.rng
        wire: dict[Any, Any] = dict(r.choice(self.valid))
        for _ in range(r.randint(1, 3)):
            roll = r.random()
            if roll < 0.6 and wire:
                wire[r.choice(list(wire))] = self._hostile()
            elif roll < 0.8 and wire:
                wire.pop(r.choice(list(wire)))
            else:
                wire[r.choice(["t", "rid", "x", "gift_id", "qty", "to", "v", "token"])] = self._hostile()
        if self.encoding is Encoding.MSGPACK and r.random() < 0.1:
            wire[r.choice([1, -1, b"k", 2.5, None])] = 1  # non-string keys are ignored
        return self._pack(wire)

    def _bytes(self, frame: Frame) -> bytes:
        return frame if isinstance(frame, bytes) else frame.encode()

    def _mutated(self) -> Frame:
        r = self.rng
        data = bytearray(self._bytes(self._pack(r.choice(self.valid))))
        for _ in range(r.randint(1, 4)):
            roll = r.random()
            if roll < 0.35 and data:
                i = r.randrange(len(data))
                data[i] ^= 1 << r.randrange(8)
            elif roll < 0.55:
                data[r.randint(0, len(data)):r.randint(0, len(data))] = bytes(r.randrange(256)
                                                                           for _ in range(r.randint(1, 6)))
            elif roll < 0.75 and data:
                del data[r.randrange(len(data)):]
            elif roll < 0.9:
                data += self._bytes(self._pack(r.choice(self.valid)))
            elif data:
                i = r.randrange(len(data))
                data[i:i] = data[i:i + r.randint(1, 16)]
        if self.encoding is Encoding.MSGPACK:
            return bytes(data)
        return bytes(data).decode("utf-8", "replace") if r.random() < 0.7 else bytes(data).decode("latin-1")

    def frame(self) -> Frame:
        r = self.rng
        roll = r.random()
        if roll < 0.15:
            raw = bytes(r.randrange(256) for _ in range(r.randint(0, 200)))
            return raw if self.encoding is Encoding.MSGPACK or r.random() < 0.1 else raw.decode("latin-1")
        if roll < 0.5:
            return self._mutated()
        if roll < 0.9:
            return self._structured()
        if roll < 0.93:
            depth = r.choice([10, 500, 1100, 5000])
            inner = "[" * depth + "]" * depth if self.encoding is Encoding.JSON else None
            if inner is not None:
                return '{"t":"ping","rid":1,"x":' + inner + "}"
            return b"\x81\xa1x" + b"\x91" * depth + b"\xc0"
        if roll < 0.96:
            # the other encoding's frame type: text on a binary connection and vice versa
            other = orjson.dumps(r.choice(self.valid))
            return other.decode() if self.encoding is Encoding.MSGPACK else msgpack.packb(r.choice(self.valid))
        if roll < 0.98:
            return self._pack({"t": "ping", "rid": 1, "pad": "x" * r.choice([MAX_FRAME_BYTES - 40, MAX_FRAME_BYTES])})
        return self._pack(r.choice(self.valid))


def decode_outcome(frame: Frame, encoding: Encoding) -> ClientMessage | ProtocolError:
    try:
        return decode_client(frame, encoding)
    except ProtocolError as err:
        return err


def frame_size(frame: Frame) -> int:
    return len(frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame)


def check_decoder(frame: Frame, encoding: Encoding, stats: Stats) -> None:
    """The decoder's contract on one frame (any other exception is recorded, not raised)."""
    stats.frames += 1
    try:
        outcome = decode_outcome(frame, encoding)
        if isinstance(outcome, ProtocolError):
            stats.count(stats.refused, outcome.code.value)
            if outcome.code not in FRAME_CODES:
                stats.fail(f"decoder: undocumented code {outcome.code} for {frame!r:.200}")
            if outcome.rid is not None and not (type(outcome.rid) is int and 0 <= outcome.rid <= MAX_SAFE_INT):
                stats.fail(f"decoder: bad rid {outcome.rid!r}")
            report = Error(code=outcome.code, message=outcome.message, rid=outcome.rid)
            if decode_server(encode(report, encoding), encoding) != report:
                stats.fail(f"decoder: its error does not round-trip: {report!r}")
        else:
            stats.decoded += 1
            if decode_client(encode(outcome, encoding), encoding) != outcome:
                stats.fail(f"decoder: {outcome!r} does not round-trip")
    except Exception as exc:
        stats.fail(f"decoder raised {type(exc).__name__}: {exc} on {frame!r:.200}")


def fuzz_decoder(frames: int, seed: int) -> Stats:
    stats = Stats()
    mutators = [Mutator(seed, e) for e in Encoding]
    for i in range(frames):
        m = mutators[i % 2]
        check_decoder(m.frame(), m.encoding, stats)
    return stats


# ---------------------------------------------------------------- live gateway


async def _snapshot(redis: aioredis.Redis) -> dict[bytes, bytes]:
    """Every non-volatile key's DUMP: equal snapshots mean nothing was written."""
    out: dict[bytes, bytes] = {}
    async for key in redis.scan_iter(count=1000):
        name = key.decode().partition("}:")[2]
        if not name.startswith(VOLATILE):
            out[key] = await redis.dump(key) or b""
    return out


def _expect_reply(sent: Frame, encoding: Encoding, reply: ServerMessage, stats: Stats) -> None:
    expected = decode_outcome(sent, encoding)
    if isinstance(expected, ProtocolError):
        if not (isinstance(reply, Error) and reply.code == expected.code and reply.rid == expected.rid):
            stats.fail(f"gateway answered {reply!r:.200} to a frame the decoder refuses with "
                       f"{expected.code} rid={expected.rid}: {sent!r:.200}")
        else:
            stats.count(stats.refused, expected.code.value)
        return
    stats.decoded += 1
    if isinstance(expected, Hello):
        ok = isinstance(reply, Error) and reply.code == ErrorCode.ALREADY_AUTHENTICATED
    elif isinstance(reply, Error):
        ok = reply.rid == expected.rid and reply.code not in (ErrorCode.INTERNAL, *FRAME_CODES)
        stats.count(stats.refused, reply.code)
        if isinstance(expected, (SendGift, AcceptGift, DeclineGift)):
            ok = ok and reply.code != ErrorCode.RATE_LIMITED
    else:
        want = REPLIES[type(expected)]
        ok = isinstance(reply, want) and getattr(reply, "rid", None) == expected.rid
        if isinstance(reply, (GiftSent, GiftResolved)):
            ok = False  # the fuzzing user can neither give nor receive: state would change
    if not ok:
        stats.fail(f"gateway answered {reply!r:.200} to {expected!r:.200}")


async def _session(url: str, token: str, encoding: Encoding) -> ClientConnection:
    ws = await connect(url, subprotocols=[Subprotocol(encoding.subprotocol)], max_size=2**20, compression=None,
                       open_timeout=10, close_timeout=2)
    await ws.send(encode(Hello(v=PROTOCOL_VERSION, token=token), encoding))
    welcome = decode_server(await asyncio.wait_for(ws.recv(), 10), encoding)
    if isinstance(welcome, Error):
        raise RuntimeError(f"fuzz user not welcomed: {welcome}")
    return ws


async def fuzz_live(url: str, token: str, frames: int, seed: int, stats: Stats, deadline_s: float) -> None:
    """Authenticated connections: every frame answered, in order; 1009 only for oversize."""
    end = time.monotonic() + deadline_s
    for encoding in Encoding:
        mutator = Mutator(seed + 1, encoding)
        ws = await _session(url, token, encoding)
        try:
            sent_here = 0
            while sent_here < frames // 2 and time.monotonic() < end:
                batch = [mutator.frame() for _ in range(BATCH)]
                cut = next((i for i, f in enumerate(batch) if frame_size(f) > MAX_FRAME_BYTES), None)
                if cut is not None:
                    batch = batch[: cut + 1]
                for frame in batch:
                    await ws.send(frame)
                stats.frames += len(batch)
                sent_here += len(batch)
                ws = await _read_batch(ws, batch, encoding, stats, url, token, oversize=cut is not None)
        finally:
            await ws.close()


async def _read_batch(ws: ClientConnection, batch: list[Frame], encoding: Encoding, stats: Stats, url: str,
                      token: str, *, oversize: bool) -> ClientConnection:
    answered = batch[:-1] if oversize else batch
    try:
        for frame in answered:
            reply = decode_server(await asyncio.wait_for(ws.recv(), 10), encoding)
            _expect_reply(frame, encoding, reply, stats)
        if not oversize:
            return ws
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.recv(), 5)
        stats.fail("an oversized frame did not close the connection")
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
        stats.count(stats.closes, str(code))
        if not (oversize and code == CloseCode.MESSAGE_TOO_BIG):
            stats.fail(f"connection closed with {code} after {batch[-1]!r:.100}")
    except TimeoutError:
        stats.fail(f"no answer within 10 s to a frame of {batch!r:.200}")
    with contextlib.suppress(Exception):
        await ws.close()
    return await _session(url, token, encoding)


async def fuzz_first_frames(url: str, count: int, seed: int, stats: Stats) -> None:
    """Fresh connections whose first frame is fuzzed: an error frame, then a documented close."""
    rng = random.Random(seed)
    for i in range(count):
        encoding = list(Encoding)[i % 2]
        frame = Mutator(rng.randrange(2**32), encoding).frame()
        stats.frames += 1
        async with connect(url, subprotocols=[Subprotocol(encoding.subprotocol)], max_size=2**20,
                           compression=None, open_timeout=10, close_timeout=2) as ws:
            await ws.send(frame)
            try:
                first = await asyncio.wait_for(ws.recv(), 10)
                reply = decode_server(first, encoding)
                if not isinstance(reply, Error) or reply.rid is not None:
                    stats.fail(f"first frame {frame!r:.100} answered {reply!r:.100}")
                await asyncio.wait_for(ws.recv(), 10)
                stats.fail(f"first frame {frame!r:.100} did not close the connection")
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                stats.count(stats.closes, str(code))
                if code not in AUTH_CLOSES:
                    stats.fail(f"first frame {frame!r:.100} closed with undocumented {code}")
            except TimeoutError:
                stats.fail(f"first frame {frame!r:.100}: no answer in 10 s")


async def fuzz_gateway(frames: int, first_frames: int, seed: int, deadline_s: float = 600.0,
                       redis_url: str | None = None) -> Stats:
    """A node of our own (and a Redis of our own unless given), fuzzed, then checked."""
    stats = Stats()
    with tempfile.TemporaryDirectory(prefix="notecard-fuzz-") as tmp:
        server = None if redis_url else LocalRedis(Path(tmp) / "redis").start()
        url = redis_url or (server.url if server else "")
        # Malformed frames and request rates are what is being fuzzed: the limits that
        # would close the connection after a few are raised.
        settings = GatewaySettings(redis_url=url, port=0, admin_port=0, data_dir=Path(tmp), log_format="text",
                                   log_level="WARNING", max_bad_frames=10**9, rate_per_s=10**6, rate_burst=10**6,
                                   user_rate_per_s=10**6, user_rate_burst=10**6)
        client = connect_redis(settings)
        secret, admin_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        node = GatewayNode(settings, client, token_secret=secret, admin_token=admin_token)
        try:
            await node.start()
            async with AdminClient(node.admin_url, admin_token) as admin:
                for user in (FUZZ_USER, "bob"):
                    with contextlib.suppress(Exception):
                        await admin.create_user(user, verified=True)
            before = await _snapshot(client)
            token = mint_token(secret, FUZZ_USER, ttl_s=3600)
            await fuzz_live(node.url, token, frames, seed, stats, deadline_s)
            await fuzz_first_frames(node.url, first_frames, seed, stats)
            if await _snapshot(client) != before:
                stats.fail("the fuzzed frames changed the ledger")
            ws = await _session(node.url, token, Encoding.JSON)
            await ws.send(encode(Ping(rid=1), Encoding.JSON))
            if not isinstance(decode_server(await asyncio.wait_for(ws.recv(), 5), Encoding.JSON), Pong):
                stats.fail("the node does not answer a ping after the fuzzing")
            await ws.close()
        finally:
            await node.stop()
            await client.aclose()
            if server is not None:
                server.stop()
    return stats


def run_atheris(seconds: int) -> int:  # pragma: no cover - needs the optional atheris package
    try:
        import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        print("notecard fuzz: --atheris needs the atheris package (pip install atheris)", file=sys.stderr)
        return 2
    stats = Stats()

    def one(data: bytes) -> None:
        encoding = Encoding.MSGPACK if data[:1] == b"\x00" else Encoding.JSON
        frame: Frame = data[1:] if encoding is Encoding.MSGPACK else data[1:].decode("utf-8", "replace")
        check_decoder(frame, encoding, stats)
        if stats.failures:
            raise AssertionError(stats.failures[0])

    # protocol/ is already imported: instrument the loaded code so coverage guides the search.
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-max_len=4096"], one)
    atheris.Fuzz()
    return 0


def _print(name: str, stats: Stats, seconds: float) -> None:
    refused = ", ".join(f"{k} {v}" for k, v in sorted(stats.refused.items()))
    closes = ", ".join(f"{k}: {v}" for k, v in sorted(stats.closes.items()))
    print(f"{name}: {stats.frames} frames in {seconds:.1f}s, {stats.decoded} decoded, refused: {refused}"
          + (f"; closes {closes}" if closes else "") + f"; failures: {len(stats.failures)}")
    for failure in stats.failures[:10]:
        print(f"  FAIL {failure}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="notecard fuzz", description="fuzz the protocol decoder and a live gateway")
    p.add_argument("--frames", type=int, default=100_000, help="frames through the decoder (default 100,000)")
    p.add_argument("--live-frames", type=int, default=20_000, help="frames through a live node (default 20,000)")
    p.add_argument("--first-frames", type=int, default=200, help="connections whose first frame is fuzzed")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--redis-url", help="use this Redis (flushed keys are not touched; default: a child of ours)")
    p.add_argument("--atheris", type=int, metavar="SECONDS", help="coverage-guided decoder fuzzing with atheris")
    args = p.parse_args(list(argv or []))
    if args.atheris:
        return run_atheris(args.atheris)
    started = time.monotonic()
    decoder = fuzz_decoder(args.frames, args.seed)
    _print("decoder", decoder, time.monotonic() - started)
    started = time.monotonic()
    live = asyncio.run(fuzz_gateway(args.live_frames, args.first_frames, args.seed, redis_url=args.redis_url))
    _print("gateway", live, time.monotonic() - started)
    return 0 if not decoder.failures and not live.failures else 1


