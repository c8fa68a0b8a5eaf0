"""docker-compose.yml, the Dockerfile and deploy/ are the documented production shape.

No container engine runs here, so the files are read and checked for what the shape
promises: Redis and the Sentinels require passwords (from the environment, never in the
files), the durability preset the docs name is set and the replicas can satisfy its WAIT,
and neither the admin API nor HAProxy's stats are published beyond the host.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import PRESET_WAIT

ROOT = Path(__file__).resolve().parent.parent
ADMIN_PORT = "8766"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def services(compose: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """Services by their role, told by their command (YAML anchors already merged)."""
    found = {}
    for name, service in compose["services"].items():
        command = _command_text(service)
        role = ("sentinel" if "--sentinel" in command else "replica" if "--replicaof" in command
                else "redis" if "redis-server" in command else "gateway" if "NOTECARD_TOKEN_SECRET" in
                str(service.get("environment", {})) else "other")
        if role == kind:
            found[name] = service
    return found


def _command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def _redis_option(command: str, option: str) -> str | None:
    words = shlex.split(command.replace("\n", " "))
    return words[words.index(option) + 1] if option in words else None


def test_every_redis_requires_the_password_from_the_environment(compose: dict[str, Any]) -> None:
    servers = services(compose, "redis") | services(compose, "replica")
    assert len(servers) == 3
    for name, service in servers.items():
        command = _command_text(service)
        assert "requirepass" in command and "masterauth" in command, name
        assert "$$NOTECARD_REDIS_PASSWORD" in command, name  # expanded in the container, not by compose
        assert "--requirepass" not in command, f"{name}: a password on the command line is readable by any process"
        assert service["environment"]["NOTECARD_REDIS_PASSWORD"].startswith("${NOTECARD_REDIS_PASSWORD:?"), name


def test_the_sentinels_require_their_password_and_know_redis_one(compose: dict[str, Any]) -> None:
    sentinels = services(compose, "sentinel")
    assert len(sentinels) == 3
    for name, service in sentinels.items():
        command = _command_text(service)
        assert "requirepass" in command and "$$NOTECARD_SENTINEL_PASSWORD" in command, name
        assert "sentinel auth-pass notecard" in command and "$$NOTECARD_REDIS_PASSWORD" in command, name
        assert service["environment"]["NOTECARD_SENTINEL_PASSWORD"].startswith("${NOTECARD_SENTINEL_PASSWORD:?")
    conf = (ROOT / "deploy" / "sentinel.conf").read_text()
    assert re.search(r"^sentinel monitor notecard redis-primary 6379 2$", conf, re.M)
    assert not re.search(r"^\s*(requirepass|sentinel auth-pass)", conf, re.M)  # no password in the file


def test_the_gateways_use_the_passwords_and_the_strict_preset_the_replicas_can_keep(
    compose: dict[str, Any]
) -> None:
    gateways = services(compose, "gateway")
    replicas = services(compose, "replica")
    assert len(gateways) == 2
    for name, service in gateways.items():
        env = service["environment"]
        for secret in ("NOTECARD_TOKEN_SECRET", "NOTECARD_ADMIN_TOKEN", "NOTECARD_REDIS_PASSWORD",
                       "NOTECARD_SENTINEL_PASSWORD"):
            assert env[secret] == f"${{{secret}:?set {secret}}}", (name, secret)
        preset = env["NOTECARD_DURABILITY"]
        assert preset == "strict", name  # what the header and docs/guarantees.md promise
        wait = int(env.get("NOTECARD_WAIT_REPLICAS", PRESET_WAIT[preset][0]))
        assert wait == len(replicas), f"{name}: strict waits for every replica"
        assert len(env["NOTECARD_SENTINELS"].split(",")) == len(services(compose, "sentinel"))
        assert "ports" not in service, f"{name}: gateways are reached through HAProxy only"
        assert env.get("NOTECARD_ADMIN_HOST", "127.0.0.1") == "127.0.0.1", name
    for name, service in (services(compose, "redis") | services(compose, "replica")).items():
        command = _command_text(service)
        assert _redis_option(command, "--appendonly") == "yes", name
        assert _redis_option(command, "--appendfsync") == "always", f"{name}: strict is AOF fsync always"


def test_nothing_but_the_websocket_is_published_beyond_the_host(compose: dict[str, Any]) -> None:
    published = [(name, str(port)) for name, service in compose["services"].items()
                 for port in service.get("ports", [])]
    assert published, "HAProxy publishes the WebSocket"
    for name, port in published:
        parts = port.split(":")
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        container_port = parts[-1]
        assert container_port != ADMIN_PORT, f"{name} publishes the admin API"
        if host_ip not in ("127.0.0.1", "::1"):
            assert container_port == "8765", f"{name} publishes {port} on every interface"


def _dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in shlex.split(line[4:]))
    return env


def test_the_image_keeps_the_admin_api_on_loopback_and_probes_apart() -> None:
    env = _dockerfile_env()
    assert env["NOTECARD_ADMIN_HOST"] == "127.0.0.1"
    assert env["NOTECARD_HOST"] == "0.0.0.0"
    assert env["NOTECARD_PROBE_HOST"] == "0.0.0.0"
    probe_port = env["NOTECARD_PROBE_PORT"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"http://127.0.0.1:{probe_port}/readyz" in dockerfile  # the HEALTHCHECK
    assert re.search(rf"^EXPOSE 8765 {probe_port}$", dockerfile, re.M)
    assert "chmod 700 /data" in dockerfile
    haproxy = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert f"check port {probe_port} " in haproxy
