"""The webhooks' dead letters in Redis (docs/ledger.md "Webhooks").

A delivery that failed every attempt is pushed, as JSON, to the head of a list (newest
first) that is cut to ``WEBHOOK_DEAD_MAX`` in the same transaction. An operator sends them
back (``POST /admin/webhooks/dead/retry``): the whole list moves, in one transaction, to the
retry list, which ``notecard webhooks`` works through oldest first, removing each letter only
once it is delivered again or dead again (at least once, as for the stream). Both lists live
in the ``cfg`` slot, so a transaction covers both on a cluster too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from clearing.keys import KeySchema
from clearing.topology import AnyRedis

#: The most an admin call lists at once.
MAX_LIST = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One event that one URL did not take: the event as it was POSTed, the URL, how many
    attempts were made, the last failure and when it was given up (ms)."""

    event: dict[str, Any]
    url: str
    attempts: int
    error: str
    at_ms: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def loads(cls, raw: bytes) -> DeadLetter:
        """ValueError when the stored text is not a letter (a hand edit)."""
        try:
            data = orjson.loads(raw)
            letter = cls(data["event"], data["url"], data["attempts"], data["error"], data["at_ms"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a dead letter: {raw!r:.200}") from exc
        if not (isinstance(letter.event, dict) and isinstance(letter.url, str) and type(letter.attempts) is int
                and isinstance(letter.error, str) and type(letter.at_ms) is int):
            raise ValueError(f"not a dead letter: {raw!r:.200}")
        return letter


#: Both keys must be lists (or absent) before the first write, so a hand-edited key stops a
#: call whole instead of half way.
_CHECK = """
for _, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= 'list' then
    return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. kind .. ', not a list')
  end
end
"""
#: KEYS: dead, retry; ARGV: letter, keep, the retry-list letter it replaces (or "").
_ADD = _CHECK + """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if ARGV[3] ~= '' then redis.call('LREM', KEYS[2], 1, ARGV[3]) end
return 1
"""
#: KEYS: dead, retry. Every dead letter to the retry list's tail, oldest first.
_RETRY_ALL = _CHECK + """
local letters = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #letters, 1, -1 do redis.call('RPUSH', KEYS[2], letters[i]) end
redis.call('DEL', KEYS[1])
return #letters
"""


class DeadLetters:
    def __init__(self, redis: AnyRedis, keys: KeySchema, *, keep: int = 10_000) -> None:
        # Any: redis-py types values as str, and these lists hold bytes
        self._redis: Any = redis
        self._dead = keys.webhooks_dead()
        self._retry = keys.webhooks_retry()
        self._keep = keep

    async def add(self, letter: DeadLetter, *, replacing: bytes | None = None) -> None:
        """Push ``letter`` (bounded); ``replacing``: the retry-list letter it supersedes,
        removed in the same step."""
        await self._redis.eval(_ADD, 2, self._dead, self._retry, letter.dumps(), self._keep,
                               replacing or b"")

    async def newest(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` letters, newest first (an unreadable one as ``{"unreadable": text}``),
        and how many there are."""
        raw = await self._redis.lrange(self._dead, 0, limit - 1)
        total = await self._redis.llen(self._dead)
        out: list[dict[str, Any]] = []
        for item in raw:
            try:
                out.append(DeadLetter.loads(item).to_json())
            except ValueError:
                out.append({"unreadable": bytes(item).decode(errors="replace")[:200]})
        return out, int(total)

    async def retry_all(self) -> int:
        """Move every dead letter to the retry list in one step; how many moved."""
        moved = await self._redis.eval(_RETRY_ALL, 2, self._dead, self._retry)
        return int(moved)

    async def next_retry(self) -> bytes | None:
        """The oldest letter sent back for delivery (it stays until :meth:`done` or :meth:`add`)."""
        raw = await self._redis.lindex(self._retry, 0)
        return bytes(raw) if raw is not None else None

    async def done(self, raw: bytes) -> None:
        await self._redis.lrem(self._retry, 1, raw)
