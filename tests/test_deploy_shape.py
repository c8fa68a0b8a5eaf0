"""docker-compose.yml, the Dockerfile and deploy/ are the documented production shape.

No container engine runs here, so the files are read and checked for what the shape
promises: Redis and the Sentinels require passwords (from the environment, never in the
files), the durability preset the docs name is set and the replicas can satisfy its WAIT,
and neither the admin API nor HAProxy's stats are published beyond the host. The
Dockerfile is parsed: two stages, the locked dependencies before the source, a numeric
user, a HEALTHCHECK that is run here against a live node; and the build stage's steps are
run outside Docker, in a fresh virtualenv.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.config import PRESET_WAIT
from notecard.local_redis import free_port
from tests.gateway_fixtures import NodeFactory

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


@dataclasses.dataclass
class Instruction:
    name: str
    args: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, stage by stage (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[Instruction]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, args = line.partition(" ")
        if name.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(Instruction(name.upper(), " ".join(args.split())))
    return stages


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.name == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(instruction.args))
    return env


def test_the_image_keeps_the_admin_api_on_loopback_and_probes_apart() -> None:
    env = _env(dockerfile_stages()[-1])
    assert env["NOTECARD_ADMIN_HOST"] == "127.0.0.1"
    assert env["NOTECARD_HOST"] == "0.0.0.0"
    assert env["NOTECARD_PROBE_HOST"] == "0.0.0.0"
    probe_port = env["NOTECARD_PROBE_PORT"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE 8765 {probe_port}$", dockerfile, re.M)
    assert "-m 700 /data" in dockerfile
    haproxy = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert f"check port {probe_port} " in haproxy


def test_the_image_builds_in_two_stages_dependencies_before_the_source() -> None:
    build, runtime = dockerfile_stages()
    assert build[0].args.endswith(" AS build")
    names = [(i.name, i.args) for i in build]
    lock_install = next(n for n, (name, args) in enumerate(names)
                        if name == "RUN" and "--require-hashes" in args and "requirements.lock" in args)
    lock_copy = next(n for n, (name, args) in enumerate(names) if name == "COPY" and "requirements.lock" in args)
    source_copies = [n for n, (name, args) in enumerate(names) if name == "COPY" and "requirements.lock" not in args]
    assert lock_copy < lock_install < min(source_copies), "dependencies are installed before the source is copied"
    # Every package the distribution ships (a package added later must not be left out of the image).
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in sorted({name.rstrip("*") for name in shipped}):
        assert any(args.startswith(f"{package} ") for name, args in names if name == "COPY"), package
    final = [(i.name, i.args) for i in runtime]
    assert ("COPY", "--from=build /opt/notecard /opt/notecard") in final
    assert not any("pip install" in args or "apt-get" in args for name, args in final if name == "RUN")
    assert "redis-server" not in " ".join(args for _, args in final)  # no private Redis to fall back on


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    runtime = dockerfile_stages()[-1]
    users = [i.args for i in runtime if i.name == "USER"]
    assert len(users) == 1 and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[0]), users
    assert runtime[-1] == Instruction("CMD", '["notecard", "serve"]')


def healthcheck_command() -> list[str]:
    runtime = dockerfile_stages()[-1]
    check = next(i.args for i in runtime if i.name == "HEALTHCHECK")
    exec_form = check[check.index(" CMD ") + len(" CMD "):]
    command: list[str] = json.loads(exec_form)
    return command


async def test_the_healthcheck_passes_against_a_live_node_and_fails_without_one(node_factory: NodeFactory) -> None:
    """The HEALTHCHECK command, with the image's environment (its probe port moved to a
    free one), against a node with a probe listener; and with no node there."""
    command = healthcheck_command()
    assert command[0] == "notecard"
    node = await node_factory(probe_port=0)
    image_env = _env(dockerfile_stages()[-1]) | {"NOTECARD_PROBE_PORT": str(node.probe_port)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTECARD_")} | image_env
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    alive = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert alive.returncode == 0, alive.stderr
    env["NOTECARD_PROBE_PORT"] = str(free_port())
    dead = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert dead.returncode == 1


def _pins() -> dict[str, str]:
    lock = (ROOT / "requirements.lock").read_text()
    return {canonicalize_name(name): version for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock, re.M)}


def test_the_lock_pins_every_dependency_within_its_range_with_hashes() -> None:
    pins = _pins()
    lock = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=\S)", lock)
    for block in blocks:
        if "==" in block.split("\n")[0]:
            assert "--hash=sha256:" in block, block.split("\n")[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [Requirement(text) for text in project["project"]["dependencies"]]
    requirements += [Requirement(text) for text in project["build-system"]["requires"]]
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate({"sys_platform": "linux"}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name]), (name, pins[name], str(requirement.specifier))


@pytest.mark.slow
def test_what_the_image_installs_works_outside_docker(tmp_path: Path) -> None:
    """The build stage's steps, in a fresh virtualenv: the lock alone satisfies the package
    (pip check), and the installed command runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--require-hashes", "--no-deps", "-r", str(ROOT / "requirements.lock")],
                   check=True, timeout=600)
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", ".notecard", "__pycache__",
                                                                "*-results", "tests", "docs"))
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(source)], check=True, timeout=300)
    subprocess.run([*pip, "check"], check=True, timeout=120)
    version = subprocess.run([str(venv / "bin" / "notecard"), "--version"], capture_output=True, text=True,
                             timeout=60, check=True)
    assert version.stdout.strip() == f"notecard {project_version()}"
    refused = subprocess.run([str(venv / "bin" / "notecard"), "serve"], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path, env={"PATH": os.environ["PATH"]}, check=False)
    assert refused.returncode == 2 and "no Redis configured" in refused.stderr
    # The node (with its dashboards routes) and the dashboards' queries need nothing beyond the
    # lock; only their charts need matplotlib (the dashboards extra).
    subprocess.run([str(venv / "bin" / "python"), "-c", "import gateway.node, dashboards.cli, dashboards.queries"],
                   check=True, timeout=120, cwd=tmp_path)


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version
