"""Gifts as two-phase transfers: reserve (hold the cost), then accept, decline or expire.

The gift id is chosen by the client before its first try and is the idempotency key: a
retry with the same payload gets the stored record back, in whatever state it is now; the
same id with another payload is refused (IDEMPOTENCY_CONFLICT). Each operation is one Lua
script, so one EVALSHA round trip, atomic, with every check before the first write.

Refusals of :meth:`Clearing.reserve`, in the order they are checked::

    RATE_LIMITED (with ``user_rate``: the sender's requests over every node),
    IDEMPOTENCY_CONFLICT, SELF_GIFT, UNKNOWN_KIND, BAD_QUANTITY, UNKNOWN_USER (either user),
    SENDER_BANNED, RECIPIENT_BANNED, NOT_VERIFIED (sender), BLOCKED (either way),
    NOT_MUTUAL_3D, LIMIT_DAILY_SEND (limit + VIP bonus), LIMIT_DAILY_RECEIVE (per recipient
    or per pair), INSUFFICIENT_BALANCE, RECIPIENT_OFFLINE

plus BAD_REQUEST for a gift id that is not 1-64 characters of ``A-Za-z0-9_.:-``. A refusal
from UNKNOWN_USER on is remembered under the gift id for ``rules.refusal_memory_ms`` (a copy
of the request answers the same, another payload IDEMPOTENCY_CONFLICT; a new attempt takes
a new id); SELF_GIFT, UNKNOWN_KIND and BAD_QUANTITY follow from the request alone and write
nothing. Answering (:meth:`~Clearing.accept` / :meth:`~Clearing.decline`): RATE_LIMITED
(with ``user_rate``: the answering user's requests), GIFT_NOT_FOUND, NOT_RECIPIENT, then
GIFT_EXPIRED (the window passed: the gift is expired by this very call
and refunded, or was already expired) or ALREADY_RESOLVED (the other final state); the same
answer twice is ``Resolution(changed=False)``. See ``scripts/reserve.lua`` and
``scripts/resolve.lua`` for the exact writes.

Durability: reserve, accept and decline are acknowledged to a user, so with
``Durability(wait_replicas=n)`` they return only once ``n`` replicas confirmed the write
(see ``clearing/lua.py``); otherwise they raise ClearingUnavailable, outcome unknown.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from clearing.clock import Clock, QuotaDays, wall_clock_ms
from clearing.codec import balances_from, gift_from_hash, gift_from_map, text_hash
from clearing.component import RedisComponent
from clearing.errors import Refusal, Refused
from clearing.guard import guarded
from clearing.keys import DEFAULT_KEYS, KeySchema, is_valid_id
from clearing.lua import MAX_SAFE_INT, Durability
from clearing.model import Balances, GiftRecord, GiftState, RefusedSend, Resolution
from clearing.rates import NO_LIMIT_ARGS, RateLimit
from clearing.rules import GiftRules
from clearing.scene_config import SceneConfig


class Clearing(RedisComponent):
    """The gift operations the gateway calls; one instance per process is enough."""

    def __init__(
        self,
        redis: aioredis.Redis,
        rules: GiftRules,
        keys: KeySchema = DEFAULT_KEYS,
        clock: Clock = wall_clock_ms,
        durability: Durability | None = None,
        scenes: SceneConfig | None = None,
        user_rate: RateLimit | None = None,
    ) -> None:
        if rules.max_qty_per_gift * rules.units_per_card > MAX_SAFE_INT:
            raise ValueError("max_qty_per_gift * units_per_card must stay below 2**53")
        super().__init__(redis, rules, keys, clock, durability)
        self._days = QuotaDays(rules.timezone)
        self._kinds = frozenset(rules.card_kinds)
        #: Scene defaults for the scripts while operators have stored none (scene_config.py).
        self._scene_defaults = (scenes or SceneConfig()).to_json()
        #: Each reserve and answer counts against its user's rate in its own script (rates.py).
        self._rate_args = user_rate.script_args if user_rate is not None else NO_LIMIT_ARGS
        self._reserve_rules = (
            rules.daily_send_limit,
            rules.vip_send_bonus,
            rules.daily_receive_limit,
            rules.receive_limit_scope,
            rules.follow_min_age_ms,
            rules.confirm_window_ms,
        )

    async def reserve(self, gift_id: str, sender: str, recipient: str, kind: str, qty: int, *,
                      app: str = "main", quote_id: str = "") -> GiftRecord:
        """Offer ``qty`` cards of ``kind``; the cost is held until the gift resolves.

        ``app``: where the sender is (perks on accept); ``quote_id``: a live-room quote
        (clearing/rooms.py) that prices the gift. Festival and newcomer pricing: reserve.lua.
        """
        if not is_valid_id(gift_id):
            raise Refused(Refusal.BAD_REQUEST, "gift id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        precheck = self._precheck(sender, recipient, kind, qty)
        # The base price; the script raises the cost for a festival or a quote.
        cost = qty * self._rules.units_per_card if not precheck else 0
        now = self._clock()
        day = self._days(now)
        args = (gift_id, sender, recipient, kind, qty, cost, cost, precheck, day, *self._reserve_rules,
                app, self._scene_defaults, quote_id, self._rules.refusal_memory_ms, *self._rate_args)
        reply = await self._lua.run("reserve", self._keys.gift(gift_id), now, args, emits=True, durable=True)
        return gift_from_map(reply["gift"])

    def _precheck(self, sender: str, recipient: str, kind: str, qty: int) -> str:
        """The refusals that need no Redis; the script raises them after its idempotency check."""
        if sender == recipient:
            return Refusal.SELF_GIFT.value
        if kind not in self._kinds:
            return Refusal.UNKNOWN_KIND.value
        if not 1 <= qty <= self._rules.max_qty_per_gift:
            return Refusal.BAD_QUANTITY.value
        return ""

    async def accept(self, gift_id: str, by_user: str, app: str = "main") -> Resolution:
        """``app``: where the recipient answers from (its perks apply)."""
        return await self._resolve(gift_id, by_user, GiftState.ACCEPTED, app)

    async def decline(self, gift_id: str, by_user: str, app: str = "main") -> Resolution:
        return await self._resolve(gift_id, by_user, GiftState.DECLINED, app)

    async def _resolve(self, gift_id: str, by_user: str, target: GiftState, app: str) -> Resolution:
        args = (gift_id, by_user, target.value, app, self._scene_defaults, *self._rate_args,
                self._rules.points_log_maxlen)
        reply = await self._lua.run(
            "resolve", self._keys.gift(gift_id), self._clock(), args, emits=True, durable=True,
        )
        return Resolution(gift_from_map(reply["gift"]), changed=bool(reply["changed"]))

    async def expire_due(self, limit: int = 200) -> list[GiftRecord]:
        """Expire pending gifts whose window has passed (at most ``limit``); safe to run
        from every process at once. Returns the gifts this call expired."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        reply = await self._lua.run("expire_due", self._keys.pending(), self._clock(), (limit,), emits=True)
        return _gifts(reply)

    async def get_gift(self, gift_id: str) -> GiftRecord | None:
        raw = await guarded(self._redis.hgetall(self._keys.gift(gift_id)))
        return gift_from_hash(gift_id, raw) if raw else None

    async def refused_send(self, gift_id: str) -> RefusedSend | None:
        """The refusal remembered for ``gift_id``, while it is (see :meth:`reserve`)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(self._keys.refused(gift_id), "code", "fp")
            pipe.pttl(self._keys.refused(gift_id))
            (code, fingerprint), ttl = await guarded(pipe.execute())
        if code is None or fingerprint is None:
            return None
        sender, recipient, rest = fingerprint.decode().split("|", 2)  # ids hold no "|"
        kind, qty = rest.rsplit("|", 1)
        return RefusedSend(gift_id, code.decode(), sender, recipient, kind, int(qty), max(0, int(ttl)))

    async def pending_for(self, recipient: str) -> list[GiftRecord]:
        """Offers still waiting for ``recipient``'s answer, soonest expiry first."""
        reply = await self._lua.run("pending_for", self._keys.inbox(recipient), self._clock())
        return _gifts(reply)

    async def balances(self, user_id: str) -> Balances:
        """Available and held amounts per kind, read at one instant (MULTI)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._keys.balance(user_id))
            pipe.hgetall(self._keys.held(user_id))
            available, held = await guarded(pipe.execute())
        return balances_from(text_hash(available), text_hash(held), self._rules.card_kinds)


def _gifts(reply: dict[str, Any]) -> list[GiftRecord]:
    return [gift_from_map(m) for m in reply.get("gifts", ())]
