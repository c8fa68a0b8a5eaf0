"""How a conformance step's observation is compared with what the case expects.

The TypeScript runner (clients/js/conformance/match.mjs) implements the same rules, and
tests/conformance/match_vectors.json pins both to the same answers:

- a map expects a subset: every expected key must match, other keys are ignored (so ``{}``
  matches any map: to say a key has nothing, use ``"$absent"``);
- a list expects the same length and each item to match in order;
- ``"$any"`` matches any present, non-null value; ``"$absent"`` a missing or null key;
- anything else must be equal, with its JSON type (``true`` is not ``1``, ``1`` is not ``"1"``).
"""

from __future__ import annotations

from typing import Any

ANY = "$any"
ABSENT = "$absent"


def mismatch(expected: Any, actual: Any, path: str = "$") -> str | None:
    """The first difference between ``expected`` and ``actual``, or None when they match."""
    if expected == ANY:
        return None if actual is not None else f"{path}: expected a value, got nothing"
    if expected == ABSENT:
        return None if actual is None else f"{path}: expected no value, got {actual!r}"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{path}: expected a map, got {actual!r}"
        for key, want in expected.items():
            problem = mismatch(want, actual.get(key), f"{path}.{key}")
            if problem is not None:
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return f"{path}: expected a list, got {actual!r}"
        if len(expected) != len(actual):
            return f"{path}: expected {len(expected)} items, got {len(actual)}: {actual!r}"
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            problem = mismatch(want, got, f"{path}[{index}]")
            if problem is not None:
                return problem
        return None
    if type(expected) is not type(actual) or expected != actual:
        return f"{path}: expected {expected!r}, got {actual!r}"
    return None
