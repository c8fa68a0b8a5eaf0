"""The side processes in the documented production shapes: docker-compose.yml and the Helm
chart run PostgreSQL (compose), ``notecard ledger``, ``notecard risk run`` and ``notecard
webhooks`` as services / Deployments of their own, with the commands their CLIs accept and
settings every one of which is a declared NOTECARD_* setting that the process would accept
(tests/test_deploy_shape.py and tests/test_observability.py check the nodes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from gateway.config import ConfigError, GatewaySettings, declarations
from ledger.cli import build_parser as ledger_parser
from notecard.webhooks import build_parser as webhooks_parser
from risk.cli import build_parser as risk_parser
from tests.test_observability import SENTINELS, by_kind, gateway, render

ROOT = Path(__file__).resolve().parent.parent
SECRET_VALUE = "secret-value-" + "x" * 32
#: Each side process: its subcommand words, and the settings it cannot run without.
SIDE = {"ledger": (["ledger"], {"NOTECARD_POSTGRES_URL"}),
        "risk-scorer": (["risk", "run"], set()),
        "webhooks": (["webhooks"], {"NOTECARD_WEBHOOK_URLS", "NOTECARD_WEBHOOK_SECRET"})}
REDIS_ENV = {"NOTECARD_SENTINELS", "NOTECARD_SENTINEL_MASTER", "NOTECARD_REDIS_PASSWORD", "NOTECARD_SENTINEL_PASSWORD"}


def parses(words: list[str]) -> None:
    """The CLI accepts the words (argparse exits on anything it does not know)."""
    if words[0] == "ledger":
        ledger_parser().parse_args(words[1:])
    elif words[:2] == ["risk", "run"]:
        risk_parser().parse_args(words[1:])
    else:
        assert words[0] == "webhooks", words
        webhooks_parser().parse_args(words[1:])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_runs_postgresql_with_its_password_from_the_environment_and_a_volume(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    env = postgres["environment"]
    assert env["POSTGRES_PASSWORD"] == "${NOTECARD_POSTGRES_PASSWORD:?set NOTECARD_POSTGRES_PASSWORD}"
    assert "ports" not in postgres, "PostgreSQL is reached inside the network only"
    (volume,) = postgres["volumes"]
    assert volume.split(":")[0] in compose["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"]


@pytest.mark.parametrize("name", sorted(SIDE))
def test_compose_runs_each_side_process_as_its_own_service_with_its_settings(
        compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    words, required = SIDE[name]
    command = service["command"]
    assert command[0] == "notecard" and command[1:1 + len(words)] == words
    parses(command[1:])
    assert "--metrics-port" in command
    env = service["environment"]
    declared = {d.variable for d in declarations()}
    assert set(env) <= declared, set(env) - declared
    assert REDIS_ENV | required <= set(env)
    # the same Redis as the nodes
    for key in REDIS_ENV:
        assert env[key] == compose["services"]["gateway-1"]["environment"][key], key
    assert "NOTECARD_TOKEN_SECRET" not in env and "NOTECARD_ADMIN_TOKEN" not in env, "no node secrets"
    assert "ports" not in service
    assert service["healthcheck"] == {"disable": True}, "the image's check asks a node's probe listener"


def test_the_ledger_reaches_the_compose_postgresql_with_the_same_password(compose: dict[str, Any]) -> None:
    ledger = compose["services"]["ledger"]
    url = ledger["environment"]["NOTECARD_POSTGRES_URL"]
    assert url == ("postgresql://notecard:${NOTECARD_POSTGRES_PASSWORD:?set NOTECARD_POSTGRES_PASSWORD}"
                   "@postgres:5432/notecard")
    postgres_env = compose["services"]["postgres"]["environment"]
    assert (postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_DB"]) == ("notecard", "notecard")
    assert ledger["depends_on"]["postgres"] == {"condition": "service_healthy"}
    settings = GatewaySettings.from_env({k: v.replace("${NOTECARD_POSTGRES_PASSWORD:?set NOTECARD_POSTGRES_PASSWORD}",
                                                      "pw") for k, v in ledger["environment"].items()})
    assert settings.postgres_url == "postgresql://notecard:pw@postgres:5432/notecard"


def test_the_ledger_waits_for_the_same_replicas_as_the_nodes(compose: dict[str, Any]) -> None:
    """docs/ledger.md "Replicas and failover": the consumer copies an entry to PostgreSQL only
    once as many replicas hold it as a node waits for, or a failover could count it twice."""
    node = GatewaySettings.from_env(_placeholders(compose["services"]["gateway-1"]["environment"]))
    ledger = GatewaySettings.from_env(_placeholders(compose["services"]["ledger"]["environment"]))
    assert node.durability.wait_replicas == 2
    assert ledger.durability == node.durability


def test_the_charts_ledger_waits_for_the_same_replicas_as_the_nodes() -> None:
    objects = render(HELM_ON | {"config": {"durability": "strict"}})
    for deployment in (gateway(objects), side_deployments(objects)["ledger"]):
        (main,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"name": "NOTECARD_DURABILITY", "value": "strict"} in main["env"]


def _placeholders(env: dict[str, str]) -> dict[str, str]:
    """Compose's ${VAR:?...} references as plain values, so the settings parse."""
    return {k: re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "x" * 32, v) for k, v in env.items()}


def test_the_webhooks_service_runs_only_when_asked_for(compose: dict[str, Any]) -> None:
    """A required variable would stop every `docker compose up`: the profile keeps it off."""
    assert compose["services"]["webhooks"]["profiles"] == ["webhooks"]


@pytest.mark.parametrize(("raw", "said"), [
    ("mysql://u:hunter2@db/x", "expected a postgresql:// or postgres:// URL"),
    ("postgresql://", "expected a postgresql:// or postgres:// URL"),
])
def test_a_bad_postgres_url_is_refused_naming_the_setting_without_its_password(raw: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        GatewaySettings.from_env({"NOTECARD_POSTGRES_URL": raw})
    message = str(caught.value)
    assert message.startswith("NOTECARD_POSTGRES_URL=") and said in message
    assert "hunter2" not in message


def test_the_postgres_url_is_shown_without_its_password() -> None:
    from gateway.config import effective

    settings = GatewaySettings.from_env({"NOTECARD_POSTGRES_URL": "postgresql://nc:hunter2@db:5432/nc"})
    (row,) = [r for r in effective(settings, {"NOTECARD_POSTGRES_URL": "x"}) if r[0] == "NOTECARD_POSTGRES_URL"]
    assert row[1] == "postgresql://nc:***@db:5432/nc"


HELM_ON = {"redis": {"sentinels": SENTINELS},
           "secrets": {"existingSecret": "notecard", "sentinelPasswordKey": "sentinel-password",
                       "webhookSecretKey": "webhook-secret"},
           "webhooks": {"enabled": True, "urls": ["https://platform.example.com/hook"],
                        "settings": {"NOTECARD_WEBHOOK_ATTEMPTS": "8"}}}


def side_deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind(objects, "Deployment")
            if "app.kubernetes.io/component" in d["metadata"]["labels"]}


def test_the_chart_runs_each_side_process_as_its_own_deployment_with_its_settings() -> None:
    objects = render(HELM_ON)
    sides = side_deployments(objects)
    assert set(sides) == set(SIDE)
    nodes = gateway(objects)
    node_selector = nodes["spec"]["selector"]["matchLabels"]
    declared = {d.variable for d in declarations()}
    for name, deployment in sides.items():
        words, required = SIDE[name]
        pod = deployment["spec"]["template"]
        (main,) = pod["spec"]["containers"]
        assert main["command"] == ["notecard"] and main["args"][:len(words)] == words
        parses(main["args"])
        env = {e["name"]: e for e in main["env"]}
        assert set(env) - {"POD_NAME"} <= declared
        assert REDIS_ENV | required <= set(env), name
        # the pod's name is the consumer's name in its group
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert "$(POD_NAME)" in main["args"]
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert str(ports["metrics"]) == main["args"][main["args"].index("--metrics-port") + 1]
        assert main["livenessProbe"]["tcpSocket"]["port"] == "metrics"
        # the nodes' Services and selectors never pick a side process's pods
        assert not node_selector.items() <= pod["metadata"]["labels"].items(), name
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        for secret in ("NOTECARD_TOKEN_SECRET", "NOTECARD_ADMIN_TOKEN"):
            assert secret not in env, f"{name} gets no node secret"
        plain = {k: e["value"] for k, e in env.items() if "value" in e and k != "POD_NAME"}
        secrets = {k: SECRET_VALUE for k, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
        if name == "ledger":
            assert env["NOTECARD_POSTGRES_URL"]["valueFrom"]["secretKeyRef"] == {"name": "notecard",
                                                                                 "key": "postgres-url"}
            secrets["NOTECARD_POSTGRES_URL"] = "postgresql://nc:pw@db:5432/nc"
        settings = GatewaySettings.from_env(plain | secrets)
        assert settings.sentinels and settings.redis_password == SECRET_VALUE
        if name == "webhooks":
            assert settings.webhook_urls == ("https://platform.example.com/hook",)
            assert settings.webhook_attempts == 8
            assert env["NOTECARD_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "webhook-secret"


def test_by_default_the_ledger_and_the_scorer_run_and_the_webhooks_do_not() -> None:
    objects = render({"redis": {"url": "redis://redis:6379/0"}, "secrets": {"existingSecret": "notecard"}})
    assert set(side_deployments(objects)) == {"ledger", "risk-scorer"}
    off = render({"redis": {"url": "redis://redis:6379/0"}, "secrets": {"existingSecret": "notecard"},
                  "ledger": {"enabled": False}, "riskScorer": {"enabled": False}})
    assert side_deployments(off) == {}


@pytest.mark.parametrize(("values", "message"), [
    ({"secrets": {"existingSecret": "notecard", "postgresUrlKey": ""}}, "set secrets.postgresUrlKey"),
    ({"secrets": {"existingSecret": "notecard", "webhookSecretKey": "w"}, "webhooks": {"enabled": True}},
     "set webhooks.urls"),
    ({"secrets": {"existingSecret": "notecard"}, "webhooks": {"enabled": True, "urls": ["https://x/h"]}},
     "set secrets.webhookSecretKey"),
])
def test_a_side_process_without_what_it_needs_fails_to_render_naming_it(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render({"redis": {"url": "redis://redis:6379/0"}, **values})
