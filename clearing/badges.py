"""Eco-theme badges (gift-rules.md section 5, Europe / Americas; docs/regions.md "Eco badges").

A region's rules may list badges (``eco_badges``), each earned when one of the user's
counters reaches a threshold. The counters are kept by the gift scripts in the user's own
slot (``KeySchema.stats``, gift_answer.lua), in the same step that settles an accepted gift:

=============== ===================================================================
metric          counts
=============== ===================================================================
``accepted``    gifts the user accepted (as recipient), ever
``given``       gifts the user sent that were accepted, ever
``given_month`` gifts the user sent that were accepted, in the current calendar month
                (of the quota day, in the rules' time zone): the badge renews each month
=============== ===================================================================

Badges are computed when asked (the welcome, the admin API), never stored: an operator
changing a threshold changes who holds the badge at once, and nothing is left to clean up.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from clearing.clock import QuotaDays
from clearing.component import RedisComponent
from clearing.guard import guarded
from clearing.regions import DEFAULT_REGION
from clearing.scene_config import SceneConfigError

METRICS = ("accepted", "given", "given_month")
BADGE_ID_PATTERN = r"[a-z][a-z0-9_]{0,31}"
_BADGE_ID = re.compile(BADGE_ID_PATTERN)
#: Bounds the region document and the welcome.
MAX_BADGES = 20
MAX_THRESHOLD = 1_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Badge:
    id: str
    name: str
    metric: str
    at_least: int

    def to_plain(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_badges(value: object) -> tuple[dict[str, Any], ...]:
    """A region's ``eco_badges``, validated (each as its plain document); SceneConfigError
    names the first problem."""
    if not isinstance(value, list | tuple) or len(value) > MAX_BADGES:
        raise SceneConfigError(f"eco_badges is a list of at most {MAX_BADGES} badges")
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) - {"id", "name", "metric", "at_least"}:
            raise SceneConfigError("a badge is {id, name, metric, at_least}")
        badge_id, name = item.get("id"), item.get("name", "")
        metric, at_least = item.get("metric"), item.get("at_least")
        if not isinstance(badge_id, str) or not _BADGE_ID.fullmatch(badge_id) or badge_id in seen:
            raise SceneConfigError(f"a badge id matches {BADGE_ID_PATTERN} and is unique in the region")
        if not isinstance(name, str) or len(name) > 60:
            raise SceneConfigError("a badge's name is text of at most 60 characters")
        if metric not in METRICS:
            raise SceneConfigError(f"a badge's metric is one of {', '.join(METRICS)}")
        if isinstance(at_least, bool) or not isinstance(at_least, int) or not 1 <= at_least <= MAX_THRESHOLD:
            raise SceneConfigError(f"a badge's at_least is a whole number from 1 to {MAX_THRESHOLD}")
        seen.add(badge_id)
        out.append(Badge(badge_id, name, str(metric), at_least).to_plain())
    return tuple(out)


class Badges(RedisComponent):
    async def of(self, user_id: str) -> dict[str, Any]:
        """The user's region, each badge of the region with the user's progress, and the ids
        of those earned."""
        redis: Any = self._redis  # decode_responses off
        region_raw = await guarded(redis.hget(self._keys.user(user_id), "region"))
        region = region_raw.decode() if region_raw else DEFAULT_REGION
        badges = (await self._settings.get()).region(region).eco_badges
        if not badges:
            return {"user": user_id, "region": region, "badges": [], "earned": []}
        stats = {k.decode(): v.decode() for k, v in (await guarded(redis.hgetall(self._keys.stats(user_id)))).items()}
        return self.shown(user_id, region, badges, stats)

    def shown(self, user_id: str, region: str, badges: tuple[dict[str, Any], ...], stats: Mapping[str, str]
              ) -> dict[str, Any]:
        """What :meth:`of` returns, from the region's badges and the user's counters
        (``KeySchema.stats``) already read."""
        month = QuotaDays(self._rules.timezone)(self._clock())[:6]
        values = {"accepted": _count(stats.get("accepted")), "given": _count(stats.get("given")),
                  "given_month": _count(stats.get(f"given:{month}"))}
        shown = [{**b, "value": values[b["metric"]]} for b in badges]
        return {"user": user_id, "region": region, "badges": shown,
                "earned": [b["id"] for b in shown if b["value"] >= b["at_least"]]}

    async def exists(self, user_id: str) -> bool:
        return bool(await guarded(self._redis.exists(self._keys.user(user_id))))


def _count(raw: str | None) -> int:
    try:
        return max(0, int(raw or 0))
    except ValueError:
        return 0  # a hand edit; the invariant check does not look at these counters
