"""Accounts and what the gift rules read about them: flags, balances, follows, blocks.

These are admin and integration operations (sign-up, verification, bans, task rewards,
the social graph), not the gift hot path; each is still one script, so it is atomic and
validated before it writes. Refusals: UNKNOWN_USER for a missing user anywhere,
USER_EXISTS, UNKNOWN_KIND, BAD_QUANTITY, and BAD_REQUEST for a malformed id, app or region, an
instant out of range (before the epoch, or in the future), or a user following or
blocking themselves.
"""

from __future__ import annotations

from typing import Any

from clearing.codec import balances_from, pairs, text_hash, user_from
from clearing.component import RedisComponent
from clearing.errors import Refusal, Refused
from clearing.guard import guarded, guarded_pipeline
from clearing.keys import APP_PATTERN, is_valid_app, is_valid_id
from clearing.lua import MAX_SAFE_INT
from clearing.model import Balances, UserRecord
from clearing.presence import Presence
from clearing.regions import DEFAULT_REGION, GENDERS, REGION_PATTERN, is_valid_region

#: How far ahead of this node's clock a given instant may be: the admin's machine and the
#: nodes keep slightly different time. Further ahead, an account would stay a newcomer and
#: a follow stay young for as long as the instant is away.
MAX_CLOCK_SKEW_MS = 60_000


def _check_region(region: str) -> None:
    if not is_valid_region(region):
        raise Refused(Refusal.BAD_REQUEST, f"region must match {REGION_PATTERN}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _flag(value: bool | None) -> str:
    return "" if value is None else str(int(value))


class Accounts(RedisComponent):
    async def create_user(
        self,
        user_id: str,
        *,
        verified: bool = False,
        vip: bool = False,
        banned: bool = False,
        created_at_ms: int | None = None,
        app: str = "main",
        region: str = DEFAULT_REGION,
    ) -> UserRecord:
        if not is_valid_id(user_id):
            raise Refused(Refusal.BAD_REQUEST, "ids must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if not is_valid_app(app):
            raise Refused(Refusal.BAD_REQUEST, f"app must match {APP_PATTERN}, as in client tokens")
        _check_region(region)
        now = self._clock()
        created = now if created_at_ms is None else self._instant("created_at_ms", created_at_ms, now)
        args = {"u": user_id, "tag": self.tag(user_id), "verified": _flag(verified), "vip": _flag(vip),
                "banned": _flag(banned), "created_at_ms": created, "app": app, "region": region}
        reply = await self._lua.run("create_user", self.slot(user_id), self._keys.user(user_id), now, args)
        return user_from(user_id, pairs(reply["user"]), self._balances([], []))

    async def set_flags(
        self,
        user_id: str,
        *,
        verified: bool | None = None,
        vip: bool | None = None,
        banned: bool | None = None,
        region: str | None = None,
        gender: str | None = None,
    ) -> UserRecord:
        """Change the given flags (and the region, the gender: an operator's acts only), leave
        the others. Gifts in flight are not touched: each keeps the rules it was sent under."""
        flags = {name: _flag(value) for name, value in (("verified", verified), ("vip", vip), ("banned", banned))
                 if value is not None}
        if region is not None:
            _check_region(region)
            flags["region"] = region
        if gender is not None:
            if gender not in GENDERS:
                raise Refused(Refusal.BAD_REQUEST, "gender is male, female or empty (not given)")
            flags["gender"] = gender
        presence = Presence(self._topology, self._rules, self._keys, self._clock, settings=self._settings)
        args = {"u": user_id, "tag": self.tag(user_id), "flags": flags, "dead": await presence.dead_nodes()}
        reply = await self._lua.run("set_flags", self.slot(user_id), self._keys.user(user_id), self._clock(), args)
        return user_from(user_id, pairs(reply["user"]), self._balances(reply["bal"], reply["held"]))

    async def link_guardian(self, ward: str, guardian: str | None, operator: str) -> UserRecord:
        """Link ``guardian`` to ``ward`` (None: unlink), an operator's act kept in the ward's
        guardian log (keys.py ``guardian_log``: who, when, from whom to whom). The guardian
        must exist and cannot be the ward; gifts already waiting keep the guardian they were
        sent to (docs/regions.md)."""
        if not is_valid_id(ward) or not is_valid_id(operator):
            raise Refused(Refusal.BAD_REQUEST, "ids must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if guardian is not None:
            if not is_valid_id(guardian) or guardian == ward:
                raise Refused(Refusal.BAD_REQUEST, "a guardian is another user's id")
            await self._other_exists(guardian)
        args = {"u": ward, "guardian": guardian or "", "operator": operator}
        reply = await self._lua.run("guardian_link", self.slot(ward), self._keys.user(ward), self._clock(), args)
        return user_from(ward, pairs(reply["user"]), self._balances(reply["bal"], reply["held"]))

    async def guardian_log(self, ward: str, count: int = 100) -> list[dict[str, str]]:
        """The newest ``count`` changes of the ward's guardian, newest first."""
        entries: Any = await guarded(self._redis.xrevrange(self._keys.guardian_log(ward), count=count))
        return [{"id": _text(entry_id), **text_hash(fields)} for entry_id, fields in entries or ()]

    async def disconnect(self, user_id: str) -> int:
        """Tell every live node holding the user's connections to close them (SESSION_ENDED);
        how many nodes were told. Pub/sub is at most once: a node whose subscription is
        down at that instant keeps its connections."""
        presence = Presence(self._topology, self._rules, self._keys, self._clock, settings=self._settings)
        args = {"u": user_id, "tag": self.tag(user_id), "dead": await presence.dead_nodes()}
        reply = await self._lua.run("disconnect", self.slot(user_id), self._keys.user(user_id), self._clock(), args)
        return int(reply["nodes"])

    async def get_user(self, user_id: str) -> UserRecord | None:
        async with guarded_pipeline(self._redis, transaction=True) as pipe:
            pipe.hgetall(self._keys.user(user_id))
            pipe.hgetall(self._keys.balance(user_id))
            pipe.hgetall(self._keys.held(user_id))
            fields, available, held = await guarded(pipe.execute())
        if not fields:
            return None
        balances = balances_from(text_hash(available), text_hash(held), self._rules.card_kinds)
        return user_from(user_id, text_hash(fields), balances)

    async def banned_among(self, user_ids: list[str]) -> set[str]:
        """Those of ``user_ids`` whose account is banned (one round trip)."""
        if not user_ids:
            return set()
        async with guarded_pipeline(self._redis, transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hget(self._keys.user(user_id), "banned")
            flags = await guarded(pipe.execute())
        return {user_id for user_id, flag in zip(user_ids, flags, strict=True) if flag == b"1"}

    async def mint(self, user_id: str, kind: str, qty: int) -> Balances:
        """Credit ``qty`` whole new cards of ``kind`` to the user's available balance."""
        if kind not in self._rules.card_kinds:
            raise Refused(Refusal.UNKNOWN_KIND)
        amount = qty * self._rules.units_per_card
        if qty < 1 or amount > MAX_SAFE_INT:
            raise Refused(Refusal.BAD_QUANTITY)
        args = {"u": user_id, "tag": self.tag(user_id), "kind": kind, "amount": amount, "ceiling": MAX_SAFE_INT}
        reply = await self._lua.run("mint", self.slot(user_id), self._keys.balance(user_id), self._clock(), args)
        return self._balances(reply["bal"], reply["held"])

    async def follow(self, follower: str, followee: str, since_ms: int | None = None) -> None:
        """``follower`` follows ``followee`` from ``since_ms`` (default now).

        Without ``since_ms`` an existing follow keeps its start (following again does not
        reset the relationship age); with it, the start is set to exactly that.
        """
        self._not_self(follower, followee)
        now = self._clock()
        since, explicit = (now, False) if since_ms is None else (self._instant("since_ms", since_ms, now), True)
        await self._other_exists(followee)
        args = {"follower": follower, "followee": followee, "action": "follow", "since": since, "explicit": explicit}
        await self._lua.run("follow", self.slot(follower), self._keys.follows(follower), now, args)

    async def unfollow(self, follower: str, followee: str) -> None:
        self._not_self(follower, followee)
        await self._other_exists(followee)
        args = {"follower": follower, "followee": followee, "action": "unfollow", "since": 0, "explicit": False}
        await self._lua.run("follow", self.slot(follower), self._keys.follows(follower), self._clock(), args)

    async def block(self, blocker: str, blocked: str) -> None:
        await self._blocking(blocker, blocked, "block")

    async def unblock(self, blocker: str, blocked: str) -> None:
        await self._blocking(blocker, blocked, "unblock")

    async def _blocking(self, blocker: str, blocked: str, action: str) -> None:
        self._not_self(blocker, blocked)
        await self._other_exists(blocked)
        args = {"blocker": blocker, "blocked": blocked, "action": action}
        await self._lua.run("block", self.slot(blocker), self._keys.blocks(blocker), self._clock(), args)

    async def _other_exists(self, other: str) -> None:
        """The other user of a follow or block lives in another slot: it is checked here,
        before the one-slot script checks the acting user (UNKNOWN_USER either way)."""
        if not await guarded(self._redis.exists(self._keys.user(other))):
            raise Refused(Refusal.UNKNOWN_USER)

    @staticmethod
    def _instant(name: str, value: int, now: int) -> int:
        """A past instant in ms since the epoch (a little ahead of ``now`` is clock skew)."""
        if type(value) is not int or not 0 <= value <= now + MAX_CLOCK_SKEW_MS:
            raise Refused(Refusal.BAD_REQUEST, f"{name} must be ms since the epoch, from 0 to now "
                                               f"(+{MAX_CLOCK_SKEW_MS // 1000} s of clock skew)")
        return value

    @staticmethod
    def _not_self(a: str, b: str) -> None:
        if a == b:
            raise Refused(Refusal.BAD_REQUEST, "a user cannot follow or block themselves")

    def _balances(self, available: list[Any], held: list[Any]) -> Balances:
        return balances_from(pairs(available), pairs(held), self._rules.card_kinds)
