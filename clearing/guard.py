"""Which Redis failures mean "not serving right now", and the wrapper that says so.

Those become :class:`ClearingUnavailable`: the outcome of a write is unknown and a retry
with the same ids is the way to learn it. Any other Redis error is a defect (a bad script,
a wrong key type) and propagates unchanged, so it is not mistaken for an outage.

A transaction (MULTI/EXEC) whose slot is moving between shards is one more: see
:class:`SlotMoving`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from clearing.errors import ClearingUnavailable

T = TypeVar("T")

_UNAVAILABLE: tuple[type[Exception], ...] = (
    rx.ConnectionError,  # includes BusyLoadingError (LOADING after a restart)
    rx.TimeoutError,
    rx.ReadOnlyError,  # we reached a replica: failover in progress
    rx.ClusterDownError,  # includes MasterDownError
    rx.TryAgainError,
    rx.OutOfMemoryError,
)
#: Replies redis-py leaves as a plain ResponseError that are a server state, not a defect:
#: another script running too long (BUSY), a replica that lost its master, a primary that
#: refuses writes for want of replicas (NOREPLICAS: min-replicas-to-write), and the rest in
#: case a proxy in between rewrites the class. A durable batch's WAIT on a server that has just
#: become a replica (a cluster failover; the batch's script got MOVED and ran nowhere) is
#: one too: the map is read again and the same step is retried.
_UNAVAILABLE_PREFIXES = ("BUSY", "MASTERDOWN", "LOADING", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS",
                         "WAIT cannot be used with replica")


class SlotMoving(ClearingUnavailable):
    """A transaction met its slot moving between shards (a resharding) and was refused:
    retry later, the slot finishes moving.

    redis-py's cluster transactions do not follow ASK (no ASKING before MULTI). They retry
    the whole MULTI/EXEC themselves (ten tries, a few seconds of backoff; an ASK points the
    slot at its target, every fifth redirect re-reads the map), then raise the AskError or
    MovedError of the last try. That try applied nothing: Redis flags a transaction one of
    whose queued commands is redirected and answers its EXEC with EXECABORT (redis-py then
    raises the queued command's redirect), and an EXEC that is itself redirected (a key
    left between the queuing and the EXEC) discards the transaction; redirects are decided
    before a command runs, never inside an EXEC. (An earlier try that redis-py sent again
    after a lost connection may have applied, as with any outage: hence an unavailable.)

    Trying once more here would not help: while the slot is half-way, the source answers
    ASK for any key it lacks (one that does not exist included), and the target, even after
    ASKING, answers TRYAGAIN to a transaction over several keys when one is missing. Callers
    that can do without all-or-none (each command idempotent) catch this to go one command
    at a time, which follows ASK."""


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    return isinstance(exc, rx.ResponseError) and str(exc).startswith(_UNAVAILABLE_PREFIXES)


def unavailable(exc: rx.RedisError) -> ClearingUnavailable:
    return ClearingUnavailable(f"redis unavailable: {type(exc).__name__}: {exc}")


async def guarded(call: Awaitable[T]) -> T:
    """Await a Redis call, turning an outage into :class:`ClearingUnavailable`."""
    try:
        return await call
    except rx.RedisError as exc:
        if is_unavailable(exc):
            raise unavailable(exc) from exc
        raise


@contextlib.asynccontextmanager
async def guarded_pipeline(redis: aioredis.Redis | RedisCluster, *,
                           transaction: bool) -> AsyncIterator[aioredis.client.Pipeline | ClusterPipeline]:
    """``redis.pipeline(transaction=...)`` with its opening guarded too: a cluster client's
    pipeline reads the cluster's map when it opens (after a connection error reset it), and
    that read fails like any call (seen in the cluster drill as ``INTERNAL`` replies while
    a node was cut off from one shard). A transaction redirected by a slot on the move raises
    :class:`SlotMoving`."""
    try:
        async with redis.pipeline(transaction=transaction) as pipe:
            yield pipe
    except rx.RedisError as exc:
        if transaction and isinstance(exc, (rx.AskError, rx.MovedError)):
            raise SlotMoving(f"slot moving: {type(exc).__name__}: {exc}") from exc
        if is_unavailable(exc):
            raise unavailable(exc) from exc
        raise
