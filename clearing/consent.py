"""GDPR data-processing consent (gift-rules.md section 5, docs/regions.md).

A region whose rules say ``consent_required`` lets its users send, receive and accept gifts
only while they have a consent to exactly the region's ``consent_version`` on record. A user
gives it (naming the text version they were shown and the channel: where in the app) and
withdraws it over the SDK; the consent on record is fields of the account hash (the user's
slot, where the send scripts read it) and every change is appended to the user's consent
history (``KeySchema.consents``), the audit trail an export shows.

Giving the version already on record, or withdrawing when nothing is on record, changes
nothing and adds no entry, so a client may repeat either freely.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import orjson

from clearing.component import RedisComponent
from clearing.errors import Refusal, Refused
from clearing.guard import guarded, guarded_pipeline
from clearing.keys import is_valid_app
from clearing.regions import CONSENT_VERSION_PATTERN, DEFAULT_REGION, is_valid_consent_version

#: Where a consent was given, as the client names it (``signup``, ``settings``, ``web``).
CONSENT_CHANNEL_PATTERN = r"[a-z0-9_.\-]{1,32}"
_CHANNEL = re.compile(CONSENT_CHANNEL_PATTERN)
#: Entries kept per user: a person toggling consent without end cannot grow the slot
#: without bound; the oldest go first (an export says how many are kept).
CONSENT_HISTORY_MAX = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class ConsentState:
    """The consent on record after a change (``version`` None: none, or withdrawn)."""

    user: str
    version: str | None
    at_ms: int | None
    channel: str | None
    #: False when the call found the state it asked for already there.
    changed: bool


class Consents(RedisComponent):
    async def give(self, user_id: str, version: str, channel: str, app: str = "main") -> ConsentState:
        if not is_valid_consent_version(version):
            raise Refused(Refusal.BAD_REQUEST, f"a consent version matches {CONSENT_VERSION_PATTERN}")
        return await self._change(user_id, "give", channel, app, version)

    async def withdraw(self, user_id: str, channel: str, app: str = "main") -> ConsentState:
        return await self._change(user_id, "withdraw", channel, app, None)

    async def _change(self, user_id: str, action: str, channel: str, app: str, version: str | None) -> ConsentState:
        if not _CHANNEL.fullmatch(channel):
            raise Refused(Refusal.BAD_REQUEST, f"a consent channel matches {CONSENT_CHANNEL_PATTERN}")
        if not is_valid_app(app):
            raise Refused(Refusal.BAD_REQUEST, "unknown app")
        args: dict[str, Any] = {"u": user_id, "action": action, "channel": channel, "app": app,
                                "history_max": CONSENT_HISTORY_MAX}
        if version is not None:
            args["version"] = version
        reply = await self._lua.run("consent", self.slot(user_id), self._keys.user(user_id), self._clock(), args,
                                    durable=True)
        at_ms = reply.get("at_ms")
        return ConsentState(user_id, reply.get("version"), int(at_ms) if at_ms else None, reply.get("channel"),
                            bool(reply.get("changed")))

    async def current(self, user_id: str) -> dict[str, Any]:
        """The consent on record ({version, at_ms, channel} or {}) and when it was last withdrawn."""
        fields = await guarded(self._redis.hmget(self._keys.user(user_id), "consent", "consent_at_ms",
                                                 "consent_channel", "consent_withdrawn_at_ms"))
        version, at_ms, channel, withdrawn = (_text(f) for f in fields)
        return {"version": version, "at_ms": int(at_ms) if at_ms else None, "channel": channel,
                "withdrawn_at_ms": int(withdrawn) if withdrawn else None}

    async def history(self, user_id: str) -> list[dict[str, Any]]:
        """Every change on record, oldest first (at most CONSENT_HISTORY_MAX)."""
        async with guarded_pipeline(self._redis, transaction=False) as pipe:
            pipe.lrange(self._keys.consents(user_id), 0, -1)
            (raw,) = await guarded(pipe.execute())
        out: list[dict[str, Any]] = []
        for entry in raw:
            try:
                doc = orjson.loads(entry)
            except orjson.JSONDecodeError:
                continue  # a hand edit; the export shows what reads
            if isinstance(doc, dict):
                out.append(doc)
        return out


def consent_needed(versions: Mapping[str, str], region: str | None, version: str | None) -> str | None:
    """The version a user of ``region`` (None: the default region) with the consent
    ``version`` on record must consent to, or None: ``versions`` is region -> the version
    its users need (:func:`clearing.regions.consent_versions`)."""
    needed = versions.get(region or DEFAULT_REGION)
    return needed if needed is not None and version != needed else None


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
