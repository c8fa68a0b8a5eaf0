"""``notecard campaign``: the business channel through a node's admin API (docs/business.md).

Business profiles and fan groups, custom card kinds, and campaigns: start one from a file
(a user per line, optionally ``user,qty``; sent in parts, then started), the brand's
followers or a fan group; follow its progress (``status --watch`` draws a progress bar),
pause, resume, cancel, and read its report.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from notecard.admin_client import AdminClient

#: Recipients per call when a file is sent: well inside the admin API's 256 KiB body.
FILE_PART = 5000
HOUR_MS = 3_600_000
BAR_WIDTH = 40


def build(sub: Any, url: argparse.ArgumentParser, admin_url_help: str) -> None:
    campaign = sub.add_parser("campaign", help="business accounts, custom card kinds and campaigns "
                                               "(docs/business.md)")
    campaign.add_argument("--url", default=os.environ.get("NOTECARD_ADMIN_URL", "http://127.0.0.1:8766"),
                          help=admin_url_help)
    cmds = campaign.add_subparsers(dest="action", required=True)
    operator = argparse.ArgumentParser(add_help=False)
    operator.add_argument("--operator", default=os.environ.get("USER", "operator"), help="who acts (audited)")

    def action(name: str, helptext: str, *, audited: bool = True) -> argparse.ArgumentParser:
        parents = [url, operator] if audited else [url]
        parser: argparse.ArgumentParser = cmds.add_parser(name, help=helptext, parents=parents)
        return parser

    business = action("business", "show a business profile, or set --business, --followers, --shop")
    business.add_argument("user", help="user id")
    business.add_argument("--business", action=argparse.BooleanOptionalAction, default=None,
                          help="a verified business")
    business.add_argument("--followers", type=int, help="the follower count (from the social service)")
    business.add_argument("--shop", action=argparse.BooleanOptionalAction, default=None,
                          help="the shop window is enabled")
    fans = action("fans", "a fan group's members, or --add MEMBER --level N, or --remove MEMBER")
    fans.add_argument("user", help="the group's owner")
    fans.add_argument("group", help="the fan group's name")
    fans.add_argument("--add", metavar="MEMBER", help="add (or move) a member at --level")
    fans.add_argument("--level", type=int, default=1, help="the member's fan level (default 1)")
    fans.add_argument("--remove", metavar="MEMBER", help="remove a member")
    fans.add_argument("--min-level", type=int, default=1, help="list members at this level or above")
    kind = action("kind", "show a custom card kind, or define it with its budget (--brand --name --artwork "
                          "--budget), or --fund CARDS more")
    kind.add_argument("kind", help="1-32 of a-z 0-9 _")
    kind.add_argument("--brand", help="the brand that owns the kind")
    kind.add_argument("--name", help="the kind's name as shown")
    kind.add_argument("--artwork", help="an https:// URL")
    kind.add_argument("--budget", type=int, help="cards minted into the brand's account")
    kind.add_argument("--fund", type=int, help="cards more")
    start = action("start", "start a campaign: --file, --followers or --fan-group")
    start.add_argument("campaign_id", help="1-24 of A-Z a-z 0-9 _ -")
    start.add_argument("--brand", required=True, help="the brand that issues")
    start.add_argument("--kind", required=True, help="the brand's custom kind")
    start.add_argument("--hours", type=float, default=72.0, help="the campaign's window (default 72 h)")
    source = start.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="a user per line, or user,qty")
    source.add_argument("--followers", action="store_true", help="every follower of the brand")
    source.add_argument("--fan-group", metavar="GROUP", help="the brand's fan group")
    start.add_argument("--qty", type=int, default=1, help="cards each (file lines without one, followers)")
    start.add_argument("--min-level", type=int, default=1, help="with --fan-group")
    start.add_argument("--per-level", default="", metavar="L=Q,...", help="with --fan-group: quantity by level")
    status = action("status", "campaigns' progress; --watch draws a bar until the campaign stops", audited=False)
    status.add_argument("campaign_id", nargs="?", help="one campaign (default: all)")
    status.add_argument("--watch", action="store_true", help="redraw a progress bar until it stops")
    report = action("report", "recipients by outcome and the budget's balance", audited=False)
    report.add_argument("campaign_id", help="campaign id")
    for name in ("pause", "resume", "cancel"):
        action(name, f"{name} a campaign").add_argument("campaign_id", help="campaign id")


async def run(args: argparse.Namespace, admin_token: str, out: TextIO = sys.stdout) -> Any:
    async with AdminClient(args.url, admin_token) as api:
        match args.action:
            case "business":
                changes = {k: getattr(args, k) for k in ("business", "followers", "shop")
                           if getattr(args, k) is not None}
                if changes:
                    return await api.call("PATCH", f"/admin/business/{args.user}",
                                          {**changes, "operator": args.operator})
                return await api.call("GET", f"/admin/business/{args.user}")
            case "fans":
                path = f"/admin/business/{args.user}/fans/{args.group}"
                if args.add:
                    await api.call("PUT", f"{path}/{args.add}", {"level": args.level, "operator": args.operator})
                if args.remove:
                    await api.call("DELETE", f"{path}/{args.remove}", {"operator": args.operator})
                return await api.call("GET", f"{path}?min_level={args.min_level}")
            case "kind":
                return await _kind(api, args)
            case "start":
                return await _start(api, args)
            case "status":
                if args.campaign_id is None:
                    return await api.call("GET", "/admin/campaigns")
                if args.watch:
                    return await watch(api, args.campaign_id, out)
                return await api.call("GET", f"/admin/campaigns/{args.campaign_id}")
            case "report":
                return await api.call("GET", f"/admin/campaigns/{args.campaign_id}/report")
            case "pause" | "resume" | "cancel":
                return await api.call("POST", f"/admin/campaigns/{args.campaign_id}/{args.action}",
                                      {"operator": args.operator})
    raise AssertionError(args.action)


async def _kind(api: AdminClient, args: argparse.Namespace) -> Any:
    if args.fund is not None:
        return await api.call("POST", f"/admin/kinds/{args.kind}/fund",
                              {"brand": args.brand, "cards": args.fund, "operator": args.operator})
    if args.budget is not None:
        return await api.call("PUT", f"/admin/kinds/{args.kind}", {
            "brand": args.brand, "name": args.name, "artwork": args.artwork, "budget_cards": args.budget,
            "operator": args.operator})
    return await api.call("GET", f"/admin/kinds/{args.kind}")


def read_recipients(path: Path, qty: int) -> list[list[Any]]:
    """``user`` or ``user,qty`` per line; blank lines and ``#`` comments are skipped."""
    out: list[list[Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        user, _, count = text.partition(",")
        try:
            out.append([user.strip(), int(count) if count.strip() else qty])
        except ValueError:
            raise ValueError(f"{path}:{number}: expected user or user,qty") from None
    return out


async def _start(api: AdminClient, args: argparse.Namespace) -> Any:
    base = {"campaign_id": args.campaign_id, "brand": args.brand, "kind": args.kind, "operator": args.operator,
            "ends_at_ms": int(time.time() * 1000 + args.hours * HOUR_MS)}
    if args.followers:
        return await api.call("POST", "/admin/campaigns", {**base, "followers": {"qty": args.qty}})
    if args.fan_group:
        per_level = dict(p.split("=", 1) for p in args.per_level.split(",") if "=" in p)
        return await api.call("POST", "/admin/campaigns", {**base, "fan_group": {
            "group": args.fan_group, "min_level": args.min_level,
            "per_level": {k.strip(): int(v) for k, v in per_level.items()}}})
    recipients = read_recipients(args.file, args.qty)
    await api.call("POST", "/admin/campaigns", {**base, "recipients": recipients[:FILE_PART], "open": True})
    for start in range(FILE_PART, len(recipients), FILE_PART):
        await api.call("POST", f"/admin/campaigns/{args.campaign_id}/recipients",
                       {"recipients": recipients[start : start + FILE_PART], "operator": args.operator})
    return await api.call("POST", f"/admin/campaigns/{args.campaign_id}/start", {"operator": args.operator})


def progress_bar(status: dict[str, Any]) -> str:
    total, issued = int(status["total"]), int(status["issued"])
    done = BAR_WIDTH if total == 0 else BAR_WIDTH * issued // total
    share = 100.0 if total == 0 else 100.0 * issued / total
    return (f"{status['campaign_id']} [{'#' * done}{'.' * (BAR_WIDTH - done)}] {issued}/{total} "
            f"{share:5.1f}% {status['state']} refused {status['refused']}")


async def watch(api: AdminClient, campaign_id: str, out: TextIO, every_s: float = 1.0) -> Any:
    """Redraw the bar until the campaign is no longer running; then its final status."""
    while True:
        status = await api.call("GET", f"/admin/campaigns/{campaign_id}")
        out.write("\r" + progress_bar(status))
        out.flush()
        if status["state"] not in ("running", "loading"):
            out.write("\n")
            return status
        await asyncio.sleep(every_s)
