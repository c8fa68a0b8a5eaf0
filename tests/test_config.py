"""Configuration that explains itself: every bad value is refused at start, naming its
variable and what it accepts; README's table is the declarations'; ``notecard config``
shows what applies without a secret; outside development a node needs a Redis and secrets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import GatewayNode
from gateway.config import ConfigError, GatewaySettings, declarations, effective, markdown_table, production_problems
from notecard import runner
from notecard.local_redis import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-" + "x" * 40
ADMIN = "adm1n-" + "y" * 40

#: The values the issue found accepted (or crashing) and what each message must name.
BAD_VALUES = {
    "NOTECARD_CARD_KINDS": ("Bad-Kind", "a-z 0-9 _"),
    "NOTECARD_RATE_PER_S": ("-1", "above 0"),
    "NOTECARD_HEARTBEAT_S": ("0", "above 0"),
    "NOTECARD_CONFIRM_WINDOW_S": ("-5", "0.001 or more"),
    "NOTECARD_UNITS_PER_CARD": ("0", "1 or more"),
    "NOTECARD_LOG_LEVEL": ("LOUD", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    "NOTECARD_PORT": ("http", "0 to 65535"),
    "NOTECARD_TIMEZONE": ("Mars/Olympus", "time zone"),
    "NOTECARD_REDIS_URL": ("http://redis:6379", "redis://"),
    "NOTECARD_LOG_FORMAT": ("xml", "json, text"),
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTECARD_") and k != "REDIS_URL"}
    return env | extra


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "notecard", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False, cwd=cwd)


@pytest.mark.parametrize("variable", sorted(BAD_VALUES))
def test_a_bad_value_names_its_variable_and_what_it_accepts(variable: str) -> None:
    raw, accepted = BAD_VALUES[variable]
    with pytest.raises(ConfigError) as refused:
        GatewaySettings.from_env({variable: raw})
    message = str(refused.value)
    assert message.startswith(f"{variable}={raw!r}: expected "), message
    assert accepted in message
    assert "_ms" not in message  # never an internal field name (confirm_window_ms)


def test_every_bad_value_is_listed_at_once_and_the_process_exits_without_a_traceback(tmp_path: Path) -> None:
    env = clean_env(**{name: raw for name, (raw, _) in BAD_VALUES.items()})
    done = run_cli("serve", env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for variable in BAD_VALUES:
        assert variable in done.stderr, variable
    assert list(tmp_path.iterdir()) == []  # refused before anything was created


def test_settings_built_in_code_are_checked_against_the_same_ranges() -> None:
    with pytest.raises(ConfigError, match=r"NOTECARD_HEARTBEAT_S='0': expected a number above 0"):
        GatewaySettings(heartbeat_s=0)
    with pytest.raises(ConfigError, match="NOTECARD_SEND_QUEUE_MAX"):
        GatewaySettings(send_queue_max=0)
    assert GatewaySettings(heartbeat_s=0.2).heartbeat_s == 0.2


def test_values_read_as_documented() -> None:
    s = GatewaySettings.from_env({
        "NOTECARD_LOG_LEVEL": "debug", "NOTECARD_CARD_KINDS": "note, gold_1", "NOTECARD_CONFIRM_WINDOW_S": "1.5",
        "NOTECARD_REDIS_TLS": "yes", "REDIS_URL": "redis://r:6379/0", "NOTECARD_SENTINELS": "a:1,b:2",
    })
    assert (s.log_level, s.rules.card_kinds, s.rules.confirm_window_ms) == ("DEBUG", ("note", "gold_1"), 1500)
    assert (s.redis_tls, s.redis_url, s.sentinels) == (True, "redis://r:6379/0", (("a", 1), ("b", 2)))


def test_a_secret_or_a_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as short:
        GatewaySettings.from_env({"NOTECARD_TOKEN_SECRET": "tiny-secret"})
    assert "NOTECARD_TOKEN_SECRET" in str(short.value) and "tiny-secret" not in str(short.value)
    with pytest.raises(ConfigError) as url:
        GatewaySettings.from_env({"NOTECARD_REDIS_URL": "http://:hunter2@redis:6379"})
    assert "hunter2" not in str(url.value) and "***" in str(url.value)


def test_the_readme_table_is_the_declarations() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate README's table with: notecard config --markdown"
    documented = set(re.findall(r"^\| `([A-Z_]+)`", readme, re.M))
    assert documented == {d.env for d in declarations()}


def test_documented_defaults_hold() -> None:
    """The defaults operators rely on (README's table before it was generated)."""
    s = GatewaySettings.from_env({})
    assert (s.port, s.admin_port, s.host, s.heartbeat_s, s.send_queue_max, s.rules.units_per_card) == (
        8765, 8766, "127.0.0.1", 20.0, 256, 10)
    assert (s.rules.confirm_window_ms, s.rules.card_kinds, s.rules.timezone, s.log_level) == (
        60_000, ("note",), "Asia/Shanghai", "INFO")


def test_config_prints_the_effective_values_with_secrets_masked(tmp_path: Path) -> None:
    env = clean_env(NOTECARD_TOKEN_SECRET=SECRET, NOTECARD_ADMIN_TOKEN=ADMIN, NOTECARD_PORT="9000",
                    NOTECARD_REDIS_URL="redis://app:hunter2@redis:6379/0", NOTECARD_REDIS_PASSWORD="pw-" + "z" * 20,
                    NOTECARD_DURABILITY="replicated")
    done = run_cli("config", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for secret in (SECRET, ADMIN, "hunter2", "pw-" + "z" * 20):
        assert secret not in out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "9000" in lines["NOTECARD_PORT"] and "(environment)" in lines["NOTECARD_PORT"]
    assert "(default)" in lines["NOTECARD_HEARTBEAT_S"]
    assert "redis://app:***@redis:6379/0" in lines["NOTECARD_REDIS_URL"]
    assert "1" in lines["NOTECARD_WAIT_REPLICAS"] and "DURABILITY=replicated" in lines["NOTECARD_WAIT_REPLICAS"]
    assert len(lines) == len(list(declarations()))


def test_config_check_says_what_a_node_outside_development_lacks(tmp_path: Path) -> None:
    bare = run_cli("config", "--check", env=clean_env(), cwd=tmp_path)
    assert bare.returncode == 2
    for missing in ("no Redis configured", "NOTECARD_TOKEN_SECRET", "NOTECARD_ADMIN_TOKEN"):
        assert missing in bare.stderr
    assert run_cli("config", "--check", "--dev", env=clean_env(), cwd=tmp_path).returncode == 0
    ready = run_cli("config", "--check", env=clean_env(NOTECARD_REDIS_URL="redis://redis:6379",
                                                        NOTECARD_TOKEN_SECRET=SECRET, NOTECARD_ADMIN_TOKEN=ADMIN),
                    cwd=tmp_path)
    assert ready.returncode == 0, ready.stderr
    assert "configuration ok" in ready.stdout
    assert list(tmp_path.iterdir()) == []  # checking starts and creates nothing


def test_serve_outside_development_refuses_a_private_redis_and_generated_secrets(tmp_path: Path) -> None:
    """A container without its Redis would otherwise run a ledger of its own."""
    done = run_cli("serve", env=clean_env(NOTECARD_PORT=str(free_port())), cwd=tmp_path)
    assert done.returncode == 2
    assert "no Redis configured" in done.stderr and "serve --dev" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no data folder, no redis-server, no secrets
    with_redis = run_cli("serve", env=clean_env(NOTECARD_REDIS_URL="redis://127.0.0.1:1"), cwd=tmp_path)
    assert with_redis.returncode == 2
    assert "NOTECARD_JWKS_URL" in with_redis.stderr and "NOTECARD_TOKEN_SECRET" in with_redis.stderr
    assert "NOTECARD_ADMIN_TOKEN is not set" in with_redis.stderr
    assert production_problems(GatewaySettings(dev=True)) == []


def test_an_unreachable_redis_is_named_with_its_cause(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = clean_env(NOTECARD_REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0", NOTECARD_TOKEN_SECRET=SECRET,
                    NOTECARD_ADMIN_TOKEN=ADMIN, NOTECARD_REDIS_WAIT_S="0.5", NOTECARD_PORT="0",
                    NOTECARD_ADMIN_PORT="0", NOTECARD_LOG_FORMAT="text")
    done = run_cli("serve", env=env, cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert f"redis://:***@127.0.0.1:{port}/0" in last and "NOTECARD_REDIS_WAIT_S" in last, last
    assert "ConnectionError" in last  # the cause
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


def test_the_effective_rows_follow_the_declarations() -> None:
    rows = effective(GatewaySettings(), {})
    assert [name for name, _, _ in rows] == [d.variable for d in declarations()]
    assert all(origin == "default" for _, _, origin in rows)


async def test_a_node_answers_healthz_while_it_waits_for_redis_then_serves(tmp_path: Path) -> None:
    """Started before its Redis (a compose file, a failover): alive, not ready with the
    reason (the address without its password, and the cause), then ready once Redis is up."""
    import asyncio
    import urllib.error
    import urllib.request

    import orjson

    from gateway import GatewayNode, connect_redis
    from notecard.local_redis import LocalRedis
    from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET

    server = LocalRedis(tmp_path / "redis")  # not started yet
    settings = GatewaySettings(redis_url=server.url, port=0, admin_port=0, probe_port=0, data_dir=tmp_path,
                               log_format="text", redis_wait_s=0, redis_timeout_s=1.0, shutdown_grace_s=1.0)
    client = connect_redis(settings)
    node = GatewayNode(settings, client, token_secret=TOKEN_SECRET, admin_token=ADMIN_TOKEN)
    starting = asyncio.create_task(node.start())

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.probe_port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    try:
        deadline = asyncio.get_running_loop().time() + 30
        while node.probe_port is None or node.waiting_for is None:
            assert not starting.done(), starting
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert (await asyncio.to_thread(get, "/healthz"))[0] == 200
        status, body = await asyncio.to_thread(get, "/readyz")
        reasons = orjson.loads(body)["reasons"]
        assert status == 503
        assert f"waiting for Redis at redis://:***@127.0.0.1:{server.port}/0" in reasons[0], reasons
        assert "ConnectionError" in reasons[0] and server.password not in body.decode()
        server.start()
        await asyncio.wait_for(starting, 30)
        while (await asyncio.to_thread(get, "/readyz"))[0] != 200:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    finally:
        if not starting.done():
            starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await node.stop()
        await client.aclose()
        server.stop()


# ------------------------------------------------------------------ production safety and tokens


def test_a_deployment_may_verify_tokens_with_a_jwks_alone_and_then_holds_no_secret(tmp_path: Path) -> None:
    """The login service keeps its signing key: the gateway needs only its public keys."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(NOTECARD_REDIS_URL="redis://redis:6379", NOTECARD_JWKS_URL=str(jwks), NOTECARD_ADMIN_TOKEN=ADMIN)
    ready = run_cli("config", "--check", env=env, cwd=work)
    assert ready.returncode == 0, ready.stderr
    settings = GatewaySettings(redis_url="redis://redis:6379", jwks_url=str(jwks), admin_token=ADMIN,
                               data_dir=work / ".notecard")
    assert runner.node_secrets(settings) == (None, ADMIN)
    assert list(work.iterdir()) == []  # nothing generated
    missing = run_cli("config", "--check", env=env | {"NOTECARD_JWKS_URL": str(tmp_path / "nope.json")}, cwd=work)
    assert missing.returncode == 2 and "NOTECARD_JWKS_URL" in missing.stderr and "no such file" in missing.stderr


def test_without_any_token_key_or_admin_token_a_node_says_which_setting_to_give(tmp_path: Path) -> None:
    settings = GatewaySettings(redis_url="redis://redis:6379", data_dir=tmp_path / "data")
    problems = "\n".join(production_problems(settings))
    assert "NOTECARD_JWKS_URL" in problems and "NOTECARD_TOKEN_SECRET" in problems
    assert "NOTECARD_ADMIN_TOKEN" in problems
    with pytest.raises(RuntimeError, match="NOTECARD_ADMIN_TOKEN"):
        runner.node_secrets(settings)
    with pytest.raises(ValueError, match="NOTECARD_TOKEN_SECRET or NOTECARD_JWKS_URL"):
        GatewayNode(settings, aioredis.Redis(), token_secret=None, admin_token=ADMIN)
    assert not (tmp_path / "data").exists()


def test_outside_development_no_private_redis_is_started_even_by_a_worker(tmp_path: Path) -> None:
    """Every way in refuses: the command, a worker started on its own, and the runner."""
    worker = run_cli("serve", "--worker", env=clean_env(NOTECARD_PORT=str(free_port())), cwd=tmp_path)
    assert worker.returncode == 2 and "NOTECARD_REDIS_URL" in worker.stderr
    with pytest.raises(RuntimeError, match="NOTECARD_REDIS_URL"), \
            runner.local_redis_if_needed(GatewaySettings(data_dir=tmp_path / "data")):
        pass
    assert list(tmp_path.iterdir()) == []


def test_token_settings_are_checked_at_start() -> None:
    for env, named in (({"NOTECARD_JWT_LEEWAY_S": "900"}, "NOTECARD_JWT_LEEWAY_S"),
                       ({"NOTECARD_JWT_LEEWAY_S": "-1"}, "NOTECARD_JWT_LEEWAY_S"),
                       ({"NOTECARD_JWKS_URL": "ftp://keys.example.com/jwks"}, "NOTECARD_JWKS_URL"),
                       ({"NOTECARD_JWT_AUDIENCE": "two words"}, "NOTECARD_JWT_AUDIENCE")):
        with pytest.raises(ConfigError, match=named):
            GatewaySettings.from_env(env)
    settings = GatewaySettings.from_env({"NOTECARD_JWKS_URL": "https://login.example.com/.well-known/jwks.json",
                                         "NOTECARD_JWT_ISSUER": "https://login.example.com",
                                         "NOTECARD_LEGACY_TOKENS": "false"})
    assert (settings.claim_rules.issuer, settings.legacy_tokens) == ("https://login.example.com", False)
