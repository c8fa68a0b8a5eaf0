"""Time for clearing: an injectable millisecond clock and the quota day, cached.

Every operation reads the clock once and hands that instant to its script, so tests move
time by swapping the clock. The quota day (the calendar day of the daily limits) is on the
hot path of every reserve; ``zoneinfo`` conversion costs microseconds, so :class:`QuotaDays`
remembers the current day and the instants where it starts and ends, and converts again only
when the clock leaves them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from zoneinfo import ZoneInfo

#: Milliseconds since the Unix epoch, as clearing's scripts take them.
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _midnight_ms(day: dt.date, zone: ZoneInfo) -> int:
    # fold=0 picks the earlier instant when midnight repeats and the instant of the jump
    # when it is skipped (zones that move clocks at midnight): either way, where the day
    # actually begins.
    return int(dt.datetime.combine(day, dt.time(), tzinfo=zone).timestamp()) * 1000


#: A campaign's gift counts in no day's quota (gift_send.lua): its ``day`` is this word
#: instead of a date, and no counter is ever written under it.
CAMPAIGN_DAY = "campaign"


class QuotaDays:
    """``YYYYMMDD`` of an instant in the platform zone, recomputed once a day."""

    __slots__ = ("_day", "_end", "_start", "_zone")

    def __init__(self, timezone: str) -> None:
        self._zone = ZoneInfo(timezone)
        self._day = ""
        self._start = 0
        self._end = 0

    def __call__(self, now_ms: int) -> str:
        if self._start <= now_ms < self._end:
            return self._day
        local = dt.datetime.fromtimestamp(now_ms / 1000, tz=self._zone).date()
        self._day = local.strftime("%Y%m%d")
        self._start = _midnight_ms(local, self._zone)
        self._end = _midnight_ms(local + dt.timedelta(days=1), self._zone)
        return self._day
