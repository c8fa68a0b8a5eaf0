"""GDPR access (Art. 15) and erasure (Art. 17) of one user's data (docs/regions.md).

Every key of a user lives in the user's own slot (the ``{<user>}`` hash tag,
clearing/keys.py), so an export reads them on one Redis node: the account, consent and its
history, balances, holds, the user's halves of retained gifts (sent and received), follows,
blocks, risk state, presence, points, the event stream, counters; plus the ledger records
that name the user (every retained ledger stream is read: an operator's request, not a hot
path) and the users who follow or block the user (a scan of every ``follows``/``blocks``
key). What it cannot see is listed in the export's ``gaps``.

An erasure, in order:

1. the account is banned (its connections close, no gift starts any more);
2. every pending gift is settled: offers to the user are declined (the cards go back to
   their senders) and the user's own pending gifts are declined on their recipients'
   behalf (the cards come back to the user's balance); a gift awaiting a guardian (to or
   from the user, or waiting for the user as the guardian) is in no inbox and only its
   guardian can decline it, so it is rejected as by that guardian (refunded, the request
   settled), and ``erase.lua`` refuses while any gift half it would drop is still open;
3. the other users' references go: the user is removed from every ``follows`` hash and
   ``blocks`` set, and in the retained halves of the user's gifts kept by the counterparties
   the user's id is replaced by a random pseudonym;
4. ``erase.lua`` on the user's slot: what remains available is consumed (ledger ``consume``,
   cause ``erased``), so the books stay balanced and the conservation check passes; every
   other key of the user is deleted but the balances (now zero) and the points total the
   ledger accounts for; the account hash becomes a tombstone (``erased``, ``banned``,
   ``erased_at_ms``, ``pseudonym``) that refuses every later connection, consent and gift.

Repeating an erasure is harmless: each step finds its work done. The ledger keeps the
account id in its records (financial records kept under a legal obligation, Art. 17(3)(b));
nothing else in them identifies the person.
"""

from __future__ import annotations

from typing import Any

from clearing.accounts import Accounts
from clearing.component import RedisComponent
from clearing.consent import Consents
from clearing.erasure_names import new_pseudonym
from clearing.errors import Refusal, Refused
from clearing.gifts import Clearing
from clearing.guard import guarded
from clearing.keys import is_valid_id
from clearing.ledger import GiftEvent, LedgerEntry, read_all
from clearing.slots import slot_of

#: Keys of the user that an erasure keeps: the tombstone, the (zeroed) balances, and the
#: points total with its log (gift ids and amounts), which the ledger accounts for.
_KEPT = frozenset({"user", "bal", "held", "points", "pointlog"})

#: The states of a gift half that still hold a sender's cards (an admitted half is a saga
#: step away from one of them: the sweeper finishes it, erase.lua refuses until then).
_OPEN = frozenset({"pending", "awaiting_guardian"})


def _answer_due(half: dict[str, str]) -> str | None:
    """The due entry's step of an offer half whose answer is still due (gift_answer.lua):
    ``settle`` decided only (``closed`` 0), ``answered`` answered at the recipient with the
    sender to settle (``closed`` 1, ``owed`` 1); None when nothing is due."""
    if half.get("closed") == "0":
        return "settle"
    if half.get("closed") == "1" and half.get("owed") == "1":
        return "answered"
    return None


#: What the export does not contain, for the operator answering the request.
EXPORT_GAPS = (
    "connection addresses and device fingerprints recorded in the risk engine's global event stream "
    "(docs/risk.md) are not filtered per user",
    "the user's gifts in other users' event streams (each user's own stream is exported with that user)",
    "the PostgreSQL copy of the ledger (the same records as the ledger streams, which are exported while "
    "retained)",
)


class Erasure(RedisComponent):
    """Export and erase one user; ``clearing`` settles the pending gifts first."""

    def __init__(self, clearing: Clearing) -> None:
        super().__init__(clearing.topology, clearing.gift_rules, clearing.keys, clearing.now,
                         settings=clearing.settings)
        self.clearing = clearing
        self.accounts = Accounts(clearing.topology, clearing.gift_rules, clearing.keys, clearing.now,
                                 settings=clearing.settings)
        self.consents = Consents(clearing.topology, clearing.gift_rules, clearing.keys, clearing.now,
                                 settings=clearing.settings)

    # ------------------------------------------------------------ reading the user's slot
    async def _own_keys(self, user_id: str) -> list[str]:
        """The names (after ``{<user>}:``) of every key in the user's slot."""
        node = self._topology.node_for(slot_of(user_id))
        prefix = f"{self._keys.prefix}:{{{user_id}}}:"
        names = [key.decode()[len(prefix):] async for key in
                 node.client.scan_iter(match=self._keys.user_pattern(user_id), count=1000)]
        return sorted(names)

    async def _read(self, key: str) -> Any:
        redis: Any = self._redis  # decode_responses off: every reply is bytes
        kind = (await guarded(redis.type(key))).decode()
        if kind == "hash":
            return {k.decode(): v.decode() for k, v in (await guarded(redis.hgetall(key))).items()}
        if kind == "set":
            return sorted(m.decode() for m in await guarded(redis.smembers(key)))
        if kind == "zset":
            return {m.decode(): int(s) for m, s in await guarded(redis.zrange(key, 0, -1, withscores=True))}
        if kind == "list":
            return [v.decode() for v in await guarded(redis.lrange(key, 0, -1))]
        if kind == "stream":
            return [{"id": i.decode(), **{k.decode(): _printable(v) for k, v in f.items()}}
                    for i, f in await guarded(redis.xrange(key))]
        if kind == "string":
            value = await guarded(redis.get(key))
            return None if value is None else _printable(value)
        return None  # gone between the scan and the read

    async def export(self, user_id: str) -> dict[str, Any]:
        """Everything held about the user (Art. 15), as JSON-ready data."""
        if not is_valid_id(user_id):
            raise Refused(Refusal.UNKNOWN_USER)
        names = await self._own_keys(user_id)
        if "user" not in names:
            raise Refused(Refusal.UNKNOWN_USER)
        data = {name: await self._read(self._keys.own(user_id, name)) for name in names}
        account = data.pop("user")
        sent = {n.removeprefix("gift:"): data.pop(n) for n in list(data) if n.startswith("gift:")}
        received = {n.removeprefix("offer:"): data.pop(n) for n in list(data) if n.startswith("offer:")}
        followers, blockers = await self._referrers(user_id)
        ledger, ledger_gaps = await self._ledger(user_id)
        return {
            "user": user_id,
            "exported_at_ms": self._clock(),
            "account": account,
            "region": account.get("region", "global"),
            "consent": {**await self.consents.current(user_id), "history": data.pop("consents", [])},
            "balances": {"available": _numbers(data.pop("bal", {})), "held": _numbers(data.pop("held", {}))},
            "gifts_sent": sent,
            "gifts_received": received,
            "follows": data.pop("follows", {}),
            "blocks": data.pop("blocks", []),
            "followed_by": followers,
            "blocked_by": blockers,
            "risk": {"state": data.pop("risk", {}), "features": data.pop("rfeat", {}),
                     "peers": data.pop("rpeers", None)},
            "presence": data.pop("presence", {}),
            "ledger": ledger,
            "other": data,
            "gaps": [*EXPORT_GAPS, *ledger_gaps],
        }

    async def _referrers(self, user_id: str) -> tuple[list[str], list[str]]:
        """The users whose ``follows`` name the user, and those whose ``blocks`` do."""
        followers: list[str] = []
        blockers: list[str] = []
        for name, found, check in (("follows", followers, self._redis.hexists),
                                   ("blocks", blockers, self._redis.sismember)):
            redis: Any = self._redis
            async for key in redis.scan_iter(match=self._keys.pattern(name), count=1000):
                if await guarded(check(key, user_id)):
                    found.append(self._keys.tag_in(key.decode()))
        return sorted(followers), sorted(blockers)

    async def _ledger(self, user_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        records, problems = await read_all(self._redis, self._keys)
        accounts = {f"avail:{user_id}", f"held:{user_id}", f"points:{user_id}"}
        mine: list[dict[str, Any]] = []
        for r in records:
            if isinstance(r, LedgerEntry) and (r.debit in accounts or r.credit in accounts or r.sender == user_id):
                mine.append({"record": "entry", "id": r.id, "kind": r.entry_kind, "debit": r.debit,
                             "credit": r.credit, "card": r.kind, "units": r.units, "gift_id": r.gift_id,
                             "sender": r.sender, "cause": r.cause, "at_ms": r.at_ms})
            elif isinstance(r, GiftEvent) and user_id in (r.sender, r.recipient, r.payer):
                mine.append({"record": "gift", **r.to_json()})
        return mine, [f"ledger: {p}" for p in problems]

    # ------------------------------------------------------------ erasure
    async def erase(self, user_id: str) -> dict[str, Any]:
        """Erase the user (Art. 17); see the module docstring for the steps."""
        if not is_valid_id(user_id):
            raise Refused(Refusal.UNKNOWN_USER)
        redis: Any = self._redis
        account = await guarded(redis.hgetall(self._keys.user(user_id)))
        if not account:
            raise Refused(Refusal.UNKNOWN_USER)
        if account.get(b"erased") == b"1":
            return await self._tombstone_step(user_id, [], account[b"pseudonym"].decode())
        # No new gift from now, and the user's live connections close (set_flags.lua tells their nodes).
        await self.accounts.set_flags(user_id, banned=True)
        names = await self._own_keys(user_id)
        settled = await self._settle(user_id, names)
        pseudonym = account.get(b"pseudonym", b"").decode() or new_pseudonym()
        # remember the pseudonym first: an erasure stopped half-way and repeated uses the same one
        await guarded(self._redis.hset(self._keys.user(user_id), "pseudonym", pseudonym))
        await self._unlink(user_id, pseudonym, names)
        names = await self._own_keys(user_id)
        reply = await self._tombstone_step(user_id, [n for n in names if n not in _KEPT], pseudonym)
        return {**reply, "settled": settled}

    async def _settle(self, user_id: str, names: list[str]) -> list[dict[str, str]]:
        """Decline every pending gift to or from the user, also those still awaiting a
        guardian (not in the inbox: found by their halves), and reject the requests waiting
        for the user as a guardian; what was settled."""
        settled: list[dict[str, str]] = []
        seen: set[str] = set()
        for gift in await self.clearing.pending_for(user_id):
            await self.clearing.decline_for_erasure(gift.gift_id, user_id, gift.sender)
            settled.append({"gift_id": gift.gift_id, "sender": gift.sender, "recipient": user_id})
            seen.add(gift.gift_id)
        for name in names:
            kept, _, gift_id = name.partition(":")
            if kept not in ("gift", "offer", "greq") or gift_id in seen:
                continue
            if kept == "greq":  # greq:<ward>|<gift id>: a request waiting for the user as a guardian
                ward, _, gift_id = gift_id.partition("|")
                half = await self._read(self._keys.offer(ward, gift_id)) if is_valid_id(ward) else None
            else:
                half = await self._read(self._keys.own(user_id, name))
            step = _answer_due(half) if kept == "offer" and isinstance(half, dict) else None
            if step:
                # Answered but the sender's side not settled yet (a saga stopped half-way):
                # finish it now, while the offer half that recovery reads is still here.
                entry = f"{step}|{user_id}|{gift_id}"
                if await guarded(self._redis.zscore(self._keys.due(self.tag(user_id)), entry)) is not None:
                    await self.clearing.recover(entry)
                continue
            if not isinstance(half, dict) or half.get("state") not in _OPEN:
                continue
            sender, recipient = half.get("sender", ""), half.get("recipient", "")
            if is_valid_id(sender) and is_valid_id(recipient):
                await self.clearing.decline_for_erasure(gift_id, recipient, sender)
                settled.append({"gift_id": gift_id, "sender": sender, "recipient": recipient})
                seen.add(gift_id)
        return settled

    async def _unlink(self, user_id: str, pseudonym: str, names: list[str]) -> None:
        """Other users' references to the user: follows and blocks go, and the retained
        halves of the user's gifts kept by the counterparties name the pseudonym instead."""
        followers, blockers = await self._referrers(user_id)
        for follower in followers:
            await guarded(self._redis.hdel(self._keys.follows(follower), user_id))
        for blocker in blockers:
            await guarded(self._redis.srem(self._keys.blocks(blocker), user_id))
        halves: dict[str, list[list[str]]] = {}
        for name in names:
            if name.startswith("gift:"):  # sent: the recipient keeps the offer half
                other, field, kept = "recipient", "sender", "offer:"
            elif name.startswith("offer:"):  # received: the sender keeps the send half
                other, field, kept = "sender", "recipient", "gift:"
            elif name.startswith("greq:"):  # asked as a guardian: the ward's offer half names the user
                ward, _, gift_id = name.removeprefix("greq:").partition("|")
                if is_valid_id(ward) and is_valid_id(gift_id):
                    halves.setdefault(ward, []).append(["offer:" + gift_id, "guardian"])
                continue
            else:
                continue
            half = await self._read(self._keys.own(user_id, name))
            counterparty = half.get(other) if isinstance(half, dict) else None
            if counterparty and is_valid_id(counterparty):
                gift_id = name.split(":", 1)[1]
                halves.setdefault(counterparty, []).append([kept + gift_id, field])
        for counterparty, found in halves.items():
            await self._lua.run("pseudonymise", slot_of(counterparty), self._keys.user(counterparty), self._clock(),
                                {"u": user_id, "c": counterparty, "pseudonym": pseudonym, "halves": found})

    async def _tombstone_step(self, user_id: str, drop: list[str], pseudonym: str) -> dict[str, Any]:
        reply = await self._lua.run("erase", slot_of(user_id), self._keys.user(user_id), self._clock(),
                                    {"u": user_id, "tag": self.tag(user_id), "kinds": list(self._rules.card_kinds),
                                     "drop": drop, "pseudonym": pseudonym}, durable=True)
        return {"user": user_id, "pseudonym": reply.get("pseudonym"),
                "consumed": _numbers(reply.get("consumed") or {}), "erased_at_ms": reply.get("erased_at_ms"),
                "already_erased": bool(reply.get("again"))}


def _numbers(raw: dict[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in raw.items()}


def _printable(value: bytes) -> Any:
    """Text when the bytes are text; msgpack-packed values (ledger batches) as their JSON."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"hex": value.hex()}


__all__ = ["EXPORT_GAPS", "Erasure"]
