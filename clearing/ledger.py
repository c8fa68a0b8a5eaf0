"""The ledger outbox: the records every change of value appends, in the same script, to the
ledger stream of the Redis server that made it (clearing/scripts/lib.lua, docs/ledger.md).
Each script call that writes records adds one stream entry ``{op, ms, b}``: the call's id,
its clock and its records (a msgpack list).

- :class:`LedgerEntry` (``t = e``): a double-entry move of ``units`` of ``kind`` from the
  ``debit`` account to the ``credit`` account; :class:`GiftEvent` (``t = g``): a gift was
  sent, accepted, declined or expired (the platform's feed); :class:`OrderNote` (``t = o``):
  a shop order paid or refunded (no value moves; the book of record's purchases).
- :class:`StreamConsumer`: reads every ledger stream of every shard as one member of a
  consumer group (``XREADGROUP``), takes over what a crashed member left unacknowledged
  (``XAUTOCLAIM``), and acknowledges what its caller has handled (``XACK``): at least once,
  so a consumer deduplicates by :attr:`LedgerEntry.id` (or by stream and stream id).
- :func:`reconcile`: replays every retained entry into per-account balances and compares
  them with what Redis holds.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Literal, cast

import msgpack
from redis import exceptions as rx

from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.topology import AnyRedis

#: What each entry kind moves (docs/ledger.md has the accounts of each).
ENTRY_KINDS = frozenset({"mint", "hold", "release", "expire", "consume", "settle", "credit", "points",
                         "mentor_pay", "mentor_credit", "lucky_pay", "lucky_credit",
                         "purchase", "refund"})
GiftEventName = Literal["sent", "accepted", "declined", "expired"]
GIFT_EVENTS: frozenset[str] = frozenset({"sent", "accepted", "declined", "expired"})

#: Default: a message delivered to a member that has not acknowledged it for this long is
#: taken over by another member (the first was presumably gone).
CLAIM_IDLE_MS = 30_000


class BadEntry(ValueError):
    """A stream entry that is not as lib.lua writes it (a hand edit)."""


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerEntry:
    stream: str
    stream_id: str
    #: Unique over every stream: ``<call>.<n>``, the n-th entry of one script call.
    id: str
    entry_kind: str
    debit: str
    credit: str
    #: A card kind, or ``points``.
    kind: str
    units: int
    gift_id: str | None
    #: The sender of the gift (gift ids are unique per sender).
    sender: str | None
    cause: str
    at_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class GiftEvent:
    stream: str
    stream_id: str
    #: Unique over every stream, as :attr:`LedgerEntry.id`.
    id: str
    event: GiftEventName
    gift_id: str
    sender: str
    recipient: str
    kind: str
    qty: int
    cost: int
    amount: int
    payer: str
    at_ms: int
    #: The brand campaign (or ``shop.<shop>`` for a shop order) that issued the gift; None
    #: for a gift between users.
    campaign: str | None = None
    #: The recipient's region (account field ``region``) on a campaign gift's answer
    #: (accepted, declined, expired), when it has one; for the book's ``profile`` rows only.
    region: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The feed's line (docs/ledger.md "Event feed"): ``campaign`` only when there is one;
        never the region (a profile attribute, not the gift's)."""
        line = dataclasses.asdict(self)
        del line["region"]
        if self.campaign is None:
            del line["campaign"]
        return line


OrderState = Literal["paid", "refunded"]


@dataclasses.dataclass(frozen=True, slots=True)
class OrderNote:
    """A shop order's purchase (``t = o``, order_note.lua): moves no value, read by the book
    of record's ``purchase`` rows only (docs/ledger.md "Order notes")."""

    stream: str
    stream_id: str
    #: Unique over every stream, as :attr:`LedgerEntry.id`.
    id: str
    shop: str
    order_id: str
    buyer: str
    #: The order's amount, in the shop's currency's minor units.
    spend: int
    state: OrderState
    at_ms: int


Record = LedgerEntry | GiftEvent | OrderNote
#: Stream entries as redis-py returns them (the fields are None once trimmed, in a claim).
_Entries = list[tuple[bytes, dict[bytes, bytes] | None]]


def _text(raw: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
            for k, v in raw.items()}


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is no text")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is no integer")
    return value


def _record(stream: str, stream_id: str, op: str, at_ms: int, r: dict[str, Any]) -> Record:
    uid = f"{op}.{_int(r['n'])}"
    if r["t"] == "e":
        if r["ek"] not in ENTRY_KINDS:
            raise ValueError(f"unknown entry kind {r['ek']!r}")
        return LedgerEntry(stream, stream_id, uid, r["ek"], _str(r["dr"]), _str(r["cr"]), _str(r["k"]),
                           _int(r["u"]), _str(r["g"]) or None, _str(r["s"]) or None, _str(r["c"]), at_ms)
    if r["t"] == "g" and r["ev"] in GIFT_EVENTS:
        return GiftEvent(stream, stream_id, uid, cast("GiftEventName", r["ev"]), _str(r["g"]), _str(r["s"]),
                         _str(r["r"]), _str(r["k"]), _int(r["q"]), _int(r["cost"]), _int(r["amt"]),
                         _str(r["payer"]), at_ms, _str(r["camp"]) if "camp" in r else None,
                         _str(r["rg"]) if "rg" in r else None)
    if r["t"] == "o" and r["st"] in ("paid", "refunded"):
        return OrderNote(stream, stream_id, uid, _str(r["shop"]), _str(r["o"]), _str(r["b"]), _int(r["sp"]),
                         cast("OrderState", r["st"]), at_ms)
    raise ValueError(f"unknown record {r!r}")


def parse(stream: str, stream_id: str, raw: dict[Any, Any]) -> list[Record]:
    """The records of one stream entry as lib.lua writes it; :class:`BadEntry` otherwise."""
    try:
        op, at_ms = raw[b"op"].decode(), int(raw[b"ms"])
        records = msgpack.unpackb(raw[b"b"], raw=False)
        if not isinstance(records, list):
            raise ValueError("b is no list")
        return [_record(stream, stream_id, op, at_ms, r) for r in records]
    except (KeyError, ValueError, TypeError, AttributeError, msgpack.UnpackException) as exc:
        raise BadEntry(f"{stream} {stream_id}: {raw!r:.300} ({exc!r})") from None


async def ledger_streams(redis: AnyRedis, keys: KeySchema = DEFAULT_KEYS) -> list[str]:
    """Every ledger stream, on every primary (one per Redis server that ever wrote one; a
    stream moves with its slot on a resharding)."""
    found = set()
    async for raw in redis.scan_iter(match=keys.pattern("ledger"), count=1000, _type="STREAM"):
        key = raw.decode()
        if fnmatch.fnmatchcase(key[len(keys.prefix) + len(keys.tag_in(key)) + 4 :], "ledger"):
            found.add(key)
    return sorted(found)


@dataclasses.dataclass(slots=True)
class Batch:
    """What one :meth:`StreamConsumer.read` delivered; acknowledge it once handled."""

    records: list[Record]
    #: stream -> stream ids to acknowledge (including unreadable and trimmed entries).
    ids: dict[str, list[str]]
    #: Entries delivered but trimmed before they were read (MAXLEN passed them): lost to
    #: this group; a consumer must keep within ``LEDGER_MAXLEN``.
    trimmed: int = 0
    bad: list[str] = dataclasses.field(default_factory=list)


class StreamConsumer:
    """One member ``consumer`` of consumer group ``group`` over every ledger stream.

    A new group starts at the oldest retained entry (``start="0"``) or at the next one
    (``start="$"``). A member that starts again under the same name first gets what it was
    delivered and did not acknowledge; entries another member left unacknowledged for
    ``claim_idle_ms`` are claimed. Streams that appear later (a new shard) are found every
    ``rescan_every`` reads.
    """

    def __init__(self, redis: AnyRedis, group: str, consumer: str, keys: KeySchema = DEFAULT_KEYS, *,
                 start: Literal["0", "$"] = "0", count: int = 256, claim_idle_ms: int = CLAIM_IDLE_MS,
                 rescan_every: int = 100) -> None:
        self._redis = redis
        self._keys = keys
        self.group = group
        self.consumer = consumer
        self._start = start
        self._count = count
        self._claim_idle_ms = claim_idle_ms
        self._rescan_every = rescan_every
        self._reads = 0
        #: stream -> "0" while this member's own pending entries are still to be re-read
        self._cursor: dict[str, str] = {}

    async def streams(self) -> list[str]:
        """Find the ledger streams and join the group on each (created when missing)."""
        for stream in await ledger_streams(self._redis, self._keys):
            if stream in self._cursor:
                continue
            try:
                await self._redis.xgroup_create(stream, self.group, id=self._start)
            except rx.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._cursor[stream] = "0"
        return sorted(self._cursor)

    async def read(self) -> Batch:
        """Up to ``count`` entries per stream: this member's unacknowledged ones first (after
        a restart), then entries idle at a crashed member, then new ones. Never blocks."""
        if self._reads % self._rescan_every == 0:
            await self.streams()
        self._reads += 1
        batch = Batch([], {})
        for stream in list(self._cursor):
            try:
                await self._read_stream(stream, batch)
            except rx.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                del self._cursor[stream]  # the stream went (deleted, or moved): rescan
                self._reads = 0
        return batch

    async def _read_stream(self, stream: str, batch: Batch) -> None:
        entries: _Entries = []
        if self._cursor[stream] == "0":
            own = cast("list[tuple[bytes, _Entries]]",
                       await self._redis.xreadgroup(self.group, self.consumer, {stream: "0"}, count=self._count))
            entries = own[0][1] if own else []
            if not entries:
                self._cursor[stream] = ">"
        if not entries:
            claimed = await self._redis.xautoclaim(stream, self.group, self.consumer, self._claim_idle_ms,
                                                   start_id="0-0", count=self._count)
            entries = list(claimed[1])
            for gone in claimed[2] if len(claimed) > 2 else ():
                batch.trimmed += 1
                batch.ids.setdefault(stream, []).append(gone.decode())
        if not entries:
            new = cast("list[tuple[bytes, _Entries]]",
                       await self._redis.xreadgroup(self.group, self.consumer, {stream: ">"}, count=self._count))
            entries = new[0][1] if new else []
        for raw_id, fields in entries:
            stream_id = raw_id.decode()
            batch.ids.setdefault(stream, []).append(stream_id)
            if not fields:
                batch.trimmed += 1  # delivered, then trimmed before this read
                continue
            try:
                batch.records += parse(stream, stream_id, fields)
            except BadEntry as exc:
                batch.bad.append(str(exc))

    def use(self, redis: AnyRedis) -> None:
        """Go on with another client (a fresh connection after a failover)."""
        self._redis = redis

    def rewind(self) -> None:
        """Read this member's own unacknowledged entries first again, as after a restart:
        after Redis failed under a read or an acknowledgement (a failover), what this member
        was delivered and did not acknowledge may be pending at it on the new primary."""
        for stream in self._cursor:
            self._cursor[stream] = "0"

    async def ack(self, batch: Batch) -> None:
        for stream, ids in batch.ids.items():
            if ids:
                await self._redis.xack(stream, self.group, *ids)

    async def lag(self) -> dict[str, int]:
        """Entries not yet delivered to the group, per stream (Redis 7 ``lag``); -1 when Redis
        cannot tell, as after entries were trimmed before the group read them."""
        out: dict[str, int] = {}
        for stream in self._cursor:
            for info in await self._redis.xinfo_groups(stream):
                row = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in info.items()}
                name = row.get("name")
                if (name.decode() if isinstance(name, bytes) else name) == self.group:
                    lag = row.get("lag")
                    out[stream] = -1 if lag is None else int(lag)
        return out


# ------------------------------------------------------------------ replay and reconcile
Balances = dict[tuple[str, str], int]


async def read_all(redis: AnyRedis, keys: KeySchema = DEFAULT_KEYS) -> tuple[list[Record], list[str]]:
    """Every retained record of every ledger stream (no group), and what could not be read
    or is missing (entries trimmed from a stream)."""
    records: list[Record] = []
    problems: list[str] = []
    for stream in await ledger_streams(redis, keys):
        info = _text(await redis.xinfo_stream(stream))
        added, length = int(info.get("entries-added", 0)), int(info.get("length", 0))
        if added != length:
            problems.append(f"{stream}: {added - length} of its {added} entries were trimmed or deleted")
        last = "-"
        while True:
            chunk = cast("_Entries", await redis.xrange(stream, min=last, max="+", count=1000))
            if last != "-":
                chunk = chunk[1:]
            if not chunk:
                break
            for raw_id, fields in chunk:
                try:
                    records += parse(stream, raw_id.decode(), fields or {})
                except BadEntry as exc:
                    problems.append(str(exc))
            last = chunk[-1][0].decode()
    return records, problems


def replay(records: Iterable[Record]) -> Balances:
    """(account, kind) -> credits - debits over ``records``' ledger entries."""
    out: defaultdict[tuple[str, str], int] = defaultdict(int)
    for r in records:
        if isinstance(r, LedgerEntry):
            out[r.debit, r.kind] -= r.units
            out[r.credit, r.kind] += r.units
    return dict(out)


async def redis_balances(redis: AnyRedis, keys: KeySchema = DEFAULT_KEYS) -> Balances:
    """The same accounts as Redis holds them: users' ``bal``, ``held`` and points totals, and
    each slot's ``minted`` (as ``issued``, negated), ``consumed`` and ``transit`` totals."""
    out: Balances = {}
    for name, account in (("bal", "avail"), ("held", "held"), ("tot", None), ("points", "points")):
        async for raw in redis.scan_iter(match=keys.pattern(name), count=1000):
            key = raw.decode()
            tag = keys.tag_in(key)
            if key != f"{keys.prefix}:{{{tag}}}:{name}":
                continue
            fields = _text(await redis.hgetall(key))
            for field, value in fields.items():
                try:
                    number = int(value)
                except ValueError:
                    number = 0  # the invariant check reports it
                if account == "points":
                    if field == "total":
                        out[f"points:{tag}", "points"] = number
                elif account is not None:
                    out[f"{account}:{tag}", field] = number
                else:
                    total, _, kind = field.partition(":")
                    if total == "minted":
                        out[f"issued:{tag}", kind] = -number
                    elif total in ("consumed", "transit"):
                        out[f"{total}:{tag}", kind] = number
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Reconciliation:
    entries: int
    accounts: int
    #: "<account> <kind>: ledger <n>, redis <m>", and entries that could not be read.
    drift: list[str]

    @property
    def ok(self) -> bool:
        return not self.drift


def compare(ledger: Balances, redis: Balances) -> list[str]:
    """Accounts whose replayed balance differs from Redis (``awards`` accounts have no
    counterpart in Redis: each is minus the points it gave)."""
    out = []
    for account, kind in sorted(ledger.keys() | redis.keys()):
        if account.startswith("awards:"):
            continue
        mine, theirs = ledger.get((account, kind), 0), redis.get((account, kind), 0)
        if mine != theirs:
            out.append(f"{account} {kind}: ledger {mine}, redis {theirs}")
    return out


async def reconcile(redis: AnyRedis, keys: KeySchema = DEFAULT_KEYS) -> Reconciliation:
    """Replay every retained entry and compare with Redis, per account and kind. Exact only
    while nothing writes, and only while no stream was trimmed (reported as drift)."""
    records, problems = await read_all(redis, keys)
    ledger = replay(records)
    drift = problems + compare(ledger, await redis_balances(redis, keys))
    return Reconciliation(entries=sum(isinstance(r, LedgerEntry) for r in records), accounts=len(ledger),
                          drift=drift)


def gift_events(records: Sequence[Record]) -> list[GiftEvent]:
    return [r for r in records if isinstance(r, GiftEvent)]
