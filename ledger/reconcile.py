"""``notecard ledger reconcile``: every account's balance per kind as PostgreSQL derives it
(credits minus debits over the entries written) against what Redis holds
(``clearing.ledger.redis_balances``), with the entries that explain a difference.

An entry still in a Redis ledger stream and not yet in PostgreSQL (the consumer's lag)
explains a difference exactly when adding it gives Redis's number; a difference that such
entries do not explain is listed with PostgreSQL's newest entries of the account. Exact
only while nothing writes (a quiescent point: after a drill, in a maintenance window).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from clearing.keys import DEFAULT_KEYS, KeySchema
from clearing.ledger import LedgerEntry, read_all, redis_balances
from clearing.topology import AnyRedis
from ledger.books import Conn, balances, describe, entries_of, entry_count, known_ids

#: PostgreSQL's newest entries listed for an account whose difference is not explained.
RECENT = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Drift:
    account: str
    kind: str
    books: int
    redis: int
    #: Entries of this account in a Redis stream and not in PostgreSQL.
    unwritten: list[str]
    #: True when the unwritten entries account for the whole difference.
    explained: bool
    #: PostgreSQL's newest entries of the account (when not explained).
    recent: list[str]

    def lines(self) -> list[str]:
        why = ("explained by entries not yet written to PostgreSQL" if self.explained
               else "not explained by the entries still in Redis's streams")
        head = f"{self.account} {self.kind}: postgres {self.books}, redis {self.redis} ({why})"
        return ([head] + [f"  in Redis, not in PostgreSQL: {e}" for e in self.unwritten]
                + [f"  PostgreSQL's latest: {e}" for e in self.recent])


@dataclasses.dataclass(frozen=True, slots=True)
class BooksReconciliation:
    entries: int
    accounts: int
    #: entries in Redis's streams that PostgreSQL does not have yet
    unwritten: int
    drift: list[Drift]
    #: what could not be read from Redis's streams
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.drift

    def report(self) -> str:
        lines = [f"postgres: {self.entries} entries, {self.accounts} accounts; {self.unwritten} entries in Redis's "
                 f"streams not yet in PostgreSQL; drift: {len(self.drift)} accounts"]
        for drift in self.drift:
            lines += drift.lines()
        lines += [f"note: {p}" for p in self.problems]
        return "\n".join(lines)


def _skip(account: str) -> bool:
    # awards accounts have no counterpart in Redis: each is minus the points it gave
    return account.startswith("awards:")


async def reconcile_books(conn: Conn, redis: AnyRedis, keys: KeySchema = DEFAULT_KEYS) -> BooksReconciliation:
    books = await balances(conn)
    held_by_redis = await redis_balances(redis, keys)
    records, problems = await read_all(redis, keys)
    in_streams = [r for r in records if isinstance(r, LedgerEntry)]
    written = await known_ids(conn, [e.id for e in in_streams])
    unwritten = [e for e in in_streams if e.id not in written]
    pending: defaultdict[tuple[str, str], list[LedgerEntry]] = defaultdict(list)
    for e in unwritten:
        pending[e.debit, e.kind].append(e)
        pending[e.credit, e.kind].append(e)

    drift = []
    for account, kind in sorted(books.keys() | held_by_redis.keys()):
        if _skip(account):
            continue
        mine, theirs = books.get((account, kind), 0), held_by_redis.get((account, kind), 0)
        if mine == theirs:
            continue
        moves = pending.get((account, kind), [])
        effect = sum(e.units if e.credit == account else -e.units for e in moves)
        explained = mine + effect == theirs
        drift.append(Drift(
            account, kind, mine, theirs,
            unwritten=[describe(e.id, e.entry_kind, e.debit, e.credit, e.kind, e.units, e.gift_id, e.cause)
                       for e in moves],
            explained=explained,
            recent=[] if explained else await entries_of(conn, account, kind, RECENT)))
    return BooksReconciliation(entries=await entry_count(conn), accounts=len(books), unwritten=len(unwritten),
                               drift=drift, problems=problems)
