"""The gift rules of gift-rules.md section 1, as one typed configuration object.

Every number is a default that operators override in configuration (see
``gateway/config.py`` for the environment variables), never in code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal
from zoneinfo import ZoneInfo

DAY_MS = 86_400_000
#: The smallest points log the fold in lib.lua handles (it keeps nine tenths, >= 2 entries).
MIN_POINTS_LOG = 10
#: More card kinds would make a ``balance`` reply outgrow the wire's frame limit.
MAX_CARD_KINDS = 100


@dataclasses.dataclass(frozen=True, slots=True)
class GiftRules:
    #: Card kinds that exist; a balance is kept per user per kind.
    card_kinds: tuple[str, ...] = ("note",)
    #: Minor units per whole card: amounts are integers of the minor unit, never floats.
    units_per_card: int = 10
    #: Largest number of whole cards in one gift.
    max_qty_per_gift: int = 100
    daily_send_limit: int = 5
    vip_send_bonus: int = 2
    daily_receive_limit: int = 3
    #: "recipient": at most N gifts received per day in total; "pair": per (sender, recipient).
    receive_limit_scope: Literal["recipient", "pair"] = "recipient"
    #: Both follows must be at least this old (3 days).
    follow_min_age_ms: int = 3 * DAY_MS
    #: How long the recipient has to confirm an offer.
    confirm_window_ms: int = 60_000
    #: The platform time zone that defines a calendar day for the daily limits.
    timezone: str = "Asia/Shanghai"
    #: Resolved gifts are kept this long (the idempotency window for retries).
    gift_retention_ms: int = 7 * DAY_MS
    #: A refused gift id answers the same refusal this long (reserve.lua), so it must outlast
    #: any copy of the request still on its way: a client sends copies only until an answer
    #: comes, and one held up on a stalled connection goes with it when the heartbeat closes
    #: it (HEARTBEAT_S + PONG_TIMEOUT_S, 40 s by default), plus a Redis timeout (5 s).
    refusal_memory_ms: int = 60_000
    #: Events kept per user stream (approximate trim, MAXLEN ~).
    stream_maxlen: int = 1000
    #: Entries kept per ledger stream, one per Redis server (approximate trim, MAXLEN ~):
    #: the ledger's consumers must read an entry before this many newer ones pass it
    #: (docs/ledger.md).
    ledger_maxlen: int = 200_000
    #: False: the scripts append no ledger entries (NOTECARD_LEDGER=off). Only for measuring
    #: what the outbox costs (loadtest/ledger_bench.py): without the entries there is no
    #: book of record, no feed and no webhooks.
    ledger: bool = True
    #: Entries kept in the points log; older ones are folded into per-user sums (resolve.lua).
    points_log_maxlen: int = 100_000
    #: A gateway node whose last heartbeat is at least this old is dead; its presence is ignored.
    node_ttl_ms: int = 15_000
    #: What a user of the risk engine's low tier may still send (docs/risk.md): gifts a day,
    #: and whether live-room gifts; more is refused RISK_LIMITED.
    risk_limited_daily: int = 1
    risk_limited_rooms: bool = False

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # raises on an unknown zone, at configuration time
        if not 1 <= len(self.card_kinds) <= MAX_CARD_KINDS:
            raise ValueError(f"between 1 and {MAX_CARD_KINDS} card kinds are required")
        for name in (
            "units_per_card",
            "max_qty_per_gift",
            "confirm_window_ms",
            "refusal_memory_ms",
            "stream_maxlen",
            "ledger_maxlen",
            "node_ttl_ms",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("daily_send_limit", "vip_send_bonus", "daily_receive_limit", "follow_min_age_ms",
                     "risk_limited_daily"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.points_log_maxlen < MIN_POINTS_LOG:
            # an accept adds two entries, and a fold keeps nine tenths: at least 9 stay
            raise ValueError(f"points_log_maxlen must be at least {MIN_POINTS_LOG}")

    def quota_day(self, now_ms: int) -> str:
        """The calendar day (YYYYMMDD) of ``now_ms`` in the platform time zone."""
        moment = dt.datetime.fromtimestamp(now_ms / 1000, tz=ZoneInfo(self.timezone))
        return moment.strftime("%Y%m%d")
