"""The drill's bank workload: users giving cards to their friends through the SDK, and the
record of everything each client was told (the "history" Jepsen checks against).

Each user is one :class:`UserAgent` with one :class:`NotecardClient` (the SDK, with its
reconnects and same-id resends) and three loops: sending gifts to random friends,
answering offers (accept, decline, or ignore so that the gift expires) and collecting
outcomes. Every step of the flow is also a place where the client drops:

- a *blip*: the TCP connection is aborted right after a request went out; the SDK
  reconnects by itself and resends the unanswered request with the same ids;
- a *restart*: the app is killed and started again, as a new client that resumes from the
  stream position the old one had reached; requests left unanswered are sent again by
  the drill with the same gift id, as an app that stored the id before its first try does;
- a *duplicate*: the same gift id sent twice at once, or the same answer given twice.

Some users are wards of a region whose guardian rule holds gifts to them for their guardian
(docs/regions.md): the guardian's agent approves some of the requests it gets, rejects some
and never answers the rest (they expire), with the same drops and duplicates as answers.

Nothing the server says is interpreted beyond what a client would: a ``gift_sent`` is an
acknowledgment, ``UNAVAILABLE`` past the SDK's deadline or a timeout is an unknown outcome
(never a failure; the drill retries the same id later), a refusal is final. Randomness
comes from one ``random.Random`` per user, seeded from the drill's seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time

from notecard_sdk import ConnectionRejected, Gift, GiftRefused, NotConnected, NotecardClient, RequestTimeout

log = logging.getLogger("notecard.drill.workload")

FINAL_STATES = frozenset({"accepted", "declined", "expired"})
#: Codes after which the outcome is unknown although the SDK gave up (its deadline passed).
UNKNOWN_CODES = frozenset({"UNAVAILABLE", "RATE_LIMITED", "INTERNAL"})
#: A request whose outcome stayed unknown is tried again at most this many times.
MAX_TRIES = 6


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass(slots=True)
class GiftLog:
    """What the drill did with one gift id and what any client was told about it."""

    gift_id: str
    sender: str
    recipient: str
    qty: int
    sent_at_ms: int
    tries: int = 0
    acked: bool = False
    acked_at_ms: int = 0
    #: Refusal codes answered to sends of this id (a final "no").
    refused: list[str] = dataclasses.field(default_factory=list)
    #: Sends whose outcome stayed unknown (timeout, dropped connection, UNAVAILABLE).
    unknown_sends: int = 0
    send_settled: bool = False
    #: (who told, final state): replies, error frames carrying the gift, outcome events.
    told: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    created_at_ms: int = 0
    expires_at_ms: int = 0
    #: When the recipient's client first surfaced the offer (wall ms), if ever.
    offered_at_ms: int = 0
    answer: str = ""
    answer_settled: bool = False
    #: GIFT_NOT_FOUND answered to the recipient about an offer it was shown.
    offer_not_found: bool = False
    #: The guardian whose client was asked about the gift (a ward's gift), if any; what it
    #: chose ("approve", "reject", "ignore"), and whether its answer got a definite reply.
    guardian: str = ""
    guardian_answer: str = ""
    guardian_settled: bool = False
    #: The guardian's answer was refused ALREADY_RESOLVED / GIFT_EXPIRED / ... (the code).
    guardian_refused: str = ""


class History:
    def __init__(self) -> None:
        self.gifts: dict[str, GiftLog] = {}
        #: user -> [(down_ms, up_ms)] intervals when the drill had the user's app closed.
        self.offline: dict[str, list[tuple[int, int]]] = {}
        self.counters: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def saw(self, gift: Gift, source: str) -> GiftLog | None:
        entry = self.gifts.get(gift.gift_id)
        if entry is None:
            self.count("gifts_seen_never_sent")
            return None
        entry.created_at_ms = gift.created_at_ms
        entry.expires_at_ms = gift.expires_at_ms
        if gift.state in FINAL_STATES:
            entry.told.append((source, gift.state))
        return entry


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadConfig:
    #: Mean pause between two sends of one user, seconds.
    send_pause_s: float = 0.5
    qty_max: int = 3
    p_accept: float = 0.45
    p_decline: float = 0.25  # the rest is ignored: the gift expires
    p_duplicate: float = 0.08
    p_blip: float = 0.06
    p_restart: float = 0.03
    #: Share of answers given just after the window closed (GIFT_EXPIRED expected).
    p_late: float = 0.03
    #: A guardian's choice for a request (the rest is never answered: it expires).
    p_approve: float = 0.45
    p_reject: float = 0.3
    confirm_window_s: float = 8.0
    request_timeout_s: float = 10.0


class UserAgent:
    def __init__(self, user: str, friends: list[str], urls: list[str], token: str, rng: random.Random,
                 history: History, config: WorkloadConfig) -> None:
        self.user = user
        self.friends = friends
        self.urls = urls
        self.token = token
        self.rng = rng
        self.history = history
        self.config = config
        self.client = self._new_client()
        self.sent = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._restarting = asyncio.Lock()
        #: No new gifts after this; offers and outcomes are still handled until ``done``.
        self.stop_sending = asyncio.Event()
        self.done = asyncio.Event()

    def _new_client(self, epoch: str | None = None, offset: int | None = None) -> NotecardClient:
        # Start on a different node per user so that load and faults spread.
        shift = self.rng.randrange(len(self.urls))
        urls = self.urls[shift:] + self.urls[:shift]
        return NotecardClient(urls, self.token, backoff_base_s=0.1, backoff_cap_s=2.0,
                              request_timeout_s=self.config.request_timeout_s, connect_timeout_s=5.0,
                              epoch=epoch, offset=offset)

    async def connect(self, deadline_s: float = 30.0) -> None:
        """Connect the current client, retrying (bounded) while nodes are down."""
        end = time.monotonic() + deadline_s
        while True:
            try:
                await self.client.connect()
                return
            except (OSError, TimeoutError, ConnectionRejected, NotConnected) as exc:
                if time.monotonic() > end:
                    raise RuntimeError(f"{self.user} could not connect: {exc!r}") from exc
                self.client = self._new_client(self.client.epoch, self.client.offset)
                await asyncio.sleep(0.3)

    # ------------------------------------------------------------ drops
    def blip(self) -> None:
        """Abort the TCP connection under the SDK (it reconnects and resends by itself)."""
        ws = self.client._ws  # the harness reaches under the SDK on purpose: a dead socket
        if ws is not None:
            ws.transport.abort()
            self.history.count("drops_blip")

    async def restart(self) -> None:
        """Close the app and start a new one that resumes from the old stream position."""
        if self._restarting.locked():
            return
        async with self._restarting:
            old = self.client
            down = wall_ms()
            await old.close()
            await self._drain(old)
            await asyncio.sleep(self.rng.uniform(0.0, 1.0))
            self.client = self._new_client(old.epoch, old.offset)
            try:
                await self.connect()
            finally:
                self.history.offline.setdefault(self.user, []).append((down, wall_ms()))
                self.history.count("drops_restart")

    async def _drain(self, client: NotecardClient) -> None:
        """What the old app had received but not yet handled is handled (it was on screen)."""
        for _ in range(10_000):
            try:
                gift = await client.next_offer(timeout=0.001)
            except TimeoutError:
                break
            self._on_offer(gift)
        for _ in range(10_000):
            try:
                gift = await client.next_outcome(timeout=0.001)
            except TimeoutError:
                break
            self.history.saw(gift, f"outcome:{self.user}")
        for _ in range(10_000):
            try:
                gift = await client.next_guardian_request(timeout=0.001)
            except TimeoutError:
                break
            self._on_guardian_request(gift)

    # ------------------------------------------------------------ loops
    async def run(self) -> None:
        await asyncio.gather(self._send_loop(), self._offer_loop(), self._outcome_loop(), self._guardian_loop())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_loop(self) -> None:
        while not self.stop_sending.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_sending.wait(), self.rng.expovariate(1 / self.config.send_pause_s))
            if self.stop_sending.is_set():
                return
            self.sent += 1
            gift_id = f"{self.user}-g{self.sent}"
            to = self.rng.choice(self.friends)
            entry = GiftLog(gift_id, self.user, to, self.rng.randint(1, self.config.qty_max), wall_ms())
            self.history.gifts[gift_id] = entry
            await self.send(entry)

    async def send(self, entry: GiftLog, *, final_try: bool = False) -> None:
        """Send until a definite answer (bounded); every try uses the same gift id."""
        tries = 1 if final_try else MAX_TRIES
        for _ in range(tries):
            if entry.send_settled:
                return
            entry.tries += 1
            roll = self.rng.random()
            c = self.config
            client = self.client
            try:
                call = client.send_gift(entry.recipient, entry.qty, "note", entry.gift_id)
                if final_try or roll >= c.p_duplicate + c.p_blip + c.p_restart:
                    gift = await call
                elif roll < c.p_duplicate:
                    self.history.count("duplicate_sends")
                    second = client.send_gift(entry.recipient, entry.qty, "note", entry.gift_id)
                    results = await asyncio.gather(call, second, return_exceptions=True)
                    for extra in results[1:]:
                        if isinstance(extra, Gift):
                            self._acked(entry, extra)
                    if isinstance(results[0], BaseException):
                        raise results[0]
                    gift = results[0]
                else:
                    task = asyncio.ensure_future(call)
                    await asyncio.sleep(self.rng.uniform(0, 0.02))
                    if roll < c.p_duplicate + c.p_blip:
                        self.blip()
                    else:
                        await self.restart()
                    gift = await task
                self._acked(entry, gift)
                return
            except GiftRefused as refusal:
                if refusal.gift is not None:
                    self.history.saw(refusal.gift, f"send-error:{self.user}")
                if refusal.code not in UNKNOWN_CODES:
                    entry.refused.append(refusal.code)
                    entry.send_settled = True
                    return
                entry.unknown_sends += 1
            except (RequestTimeout, NotConnected, ConnectionRejected, OSError):
                entry.unknown_sends += 1
            if not final_try:
                await asyncio.sleep(self.rng.uniform(0.1, 1.0))

    def _acked(self, entry: GiftLog, gift: Gift) -> None:
        if not entry.acked:
            entry.acked, entry.acked_at_ms = True, wall_ms()
        entry.send_settled = True
        self.history.saw(gift, f"send-reply:{self.user}")

    async def _offer_loop(self) -> None:
        while not self.done.is_set():
            try:
                gift = await self.client.next_offer(timeout=0.25)
            except TimeoutError:
                continue
            self._on_offer(gift)

    def _on_offer(self, gift: Gift) -> None:
        entry = self.history.saw(gift, f"offer:{self.user}")
        if entry is None or entry.offered_at_ms:
            return
        entry.offered_at_ms = wall_ms()
        c = self.config
        roll = self.rng.random()
        if roll < c.p_accept:
            entry.answer = "accept"
        elif roll < c.p_accept + c.p_decline:
            entry.answer = "decline"
        else:
            entry.answer = "ignore"
            return
        left_s = max(0.0, gift.expires_at_ms / 1000 - time.time())
        delay = left_s + 0.5 if self.rng.random() < c.p_late else self.rng.uniform(0, 0.4 * left_s)
        self._spawn(self._answer(entry, delay))

    async def _answer(self, entry: GiftLog, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.answer(entry)

    async def answer(self, entry: GiftLog, *, final_try: bool = False) -> None:
        tries = 1 if final_try else MAX_TRIES
        for _ in range(tries):
            if entry.answer_settled:
                return
            client = self.client
            roll = self.rng.random()
            c = self.config
            try:
                task = self._answer_call(client, entry)
                if not final_try and roll < c.p_duplicate:
                    second = self._answer_call(client, entry)
                    with contextlib.suppress(Exception):
                        gift2 = await second
                        self.history.saw(gift2, f"answer-reply:{self.user}")
                elif not final_try and roll < c.p_duplicate + c.p_blip:
                    await asyncio.sleep(self.rng.uniform(0, 0.02))
                    self.blip()
                elif not final_try and roll < c.p_duplicate + c.p_blip + c.p_restart:
                    await asyncio.sleep(self.rng.uniform(0, 0.02))
                    await self.restart()
                gift = await task
                self.history.saw(gift, f"answer-reply:{self.user}")
                entry.answer_settled = True
                return
            except GiftRefused as refusal:
                if refusal.gift is not None:
                    self.history.saw(refusal.gift, f"answer-error:{self.user}")
                if refusal.code == "GIFT_NOT_FOUND":
                    entry.offer_not_found = True
                if refusal.code not in UNKNOWN_CODES:
                    entry.answer_settled = True
                    return
            except (RequestTimeout, NotConnected, ConnectionRejected, OSError):
                pass
            if not final_try:
                await asyncio.sleep(self.rng.uniform(0.1, 1.0))

    @staticmethod
    def _answer_call(client: NotecardClient, entry: GiftLog) -> asyncio.Future[Gift]:
        call = client.accept if entry.answer == "accept" else client.decline
        return asyncio.ensure_future(call(entry.gift_id))

    async def _outcome_loop(self) -> None:
        while not self.done.is_set():
            try:
                gift = await self.client.next_outcome(timeout=0.25)
            except TimeoutError:
                continue
            self.history.saw(gift, f"outcome:{self.user}")

    # ------------------------------------------------------------ as a guardian
    async def _guardian_loop(self) -> None:
        while not self.done.is_set():
            try:
                gift = await self.client.next_guardian_request(timeout=0.25)
            except TimeoutError:
                continue
            self._on_guardian_request(gift)

    def _on_guardian_request(self, gift: Gift) -> None:
        entry = self.history.gifts.get(gift.gift_id)
        if entry is None:
            self.history.count("guardian_requests_never_sent")
            return
        if entry.guardian:
            self.history.count("guardian_requests_again")  # replayed, or another device's copy
            return
        entry.guardian = self.user
        roll = self.rng.random()
        c = self.config
        if roll < c.p_approve:
            entry.guardian_answer = "approve"
        elif roll < c.p_approve + c.p_reject:
            entry.guardian_answer = "reject"
        else:
            entry.guardian_answer = "ignore"
            return
        left_s = max(0.0, gift.expires_at_ms / 1000 - time.time())
        self._spawn(self._guardian_after(entry, self.rng.uniform(0, 0.4 * left_s)))

    async def _guardian_after(self, entry: GiftLog, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.guardian_answer(entry)

    async def guardian_answer(self, entry: GiftLog, *, final_try: bool = False) -> None:
        """Approve or reject until a definite reply (bounded); duplicates and drops as for answers."""
        approve = entry.guardian_answer == "approve"
        for _ in range(1 if final_try else MAX_TRIES):
            if entry.guardian_settled:
                return
            client = self.client
            roll = self.rng.random()
            c = self.config
            try:
                task = asyncio.ensure_future(client.guardian_answer(entry.gift_id, entry.recipient, approve))
                if not final_try and roll < c.p_duplicate:
                    with contextlib.suppress(Exception):
                        again = await client.guardian_answer(entry.gift_id, entry.recipient, approve)
                        self.history.saw(again, f"guardian-reply:{self.user}")
                elif not final_try and roll < c.p_duplicate + c.p_blip:
                    await asyncio.sleep(self.rng.uniform(0, 0.02))
                    self.blip()
                gift = await task
                self.history.saw(gift, f"guardian-reply:{self.user}")
                entry.guardian_settled = True
                return
            except GiftRefused as refusal:
                if refusal.gift is not None:
                    self.history.saw(refusal.gift, f"guardian-error:{self.user}")
                if refusal.code not in UNKNOWN_CODES:
                    entry.guardian_refused = refusal.code
                    entry.guardian_settled = True
                    return
            except (RequestTimeout, NotConnected, ConnectionRejected, OSError):
                pass
            if not final_try:
                await asyncio.sleep(self.rng.uniform(0.1, 1.0))
