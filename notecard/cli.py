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
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from gateway.auth import DEFAULT_TTL_S, mint_token
from gateway.config import ConfigError, GatewaySettings, effective, markdown_table, production_problems
from gateway.metrics import package_version
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
    if args.command == "dev" or getattr(args, "dev", False):
        overrides["dev"] = True
    return GatewaySettings.from_env(**overrides)


def _add_server_flags(parser: argparse.ArgumentParser, *, admin_port: bool = True) -> None:
    parser.add_argument("--host", help="WebSocket bind address (NOTECARD_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="WebSocket port (NOTECARD_PORT, default 8765)")
    if admin_port:
        parser.add_argument("--admin-port", type=int,
                            help="admin/metrics HTTP port (NOTECARD_ADMIN_PORT, default 8766)")
    parser.add_argument("--redis-url", help="Redis to use (NOTECARD_REDIS_URL); without one, only development "
                                            "runs a private redis-server")


_ADMIN_URL_HELP = "a node's admin API (default: NOTECARD_ADMIN_URL, else http://127.0.0.1:8766)"
_SECRETS_HELP = ("Secrets: NOTECARD_TOKEN_SECRET and NOTECARD_ADMIN_TOKEN when set, else the file "
                 "DATA_DIR/secrets.json (NOTECARD_DATA_DIR, default ./.notecard: run from the folder where the "
                 "nodes were started).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notecard", description="Note-card gift gateway",
                                     epilog="Settings: NOTECARD_* environment variables (notecard config).")
    parser.add_argument("--version", action="version", version=f"notecard {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run gateway node(s) on a configured Redis with configured secrets",
                           description="Run gateway node(s). Outside development it needs NOTECARD_REDIS_URL (or "
                                       "NOTECARD_SENTINELS), NOTECARD_TOKEN_SECRET and NOTECARD_ADMIN_TOKEN.")
    _add_server_flags(serve)
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (NOTECARD_WORKERS)")
    serve.add_argument("--dev", action="store_true",
                       help="development (NOTECARD_DEV): a private redis-server when no Redis is configured, "
                            "secrets generated into the data folder")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    dev = sub.add_parser("dev", help="local Redis + gateway nodes + the demo",
                         description="A private redis-server and gateway nodes: node i on PORT + 2i, its admin "
                                     "API on PORT + 2i + 1 (8765/8766, 8767/8768 by default).")
    _add_server_flags(dev, admin_port=False)
    dev.add_argument("--nodes", type=int, default=2, help="gateway processes (default 2)")
    dev.add_argument("--cluster", action="store_true",
                     help="a fresh local Redis Cluster (a replica per shard) instead of one redis-server; "
                          "its data lasts as long as the command")
    dev.add_argument("--shards", type=int, default=3, help="primaries of --cluster (default 3)")
    dev.add_argument("--no-demo", action="store_true", help="do not run the demo")
    dev.add_argument("--once", action="store_true", help="exit after the demo instead of serving on")

    demo = sub.add_parser("demo", help="run the demo against running nodes", epilog=_SECRETS_HELP)
    demo.add_argument("--url", action="append",
                      help="node WebSocket URL (twice for two nodes; default ws://NOTECARD_HOST:NOTECARD_PORT)")
    demo.add_argument("--admin-url", default=os.environ.get("NOTECARD_ADMIN_URL", "http://127.0.0.1:8766"),
                      help=_ADMIN_URL_HELP)

    token = sub.add_parser("token", help="mint a client token (an HS256 JWT) for development", epilog=_SECRETS_HELP,
                           description="Print a client token for USER: a JWT signed with HS256 and the nodes' token "
                                       "secret, for the audience NOTECARD_JWT_AUDIENCE (and the issuer "
                                       "NOTECARD_JWT_ISSUER, when set).")
    token.add_argument("user", help="the user id the token names")
    token.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help="seconds (default one day)")
    token.add_argument("--app", default="main", help="linked app the connection comes from (default main)")

    config = sub.add_parser("config", help="print the effective configuration, or check it",
                            description="Every NOTECARD_* setting, its value (secrets masked) and where it came "
                                        "from.")
    config.add_argument("--check", action="store_true",
                        help="validate without starting: exit 0 when a node could start with this configuration, "
                             "2 with every problem otherwise")
    config.add_argument("--dev", action="store_true", help="check as for development (notecard dev, serve --dev)")
    config.add_argument("--markdown", action="store_true", help="print README's configuration table")

    probe = sub.add_parser("probe", help="ask this host's node whether it is alive (a container health check)")
    probe.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")

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
    "risk": "the risk engine: run the scorer, train and evaluate the model (risk.cli)",
    "feed": "gift events and ledger entries as JSON lines, in a consumer group (notecard.feed)",
    "ledger": "PostgreSQL as the book of record: consumer, lag, reconcile, restore (ledger.cli)",
    "webhooks": "POST gift events, signed, to the platform's URLs, with retries and dead letters (notecard.webhooks)",
    "dashboards": "business dashboards from PostgreSQL: generate a data set, show, render PNGs (dashboards.cli)",
    "odds": "check a lucky card's draw from the published odds (notecard.odds)",
}
#: Tools that live outside loadtest/.
_TOOL_MODULES = {"risk": "risk.cli", "feed": "notecard.feed", "ledger": "ledger.cli",
                 "webhooks": "notecard.webhooks", "dashboards": "dashboards.cli", "odds": "notecard.odds"}


def _build_admin(sub: Any) -> None:
    admin = sub.add_parser("admin", help="operator actions through a node's admin API", epilog=_SECRETS_HELP)
    admin.add_argument("--url", default=os.environ.get("NOTECARD_ADMIN_URL", "http://127.0.0.1:8766"),
                       help=_ADMIN_URL_HELP)
    # The same --url after the action too (`admin user alice --url ...`); SUPPRESS keeps an
    # absent one from overwriting the value given before the action.
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument("--url", default=argparse.SUPPRESS, help=_ADMIN_URL_HELP)
    cmds = admin.add_subparsers(dest="action", required=True)

    def action(name: str, helptext: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = cmds.add_parser(name, help=helptext, parents=[url])
        return parser

    create = action("create-user", "create a user (verified unless --unverified)")
    create.add_argument("user", help="user id: 1-64 of A-Z a-z 0-9 _ . : -")
    create.add_argument("--unverified", action="store_true", help="not real-name verified")
    create.add_argument("--vip", action="store_true", help="a VIP (more gifts a day)")
    create.add_argument("--banned", action="store_true", help="banned from gifting")
    create.add_argument("--age-days", type=float, help="account created this many days ago (default now)")
    create.add_argument("--app", help="home app of the account (default main)")
    create.add_argument("--region", help="the account's region, e.g. eu (default global; docs/regions.md)")
    show = action("user", "show a user's flags and balances (in cards and in minor units)")
    show.add_argument("user", help="user id")
    flags = action("set", "set flags: --verified/--no-verified, --vip/--no-vip, --banned/--no-banned")
    flags.add_argument("user", help="user id")
    for name in ("verified", "vip", "banned"):
        flags.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                           help=f"set or clear {name}")
    flags.add_argument("--region", help="move the account to this region (docs/regions.md)")
    flags.add_argument("--gender", choices=("male", "female", ""),
                       help="the account's gender, read by the guardian rule ('' clears it; docs/regions.md)")
    guardian = action("guardian", "link a guardian to a ward (--set USER), unlink it (--unlink), or show both "
                                  "with the audit log")
    guardian.add_argument("user", help="the ward's user id")
    link = guardian.add_mutually_exclusive_group()
    link.add_argument("--set", dest="guardian", help="the guardian's user id")
    link.add_argument("--unlink", action="store_true", help="remove the ward's guardian")
    guardian.add_argument("--operator", default="cli", help="who acts, for the audit log (default cli)")
    mint = action("mint", "mint whole cards to a user")
    mint.add_argument("user", help="user id")
    mint.add_argument("qty", type=int, help="whole cards (not minor units)")
    mint.add_argument("--kind", default="note", help="card kind (default note)")
    for name, helptext, a, b in (("follow", "A starts following B", "follower", "followee"),
                                 ("unfollow", "A stops following B", "follower", "followee"),
                                 ("block", "A blocks B", "blocker", "blocked"),
                                 ("unblock", "A lifts the block on B", "blocker", "blocked")):
        p = action(name, helptext)
        p.add_argument("a", metavar=a.upper(), help=f"the {a}'s user id")
        p.add_argument("b", metavar=b.upper(), help=f"the {b}'s user id")
        if name == "follow":
            p.add_argument("--days-ago", type=float, default=0.0, help="the follow started this long ago (default 0)")
            p.add_argument("--mutual", action="store_true", help="also B follows A, from the same time")
    gift = action("gift", "show a gift")
    gift.add_argument("gift_id", help="gift id")
    _add_backend_actions(action)
    action("invariant", "run the conservation check (minted = balances + holds + consumed)")
    _add_scene_actions(action)
    points = action("points", "a user's points, joint-campaign eligibility and inventory")
    points.add_argument("user", help="user id")
    _build_risk_admin(action)
    mentor = action("mentor", "bind APPRENTICE (a newcomer) to MENTOR, once")
    mentor.add_argument("apprentice", help="the newcomer's user id")
    mentor.add_argument("mentor", help="the mentor's user id")


def _add_scene_actions(action: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """The operators' settings: scenes and festivals."""
    scenes = action("scenes", "show scene settings and festivals, or change settings")
    scenes.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help='e.g. --set newcomer_free_gifts=5 --set quote_ttl_ms=15000 (repeatable)')
    fest = action("festival", "create or replace a festival window [START, END)")
    fest.add_argument("festival_id", help="festival id")
    fest.add_argument("--start", required=True, help="local date-time in the platform zone, 2026-02-17T00:00")
    fest.add_argument("--end", required=True, help="local date-time, the first moment after the window")
    fest.add_argument("--name", help="display name (default the id)")
    fest.add_argument("--multiplier", type=float, help="cost multiplier (default: the configured 1.2)")
    fest.add_argument("--frame", help="the avatar frame redeemable during the window")
    unfest = action("delete-festival", "remove a festival window")
    unfest.add_argument("festival_id", help="festival id")


def _add_backend_actions(action: Any) -> None:
    """What the platform's backend does through the API (docs/server-api.md), by hand."""
    send = action("send-gift", "send a gift for SENDER to RECIPIENT (who must be online), as the client would")
    send.add_argument("sender", help="the sender's user id")
    send.add_argument("recipient", help="the recipient's user id")
    send.add_argument("--qty", type=int, default=1, help="whole cards (default 1)")
    send.add_argument("--kind", help="card kind (default the first configured)")
    send.add_argument("--gift-id", help="the gift's id; give the same one to retry (default a new random id)")
    kick = action("disconnect", "close USER's connections on every node (close code 3506)")
    kick.add_argument("user", help="user id")


def _build_risk_admin(action: Callable[[str, str], argparse.ArgumentParser]) -> None:
    appeals = action("appeals", "risk-engine appeals: list the open ones, or approve / reject a user's")
    appeals.add_argument("decision", nargs="?", choices=("list", "approve", "reject"), default="list",
                         help="list (default), approve or reject")
    appeals.add_argument("user", nargs="?", help="the appealing user (approve, reject)")
    appeals.add_argument("--operator", default=os.environ.get("USER", "operator"), help="who decides (audited)")
    appeals.add_argument("--note", default="", help="why (audited)")
    risk = action("risk", "a user's risk state, or put them in a tier (--tier none lifts it)")
    risk.add_argument("user", help="user id")
    risk.add_argument("--tier", choices=("none", "limit", "freeze", "ban"), help="set the tier")
    risk.add_argument("--device", default="-", help="with --tier ban: the device to ban in every app")
    risk.add_argument("--operator", default=os.environ.get("USER", "operator"), help="who acts (audited)")
    switches = action("risk-switches", "the scorer's switches: shadow mode and each rule's mode")
    switches.add_argument("--shadow", action=argparse.BooleanOptionalAction, default=None,
                          help="score and audit only, act on nothing")
    switches.add_argument("--rule", action="append", default=[], metavar="RULE=MODE",
                          help="script, ip_ring, device_farm or model = enforce, shadow or off (repeatable)")
    switches.add_argument("--operator", default=os.environ.get("USER", "operator"), help="who changes them")


async def _admin(args: argparse.Namespace, admin_token: str) -> Any:
    now = int(time.time() * 1000)
    async with AdminClient(args.url, admin_token) as api:
        match args.action:
            case "create-user":
                created = None if args.age_days is None else now - int(args.age_days * DAY_MS)
                return await api.create_user(args.user, verified=not args.unverified, vip=args.vip,
                                             banned=args.banned, created_at_ms=created, app=args.app,
                                             region=args.region)
            case "user":
                return await api.get_user(args.user)
            case "set":
                flags = {k: getattr(args, k) for k in ("verified", "vip", "banned", "region", "gender")
                         if getattr(args, k) is not None}
                return await api.set_flags(args.user, **flags)
            case "guardian":
                if args.guardian is None and not args.unlink:
                    return await api.guardian(args.user)
                return await api.link_guardian(args.user, None if args.unlink else args.guardian, args.operator)
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
            case "send-gift":
                gift_id = args.gift_id or f"admin-{uuid.uuid4().hex}"
                return await api.send_gift(gift_id, args.sender, args.recipient, qty=args.qty, kind=args.kind)
            case "disconnect":
                return await api.disconnect(args.user)
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
            case "appeals":
                if args.decision == "list":
                    return await api.appeals()
                if not args.user:
                    raise ValueError(f"appeals {args.decision} needs the user")
                return await api.decide_appeal(args.user, approve=args.decision == "approve",
                                               operator=args.operator, note=args.note)
            case "risk":
                if args.tier is None:
                    return await api.risk(args.user)
                return await api.set_risk(args.user, args.tier, operator=args.operator, device=args.device)
            case "risk-switches":
                changes: dict[str, Any] = {}
                if args.shadow is not None:
                    changes["shadow"] = args.shadow
                if args.rule:
                    changes["rules"] = dict(text.split("=", 1) for text in args.rule if "=" in text)
                return await api.risk_switches(args.operator, **changes)
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

        tool = importlib.import_module(_TOOL_MODULES.get(argv[0], f"loadtest.{argv[0]}"))
        status: int = tool.main(argv[1:])
        return status
    args = build_parser().parse_args(argv)
    if args.command == "config" and args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    try:
        settings = _settings(args)
    except ConfigError as exc:
        _fail("configuration error:", *str(exc).splitlines())
        return 2
    if args.command == "config":
        return _config(settings, check=args.check)
    if args.command == "probe":
        return _probe(settings, ready=args.ready)
    if args.command == "serve" and production_problems(settings):
        _fail("will not start:", *production_problems(settings))
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
            if args.cluster and (settings.redis_url or settings.sentinels or settings.redis_cluster):
                _fail("notecard dev --cluster starts its own Redis Cluster: unset NOTECARD_REDIS_URL, "
                      "NOTECARD_SENTINELS and NOTECARD_REDIS_CLUSTER, or drop --cluster")
                return 2
            if args.cluster and not 1 <= args.shards <= 16:
                _fail("--shards: from 1 to 16")
                return 2
            return runner.dev(settings, args.nodes, demo=not args.no_demo, once=args.once,
                              shards=args.shards if args.cluster else 0)
        keys = _client_secrets(settings, generate=args.command == "token")
        if args.command == "token":
            print(mint_token(keys.token_secret, args.user, ttl_s=args.ttl, app=args.app,
                             audience=settings.jwt_audience, issuer=settings.jwt_issuer))
            return 0
        if args.command == "demo":
            from notecard.demo import run_demo

            urls = args.url or [f"ws://{settings.host}:{settings.port}"]
            asyncio.run(run_demo(urls, args.admin_url, keys))
            return 0
        if args.command == "admin":
            result = _in_cards(asyncio.run(_admin(args, keys.admin_token)))
            sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
    except AdminApiError as exc:
        _fail(str(exc), *(_unauthorized_hint(settings, args.url) if exc.status == 401 else ()))
        return 1
    except _NoSecrets as exc:
        _fail(*str(exc).splitlines())
        return 1
    except (OSError, RuntimeError, ValueError) as exc:
        _fail(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)


def _fail(first: str, *more: str) -> None:
    print(f"notecard: {first}", *(f"  {line}" for line in more), sep="\n", file=sys.stderr)


class _NoSecrets(Exception):
    """The client commands would have to invent secrets that no node has."""


def _client_secrets(settings: GatewaySettings, *, generate: bool) -> secrets.Secrets:
    """The secrets ``token``, ``admin`` and ``demo`` use: the environment's, else the data
    folder's. Run from another folder, the file is not there: ``admin`` and ``demo`` say so
    (new secrets could only be refused, 401); ``token`` creates them and says so (a node
    started afterwards, here, uses them)."""
    if settings.token_secret and settings.admin_token:
        return secrets.Secrets(settings.token_secret, settings.admin_token)
    path = (settings.data_dir / secrets.FILE_NAME).absolute()
    if not path.exists():
        if not generate:
            raise _NoSecrets(
                f"no secrets: {path} does not exist and NOTECARD_ADMIN_TOKEN is not set.\n"
                "Run notecard from the folder where the nodes were started (notecard dev keeps its secrets in "
                "./.notecard), or set NOTECARD_DATA_DIR, or NOTECARD_TOKEN_SECRET and NOTECARD_ADMIN_TOKEN.")
        print(f"notecard: generated new secrets in {path}; nodes started with other secrets will refuse this "
              "token (run from the folder where the nodes were started, or set NOTECARD_TOKEN_SECRET)",
              file=sys.stderr)
    return secrets.load_or_create(settings.data_dir, settings.token_secret, settings.admin_token)


def _unauthorized_hint(settings: GatewaySettings, url: str) -> list[str]:
    source = ("NOTECARD_ADMIN_TOKEN" if settings.admin_token
              else str((settings.data_dir / secrets.FILE_NAME).absolute()))
    return [f"the admin token came from {source}, and the node at {url} has another:",
            "run notecard from the folder where that node was started, or set NOTECARD_ADMIN_TOKEN "
            "(or NOTECARD_DATA_DIR) to its."]


def _in_cards(result: Any) -> Any:
    """Balances as ``mint`` takes them, whole cards, beside the API's minor units."""
    if not isinstance(result, dict):
        return result
    if isinstance(result.get("balances"), dict):
        return result | {"balances": _in_cards(result["balances"])}
    per_card = result.get("units_per_card")
    if not isinstance(per_card, int) or "available" not in result:
        return result

    def cards(units: dict[str, int]) -> dict[str, float | int]:
        return {kind: amount // per_card if amount % per_card == 0 else amount / per_card
                for kind, amount in units.items()}

    return {"available_cards": cards(result["available"]), "held_cards": cards(result["held"]),
            "available_units": result["available"], "held_units": result["held"], "units_per_card": per_card}


def _config(settings: GatewaySettings, *, check: bool) -> int:
    problems = production_problems(settings)
    if check:
        if problems:
            _fail("a node would not start:", *problems)
            return 2
        where = "development" if settings.dev else "a deployment"
        print(f"configuration ok for {where}; Redis: {settings.redis_address}")
        return 0
    rows = effective(settings)
    width = max(len(name) for name, _, _ in rows)
    for name, value, origin in rows:
        print(f"{name:<{width}}  {value}  ({origin})")
    for problem in problems:
        print(f"# would not start: {problem}")
    return 0


def _probe(settings: GatewaySettings, *, ready: bool) -> int:
    """GET this host's probe listener (else the admin listener): 0 when it answers 200."""
    import urllib.error
    import urllib.request

    port = settings.probe_port if settings.probe_port is not None else settings.admin_port
    bound = settings.probe_host if settings.probe_port is not None else settings.admin_host
    host = "127.0.0.1" if bound in ("0.0.0.0", "::", "") else bound
    url = f"http://{host}:{port}/{'readyz' if ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as resp:
            print(f"{url}: {resp.status}")
            return 0
    except urllib.error.HTTPError as exc:
        _fail(f"{url}: {exc.code} {exc.read(500).decode(errors='replace')}")
    except OSError as exc:
        _fail(f"{url}: {exc}")
    return 1


#: A health check that takes longer than this has failed (Docker's own timeout is longer).
PROBE_TIMEOUT_S = 2.0


if __name__ == "__main__":
    sys.exit(main())
