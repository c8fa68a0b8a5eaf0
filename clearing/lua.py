"""The one path from clearing to Redis: run a Lua script, decode its reply, map failures.

Scripts live in ``clearing/scripts/*.lua`` (package data, read with importlib.resources on
first use, never at import). Each is sent with ``lib.lua`` in front of it, since Redis
scripts cannot import one another, and registered with ``redis.register_script``, whose
call is an EVALSHA that reloads the script on NOSCRIPT (the script cache is lost on restart
and failover). Every script takes the same ARGV header (documented in ``lib.lua``) and
returns ``cmsgpack.pack(table)``.

Outages become :class:`ClearingUnavailable` (see ``clearing/guard.py``).
"""

from __future__ import annotations

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
from clearing.keys import KeySchema
from clearing.rules import DAY_MS, GiftRules

ScriptName = Literal[
    "reserve", "resolve", "expire_due", "pending_for",
    "create_user", "set_flags", "mint", "follow", "block",
    "connect", "disconnect", "leave", "reap_nodes", "live_nodes", "replay",
]  # fmt: skip

#: A quota counter only matters during its day and while that day's gifts can still be
#: declined or expire; two days covers a day plus any confirm window, then Redis drops it.
QUOTA_TTL_MS = 2 * DAY_MS

#: Above this, Lua's doubles stop counting every minor unit.
MAX_SAFE_INT = 2**53 - 1


@functools.cache
def script_source(name: ScriptName) -> str:
    folder = importlib.resources.files("clearing") / "scripts"
    lib = (folder / "lib.lua").read_text(encoding="utf-8")
    return lib + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")


class ScriptRunner:
    """The registered scripts of one Redis client, plus the constant part of their ARGV."""

    __slots__ = ("_prefix", "_redis", "_scripts", "_tail")

    def __init__(self, redis: aioredis.Redis, rules: GiftRules, keys: KeySchema) -> None:
        self._prefix = keys.prefix
        self._tail = (rules.node_ttl_ms, rules.stream_maxlen, rules.gift_retention_ms, QUOTA_TTL_MS)
        self._scripts: dict[str, AsyncScript] = {}
        self._redis = redis

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
    ) -> dict[str, Any]:
        """Run one script; a reply with ``err`` is raised as :class:`Refused`.

        ``emits``: the script may append to a user's event stream, which needs an epoch
        candidate in case the stream has none (a fresh one per call: a reused candidate
        could make a lost and recreated history look continuous to a client).
        """
        epoch = secrets.token_hex(6) if emits else ""
        argv = (self._prefix, now_ms, epoch, *self._tail, *args)
        raw = await guarded(self._script(name)(keys=(key,), args=argv))
        reply = msgpack.unpackb(raw, raw=False)
        if not isinstance(reply, dict):
            # cmsgpack packs an empty Lua table as an empty array
            return {}
        err = reply.get("err")
        if err is not None:
            gift = reply.get("gift")
            raise Refused(Refusal(err), gift=gift_from_map(gift) if gift else None)
        return reply
