"""The one path from clearing to Redis: run a Lua script, decode its reply, map failures.

Scripts live in ``clearing/scripts/*.lua`` (package data, read on first use, never at
import), and reach Redis as ONE Redis Functions library (:func:`library`): the tables
generated from Python (``MOVES``, the gift state table of clearing/model.py, and ``RANK``,
the order of refusals of clearing/errors.py), ``lib.lua``, the step libraries (``gift.lua``,
then ``gift_send.lua`` and ``gift_answer.lua``, each in its own ``do ... end`` block;
``mentor.lua``), and every script registered as one function whose callback is the
script's body, with the flags its ``#!lua flags=`` line declares (plus
``allow-cross-slot-keys``, see below). All of that is defined once, when the library is
loaded, instead of on every call as the body of an EVALSHA script would: a call runs lib.lua's
``begin()`` (which sets the call's state from its arguments) and its script's body.

Versions: the library is named ``nc_<hash8>`` after its content, its functions
``nc_<hash8>_<script>``, so two versions of a node during a rolling upgrade (or a test that
changes the generated tables) each call their own and never clash. A function is called by
FCALL with one key (the routing key of its slot) and one argument, a msgpack map of named
arguments; "Function not found" (FUNCTION FLUSH, a restart without persistence, a failover to
a replica without the library, a new shard) loads the library on that node and runs the call
again, once. Every primary gets the library on its first call that way, on one Redis,
Sentinel and Cluster alike; older versions stay until an operator deletes them
(FUNCTION DELETE) and are never called by the new code. The calls of one event-loop turn go
to each Redis node as one pipeline (clearing/pipelining.py). Every script returns
``cmsgpack.pack(table)``.

Outages become :class:`ClearingUnavailable` (clearing/guard.py). On a cluster a call whose
slot moved (MOVED: it did not run) is sent again where the slot is now; ASK (the slot is
migrating) is answered on the target with ASKING first.

Durability (:class:`Durability`): Redis replicates asynchronously, so a write the primary
acknowledged can vanish in a failover (Jepsen lost acknowledged writes this way). With
``wait_replicas`` > 0 the scripts that change a gift run as one pipeline per node,
``FCALL...; SPUBLISH <fence>; WAIT n timeout``, and are acknowledged only when ``n``
replicas of that node hold them. WAIT counts from the connection's last propagated write; the
SPUBLISH (always propagated) moves that mark to "now", so an idempotent retry that writes
nothing still waits for the original write, whoever made it. Too few replicas in time raises
:class:`ClearingUnavailable`: the write happened on the primary and may or may not survive;
the caller is told the outcome is unknown and a retry with the same gift id settles it. WAIT
bounds the loss window, it is not consensus: see docs/guarantees.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import os
import re
import threading
from collections.abc import Mapping
from typing import Any, Literal, get_args

import msgpack
from redis import exceptions as rx

from clearing.codec import gift_from_map
from clearing.errors import REFUSAL_ORDER, ClearingUnavailable, Refusal, Refused, StepRefused
from clearing.guard import guarded
from clearing.keys import KeySchema
from clearing.model import MOVES
from clearing.pipelining import FunctionLibrary, NotReplicated, function_missing, load_library
from clearing.rules import DAY_MS, GiftRules
from clearing.topology import Durability, SlotUncovered, Topology

__all__ = ["MAX_SAFE_INT", "QUOTA_TTL_MS", "Durability", "NotReplicated", "ScriptName", "ScriptRunner", "library"]

ScriptName = Literal[
    "send", "admit", "reserve", "sponsor", "offer", "void", "probe", "release",
    "resolve", "answer", "settle", "settled", "settle_sponsor", "close", "due", "pending", "guardian_settle",
    "guardian_open",
    "create_user", "set_flags", "disconnect", "mint", "follow", "block", "presence", "drop_node", "replay",
    "redeem_frame", "mentor_bind", "mentor_step", "room_join", "room_leave", "open_wish", "quote", "room_state",
    "room_states", "rate", "gauges", "consent", "erase", "pseudonymise", "guardian_ask", "guardian_approve",
    "guardian_link", "lucky", "payment", "campaign_step", "order_note",
]  # fmt: skip

#: Which step libraries each script needs after lib.lua, in order: its function is defined
#: inside their ``do ... end`` blocks, which keeps each block's locals (Lua 5.1: 200 per
#: function) and each callback's upvalues (60) to what one script could see before.
_LIBRARY: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("send", "admit", "reserve", "sponsor", "offer", "void", "probe"), ("gift", "gift_send")),
    **dict.fromkeys(("release", "resolve", "answer", "settle", "settled", "settle_sponsor", "close", "lucky"),
                    ("gift", "gift_answer")),
    "pending": ("gift",),
    "guardian_approve": ("gift",),
    **dict.fromkeys(("mentor_bind", "mentor_step"), ("mentor",)),
}

#: The scripts that change value or decide a gift, and so append to the ledger stream
#: (lib.lua): only they are given its settings, and only they are stopped by a ledger key
#: that is not a stream.
LEDGER_SCRIPTS: frozenset[str] = frozenset({
    "send", "reserve", "sponsor", "release", "resolve", "answer", "settle", "settle_sponsor", "close", "mint",
    "redeem_frame", "mentor_bind", "mentor_step", "erase", "lucky", "payment", "order_note",
})

#: A quota counter only matters during its day and while that day's gifts can still be
#: declined or expire; two days covers a day plus any confirm window, then Redis drops it.
QUOTA_TTL_MS = 2 * DAY_MS

#: Above this, Lua's doubles stop counting every minor unit.
MAX_SAFE_INT = 2**53 - 1

#: Argument names lib.lua gives every script (the key prefix, the clock, the epoch candidate,
#: the home slot of the Redis node that runs the call, the ledger's call id, bound and switch).
_RESERVED = frozenset({"p", "now", "ep", "home", "op", "lmax", "loff"})

#: The common arguments (ScriptRunner) a script never reads, left out of its calls: each named
#: argument costs every call its decoding (lib.lua begin()). For the scripts of every send:
#: admit and reserve emit no event (no ``maxlen``), offer takes no daily slot (no
#: ``quota_ttl``), and none of them, nor the one-script send, keeps a resolved gift (``retention``).
_UNREAD_COMMON: dict[str, frozenset[str]] = {
    "admit": frozenset({"maxlen", "retention"}),
    "reserve": frozenset({"maxlen", "retention"}),
    "offer": frozenset({"quota_ttl", "retention"}),
    "send": frozenset({"retention"}),
}

#: Times a call whose slot moved is sent again after reading the map again.
_MOVED_RETRIES = 3

#: Random bytes read from the OS at once for the calls' ids (see :func:`_random_hex`).
_RANDOM_CHUNK = 4096


class _Random(threading.local):
    """Per thread: unused bytes of the last read of ``os.urandom`` and a msgpack Packer."""

    def __init__(self) -> None:
        self.pool = b""
        # msgpack.packb builds a Packer (and its buffer) for every map; one per thread is
        # reused instead (it resets its buffer after each pack, also when packing fails).
        self.packer = msgpack.Packer()


_local = _Random()


def _forget_random() -> None:
    # A forked child must not hand out the bytes its parent has still to use.
    _local.pool = b""


os.register_at_fork(after_in_child=_forget_random)


def _random_hex(n: int) -> str:
    """``n`` random bytes from the OS as hex, like ``secrets.token_hex(n)``, but one read
    of ``os.urandom`` serves many calls: a read is a system call, and every gift's script
    call takes two ids (docs/benchmarks.md, "The nodes' CPU per gift")."""
    local = _local
    pool = local.pool
    if len(pool) < n:
        pool = os.urandom(_RANDOM_CHUNK)
    local.pool = pool[n:]
    return pool[:n].hex()


def _pack(packed: Mapping[str, Any]) -> bytes:
    return _local.packer.pack(packed)


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@functools.cache
def generated_tables() -> str:
    """``MOVES`` and ``RANK`` as Lua, from their one source in Python. Each is one constant
    string (``;state:event=target;...`` and `` CODE CODE ... ``) that lib.lua searches:
    a constant costs nothing per call, where a table would be built again by every call."""
    for (state, event), target in MOVES.items():
        for word in (state.value, event.value, target.value):
            if not re.fullmatch(r"[a-z_]+", word):
                raise ValueError(f"a state or event name lib.lua cannot search for: {word!r}")
    moves = "".join(f"{state.value}:{event.value}={target.value};" for (state, event), target in MOVES.items())
    ranks = " ".join(code.value for code in REFUSAL_ORDER)
    return (f"-- generated by clearing/lua.py from clearing/model.py and clearing/errors.py\n"
            f"local MOVES = {_lua_string(';' + moves)}\nlocal RANK = {_lua_string(' ' + ranks + ' ')}\n")


#: Every script may touch keys of other slots of its Redis node: the fast path's parties,
#: and for all of them the home slot whose channel they publish on (lib.lua ``A.home``).
_CROSS_SLOT = "allow-cross-slot-keys"


#: Stands for the library's name until its content, and so its name, is known.
_NAME = "@@library@@"


def _folder_text(name: str) -> str:
    return (importlib.resources.files("clearing") / "scripts" / f"{name}.lua").read_text(encoding="utf-8")


def _function(name: str) -> str:
    """One script as a function of the library: its flags from its ``#!lua`` line, its
    body as the callback, which gets KEYS and ARGV as arguments (an EVALSHA script's globals)."""
    body = _folder_text(name)
    flags = [_CROSS_SLOT]
    if body.startswith("#!lua"):
        line, _, body = body.partition("\n")
        declared = line.partition("flags=")[2]
        flags = [f for f in declared.split(",") if f] if declared else []
        if _CROSS_SLOT not in flags:
            flags.append(_CROSS_SLOT)
    return (f"redis.register_function{{function_name = '{_NAME}_{name}', "
            f"flags = {{{', '.join(_lua_string(f) for f in flags)}}}, callback = function(KEYS, ARGV)\n"
            f"local early = begin(ARGV)\nif early then\n  return early\nend\n"
            f"-- {name}.lua\n{body}\nend}}\n")


def _functions(under: tuple[str, ...]) -> list[str]:
    """The functions of the scripts whose step libraries are ``under`` exactly, then one
    ``do ... end`` block per next step library, holding the scripts that need it."""
    names: tuple[str, ...] = get_args(ScriptName)
    parts = [_function(n) for n in names if _LIBRARY.get(n, ()) == under]
    deeper = dict.fromkeys(steps[len(under)] for n in names
                           if len(steps := _LIBRARY.get(n, ())) > len(under) and steps[:len(under)] == under)
    for step in deeper:
        parts += [f"do -- {step}.lua\n", _folder_text(step), *_functions((*under, step)), "end\n"]
    return parts


@functools.cache
def library() -> FunctionLibrary:
    """Clearing's scripts as one Redis Functions library, named after its content."""
    code = "\n".join([generated_tables(), _folder_text("lib"), *_functions(())])
    name = "nc_" + hashlib.sha1(code.encode()).hexdigest()[:8]
    return FunctionLibrary(name, f"#!lua name={name}\n" + code.replace(_NAME, name))


class ScriptRunner:
    """Runs clearing's scripts on whichever node serves each slot."""

    __slots__ = ("_common", "_common_of", "_ledger", "_topology")

    def __init__(self, topology: Topology, rules: GiftRules, keys: KeySchema) -> None:
        self._topology = topology
        #: What every script may read from its argument map. The three numbers go to Redis
        #: commands only (XADD MAXLEN, PEXPIRE, SET PX), never into Lua arithmetic, so they
        #: are sent as their text: redis.call() would format a Lua number with "%.17g" on
        #: every use, a floating-point conversion of a few thousand instructions.
        self._common = {"p": keys.prefix, "maxlen": str(rules.stream_maxlen), "quota_ttl": str(QUOTA_TTL_MS),
                        "retention": str(rules.gift_retention_ms)}
        self._common_of = {name: {k: v for k, v in self._common.items() if k not in unread}
                           for name, unread in _UNREAD_COMMON.items()}
        #: What the scripts of LEDGER_SCRIPTS are also given ("op" comes per call).
        self._ledger: dict[str, int] = {"lmax": rules.ledger_maxlen}
        if not rules.ledger:
            self._ledger["loff"] = 1

    @property
    def topology(self) -> Topology:
        return self._topology

    async def run(
        self,
        name: ScriptName,
        slot: int,
        key: str,
        now_ms: int,
        args: Mapping[str, Any] | None = None,
        *,
        emits: bool = False,
        durable: bool = False,
    ) -> dict[str, Any]:
        """Run one script on ``slot``'s node; a reply with ``err`` is raised as :class:`Refused`
        (or :class:`StepRefused` for a code only clearing sees).

        ``emits``: the script may append to a user's event stream, which needs an epoch
        candidate in case the stream has none (a fresh one per call: a reused candidate
        could make a lost and recreated history look continuous to a client).
        ``durable``: the reply is acknowledged to a user; wait for replicas as configured.
        """
        if args is not None and not _RESERVED.isdisjoint(args):
            raise ValueError(f"script arguments may not be named {sorted(_RESERVED & args.keys())}")
        packed: dict[str, Any] = {**self._common_of.get(name, self._common), **(args or {}), "now": now_ms}
        if name in LEDGER_SCRIPTS:
            # "op": unique per call; the ledger entries the call writes are "<op>.<n>"
            packed.update(self._ledger)
            packed["op"] = _random_hex(8)
        if emits:
            packed["ep"] = _random_hex(6)
        raw = await self._call(name, slot, key, packed, durable)
        return decode_reply(raw)

    async def _call(self, name: ScriptName, slot: int, key: str, packed: dict[str, Any], durable: bool) -> Any:
        topology = self._topology
        for _ in range(_MOVED_RETRIES):
            try:
                node = topology.node_for(slot)
            except SlotUncovered as exc:
                await self._refresh()
                raise ClearingUnavailable(str(exc)) from None
            lib = library()
            home = packed["home"] = node.home
            argv = [_pack(packed)]
            try:
                return await guarded((node.waited if durable else node.plain).call(lib, lib.function(name), key, argv))
            except rx.MovedError as exc:
                if not topology.moved(slot, f"{exc.host}:{exc.port}"):
                    await self._refresh(force=True)
            except rx.AskError as exc:
                return await self._ask(exc, name, key, packed)
            except ClearingUnavailable:
                await self._refresh()
                raise
            except rx.ResponseError as exc:
                if not _non_local(exc):
                    raise
                # A key of another slot left this node (nothing was written): the home
                # slot (then try again with the new map), or a fast-path party (the
                # caller takes the saga).
                await self._refresh(force=True)
                if topology.node_for(slot).home == home:
                    raise
        raise ClearingUnavailable(f"slot {slot} kept moving") from None

    async def _ask(self, exc: rx.AskError, name: ScriptName, key: str, packed: dict[str, Any]) -> Any:
        """The slot is migrating and the key is on the target already: ASKING, then the call,
        on one connection of the target."""
        host, port = exc.node_addr
        target = next((n for n in self._topology.nodes() if n.name == f"{host}:{port}"), None)
        if target is None:
            await self._refresh()
            raise ClearingUnavailable("slot migrating to an unknown node") from None
        lib = library()
        argv = [_pack({**packed, "home": target.home})]
        for attempt in range(2):
            async with target.client.pipeline(transaction=False) as pipe:
                pipe.execute_command("ASKING")
                pipe.fcall(lib.function(name), 1, key, *argv)
                asking, reply = await guarded(pipe.execute(raise_on_error=False))
            if attempt == 0 and function_missing(reply):
                await guarded(load_library(target.client, lib))
                continue
            for outcome in (asking, reply):
                if isinstance(outcome, Exception):
                    raise outcome
            return reply
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _refresh(self, force: bool = False) -> None:
        # A failed read of the map is tried again by the next call; this one already failed
        # with its own error.
        with contextlib.suppress(rx.RedisError):
            await self._topology.refresh(force)


def _non_local(exc: rx.ResponseError) -> bool:
    return "non local key" in str(exc)


def decode_reply(raw: Any) -> dict[str, Any]:
    reply = msgpack.unpackb(raw, raw=False)
    if not isinstance(reply, dict):
        # cmsgpack packs an empty Lua table as an empty array
        return {}
    err = reply.get("err")
    if err is None:
        return reply
    gift = reply.get("gift")
    try:
        code = Refusal(err)
    except ValueError:
        raise StepRefused(str(err)) from None
    until = reply.get("until_ms")
    raise Refused(code, gift=gift_from_map(gift) if gift else None,
                  until_ms=until if isinstance(until, int) and not isinstance(until, bool) else None)
