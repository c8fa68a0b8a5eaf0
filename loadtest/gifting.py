"""The asyncio gift load generator, built on the client SDK.

Why the SDK and not raw frames: the number users care about is what a real client sees,
with the SDK's request bookkeeping and event de-duplication included. Each pair is a
sender connected to one node and a recipient connected to another, so every offer and
every outcome crosses nodes through Redis pub/sub.

Three ways to drive the pairs, all bounded by a deadline:

- :meth:`GiftLoad.run_closed`: each pair gives, waits for the outcome, gives again: the
  maximum settled-gift rate at this concurrency;
- :meth:`GiftLoad.run_paced`: gifts start at a fixed rate (open loop) whatever the
  latency, so the latency percentiles are those of a system not saturated by us;
- :meth:`GiftLoad.run_firehose`: senders give back to back without waiting for answers and
  recipients only take offers in: the cross-node push rate on its own.

Timing, all on this process's ``perf_counter``: ``send_gift`` (request to reply),
``send->offer`` (request sent to the offer pushed to the recipient), ``accept``/``decline``
(request to reply), ``send->outcome`` (request sent to the outcome pushed to the sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import secrets
import time
from collections.abc import Callable, Sequence

from loadtest.stats import Recorder
from notecard.admin_client import AdminClient
from notecard_sdk import GiftRefused, NotecardClient, NotecardError

DAY_MS = 86_400_000
#: Follows this old pass the 3-day mutual-follow rule with a day to spare.
FRIENDS_SINCE_DAYS = 4
#: Cards minted to each sender: far more than any run gives (1 card per gift).
CARDS_PER_SENDER = 1_000_000
#: Share of offers the recipients decline (the rest are accepted): both paths are real.
DECLINE_RATIO = 0.1
#: Admin calls in flight while provisioning.
PROVISION_CONCURRENCY = 16
#: A gift not settled within this is counted as lost (and the pair moves on).
GIFT_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    sender: str
    recipient: str


async def provision_pairs(admin: AdminClient, count: int, tag: str | None = None) -> list[Pair]:
    """``count`` sender/recipient pairs, verified, mutual friends for 4 days, senders funded."""
    tag = tag or secrets.token_hex(3)
    pairs = [Pair(f"lg{tag}-s{i}", f"lg{tag}-r{i}") for i in range(count)]
    since = int(time.time() * 1000) - FRIENDS_SINCE_DAYS * DAY_MS
    gate = asyncio.Semaphore(PROVISION_CONCURRENCY)

    async def one(pair: Pair) -> None:
        async with gate:
            await admin.create_user(pair.sender, verified=True)
            await admin.create_user(pair.recipient, verified=True)
            await admin.mint(pair.sender, CARDS_PER_SENDER)
            await admin.befriend(pair.sender, pair.recipient, since_ms=since)

    await asyncio.gather(*(one(p) for p in pairs))
    return pairs


@dataclasses.dataclass
class _InFlight:
    phase: str
    sent_at: float
    outcome: asyncio.Future[None]


@dataclasses.dataclass(frozen=True, slots=True)
class PhaseResult:
    """What one driving phase did, on the recorder's clock."""

    name: str
    start: float
    end: float
    settled: int
    offers: int
    errors: int
    lost: int

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def settled_per_s(self) -> float:
        return self.settled / self.seconds if self.seconds > 0 else 0.0

    @property
    def offers_per_s(self) -> float:
        return self.offers / self.seconds if self.seconds > 0 else 0.0


class GiftLoad:
    """Connected pairs and the tasks that answer their offers and collect their outcomes."""

    def __init__(
        self,
        sender_url: str | Sequence[str],
        recipient_url: str | Sequence[str],
        token_for: Callable[[str], str],
        pairs: Sequence[Pair],
        recorder: Recorder,
        *,
        decline_ratio: float = DECLINE_RATIO,
        seed: int | None = None,
    ) -> None:
        self.sender_url = sender_url
        self.recipient_url = recipient_url
        self.token_for = token_for
        self.pairs = list(pairs)
        self.rec = recorder
        self.decline_ratio = decline_ratio
        self._random = random.Random(seed)
        self.senders: list[NotecardClient] = []
        self.recipients: list[NotecardClient] = []
        self._inflight: dict[str, _InFlight] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count()
        self._tag = secrets.token_hex(3)
        #: When cleared, recipients take offers in without answering them (the firehose phase).
        self._answer = True
        #: Samples are recorded as "<phase>/<path>", the phase being the one the gift started in.
        self.phase = "warmup"
        self.errors = 0
        self.offers = 0

    # ------------------------------------------------------------ life
    async def start(self, connect_concurrency: int = 32) -> None:
        gate = asyncio.Semaphore(connect_concurrency)

        async def connect(url: str | Sequence[str], user: str) -> NotecardClient:
            client = NotecardClient(url, self.token_for(user), request_timeout_s=GIFT_TIMEOUT_S)
            async with gate:
                await client.connect()
            return client

        self.senders = list(await asyncio.gather(*(connect(self.sender_url, p.sender) for p in self.pairs)))
        self.recipients = list(await asyncio.gather(*(connect(self.recipient_url, p.recipient)
                                                      for p in self.pairs)))
        for sender, recipient in zip(self.senders, self.recipients, strict=True):
            self._tasks.append(asyncio.create_task(self._answer_offers(recipient)))
            self._tasks.append(asyncio.create_task(self._collect_outcomes(sender, mine=True)))
            self._tasks.append(asyncio.create_task(self._collect_outcomes(recipient, mine=False)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.senders + self.recipients), return_exceptions=True)

    async def __aenter__(self) -> GiftLoad:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ push handlers
    async def _answer_offers(self, client: NotecardClient) -> None:
        while True:
            offer = await client.next_offer()
            now = self.rec.now()
            self.offers += 1
            flight = self._inflight.get(offer.gift_id)
            if flight is not None:
                self.rec.add(f"{flight.phase}/send->offer", now, now - flight.sent_at)
            if not self._answer:
                continue
            decline = self._random.random() < self.decline_ratio
            started = self.rec.now()
            try:
                if decline:
                    await client.decline(offer.gift_id)
                else:
                    await client.accept(offer.gift_id)
            except NotecardError:
                self.errors += 1
                continue
            done = self.rec.now()
            self.rec.add(f"{self.phase}/{'decline' if decline else 'accept'}", done, done - started)

    async def _collect_outcomes(self, client: NotecardClient, *, mine: bool) -> None:
        while True:
            gift = await client.next_outcome()
            if not mine:
                continue  # the recipient is told too; the sender's view is what we time
            now = self.rec.now()
            flight = self._inflight.pop(gift.gift_id, None)
            if flight is not None:
                self.rec.add(f"{flight.phase}/send->outcome", now, now - flight.sent_at)
                if not flight.outcome.done():
                    flight.outcome.set_result(None)

    # ------------------------------------------------------------ one gift
    def _new_id(self) -> str:
        return f"g{self._tag}-{next(self._ids)}"

    async def _give(self, index: int, *, wait_outcome: bool) -> bool:
        """One gift from pair ``index``; True when it settled (or, firehose, was sent)."""
        sender, pair = self.senders[index], self.pairs[index]
        gift_id = self._new_id()
        loop = asyncio.get_running_loop()
        flight = _InFlight(self.phase, self.rec.now(), loop.create_future())
        self._inflight[gift_id] = flight
        try:
            await sender.send_gift(pair.recipient, 1, gift_id=gift_id)
        except (GiftRefused, NotecardError):
            self.errors += 1
            self._inflight.pop(gift_id, None)
            return False
        replied = self.rec.now()
        self.rec.add(f"{flight.phase}/send_gift", replied, replied - flight.sent_at)
        if not wait_outcome:
            return True
        try:
            await asyncio.wait_for(flight.outcome, GIFT_TIMEOUT_S)
        except TimeoutError:
            self._inflight.pop(gift_id, None)
            return False
        return True

    # ------------------------------------------------------------ phases
    async def run_closed(self, duration_s: float, name: str = "max") -> PhaseResult:
        """Every pair gives, waits for the outcome, and gives again until the deadline."""
        self.phase = name
        start = self.rec.now()
        deadline = start + duration_s
        settled = lost = 0

        async def worker(index: int) -> None:
            nonlocal settled, lost
            while self.rec.now() < deadline:
                if await self._give(index, wait_outcome=True):
                    settled += 1
                else:
                    lost += 1

        errors_before = self.errors
        offers_before = self.offers
        await asyncio.gather(*(worker(i) for i in range(len(self.pairs))))
        return PhaseResult(name, start, self.rec.now(), settled, self.offers - offers_before,
                           self.errors - errors_before, lost)

    async def run_paced(self, rate_per_s: float, duration_s: float, name: str = "paced") -> PhaseResult:
        """Start gifts at ``rate_per_s`` (round robin over the pairs) for ``duration_s``."""
        self.phase = name
        start = self.rec.now()
        interval = 1.0 / rate_per_s
        settled = lost = 0
        running: set[asyncio.Task[None]] = set()

        async def one(index: int) -> None:
            nonlocal settled, lost
            if await self._give(index, wait_outcome=True):
                settled += 1
            else:
                lost += 1

        errors_before = self.errors
        offers_before = self.offers
        for n in itertools.count():
            due = start + n * interval
            if due >= start + duration_s:
                break
            delay = due - self.rec.now()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(n % len(self.pairs)))
            running.add(task)
            task.add_done_callback(running.discard)
        end = self.rec.now()
        if running:
            await asyncio.wait(running, timeout=GIFT_TIMEOUT_S)
        return PhaseResult(name, start, end, settled, self.offers - offers_before,
                           self.errors - errors_before, lost)

    async def run_firehose(self, duration_s: float, in_flight_per_pair: int = 2,
                           name: str = "delivery") -> PhaseResult:
        """Senders give back to back (no answer awaited); recipients only count offers."""
        self._answer = False
        self.phase = name
        start = self.rec.now()
        deadline = start + duration_s
        sent = 0

        async def worker(index: int) -> None:
            nonlocal sent
            while self.rec.now() < deadline:
                if await self._give(index, wait_outcome=False):
                    sent += 1

        errors_before = self.errors
        offers_before = self.offers
        try:
            await asyncio.gather(*(worker(i % len(self.pairs))
                                   for i in range(len(self.pairs) * in_flight_per_pair)))
            end = self.rec.now()
            # Offers still in the pipe are counted when they arrive (bounded wait).
            for _ in range(50):
                if self.offers - offers_before >= sent:
                    break
                await asyncio.sleep(0.02)
        finally:
            self._answer = True
            # Offers of this phase stay pending (they expire long after the run); forget them.
            self._inflight.clear()
        offers = self.offers - offers_before
        return PhaseResult(name, start, end, sent, offers, self.errors - errors_before, max(0, sent - offers))


async def run_briefly(load: GiftLoad, seconds: float) -> None:
    """Warm-up: a short closed-loop run whose samples the caller ignores."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.run_closed(seconds, "warmup"), seconds + GIFT_TIMEOUT_S)
