"""Brand campaigns: custom card kinds, and the gifts a campaign issues to its recipients.

A brand (a verified business, clearing/business.py) defines a **custom card kind** (a name,
an artwork URL) and funds it: the budget is minted into the brand's own account by the mint
script, with its ledger entry, like any mint. Only the brand is ever minted a custom kind, so
the kind's budget is the ``minted:<kind>`` total of the brand's slot, read in one call.
Custom cards are collected, not passed on: users' own gifts take the configured kinds only.

A **campaign** issues the kind to a list of recipients, each with a quantity (a file, the
brand's followers, or a fan group at level >= N with a quantity per level). Its list is
stored with the brand (``{B}:camp:<id>:to``) and issued in order by the runners
(:class:`CampaignRunner`), one per gateway node, racing for the campaign's lease
(campaign_step.lua): the holder issues a batch, then moves the cursor past it while its lease
is current. Each recipient's gift is an ordinary two-phase gift from the brand
(:meth:`Clearing.issue`) whose id derives from (campaign, recipient), so a batch issued again
after a crash (or by two runners at once) gives nobody a second card: the retry finds the
gift. A recipient who is offline is offered it on connecting, inside the campaign's window;
declined and expired cards return to the brand. For every custom kind, conservation is the
check of clearing/invariant.py (``minted = available + held + consumed + transit``) and here:

    budget = accepted (the recipients') + the brand's available (unissued and returned) + held (pending)

:meth:`Campaigns.report` reads it per campaign from the campaign's gifts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import orjson

from clearing.business import BusinessAccounts, BusinessRefusal, BusinessRefused
from clearing.codec import text_hash
from clearing.errors import ClearingUnavailable, Refusal, Refused, StepRefused
from clearing.gifts import Clearing
from clearing.guard import guarded, guarded_pipeline
from clearing.keys import is_valid_id
from clearing.lua import MAX_SAFE_INT
from clearing.slots import slot_of, tag_of

log = logging.getLogger("notecard.clearing.campaigns")

#: A campaign id is short: the gift ids derive from it.
_CAMPAIGN_ID = re.compile(r"[A-Za-z0-9_\-]{1,24}")
#: A custom kind's id is a card kind on the wire (protocol CardKind, as CARD_KINDS).
_KIND = re.compile(r"[a-z0-9_]{1,32}")
_ARTWORK = re.compile(r"https://[^\s]{1,500}")
#: Recipients written to Redis per call when a campaign is created.
LOAD_CHUNK = 1000
#: Gift records read per call by the report.
REPORT_CHUNK = 1000
#: How long a runner's claim lasts without renewal: a runner that died leaves its campaign
#: to another after this.
DEFAULT_LEASE_MS = 30_000
#: Where a campaign's recipients come from.
SOURCES = ("list", "followers", "fan_group")
#: States in which a campaign issues no more gifts.
FINAL_STATES = frozenset({"done", "cancelled", "ended"})


def campaign_gift_id(campaign_id: str, recipient: str) -> str:
    """The gift id of a campaign's gift to ``recipient``: the same for every runner and
    every retry (idempotency), and a valid gift id whatever the recipient id's length."""
    digest = hashlib.sha256(recipient.encode()).hexdigest()[:32]
    return f"c.{campaign_id}.{digest}"


@dataclasses.dataclass(frozen=True, slots=True)
class CustomKind:
    kind: str
    brand: str
    name: str
    artwork: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class CampaignStatus:
    campaign_id: str
    brand: str
    kind: str
    state: str
    total: int
    issued: int
    refused: int
    created_at_ms: int
    ends_at_ms: int
    finished_at_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class CampaignReport:
    status: CampaignStatus
    #: Recipients by their gift's state: pending, accepted, declined, expired, refused, not_issued.
    recipients: dict[str, int]
    #: Cards (minor units) of the campaign's gifts: accepted, returned (declined or expired), held.
    units: dict[str, int]
    #: The kind's budget (all campaigns of the kind) and where it is now.
    budget: dict[str, int]

    @property
    def balanced(self) -> bool:
        b = self.budget
        return b["minted"] == b["accepted"] + b["brand_available"] + b["brand_held"]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status.to_json(), "recipients": self.recipients, "units": self.units,
                "budget": self.budget, "balanced": self.balanced}


def _int(value: str | None) -> int:
    return int(value) if value is not None and value.lstrip("-").isdigit() else 0


class Campaigns:
    """Custom kinds and campaigns: defined here, issued by :class:`CampaignRunner`."""

    def __init__(self, clearing: Clearing, business: BusinessAccounts, *, min_followers: int) -> None:
        self.clearing = clearing
        self.business = business
        self.min_followers = min_followers
        self._redis = clearing.redis
        self._keys = clearing.keys
        self._lua = clearing.lua

    # ------------------------------------------------------------ custom kinds
    async def define_kind(self, brand: str, kind: str, *, name: str, artwork: str, budget_cards: int,
                          operator: str) -> CustomKind:
        """Register ``kind`` as ``brand``'s and mint its budget into the brand's account
        (any verified business: a fan community issues custom cards too)."""
        await self.business.require_business(brand)
        if not _KIND.fullmatch(kind) or kind in self.clearing.rules.card_kinds:
            raise Refused(Refusal.BAD_REQUEST, "a custom kind is 1-32 characters of a-z 0-9 _ (a card kind on the "
                                               "wire), not a configured kind")
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise Refused(Refusal.BAD_REQUEST, "a kind's name is 1-64 characters")
        if not isinstance(artwork, str) or not _ARTWORK.fullmatch(artwork):
            raise Refused(Refusal.BAD_REQUEST, "artwork is an https:// URL of at most 508 characters")
        record = CustomKind(kind=kind, brand=brand, name=name, artwork=artwork)
        created = await guarded(self._redis.hsetnx(self._keys.custom_kinds(), kind, orjson.dumps(record.to_json())))
        if not created:
            raise BusinessRefused(BusinessRefusal.KIND_EXISTS)
        await self.business.audit("kind", operator, user=brand, kind=kind, name=name, artwork=artwork)
        await self.fund_kind(brand, kind, budget_cards, operator=operator)
        return record

    async def fund_kind(self, brand: str, kind: str, cards: int, *, operator: str) -> int:
        """Mint ``cards`` more of the brand's kind into its account (the mint script, with its
        ledger entry); the kind's budget in units after it."""
        await self._own_kind(brand, kind)
        amount = cards * self.clearing.rules.units_per_card if type(cards) is int else 0
        if amount < 1 or amount > MAX_SAFE_INT:
            raise Refused(Refusal.BAD_QUANTITY)
        args = {"u": brand, "tag": tag_of(brand), "kind": kind, "amount": amount, "ceiling": MAX_SAFE_INT}
        await self._lua.run("mint", slot_of(brand), self._keys.balance(brand), self.clearing.now(), args)
        await self.business.audit("kind_funded", operator, user=brand, kind=kind, cards=str(cards))
        return await self.budget_units(brand, kind)

    async def kind(self, kind: str) -> CustomKind | None:
        raw = await guarded(self._redis.hget(self._keys.custom_kinds(), kind))
        if raw is None:
            return None
        try:
            return CustomKind(**orjson.loads(raw))
        except (orjson.JSONDecodeError, TypeError):
            return None  # a hand edit that does not read is no kind

    async def budget_units(self, brand: str, kind: str) -> int:
        """Everything ever minted of the kind: only its brand is minted it (fund_kind)."""
        return _int(text_hash({"m": await guarded(self._redis.hget(self._keys.totals(tag_of(brand)),
                                                                   f"minted:{kind}")) or b"0"})["m"])

    async def _own_kind(self, brand: str, kind: str) -> CustomKind:
        record = await self.kind(kind)
        if record is None:
            raise Refused(Refusal.UNKNOWN_KIND)
        if record.brand != brand:
            raise BusinessRefused(BusinessRefusal.NOT_KIND_OWNER)
        return record

    # ------------------------------------------------------------ recipients
    async def fan_group_recipients(self, brand: str, group: str, min_level: int,
                                   per_level: dict[int, int] | None = None) -> list[tuple[str, int]]:
        """Community ops: the group's members at ``min_level`` or above, each with the
        quantity of the highest entry of ``per_level`` at or below its level (1 without)."""
        await self.business.require_business(brand)
        members = await self.business.members(brand, group, min_level)
        if not members:
            raise BusinessRefused(BusinessRefusal.NO_FAN_GROUP)
        steps = sorted((per_level or {}).items())
        out = []
        for member, level in sorted(members.items()):
            qty = next((q for lvl, q in reversed(steps) if lvl <= level), 1)
            out.append((member, qty))
        return out

    async def follower_recipients(self, brand: str, qty: int = 1) -> list[tuple[str, int]]:
        """Brand marketing: every user following ``brand``. The follows are kept with each
        follower, so this reads every user's follows once (SCAN over every primary): a cost
        paid when the campaign is created, never on a gift's path."""
        await self.business.require_brand(brand, self.min_followers)
        found = [(self._keys.tag_in(_text(key)), qty)
                 async for key, hit in self._scan_field(self._keys.pattern("follows"), brand, exists=True) if hit]
        return sorted(found)

    async def _scan_field(self, pattern: str, field: str, *, exists: bool) -> AsyncIterator[tuple[Any, Any]]:
        """Every key matching ``pattern`` on every primary with its hash's ``field`` (with
        ``exists``: whether it has it), read in pipelines of REPORT_CHUNK keys (a report's
        or a campaign's creation cost, never on a gift's path)."""
        for node in self.clearing.topology.nodes():
            keys = [k async for k in node.client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), REPORT_CHUNK):
                chunk = keys[start : start + REPORT_CHUNK]
                async with node.client.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        if exists:
                            pipe.hexists(key, field)
                        else:
                            pipe.hget(key, field)
                    answers = await guarded(pipe.execute())
                for pair in zip(chunk, answers, strict=True):
                    yield pair

    # ------------------------------------------------------------ campaigns
    async def create(self, campaign_id: str, brand: str, kind: str, recipients: Iterable[tuple[str, int]], *,
                     ends_at_ms: int, operator: str, source: str = "list", open_list: bool = False
                     ) -> CampaignStatus:
        """A new campaign, running: runners start issuing at once. Recipients given twice
        count once (the first quantity). Refused: BAD_REQUEST, UNKNOWN_KIND, NOT_KIND_OWNER,
        NO_RECIPIENTS, BUDGET_EXCEEDED (more cards than the brand has of the kind),
        CAMPAIGN_EXISTS; and the source's privilege: a list or the followers is brand
        marketing (NOT_BUSINESS, BELOW_FOLLOWER_THRESHOLD), a fan group community ops (a
        verified business, NOT_BUSINESS).

        ``open_list``: a list too long for one call (a file) stays ``loading``: more is added
        by :meth:`add_recipients`, then :meth:`start` checks the budget and starts it.
        """
        if not _CAMPAIGN_ID.fullmatch(campaign_id):
            raise Refused(Refusal.BAD_REQUEST, "a campaign id is 1-24 characters of A-Z a-z 0-9 _ -")
        if source not in SOURCES:
            raise Refused(Refusal.BAD_REQUEST, f"a campaign's source is one of {', '.join(SOURCES)}")
        if source == "fan_group":
            await self.business.require_business(brand)
        else:
            await self.business.require_brand(brand, self.min_followers)
        now = self.clearing.now()
        if type(ends_at_ms) is not int or not now < ends_at_ms <= MAX_SAFE_INT:
            raise Refused(Refusal.BAD_REQUEST, "ends_at_ms is a time in ms after now")
        await self._own_kind(brand, kind)
        unique = _unique(recipients, brand, self.clearing.rules.max_qty_per_gift)
        if not unique and not open_list:
            raise BusinessRefused(BusinessRefusal.NO_RECIPIENTS)
        if not open_list:
            await self._within_budget(brand, kind, sum(q for _u, q in unique))
        registry = self._keys.campaigns()
        if not await guarded(self._redis.hsetnx(registry, campaign_id, brand)):
            # a creation that stopped before its list was loaded (registered, and no record
            # yet or still loading) may be made again, by the same brand
            existing = await self._status_or_none(campaign_id)
            if await self.brand_of(campaign_id) != brand or (existing is not None and existing.state != "loading"):
                raise BusinessRefused(BusinessRefusal.CAMPAIGN_EXISTS)
        key, to = self._keys.campaign(brand, campaign_id), self._keys.campaign_recipients(brand, campaign_id)
        await guarded(self._redis.delete(to))
        await guarded(self._redis.hset(key, mapping={
            "brand": brand, "kind": kind, "state": "loading", "next": 0, "total": 0, "cards": 0, "source": source,
            "created_at_ms": now, "ends_at_ms": ends_at_ms, "lease_until": 0}))
        await self._append(brand, campaign_id, unique)
        await self.business.audit("campaign", operator, user=brand, campaign=campaign_id, kind=kind,
                                  recipients=str(len(unique)), source=source)
        if open_list:
            return await self.status(campaign_id)
        return await self.start(campaign_id, operator=operator)

    async def add_recipients(self, campaign_id: str, recipients: Iterable[tuple[str, int]], *,
                             operator: str) -> CampaignStatus:
        """More of a ``loading`` campaign's list (audited: who added how many). A recipient
        repeated in another call is issued once (the gift id is the same); with another
        quantity, that repeat is refused (IDEMPOTENCY_CONFLICT, in the report)."""
        if not is_valid_id(operator):  # before the list grows: an unaudited part is never added
            raise Refused(Refusal.BAD_REQUEST, "operator is an id: 1-64 characters of A-Z a-z 0-9 _ . : -")
        status = await self.status(campaign_id)
        if status.state != "loading":
            raise BusinessRefused(BusinessRefusal.CAMPAIGN_STATE)
        unique = _unique(recipients, status.brand, self.clearing.rules.max_qty_per_gift)
        await self._append(status.brand, campaign_id, unique)
        await self.business.audit("campaign_recipients", operator, user=status.brand, campaign=campaign_id,
                                  recipients=str(len(unique)))
        return await self.status(campaign_id)

    async def start(self, campaign_id: str, *, operator: str) -> CampaignStatus:
        """A ``loading`` campaign starts, if the brand has the cards its whole list takes."""
        status = await self.status(campaign_id)
        if status.state != "loading":
            raise BusinessRefused(BusinessRefusal.CAMPAIGN_STATE)
        if status.total == 0:
            raise BusinessRefused(BusinessRefusal.NO_RECIPIENTS)
        key = self._keys.campaign(status.brand, campaign_id)
        await self._within_budget(status.brand, status.kind, _int(_text(await guarded(self._redis.hget(key, "cards"))
                                                                        or b"0")))
        await guarded(self._redis.hset(key, "state", "running"))
        await self.business.audit("campaign_start", operator, user=status.brand, campaign=campaign_id,
                                  recipients=str(status.total))
        return await self.status(campaign_id)

    async def _append(self, brand: str, campaign_id: str, unique: list[tuple[str, int]]) -> None:
        key, to = self._keys.campaign(brand, campaign_id), self._keys.campaign_recipients(brand, campaign_id)
        for start in range(0, len(unique), LOAD_CHUNK):
            chunk = unique[start : start + LOAD_CHUNK]
            await guarded(self._redis.rpush(to, *(f"{q} {u}" for u, q in chunk)))
            # the list and its counts move together: a loading campaign is not issued yet
            await guarded(self._redis.hincrby(key, "total", len(chunk)))
            await guarded(self._redis.hincrby(key, "cards", sum(q for _u, q in chunk)))

    async def _within_budget(self, brand: str, kind: str, cards: int) -> None:
        available = (await self.clearing.balances(brand)).available.get(kind, 0)
        if cards * self.clearing.rules.units_per_card > available:
            raise BusinessRefused(BusinessRefusal.BUDGET_EXCEEDED,
                                  f"the recipients take {cards} cards; the brand has "
                                  f"{available // self.clearing.rules.units_per_card} of {kind}")

    async def change(self, campaign_id: str, event: str, *, operator: str) -> CampaignStatus:
        """pause, resume or cancel (audited). A cancelled campaign issues nothing more; the
        offers it made stay open until answered or expired."""
        if event not in ("pause", "resume", "cancel"):
            raise Refused(Refusal.BAD_REQUEST, "a campaign is paused, resumed or cancelled")
        status = await self.status(campaign_id)
        await self.act(status.brand, campaign_id, {"act": "state", "event": event})
        await self.business.audit(f"campaign_{event}", operator, user=status.brand, campaign=campaign_id)
        return await self.status(campaign_id)

    async def brand_of(self, campaign_id: str) -> str:
        brand = await guarded(self._redis.hget(self._keys.campaigns(), campaign_id)) if is_valid_id(
            campaign_id) else None
        if brand is None:
            raise BusinessRefused(BusinessRefusal.UNKNOWN_CAMPAIGN)
        return _text(brand)

    async def all(self) -> dict[str, str]:
        """Every campaign id -> its brand."""
        raw = await guarded(self._redis.hgetall(self._keys.campaigns()))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def status(self, campaign_id: str) -> CampaignStatus:
        status = await self._status_or_none(campaign_id)
        if status is None:
            raise BusinessRefused(BusinessRefusal.UNKNOWN_CAMPAIGN)
        return status

    async def _status_or_none(self, campaign_id: str) -> CampaignStatus | None:
        brand = await self.brand_of(campaign_id)
        raw = text_hash(await guarded(self._redis.hgetall(self._keys.campaign(brand, campaign_id))))
        if not raw:
            return None
        refused = int(await guarded(self._redis.hlen(self._keys.campaign_refused(brand, campaign_id))))
        finished = raw.get("finished_at_ms")
        return CampaignStatus(campaign_id=campaign_id, brand=brand, kind=raw.get("kind", ""),
                              state=raw.get("state", "loading"), total=_int(raw.get("total")),
                              issued=_int(raw.get("next")), refused=refused,
                              created_at_ms=_int(raw.get("created_at_ms")), ends_at_ms=_int(raw.get("ends_at_ms")),
                              finished_at_ms=None if finished is None else _int(finished))

    async def recipients(self, brand: str, campaign_id: str, start: int, stop: int) -> list[tuple[str, int]]:
        """Entries [start, stop) of the campaign's list."""
        raw = await guarded(self._redis.lrange(self._keys.campaign_recipients(brand, campaign_id), start, stop - 1))
        out = []
        for entry in raw:
            qty, _, user = _text(entry).partition(" ")
            out.append((user, int(qty)))
        return out

    async def report(self, campaign_id: str) -> CampaignReport:
        """Where every recipient's gift is, and where the kind's budget is (gift records are
        kept for the gift retention after they resolve: read the report before that)."""
        status = await self.status(campaign_id)
        brand = status.brand
        refused = text_hash(await guarded(self._redis.hgetall(self._keys.campaign_refused(brand, campaign_id))))
        counts = dict.fromkeys(("pending", "accepted", "declined", "expired", "refused", "not_issued"), 0)
        units = dict.fromkeys(("accepted", "returned", "held"), 0)
        for start in range(0, status.total, REPORT_CHUNK):
            entries = await self.recipients(brand, campaign_id, start, start + REPORT_CHUNK)
            async with guarded_pipeline(self._redis, transaction=False) as pipe:
                for user, _qty in entries:
                    pipe.hmget(self._keys.gift(brand, campaign_gift_id(campaign_id, user)), "state", "cost")
                rows = await guarded(pipe.execute())
            for (user, _qty), (state, cost) in zip(entries, rows, strict=True):
                name = _text(state) if state is not None else ("refused" if user in refused else "not_issued")
                counts[name if name in counts else "pending"] += 1
                amount = _int(_text(cost)) if cost is not None else 0
                if name == "accepted":
                    units["accepted"] += amount
                elif name in ("declined", "expired"):
                    units["returned"] += amount
                elif name == "pending":
                    units["held"] += amount
        balances = await self.clearing.balances(brand)
        minted = await self.budget_units(brand, status.kind)
        budget = {"minted": minted, "brand_available": balances.available.get(status.kind, 0),
                  "brand_held": balances.held.get(status.kind, 0)}
        budget["accepted"] = minted - budget["brand_available"] - budget["brand_held"]
        budget["recipients_hold"] = await self._recipients_hold(status.kind)
        return CampaignReport(status=status, recipients=counts, units=units, budget=budget)

    async def _recipients_hold(self, kind: str) -> int:
        """What users other than the brand hold of the kind, summed over every account (a
        SCAN of the balances; the report's check that accepted cards arrived)."""
        owner_record = await self.kind(kind)
        brand_total = 0
        async for key, value in self._scan_field(self._keys.pattern("bal"), kind, exists=False):
            if value is not None and owner_record and self._keys.tag_in(_text(key)) != owner_record.brand:
                brand_total += _int(_text(value))
        return brand_total

    async def act(self, brand: str, campaign_id: str, args: dict[str, Any]) -> dict[str, Any]:
        """One campaign_step.lua call (claim, advance, release, state)."""
        try:
            return await self._lua.run("campaign_step", slot_of(brand), self._keys.campaign(brand, campaign_id),
                                       self.clearing.now(), args)
        except StepRefused as exc:
            if exc.code == "CAMPAIGN_STATE":
                raise BusinessRefused(BusinessRefusal.CAMPAIGN_STATE) from None
            if exc.code == "UNKNOWN_CAMPAIGN":
                raise BusinessRefused(BusinessRefusal.UNKNOWN_CAMPAIGN) from None
            raise


def _unique(recipients: Iterable[tuple[str, int]], brand: str, max_qty: int) -> list[tuple[str, int]]:
    seen: set[str] = set()
    out = []
    for user, qty in recipients:
        if not isinstance(user, str) or not is_valid_id(user) or user == brand:
            raise Refused(Refusal.BAD_REQUEST, f"a recipient is a user id other than the brand: {str(user)[:64]!r}")
        if type(qty) is not int or not 1 <= qty <= max_qty:
            raise Refused(Refusal.BAD_QUANTITY, f"each recipient gets 1 to {max_qty} cards")
        if user not in seen:
            seen.add(user)
            out.append((user, qty))
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CampaignRunner:
    """Issues the gifts of running campaigns: one per gateway node, all at once, no leader.

    Each :meth:`step` looks at every campaign, claims the lease of a running one that no
    live runner holds, and issues its list a batch at a time from the cursor, ``concurrency``
    gifts in flight, paced to ``rate_per_s`` recipients a second so that a campaign never
    takes the Redis time users' own gifts need. Before each batch it reads the state again:
    a pause or cancel stops it within a batch. A window that closed ends the campaign.
    """

    def __init__(self, campaigns: Campaigns, holder: str, *, rate_per_s: float, batch: int = 200,
                 concurrency: int = 32, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        if rate_per_s <= 0 or batch < 1 or concurrency < 1 or lease_ms < 1:
            raise ValueError("rate, batch, concurrency and lease must be positive")
        self.campaigns = campaigns
        self.holder = holder
        self.rate_per_s = rate_per_s
        self.batch = batch
        self.concurrency = concurrency
        self.lease_ms = lease_ms
        # What this runner has done, for the node's metrics (gateway/metrics.py reads them
        # when scraped): counted once a batch is advanced past, so a batch issued again after
        # a failure is not counted twice.
        #: Recipients given their gift (made now, or found made by an earlier try).
        self.issued = 0
        #: Recipients refused (banned, frozen, blocked, unknown...: in the report's refusals).
        self.refused = 0
        #: Batches given up because Redis was unavailable (issued again later).
        self.failed_batches = 0
        #: Campaigns this runner found paused on its last pass.
        self.paused = 0
        #: Campaigns whose lease this runner holds while issuing them (0 or 1: one at a time).
        self.leases_held = 0
        #: Campaigns seen in a final state: never looked at again by this runner.
        self._finished: set[str] = set()
        self._paused_seen = 0  # counted through a pass, published as ``paused`` at its end

    async def step(self) -> int:
        """One pass over the campaigns; how many recipients this runner handled."""
        handled, self._paused_seen = 0, 0
        for campaign_id, brand in sorted((await self.campaigns.all()).items()):
            if campaign_id not in self._finished:
                handled += await self.run_campaign(campaign_id, brand)
        self.paused = self._paused_seen
        return handled

    async def run_campaign(self, campaign_id: str, brand: str) -> int:
        """Issue ``campaign_id`` while this runner holds its lease; recipients handled."""
        c = self.campaigns
        try:
            claim = await c.act(brand, campaign_id,
                                {"act": "claim", "holder": self.holder, "lease_ms": self.lease_ms})
        except (BusinessRefused, StepRefused) as exc:
            # not running (paused, or final: then forgotten), or another runner holds it
            if exc.code == "CAMPAIGN_STATE":
                state = (await c.status(campaign_id)).state
                if state in FINAL_STATES:
                    self._finished.add(campaign_id)
                self._paused_seen += state == "paused"
            return 0
        self.leases_held += 1
        try:
            return await self._issue_held(campaign_id, brand, claim)
        finally:
            self.leases_held -= 1

    async def _issue_held(self, campaign_id: str, brand: str, claim: dict[str, Any]) -> int:
        """The campaign's list from the claimed cursor, while the lease is held."""
        c = self.campaigns
        status = await c.status(campaign_id)
        position, total, handled = int(claim["next"]), int(claim["total"]), 0
        while position < total:
            if c.clearing.now() >= status.ends_at_ms:
                with _suppress_state():
                    await c.act(brand, campaign_id, {"act": "state", "event": "end"})
                break
            started = time.monotonic()
            entries = await c.recipients(brand, campaign_id, position, min(total, position + self.batch))
            try:
                refused = await self._issue_all(brand, campaign_id, status, entries)
            except ClearingUnavailable:
                log.warning("campaign %s: Redis unavailable; the batch is issued again later", campaign_id)
                self.failed_batches += 1
                break
            try:
                moved = await c.act(brand, campaign_id, {"act": "advance", "holder": self.holder, "from": position,
                                                           "to": position + len(entries), "lease_ms": self.lease_ms})
            except (StepRefused, BusinessRefused):
                break  # paused, cancelled, or the lease went to another runner
            position, handled = int(moved["next"]), handled + len(entries)
            self.issued += len(entries) - refused
            self.refused += refused
            if moved["state"] != "running":
                break
            await asyncio.sleep(max(0.0, len(entries) / self.rate_per_s - (time.monotonic() - started)))
        return handled

    async def _issue_all(self, brand: str, campaign_id: str, status: CampaignStatus,
                         entries: Sequence[tuple[str, int]]) -> int:
        """Issue a batch; how many of its recipients were refused."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(user: str, qty: int) -> bool:
            async with gate:
                return await self._issue(brand, campaign_id, status, user, qty)

        results = await asyncio.gather(*(one(u, q) for u, q in entries), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(result is True for result in results)

    async def _issue(self, brand: str, campaign_id: str, status: CampaignStatus, user: str, qty: int) -> bool:
        """Issue one recipient's gift; True when it was refused."""
        c = self.campaigns
        try:
            await c.clearing.issue(campaign_gift_id(campaign_id, user), brand, user, status.kind, qty,
                                   campaign=campaign_id, expires_at_ms=status.ends_at_ms)
        except Refused as refusal:
            # banned, frozen, blocked, unknown, or the brand ran out: that recipient gets none
            await guarded(c.clearing.redis.hset(c.clearing.keys.campaign_refused(brand, campaign_id), user,
                                                refusal.code.value))
            return True
        return False

    async def release(self) -> None:
        """Give up every lease this runner holds (a node stopping)."""
        for campaign_id, brand in (await self.campaigns.all()).items():
            with _suppress_state():
                await self.campaigns.act(brand, campaign_id, {"act": "release", "holder": self.holder})


class _suppress_state:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        return isinstance(exc, BusinessRefused | StepRefused)
