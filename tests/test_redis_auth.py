"""Redis and Sentinel with passwords and TLS: the managed local server, a Sentinel group, TLS.

Every server here is a real ``redis-server`` (``--sentinel`` for the Sentinels) on loopback,
started by the test and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.retry import Retry

from clearing import GiftRules, check_invariant
from clearing.keys import KeySchema
from gateway import GatewayNode, GatewaySettings, connect_redis
from loadtest.faults.redis_ha import RedisDurability, RedisHA
from notecard import runner, secrets
from notecard.admin_client import AdminClient
from notecard.local_redis import LocalRedis, find_redis_server, free_port
from notecard_sdk import NotecardClient
from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET, befriend_all, token_for


def _refused_without_password(host: str, port: int) -> bool:
    """A client that sends no password is refused its first command."""
    with redis.Redis(host=host, port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0)) as anonymous:
        try:
            anonymous.ping()
        except AuthenticationError:
            return True
        except ResponseError as refused:
            return "NOAUTH" in str(refused)
    return False


@contextlib.asynccontextmanager
async def running_node(settings: GatewaySettings) -> AsyncIterator[GatewayNode]:
    client = connect_redis(settings)
    node = GatewayNode(settings, client, token_secret=TOKEN_SECRET, admin_token=ADMIN_TOKEN)
    try:
        await node.start()
        yield node
    finally:
        await node.stop()
        await client.aclose()


async def gift_round_trip(node: GatewayNode) -> None:
    """Accounts through the admin API, then a gift offered and accepted over WebSockets."""
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "alice", "bob", cards=2)
        async with NotecardClient(node.url, token_for("alice")) as alice, \
                NotecardClient(node.url, token_for("bob")) as bob:
            await alice.send_gift("bob")
            await bob.accept((await bob.next_offer(10)).gift_id)
            assert (await alice.next_outcome(10)).state == "accepted"
        bob_now = await admin.get_user("bob")
        assert bob_now["balances"]["available"]["note"] == 3 * GiftRules().units_per_card
        report = await admin.invariant()
        assert report["ok"] is True, report


# ------------------------------------------------------------------ the managed local Redis
def test_a_managed_local_redis_refuses_a_client_without_its_password(tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "redis") as server:
        assert _refused_without_password(server.host, server.port)
        with redis.Redis(host=server.host, port=server.port, password="not-" + server.password,
                         retry=Retry(NoBackoff(), 0)) as wrong, \
                pytest.raises(AuthenticationError):
            wrong.ping()
        with redis.Redis.from_url(server.url) as client:  # the URL carries the password
            assert client.ping()
        # Not on the command line, where any local user could read it from the process list.
        assert server.process is not None
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert server.password.encode() not in cmdline
        assert (server.data_dir / "auth.conf").stat().st_mode & 0o777 == 0o600


async def test_the_gateway_works_with_the_password_of_its_managed_redis(tmp_path: Path) -> None:
    """``notecard serve --dev`` with no Redis configured: the managed server's password is
    generated into the data folder's secrets, and the node (through the URL it is given)
    uses it, while a client without it is refused."""
    settings = GatewaySettings(port=0, admin_port=0, data_dir=tmp_path / "data", log_format="text", dev=True)
    with runner.local_redis_if_needed(settings) as url:
        assert url is not None
        stored = orjson.loads((tmp_path / "data" / secrets.FILE_NAME).read_bytes())
        password = stored["redis_password"]
        assert len(password) >= 32 and f":{password}@" in url
        with redis.Redis.from_url(url) as client:
            where = client.connection_pool.connection_kwargs
        assert _refused_without_password(where["host"], where["port"])
        async with running_node(GatewaySettings(redis_url=url, port=0, admin_port=0, data_dir=tmp_path / "data",
                                                log_format="text")) as node:
            await gift_round_trip(node)
    # Started again on the same folder, it keeps the same password (and its data).
    with runner.local_redis_if_needed(settings) as again:
        assert again is not None and f":{password}@" in again


# ------------------------------------------------------------------ Sentinel with passwords
@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHA]:
    """A primary, two replicas and one Sentinel, passwords on both (no failover here)."""
    group = RedisHA(tmp_path_factory.mktemp("ha"), replicas=2, sentinels=1,
                    durability=RedisDurability(appendonly=True, appendfsync="everysec"))
    group.start()
    yield group
    group.stop()


@pytest.fixture
async def ha_primary(ha: RedisHA) -> AsyncIterator[aioredis.Redis]:
    _, port = await ha.primary()
    client = ha.client(port)
    await client.flushall()
    yield client
    report = await check_invariant(client, GiftRules())
    await client.aclose()
    assert report.ok, report.violations


def sentinel_settings(ha: RedisHA, tmp_path: Path, **env: str) -> GatewaySettings:
    return GatewaySettings.from_env(ha.node_env() | env, port=0, admin_port=0, data_dir=tmp_path,
                                    log_format="text")


async def test_a_sentinel_deployment_with_passwords_serves_gifts(
    ha: RedisHA, ha_primary: aioredis.Redis, tmp_path: Path
) -> None:
    sentinel_port = ha.sentinel_ports[0]
    assert _refused_without_password(ha.host, sentinel_port)  # the Sentinel's own password
    assert _refused_without_password(ha.host, ha.ports[0])
    async with running_node(sentinel_settings(ha, tmp_path)) as node:
        await gift_round_trip(node)


# ------------------------------------------------------------------ TLS
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, and a certificate it signed for 127.0.0.1 (server and client alike)."""
    folder = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=notecard test CA", cwd=folder)
    _openssl("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "node.crt", "-days", "2", "-extfile", "san.ext", cwd=folder)
    return {"ca": folder / "ca.crt", "cert": folder / "node.crt", "key": folder / "node.key"}


def _tls_args(files: dict[str, Path]) -> tuple[str, ...]:
    """TLS on a second port; clients must show a certificate of the CA too."""
    return ("--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"]),
            "--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "yes")


def tls_env(files: dict[str, Path]) -> dict[str, str]:
    return {"NOTECARD_REDIS_TLS_CA_FILE": str(files["ca"]), "NOTECARD_REDIS_TLS_CERT_FILE": str(files["cert"]),
            "NOTECARD_REDIS_TLS_KEY_FILE": str(files["key"])}


@pytest.fixture(scope="module")
def tls_redis(tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRedis, int]]:
    """A Redis with a password on a plain port (for LocalRedis's own readiness check) and a
    TLS port, which the tests use."""
    tls_port = free_port()
    server = LocalRedis(tmp_path_factory.mktemp("tls-redis"),
                        extra_args=("--tls-port", str(tls_port), *_tls_args(tls_files)))
    with server:
        yield server, tls_port


async def test_a_node_reaches_redis_over_tls_with_a_rediss_url(
    tls_redis: tuple[LocalRedis, int], tls_files: dict[str, Path], tmp_path: Path
) -> None:
    server, tls_port = tls_redis
    with redis.Redis.from_url(server.url) as plain:
        plain.flushall()
    url = f"rediss://default:{server.password}@127.0.0.1:{tls_port}/0"
    settings = GatewaySettings.from_env({"NOTECARD_REDIS_URL": url, **tls_env(tls_files)}, port=0, admin_port=0,
                                        data_dir=tmp_path, log_format="text")
    async with running_node(settings) as node:
        await gift_round_trip(node)
    # The same with a redis:// URL turned to TLS by NOTECARD_REDIS_TLS, the password apart.
    env = {"NOTECARD_REDIS_URL": f"redis://127.0.0.1:{tls_port}/0", "NOTECARD_REDIS_TLS": "true",
           "NOTECARD_REDIS_PASSWORD": server.password, **tls_env(tls_files)}
    client = connect_redis(GatewaySettings.from_env(env))
    try:
        assert await client.exists(KeySchema().user("alice")) == 1  # what the node wrote
    finally:
        await client.aclose()


async def test_tls_checks_the_server_certificate(tls_redis: tuple[LocalRedis, int], tls_files: dict[str, Path]) -> None:
    """Without our CA (the system's CAs do not know it) the server is not trusted."""
    server, tls_port = tls_redis
    env = {"NOTECARD_REDIS_URL": f"rediss://:{server.password}@127.0.0.1:{tls_port}/0",
           "NOTECARD_REDIS_TLS_CERT_FILE": str(tls_files["cert"]), "NOTECARD_REDIS_TLS_KEY_FILE": str(tls_files["key"])}
    client = connect_redis(GatewaySettings.from_env(env))
    try:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            await client.ping()
    finally:
        await client.aclose()


@contextlib.contextmanager
def tls_sentinel(folder: Path, primary_tls_port: int, password: str,
                 files: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """One Sentinel on a TLS port only, watching the primary over TLS, with a password."""
    port, sentinel_password = free_port(), "sentinel-" + os.urandom(8).hex()
    conf = folder / "sentinel.conf"
    conf.write_text("\n".join([
        "port 0", f"tls-port {port}", "bind 127.0.0.1", f"dir {folder}", f"logfile {folder / 'sentinel.log'}",
        f"tls-cert-file {files['cert']}", f"tls-key-file {files['key']}", f"tls-ca-cert-file {files['ca']}",
        "tls-auth-clients yes", "tls-replication yes", f"requirepass {sentinel_password}",
        f"sentinel monitor notecard 127.0.0.1 {primary_tls_port} 1", f"sentinel auth-pass notecard {password}", "",
    ]))
    proc = subprocess.Popen([find_redis_server(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield port, sentinel_password
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


async def test_a_node_finds_the_primary_through_a_tls_sentinel(
    tls_redis: tuple[LocalRedis, int], tls_files: dict[str, Path], tmp_path: Path
) -> None:
    server, tls_port = tls_redis
    with redis.Redis.from_url(server.url) as plain:
        plain.flushall()
    with tls_sentinel(tmp_path, tls_port, server.password, tls_files) as (sentinel_port, sentinel_password):
        env = {"NOTECARD_SENTINELS": f"127.0.0.1:{sentinel_port}", "NOTECARD_SENTINEL_TLS": "1",
               "NOTECARD_SENTINEL_PASSWORD": sentinel_password, "NOTECARD_REDIS_TLS": "1",
               "NOTECARD_REDIS_PASSWORD": server.password, **tls_env(tls_files)}
        settings = GatewaySettings.from_env(env, port=0, admin_port=0, data_dir=tmp_path, log_format="text")
        await _wait_sentinel_answers(settings)
        async with running_node(settings) as node:
            await gift_round_trip(node)


async def _wait_sentinel_answers(settings: GatewaySettings, timeout_s: float = 20.0) -> None:
    """The Sentinel process takes a moment to listen."""
    deadline = time.monotonic() + timeout_s
    while True:
        client = connect_redis(settings)
        try:
            await client.ping()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        finally:
            await client.aclose()
