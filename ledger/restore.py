"""``notecard ledger restore``: after a total loss of Redis, write back what PostgreSQL's
entries say every account holds:

- ``avail:<user>`` -> ``{user}:bal[kind]``, ``held:<user>`` -> ``{user}:held[kind]``;
- ``points:<user>`` -> ``{user}:points`` ``total``, with its log gone: ``trimmed`` holds
  the same number (the log's sum plus the trimmed sum is the total, as the check wants);
- per slot: ``issued`` -> ``tot[minted:kind]`` (negated), ``consumed``, ``transit``, and
  ``tot[holds:kind]``, the sum of the holds of the slot's users.

Only value comes back: users' profiles, follows, gifts and their queues are not in the
ledger (the platform upserts users again). A hold of a gift that was pending at the loss
comes back without its gift, which the conservation check then names; restore at a point
where no gift was pending, or release those holds by hand. Restore refuses a Redis that
holds any balance, hold, total or points already (a restore over live data would mix two
histories); each write sets a value, so a restore that stopped half way can be run again
with ``force``.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.slots import tag_of
from clearing.topology import AnyRedis
from ledger.books import Conn, balances

#: Keys a restore writes (by name), whose presence means Redis is not empty.
_VALUE_KEYS = ("bal", "held", "tot", "points")


class RestoreRefused(RuntimeError):
    """Redis already holds value."""


@dataclasses.dataclass(frozen=True, slots=True)
class Restored:
    users: int
    slots: int
    fields: int
    #: users with a hold: each a gift that was pending at the loss, unless released
    holds: list[str]


async def holds_value(redis: AnyRedis, keys: KeySchema = DEFAULT_KEYS) -> bool:
    for name in _VALUE_KEYS:
        async for _ in redis.scan_iter(match=keys.pattern(name), count=1000):
            return True
    return False


def plan(books: dict[tuple[str, str], int], keys: KeySchema = DEFAULT_KEYS) -> dict[str, dict[str, int]]:
    """Redis key -> field -> value for PostgreSQL's balances."""
    out: defaultdict[str, dict[str, int]] = defaultdict(dict)
    slot_holds: defaultdict[tuple[str, str], int] = defaultdict(int)
    for (account, kind), value in sorted(books.items()):
        name, _, owner = account.partition(":")
        if name == "avail":
            out[keys.balance(owner)][kind] = value
        elif name == "held":
            out[keys.held(owner)][kind] = value
            slot_holds[tag_of(owner), kind] += value
        elif name == "points":
            out[keys.points(owner)] |= {"total": value, "trimmed": value}
        elif name == "issued":
            out[keys.totals(owner)][f"minted:{kind}"] = -value
        elif name in ("consumed", "transit"):
            out[keys.totals(owner)][f"{name}:{kind}"] = value
        elif name != "awards":  # awards: no counterpart in Redis
            raise ValueError(f"unknown account {account!r} in PostgreSQL")
    for (tag, kind), value in slot_holds.items():
        out[keys.totals(tag)][f"holds:{kind}"] = value
    return dict(out)


async def restore(conn: Conn, redis: AnyRedis, keys: KeySchema = DEFAULT_KEYS, *, force: bool = False) -> Restored:
    if not force and await holds_value(redis, keys):
        raise RestoreRefused("Redis holds balances already: restore writes into an emptied Redis only "
                             "(--force to write over them)")
    books = await balances(conn)
    writes = plan(books, keys)
    for key, fields in writes.items():
        await redis.hset(key, mapping=fields)  # type: ignore[arg-type]
    users = {keys.tag_in(k) for k in writes if not k.endswith(":tot")}
    return Restored(users=len(users), slots=sum(k.endswith(":tot") for k in writes),
                    fields=sum(len(f) for f in writes.values()),
                    holds=sorted(a.partition(":")[2] for (a, _), v in books.items() if a.startswith("held:") and v))
