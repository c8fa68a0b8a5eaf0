"""The operator's surface: admin API errors, probes, metrics, the CLI, worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from clearing import GiftRules, Presence
from clearing.keys import KeySchema
from gateway import GatewayNode, GatewaySettings
from notecard.admin_client import AdminApiError, AdminClient
from notecard.local_redis import LocalRedis, free_port
from notecard.runner import local_redis_if_needed, wait_ready
from notecard.secrets import load_or_create
from notecard_sdk import NotecardClient
from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET, ClientFactory, NodeFactory, befriend_all, token_for


async def http_get(url: str | urllib.request.Request) -> tuple[int, bytes]:
    """GET in a thread: the node under test runs on this event loop."""
    return await asyncio.to_thread(_http_get, url)


def _http_get(url: str | urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


async def test_admin_api_refuses_without_the_token(node: GatewayNode) -> None:
    async with AdminClient(node.admin_url, "wrong-token") as intruder:
        with pytest.raises(AdminApiError) as denied:
            await intruder.create_user("mallory")
    assert (denied.value.status, denied.value.code) == (401, "UNAUTHORIZED")
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        with pytest.raises(AdminApiError) as missing:
            await admin.get_user("mallory")
    assert (missing.value.status, missing.value.code) == (404, "UNKNOWN_USER")


async def test_admin_api_validates_input_and_changes_nothing(admin: AdminClient) -> None:
    await befriend_all(admin, "alice", "bob", cards=1)
    bad_calls = [
        ("POST", "/admin/users", {"user_id": 42}),
        ("POST", "/admin/users", {"user_id": "has space"}),
        ("POST", "/admin/users/alice/mint", {"qty": "10"}),
        ("POST", "/admin/users/alice/mint", {"qty": 0}),
        ("POST", "/admin/users/alice/mint", {"qty": 1, "kind": "gold"}),
        ("PATCH", "/admin/users/alice", {"vip": "yes"}),
        ("PUT", "/admin/users/alice/follows/alice", {}),
    ]
    for method, path, body in bad_calls:
        with pytest.raises(AdminApiError) as refused:
            await admin.call(method, path, body)
        assert refused.value.status == 400, (path, body)
    with pytest.raises(AdminApiError) as exists:
        await admin.create_user("alice")
    assert (exists.value.status, exists.value.code) == (409, "USER_EXISTS")
    user = await admin.get_user("alice")
    assert user["balances"]["available"]["note"] == 10
    assert (user["vip"], user["verified"]) == (False, True)


async def test_probes_and_metrics(node: GatewayNode, admin: AdminClient, connect: ClientFactory) -> None:
    status, body = await http_get(node.admin_url + "/healthz")
    assert status == 200 and orjson.loads(body)["node"] == node.node_id
    assert (await http_get(node.admin_url + "/readyz"))[0] == 200
    await befriend_all(admin, "alice", "bob")
    alice, bob = await connect("alice"), await connect("bob")
    gift = await alice.send_gift("bob")
    await bob.accept((await bob.next_offer(5)).gift_id)
    await alice.next_outcome(5)
    _, raw = await http_get(node.admin_url + "/metrics")
    text = raw.decode()
    assert "notecard_connections 2.0" in text
    assert 'notecard_gifts_total{outcome="sent"} 1.0' in text
    assert 'notecard_gifts_total{outcome="accepted"} 1.0' in text
    assert 'notecard_clearing_seconds_count{op="reserve"} 1.0' in text
    assert 'notecard_delivery_lag_seconds_count{event="offer"} 1.0' in text
    assert gift.gift_id
    report = await admin.invariant()
    assert report["ok"] is True
    assert report["per_kind"]["note"]["minted"] == 200


async def test_readyz_fails_while_shutting_down(node: GatewayNode) -> None:
    node.stopping = True
    try:
        assert (await http_get(node.admin_url + "/readyz"))[0] == 503
    finally:
        node.stopping = False


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "notecard", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


async def test_cli_token_and_admin_commands(node: GatewayNode, tmp_path: Path) -> None:
    env = dict(os.environ, NOTECARD_TOKEN_SECRET=TOKEN_SECRET, NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN,
               NOTECARD_ADMIN_URL=node.admin_url, NOTECARD_DATA_DIR=str(tmp_path))
    for args in (("create-user", "carol", "--vip"), ("create-user", "dave"), ("mint", "carol", "3"),
                 ("follow", "carol", "dave", "--days-ago", "4", "--mutual")):
        done = await asyncio.to_thread(run_cli, "admin", *args, env=env)
        assert done.returncode == 0, done.stderr
    shown = await asyncio.to_thread(run_cli, "admin", "user", "carol", env=env)
    user = orjson.loads(shown.stdout)
    assert user["vip"] is True and user["balances"]["available_cards"]["note"] == 3  # as minted: cards
    assert user["balances"]["available_units"]["note"] == 30
    missing = await asyncio.to_thread(run_cli, "admin", "user", "nobody", env=env)
    assert missing.returncode == 1 and "UNKNOWN_USER" in missing.stderr
    token = (await asyncio.to_thread(run_cli, "token", "carol", env=env)).stdout.strip()
    dave = NotecardClient(node.url, token_for("dave"))
    await dave.connect()
    async with NotecardClient(node.url, token) as carol:
        assert carol.user == "carol"
        await carol.send_gift("dave", qty=3)
    await dave.close()
    bad = await asyncio.to_thread(run_cli, "serve", env=dict(env, NOTECARD_PORT="not-a-port"))
    assert bad.returncode == 2 and "NOTECARD_PORT" in bad.stderr


def test_serve_runs_worker_processes_on_one_port(redis_server: LocalRedis, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port_run(2)  # worker i serves admin on admin_port + i
    env = dict(os.environ, NOTECARD_REDIS_URL=redis_server.url, NOTECARD_PORT=str(port),
               NOTECARD_ADMIN_PORT=str(admin_port), NOTECARD_DATA_DIR=str(tmp_path), NOTECARD_LOG_LEVEL="WARNING",
               NOTECARD_TOKEN_SECRET=TOKEN_SECRET, NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "notecard", "serve", "--workers", "2"], env=env)
    try:
        wait_ready(f"http://127.0.0.1:{admin_port}", proc)
        wait_ready(f"http://127.0.0.1:{admin_port + 1}", proc)
        nodes = {orjson.loads(_http_get(f"http://127.0.0.1:{p}/healthz")[1])["node"]
                 for p in (admin_port, admin_port + 1)}
        assert len(nodes) == 2  # two workers, each its own node behind the one WebSocket port
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


async def test_a_restarted_node_drops_the_presence_of_its_previous_life(
    node_factory: NodeFactory, redis: aioredis.Redis
) -> None:
    presence = Presence(redis, GiftRules())
    await presence.heartbeat("gateway-1")
    await presence.connect("ghost", "gateway-1")  # a connection of the life that crashed
    assert await presence.nodes_of("ghost") == ["gateway-1"]
    await node_factory(node_id="gateway-1")  # same fixed id, as in docker-compose.yml
    assert await presence.nodes_of("ghost") == []


def free_port_run(count: int) -> int:
    """A port P with P .. P+count-1 all free right now (dev takes consecutive ports), below
    the kernel's ephemeral range: the Redis and PostgreSQL that dev starts before its nodes
    take ports the kernel hands out (bind to port 0), and a run inside that range lost P+1
    to one of them (``address already in use``)."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(max(1024, low - 12_000), low - count)
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports found")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def test_dev_runs_the_demo_across_two_nodes(tmp_path: Path) -> None:
    """The README's first command: local Redis, two node processes, the demo, exit."""
    env = dict(os.environ, NOTECARD_DATA_DIR=str(tmp_path / "data"))
    env.pop("NOTECARD_REDIS_URL", None)
    env.pop("REDIS_URL", None)
    port = free_port_run(4)
    done = subprocess.run([sys.executable, "-m", "notecard", "dev", "--once", "--port", str(port)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    # The banner says how to reach the ports it chose with `notecard admin`, and its secrets.
    assert f"NOTECARD_DATA_DIR={tmp_path / 'data'} notecard admin --url http://127.0.0.1:{port + 1} user" in out
    nodes = {line.split(" is connected to node ")[1].split(" ")[0] for line in out.splitlines()
             if " is connected to node " in line}
    assert len(nodes) == 2  # the giver and the recipient are on different nodes
    assert "sees the offer live" in out
    assert "is told the outcome: accepted" in out
    assert "9 available, 0 held" in out and "1 available, 0 held" in out
    assert "(minted = balances + holds + consumed): ok" in out
    # the book of record: a local PostgreSQL the ledger consumer wrote the demo's entries to
    assert "its balances equal Redis's (0 drift)" in out
    # A second run keeps Redis's data (and its ledger streams) but starts a new PostgreSQL: the
    # books still agree, the first run's entries included.
    again = subprocess.run([sys.executable, "-m", "notecard", "dev", "--once", "--port", str(port)],
                           env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "its balances equal Redis's (0 drift)" in again.stdout, again.stdout[-2000:]


def test_dev_cluster_runs_the_demo_on_a_local_redis_cluster(tmp_path: Path) -> None:
    """``notecard dev --cluster``: three shards with a replica each, two nodes, the demo's
    gifts across shards, the invariant summed over the shards; nothing left running."""
    env = dict(os.environ, NOTECARD_DATA_DIR=str(tmp_path / "data"))
    for name in ("NOTECARD_REDIS_URL", "REDIS_URL", "NOTECARD_REDIS_CLUSTER"):
        env.pop(name, None)
    port = free_port_run(4)
    done = subprocess.run([sys.executable, "-m", "notecard", "dev", "--cluster", "--once", "--port", str(port)],
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "a local Redis Cluster of 3 shards" in out
    assert "is told the outcome: accepted" in out
    assert "(minted = balances + holds + consumed): ok" in out
    assert "its balances equal Redis's (0 drift)" in out
    # every server was stopped (a redis-server works in its --dir)
    cluster_dir = str((tmp_path / "data" / "cluster").resolve())
    assert len(list(Path(cluster_dir).iterdir())) == 6
    assert not [pid for pid, cwd in _process_dirs().items() if cwd.startswith(cluster_dir)]


def _process_dirs() -> dict[int, str]:
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            found[int(proc.name)] = os.readlink(proc / "cwd")
    return found


def test_dev_cluster_refuses_a_configured_redis(tmp_path: Path) -> None:
    env = dict(os.environ, NOTECARD_DATA_DIR=str(tmp_path / "data"), NOTECARD_REDIS_URL="redis://127.0.0.1:1")
    done = subprocess.run([sys.executable, "-m", "notecard", "dev", "--cluster", "--once"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "starts its own Redis Cluster" in done.stderr


def test_processes_starting_together_agree_on_generated_secrets(tmp_path: Path) -> None:
    """Workers of `serve --workers N` generate the secrets at the same moment on a fresh
    data folder; they used to race on one temporary file (FileNotFoundError) and could end
    up with different token secrets."""
    script = (
        "import sys, time; from pathlib import Path; from notecard.secrets import load_or_create\n"
        "t = float(sys.argv[2])\n"
        "while time.time() < t: pass\n"
        "s = load_or_create(Path(sys.argv[1])); print(s.token_secret, s.admin_token)\n"
    )
    start_at = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data"), str(start_at)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outputs = [p.communicate(timeout=30) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1
    stored = load_or_create(tmp_path / "data")
    assert outputs[0][0].split() == [stored.token_secret, stored.admin_token]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["secrets.json"]  # no temporary files left


# ------------------------------------------------------------------ production defaults
def test_a_short_secret_is_refused_at_start(redis_server: LocalRedis, tmp_path: Path) -> None:
    """A one-byte signing secret makes every token forgeable by guessing: the node does not
    start, and the message names the variable to fix."""
    env = dict(os.environ, NOTECARD_REDIS_URL=redis_server.url, NOTECARD_DATA_DIR=str(tmp_path),
               NOTECARD_PORT="0", NOTECARD_ADMIN_PORT="0", NOTECARD_ADMIN_TOKEN=ADMIN_TOKEN)
    for variable, value in (("NOTECARD_TOKEN_SECRET", "x"), ("NOTECARD_ADMIN_TOKEN", "a" * 31)):
        done = run_cli("serve", env=dict(env, NOTECARD_TOKEN_SECRET=TOKEN_SECRET) | {variable: value})
        assert done.returncode == 2, done.stderr
        assert f"{variable} must be at least 32 bytes" in done.stderr
    with pytest.raises(ValueError, match="NOTECARD_TOKEN_SECRET must be at least 32 bytes"):
        GatewayNode(GatewaySettings(), aioredis.Redis(), token_secret="short", admin_token=ADMIN_TOKEN)


def test_the_data_folder_is_created_0700_whatever_the_umask(tmp_path: Path) -> None:
    """It holds the generated secrets and the managed Redis's data and password file."""
    env = dict(os.environ, NOTECARD_DATA_DIR=str(tmp_path / "data"))
    for name in ("NOTECARD_TOKEN_SECRET", "NOTECARD_ADMIN_TOKEN"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "notecard", "token", "alice"], env=env, capture_output=True,
                          text=True, timeout=60, check=False, umask=0o022)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "data" / "secrets.json").stat().st_mode & 0o777 == 0o600
    previous = os.umask(0o022)
    try:
        with local_redis_if_needed(GatewaySettings(data_dir=tmp_path / "fresh", dev=True)):
            pass
    finally:
        os.umask(previous)
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "fresh" / "redis").stat().st_mode & 0o777 == 0o700


async def test_the_probe_listener_serves_probes_and_metrics_only(node_factory: NodeFactory) -> None:
    node = await node_factory(probe_port=0)
    assert node.probe_port is not None
    base = f"http://127.0.0.1:{node.probe_port}"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await http_get(base + path))[0] == 200, path
    request = urllib.request.Request(base + "/admin/users/alice", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert (await http_get(request))[0] == 404  # the admin API is not there, token or not


async def _accounts_snapshot(redis: aioredis.Redis) -> dict[bytes, bytes | None]:
    """Every account, balance, follow and block key, serialised: what a refused call must
    leave as it was (the node's own presence keys move on by themselves)."""
    names = ("user", "users", "bal", "held", "follows", "blocks", "tot", "ledger")
    keys = [k for name in names for k in await redis.keys(KeySchema().pattern(name))]
    return {k: await redis.dump(k) for k in sorted(set(keys))}


async def test_admin_api_refuses_out_of_range_values_and_changes_nothing(
    admin: AdminClient, redis: aioredis.Redis
) -> None:
    """Each value is refused with 400 and a message naming the field, as the wire would."""
    await befriend_all(admin, "alice", "bob", cards=1)
    now, day = int(time.time() * 1000), 86_400_000
    before = await _accounts_snapshot(redis)
    new = {"user_id": "newbie"}
    bad_calls: list[tuple[str, str, dict[str, object] | None, str]] = [
        ("POST", "/admin/users", new | {"created_at_ms": -1}, "created_at_ms"),
        ("POST", "/admin/users", new | {"created_at_ms": 2**53}, "created_at_ms"),  # a newcomer for ever
        ("POST", "/admin/users", new | {"created_at_ms": now + day}, "created_at_ms"),
        ("POST", "/admin/users", new | {"created_at_ms": 1.5}, "created_at_ms"),
        ("POST", "/admin/users", new | {"created_at_ms": True}, "created_at_ms"),
        ("POST", "/admin/users", new | {"app": "Main"}, "app"),
        ("POST", "/admin/users", new | {"app": "Main:x"}, "app"),
        ("POST", "/admin/users", new | {"app": "x" * 33}, "app"),
        ("POST", "/admin/users", new | {"app": 7}, "app"),
        ("POST", "/admin/users", new | {"verified": "true"}, "verified"),
        ("POST", "/admin/users", new | {"vip": 1}, "vip"),
        ("POST", "/admin/users", new | {"verifed": True}, "verifed"),  # a typo is not ignored
        ("POST", "/admin/users", {"user_id": "x" * 65}, "id"),
        ("PATCH", "/admin/users/alice", {"banned": 0}, "banned"),
        ("PATCH", "/admin/users/alice", {"admin": True}, "admin"),
        ("PATCH", "/admin/users/a*b", {"vip": True}, "user id"),
        ("PUT", "/admin/users/alice/follows/bob", {"since_ms": -5}, "since_ms"),
        ("PUT", "/admin/users/alice/follows/bob", {"since_ms": now + day}, "since_ms"),  # never ages
        ("PUT", "/admin/users/alice/follows/bob", {"since_ms": 2**53}, "since_ms"),
        ("PUT", "/admin/users/alice/follows/bob", {"since_ms": "0"}, "since_ms"),
        ("PUT", "/admin/users/alice/follows/bob", {"since": 0}, "since"),
        ("PUT", "/admin/users/alice/follows/b%20c", {}, "other id"),
        ("PUT", "/admin/users/alice/blocks/bob", {"reason": "spam"}, "reason"),
        ("DELETE", "/admin/users/alice/follows/bob", {"since_ms": 0}, "since_ms"),
        ("POST", "/admin/users/alice/mint", {"qty": True}, "qty"),
        ("POST", "/admin/users/alice/mint", {"qty": 1.0}, "qty"),
        ("POST", "/admin/users/alice/mint", {"qty": -1}, ""),
        ("POST", "/admin/users/alice/mint", {"qty": 2**53}, ""),  # whole cards: x10 units overflows
        ("POST", "/admin/users/alice/mint", {"qty": 1, "kind": 5}, "kind"),
        ("POST", "/admin/users/alice/mint", {"qty": 1, "units": 10}, "units"),
        ("POST", "/admin/users/a:b*/mint", {"qty": 1}, "user id"),
        ("GET", "/admin/users/has*star", None, "user id"),
        ("GET", "/admin/gifts/g*1", None, "gift id"),
    ]
    for method, path, body, named in bad_calls:
        with pytest.raises(AdminApiError) as refused:
            await admin.call(method, path, body)
        assert refused.value.status == 400, (method, path, body)
        assert refused.value.code in ("BAD_REQUEST", "BAD_QUANTITY"), (path, body, refused.value.code)
        assert named in refused.value.message, (path, body, refused.value.message)
    assert await _accounts_snapshot(redis) == before
    with pytest.raises(AdminApiError) as missing:
        await admin.get_user("newbie")
    assert missing.value.status == 404
    # The edges themselves are accepted: the epoch, now, a minute of clock skew.
    created = await admin.call("POST", "/admin/users", {"user_id": "old", "created_at_ms": 0, "app": "toutiao_2"})
    assert (created["created_at_ms"], created["app"], created["verified"]) == (0, "toutiao_2", False)
    await admin.call("PUT", "/admin/users/alice/follows/old", {"since_ms": now + 30_000})
