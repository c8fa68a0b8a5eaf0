"""``notecard feed``: the platform's event feed, JSON lines on standard output.

One line per gift event (sent, accepted, declined, expired: clearing/ledger.py's
:class:`GiftEvent`), read from the ledger streams of every shard as a member of a consumer
group: a restart under the same group resumes after the last line it acknowledged, and
several members of one group share the work. A line is acknowledged once written and
flushed, so a crash repeats at most the lines after the last acknowledgement (at least
once: deduplicate by ``id``). ``--ledger`` adds the double-entry records themselves.
docs/ledger.md describes the lines.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import orjson
from redis import exceptions as rx

from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.ledger import GiftEvent, LedgerEntry, StreamConsumer
from clearing.topology import AnyRedis

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

#: Between two empty reads: the feed's delay when idle (reads never block, since a cluster
#: cannot block on streams of several slots in one call).
IDLE_POLL_S = 0.2


def entry_json(entry: LedgerEntry) -> dict[str, Any]:
    return {"type": "entry", "id": entry.id, "stream": entry.stream, "stream_id": entry.stream_id,
            "entry_kind": entry.entry_kind, "debit": entry.debit, "credit": entry.credit, "kind": entry.kind,
            "units": entry.units, "gift_id": entry.gift_id, "sender": entry.sender, "cause": entry.cause,
            "at_ms": entry.at_ms}


def event_json(event: GiftEvent) -> dict[str, Any]:
    return {"type": "gift", **event.to_json()}


async def run_feed(redis: AnyRedis, out: IO[bytes], *, group: str, consumer: str, keys: KeySchema = DEFAULT_KEYS,
                   ledger: bool = False, once: bool = False, new_only: bool = False) -> int:
    """Write the feed to ``out`` until cancelled (or, with ``once``, until nothing is left);
    returns the number of lines written."""
    member = StreamConsumer(redis, group, consumer, keys, start="$" if new_only else "0")
    await member.streams()
    lines = 0
    while True:
        batch = await member.read()
        for record in batch.records:
            if isinstance(record, GiftEvent):
                out.write(orjson.dumps(event_json(record)) + b"\n")
                lines += 1
            elif ledger and isinstance(record, LedgerEntry):  # order notes are the books' only
                out.write(orjson.dumps(entry_json(record)) + b"\n")
                lines += 1
        for problem in batch.bad:
            print(f"notecard feed: skipped an unreadable entry: {problem}", file=sys.stderr)
        if batch.trimmed:
            print(f"notecard feed: {batch.trimmed} entries were trimmed before this group read them "
                  "(raise NOTECARD_LEDGER_MAXLEN or keep the feed running)", file=sys.stderr)
        out.flush()
        await member.ack(batch)
        if not batch.ids:
            if once:
                return lines
            await asyncio.sleep(IDLE_POLL_S)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notecard feed", description="Gift events (and with --ledger every ledger entry) as JSON lines, "
        "from the ledger streams of every shard; Redis from NOTECARD_REDIS_URL / NOTECARD_REDIS_CLUSTER.")
    parser.add_argument("--group", default="feed", help="consumer group: a restart resumes where it stopped "
                                                          "(default: feed)")
    parser.add_argument("--consumer", default=socket.gethostname(),
                        help="this member's name in the group (default: the host name)")
    parser.add_argument("--ledger", action="store_true", help="print the double-entry records too")
    parser.add_argument("--once", action="store_true", help="stop when nothing is left to read")
    parser.add_argument("--new-only", action="store_true",
                        help="a new group starts after the newest entry instead of the oldest retained one")
    return parser


def settings_with_redis(command: str) -> GatewaySettings | None:
    """The settings from the environment for a stream-reading command (``notecard feed``,
    ``notecard webhooks``), or None after saying on stderr what is wrong or missing."""
    from gateway.config import ConfigError, GatewaySettings

    try:
        settings = GatewaySettings.from_env()
    except ConfigError as exc:
        print(f"notecard {command}: configuration error: {exc}", file=sys.stderr)
        return None
    if not (settings.redis_url or settings.redis_cluster or settings.sentinels):
        print(f"notecard {command}: give the Redis to read: NOTECARD_REDIS_URL or NOTECARD_REDIS_CLUSTER",
              file=sys.stderr)
        return None
    return settings


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from gateway.redis_client import close_store, connect_store

    settings = settings_with_redis("feed")
    if settings is None:
        return 2

    async def feed() -> int:
        topology = await connect_store(settings)
        try:
            return await run_feed(topology.general, sys.stdout.buffer, group=args.group, consumer=args.consumer,
                                  ledger=args.ledger, once=args.once, new_only=args.new_only)
        finally:
            await close_store(topology)

    try:
        asyncio.run(feed())
    except KeyboardInterrupt:
        return 0
    except (rx.RedisError, OSError) as exc:
        # what was printed and not yet acknowledged is printed again by the next run
        print(f"notecard feed: Redis failed: {exc}; run it again to resume", file=sys.stderr)
        return 1
    return 0
