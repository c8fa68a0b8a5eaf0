"""``notecard odds verify``: check a lucky card's draw from public data alone (clearing/odds.py,
docs/regions.md "Published odds").

It reads the published odds (``GET /odds`` of any node, or a saved copy of it), takes the
version the gift was drawn from once that version is retired and its key revealed, checks the
key against the commitment that was published before the draw, and computes the draw again::

    notecard odds verify --url http://node:8081 --table sea-lucky --version 3 \\
        --recipient bob --gift g-01HV3K9Z --seed 9c1f... --bonus 20

Exit 0: the draw is what the gift records (``--seed``/``--bonus`` in minor units, with
``--units-per-card``, default 10); 1: it is not (or the key does not match its commitment);
2: the version is still in force (its key is not revealed yet), or it is not published.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Sequence
from typing import Any

from clearing.odds import OddsEntry, commitment, draw_with


def _published(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
            return data
    with urllib.request.urlopen(args.url.rstrip("/") + "/odds", timeout=10) as response:
        published: dict[str, Any] = json.load(response)
    return published


def verify(published: dict[str, Any], table: str, version: int, recipient: str, gift_id: str,
           seed: str | None, bonus_units: int | None, units_per_card: int) -> tuple[int, dict[str, Any]]:
    """(exit status, what was found) for one draw."""
    found = next((t for t in published.get("tables", []) if t.get("table") == table), None)
    if found is None:
        return 2, {"error": f"no table {table!r} is published"}
    if found["current"]["version"] == version:
        return 2, {"error": f"version {version} is still in force; its key is revealed when it is retired"}
    revealed = next((v for v in found.get("revealed", []) if v.get("version") == version), None)
    if revealed is None:
        return 2, {"error": f"version {version} of {table!r} is not published"}
    key = str(revealed["key"])
    if commitment(key) != revealed["commitment"]:
        return 1, {"error": "the revealed key does not match its published commitment"}
    entries = [OddsEntry(int(e["bonus"]), int(e["weight"])) for e in revealed["entries"]]
    drawn = draw_with(key, table, version, entries, recipient, gift_id)
    out = {"table": table, "version": version, "recipient": recipient, "gift_id": gift_id, "seed": drawn.seed,
           "entry": drawn.index, "bonus_cards": drawn.bonus, "bonus_units": drawn.bonus * units_per_card}
    ok = (seed is None or seed == drawn.seed) and (bonus_units is None or bonus_units == out["bonus_units"])
    out["matches"] = ok
    return (0 if ok else 1), out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="notecard odds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("verify", help="compute a lucky card's draw again from the published odds")
    where = check.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a node's HTTP (admin) address; GET /odds needs no token")
    where.add_argument("--file", help="a saved copy of GET /odds")
    check.add_argument("--table", required=True)
    check.add_argument("--version", type=int, required=True)
    check.add_argument("--recipient", required=True)
    check.add_argument("--gift", required=True, help="the gift id")
    check.add_argument("--seed", help="the seed the gift records (lucky_seed)")
    check.add_argument("--bonus", type=int, help="the bonus the gift records (lucky_bonus, minor units)")
    check.add_argument("--units-per-card", type=int, default=10)
    args = parser.parse_args(argv)
    status, out = verify(_published(args), args.table, args.version, args.recipient, args.gift, args.seed,
                         args.bonus, args.units_per_card)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return status
