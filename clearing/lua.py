"""The one path from clearing to Redis: run a Lua script, decode its reply, map failures.

Scripts live in ``clearing/scripts/*.lua`` (package data, read with importlib.resources on
first use, never at import). Each is sent with ``lib.lua`` in front of it, since Redis
scripts cannot import one another, and called by EVALSHA; a NOSCRIPT reply (the script
cache is lost on restart and failover) loads it and runs the call again. The calls of one
event-loop turn go to Redis as one pipeline (``clearing/pipelining.py``). Every script
takes the same ARGV header (documented in ``lib.lua``) and returns ``cmsgpack.pack(table)``.

Outages become :class:`ClearingUnavailable` (see ``clearing/guard.py``).

Durability (:class:`Durability`): Redis replicates asynchronously, so a write the primary
acknowledged can vanish in a failover (Jepsen lost acknowledged writes this way). With
``wait_replicas`` > 0 the scripts that change a gift run as one pipeline on one connection,
``EVALSHA...; PUBLISH <fence>; WAIT n timeout``, and are acknowledged only when ``n``
replicas hold them. WAIT counts from the connection's last propagated write; the PUBLISH (always
propagated) moves that mark to "now", so an idempotent retry that writes nothing still
waits for the original write, whoever made it. Too few replicas in time raises
:class:`ClearingUnavailable`: the write happened on the primary and may or may not
survive; the caller is told the outcome is unknown and a retry with the same gift id
settles it. WAIT bounds the loss window, it is not consensus: see docs/guarantees.md.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import secrets
from collections.abc import Sequence
from typing import Any, Literal

import msgpack
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from clearing.codec import gift_from_map
from clearing.errors import Refusal, Refused
from clearing.guard import guarded
from clearing.pipelining import NotReplicated, ScriptBatcher, WaitFor

__all__ = ["MAX_SAFE_INT", "QUOTA_TTL_MS", "Durability", "NotReplicated", "ScriptName", "ScriptRunner", "script_source"]
from clearing.keys import KeySchema
from clearing.rules import DAY_MS, GiftRules

ScriptName = Literal[
    "reserve", "resolve", "expire_due", "pending_for",
    "create_user", "set_flags", "mint", "follow", "block",
    "connect", "disconnect", "leave", "reap_nodes", "live_nodes", "replay",
    "redeem_frame", "bind_mentor", "room_join", "room_leave", "open_wish", "quote", "room_state",
    "room_states", "rate",
]  # fmt: skip

#: A quota counter only matters during its day and while that day's gifts can still be
#: declined or expire; two days covers a day plus any confirm window, then Redis drops it.
QUOTA_TTL_MS = 2 * DAY_MS

#: Above this, Lua's doubles stop counting every minor unit.
MAX_SAFE_INT = 2**53 - 1


@dataclasses.dataclass(frozen=True, slots=True)
class Durability:
    """When a gift write counts as done: on the primary only (0), or on ``wait_replicas``
    replicas too, waiting at most ``wait_timeout_ms`` for them."""

    wait_replicas: int = 0
    wait_timeout_ms: int = 1000

    def __post_init__(self) -> None:
        if self.wait_replicas < 0:
            raise ValueError("wait_replicas must not be negative")
        if self.wait_timeout_ms < 1:
            # WAIT n 0 would block forever: a stalled replica must not hang a request.
            raise ValueError("wait_timeout_ms must be at least 1")


@functools.cache
def script_source(name: ScriptName) -> str:
    folder = importlib.resources.files("clearing") / "scripts"
    lib = (folder / "lib.lua").read_text(encoding="utf-8")
    return lib + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")


class ScriptRunner:
    """The registered scripts of one Redis client, plus the constant part of their ARGV."""

    __slots__ = ("_plain", "_prefix", "_redis", "_scripts", "_tail", "_waited")

    def __init__(self, redis: aioredis.Redis, rules: GiftRules, keys: KeySchema,
                 durability: Durability | None = None) -> None:
        self._prefix = keys.prefix
        d = durability or Durability()
        self._tail = (rules.node_ttl_ms, rules.stream_maxlen, rules.gift_retention_ms, QUOTA_TTL_MS)
        self._scripts: dict[str, AsyncScript] = {}
        self._redis = redis
        # Calls of one loop turn share a pipeline (clearing/pipelining.py); durable ones share
        # one WAIT as well.
        self._plain = ScriptBatcher(redis)
        self._waited = self._plain if d.wait_replicas == 0 else ScriptBatcher(
            redis, WaitFor(d.wait_replicas, d.wait_timeout_ms, fence=f"{keys.prefix}:wait-fence"))

    def _script(self, name: ScriptName) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis.register_script(script_source(name))
        return script

    async def run(
        self,
        name: ScriptName,
        key: str,
        now_ms: int,
        args: Sequence[str | int] = (),
        *,
        emits: bool = False,
        durable: bool = False,
    ) -> dict[str, Any]:
        """Run one script; a reply with ``err`` is raised as :class:`Refused`.

        ``emits``: the script may append to a user's event stream, which needs an epoch
        candidate in case the stream has none (a fresh one per call: a reused candidate
        could make a lost and recreated history look continuous to a client).
        ``durable``: the reply is acknowledged to a user; wait for replicas as configured,
        refusals included (reserve remembers a refusal for its gift id).
        """
        epoch = secrets.token_hex(6) if emits else ""
        argv = (self._prefix, now_ms, epoch, *self._tail, *args)
        batcher = self._waited if durable else self._plain
        raw = await guarded(batcher.call(self._script(name), key, argv))
        reply = msgpack.unpackb(raw, raw=False)
        if not isinstance(reply, dict):
            # cmsgpack packs an empty Lua table as an empty array
            return {}
        err = reply.get("err")
        if err is not None:
            gift = reply.get("gift")
            raise Refused(Refusal(err), gift=gift_from_map(gift) if gift else None)
        return reply
