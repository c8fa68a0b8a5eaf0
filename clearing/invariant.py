"""The ledger's invariants, checked against what Redis holds (Jepsen's bank test, offline).

Per card kind, summed over every slot's totals: ``minted == sum(available) + sum(held) +
consumed + transit``, where ``transit`` is what an accepted cross-shard gift (or a mentor
reward) has left its payer's slot and not yet reached its recipient's, less what a
recipient was credited before its payer's hold was settled (answer@R before settle@S: the
recipient's slot owes it, negative transit, while the payer's hold still holds it); it may
not be below what the records say is in flight less what they say is owed, and is 0 at
rest. Every answer left half-way is due: an offer half decided but not closed has its
``settle`` entry in its slot's due queue, one answered at R whose payer is not settled yet
its ``answered`` entry, so recovery finishes it. Per slot: ``holds`` equals the sum of its
users' holds. Per user: no negative balance or hold, and each hold equals the cost of the
gifts (and newcomer sponsorships) it holds for.

Gifts: every half parses and has a known state; a send half and its offer half agree (the
offer half decides; the send half follows it once settled); the inboxes and the slots'
expiry queues hold exactly the pending offers, scored by their expiry (the expiry queues
also the offers awaiting a guardian, at the guardian's deadline); each day's send,
receive and pair counters equal the number of that day's gifts that hold a slot (a counter
may be gone only once its TTL ran out, so a missing counter is flagged only while the day
still has pending gifts).

Scenes: each newcomer's free-gift counter is at least the number of their promotion-paid
gifts that hold one; each user's points total equals its log (the retained entries plus
the sum of the trimmed ones) and is not negative; leaderboard scores are not negative.

The check reads with SCAN (on every primary of a cluster) and many round trips, not one
snapshot: run it while nothing writes (tests, maintenance windows), or expect passing
mismatches. It assumes resolved gifts are kept (``gift_retention_ms``) at least as long as
quota counters (2 days).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any, cast

from clearing.clock import CAMPAIGN_DAY
from clearing.codec import gift_from_map, text_hash
from clearing.erasure_names import is_pseudonym
from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.model import GiftRecord, GiftState
from clearing.rules import GiftRules
from clearing.topology import AnyRedis

_COUNTED = ("pending", "accepted")
#: An offer half that waits for the recipient's guardian (docs/regions.md) is held like a
#: pending one: in the expiry queue (at the guardian's deadline), not in the inbox.
_AWAITING = "awaiting_guardian"


@dataclasses.dataclass(frozen=True, slots=True)
class InvariantReport:
    violations: list[str]
    #: kind -> {"minted", "available", "held", "consumed", "transit"} totals, for a human to read.
    per_kind: dict[str, dict[str, int]]

    @property
    def ok(self) -> bool:
        return not self.violations


class _Reader:
    def __init__(self, redis: AnyRedis, keys: KeySchema) -> None:
        self.redis = redis
        self.keys = keys

    async def scan(self, name: str) -> AsyncIterator[str]:
        """Keys ``<prefix>:{<tag>}:<name>`` (``name`` may end in ``*``). The SCAN pattern's
        ``*`` in the tag also matches a longer key whose id holds ``:`` (a gift id ``x:bal``
        under ``gift:``), so each key is matched again, past its tag."""
        async for raw in self.redis.scan_iter(match=self.keys.pattern(name), count=1000):
            key = raw.decode()
            if fnmatch.fnmatchcase(self.rest(key), name):
                yield key

    def rest(self, key: str) -> str:
        """What follows the tag: ``gift:<id>``, ``bal``..."""
        return key[len(self.keys.prefix) + len(self.keys.tag_in(key)) + 4 :]

    async def hashes(self, name: str) -> dict[str, dict[str, str]]:
        """Every hash named ``name`` under any tag, by its key."""
        keys = [key async for key in self.scan(name)]
        values: list[Any] = []
        for start in range(0, len(keys), 500):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys[start : start + 500]:
                    pipe.hgetall(key)
                values += await pipe.execute()
        return {key: text_hash(value) for key, value in zip(keys, values, strict=True)}

    async def zset(self, key: str) -> dict[str, int]:
        members = cast("list[tuple[bytes, float]]", await self.redis.zrange(key, 0, -1, withscores=True))
        return {member.decode(): int(score) for member, score in members}


def _whole(value: bytes | str | None) -> int | None:
    """A stored counter as an integer (absent: 0), or None when it is not one."""
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        return None


def _ints(owner: str, fields: dict[str, str], violations: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for field, value in fields.items():
        try:
            out[field] = int(value)
        except ValueError:
            violations.append(f"{owner}[{field}] is not an integer: {value!r}")
    return out


@dataclasses.dataclass
class _Gifts:
    sent: dict[tuple[str, str], dict[str, str]]  # (sender, gift id) -> send half
    offered: dict[tuple[str, str], dict[str, str]]  # (recipient, gift id) -> offer half
    sponsored: dict[tuple[str, str, str], dict[str, str]]  # (payer, sender, gift id) -> hold


async def check_invariant(redis: AnyRedis, rules: GiftRules, keys: KeySchema = DEFAULT_KEYS) -> InvariantReport:
    r = _Reader(redis, keys)
    violations: list[str] = []

    totals: dict[str, dict[str, int]] = {}
    for key, fields in (await r.hashes("tot")).items():
        totals[keys.tag_in(key)] = _ints(key, fields, violations)
    available = {keys.tag_in(k): _ints(k, v, violations) for k, v in (await r.hashes("bal")).items()}
    held = {keys.tag_in(k): _ints(k, v, violations) for k, v in (await r.hashes("held")).items()}
    for name, per_user in (("available", available), ("held", held)):
        for user, amounts in per_user.items():
            violations += [f"{name} of {user} in {k} is negative: {v}" for k, v in amounts.items() if v < 0]

    gifts = await _read_gifts(r, violations)
    per_kind = _money(rules, totals, available, held, gifts, violations)
    violations += _holds_per_slot(totals, held)
    violations += _halves_agree(gifts)
    violations += await _queues(r, gifts)
    violations += await _open_answers_due(r, gifts)
    violations += await _quotas(r, gifts)
    violations += await _scenes(r, gifts)
    return InvariantReport(violations=violations, per_kind=per_kind)


def _total(totals: dict[str, dict[str, int]], name: str, kind: str) -> int:
    return sum(t.get(f"{name}:{kind}", 0) for t in totals.values())


def _money(rules: GiftRules, totals: dict[str, dict[str, int]], available: dict[str, dict[str, int]],
           held: dict[str, dict[str, int]], gifts: _Gifts, violations: list[str]) -> dict[str, dict[str, int]]:
    kinds = set(rules.card_kinds).union(*available.values(), *held.values())
    kinds |= {field.partition(":")[2] for t in totals.values() for field in t}
    in_flight: Counter[str] = Counter()  # settled at the payer, not yet credited (the three-step path)
    owed: Counter[str] = Counter()  # credited at the recipient, not yet settled at the payer
    for (_, gift_id), offer in gifts.offered.items():
        if offer.get("state") != "accepted":
            continue
        settled = _payer_settled(gifts, gift_id, offer)
        if offer.get("closed") == "0" and settled:
            in_flight[offer["kind"]] += int(offer["amount"])
        elif _owed(offer) and not settled:
            owed[offer["kind"]] += int(offer["amount"])
    per_kind: dict[str, dict[str, int]] = {}
    for kind in sorted(kinds):
        row = {
            "minted": _total(totals, "minted", kind),
            "available": sum(a.get(kind, 0) for a in available.values()),
            "held": sum(h.get(kind, 0) for h in held.values()),
            "consumed": _total(totals, "consumed", kind),
            "transit": _total(totals, "transit", kind),
        }
        per_kind[kind] = row
        if row["minted"] != row["available"] + row["held"] + row["consumed"] + row["transit"]:
            violations.append(f"{kind}: minted {row['minted']} != available + held + consumed + transit {row}")
        if row["transit"] < in_flight[kind] - owed[kind]:
            violations.append(f"{kind}: transit {row['transit']} is below the accepted gifts in flight "
                              f"{in_flight[kind]} less those owed {owed[kind]}")
    # each user's hold against what it holds for
    expected: defaultdict[tuple[str, str], int] = defaultdict(int)
    for (sender, _), sent in gifts.sent.items():
        if sent.get("state") == "pending" and not sent.get("payer"):
            expected[sender, sent["kind"]] += int(sent["cost"])
    for (payer, _, _), hold in gifts.sponsored.items():
        if hold.get("state") == "held":
            expected[payer, hold["kind"]] += int(hold["cost"])
    for user, amounts in held.items():
        for kind, amount in amounts.items():
            want = expected.pop((user, kind), 0)
            if amount != want:
                violations.append(f"held of {user} in {kind} = {amount}, what it holds for costs {want}")
    violations += [f"{u} holds for gifts of {n} {k} but has no hold" for (u, k), n in expected.items() if n]
    return per_kind


def _owed(offer: dict[str, str]) -> bool:
    """Answered at R, the payer's side still to settle: ``closed`` 1 with ``owed`` 1
    (gift_answer.lua)."""
    return offer.get("closed") == "1" and offer.get("owed") == "1"


def _payer_settled(gifts: _Gifts, gift_id: str, offer: dict[str, str]) -> bool:
    sender, payer = offer["sender"], offer.get("payer")
    if payer:
        return gifts.sponsored.get((payer, sender, gift_id), {}).get("state") == "accepted"
    return gifts.sent.get((sender, gift_id), {}).get("state") == "accepted"


def _holds_per_slot(totals: dict[str, dict[str, int]], held: dict[str, dict[str, int]]) -> list[str]:
    from clearing.slots import tag_of  # the slot table is built on first use

    per_slot: defaultdict[tuple[str, str], int] = defaultdict(int)
    for user, amounts in held.items():
        for kind, amount in amounts.items():
            per_slot[tag_of(user), kind] += amount
    out = []
    for tag, fields in totals.items():
        for field, value in fields.items():
            name, _, kind = field.partition(":")
            if name == "holds" and value != per_slot.pop((tag, kind), 0):
                out.append(f"holds of slot {tag} in {kind} = {value} != the sum of its users' holds")
    out += [f"slot {tag} has holds of {n} {kind} but no total" for (tag, kind), n in per_slot.items() if n]
    return out


async def _read_gifts(r: _Reader, violations: list[str]) -> _Gifts:
    gifts = _Gifts({}, {}, {})
    for name, target in (("gift:*", gifts.sent), ("offer:*", gifts.offered)):
        for key, fields in (await r.hashes(name)).items():
            owner, gift_id = r.keys.tag_in(key), r.rest(key).partition(":")[2]
            target[owner, gift_id] = fields
            if fields.get("state") in ("void", "admitted"):
                continue
            try:
                gift = gift_from_map({"gift_id": gift_id, **fields})
            except (KeyError, ValueError) as exc:
                violations.append(f"gift half {key} is malformed ({exc!r}): {fields}")
                continue
            violations += _one_gift(key, gift, fields)
    for key, fields in (await r.hashes("sponsor:*")).items():
        sender, _, gift_id = r.rest(key).partition(":")[2].partition("|")
        gifts.sponsored[r.keys.tag_in(key), sender, gift_id] = fields
    return gifts


def _one_gift(key: str, gift: GiftRecord, fields: dict[str, str]) -> list[str]:
    out = []
    if "day" not in fields:
        out.append(f"gift half {key} has no quota day")
    unresolved = gift.state in (GiftState.PENDING, GiftState.AWAITING_GUARDIAN)
    if unresolved != (gift.resolved_at_ms is None):
        out.append(f"gift half {key} is {gift.state} with resolved_at_ms {gift.resolved_at_ms}")
    if not 0 < gift.amount <= gift.cost:
        out.append(f"gift half {key} credits {gift.amount} of its cost {gift.cost}")
    return out


def _halves_agree(gifts: _Gifts) -> list[str]:
    out = []
    for (sender, gift_id), sent in gifts.sent.items():
        state = sent.get("state")
        if state == "void":
            continue
        offer = gifts.offered.get((sent["recipient"], gift_id))
        if offer is None and is_pseudonym(sent["recipient"]):
            continue  # the recipient was erased with their half (clearing/erasure.py)
        if offer is None:
            out.append(f"gift {gift_id} of {sender} has no offer half at {sent['recipient']}")
            continue
        decided = offer.get("state")
        settled = state == decided
        answer_due = offer.get("closed") == "0" or _owed(offer)
        waiting = state == "pending" and (decided in ("admitted", _AWAITING) or answer_due)
        if not (settled or waiting):
            out.append(f"gift {gift_id}: send half {state}, offer half {decided}")
    for (recipient, gift_id), offer in gifts.offered.items():
        if offer.get("state") in ("void", "admitted"):
            continue
        if (offer["sender"], gift_id) not in gifts.sent and not is_pseudonym(offer["sender"]):
            out.append(f"offer {gift_id} to {recipient} has no send half at {offer['sender']}")
    return out


async def _queues(r: _Reader, gifts: _Gifts) -> list[str]:
    from clearing.slots import tag_of

    out: list[str] = []
    inboxes: dict[str, dict[str, int]] = defaultdict(dict)
    expiry: dict[str, dict[str, int]] = defaultdict(dict)
    for (recipient, gift_id), offer in gifts.offered.items():
        if offer.get("state") == "pending":
            inboxes[recipient][gift_id] = int(offer["expires_at_ms"])
        if offer.get("state") in ("pending", _AWAITING):
            expiry[tag_of(recipient)][f"{recipient}|{gift_id}"] = int(offer["expires_at_ms"])
    for name, expected in (("inbox", inboxes), ("expiry", expiry)):
        async for key in r.scan(name):
            owner = r.keys.tag_in(key)
            members = await r.zset(key)
            if members != expected.pop(owner, {}):
                out.append(f"{name} of {owner} {members} does not match its pending offers")
        out += [f"{name} of {owner} is missing {ids}" for owner, ids in expected.items()]
    return out


async def _open_answers_due(r: _Reader, gifts: _Gifts) -> list[str]:
    """Each answer stopped half-way has its entry in its recipient's due queue: decided only
    (``closed`` 0) ``settle|R|id``; answered at R (``owed`` 1) while the send half still
    waits to be settled ``answered|R|id``. A due entry more than that is harmless (recovery
    finds nothing to do and drops it)."""
    from clearing.slots import tag_of

    missing: list[tuple[str, str]] = []
    for (recipient, gift_id), offer in gifts.offered.items():
        closed = offer.get("closed")
        sent = gifts.sent.get((offer.get("sender", ""), gift_id), {})
        if closed == "0":
            missing.append((tag_of(recipient), f"settle|{recipient}|{gift_id}"))
        elif _owed(offer) and sent.get("state") == "pending":
            missing.append((tag_of(recipient), f"answered|{recipient}|{gift_id}"))
    out = []
    for tag, entry in missing:
        if await r.redis.zscore(r.keys.due(tag), entry) is None:
            out.append(f"an answer stopped half-way is not due: {entry}")
    return out


async def _quotas(r: _Reader, gifts: _Gifts) -> list[str]:
    expected: Counter[str] = Counter()
    needed: set[str] = set()  # counters a pending gift will still release
    keys = r.keys
    for (sender, _), sent in gifts.sent.items():
        if sent.get("state") in _COUNTED and sent.get("day") != CAMPAIGN_DAY:
            counter = keys.send_quota(sent["day"], sender)
            expected[counter] += 1
            if sent["state"] == "pending":
                needed.add(counter)
    for (recipient, _), offer in gifts.offered.items():
        if offer.get("state") in ("admitted", _AWAITING, *_COUNTED) and offer.get("day") != CAMPAIGN_DAY:
            counters = (keys.receive_quota(offer["day"], recipient),
                        keys.pair_receive_quota(offer["day"], recipient, offer["sender"]))
            expected.update(counters)
            if offer["state"] != "accepted":
                needed.update(counters)
    actual: dict[str, int] = {}
    out: list[str] = []
    for name in ("q:send:*", "q:recv:*", "q:recvp:*"):
        async for key in r.scan(name):
            value = _whole(await r.redis.get(key))
            if value is None:
                out.append(f"quota {key} is not an integer")
                continue
            actual[key] = value
    out += [f"quota {key} = {n}, counted gifts: {expected[key]}" for key, n in actual.items() if n != expected[key]]
    out += [f"quota {key} is missing for a pending gift" for key in sorted(needed - actual.keys())]
    return out


async def _scenes(r: _Reader, gifts: _Gifts) -> list[str]:
    out: list[str] = []
    free: Counter[str] = Counter(
        sender for (sender, _), sent in gifts.sent.items() if sent.get("payer") and sent.get("state") in _COUNTED
    )
    async for key in r.scan("free"):
        user = r.keys.tag_in(key)
        count = _whole(await r.redis.get(key))
        if count is None:
            out.append(f"free-gift counter of {user} is not an integer")
            continue
        if count < free.pop(user, 0) or count < 0:
            out.append(f"free-gift counter of {user} = {count} is below its promotion-paid gifts")
    out += [f"{user} has {n} promotion-paid gifts but no free-gift counter" for user, n in free.items()]

    for key, fields in (await r.hashes("points")).items():
        user = r.keys.tag_in(key)
        total, trimmed = _whole(fields.get("total", "0")), _whole(fields.get("trimmed", "0"))
        if total is None or trimmed is None:
            out.append(f"points of {user} are not integers: {fields}")
            continue
        logged = 0
        log = cast("list[tuple[bytes, dict[bytes, bytes]]]", await r.redis.xrange(r.keys.point_log(user)))
        for _, raw in log:
            entry = text_hash(raw)  # type: ignore[arg-type]
            points = _whole(entry.get("p"))
            if points is None or points <= 0:
                out.append(f"points log entry of {user} {entry} is not a positive integer")
                continue
            logged += points
        if total < 0 or total != trimmed + logged:
            out.append(f"points of {user} = {total}, its log sums to {logged} (+{trimmed} trimmed)")
    async for key in r.scan("board"):
        scores = await r.zset(key)
        out += [f"{key}: {user} has negative points {n}" for user, n in scores.items() if n < 0]
    return out
