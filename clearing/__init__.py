"""clearing: the Redis ledger behind gifts. It debits and credits atomically, one Lua script
per operation, and knows the gift rules but neither the gateway nor the wire format.

Build one of each per process on a shared ``redis.asyncio.Redis`` (``decode_responses``
off)::

    clearing = Clearing(redis, rules)     # reserve / accept / decline / expire_due / reads
    accounts = Accounts(redis, rules)     # users, flags, mint, follows, blocks
    presence = Presence(redis, rules)     # nodes, heartbeats, who is connected where
    events = EventLog(redis, rules)       # replay after a reconnect

Each also takes ``keys=KeySchema(prefix)`` and ``clock=`` (ms since the epoch). Errors are
described in :mod:`clearing.errors`; the published event format in :mod:`clearing.events`;
the ledger outbox every change of value appends to, its consumer groups and its replay
check in :mod:`clearing.ledger` (docs/ledger.md).
"""

from clearing.accounts import Accounts
from clearing.errors import ClearingError, ClearingUnavailable, Refusal, Refused
from clearing.events import CONTROL_PREFIX, EventLog, banned_user, decode_published, kicked_user
from clearing.gifts import Clearing
from clearing.invariant import InvariantReport, check_invariant
from clearing.keys import KeySchema
from clearing.model import (
    MOVES,
    Balances,
    EventKind,
    GiftRecord,
    GiftState,
    RefusedSend,
    Replay,
    Resolution,
    UserEvent,
    UserRecord,
)
from clearing.presence import Presence
from clearing.rules import GiftRules

__all__ = [
    "CONTROL_PREFIX",
    "MOVES",
    "Accounts",
    "Balances",
    "Clearing",
    "ClearingError",
    "ClearingUnavailable",
    "EventKind",
    "EventLog",
    "GiftRecord",
    "GiftRules",
    "GiftState",
    "InvariantReport",
    "KeySchema",
    "Presence",
    "Refusal",
    "Refused",
    "RefusedSend",
    "Replay",
    "Resolution",
    "UserEvent",
    "UserRecord",
    "banned_user",
    "check_invariant",
    "decode_published",
    "kicked_user",
]
