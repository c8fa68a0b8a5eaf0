"""The ``notecard`` command: serve, dev, demo, token, admin.

Settings come from ``NOTECARD_*`` environment variables (README "Configuration"); the
flags here override the most common ones.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.auth import DEFAULT_TTL_S, mint_token
from gateway.config import ConfigError, GatewaySettings
from notecard import secrets
from notecard.admin_client import AdminApiError, AdminClient

DAY_MS = 86_400_000


def _settings(args: argparse.Namespace) -> GatewaySettings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "admin_port", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "redis_url", None):
        overrides["redis_url"] = args.redis_url
    return GatewaySettings.from_env(**overrides)


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="WebSocket bind address (NOTECARD_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="WebSocket port (NOTECARD_PORT, default 8765)")
    parser.add_argument("--admin-port", type=int, help="admin/metrics HTTP port (NOTECARD_ADMIN_PORT, default 8766)")
    parser.add_argument("--redis-url", help="use this Redis instead of a local child (REDIS_URL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notecard", description="Note-card gift gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run gateway node(s); starts a local redis-server if none is configured")
    _add_server_flags(serve)
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (NOTECARD_WORKERS)")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    dev = sub.add_parser("dev", help="local Redis + gateway nodes + the demo")
    _add_server_flags(dev)
    dev.add_argument("--nodes", type=int, default=2, help="gateway processes (default 2)")
    dev.add_argument("--no-demo", action="store_true", help="do not run the demo")
    dev.add_argument("--once", action="store_true", help="exit after the demo instead of serving on")

    demo = sub.add_parser("demo", help="run the demo against running nodes")
    demo.add_argument("--url", action="append", help="node WebSocket URL (twice for two nodes)")
    demo.add_argument("--admin-url", default=os.environ.get("NOTECARD_ADMIN_URL", "http://127.0.0.1:8766"))

    token = sub.add_parser("token", help="mint a client token for development")
    token.add_argument("user")
    token.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help="seconds (default one day)")
    token.add_argument("--app", default="main", help="linked app the connection comes from")

    _build_admin(sub)
    for name, helptext in _TOOLS.items():
        sub.add_parser(name, help=helptext + "; see notecard " + name + " --help")
    return parser


#: Subcommands implemented in loadtest/ (module ``loadtest.<name>``, function ``main(argv) -> int``).
_TOOLS = {
    "bench": "throughput and latency benchmark against the machine's ceilings (loadtest.bench)",
    "drill": "failover drill: bank workload under injected faults, then the checks (loadtest.drill)",
    "fuzz": "fuzz the protocol decoder and a live gateway's frame handling (loadtest.fuzz)",
    "micro": "CPU per operation of a gift's parts: Redis calls, pub/sub, frames, codec (loadtest.micro)",
}


def _build_admin(sub: Any) -> None:
    admin = sub.add_parser("admin", help="operator actions through a node's admin API")
    admin.add_argument("--url", default=os.environ.get("NOTECARD_ADMIN_URL", "http://127.0.0.1:8766"))
    cmds = admin.add_subparsers(dest="action", required=True)
    create = cmds.add_parser("create-user", help="create a user")
    create.add_argument("user")
    create.add_argument("--unverified", action="store_true", help="not real-name verified")
    create.add_argument("--vip", action="store_true")
    create.add_argument("--banned", action="store_true")
    create.add_argument("--age-days", type=float, help="account created this many days ago")
    create.add_argument("--app", help="home app of the account")
    show = cmds.add_parser("user", help="show a user's flags and balances")
    show.add_argument("user")
    flags = cmds.add_parser("set", help="set flags: --verified/--no-verified, --vip/--no-vip, --banned/--no-banned")
    flags.add_argument("user")
    for name in ("verified", "vip", "banned"):
        flags.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None)
    mint = cmds.add_parser("mint", help="mint whole cards to a user")
    mint.add_argument("user")
    mint.add_argument("qty", type=int)
    mint.add_argument("--kind", default="note")
    for action, helptext in (("follow", "FOLLOWER starts following FOLLOWEE"), ("unfollow", "stop following"),
                             ("block", "BLOCKER blocks BLOCKED"), ("unblock", "lift a block")):
        p = cmds.add_parser(action, help=helptext)
        p.add_argument("a")
        p.add_argument("b")
        if action == "follow":
            p.add_argument("--days-ago", type=float, default=0.0, help="the follow started this long ago")
            p.add_argument("--mutual", action="store_true", help="also B follows A, from the same time")
    gift = cmds.add_parser("gift", help="show a gift")
    gift.add_argument("gift_id")
    cmds.add_parser("invariant", help="run the conservation check")
    scenes = cmds.add_parser("scenes", help="show scene settings and festivals, or change settings")
    scenes.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help='e.g. --set newcomer_free_gifts=5 --set quote_ttl_ms=15000 (repeatable)')
    fest = cmds.add_parser("festival", help="create or replace a festival window [START, END)")
    fest.add_argument("festival_id")
    fest.add_argument("--start", required=True, help="local date-time in the platform zone, 2026-02-17T00:00")
    fest.add_argument("--end", required=True)
    fest.add_argument("--name")
    fest.add_argument("--multiplier", type=float, help="cost multiplier (default: the configured 1.2)")
    fest.add_argument("--frame", help="the avatar frame redeemable during the window")
    unfest = cmds.add_parser("delete-festival", help="remove a festival window")
    unfest.add_argument("festival_id")
    points = cmds.add_parser("points", help="a user's points, joint-campaign eligibility and inventory")
    points.add_argument("user")
    mentor = cmds.add_parser("mentor", help="bind APPRENTICE (a newcomer) to MENTOR, once")
    mentor.add_argument("apprentice")
    mentor.add_argument("mentor")


async def _admin(args: argparse.Namespace, admin_token: str) -> Any:
    now = int(time.time() * 1000)
    async with AdminClient(args.url, admin_token) as api:
        match args.action:
            case "create-user":
                created = None if args.age_days is None else now - int(args.age_days * DAY_MS)
                return await api.create_user(args.user, verified=not args.unverified, vip=args.vip,
                                             banned=args.banned, created_at_ms=created, app=args.app)
            case "user":
                return await api.get_user(args.user)
            case "set":
                flags = {k: getattr(args, k) for k in ("verified", "vip", "banned") if getattr(args, k) is not None}
                return await api.set_flags(args.user, **flags)
            case "mint":
                return await api.mint(args.user, args.qty, args.kind)
            case "follow":
                since = now - int(args.days_ago * DAY_MS)
                await api.follow(args.a, args.b, since)
                if args.mutual:
                    await api.follow(args.b, args.a, since)
                return {"ok": True}
            case "unfollow":
                return await api.unfollow(args.a, args.b)
            case "block":
                return await api.block(args.a, args.b)
            case "unblock":
                return await api.unblock(args.a, args.b)
            case "gift":
                return await api.gift(args.gift_id)
            case "invariant":
                return await api.invariant()
            case "scenes":
                if not args.set:
                    return await api.scenes()
                return await api.set_scenes(**dict(_setting(text) for text in args.set))
            case "festival":
                return await api.put_festival(args.festival_id, start=args.start, end=args.end, name=args.name,
                                              multiplier=args.multiplier, frame=args.frame)
            case "delete-festival":
                return await api.delete_festival(args.festival_id)
            case "points":
                return await api.points(args.user)
            case "mentor":
                return await api.bind_mentor(args.apprentice, args.mentor)
    raise AssertionError(args.action)


def _setting(text: str) -> tuple[str, Any]:
    """``field=json`` from the command line; a value that is not JSON is taken as a string."""
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set expects FIELD=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _TOOLS:
        # The tool parses its own flags (and --help).
        import importlib

        tool = importlib.import_module(f"loadtest.{argv[0]}")
        status: int = tool.main(argv[1:])
        return status
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"notecard: configuration error: {exc}", file=sys.stderr)
        return 2
    from notecard import runner

    try:
        if args.command == "serve":
            if args.worker:
                runner.install_uvloop()
                from gateway.logs import configure_logging
                from gateway.node import default_node_id

                node_id = settings.node_id or default_node_id()
                configure_logging(settings.log_level, settings.log_format, node_id)
                asyncio.run(runner.run_node(dataclasses.replace(settings, node_id=node_id)))
                return 0
            return runner.serve(settings)
        if args.command == "dev":
            return runner.dev(settings, args.nodes, demo=not args.no_demo, once=args.once)
        keys = secrets.load_or_create(settings.data_dir, settings.token_secret, settings.admin_token)
        if args.command == "token":
            print(mint_token(keys.token_secret, args.user, ttl_s=args.ttl, app=args.app))
            return 0
        if args.command == "demo":
            from notecard.demo import run_demo

            urls = args.url or [f"ws://{settings.host}:{settings.port}"]
            asyncio.run(run_demo(urls, args.admin_url, keys))
            return 0
        if args.command == "admin":
            result = asyncio.run(_admin(args, keys.admin_token))
            sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
    except AdminApiError as exc:
        print(f"notecard: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"notecard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
