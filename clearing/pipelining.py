"""Scripts called in the same event-loop turn go to Redis as one pipeline.

Why: redis-py spends most of a call's CPU around the command rather than in it (taking a
connection from the pool, the retry wrapper, a timeout context per read, one socket write
per command). A gateway node answers many clients at once, so the calls of one loop turn
share all of that: with 32 concurrent callers of a small script, about 36-45 -> 15 us of
Python per call (`notecard micro --only redis`; docs/benchmarks.md). Nothing changes for
the caller: each call still gets its own reply or its own error, in its own future.

Semantics kept:

- Each script is atomic on its own; a pipeline is not a transaction, and nothing here
  needs one (a script never depends on another's reply).
- "Function not found" (the node lacks this version of clearing's library: FUNCTION FLUSH,
  a restart without persistence, a replica promoted before the library reached it, a new
  shard): the function did not run, so the library is loaded on that node and only the
  calls that got the error run again, once.
- A connection error or timeout fails every call of the batch that has no reply yet, as it
  would have failed each alone: the outcome is unknown and clearing's callers retry with
  the same ids.
- Durable calls (``wait_replicas`` > 0) end their pipeline with ``SPUBLISH <fence>; WAIT n
  timeout`` (the fence is a sharded channel of a slot on the same node). WAIT counts every
  write the connection made before it, so one WAIT confirms the whole batch, and the fence
  moves the mark past idempotent retries that wrote nothing (see clearing/lua.py). Too few
  replicas fails every call of the batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from clearing.errors import ClearingUnavailable

#: Calls beyond this in one turn start another pipeline, on another connection: Redis then
#: runs one batch while the client writes the next and reads the last, instead of the two
#: taking turns. With 32 concurrent callers, 128 -> 16 raised the clearing API from 14.8k to
#: 22.9k reserves/s; gifts through the gateway, whose batches are smaller, did not change.
MAX_BATCH = 16


class NotReplicated(ClearingUnavailable):
    """The write is on the primary but fewer replicas than required confirmed it in time."""


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionLibrary:
    """One Redis Functions library: its name (``#!lua name=...``, versioned by content) and
    code. Its functions are named ``<name>_<script>``."""

    name: str
    code: str

    def function(self, script: str) -> str:
        return f"{self.name}_{script}"


def function_missing(reply: object) -> bool:
    """Whether a reply says the called function is not on the node (it did not run)."""
    return isinstance(reply, ResponseError) and "Function not found" in str(reply)


async def load_library(redis: aioredis.Redis, library: FunctionLibrary) -> None:
    """FUNCTION LOAD, unless the node has this version already (another caller loaded it
    meanwhile: the name is its content's hash, so the one there is the same)."""
    try:
        await redis.function_load(library.code)
    except ResponseError as exc:
        if "already exists" not in str(exc):
            raise


@dataclasses.dataclass(slots=True)
class _Call:
    library: FunctionLibrary
    function: str
    key: str
    argv: Sequence[str | int | bytes]
    future: asyncio.Future[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class WaitFor:
    """Replicas a durable batch waits for: ``WAIT replicas timeout_ms`` after a fence."""

    replicas: int
    timeout_ms: int
    fence: str


class ScriptBatcher:
    """Queues script calls and sends each loop turn's calls as one pipeline.

    ``wait``: when set, every batch is confirmed by replicas before its calls are answered.
    """

    __slots__ = ("_flushes", "_queue", "_redis", "_scheduled", "_wait")

    def __init__(self, redis: aioredis.Redis, wait: WaitFor | None = None) -> None:
        self._redis = redis
        self._wait = wait
        self._queue: list[_Call] = []
        self._scheduled = False
        #: Running flushes, kept referenced so that none is collected half-way.
        self._flushes: set[asyncio.Task[None]] = set()

    def call(self, library: FunctionLibrary, function: str, key: str,
             argv: Sequence[str | int | bytes]) -> asyncio.Future[Any]:
        """The raw reply of ``function`` of ``library`` (an FCALL with one key), sent with
        this turn's others."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(library, function, key, argv, future))
        if len(self._queue) >= MAX_BATCH:
            self._flush_now()
        elif not self._scheduled:
            self._scheduled = True
            # call_soon runs after every callback already queued for this turn, so the
            # requests decoded from the same socket reads all join the batch.
            loop.call_soon(self._flush_now)
        return future

    def _flush_now(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        batch = [c for c in batch if not c.future.done()]  # callers cancelled meanwhile
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _run(self, batch: list[_Call]) -> None:
        try:
            await self._send(batch)
        except BaseException as exc:
            for c in batch:
                if c.future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    c.future.cancel()
                else:
                    c.future.set_exception(_copy(exc))
            if not isinstance(exc, Exception):
                raise

    async def _send(self, batch: list[_Call]) -> None:
        remaining = batch
        for attempt in range(2):
            replies = await self._pipeline(remaining)
            missing: list[_Call] = []
            for c, reply in zip(remaining, replies, strict=True):
                if c.future.done():
                    continue  # its caller was cancelled: not run again, not answered
                if attempt == 0 and function_missing(reply):
                    missing.append(c)
                elif isinstance(reply, Exception):
                    c.future.set_exception(reply)
                else:
                    c.future.set_result(reply)
            if not missing:
                return
            for library in {c.library.name: c.library for c in missing}.values():
                await load_library(self._redis, library)
            remaining = missing
        raise AssertionError("unreachable: a second attempt answers every call")

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        """One round trip; per-call replies (errors as values). Raises what fails them all."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for c in calls:
                pipe.fcall(c.function, 1, c.key, *c.argv)
            wait = self._wait
            if wait is not None:
                pipe.execute_command("SPUBLISH", wait.fence, b"")
                pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        if wait is None:
            return replies
        acks = replies[-1]
        if isinstance(acks, Exception):
            raise acks
        if int(acks) < wait.replicas:
            raise NotReplicated(
                f"written on the primary, confirmed by {acks} of {wait.replicas} replicas "
                f"within {wait.timeout_ms} ms: the outcome is unknown"
            )
        return replies[: len(calls)]


def _copy(exc: BaseException) -> BaseException:
    """One exception object per waiting caller: a shared one would collect every caller's
    traceback as each re-raises it."""
    try:
        clone = type(exc)(*exc.args)
    except Exception:
        return exc
    clone.__cause__ = exc.__cause__
    return clone
