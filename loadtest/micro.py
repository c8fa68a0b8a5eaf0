"""``notecard micro``: the part measurements behind docs/benchmarks.md sections 7 and 8.

The full bench says what a gift costs; these say what its parts cost, one at a time, each
as CPU per operation of the process doing it (``time.process_time`` or ``/proc`` of a
child), so that a neighbour's load changes them less than it changes rates:

- ``redis``: a small function called from 32 concurrent tasks, one FCALL each
  (``redis.fcall``) against the same calls through clearing's ``ScriptBatcher`` (one
  pipeline per loop turn): Python CPU per call.
- ``pubsub``: messages of an event's size published by ``redis-benchmark`` into one
  subscriber that reads them as a node does (``get_message`` with a timeout).
- ``frames``: a websockets echo server answering with ``await send()``, with a task per
  ``send()`` (as a node's writer does when its queue is empty), and with ``broadcast()``:
  server CPU per message received and answered.
- ``codec``: decode and encode of a ``gift_sent`` reply and an offer ``event``, both
  encodings.
- ``scripts``: the clearing scripts of one gift on one Redis, ``Clearing.reserve`` then
  ``Clearing.accept`` between pairs of users: the time Redis spends inside each call
  (``INFO commandstats``, reset before each batch; Redis takes it from the wall clock, so
  a busy machine inflates it), redis-server's CPU per call, and this process's CPU per call
  (the client's side of clearing, as a node runs it: arguments, packing, the pipeline, the
  reply; measured with the same neighbours as the rest). Only the public clearing
  API is used, so the same part runs on older commits and compares their scripts with
  today's (docs/benchmarks.md section 10).
- ``instructions``: the same gifts (fewer) on a ``redis-server`` under valgrind's
  callgrind, counting the instructions inside FCALL (EVALSHA on older commits) per reserve
  and per accept, then the same number of gifts through the cross-shard saga on the same
  server (``force_saga``), one step at a time: instructions per step call and per gift, the
  fixed cost of a script call made visible. A count that does not move with the machine's
  load (not in the default parts: valgrind is slow, and is not installed everywhere).
- ``tokens``: a node's check of a client token at ``hello`` (gateway/tokens.py), for the
  deprecated format and JWTs of each algorithm (HS256; RS256 and ES256 with their key
  already in the JWKS cache).

Each part starts what it needs (its own redis-server in a temporary folder, a server
process on a free loopback port), stops it by its PID and is bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PARTS = ("redis", "pubsub", "frames", "codec", "scripts", "tokens", "instructions")
#: The function of the ``redis`` part: its cost in Redis is near zero, so what is measured
#: is the client's side of a call.
_ECHO_LIBRARY = "#!lua name=micro_echo\nredis.register_function('micro_echo', function(keys, args) return args[1] end)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ------------------------------------------------------------------ redis
async def _redis_calls(url: str, calls: int, concurrency: int) -> dict[str, float]:
    import redis.asyncio as aioredis

    from clearing.pipelining import FunctionLibrary, ScriptBatcher, load_library

    client = aioredis.Redis.from_url(url)
    library = FunctionLibrary("micro_echo", _ECHO_LIBRARY)
    await load_library(client, library)
    batcher = ScriptBatcher(client)
    argv = ("x" * 200, "a", "b", "c", "d", "e")

    async def direct(n: int) -> None:
        for _ in range(n):
            await client.fcall("micro_echo", 1, "k", *argv)

    async def batched(n: int) -> None:
        for _ in range(n):
            await batcher.call(library, "micro_echo", "k", argv)

    out: dict[str, float] = {}
    try:
        for name, worker in (("fcall, one call each", direct), ("ScriptBatcher, a pipeline per turn", batched)):
            started = time.process_time()
            await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
            out[name] = (time.process_time() - started) / (calls // concurrency * concurrency) * 1e6
    finally:
        await client.aclose()
    return out


# ------------------------------------------------------------------ pubsub
async def _pubsub(url: str, port: int, messages: int, password: str) -> dict[str, float]:
    import redis.asyncio as aioredis

    benchmark = shutil.which("redis-benchmark")
    if benchmark is None:
        raise RuntimeError("redis-benchmark is not installed (apt-get install redis-tools)")
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("micro")
    publisher = await asyncio.create_subprocess_exec(
        benchmark, "-h", "127.0.0.1", "-p", str(port), "-a", password, "-n", str(messages), "-c", "4", "-P", "16", "-q",
        "PUBLISH", "micro", "x" * 180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    got, started = 0, 0.0
    deadline = time.monotonic() + 60
    try:
        while got < messages and time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if got == 0:
                started = time.process_time()
            got += 1
        spent = time.process_time() - started
    finally:
        if publisher.returncode is None:
            publisher.kill()
        await publisher.wait()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    return {"get_message(timeout=0.5), per message": spent / max(1, got - 1) * 1e6}


# ------------------------------------------------------------------ frames
_FRAME_SERVER = '''
import asyncio, sys
import uvloop
from websockets.asyncio.server import serve, broadcast

mode, port = sys.argv[1], int(sys.argv[2])

async def handler(ws):
    async for msg in ws:
        if mode == "send":
            await ws.send(msg)
        elif mode == "task":
            asyncio.get_running_loop().create_task(ws.send(msg))
        else:
            broadcast([ws], msg)

async def main():
    async with serve(handler, "127.0.0.1", port, compression=None):
        print("ready", flush=True)
        await asyncio.sleep(120)  # bounded: the parent kills it long before

uvloop.run(main())
'''


def _process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _echo_clients(port: int, connections: int, per_connection: int) -> None:
    from websockets.asyncio.client import connect

    async def one() -> None:
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            payload = b"x" * 120
            for _ in range(per_connection):
                await ws.send(payload)
                await ws.recv()

    await asyncio.gather(*(one() for _ in range(connections)))


def _frames(messages: int) -> dict[str, float]:
    out: dict[str, float] = {}
    labels = {"send": "await send()", "task": "a task per send() (the gateway's writer)", "broadcast": "broadcast()"}
    connections = 32
    for mode, label in labels.items():
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-c", _FRAME_SERVER, mode, str(port)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError("the frame server did not start")
            before = _process_cpu_s(server.pid)
            asyncio.run(_echo_clients(port, connections, messages // connections))
            spent = _process_cpu_s(server.pid) - before
        finally:
            server.kill()
            server.wait()
        out[label] = spent / (messages // connections * connections) * 1e6
    return out


# ------------------------------------------------------------------ codec
def _codec(repeat: int) -> dict[str, float]:
    from protocol import Encoding, EventKind, Gift, GiftSent, decode_server, encode
    from protocol.messages import Event

    gift = Gift(gift_id="g-0123456789", sender="alice", recipient="bob", kind="note", qty=1, cost=10, amount=10,
                state="pending", created_at_ms=1_764_000_000_000, expires_at_ms=1_764_000_060_000)
    frames = {"gift_sent": GiftSent(rid=7, gift=gift),
              "event (offer)": Event(epoch="a1b2c3d4e5f6", offset=42, event=EventKind.OFFER.value, gift=gift)}
    out: dict[str, float] = {}
    for name, msg in frames.items():
        for encoding in Encoding:
            wire, label = encode(msg, encoding), f"{name}, {encoding.value}"
            out[f"decode {label}"] = _per_call(functools.partial(decode_server, wire, encoding), repeat)
            out[f"encode {label}"] = _per_call(functools.partial(encode, msg, encoding), repeat)
    return out


def _tokens(repeat: int) -> dict[str, float]:
    import jwt
    import orjson
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    from gateway.auth import ClaimRules, mint_legacy_token, mint_token
    from gateway.jwks import JwksCache
    from gateway.tokens import TokenVerifier

    secret = "micro-benchmark-secret-" + "x" * 20
    rsa_key, ec_key = rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(
        ec.SECP256R1())
    document = orjson.dumps({"keys": [
        RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "r", "alg": "RS256"},
        ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "e", "alg": "ES256"}]})

    async def fetch() -> bytes:
        return document

    claims = {"sub": "alice", "aud": "notecard", "exp": int(time.time()) + 3600, "app": "main"}
    tokens = {
        "HS256 JWT": mint_token(secret, "alice"),
        "RS256 JWT": jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r"}),
        "ES256 JWT": jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "e"}),
        "deprecated format": mint_legacy_token(secret, "alice"),
    }

    async def measure() -> dict[str, float]:
        verifier = TokenVerifier(ClaimRules(), secret=secret, jwks=JwksCache(fetch), legacy=True)
        await verifier.start()
        verifier.legacy_used.burst = 0  # the deprecation warning is not what is measured
        out = {}
        for name, token in tokens.items():
            best = float("inf")
            for _ in range(3):
                started = time.process_time()
                for _ in range(repeat):
                    await verifier.verify(token)
                best = min(best, time.process_time() - started)
            out[f"verify {name}"] = best / repeat * 1e6
        return out

    return asyncio.run(measure())


def _per_call(fn: Callable[[], object], repeat: int) -> float:
    """Microseconds per call: the best of three timings, the usual defence against noise."""
    return min(timeit.repeat(fn, number=repeat, repeat=3)) / repeat * 1e6


# ------------------------------------------------------------------ scripts
class Callgrind:
    """Instructions that a ``redis-server`` run under callgrind spent inside script calls
    (``--toggle-collect`` of ``fcallCommand``; ``evalShaCommand`` for older commits): zeroed
    before a batch, dumped after it. Unlike time, the count does not change with what the
    neighbours do."""

    def __init__(self, control: str, pid: int, out: Path) -> None:
        self.control, self.pid, self.out = control, pid, out

    def start(self) -> None:
        subprocess.run([self.control, "--zero", str(self.pid)], capture_output=True, timeout=60, check=True)

    def stop(self) -> int:
        before = set(self.out.parent.glob(self.out.name + "*"))
        subprocess.run([self.control, "--dump", str(self.pid)], capture_output=True, timeout=60, check=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for dump in set(self.out.parent.glob(self.out.name + "*")) - before:
                for line in dump.read_text().splitlines():
                    if line.startswith(("summary:", "totals:")):
                        return int(line.split()[1])
            time.sleep(0.1)
        raise RuntimeError("callgrind wrote no dump")


async def _gifting_pairs(client: Any, concurrency: int) -> tuple[Any, list[tuple[str, str]]]:
    """``concurrency`` pairs of established, funded, befriended, online users, and the
    clearing API between them, its scripts loaded. Typed loosely on purpose: the same code
    runs against older commits' ``clearing`` package."""
    from clearing import Accounts, Clearing, GiftRules, Presence

    day = 86_400_000
    rules = GiftRules(daily_send_limit=10**9, daily_receive_limit=10**9, node_ttl_ms=day, confirm_window_ms=day)
    accounts, presence, clearing = Accounts(client, rules), Presence(client, rules), Clearing(client, rules)
    pairs = [(f"ms{i}", f"mr{i}") for i in range(concurrency)]
    now = int(time.time() * 1000)
    since = now - 4 * day
    await presence.heartbeat("micro-node")
    for sender, recipient in pairs:
        for user in (sender, recipient):
            # Established users (a month old): a newcomer's gift also checks the promotion account.
            await accounts.create_user(user, verified=True, created_at_ms=now - 30 * day)
            await accounts.mint(user, "note", 10**8)
            await presence.connect(user, "micro-node")
        await accounts.follow(sender, recipient, since)
        await accounts.follow(recipient, sender, since)
        # Both scripts loaded (and the pipelines' connections open) before anything counts.
        await clearing.reserve(f"warm-{sender}", sender, recipient, "note", 1)
        await clearing.accept(f"warm-{sender}", recipient)
    return clearing, pairs


async def _scripts(url: str, gifts: int, concurrency: int, counter: Callgrind | None = None) -> dict[str, float]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        clearing, pairs = await _gifting_pairs(client, concurrency)
    except BaseException:
        await client.aclose()
        raise
    per_task = gifts // concurrency
    instructions: dict[str, float] = {}

    async def batch(step: str) -> tuple[float, float, float, float]:
        """Per operation: microseconds inside Redis's script calls, redis-server CPU
        microseconds, script calls (a version may split an operation into more), and this
        process's CPU microseconds (the client's side: what a node spends in clearing)."""
        await client.config_resetstat()
        cpu = await client.info("cpu")
        if counter is not None:
            counter.start()
        started = time.process_time()

        async def one(index: int) -> None:
            sender, recipient = pairs[index]
            for n in range(per_task):
                if step == "reserve":
                    await clearing.reserve(f"m{index}-{n}", sender, recipient, "note", 1)
                else:
                    await clearing.accept(f"m{index}-{n}", recipient)

        await asyncio.gather(*(one(i) for i in range(concurrency)))
        client_s = time.process_time() - started
        if counter is not None:
            instructions[step] = counter.stop() / (per_task * concurrency)
        after, stats = await client.info("cpu"), await client.info("commandstats")
        calls = sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_fcall"))
        inside = sum(float(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_fcall"))
        spent = sum(float(after[k]) - float(cpu[k]) for k in ("used_cpu_user", "used_cpu_sys"))
        ops = per_task * concurrency
        return inside / ops, spent / ops * 1e6, calls / ops, client_s / ops * 1e6

    try:
        out: dict[str, float] = {}
        for step in ("reserve", "accept"):
            inside, process, calls, client_cpu = await batch(step)
            if counter is not None:
                out[f"{step}: instructions inside its script calls (count)"] = instructions[step]
                continue  # under valgrind, time says nothing
            out[f"{step}: time inside its script calls"] = inside
            out[f"{step}: redis-server CPU in all"] = process
            out[f"{step}: script calls (count)"] = calls
            out[f"{step}: client CPU (this process)"] = client_cpu
        if counter is not None and hasattr(clearing, "send_saga"):
            out.update(await _saga_steps(client, clearing, pairs, per_task, counter))
    finally:
        await client.aclose()
    return out


#: The cross-shard steps of a gift, in order, as ``SendSaga`` and ``ResolveSaga`` run them
#: (clearing/gifts.py); ``settle`` is the payer's step (no sponsor or lucky bonus here). An
#: answer is ``answer``, ``settle`` and ``settled`` where ``ResolveSaga`` has an ``answer`` step
#: (without ``settled`` on commits whose clean-up was a MULTI), else (older commits)
#: ``decide``, ``settle`` and ``close``.
SEND_STEPS = ("admit", "reserve", "offer")


def _has_script(name: str) -> bool:
    from typing import get_args

    from clearing import lua

    return name in get_args(lua.ScriptName)


async def _saga_steps(client: Any, clearing: Any, pairs: list[tuple[str, str]], per_task: int,
                      counter: Callgrind) -> dict[str, float]:
    """The same gifts as the saga takes them (``force_saga``: every step its own script call,
    as across shards, on one instance), one step at a time over all gifts: instructions per
    step call, and per gift. Shows the fixed cost each script call pays, which a cross-shard
    gift pays six times."""
    clearing.force_saga = True
    gifts = [(i, f"x{i}-{n}") for i in range(len(pairs)) for n in range(per_task)]
    sends = {gid: await clearing.send_saga(gid, *pairs[i], "note", 1) for i, gid in gifts}
    state: dict[str, Any] = {}
    answers: dict[str, Any] = {}

    async def run_step(step: str, gid: str) -> None:
        send = sends[gid]
        if step == "admit":
            state[gid] = await send.admit()
        elif step == "reserve":
            state[gid] = await send.reserve(state[gid])
        elif step == "offer":
            await send.offer(state[gid])
        elif step in ("answer", "decide"):
            state[gid] = (await getattr(answers[gid], step)())[0]
        elif step == "settle":
            await answers[gid].settle(state[gid])
        elif step == "settled":
            await answers[gid].answered(state[gid])
        else:
            await answers[gid].close(state[gid])

    async def pair_steps(step: str, pair: int) -> None:
        """One task per pair, its gifts one after another, as the fast path's batches run."""
        for i, gid in gifts:
            if i == pair:
                await run_step(step, gid)

    out: dict[str, float] = {}
    total = 0.0
    two_steps = hasattr(type(await clearing.answer_saga(gifts[0][1], pairs[0][1], "accept")), "answer")
    answer_steps: tuple[str, ...] = ("decide", "settle", "close")
    if two_steps:  # the clean-up after settle is a script call where clearing has settled.lua
        answer_steps = ("answer", "settle", "settled") if _has_script("settled") else ("answer", "settle")
    for step in (*SEND_STEPS, *answer_steps):
        if step in ("answer", "decide"):  # the answer's arguments, read before anything counts
            answers = {gid: await clearing.answer_saga(gid, pairs[i][1], "accept") for i, gid in gifts}
        await client.config_resetstat()
        counter.start()
        await asyncio.gather(*(pair_steps(step, i) for i in range(len(pairs))))
        spent = counter.stop()
        stats = await client.info("commandstats")
        calls = sum(int(v["calls"]) for k, v in stats.items() if k == "cmdstat_fcall")
        out[f"saga {step}: instructions per call (count)"] = spent / max(1, calls)
        out[f"saga {step}: script calls per gift (count)"] = calls / len(gifts)
        total += spent
    out["saga, whole gift: instructions (count)"] = total / len(gifts)
    return out


def _instructions(work: Path, gifts: int) -> dict[str, float]:
    """The ``scripts`` part's gifts on a ``redis-server`` under valgrind's callgrind."""
    from notecard.local_redis import find_redis_server

    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if valgrind is None or control is None:
        raise RuntimeError("valgrind is not installed (apt-get install valgrind)")
    port, password = _free_port(), "micro-" + os.urandom(8).hex()
    out = work / "callgrind.out"
    server = subprocess.Popen(
        [valgrind, "--tool=callgrind", "--toggle-collect=evalShaCommand", "--toggle-collect=fcallCommand",
         f"--callgrind-out-file={out}",
         find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", password, "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, 120)
        return asyncio.run(_scripts(f"redis://:{password}@127.0.0.1:{port}/0", gifts, 4,
                                    Callgrind(control, server.pid, out)))
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:.0f} s")


# ------------------------------------------------------------------ CLI
def run(parts: Sequence[str], quick: bool, say: Callable[[str], None]) -> dict[str, dict[str, float]]:
    from notecard.local_redis import LocalRedis

    scale = 10 if quick else 1
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="notecard-micro-") as work:
        redis_server = LocalRedis(Path(work)) if {"redis", "pubsub", "scripts"} & set(parts) else None
        if redis_server is not None:
            redis_server.start()
        try:
            for part in parts:
                say(f"{part} ...")
                if part == "redis":
                    assert redis_server is not None
                    results[part] = asyncio.run(_redis_calls(redis_server.url, 20_000 // scale, 32))
                elif part == "pubsub":
                    assert redis_server is not None
                    results[part] = asyncio.run(_pubsub(redis_server.url, redis_server.port, 100_000 // scale,
                                                             redis_server.password))
                elif part == "frames":
                    results[part] = _frames(96_000 // scale)
                elif part == "scripts":
                    assert redis_server is not None
                    results[part] = asyncio.run(_scripts(redis_server.url, 20_000 // scale, 16))
                elif part == "instructions":
                    results[part] = _instructions(Path(work), 400 // scale)
                elif part == "tokens":
                    results[part] = _tokens(2_000 // scale)
                else:
                    results[part] = _codec(20_000 // scale)
        finally:
            if redis_server is not None:
                redis_server.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="notecard micro", description=(__doc__ or "").split("\n\n")[0])
    default = [p for p in PARTS if p != "instructions"]
    parser.add_argument("--only", default=",".join(default),
                        help=f"comma-separated parts of {','.join(PARTS)} (default: {','.join(default)})")
    parser.add_argument("--quick", action="store_true", help="a tenth of the counts (what the tests run)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    from notecard.runner import install_uvloop

    install_uvloop()
    results = run(parts, args.quick, lambda text: print(text, file=sys.stderr, flush=True))
    for part, figures in results.items():
        print(f"\n{part}: CPU per operation")
        for name, micros in figures.items():
            print(f"  {name:<48} {micros:8.2f}{'' if name.endswith('(count)') else ' us'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
