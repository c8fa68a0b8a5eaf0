"""Published odds of the lucky card (gift-rules.md section 5, docs/regions.md "Published odds").

A region whose rule ``lucky_odds`` names a table gives each accepted gift to one of its users a
random bonus, paid by the promotion account, drawn from that table. The tables are operators'
settings (``KeySchema.odds()``: table id -> JSON, in the ``{cfg}`` slot) and are public:
``GET /odds`` serves every table's entries, its version and the commitment to its key.

The draw is commit-reveal, so that anyone can check it and nobody can steer it:

- each version of a table has a secret key of 32 random bytes; ``/odds`` publishes its
  commitment ``SHA-256(key)`` while the version is in force, and the key itself once the
  version is retired (a new ``PUT`` of the table makes a new version and reveals the old key);
- the draw of a gift is ``seed = HMAC-SHA256(key, "<table>|<version>|<recipient>|<gift id>")``,
  ``x = int(seed, big-endian) mod total weight``, and the entry whose cumulative weight
  first passes ``x`` gives the bonus (in cards of the gift's kind). The 256-bit seed makes
  the modulo's bias below total weight / 2**256, nothing anyone can measure.

The client chooses the gift id but cannot compute the draw without the key, and the operator
cannot choose the key after the fact: it is fixed by the commitment published before the
draw. :func:`draw` is the one function the node uses and ``notecard odds verify`` re-runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from clearing.keys import is_valid_id
from clearing.lua import MAX_SAFE_INT
from clearing.scene_config import SceneConfigError

#: Entries per table; a table is read by every accept in a lucky region.
MAX_ENTRIES = 32
#: Largest bonus of one entry, in cards.
MAX_BONUS_CARDS = 1000
#: Retired versions kept (with their revealed keys) in the table's document.
MAX_HISTORY = 50
#: Tables at most.
MAX_TABLES = 32


@dataclasses.dataclass(frozen=True, slots=True)
class OddsEntry:
    #: Cards of the gift's kind added to it (0: no bonus).
    bonus: int
    #: Relative weight; the entry's probability is weight / total weight.
    weight: int

    def __post_init__(self) -> None:
        if type(self.bonus) is not int or not 0 <= self.bonus <= MAX_BONUS_CARDS:
            raise SceneConfigError(f"an entry's bonus is a whole number of cards from 0 to {MAX_BONUS_CARDS}")
        if type(self.weight) is not int or not 1 <= self.weight <= 1_000_000_000:
            raise SceneConfigError("an entry's weight is a whole number from 1 to 1000000000")


def _entries(raw: object) -> tuple[OddsEntry, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_ENTRIES:
        raise SceneConfigError(f"entries is a list of 1 to {MAX_ENTRIES} {{bonus, weight}} objects")
    out = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"bonus", "weight"}:
            raise SceneConfigError("each entry is an object with exactly bonus and weight")
        out.append(OddsEntry(item["bonus"], item["weight"]))
    return tuple(out)


def commitment(key_hex: str) -> str:
    """What ``/odds`` publishes of a key while its version is in force."""
    return hashlib.sha256(bytes.fromhex(key_hex)).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class OddsVersion:
    """One version of a table: its entries and its key (secret while in force)."""

    version: int
    entries: tuple[OddsEntry, ...]
    key: str
    published_ms: int
    retired_ms: int | None = None

    def __post_init__(self) -> None:
        if type(self.version) is not int or not 1 <= self.version <= MAX_SAFE_INT:
            raise SceneConfigError("a table's version is a positive whole number")
        if not isinstance(self.key, str) or len(self.key) != 64 or any(c not in "0123456789abcdef" for c in self.key):
            raise SceneConfigError("a table's key is 64 lower-case hex digits")
        for name in ("published_ms", "retired_ms"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_SAFE_INT):
                raise SceneConfigError(f"{name} is a time in ms")

    @property
    def total_weight(self) -> int:
        return sum(e.weight for e in self.entries)

    def plain(self, *, reveal: bool) -> dict[str, Any]:
        total = self.total_weight
        out: dict[str, Any] = {
            "version": self.version, "published_ms": self.published_ms, "commitment": commitment(self.key),
            "total_weight": total,
            "entries": [{"bonus": e.bonus, "weight": e.weight, "probability": e.weight / total} for e in self.entries],
        }
        if self.retired_ms is not None:
            out["retired_ms"] = self.retired_ms
        if reveal:
            out["key"] = self.key
        return out

    def stored(self) -> dict[str, Any]:
        return {"version": self.version, "entries": [dataclasses.asdict(e) for e in self.entries], "key": self.key,
                "published_ms": self.published_ms, "retired_ms": self.retired_ms}

    @classmethod
    def from_stored(cls, body: Mapping[str, Any]) -> OddsVersion:
        return cls(body.get("version"), _entries(body.get("entries")), body.get("key"),  # type: ignore[arg-type]
                   body.get("published_ms"), body.get("retired_ms"))  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, slots=True)
class OddsTable:
    """A table: the version in force and the retired ones (keys revealed), newest first."""

    table_id: str
    current: OddsVersion
    history: tuple[OddsVersion, ...] = ()

    def __post_init__(self) -> None:
        if not is_valid_id(self.table_id):
            raise SceneConfigError("a table id is 1-64 characters of A-Z a-z 0-9 _ . : -")

    def version(self, number: int) -> OddsVersion | None:
        return next((v for v in (self.current, *self.history) if v.version == number), None)

    def stored(self) -> bytes:
        return orjson.dumps({"current": self.current.stored(), "history": [v.stored() for v in self.history]})

    def public(self) -> dict[str, Any]:
        """What ``GET /odds`` shows: the key of the version in force stays secret."""
        return {"table": self.table_id, "current": self.current.plain(reveal=False),
                "revealed": [v.plain(reveal=True) for v in self.history]}

    def republished(self, entries: Sequence[OddsEntry], now_ms: int) -> OddsTable:
        """A new version with a fresh key; the one in force is retired and its key revealed."""
        retired = dataclasses.replace(self.current, retired_ms=now_ms)
        fresh = OddsVersion(self.current.version + 1, tuple(entries), secrets.token_hex(32), now_ms)
        return OddsTable(self.table_id, fresh, (retired, *self.history)[:MAX_HISTORY])

    @classmethod
    def first(cls, table_id: str, entries: Sequence[OddsEntry], now_ms: int) -> OddsTable:
        return cls(table_id, OddsVersion(1, tuple(entries), secrets.token_hex(32), now_ms))

    @classmethod
    def from_stored(cls, table_id: str, raw: str | bytes) -> OddsTable:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise SceneConfigError(f"odds table {table_id!r} is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("current"), dict):
            raise SceneConfigError(f"odds table {table_id!r} is not an object with a current version")
        history = body.get("history") or []
        if not isinstance(history, list) or not all(isinstance(v, dict) for v in history):
            raise SceneConfigError(f"odds table {table_id!r}: history is a list of versions")
        return cls(table_id, OddsVersion.from_stored(body["current"]),
                   tuple(OddsVersion.from_stored(v) for v in history))


def parse_entries(raw: object) -> tuple[OddsEntry, ...]:
    """An operator's entries (``PUT /admin/odds/{table}``), validated."""
    return _entries(raw)


def decode_odds(raw: Mapping[str, str]) -> tuple[dict[str, OddsTable], list[str]]:
    """The stored tables that decode and validate, and a problem for each one that does not."""
    tables: dict[str, OddsTable] = {}
    problems: list[str] = []
    for table_id, text in sorted(raw.items()):
        try:
            tables[table_id] = OddsTable.from_stored(table_id, text)
        except SceneConfigError as exc:
            problems.append(f"odds {table_id!r}: {exc}; no lucky draws from it")
    return tables, problems


# ------------------------------------------------------------------ the draw
#: How to check a draw, as ``GET /odds`` states it.
ALGORITHM = (
    "seed = HMAC-SHA256(key, '<table>|<version>|<recipient>|<gift id>') with the version's key (64 hex digits, "
    "revealed under 'revealed' once the version is retired; SHA-256(key) = its 'commitment', published while it "
    "is in force); x = seed as a big-endian unsigned integer mod total_weight; the bonus is that of the first "
    "entry whose cumulative weight exceeds x, in cards of the gift's kind. Check with: notecard odds verify."
)

@dataclasses.dataclass(frozen=True, slots=True)
class Draw:
    table: str
    version: int
    #: HMAC-SHA256 of the draw's message under the version's key, hex.
    seed: str
    #: The entry drawn (its index in the version's entries).
    index: int
    #: Cards of the gift's kind.
    bonus: int


def draw_message(table: str, version: int, recipient: str, gift_id: str) -> bytes:
    """What the key signs: gift ids are unique per recipient, so one gift, one draw."""
    return f"{table}|{version}|{recipient}|{gift_id}".encode()


def draw_with(key_hex: str, table: str, version: int, entries: Sequence[OddsEntry], recipient: str,
              gift_id: str) -> Draw:
    """The draw, from public data once the key is revealed (``notecard odds verify``)."""
    seed = hmac.new(bytes.fromhex(key_hex), draw_message(table, version, recipient, gift_id), hashlib.sha256)
    x = int.from_bytes(seed.digest(), "big") % sum(e.weight for e in entries)
    for index, entry in enumerate(entries):
        if x < entry.weight:
            return Draw(table, version, seed.hexdigest(), index, entry.bonus)
        x -= entry.weight
    raise AssertionError("x is below the total weight")  # pragma: no cover


def draw(table: OddsTable, recipient: str, gift_id: str) -> Draw:
    """The draw of one accepted gift from the version in force (what the node does)."""
    current = table.current
    return draw_with(current.key, table.table_id, current.version, current.entries, recipient, gift_id)


# ------------------------------------------------------------------ checking the odds
#: The chi-square distribution's critical values at p = 0.001, by degrees of freedom (entries
#: - 1), from the standard tables (NIST/SEMATECH e-Handbook, table 1.3.6.7.4): an observed
#: statistic above it means the draws do not follow the table, with a 1 in 1000 chance of a
#: false alarm.
CHI2_CRITICAL_P001 = {
    1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322, 8: 26.124, 9: 27.877,
    10: 29.588, 11: 31.264, 12: 32.909, 13: 34.528, 14: 36.123, 15: 37.697, 16: 39.252, 17: 40.790,
    18: 42.312, 19: 43.820, 20: 45.315,
}


def chi_square(observed: Sequence[int], weights: Sequence[int]) -> float:
    """Pearson's statistic of observed counts per entry against the table's weights."""
    n, total = sum(observed), sum(weights)
    return sum((o - n * w / total) ** 2 / (n * w / total) for o, w in zip(observed, weights, strict=True))


__all__ = ["ALGORITHM", "CHI2_CRITICAL_P001", "Draw", "OddsEntry", "OddsTable", "OddsVersion", "chi_square",
           "commitment", "decode_odds", "draw", "draw_with", "parse_entries"]
