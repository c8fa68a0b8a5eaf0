"""The first hour with the ``notecard`` command: versions, help, options in either order,
cards where cards were given, and secrets that do not silently differ from the nodes'."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from gateway import GatewayNode
from gateway.metrics import package_version
from notecard.cli import build_parser
from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "notecard", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False, cwd=cwd)


def bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTECARD_")}
    return env | extra


def test_version() -> None:
    done = run_cli("--version", env=bare_env())
    assert done.returncode == 0
    assert done.stdout.strip() == f"notecard {package_version()}" and package_version() != "unknown"


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


def test_every_option_and_argument_has_help() -> None:
    missing = []
    for prog, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_dev_has_no_admin_port_it_would_ignore() -> None:
    done = run_cli("dev", "--admin-port", "9000", env=bare_env())
    assert done.returncode == 2 and "unrecognized arguments: --admin-port" in done.stderr


async def test_admin_takes_url_before_or_after_the_action_and_shows_cards(node: GatewayNode, tmp_path: Path) -> None:
    env = bare_env(NOTECARD_TOKEN_SECRET=TOKEN_SECRET, NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN,
                   NOTECARD_ADMIN_URL="http://127.0.0.1:1")  # wrong: the flag must win
    done = await asyncio.to_thread(run_cli, "admin", "create-user", "carol", "--url", node.admin_url, env=env)
    assert done.returncode == 0, done.stderr
    minted = await asyncio.to_thread(run_cli, "admin", "--url", node.admin_url, "mint", "carol", "3", env=env)
    assert orjson.loads(minted.stdout)["available_cards"] == {"note": 3}
    for args in (("--url", node.admin_url, "user", "carol"), ("user", "carol", "--url", node.admin_url)):
        shown = await asyncio.to_thread(run_cli, "admin", *args, env=env)
        assert shown.returncode == 0, (args, shown.stderr)
        balances = orjson.loads(shown.stdout)["balances"]
        assert (balances["available_cards"], balances["available_units"]) == ({"note": 3}, {"note": 30})
        assert balances["units_per_card"] == 10


async def test_admin_from_another_folder_says_where_it_looked(node: GatewayNode, tmp_path: Path) -> None:
    """No secrets file there: it says so instead of inventing secrets the node refuses."""
    env = bare_env(NOTECARD_ADMIN_URL=node.admin_url)
    done = await asyncio.to_thread(run_cli, "admin", "user", "carol", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert f"{tmp_path / '.notecard' / 'secrets.json'} does not exist" in done.stderr
    assert "folder where the nodes were started" in done.stderr
    assert not (tmp_path / ".notecard").exists()  # nothing generated


async def test_a_wrong_admin_token_is_explained_and_logged_without_the_token(
    node: GatewayNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = bare_env(NOTECARD_ADMIN_URL=node.admin_url)
    token = await asyncio.to_thread(run_cli, "token", "carol", env=env, cwd=tmp_path)
    assert token.returncode == 0
    assert "generated new secrets" in token.stderr and "will refuse this token" in token.stderr
    generated = orjson.loads((tmp_path / ".notecard" / "secrets.json").read_bytes())
    with caplog.at_level(logging.WARNING, logger="notecard.gateway.admin"):
        done = await asyncio.to_thread(run_cli, "admin", "user", "carol", env=env, cwd=tmp_path)
    assert done.returncode == 1 and "401 UNAUTHORIZED" in done.stderr
    assert "the admin token came from" in done.stderr and str(tmp_path) in done.stderr
    rejected = [r for r in caplog.records if r.getMessage().startswith("admin token rejected")]
    assert rejected and rejected[0].__dict__["reason"] == "wrong"
    assert generated["admin_token"] not in caplog.text


async def test_a_rejected_client_token_is_logged_without_the_token(
    node: GatewayNode, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.auth import mint_token

    forged = mint_token("another-secret-" + "z" * 32, "mallory")
    with caplog.at_level(logging.WARNING, logger="notecard.gateway.session"):
        async with connect(node.url) as ws:
            await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": forged}).decode())
            reply = orjson.loads(await ws.recv())
    assert reply["code"] == "INVALID_TOKEN"
    logged = [r for r in caplog.records if r.getMessage().startswith("token rejected")]
    assert logged and "signature" in logged[0].__dict__["reason"]
    assert forged not in caplog.text and forged.split(".")[1] not in caplog.text


def test_probe_asks_the_probe_listener(tmp_path: Path) -> None:
    """The image's HEALTHCHECK command: 1 while nothing answers."""
    from notecard.local_redis import free_port

    done = run_cli("probe", env=bare_env(NOTECARD_PROBE_PORT=str(free_port())))
    assert done.returncode == 1 and "/healthz" in done.stderr


async def test_probe_passes_against_a_live_node(node_factory: object, tmp_path: Path) -> None:
    node = await node_factory(probe_port=0)  # type: ignore[operator]
    env = bare_env(NOTECARD_PROBE_PORT=str(node.probe_port))
    done = await asyncio.to_thread(run_cli, "probe", env=env)
    assert done.returncode == 0, done.stderr
    ready = await asyncio.to_thread(run_cli, "probe", "--ready", env=env)
    assert ready.returncode == 0 and "/readyz: 200" in ready.stdout


def test_the_readme_command_table_names_real_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for command in ("config", "probe", "serve", "dev", "token", "admin", "demo"):
        assert command in commands
        assert f"`notecard {command}" in readme, command


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


async def test_token_mints_a_jwt_the_node_welcomes(node: GatewayNode, tmp_path: Path) -> None:
    import jwt

    env = bare_env(NOTECARD_TOKEN_SECRET=TOKEN_SECRET, NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN)
    done = await asyncio.to_thread(run_cli, "token", "carol", "--ttl", "600", "--app", "toutiao", env=env,
                                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, TOKEN_SECRET, algorithms=["HS256"], audience="notecard")
    assert (claims["sub"], claims["app"], claims["exp"] - claims["iat"]) == ("carol", "toutiao", 600)
    async with connect(node.url) as ws:
        await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": token}).decode())
        assert orjson.loads(await ws.recv())["user"] == "carol"


async def test_admin_sends_a_gift_for_a_user_and_disconnects_a_user(node: GatewayNode, tmp_path: Path) -> None:
    from notecard.admin_client import AdminClient
    from tests.gateway_fixtures import befriend_all, token_for

    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "alice", "bob", cards=2)
    env = bare_env(NOTECARD_TOKEN_SECRET=TOKEN_SECRET, NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN,
                   NOTECARD_ADMIN_URL=node.admin_url)
    async with connect(node.url) as bob:
        await bob.send(orjson.dumps({"t": "hello", "v": 1, "token": token_for("bob")}).decode())
        assert orjson.loads(await bob.recv())["t"] == "welcome"
        sent = await asyncio.to_thread(run_cli, "admin", "send-gift", "alice", "bob", "--gift-id", "cli-1", env=env)
        assert sent.returncode == 0, sent.stderr
        assert orjson.loads(sent.stdout)["state"] == "pending"
        again = await asyncio.to_thread(run_cli, "admin", "send-gift", "alice", "bob", "--gift-id", "cli-1", env=env)
        assert orjson.loads(again.stdout) == orjson.loads(sent.stdout)  # the same gift, not a second one
        kicked = await asyncio.to_thread(run_cli, "admin", "disconnect", "bob", env=env)
        assert orjson.loads(kicked.stdout) == {"ok": True, "nodes": 1}
        await bob.wait_closed()
        assert bob.close_code == 3506


async def test_admin_sets_a_gender_and_links_and_unlinks_a_guardian(node: GatewayNode, tmp_path: Path) -> None:
    env = bare_env(NOTECARD_TOKEN_SECRET=TOKEN_SECRET, NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN,
                   NOTECARD_ADMIN_URL=node.admin_url)
    for user in ("wafa", "gabe"):
        assert (await asyncio.to_thread(run_cli, "admin", "create-user", user, env=env)).returncode == 0
    set_gender = await asyncio.to_thread(run_cli, "admin", "set", "wafa", "--gender", "female", env=env)
    assert orjson.loads(set_gender.stdout)["gender"] == "female", set_gender.stderr
    linked = await asyncio.to_thread(run_cli, "admin", "guardian", "wafa", "--set", "gabe", "--operator", "ops",
                                     env=env)
    assert orjson.loads(linked.stdout)["guardian"] == "gabe", linked.stderr
    await asyncio.to_thread(run_cli, "admin", "guardian", "wafa", "--unlink", env=env)
    shown = orjson.loads((await asyncio.to_thread(run_cli, "admin", "guardian", "wafa", env=env)).stdout)
    assert shown["guardian"] == ""
    assert [(e["operator"], e["to"]) for e in shown["log"]] == [("cli", ""), ("ops", "gabe")]
