"""The pseudonyms of erased users (clearing/erasure.py): ``erased-`` and 16 hex digits.

A small module of its own, so that the invariant check (which must know that a retained gift
half whose counterparty is a pseudonym has no partner half any more) need not import the
erasure. User ids starting with ``erased-`` are reserved for them (docs/regions.md).
"""

from __future__ import annotations

import re
import secrets

PSEUDONYM_PREFIX = "erased-"
_PSEUDONYM = re.compile(r"erased-[0-9a-f]{16}")


def new_pseudonym() -> str:
    """A random pseudonym: nothing about the user can be computed back from it."""
    return PSEUDONYM_PREFIX + secrets.token_hex(8)


def is_pseudonym(value: str) -> bool:
    return _PSEUDONYM.fullmatch(value) is not None
