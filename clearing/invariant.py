"""The ledger's invariants, checked against what Redis holds (Jepsen's bank test, offline).

Per card kind: ``minted == sum(available) + holds_total + consumed``. Per user: no negative
balance or hold, and ``held[u] == sum(cost of u's pending gifts)``; ``holds_total ==
sum(held)``. Every gift has a known state and all its fields; the pending queue and every
inbox hold exactly the pending gifts, scored by their expiry; each day's send, receive and
pair counters equal the number of that day's pending and accepted gifts (a counter may be
gone only once its TTL ran out, so a missing counter is flagged only while the day still
has pending gifts).

Scenes: holds are kept by whoever paid (``payer``: the promotion account for a newcomer's
free gift); each newcomer's free-gift counter is at least the number of their retained
pending and accepted promotion-paid gifts; the points ledger has no negative total and
every total equals its folded sum plus its entries still in the log (the log is bounded by
``points_log_maxlen``: resolve.lua folds the entries it trims into per-user sums in the
same run, so the check reads at most that many entries, in pages); leaderboard scores are
not negative.

The check reads with SCAN and several round trips, not one snapshot: run it while nothing
writes (tests, maintenance windows), or expect passing mismatches. It assumes resolved gifts
are kept (``gift_retention_ms``) at least as long as quota counters (2 days).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import cast

import redis.asyncio as aioredis

from clearing.codec import gift_from_map, text_hash
from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.model import GiftRecord, GiftState
from clearing.rules import GiftRules

_COUNTED = (GiftState.PENDING, GiftState.ACCEPTED)


@dataclasses.dataclass(frozen=True, slots=True)
class InvariantReport:
    violations: list[str]
    #: kind -> {"minted", "available", "held", "consumed"} totals, for a human to read.
    per_kind: dict[str, dict[str, int]]

    @property
    def ok(self) -> bool:
        return not self.violations


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def _scan(redis: aioredis.Redis, pattern: str) -> AsyncIterator[str]:
    async for key in redis.scan_iter(match=pattern, count=1000):
        yield key.decode()


async def _zset(redis: aioredis.Redis, key: str) -> dict[str, int]:
    members = cast("list[tuple[bytes, float]]", await redis.zrange(key, 0, -1, withscores=True))
    return {member.decode(): int(score) for member, score in members}


async def _hashes(redis: aioredis.Redis, pattern: str, prefix: str) -> dict[str, dict[str, str]]:
    """Every hash whose key matches, by the key's suffix after ``prefix`` (a user id...)."""
    keys = [key async for key in _scan(redis, pattern)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        values = await pipe.execute()
    return {key[len(prefix) :]: text_hash(value) for key, value in zip(keys, values, strict=True)}


def _ints(owner: str, fields: dict[str, str], violations: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for field, value in fields.items():
        try:
            out[field] = int(value)
        except ValueError:
            violations.append(f"{owner}[{field}] is not an integer: {value!r}")
    return out


async def check_invariant(redis: aioredis.Redis, rules: GiftRules, keys: KeySchema = DEFAULT_KEYS) -> InvariantReport:
    violations: list[str] = []
    pattern = KeySchema(_glob_escape(keys.prefix))

    balances = await _hashes(redis, pattern.balance("*"), keys.balance(""))
    helds = await _hashes(redis, pattern.held("*"), keys.held(""))
    totals = {
        name: _ints(name, text_hash(await redis.hgetall(key)), violations)
        for name, key in (
            ("minted", keys.minted()),
            ("holds", keys.holds_total()),
            ("consumed", keys.consumed()),
        )
    }
    available = {user: _ints(f"bal:{user}", fields, violations) for user, fields in balances.items()}
    held = {user: _ints(f"held:{user}", fields, violations) for user, fields in helds.items()}
    for name, per_user in (("available", available), ("held", held)):
        for user, amounts in per_user.items():
            violations += [f"{name} of {user} in {k} is negative: {v}" for k, v in amounts.items() if v < 0]

    gifts, days = await _gifts(redis, keys, pattern, violations)
    pending = [g for g in gifts.values() if g.state is GiftState.PENDING]

    # money: per kind, and each user's hold against their pending gifts
    kinds = set(rules.card_kinds).union(*totals.values(), *available.values(), *held.values())
    per_kind: dict[str, dict[str, int]] = {}
    for kind in sorted(kinds):
        row = {
            "minted": totals["minted"].get(kind, 0),
            "available": sum(a.get(kind, 0) for a in available.values()),
            "held": sum(h.get(kind, 0) for h in held.values()),
            "consumed": totals["consumed"].get(kind, 0),
        }
        per_kind[kind] = row
        holds_total = totals["holds"].get(kind, 0)
        if holds_total != row["held"]:
            violations.append(f"holds_total[{kind}] = {holds_total} != sum of held {row['held']}")
        if row["minted"] != row["available"] + row["held"] + row["consumed"]:
            violations.append(f"{kind}: minted {row['minted']} != available + held + consumed {row}")
    expected_held: defaultdict[tuple[str, str], int] = defaultdict(int)
    for g in pending:
        expected_held[g.charged_to, g.kind] += g.cost
    for user, amounts in held.items():
        for kind, amount in amounts.items():
            expected = expected_held.pop((user, kind), 0)
            if amount != expected:
                violations.append(f"held of {user} in {kind} = {amount}, its pending gifts cost {expected}")
    violations += [f"{u} has pending gifts of {n} {k} but no hold" for (u, k), n in expected_held.items() if n]

    # queues: pending zset and inboxes == the pending gifts, scored by expiry
    expected_queue = {g.gift_id: g.expires_at_ms for g in pending}
    queue = await _zset(redis, keys.pending())
    if queue != expected_queue:
        violations.append(f"pending queue {queue} != pending gifts {expected_queue}")
    inboxes: dict[str, dict[str, int]] = defaultdict(dict)
    for g in pending:
        inboxes[g.recipient][g.gift_id] = g.expires_at_ms
    async for key in _scan(redis, pattern.inbox("*")):
        user = key[len(keys.inbox("")) :]
        members = await _zset(redis, key)
        if members != inboxes.pop(user, {}):
            violations.append(f"inbox of {user} {members} does not match its pending gifts")
    violations += [f"inbox of {user} is missing {ids}" for user, ids in inboxes.items()]

    violations += await _check_quotas(redis, keys, pattern, gifts, days)
    violations += await _check_scenes(redis, keys, pattern, gifts)
    violations += await _check_points(redis, keys)
    return InvariantReport(violations=violations, per_kind=per_kind)


async def _gifts(
    redis: aioredis.Redis, keys: KeySchema, pattern: KeySchema, violations: list[str]
) -> tuple[dict[str, GiftRecord], dict[str, str]]:
    """Every gift that parses (the others are violations), and each gift's quota day."""
    gifts: dict[str, GiftRecord] = {}
    days: dict[str, str] = {}
    raw = await _hashes(redis, pattern.gift("*"), keys.gift(""))
    for gift_id, fields in raw.items():
        try:
            gift = gift_from_map({"gift_id": gift_id, **fields})
        except (KeyError, ValueError) as exc:
            violations.append(f"gift {gift_id} is malformed ({exc!r}): {fields}")
            continue
        if "day" not in fields:
            violations.append(f"gift {gift_id} has no quota day")
        if (gift.state is GiftState.PENDING) != (gift.resolved_at_ms is None):
            violations.append(f"gift {gift_id} is {gift.state} with resolved_at_ms {gift.resolved_at_ms}")
        if not 0 < gift.amount <= gift.cost:
            violations.append(f"gift {gift_id} credits {gift.amount} of its cost {gift.cost}")
        gifts[gift_id] = gift
        days[gift_id] = fields.get("day", "")
    return gifts, days


async def _check_quotas(
    redis: aioredis.Redis,
    keys: KeySchema,
    pattern: KeySchema,
    gifts: dict[str, GiftRecord],
    days: dict[str, str],
) -> list[str]:
    expected: Counter[str] = Counter()
    needed: set[str] = set()  # counters a pending gift will still release
    for gift in gifts.values():
        if gift.state not in _COUNTED:
            continue
        day = days[gift.gift_id]
        counters = (
            keys.send_quota(day, gift.sender),
            keys.receive_quota(day, gift.recipient),
            keys.pair_receive_quota(day, gift.recipient, gift.sender),
        )
        expected.update(counters)
        if gift.state is GiftState.PENDING:
            needed.update(counters)
    actual: dict[str, int] = {}
    globs = (
        pattern.send_quota("*", "*"),
        pattern.receive_quota("*", "*"),
        pattern.pair_receive_quota("*", "*", "*"),
    )
    for glob in globs:
        async for key in _scan(redis, glob):
            value = await redis.get(key)
            try:
                actual[key] = int(value) if value is not None else 0
            except ValueError:
                actual[key] = -1  # reported below as not matching any count
    out = [f"quota {key} = {n}, counted gifts: {expected[key]}" for key, n in actual.items() if n != expected[key]]
    out += [f"quota {key} is missing for a pending gift" for key in sorted(needed - actual.keys())]
    return out


#: Entries read per round trip when summing the points log.
_LOG_PAGE = 1000


async def _check_points(redis: aioredis.Redis, keys: KeySchema) -> list[str]:
    out: list[str] = []
    totals = _ints("points", text_hash(await redis.hgetall(keys.points())), out)
    folded = _ints("pointlog:folded", text_hash(await redis.hgetall(keys.point_log_folded())), out)
    logged: Counter[str] = Counter(folded)
    out += [f"folded points of {user} are negative: {n}" for user, n in folded.items() if n < 0]
    start = "-"
    while True:
        page = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                    await redis.xrange(keys.point_log(), min=start, count=_LOG_PAGE))
        for _, fields in page:
            entry = text_hash(fields)  # type: ignore[arg-type]
            points = _ints("points log entry", {"p": entry.get("p", "")}, out).get("p", 0)
            if points <= 0:
                out.append(f"points log entry {entry} is not positive")
            logged[entry.get("u", "")] += points
        if len(page) < _LOG_PAGE:
            break
        start = "(" + page[-1][0].decode()
    for user in set(totals) | set(logged):
        if totals.get(user, 0) < 0 or totals.get(user, 0) != logged[user]:
            out.append(f"points of {user} = {totals.get(user, 0)}, its folded sum and log add up to {logged[user]}")
    return out


async def _check_scenes(
    redis: aioredis.Redis, keys: KeySchema, pattern: KeySchema, gifts: dict[str, GiftRecord]
) -> list[str]:
    out: list[str] = []
    free: Counter[str] = Counter(
        g.sender for g in gifts.values() if g.payer is not None and g.state in _COUNTED
    )
    async for key in _scan(redis, pattern.free_gifts("*")):
        user = key[len(keys.free_gifts("")) :]
        try:
            count = int(await redis.get(key) or 0)
        except ValueError:
            count = -1  # reported as below its gifts
        if count < free.pop(user, 0) or count < 0:
            out.append(f"free-gift counter of {user} = {count} is below its promotion-paid gifts")
    out += [f"{user} has {n} promotion-paid gifts but no free-gift counter" for user, n in free.items()]

    async for key in _scan(redis, pattern.board("*")):
        scores = await _zset(redis, key)
        out += [f"{key}: {user} has negative points {n}" for user, n in scores.items() if n < 0]
    return out
