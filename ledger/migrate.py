"""A small versioned-SQL runner: ``ledger/migrations/NNNN_name.sql`` files applied in order,
each once, each in its own transaction together with its row in ``schema_version``.

Several consumers may start at once: a transaction-level advisory lock makes them apply the
migrations one after the other (the second finds them applied).
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources

from ledger.books import Conn

#: pg_advisory_xact_lock key: "ncledger" in ASCII, a number no other code of ours locks.
_LOCK = 0x6E636C6564676572
_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str = dataclasses.field(repr=False)


def migrations() -> list[Migration]:
    """Every migration shipped with the package, by version."""
    found = []
    for item in resources.files("ledger").joinpath("migrations").iterdir():
        match = _NAME.fullmatch(item.name)
        if match:
            found.append(Migration(int(match[1]), match[2], item.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if len({m.version for m in found}) != len(found):
        raise RuntimeError("two migrations share a version number")
    return found


async def migrate(conn: Conn) -> list[Migration]:
    """Apply what is missing; returns what was applied now."""
    applied: list[Migration] = []
    for migration in migrations():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                               "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            cur = await conn.execute("SELECT 1 FROM schema_version WHERE version = %s", (migration.version,))
            if await cur.fetchone() is not None:
                continue
            # bytes: a whole file of statements, sent as one simple query
            await conn.execute(migration.sql.encode())
            await conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                               (migration.version, migration.name))
            applied.append(migration)
    return applied


async def schema_version(conn: Conn) -> int:
    """The highest applied version; 0 for an empty database."""
    cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
    row = await cur.fetchone()
    return int(row[0]) if row else 0
