"""The Kubernetes and observability kit: the Helm chart lints and renders with Helm's own
engine, its objects validate against Kubernetes' schemas and would start a node; the alert
rules pass promtool's checks and unit tests; alerts and dashboard use only series a node
exports; every alert has its runbook."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from gateway.config import GatewaySettings, declarations, production_problems
from notecard.runner import STRAY_TASKS_GRACE_S
from tests.test_metrics import readme_series

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "notecard"
ALERTS = ROOT / "deploy" / "prometheus" / "notecard-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "notecard-dashboard.json"
RUNBOOKS = ROOT / "docs" / "operations.md"
#: The Kubernetes version the manifests are validated against (the chart's kubeVersion is >= 1.25).
KUBERNETES = "1.30"
REQUIRED_ALERTS = {"NotecardSubscriberDeaf", "NotecardInvariantViolated", "NotecardRedisDown",
                   "NotecardOfferLatencyHigh", "NotecardSlowConsumerCloses"}
SENTINELS = ["sentinel-0.sentinel:26379", "sentinel-1.sentinel:26379", "sentinel-2.sentinel:26379"]
EVERYTHING_ON = {
    "secrets": {"existingSecret": "notecard", "sentinelPasswordKey": "sentinel-password"},
    "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True},
    "config": {"durability": "replicated", "trustedProxies": "10.0.0.0/8",
               "extraEnv": {"NOTECARD_DAILY_SEND_LIMIT": "7"}},
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name="gw", namespace="prod")
    objects = []
    for name, text in manifests.items():
        if name.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module")
def sentinel_objects() -> list[dict[str, Any]]:
    return render({"redis": {"sentinels": SENTINELS}, **EVERYTHING_ON})


def test_helm_lint_finds_nothing_to_fix() -> None:
    report = helm.lint(str(CHART))
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # warnings and errors


@pytest.mark.parametrize(("values", "message"), [
    ({"secrets": {"existingSecret": "notecard"}}, "set exactly one of redis.url, redis.sentinels and redis.cluster"),
    ({"redis": {"url": "redis://r:6379", "sentinels": SENTINELS}, "secrets": {"existingSecret": "notecard"}},
     "set exactly one of"),
    ({"redis": {"url": "redis://r:6379"}}, "set secrets.existingSecret"),
    ({"redis": {"url": "redis://r:6379"}, "secrets": {"existingSecret": "notecard", "tokenSecretKey": ""}},
     "set tokens.jwksUrl or secrets.tokenSecretKey"),
])
def test_rendering_without_a_redis_or_the_secret_fails_naming_it(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


@pytest.mark.parametrize("redis", [{"url": "redis://redis:6379/0"}, {"sentinels": SENTINELS},
                                   {"cluster": ["redis-0.redis:6379", "redis-1.redis:6379"]}])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(redis: dict[str, Any]) -> None:
    objects = render({"redis": redis, **EVERYTHING_ON})
    kinds = sorted(o["kind"] for o in objects)
    # the nodes, the ledger consumer and the risk scorer (tests/test_deploy_side_processes.py)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Deployment", "PodDisruptionBudget", "PrometheusRule",
                     "Service", "Service", "ServiceMonitor"]
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's own kinds: checked below
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def gateway(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The nodes' Deployment (the side processes' carry a component label)."""
    (deployment,) = [d for d in by_kind(objects, "Deployment")
                     if "app.kubernetes.io/component" not in d["metadata"]["labels"]]
    return deployment


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (main,) = gateway(objects)["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = main
    return result


def plain_env(main: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in main["env"] if "value" in e}


def test_the_rendered_settings_would_start_a_node(sentinel_objects: list[dict[str, Any]]) -> None:
    """The chart's variables are the node's own, and with the Secret's values in place a
    node outside development accepts them."""
    main = container(sentinel_objects)
    declared = {d.variable for d in declarations()}
    names = [e["name"] for e in main["env"]]
    assert len(names) == len(set(names))
    assert set(names) <= declared, set(names) - declared
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"] if "valueFrom" in e
                   and "secretKeyRef" in e["valueFrom"]}
    assert {"NOTECARD_TOKEN_SECRET", "NOTECARD_ADMIN_TOKEN", "NOTECARD_REDIS_PASSWORD",
            "NOTECARD_SENTINEL_PASSWORD"} == set(from_secret)
    assert {ref["name"] for ref in from_secret.values()} == {"notecard"}
    env = plain_env(main) | {name: "secret-value-" + "x" * 32 for name in from_secret}
    settings = GatewaySettings.from_env(env)
    assert production_problems(settings) == []
    assert settings.sentinels == tuple((h, int(p)) for h, _, p in (s.rpartition(":") for s in SENTINELS))
    assert (settings.durability_preset, settings.rules.daily_send_limit) == ("replicated", 7)


def test_with_a_jwks_alone_no_pod_gets_a_token_secret_and_a_node_would_start() -> None:
    objects = render({"redis": {"url": "redis://redis:6379/0"},
                      "secrets": {"existingSecret": "notecard", "tokenSecretKey": ""},
                      "tokens": {"jwksUrl": "https://login.example.com/.well-known/jwks.json",
                                 "issuer": "https://login.example.com", "legacy": "false"}})
    main = container(objects)
    names = {e["name"] for e in main["env"]}
    assert "NOTECARD_TOKEN_SECRET" not in names
    env = plain_env(main) | {"NOTECARD_ADMIN_TOKEN": "secret-value-" + "x" * 32}
    settings = GatewaySettings.from_env(env)
    assert production_problems(settings) == []
    assert (settings.jwks_url, settings.jwt_issuer, settings.legacy_tokens) == (
        "https://login.example.com/.well-known/jwks.json", "https://login.example.com", False)


def test_probes_ask_the_probe_listener(sentinel_objects: list[dict[str, Any]]) -> None:
    main = container(sentinel_objects)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert str(ports["probe"]) == plain_env(main)["NOTECARD_PROBE_PORT"]
    assert plain_env(main)["NOTECARD_ADMIN_HOST"] == "127.0.0.1"  # the admin API stays inside the pod
    for probe, path in (("livenessProbe", "/healthz"), ("startupProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert main[probe]["httpGet"] == {"path": path, "port": "probe"}, probe


def test_termination_grace_covers_the_pre_stop_sleep_and_the_graceful_shutdown(
    sentinel_objects: list[dict[str, Any]]
) -> None:
    pod = gateway(sentinel_objects)["spec"]["template"]["spec"]
    main = container(sentinel_objects)
    sleep_s = int(main["lifecycle"]["preStop"]["exec"]["command"][-1])
    shutdown_s = float(plain_env(main)["NOTECARD_SHUTDOWN_GRACE_S"])
    assert sleep_s > 0
    assert pod["terminationGracePeriodSeconds"] > sleep_s + shutdown_s + STRAY_TASKS_GRACE_S
    longer = render({"redis": {"url": "redis://r:6379"}, "secrets": {"existingSecret": "s"},
                     "config": {"shutdownGraceSeconds": 30}})
    longer_pod = gateway(longer)["spec"]["template"]["spec"]
    assert plain_env(container(longer))["NOTECARD_SHUTDOWN_GRACE_S"] == "30"
    assert longer_pod["terminationGracePeriodSeconds"] > sleep_s + 30 + STRAY_TASKS_GRACE_S


def test_the_pod_runs_as_a_numeric_non_root_user(sentinel_objects: list[dict[str, Any]]) -> None:
    pod = gateway(sentinel_objects)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container(sentinel_objects)["securityContext"]["readOnlyRootFilesystem"] is True


def test_selectors_find_the_pods_and_the_metrics_port(sentinel_objects: list[dict[str, Any]]) -> None:
    pod_labels = gateway(sentinel_objects)["spec"]["template"]["metadata"]["labels"]
    (pdb,) = by_kind(sentinel_objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    services = {s["metadata"]["name"]: s for s in by_kind(sentinel_objects, "Service")}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
    (monitor,) = by_kind(sentinel_objects, "ServiceMonitor")
    chosen = [s for s in services.values()
              if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in chosen] == ["gw-notecard-metrics"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in chosen[0]["spec"]["ports"]}
    assert {p["targetPort"] for p in chosen[0]["spec"]["ports"]} == {"probe"}


def test_the_chart_carries_the_same_rules_and_dashboard(sentinel_objects: list[dict[str, Any]]) -> None:
    (rule,) = by_kind(sentinel_objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    (config_map,) = by_kind(sentinel_objects, "ConfigMap")
    assert json.loads(config_map["data"]["notecard.json"]) == json.loads(DASHBOARD.read_text())


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: scripts/setup test installs Debian's prometheus package"
    return subprocess.run([binary, *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=120,
                          check=False)


def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "notecard-alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def series_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:notecard|process)_[a-z_]+)", expr))


def test_alerts_and_panels_use_only_series_a_node_exports() -> None:
    exported = set(readme_series())  # tests/test_metrics.py checks a node exports exactly these
    rules = alerts()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert series_in(rule["expr"]) and series_in(rule["expr"]) <= exported, rule["alert"]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) > 20
    for expr in exprs:
        assert series_in(expr) and series_in(expr) <= exported, expr
    used = set().union(*(series_in(e) for e in exprs))
    assert {"notecard_event_loop_lag_seconds_bucket", "notecard_pending_gifts", "notecard_send_queue_frames",
            "notecard_refusals_total", "process_cpu_seconds_total"} <= used


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "notecard"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            for name in re.findall(r"\$(\w+)", target["expr"]):
                assert name in variables, (panel["title"], name)


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_its_runbook_section() -> None:
    text = RUNBOOKS.read_text()
    sections = {github_anchor(h): body for h, body in
                zip(re.findall(r"^### (.+)$", text, re.M), re.split(r"^### .+$", text, flags=re.M)[1:], strict=True)}
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/operations.md" and anchor == rule["alert"].lower(), url
        assert anchor in sections, f"docs/operations.md has no section {rule['alert']}"
        body = sections[anchor]
        assert "**Means**" in body and "**Do**" in body, rule["alert"]
        for name in series_in(rule["expr"]):
            assert name.removesuffix("_bucket") in body, (rule["alert"], name)
