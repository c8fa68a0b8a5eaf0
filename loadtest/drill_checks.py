"""The drill's verdict: what Redis holds after the heal, checked against what clients were told.

Jepsen's bank test, adapted to two-phase gifts. After the faults are healed and every
confirm window has passed, with nothing writing any more:

1. **conservation** (clearing's own ``check_invariant``): per kind, cards minted =
   available + held + consumed; no negative balance; queues, inboxes and quota counters
   agree with the gifts;
2. **every gift final**: each gift record is in exactly one of accepted / declined /
   expired; none is left pending;
3. **acknowledged means it exists**: a gift whose send got ``gift_sent`` is in Redis
   (acknowledged-then-lost counts the others), with the sender, recipient and quantity
   the client sent; no gift exists that no client asked for; a gift that every send
   attempt saw refused does not exist;
4. **what clients were told holds**: the final states told about a gift in replies to a
   client's own request (accept / decline, errors carrying the gift, a resend) agree with
   each other and with the record; the same for outcome events, counted apart, since an
   event is published when the primary commits, before any WAIT;
5. **no gift credited twice**: every user's balance replayed from the records (minted,
   minus what they gave in accepted gifts, plus what they received) equals the stored one,
   and nothing is held;
6. **arrival**: of the gifts whose recipient the drill kept online through the gift's
   window, the share whose offer reached the recipient's client before it expired (gifts
   that waited for a guardian are counted apart: their offer depends on the guardian);
7. **guardians** (docs/regions.md): a gift that waited for a guardian is never offered to
   nor accepted by its recipient unless its guardian approved it; a rejection told to the
   guardian holds (as a reply, item 4); the counts by answer and final state are reported.

Which of these is a violation depends on the durability setting, as docs/guarantees.md
states: 1, 2, 3 (but acknowledged-then-lost and refused-but-exists), 5 always; those two and 4 for
replies only when every replica confirms a write before it is acknowledged. Arrival (6) is
a measured rate, never a violation: it depends on timing. The rest is measured and reported.

Each anomaly is also attributed to the faults active around the time of its gift (from
half a second before a fault to three seconds after it), giving per-fault-kind numbers.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

from clearing import GiftRules, GiftState, KeySchema, check_invariant
from clearing.codec import gift_from_hash, text_hash
from clearing.ledger import reconcile
from clearing.model import GiftRecord
from clearing.topology import AnyRedis
from loadtest.drill_workload import GiftLog, History

#: Who told a client a gift's state in the reply to its own request (the others are events).
REPLY_SOURCES = ("send-reply", "answer-reply", "send-error", "answer-error", "guardian-reply", "guardian-error")
#: Always guaranteed, whatever the durability setting (docs/guarantees.md).
ALWAYS = ("left_pending", "never_sent", "wrong_payload", "offered_without_approval", "accepted_without_approval")
#: Guaranteed only when every replica must confirm a write before it is acknowledged. A
#: refusal is a write too (reserve remembers it for the gift id): a failover that forgets
#: it lets a late duplicate of the refused send create the gift.
WHEN_DURABLE = ("acked_then_lost", "reply_state_lost", "refused_but_exists")

#: A gift counts as "during" a fault from this long before it starts ...
ATTRIBUTE_BEFORE_MS = 500
#: ... to this long after it ends (failovers and reconnects take a moment to settle).
ATTRIBUTE_AFTER_MS = 3000


class TimedFault(Protocol):
    """One injected fault as the checks see it: its kind's name, when it ran, whether it failed
    (the single-instance drill's and the cluster drill's faults both are)."""

    @property
    def kind_name(self) -> str: ...
    @property
    def started_ms(self) -> int: ...
    @property
    def ended_ms(self) -> int: ...
    @property
    def error(self) -> str: ...


@dataclasses.dataclass(slots=True)
class Verdict:
    violations: list[str] = dataclasses.field(default_factory=list)
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    per_fault: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


async def read_gifts(redis: AnyRedis, keys: KeySchema) -> dict[str, GiftRecord]:
    """Every gift by id, as it stands: its offer half (with the recipient) decides; a send
    half whose offer half is not written yet (a send stopped half-way) counts as it is."""
    out: dict[str, GiftRecord] = {}
    for name in ("gift:*", "offer:*"):  # offer halves last: they win
        found = [k async for k in redis.scan_iter(match=keys.pattern(name), count=1000)]
        for start in range(0, len(found), 500):
            chunk = found[start : start + 500]
            async with redis.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.hgetall(key)
                values = await pipe.execute()
            for key, raw in zip(chunk, values, strict=True):
                text = key.decode()
                gift_id = text[len(keys.prefix) + len(keys.tag_in(text)) + 4 :].partition(":")[2]
                state = raw.get(b"state")
                if state in (b"admitted", b"void") or not raw:
                    continue
                out[gift_id] = gift_from_hash(gift_id, raw)
    return out


async def verify(redis: AnyRedis, rules: GiftRules, history: History, minted: dict[str, int],
                 faults: Sequence[TimedFault], keys: KeySchema | None = None, *, durable: bool = False) -> Verdict:
    """``durable``: the setting promises that acknowledged writes survive a failover (WAIT
    for every replica), so losing one is a violation rather than a measurement."""
    keys = keys or KeySchema()
    v = Verdict()
    report = await check_invariant(redis, rules, keys)
    v.violations += [f"invariant: {text}" for text in report.violations]
    v.numbers["per_kind"] = report.per_kind
    # the ledger outbox: its records replay to every balance Redis holds (docs/ledger.md)
    outbox = await reconcile(redis, keys)
    v.violations += [f"outbox: {text}" for text in outbox.drift]
    v.numbers["ledger_records"] = outbox.entries
    gifts = await read_gifts(redis, keys)
    log = history.gifts

    anomalies, states = _classify(gifts, log)

    # no gift credited twice: replay every balance from the records
    expected: dict[str, int] = defaultdict(int)
    for user, amount in minted.items():
        expected[user] += amount
    for gift in gifts.values():
        if gift.state in (GiftState.PENDING, GiftState.AWAITING_GUARDIAN, GiftState.ACCEPTED):
            expected[gift.sender] -= gift.cost
        if gift.state is GiftState.ACCEPTED:
            expected[gift.recipient] += gift.amount
    kind = rules.card_kinds[0]
    mismatched = 0
    for user, want in expected.items():
        raw = text_hash(await redis.hgetall(keys.balance(user)))
        held = text_hash(await redis.hgetall(keys.held(user)))
        have = int(raw.get(kind, 0))
        if have != want or any(int(x) for x in held.values()):
            mismatched += 1
            v.violations.append(f"ledger: {user} holds {have} (+ held {held}), its gifts say {want}")
    # arrival: offers to recipients the drill kept online through the window
    arrival_all, arrival_online = _arrival(gifts, history)
    v.numbers.update({
        "gifts_attempted": len(log),
        "gifts_acked": sum(1 for e in log.values() if e.acked),
        "gifts_refused": sum(1 for e in log.values() if e.refused and not e.acked),
        "sends_with_unknown_outcome": sum(1 for e in log.values() if e.unknown_sends),
        "unknown_never_settled": sum(1 for e in log.values() if not e.send_settled),
        "refusal_codes": _codes(history),
        "gifts_in_redis": len(gifts),
        "final_states": dict(states),
        "acked_then_lost": len(anomalies["acked_then_lost"]),
        "offers_of_lost_gifts": len(anomalies["offered_then_lost"]),
        "offer_answered_not_found": sum(1 for e in log.values() if e.offer_not_found),
        "ledger_mismatches": mismatched,
        "arrival": arrival_all,
        "arrival_online": arrival_online,
        "anomalies": {k: len(ids) for k, ids in anomalies.items()},
        "anomaly_examples": {k: ids[:5] for k, ids in anomalies.items()},
        "anomaly_details": {k: [_detail(i, gifts, history) for i in ids[:3]] for k, ids in anomalies.items()},
        "arrival_missed_details": [_detail(i, gifts, history) for i in arrival_online["missed_ids"][:5]],
        "client_counters": dict(history.counters),
        "guardian": _guardian_numbers(gifts, log),
    })  # fmt: skip
    # What asynchronous replication costs is measured, not a violation, where the setting
    # does not promise it: acknowledged writes lost (unless durable), and always the
    # events published for writes that a failover then lost (offers, outcomes).
    for name in ALWAYS + (WHEN_DURABLE if durable else ()):
        if anomalies[name]:
            v.violations.append(f"{name}: {len(anomalies[name])} gifts, e.g. {anomalies[name][:3]}")
    lossy = any(anomalies[n] for n in ("acked_then_lost", "told_then_lost", "offered_then_lost",
                                       "reply_state_lost", "event_state_lost"))
    v.numbers["writes_lost"] = lossy
    # Arrival is measured, not a violation: whether an offer beats its confirmation window
    # through kills, pauses and failovers is a matter of timing (reconnect backoff, Sentinel's
    # failover delay, a loaded machine), like any latency figure. It is reported per fault kind.
    v.per_fault = _per_fault(faults, history, anomalies, arrival_online["missed_ids"])
    return v


def _classify(gifts: dict[str, GiftRecord], log: dict[str, GiftLog]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Anomalies by name (gift ids), and the count of records per state."""
    anomalies: dict[str, list[str]] = defaultdict(list)  # kind of anomaly -> gift ids
    states: dict[str, int] = defaultdict(int)
    for gift in gifts.values():
        states[gift.state.value] += 1
        if gift.state in (GiftState.PENDING, GiftState.AWAITING_GUARDIAN):
            anomalies["left_pending"].append(gift.gift_id)
        entry = log.get(gift.gift_id)
        if entry is None:
            anomalies["never_sent"].append(gift.gift_id)
            continue
        if gift.guardian and entry.guardian_answer != "approve":
            # only the guardian's approve makes such a gift an offer (the state table)
            if entry.offered_at_ms:
                anomalies["offered_without_approval"].append(gift.gift_id)
            if gift.state is GiftState.ACCEPTED:
                anomalies["accepted_without_approval"].append(gift.gift_id)
        if (gift.sender, gift.recipient, gift.qty) != (entry.sender, entry.recipient, entry.qty):
            anomalies["wrong_payload"].append(gift.gift_id)
        replied = {state for source, state in entry.told if source.startswith(REPLY_SOURCES)}
        evented = {state for source, state in entry.told if not source.startswith(REPLY_SOURCES)}
        if len(replied) > 1 or (replied and gift.state.value not in replied):
            anomalies["reply_state_lost"].append(gift.gift_id)
        if len(evented) > 1 or (evented and gift.state.value not in evented):
            anomalies["event_state_lost"].append(gift.gift_id)
        if not entry.acked and entry.refused and not entry.unknown_sends:
            anomalies["refused_but_exists"].append(gift.gift_id)
    for entry in log.values():
        if entry.gift_id in gifts:
            continue
        if entry.acked:
            anomalies["acked_then_lost"].append(entry.gift_id)
        elif entry.told:
            anomalies["told_then_lost"].append(entry.gift_id)
        if entry.offered_at_ms:
            anomalies["offered_then_lost"].append(entry.gift_id)

    return anomalies, states


def _detail(gift_id: str, gifts: dict[str, GiftRecord], history: History) -> dict[str, Any]:
    """Everything known about one gift, for a person reading the report."""
    entry = history.gifts.get(gift_id)
    record = gifts.get(gift_id)
    return {
        "gift_id": gift_id,
        "record": dataclasses.asdict(record) if record else None,
        "client_log": dataclasses.asdict(entry) if entry else None,
        "recipient_offline": history.offline.get(record.recipient if record else entry.recipient if entry else "", []),
    }


def _codes(history: History) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for entry in history.gifts.values():
        for code in entry.refused:
            out[code] += 1
    return dict(out)


def _arrival(gifts: dict[str, GiftRecord], history: History) -> tuple[dict[str, Any], dict[str, Any]]:
    def offline_during(user: str, start: int, end: int) -> bool:
        return any(down <= end and up >= start for down, up in history.offline.get(user, ()))

    totals = {"all": _Arrival(), "online": _Arrival()}
    for gift in gifts.values():
        entry = history.gifts.get(gift.gift_id)
        if entry is None or gift.guardian:
            continue
        in_time = 0 < entry.offered_at_ms <= gift.expires_at_ms
        groups = ["all"]
        if not offline_during(gift.recipient, gift.created_at_ms, gift.expires_at_ms):
            groups.append("online")
        for group in groups:
            row = totals[group]
            row.total += 1
            if in_time:
                row.delivered += 1
            else:
                row.missed.append(gift.gift_id)

    return totals["all"].to_json(), totals["online"].to_json()


def _guardian_numbers(gifts: dict[str, GiftRecord], log: dict[str, GiftLog]) -> dict[str, Any]:
    """Gifts that waited for a guardian: by what the guardian's client chose and how it ended."""
    by: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for gift in gifts.values():
        if not gift.guardian:
            continue
        entry = log.get(gift.gift_id)
        answer = (entry.guardian_answer if entry else "") or "not_seen"
        by[answer][gift.state.value] += 1
    return {"gifts": sum(sum(row.values()) for row in by.values()),
            "by_answer": {answer: dict(row) for answer, row in sorted(by.items())},
            "answers_refused": dict(_count(e.guardian_refused for e in log.values() if e.guardian_refused))}


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for value in values:
        out[value] += 1
    return out


@dataclasses.dataclass(slots=True)
class _Arrival:
    delivered: int = 0
    total: int = 0
    missed: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        rate = round(self.delivered / self.total, 5) if self.total else 1.0
        return {"delivered": self.delivered, "total": self.total, "rate": rate, "missed_ids": self.missed}


def _per_fault(faults: Sequence[TimedFault], history: History, anomalies: dict[str, list[str]],
               missed: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in faults:
        row = out.setdefault(record.kind_name, {
            "faults": 0, "errors": 0, "gifts_during": 0, "acked_then_lost": 0, "violating_gifts": 0,
            "arrival_missed": 0, "offers_of_lost_gifts": 0,
        })  # fmt: skip
        row["faults"] += 1
        row["errors"] += bool(record.error)
    bad = {name: set(ids) for name, ids in anomalies.items()}
    violating = set().union(*(bad.get(n, set()) for n in ALWAYS + WHEN_DURABLE))
    missed_set = set(missed)
    for entry in history.gifts.values():
        t = entry.sent_at_ms
        kinds = {r.kind_name for r in faults
                 if r.started_ms - ATTRIBUTE_BEFORE_MS <= t <= (r.ended_ms or r.started_ms) + ATTRIBUTE_AFTER_MS}
        for kind in kinds:
            row = out[kind]
            row["gifts_during"] += 1
            row["acked_then_lost"] += entry.gift_id in bad.get("acked_then_lost", set())
            row["violating_gifts"] += entry.gift_id in violating
            row["arrival_missed"] += entry.gift_id in missed_set
            row["offers_of_lost_gifts"] += entry.gift_id in bad.get("offered_then_lost", set())
    return out
