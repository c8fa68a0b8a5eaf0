"""Gifts as two-phase transfers: reserve (hold the cost), then accept, decline or expire.

The gift id is chosen by the client before its first try and is the idempotency key: a
retry with the same payload gets the gift back, in whatever state it is now; the same id
with another payload is refused (IDEMPOTENCY_CONFLICT). Ids are unique per sender and per
recipient (each side keeps its half under it).

Where a gift lives (clearing/keys.py): its send half with the sender, its offer half (the
decision) with the recipient, and for a newcomer's free gift a hold with the promotion
account. When one Redis node holds all of them (always, on a single Redis), each operation
is one script, checked in full before its first write (``send.lua``, ``resolve.lua``): the
fast path. Otherwise it is a saga of one-slot steps, each atomic and idempotent by gift id
(docs/architecture.md draws it with every crash point):

    send     admit@R -> reserve@S [-> sponsor@P -> reserve@S] -> offer@R
    answer   answer@R -> [settle_sponsor@P ->] settle@S
             answer@R -> [settle_sponsor@P ->] settle@S -> lucky@P -> close@R
                         (an accepted gift with a lucky bonus to pay: the three-step path)

answer@R decides and, in the common case, does the recipient's side at once: an accepted
gift is credited to R (points, room credit, R told) while S's hold is still held, so R's
slot owes the amount (its transit total goes negative) until settle@S moves the hold to
transit at S's slot; a declined or expired one gives R's slots back. settle@S then consumes
or releases the hold; the ``answered`` entry it leaves in R's due queue is dropped by
settled@R after it (or by recovery, which settles again, idempotently, then drops it).

A gift the recipient's region asks the recipient's guardian G to confirm (docs/regions.md)
stops at ``awaiting_guardian`` (offer@R, or send.lua), then ``ask@G`` puts the request in G's
stream; G's approval is one script at R (the gift becomes an offer), a rejection or the lapse
of G's window is the answer saga above (declined / expired, refunded).

A step that stops half-way (a node dies, Redis fails over) is left due in its slot's queue;
:meth:`Clearing.sweep`, which every node runs over its share of the slots, finishes it or
undoes it. Conservation holds at every instant, summed over slots:
``minted = available + held + consumed + transit`` (an accepted amount is owed by the
recipient's slot, negative transit, between answer@R and settle@S; on the three-step path
it is in transit from the payer's slot to the recipient's between settle and close).

Refusals of :meth:`Clearing.reserve`, in the order they are checked, whichever side checks::

    IDEMPOTENCY_CONFLICT, SEND_ABORTED, SELF_GIFT, UNKNOWN_KIND, BAD_QUANTITY, UNKNOWN_USER
    (either user), SENDER_BANNED, CONSENT_REQUIRED (sender), RECIPIENT_BANNED,
    RECIPIENT_NO_CONSENT (docs/regions.md), NOT_VERIFIED (sender), BLOCKED (either
    way), NOT_MUTUAL_3D, LIMIT_DAILY_SEND (limit + VIP bonus), LIMIT_DAILY_RECEIVE (per
    recipient or per pair), QUOTE_EXPIRED, QUOTE_MISMATCH, INSUFFICIENT_BALANCE,
    RECIPIENT_OFFLINE

plus BAD_REQUEST for a gift id that is not 1-64 characters of ``A-Za-z0-9_.:-``. A refused
gift id is spent for ``refusal_memory_ms``: the same request repeats the refusal (so a late
duplicate never creates a gift its client was told was refused); a new attempt takes a new
id. Answering (:meth:`~Clearing.accept` / :meth:`~Clearing.decline`): GIFT_NOT_FOUND,
NOT_RECIPIENT (the sender answering their own gift), CONSENT_REQUIRED (an accept by a
recipient whose region asks for a consent they do not have on record), then GIFT_EXPIRED (the window passed:
the gift is expired by this very call and refunded, or was already expired) or
ALREADY_RESOLVED; the same answer twice is ``Resolution(changed=False)``.

Durability: every step that a user's reply depends on waits for replicas as configured
(clearing/lua.py); otherwise it raises ClearingUnavailable, outcome unknown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rx

from clearing.clock import CAMPAIGN_DAY, Clock, QuotaDays, wall_clock_ms
from clearing.codec import balances_from, gift_from_map, text_hash
from clearing.component import RedisComponent
from clearing.errors import ClearingUnavailable, Refusal, Refused, StepRefused
from clearing.guard import SlotMoving, guarded, guarded_pipeline
from clearing.keys import DEFAULT_KEYS, KeySchema, is_valid_device, is_valid_id
from clearing.lua import MAX_SAFE_INT, ScriptRunner
from clearing.model import Balances, GiftRecord, GiftState, RefusedSend, Resolution
from clearing.rates import NO_LIMIT_ARGS, RateLimit, UserRates
from clearing.rules import GiftRules
from clearing.settings import SettingsCache, SettingsSnapshot
from clearing.slots import SLOTS, slot_of, slot_tag, tag_of
from clearing.snapshot_args import SnapshotArgs, perks_of
from clearing.topology import Durability, NodeScripts, SlotUncovered, Topology

log = logging.getLogger("notecard.clearing.gifts")
T = TypeVar("T")

#: A cross-shard step not finished this long after it started is taken over by recovery.
DEFAULT_SAGA_MS = 10_000
#: Slots per due.lua call: each reads two queues per slot; bounded so one call stays short.
SWEEP_CHUNK = 512
#: Entries per queue per sweep call.
SWEEP_LIMIT = 200

#: Which nodes are dead right now (registry heartbeat older than the node TTL).
DeadNodes = Callable[[], Awaitable[list[str]]]


async def _no_dead_nodes() -> list[str]:
    return []


@dataclasses.dataclass(frozen=True, slots=True)
class SweepResult:
    expired: list[GiftRecord]
    recovered: int


class Clearing(RedisComponent):
    """The gift operations the gateway calls; one instance per process is enough."""

    def __init__(
        self,
        redis: aioredis.Redis | Topology,
        rules: GiftRules,
        keys: KeySchema = DEFAULT_KEYS,
        clock: Clock = wall_clock_ms,
        durability: Durability | None = None,
        settings: SettingsCache | None = None,
        *,
        user_rate: RateLimit | None = None,
        dead_nodes: DeadNodes = _no_dead_nodes,
        saga_ms: int = DEFAULT_SAGA_MS,
        force_saga: bool = False,
    ) -> None:
        if rules.max_qty_per_gift * rules.units_per_card > MAX_SAFE_INT:
            raise ValueError("max_qty_per_gift * units_per_card must stay below 2**53")
        super().__init__(redis, rules, keys, clock, durability, settings)
        self._days = QuotaDays(rules.timezone)
        self._kinds = frozenset(rules.card_kinds)
        self._dead_nodes = dead_nodes
        #: Take the saga even when every part is on one node (tests, and the benchmark's
        #: measure of what the saga costs).
        self.force_saga = force_saga
        #: Each send and answer counts against its user's rate (rates.py): in its own script
        #: on the fast path, with one small call first across shards.
        self._rate = user_rate.script_args if user_rate is not None else NO_LIMIT_ARGS
        self._rates = UserRates(self._topology, rules, user_rate, keys, clock) if user_rate is not None else None
        self._constant = {
            "send_limit": rules.daily_send_limit, "vip_bonus": rules.vip_send_bonus,
            "recv_limit": rules.daily_receive_limit, "scope": rules.receive_limit_scope,
            "follow_age": rules.follow_min_age_ms, "window": rules.confirm_window_ms,
            "memo_ms": rules.refusal_memory_ms, "saga_ms": saga_ms, "pointlog_max": rules.points_log_maxlen,
            "rl_daily": rules.risk_limited_daily, "rl_rooms": 1 if rules.risk_limited_rooms else 0,
        }
        #: What the answer's scripts read of those (gift_answer.lua): each named argument is
        #: decoded by every call, so an answer carries only these (answer@R's deadline comes
        #: as its own argument, ResolveSaga.answer).
        self._answer_constant = {"pointlog_max": self._constant["pointlog_max"]}
        #: An answer's rate arguments: none without a limit (check_rate reads an absent
        #: interval as no limit, as it reads 0), one named argument fewer to decode twice.
        self._answer_rate = self._rate if self._rate["rate_us"] else {}
        #: A send's: no send script awards points (``pointlog_max`` is the answer's).
        self._send_constant = {k: v for k, v in self._constant.items() if k != "pointlog_max"}
        #: What the settings snapshot in use contributes to every gift's arguments, derived
        #: once per snapshot (clearing/snapshot_args.py).
        self._snapshot_args: SnapshotArgs | None = None

    def _args_of(self, snapshot: SettingsSnapshot) -> SnapshotArgs:
        held = self._snapshot_args
        if held is None or held.snapshot is not snapshot:
            held = self._snapshot_args = SnapshotArgs(snapshot, self._send_constant, self._answer_constant)
        return held

    # ================================================================ send
    async def reserve(self, gift_id: str, sender: str, recipient: str, kind: str, qty: int, *,
                      app: str = "main", quote_id: str = "", device: str | None = None) -> GiftRecord:
        """Offer ``qty`` cards of ``kind``; the cost is held until the gift resolves.

        ``app``: where the sender is (perks on accept); ``quote_id``: a live-room quote
        (clearing/rooms.py) that prices the gift; ``device``: the sender's device fingerprint
        (a banned one is refused). Festival and newcomer pricing: gift_send.lua.
        """
        if not is_valid_id(gift_id):
            raise Refused(Refusal.BAD_REQUEST, "gift id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if quote_id and not is_valid_id(quote_id):
            raise Refused(Refusal.QUOTE_EXPIRED)
        now = self._clock()
        snapshot = await self._settings.get()
        a = await self._send_args(snapshot, now, gift_id, sender, recipient, kind, qty, app, quote_id)
        if device is not None:
            if not is_valid_device(device):
                raise Refused(Refusal.BAD_REQUEST, "a device fingerprint is 1-128 characters of A-Z a-z 0-9 _ -")
            a["dev"] = device
        parties = [slot_of(sender), slot_of(recipient)]
        if not self.force_saga and self._topology.colocated(parties):
            # The promotion account pays only a newcomer's free gift, which the script finds
            # out: when it is on another node, every other gift still takes the fast path.
            remote = "promo" in a and not self._topology.colocated([*parties, slot_of(a["promo"])])
            try:
                reply = await self._lua.run("send", parties[0], self._keys.user(sender), now,
                                            {**a, **self._rate, **({"promo_remote": True} if remote else {})},
                                            emits=True, durable=True)
                return await self._shown_to_sender(gift_from_map(reply["gift"]))
            except StepRefused as exc:
                if exc.code != "NEEDS_SAGA":
                    raise
            except rx.ResponseError as exc:
                if not _moved_apart(exc):
                    raise
                # A slot moved between the map and the call: nothing ran; take the saga.
        if self._rates is not None and not await self._rates.take(sender):
            raise Refused(Refusal.RATE_LIMITED)
        return await self._shown_to_sender(await SendSaga(self, a, now).run())

    # ================================================================ guardian confirmation
    async def _shown_to_sender(self, gift: GiftRecord) -> GiftRecord:
        """A gift that waits for the recipient's guardian: ask the guardian (the step after
        the send, on the guardian's slot), then show the sender a pending gift. A failed ask
        is left to the recovery worker (the offer half's ``ask`` entry stays due)."""
        if gift.state is not GiftState.AWAITING_GUARDIAN:
            return gift
        try:
            # The send half holds the gift for the guardian's window plus the recipient's.
            await self.ask_guardian(gift, gift.expires_at_ms - self._rules.confirm_window_ms)
        except ClearingUnavailable:
            log.warning("a guardian could not be asked now; recovery asks", extra={"gift": gift.gift_id})
        return dataclasses.replace(gift, state=GiftState.PENDING)

    async def ask_guardian(self, gift: GiftRecord, until_ms: int) -> bool:
        """Put the request in the guardian's stream (once per gift; True when asked now),
        then take the ward's ``ask`` entry off its due queue. ``until_ms``: the end of the
        guardian's window, shown to the guardian as the gift's expiry."""
        guardian = gift.guardian
        if not guardian:
            return False
        shown = _guardian_view(gift, GiftState.PENDING, until_ms)
        asked = await self.step("guardian_ask", guardian, self._clock(),
                                {"gid": gift.gift_id, "g": guardian, "gtag": tag_of(guardian), "gift": shown,
                                 "dead": await self._dead_nodes()})
        await guarded(self._redis.zrem(self._keys.due(tag_of(gift.recipient)), f"ask|{gift.recipient}|{gift.gift_id}"))
        return bool(asked.get("asked"))

    async def guardian_answer(self, gift_id: str, guardian: str, ward: str, approve: bool, app: str = "main"
                              ) -> Resolution:
        """The ward's guardian approves (the gift becomes the ward's offer, its window starting
        now) or rejects (declined: the sender is refunded) a gift awaiting them. The same
        answer twice is ``Resolution(changed=False)``; refusals: GIFT_NOT_FOUND, NOT_GUARDIAN,
        ALREADY_RESOLVED (the other answer was given), GIFT_EXPIRED. The guardian's request
        rate lives in their own slot, not the ward's: the caller counts it (the gateway does,
        as for any request that is not a gift's own)."""
        if not is_valid_id(gift_id) or not is_valid_id(ward):
            raise Refused(Refusal.GIFT_NOT_FOUND)
        if not approve:
            resolution = await self._resolve(gift_id, ward, "reject", app, None, by=guardian)
        else:
            args = {"gid": gift_id, "r": ward, "rtag": tag_of(ward), "by": guardian, "dead": await self._dead_nodes()}
            reply = await self._lua.run("guardian_approve", slot_of(ward), self._keys.user(ward), self._clock(), args,
                                        emits=True, durable=True)
            resolution = Resolution(gift_from_map(reply["gift"]), changed=bool(reply["changed"]))
        await self._settle_request(guardian, resolution.gift)
        return resolution

    async def _settle_request(self, guardian: str, gift: GiftRecord) -> None:
        """Tell the guardian's other devices that the request is answered (guardian_settle.lua
        on the guardian's slot, once per gift). Runs after the answer itself, also for a
        repeated answer, so a node that stopped between the two is made good by the next
        answer from any device; if this step fails the answer still stands and the request
        stays listed until then or until the guardian's window ends."""
        shown = _guardian_view(gift, gift.state, gift.expires_at_ms)
        try:
            await self.step("guardian_settle", guardian, self._clock(),
                            {"g": guardian, "gtag": tag_of(guardian), "ward": gift.recipient, "gid": gift.gift_id,
                             "gift": shown, "dead": await self._dead_nodes()})
        except ClearingUnavailable:
            log.warning("a guardian's devices could not be told of an answer now", extra={"gift": gift.gift_id})

    async def guardian_requests(self, guardian: str, after: tuple[int, str, str] | None = None, limit: int = 64
                                ) -> tuple[list[GiftRecord], tuple[int, str, str] | None]:
        """A page of the requests still waiting for ``guardian``'s answer, soonest end of the
        guardian's window first (each gift as the ``guardian`` event shows it), and the cursor
        of the next page (None: this was the last): the last request's (end of window, ward,
        gift id). ``after``: the cursor a page returned."""
        after_ms, member = (after[0], f"{after[1]}|{after[2]}") if after is not None else (0, "")
        reply = await self._lua.run("guardian_open", slot_of(guardian), self._keys.user(guardian), self._clock(),
                                    {"g": guardian, "after_ms": after_ms, "after": member, "limit": max(1, limit)})
        gifts = [gift_from_map(m) for m in reply.get("gifts", ())]
        if not reply.get("more") or not gifts:
            return gifts, None
        last = gifts[-1]
        return gifts, (last.expires_at_ms, last.recipient, last.gift_id)

    async def recover_ask(self, ward: str, gift_id: str) -> bool:
        """An ``ask`` entry past its deadline: ask the guardian again (once per gift) while the
        gift still waits for them; drop the entry otherwise."""
        fields = text_hash(await guarded(self._redis.hgetall(self._keys.offer(ward, gift_id))))
        if fields.get("state") == GiftState.AWAITING_GUARDIAN.value and fields.get("guardian"):
            offer = _record(gift_id, fields)  # its expiry is the guardian's deadline
            return await self.ask_guardian(offer, offer.expires_at_ms)
        await guarded(self._redis.zrem(self._keys.due(tag_of(ward)), f"ask|{ward}|{gift_id}"))
        return False

    async def issue(self, gift_id: str, brand: str, recipient: str, kind: str, qty: int, *, campaign: str,
                    expires_at_ms: int) -> GiftRecord:
        """Offer ``qty`` cards of a brand's custom ``kind`` from the brand's account to
        ``recipient`` for ``campaign`` (clearing/campaigns.py), open until ``expires_at_ms``.

        The same two-phase gift as :meth:`reserve`, on the same paths, with the campaign's
        rules instead of the friends' (gift_send.lua): no follow, daily or online rule, no
        festival price, no newcomer sponsor; the recipient may be offline and sees the offer
        when it connects. Idempotent by ``gift_id`` like any gift. Declined or expired, the
        cards go back to the brand.
        """
        if not is_valid_id(gift_id) or not is_valid_id(campaign):
            raise Refused(Refusal.BAD_REQUEST, "gift and campaign ids are 1-64 characters of A-Z a-z 0-9 _ . : -")
        now = self._clock()
        if expires_at_ms <= now:
            raise Refused(Refusal.GIFT_EXPIRED, "the campaign's window has closed")
        precheck = (Refusal.SELF_GIFT.value if brand == recipient else
                    Refusal.BAD_QUANTITY.value if not 1 <= qty <= self._rules.max_qty_per_gift else "")
        base = 0 if precheck else qty * self._rules.units_per_card
        a: dict[str, Any] = {
            **self._constant, "gid": gift_id, "s": brand, "r": recipient, "kind": kind, "qty": qty,
            "base": base, "cost": base, "day": CAMPAIGN_DAY, "app": "main", "stag": tag_of(brand),
            "rtag": tag_of(recipient), "dead": await self._dead_nodes(), "camp": campaign,
            "window": expires_at_ms - now,
        }
        if precheck:
            a["pre"] = precheck
        parties = [slot_of(brand), slot_of(recipient)]
        if not self.force_saga and self._topology.colocated(parties):
            try:
                reply = await self._lua.run("send", parties[0], self._keys.user(brand), now, {**a, **NO_LIMIT_ARGS},
                                            emits=True, durable=True)
                return gift_from_map(reply["gift"])
            except rx.ResponseError as exc:
                if not _moved_apart(exc):
                    raise
        return await SendSaga(self, a, now).run()

    async def _send_args(self, snapshot: SettingsSnapshot, now: int, gift_id: str, sender: str, recipient: str,
                         kind: str, qty: int, app: str, quote_id: str) -> dict[str, Any]:
        precheck = self._precheck(sender, recipient, kind, qty)
        base = qty * self._rules.units_per_card if not precheck else 0
        festival = snapshot.festival_at(now)
        cost = -(-base * festival.permille // 1000) if festival else base
        held = self._args_of(snapshot)
        # The rules' constants, the consent versions and the guardian rules come built.
        a: dict[str, Any] = {
            **held.send, "gid": gift_id, "s": sender, "r": recipient, "kind": kind, "qty": qty,
            "base": base, "cost": cost, "day": self._days(now), "app": app,
            "stag": tag_of(sender), "rtag": tag_of(recipient),
        }
        dead = await self._dead_nodes()
        if dead:  # none is the common case: an absent list reads as empty (lib.lua live_nodes)
            a["dead"] = dead
        if precheck:
            a["pre"] = precheck
        if festival:
            a["festival"] = festival.festival_id
        if quote_id:
            a["quote"] = quote_id
        art = held.art(kind)
        if art:
            a["skins"] = art
        if held.promo is not None and held.promo_account not in (sender, recipient):
            a.update(held.promo)
        return a

    def _precheck(self, sender: str, recipient: str, kind: str, qty: int) -> str:
        """The refusals that need no Redis; the script raises them after its idempotency
        check (and remembers nothing for them)."""
        if sender == recipient:
            return Refusal.SELF_GIFT.value
        if kind not in self._kinds:
            return Refusal.UNKNOWN_KIND.value
        if not 1 <= qty <= self._rules.max_qty_per_gift:
            return Refusal.BAD_QUANTITY.value
        return ""

    # ================================================================ answer and expiry
    async def accept(self, gift_id: str, by_user: str, app: str = "main", *, sender_hint: str | None = None
                     ) -> Resolution:
        """``app``: where the recipient answers from (its perks apply). ``sender_hint``: the
        gift's sender when the caller knows it (the offer it pushed): on a cluster it lets a
        gift whose sides share a node take the one-script path."""
        return await self._resolve(gift_id, by_user, "accept", app, sender_hint)

    async def decline(self, gift_id: str, by_user: str, app: str = "main", *, sender_hint: str | None = None
                      ) -> Resolution:
        return await self._resolve(gift_id, by_user, "decline", app, sender_hint)

    async def _resolve(self, gift_id: str, recipient: str, event: str, app: str, sender_hint: str | None,
                       answering: bool = True, by: str | None = None) -> Resolution:
        if not is_valid_id(gift_id):
            raise Refused(Refusal.GIFT_NOT_FOUND)
        now = self._clock()
        snapshot = await self._settings.get()
        held = self._args_of(snapshot)
        # The constants, the perks and (to an accept) the consent versions come built.
        a: dict[str, Any] = {
            **(held.accept if event == "accept" else held.answer), "gid": gift_id, "r": recipient, "event": event,
            "rapp": app, "dead": await self._dead_nodes(),
        }
        if answering:
            # A guardian's rate is in their own slot, which the ward's scripts cannot reach.
            a.update(by=by or recipient, **(self._answer_rate if by is None else {}))
        if event == "accept":
            a.update(held.lucky(recipient, gift_id, self._rules.units_per_card))
        if self._fast_resolve(recipient, sender_hint):
            try:
                reply = await self._lua.run("resolve", slot_of(recipient), self._keys.user(recipient), now, a,
                                            emits=True, durable=True)
                return Resolution(gift_from_map(reply["gift"]), changed=bool(reply["changed"]))
            except rx.ResponseError as exc:
                if not _moved_apart(exc):
                    raise
        return await ResolveSaga(self, a, now).run()

    def _fast_resolve(self, recipient: str, sender: str | None) -> bool:
        if self.force_saga:
            return False
        if sender is None:
            # Without the sender, only a topology with one node can tell.
            return len(self._topology.nodes()) == 1
        # The payer is not known before the offer half is read. A gift paid by the promotion
        # account on another node fails the script at its first read of the payer's hold,
        # before any write (resolve.lua), and takes the saga.
        return self._topology.colocated([slot_of(recipient), slot_of(sender)])

    async def decline_for_erasure(self, gift_id: str, recipient: str, sender: str) -> None:
        """Decline a pending gift on its recipient's behalf, as an erasure does
        (clearing/erasure.py): not the recipient's request, so no rate is taken; a gift
        already resolved is left as it is. A gift still awaiting the recipient's guardian is
        not offered yet, so nobody can decline it but the guardian (gift_answer.lua): it is
        rejected as by that guardian, the sender refunded and the guardian's request settled."""
        fields = text_hash(await guarded(self._redis.hgetall(self._keys.offer(recipient, gift_id))))
        guardian = fields.get("guardian", "")
        awaiting = fields.get("state") == GiftState.AWAITING_GUARDIAN.value and is_valid_id(guardian)
        try:
            if awaiting:
                # `by` names the guardian the script checks; a guardian's rate is never taken here.
                resolution = await self._resolve(gift_id, recipient, "reject", "main", sender, by=guardian)
                await self._settle_request(guardian, resolution.gift)
            else:
                await self._resolve(gift_id, recipient, "decline", "main", sender, answering=False)
        except Refused as refusal:
            if refusal.code not in (Refusal.ALREADY_RESOLVED, Refusal.GIFT_EXPIRED, Refusal.GIFT_NOT_FOUND):
                raise

    async def expire(self, recipient: str, gift_id: str) -> GiftRecord | None:
        """Expire one offer past its window (the sweeper's step); None when it was not due
        or had already resolved."""
        try:
            resolution = await self._resolve(gift_id, recipient, "expire", "main", None, answering=False)
        except StepRefused as exc:
            if exc.code == "NOT_DUE":
                return None
            raise
        except Refused as refusal:
            if refusal.code in (Refusal.ALREADY_RESOLVED, Refusal.GIFT_NOT_FOUND, Refusal.GIFT_EXPIRED):
                return None
            raise
        if not resolution.changed:
            return None
        if resolution.gift.guardian:
            # Still awaiting its guardian, the request ends here; approved before, it was
            # settled by the approval and this changes nothing.
            await self._settle_request(resolution.gift.guardian, resolution.gift)
        return resolution.gift

    # ================================================================ the sagas, step by step
    async def send_saga(self, gift_id: str, sender: str, recipient: str, kind: str, qty: int, *,
                        app: str = "main", quote_id: str = "") -> SendSaga:
        """The cross-shard send of a gift, to be run step by step (tests stop it half-way)."""
        now = self._clock()
        args = await self._send_args(await self._settings.get(), now, gift_id, sender, recipient, kind, qty, app,
                                     quote_id)
        return SendSaga(self, args, now)

    async def answer_saga(self, gift_id: str, recipient: str, event: str, app: str = "main", *,
                          by: str | None = None) -> ResolveSaga:
        """The cross-shard answer (``accept`` / ``decline``, or the guardian ``by``'s
        ``reject``) of a gift, step by step."""
        snapshot = await self._settings.get()
        held = self._args_of(snapshot)
        # What _resolve gives the saga (without the rate: a test's answers are never limited).
        args = {**(held.accept if event == "accept" else held.answer), "gid": gift_id, "r": recipient,
                "by": by or recipient, "event": event, "rapp": app, "dead": await self._dead_nodes()}
        if event == "accept":
            args.update(held.lucky(recipient, gift_id, self._rules.units_per_card))
        return ResolveSaga(self, args, self._clock())

    # ================================================================ the sweeper
    async def expire_due(self, limit: int = SWEEP_LIMIT) -> list[GiftRecord]:
        """Expire up to ``limit`` offers past their window, in every slot, and finish what is
        due there (a tool's and a test's sweep; a node sweeps its share with :meth:`sweep`)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return (await self.sweep(range(SLOTS), limit)).expired

    async def sweep(self, slots: Iterable[int], limit: int = SWEEP_LIMIT) -> SweepResult:
        """Expire the offers past their window and finish the saga steps past their deadline,
        in ``slots``. Safe to run from every process at once: each step is idempotent. The
        reads of all slots go out together (one pipeline per Redis node), then the work."""
        now = self._clock()
        reads = []
        for _node, node_slots in self._topology.by_node(slots):
            for start in range(0, len(node_slots), SWEEP_CHUNK):
                chunk = node_slots[start : start + SWEEP_CHUNK]
                tags = [slot_tag(s) for s in chunk]
                reads.append(self._lua.run("due", chunk[0], self._keys.expiry(tags[0]), now,
                                           {"tags": tags, "limit": limit}))
        expiries: list[str] = []
        steps: list[str] = []
        for due in await asyncio.gather(*reads, return_exceptions=True):
            if isinstance(due, BaseException):
                if isinstance(due, rx.ResponseError) and _moved_apart(due):
                    await self._topology.refresh()  # this chunk is read again next time
                    continue
                raise due
            expiries += [str(e) for e in due.get("expired", ())]
            steps += [str(e) for e in due.get("due", ())]
        # at most ``limit`` expiries per sweep, whatever the number of queues read
        expired = [g for g in await _bounded(self._expire_entry(e) for e in expiries[:limit]) if g is not None]
        recovered = sum(await _bounded(self._recover_entry(e) for e in steps))
        return SweepResult(expired, recovered)

    async def due_slots(self, rank: int = 0, of: int = 1) -> list[int]:
        """The slots whose queues may hold something due now, by the sweep index (keys.py
        ``sweep_index``) of the Redis servers of this share: those of rank ``rank`` among
        ``of`` in the order of their names (every server when ``of`` is 1). One read per
        server, however many slots; each server's index is read by one node of ``of``, so
        the reads grow with the servers, not with servers times nodes. Index entries for
        slots a server no longer serves (a resharding moved them) are dropped; the full
        sweep finds what came with a slot to its new server."""
        now = self._clock()
        nodes = sorted(self._topology.nodes(), key=lambda n: n.name)[rank::of]

        async def read_index(node: NodeScripts) -> Any:
            # The call is made inside the task: a sweep cancelled before its reads start (a
            # node stopping) then leaves no Redis call created and never awaited.
            return await guarded(node.client.zrangebyscore(self._keys.sweep_index(node.home), "-inf", now))

        reads = [read_index(node) for node in nodes]
        found: list[int] = []
        for node, listed in zip(nodes, await asyncio.gather(*reads, return_exceptions=True), strict=True):
            if isinstance(listed, rx.ResponseError):
                if "WRONGTYPE" in str(listed):
                    # Not an index (a hand edit): the scripts note nothing in it meanwhile;
                    # the next ones start a new one, and the full sweep covers the gap.
                    log.warning("the sweep index was no sorted set; it starts again")
                    await guarded(node.client.delete(self._keys.sweep_index(node.home)))
                else:
                    await self._topology.refresh()  # the home slot moved (MOVED): read again next time
                continue
            if isinstance(listed, BaseException):
                raise listed
            stale: list[bytes] = []
            for member in listed:
                raw = member if isinstance(member, bytes) else str(member).encode()
                tag = raw.decode(errors="replace")  # what is no tag is dropped below
                slot = slot_of(tag)
                try:
                    here = slot_tag(slot) == tag and self._topology.node_for(slot) is node
                except SlotUncovered:
                    continue  # a failover in progress: ask again next time
                if here:
                    found.append(slot)
                else:
                    stale.append(raw)
            if stale:
                await guarded(node.client.zrem(self._keys.sweep_index(node.home), *stale))
        return found

    async def sweep_due(self, rank: int = 0, of: int = 1, limit: int = SWEEP_LIMIT) -> SweepResult:
        """:meth:`sweep` of the slots that the sweep index of this share's Redis servers
        lists as due (:meth:`due_slots`): what a node runs every tick (an idle deployment
        costs one read per Redis server, shared among the nodes)."""
        if not 0 <= rank < of:
            raise ValueError("rank must be in 0 .. of - 1")
        due = await self.due_slots(rank, of)
        if not due:
            return SweepResult([], 0)
        return await self.sweep(due, limit)

    async def _expire_entry(self, entry: str) -> GiftRecord | None:
        recipient, _, gift_id = entry.partition("|")
        try:
            return await self.expire(recipient, gift_id)
        except (Refused, StepRefused) as exc:
            log.error("an offer in the expiry queue could not expire", extra={"gift": gift_id, "reason": str(exc)})
            return None

    async def _recover_entry(self, entry: str) -> bool:
        try:
            return await self.recover(entry)
        except (Refused, StepRefused) as exc:
            log.error("a due step could not be finished", extra={"entry": entry, "reason": str(exc)})
            return False

    async def recover(self, entry: str) -> bool:
        """Finish or undo one step left due (``<step>|<user>|<id>``); True when it acted."""
        step, _, rest = entry.partition("|")
        if step == "admit":
            recipient, _, gift_id = rest.partition("|")
            return await SendSaga.recover_admission(self, recipient, gift_id)
        if step in ("settle", "answered"):
            recipient, _, gift_id = rest.partition("|")
            return await ResolveSaga.recover(self, recipient, gift_id, step)
        if step == "ask":
            ward, _, gift_id = rest.partition("|")
            return await self.recover_ask(ward, gift_id)
        if step == "sponsor":
            payer, _, sender_gift = rest.partition("|")
            sender, _, gift_id = sender_gift.partition("|")
            return await SendSaga.recover_sponsorship(self, payer, sender, gift_id)
        if step == "mentor":
            apprentice, _, mentor = rest.partition("|")
            from clearing.scenes import recover_mentor_binding  # scenes builds on gifts

            return await recover_mentor_binding(self, apprentice, mentor)
        log.error("unknown due entry", extra={"entry": entry})
        return False

    # ================================================================ reads
    async def get_gift(self, gift_id: str, user: str | None = None) -> GiftRecord | None:
        """A gift by id, as it stands: its recipient's half decides the state. ``user`` is
        its sender or recipient; without it every shard is scanned (operators only)."""
        if not is_valid_id(gift_id):
            return None
        users = [user] if user is not None else await self._owners_of(gift_id)
        for who in users:
            offer = await guarded(self._redis.hgetall(self._keys.offer(who, gift_id)))
            if offer and text_hash(offer).get("state") not in ("admitted", "void"):
                return _record(gift_id, offer)
            sent = await guarded(self._redis.hgetall(self._keys.gift(who, gift_id)))
            if sent:
                fields = text_hash(sent)
                if fields.get("state") == "void":
                    continue
                decided = await guarded(self._redis.hgetall(self._keys.offer(fields["recipient"], gift_id)))
                decided_fields = text_hash(decided)
                if decided_fields.get("state") not in (None, "admitted", "void"):
                    return _record(gift_id, decided)
                return _record(gift_id, sent)
        return None

    async def _owners_of(self, gift_id: str) -> list[str]:
        owners: list[str] = []
        for name in (f"offer:{gift_id}", f"gift:{gift_id}"):
            async for key in self._redis.scan_iter(match=self._keys.pattern(name), count=1000):
                owners.append(self._keys.tag_in(key.decode()))
        return owners

    async def refused_send(self, gift_id: str, sender: str) -> RefusedSend | None:
        """The refusal remembered for ``sender``'s ``gift_id``, while it is (see :meth:`reserve`)."""
        key = self._keys.refused(sender, gift_id)
        async with guarded_pipeline(self._redis, transaction=True) as pipe:
            pipe.hmget(key, "code", "fp")
            pipe.pttl(key)
            (code, fingerprint), ttl = await guarded(pipe.execute())
        if code is None or fingerprint is None:
            return None
        recipient, rest = fingerprint.decode().split("|", 1)  # ids hold no "|"
        kind, qty = rest.rsplit("|", 1)
        return RefusedSend(gift_id, code.decode(), sender, recipient, kind, int(qty), max(0, int(ttl)))

    async def held_in(self, slots: Iterable[int]) -> tuple[int, dict[str, int]]:
        """Offers pending and units held per kind in ``slots`` (one call per chunk of one
        Redis node's slots): what a node reports for its share (the metrics)."""
        pending, held = 0, dict.fromkeys(self._rules.card_kinds, 0)
        reads = []
        for _node, node_slots in self._topology.by_node(slots):
            for start in range(0, len(node_slots), SWEEP_CHUNK):
                chunk = node_slots[start : start + SWEEP_CHUNK]
                tags = [slot_tag(s) for s in chunk]
                reads.append(self._lua.run("gauges", chunk[0], self._keys.totals(tags[0]), self._clock(),
                                           {"tags": tags}))
        for reply in await asyncio.gather(*reads):
            pending += int(reply.get("pending", 0))
            for kind, units in (reply.get("held") or {}).items():
                held[str(kind)] = held.get(str(kind), 0) + int(units)
        return pending, held

    async def refusers_of(self, gift_id: str) -> list[str]:
        """The senders who were refused a send with this id, while it is remembered (every
        shard scanned: operators only)."""
        if not is_valid_id(gift_id):
            return []
        return [self._keys.tag_in(key.decode()) async for key in
                self._redis.scan_iter(match=self._keys.pattern(f"refused:{gift_id}"), count=1000)]

    async def pending_for(self, recipient: str) -> list[GiftRecord]:
        """Offers still waiting for ``recipient``'s answer, soonest expiry first."""
        reply = await self._lua.run("pending", slot_of(recipient), self._keys.inbox(recipient), self._clock(),
                                    {"u": recipient})
        return [gift_from_map(m) for m in reply.get("gifts", ())]

    async def balances(self, user_id: str) -> Balances:
        """Available and held amounts per kind, read at one instant (MULTI)."""
        async with guarded_pipeline(self._redis, transaction=True) as pipe:
            pipe.hgetall(self._keys.balance(user_id))
            pipe.hgetall(self._keys.held(user_id))
            available, held = await guarded(pipe.execute())
        return balances_from(text_hash(available), text_hash(held), self._rules.card_kinds)

    # ================================================================ for the sagas
    async def step(self, name: Any, user: str, now: int, args: dict[str, Any], *, emits: bool = True,
                   durable: bool = True) -> dict[str, Any]:
        """Run one saga step on ``user``'s slot.

        A step stopped by a key of its slot that is not on the node (the slot half-way to
        another shard: "non local key") wrote nothing (its scripts touch what they write
        before the first write, lib.lua touch()): it is :class:`SlotMoving`, retried with
        the same ids once the slot has moved."""
        try:
            return await self._lua.run(name, slot_of(user), self._keys.user(user), now, args, emits=emits,
                                       durable=durable)
        except rx.ResponseError as exc:
            if not _moved_apart(exc):
                raise
            raise SlotMoving(f"slot moving: {exc}") from exc

    @property
    def keys(self) -> KeySchema:
        return self._keys

    @property
    def gift_rules(self) -> GiftRules:
        return self._rules

    @property
    def redis(self) -> Any:
        return self._redis

    @property
    def rules(self) -> GiftRules:
        return self._rules

    @property
    def lua(self) -> ScriptRunner:
        return self._lua

    def now(self) -> int:
        return self._clock()

    async def dead_nodes(self) -> list[str]:
        return await self._dead_nodes()

    @property
    def constant_args(self) -> dict[str, Any]:
        return self._constant


async def _bounded(calls: Iterable[Awaitable[T]], at_once: int = 64) -> list[T]:
    """Run ``calls`` concurrently, ``at_once`` at a time (their scripts share pipelines)."""
    out: list[T] = []
    pending = list(calls)
    for start in range(0, len(pending), at_once):
        out += await asyncio.gather(*pending[start : start + at_once])
    return out


def _record(gift_id: str, raw: Any) -> GiftRecord:
    fields = text_hash(raw)
    return gift_from_map({"gift_id": gift_id, **fields})


def _moved_apart(exc: rx.ResponseError) -> bool:
    """The reply of a one-node script whose slots are no longer on one node: it ran no
    write (every key is read before the first write, or the call was refused up front)."""
    text = str(exc)
    return isinstance(exc, rx.ClusterCrossSlotError) or "non local key" in text or "CROSSSLOT" in text


# ===================================================================== the sagas
#: Each named argument is decoded by every script call (lib.lua begin()), so the send's
#: steps that read few of them are given only those (gift_send.lua): what admit does not
#: read (the sender's rules, the price, the promotion), and all that offer reads. Recovery's
#: calls keep the whole map; they are rare.
_NOT_FOR_ADMIT = frozenset({"base", "cost", "memo_ms", "nc_age", "nc_free", "promo", "ptag", "send_limit",
                            "vip_bonus", "rl_daily", "rl_rooms", "window", "pointlog_max", "festival", "quote",
                            "dev"})
_FOR_OFFER = ("gid", "r", "rtag", "window", "saga_ms", "dead")
#: What reserve does not read: R's rules and R's side of the guardian rule and card art
#: (admit's), the recovery deadline, the points log, the dead nodes (it tells nobody).
_NOT_FOR_RESERVE = frozenset({"recv_limit", "scope", "saga_ms", "pointlog_max", "dead", "guard", "skins"})


class SendSaga:
    """admit@R -> reserve@S [-> sponsor@P -> reserve@S] -> offer@R (see gift.lua)."""

    def __init__(self, clearing: Clearing, args: dict[str, Any], now: int) -> None:
        self.c = clearing
        self.a = args
        self.now = now
        self.admitted = False
        #: The recipient side's verdict on the guardian rule (admit's reply), for reserve.
        self.rguard: Any = None

    async def run(self) -> GiftRecord:
        rcode = await self.admit()
        send = await self.reserve(rcode)
        return await self.offer(send)

    # Each step is a method so that a test can stop between any two, as a crash would.
    async def admit(self) -> str | None:
        """The recipient's side; its refusal code (nothing written), or None (admitted)."""
        if "pre" in self.a:
            return None
        try:
            admit = await self.c.step("admit", self.a["r"], self.now,
                                      {k: v for k, v in self.a.items() if k not in _NOT_FOR_ADMIT}, emits=False)
        except Refused as refusal:
            return refusal.code.value
        self.admitted = admit["state"] == "admitted"
        self.rguard = admit.get("guard")
        return None

    def _reserve_args(self, rcode: str | None) -> dict[str, Any]:
        """reserve's arguments: what it reads (an absent rcode or rguard reads as nil)."""
        args = {k: v for k, v in self.a.items() if k not in _NOT_FOR_RESERVE}
        if rcode is not None:
            args["rcode"] = rcode
        if self.rguard is not None:
            args["rguard"] = self.rguard
        return args

    async def reserve(self, rcode: str | None) -> dict[str, Any]:
        """The sender's side (and the promotion account's, for a newcomer's free gift); on a
        refusal the admission is voided and the refusal raised. Returns the send half."""
        a, c = self.a, self.c
        try:
            reply = await c.step("reserve", a["s"], self.now, self._reserve_args(rcode), emits=False)
            if reply.get("need_sponsor"):
                reply = await self._sponsored(rcode, int(reply["cost"]))
        except Refused as refusal:
            if self.admitted:
                await c.step("void", a["r"], self.now, {**a, "why": refusal.code.value}, emits=False)
            raise
        return dict(reply["send"])

    async def _sponsored(self, rcode: str | None, cost: int) -> dict[str, Any]:
        """Ask the promotion account to hold the gift (only if it will be sent: R admitted
        it), then reserve again knowing whether it does; give the hold back if unused."""
        a, c = self.a, self.c
        sponsor = await c.step("sponsor", a["promo"], self.now, {**a, "cost": cost, "hold": rcode is None},
                               emits=False)
        held = bool(sponsor["covers"]) and rcode is None
        try:
            reply = await c.step("reserve", a["s"], self.now,
                                 {**self._reserve_args(rcode), "sponsor": "yes" if sponsor["covers"] else "no"},
                                 emits=False)
        except Refused:
            if held:
                await c.step("release", a["promo"], self.now, a, emits=False)
            raise
        if held and reply["send"].get("payer") != a["promo"]:
            await c.step("release", a["promo"], self.now, a, emits=False)
        return reply

    async def offer(self, send: dict[str, Any]) -> GiftRecord:
        """The recipient's side becomes an offer, pushed to the recipient's devices."""
        args = {k: self.a[k] for k in _FOR_OFFER if k in self.a}
        offered = await self.c.step("offer", self.a["r"], self.now, {**args, "send": _send_fields(send)})
        gift = offered["gift"]
        return gift_from_map({**_public(send), "state": gift["state"], "resolved_at_ms": gift.get("resolved_at_ms")})

    @staticmethod
    async def recover_admission(c: Clearing, recipient: str, gift_id: str) -> bool:
        """An admission past its deadline: offer it if the sender's side reserved it, void it
        otherwise (after a tombstone takes the id at the sender, so a late reserve cannot)."""
        fields = text_hash(await guarded(c.redis.hgetall(c.keys.offer(recipient, gift_id))))
        if fields.get("state") != "admitted":
            await guarded(c.redis.zrem(c.keys.due(tag_of(recipient)), f"admit|{recipient}|{gift_id}"))
            return False
        now = c.now()
        a = {**c.constant_args, "gid": gift_id, "s": fields["sender"], "r": recipient, "kind": fields["kind"],
             "qty": int(fields["qty"]), "rtag": tag_of(recipient), "stag": tag_of(fields["sender"]),
             "dead": await c.dead_nodes()}
        probe = await c.step("probe", fields["sender"], now, a, emits=False)
        send = probe.get("send")
        if send is not None and send.get("state") != "void":
            await c.step("offer", recipient, now, {**a, "send": _send_fields(send)})
        else:
            why = probe.get("refused") or (send or {}).get("why") or Refusal.SEND_ABORTED.value
            await c.step("void", recipient, now, {**a, "why": why}, emits=False)
        return True

    @staticmethod
    async def recover_sponsorship(c: Clearing, payer: str, sender: str, gift_id: str) -> bool:
        """A promotion hold past the gift's window: release it unless the gift it paid for
        exists and is still to be settled (then look again later)."""
        held = text_hash(await guarded(c.redis.hgetall(c.keys.sponsorship(payer, f"{sender}|{gift_id}"))))
        due_key, entry = c.keys.due(tag_of(payer)), f"sponsor|{payer}|{sender}|{gift_id}"
        if held.get("state") != "held":
            await guarded(c.redis.zrem(due_key, entry))
            return False
        sent = text_hash(await guarded(c.redis.hgetall(c.keys.gift(sender, gift_id))))
        now = c.now()
        if sent.get("payer") == payer and sent.get("state") == "pending":
            await guarded(c.redis.zadd(due_key, {entry: now + int(c.constant_args["saga_ms"])}, xx=True))
            return False
        a = {**c.constant_args, "gid": gift_id, "s": sender, "promo": payer, "ptag": tag_of(payer)}
        if not sent:
            # No send half yet: a tombstone first, so that the reserve of a late retry is
            # refused instead of counting on a hold that is about to go back.
            probe_args = {**a, "r": held.get("recipient", ""), "kind": held.get("kind", ""),
                          "qty": int(held.get("qty", "0") or 0)}
            probe = await c.step("probe", sender, now, probe_args, emits=False)
            settled = probe.get("send") or {}
            if settled.get("payer") == payer and settled.get("state") == "pending":
                return False
        await c.step("release", payer, now, a, emits=False)
        return True


class ResolveSaga:
    """answer@R -> [settle_sponsor@P ->] settle@S, or, for an accepted gift with a lucky bonus
    to pay, answer@R (decide only) -> [settle_sponsor@P ->] settle@S -> lucky@P -> close@R
    (see gift_answer.lua)."""

    def __init__(self, clearing: Clearing, args: dict[str, Any], now: int) -> None:
        self.c = clearing
        self.a = args
        self.now = now

    async def run(self) -> Resolution:
        gift, changed, code = await self.answer()
        record = await self.finish(gift)
        if code:
            raise Refused(Refusal(code), gift=record)
        return Resolution(record, changed=changed)

    # Each step is a method so that a test can stop between any two, as a crash would.
    async def answer(self) -> tuple[dict[str, Any], bool, str | None]:
        """answer@R: the offer half decides and, unless a lucky bonus is to be paid, R's side
        is done at once (``closed`` 1 with ``owed`` 1: the sender's side still to settle).
        Returns (the gift with its saga fields, changed, a refusal to raise once the gift is
        settled: GIFT_EXPIRED / ALREADY_RESOLVED)."""
        a = self.a
        perks = a["perks"]
        # answer@R credits R only in the call that decides (apply_answered), with the perks of
        # the app answering now (stored as the gift's rapp) and only the joint flag of the
        # sender's app: the other apps' perks would be decoded for nothing (perks_of reads an
        # absent app as no perks). A later step gets those of the gift's own apps (_perks).
        # The deadline of the step due after it as text, computed here: in the script each of
        # its two uses would format the sum (a %.17g conversion in redis.call).
        kept = {app: p for app, p in perks["apps"].items() if app == a["rapp"] or p[2]}
        args = {**a, "perks": {"per_card": perks["per_card"], "apps": kept},
                "due_at": str(self.now + int(self.c.constant_args["saga_ms"]))}
        decided = await self.c.step("answer", a["r"], self.now, args, emits=True)
        return dict(decided["decided"]), bool(decided["changed"]), decided.get("code")

    async def finish(self, gift: dict[str, Any]) -> GiftRecord:
        """What is left after answer@R, by how far the offer half got (``closed``, ``owed``)."""
        if _owed(gift):
            await self.settle(gift)
            await self.answered(gift)
            return gift_from_map(_public(gift))
        if int(gift.get("closed", 0)) == 1:
            return gift_from_map(_public(gift))
        await self.settle(gift)
        return await self.close(gift)

    # Each step after answer@R gets only the arguments its script reads (the rate, the
    # consent versions and the lucky draws are answer@R's alone): every named argument is
    # decoded by every call, and only the perks that can change what the step awards
    # (gift_answer.lua perks_of reads an absent app as no perks).
    def _perks(self, gift: dict[str, Any]) -> dict[str, Any]:
        """close@R's: those of the two apps the offer half records (credit_recipient reads
        the answering app's multiplier and joint flag and the sending app's joint flag)."""
        perks = self.a["perks"]
        apps = perks["apps"]
        return {"per_card": perks["per_card"],
                "apps": {app: apps[app] for app in (gift.get("app", "main"), gift.get("rapp", "main")) if app in apps}}

    def _settle_perks(self) -> dict[str, Any]:
        """settle@S's: it reads the sender's bonus and joint flag of the *send half's* app,
        which the saga never reads and which may not be the offer half's (a send stopped after
        admit@R and retried from another app writes its send half with the retry's app), and
        the answering app's joint flag. An app with no bonus and no joint flag reads as an
        absent one there, so those with either are all it needs, whatever the send half says."""
        perks = self.a["perks"]
        return {"per_card": perks["per_card"], "apps": {app: p for app, p in perks["apps"].items() if p[0] or p[2]}}

    async def settle(self, gift: dict[str, Any]) -> None:
        """The payer's hold and the send half follow the decision (once each), and the
        lucky bonus leaves its payer (once)."""
        if int(gift.get("closed", 0)) == 1 and not _owed(gift):
            return
        c = self.c
        ids = {"gid": gift["gift_id"], "s": gift["sender"], "to": gift["state"]}
        payer = gift.get("payer")
        if payer:
            await c.step("settle_sponsor", payer, self.now, {**ids, "promo": payer, "ptag": tag_of(payer)},
                         emits=False)
        if gift["state"] == GiftState.ACCEPTED.value:  # the points and perks of an accepted gift
            ids.update(rapp=gift.get("rapp", "main"), perks=self._settle_perks(), pointlog_max=self.a["pointlog_max"])
        await c.step("settle", gift["sender"], self.now, {**ids, "dead": self.a["dead"]})
        await self.pay_lucky(gift)

    async def answered(self, gift: dict[str, Any]) -> None:
        """settle@S is done for a gift answered at R: settled.lua starts the offer half's
        retention, drops its ``owed`` marker and its ``answered`` entry in R's due queue, in
        one script call (all or none) that shares the node's pipeline with the calls around
        it (clearing/pipelining.py; a MULTI went as a transaction of its own, on its own
        connection). Lost to a crash, the marker and the entry stay for recovery, which
        settles again (idempotent, nothing changes) and calls it again."""
        recipient = gift["recipient"]
        try:
            await self.c.step("settled", recipient, self.now,
                              {"gid": gift["gift_id"], "r": recipient, "rtag": tag_of(recipient),
                               "retention": str(self.c.rules.gift_retention_ms)},
                              emits=False, durable=False)
            gift.pop("owed", None)
        except ClearingUnavailable:
            log.warning("a settled answer stays due; recovery drops it", extra={"gift": gift["gift_id"]})
        except rx.ResponseError as exc:
            # R's slot half-way to another shard (a key of it already moved): the script
            # stopped at that key, and what it did before is idempotent and what recovery
            # does again. The answer itself is done: it may not fail for its clean-up.
            if not _moved_apart(exc):
                raise
            log.warning("a settled answer stays due while its slot moves; recovery drops it",
                        extra={"gift": gift["gift_id"]})

    async def pay_lucky(self, gift: dict[str, Any]) -> None:
        """An accepted gift's lucky bonus at its payer (lucky.lua); what was paid goes to close."""
        bonus = int(gift.get("lucky_bonus") or 0)
        if gift.get("state") != "accepted" or "lucky_table" not in gift or "lucky_paid" in gift:
            return
        if bonus == 0:
            gift["lucky_paid"] = 0
            return
        payer = str(gift["lucky_payer"])
        paid = await self.c.step("lucky", payer, self.now,
                                 {"gid": gift["gift_id"], "s": gift["sender"], "r": gift["recipient"],
                                  "kind": gift["kind"], "bonus": bonus, "payer": payer,
                                  "ptag": gift.get("lucky_ptag") or tag_of(payer)}, emits=False)
        gift["lucky_paid"] = int(paid["paid"])

    async def close(self, gift: dict[str, Any]) -> GiftRecord:
        """The three-step path's last step: the recipient is credited (when accepted, with the
        lucky bonus paid) and told; nothing is due any more."""
        if int(gift.get("closed", 0)) != 0:
            return gift_from_map(_public(gift))
        args = {"gid": gift["gift_id"], "r": gift["recipient"], "perks": self._perks(gift), "dead": self.a["dead"],
                "pointlog_max": self.a["pointlog_max"]}
        if "lucky_paid" in gift:
            args["lucky_paid"] = int(gift["lucky_paid"])
        closed = await self.c.step("close", gift["recipient"], self.now, args)
        return gift_from_map(closed["gift"])

    @staticmethod
    async def recover(c: Clearing, recipient: str, gift_id: str, step: str = "settle") -> bool:
        """A ``settle`` entry (decided, the three-step path) or an ``answered`` entry (R's
        side done) past its deadline: run what is left; drop the entry when nothing is."""
        fields = text_hash(await guarded(c.redis.hgetall(c.keys.offer(recipient, gift_id))))
        due = fields.get("closed") == "0" if step == "settle" else _owed(fields)
        if not fields or not due:
            await guarded(c.redis.zrem(c.keys.due(tag_of(recipient)), f"{step}|{recipient}|{gift_id}"))
            return False
        gift: dict[str, Any] = {"gift_id": gift_id, **fields}
        snapshot = await c.settings.get()
        saga = ResolveSaga(c, {**c.constant_args, "perks": perks_of(snapshot), "dead": await c.dead_nodes()}, c.now())
        await saga.finish(gift)
        return True


def _owed(gift: Mapping[str, Any]) -> bool:
    """Answered at R (``closed`` 1), the sender's side still to settle (``owed`` 1): the
    answered state kept out of ``closed`` so that the previous release's scripts read it as
    closed and never credit R again (docs/architecture.md, upgrading)."""
    return str(gift.get("owed", "")) == "1" and str(gift.get("closed", "")) == "1"


_SEND_FIELDS = ("cost", "amount", "created_at_ms", "expires_at_ms", "payer", "ptag", "festival", "room", "guardian",
                "gwin")
_PUBLIC = ("gift_id", "sender", "recipient", "kind", "qty", "cost", "amount", "state", "created_at_ms", "guardian",
           "expires_at_ms", "resolved_at_ms", "payer", "app", "festival", "room", "lucky_table", "lucky_version",
           "lucky_seed", "lucky_bonus", "lucky_paid", "skin", "camp")


def _guardian_view(gift: GiftRecord, state: GiftState, expires_at_ms: int) -> dict[str, Any]:
    """The gift as its guardian sees it: no guardian field (it is them), ``expires_at_ms``
    the end of their window while they are asked."""
    return {"gift_id": gift.gift_id, "sender": gift.sender, "recipient": gift.recipient, "kind": gift.kind,
            "qty": gift.qty, "cost": gift.cost, "amount": gift.amount, "state": state.value,
            "created_at_ms": gift.created_at_ms, "expires_at_ms": expires_at_ms, "app": gift.app}


def _send_fields(send: dict[str, Any]) -> dict[str, Any]:
    return {k: send[k] for k in _SEND_FIELDS if send.get(k) is not None}


def _public(gift: dict[str, Any]) -> dict[str, Any]:
    return {k: gift[k] for k in _PUBLIC if gift.get(k) is not None}


__all__ = ["Clearing", "SweepResult"]
