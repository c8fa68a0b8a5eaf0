"""The node checks the replicas it sees against NOTECARD_WAIT_REPLICAS and its preset.

A real primary with two replicas and a Sentinel (passwords on), nodes through Sentinel as
in production; and the session's plain Redis, which has no replica.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from gateway import GatewayNode
from gateway.config import ConfigError, GatewaySettings
from loadtest.faults.redis_ha import RedisHA
from tests.gateway_fixtures import NodeFactory
from tests.test_operations import http_get
from tests.test_redis_auth import ha, running_node, sentinel_settings  # noqa: F401  (fixture)

LOGGER = "notecard.gateway.replicas"


def findings(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


async def readyz(node: GatewayNode) -> tuple[int, dict[str, object]]:
    status, body = await http_get(node.admin_url + "/readyz")
    return status, orjson.loads(body)


async def test_strict_with_wait_below_the_replicas_seen_is_not_ready(
    ha: RedisHA, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """strict promises that an acknowledged gift is on every replica; WAIT 1 of 2 cannot
    keep that promise, so the node takes no traffic and says why."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = sentinel_settings(ha, tmp_path, NOTECARD_DURABILITY="strict", NOTECARD_WAIT_REPLICAS="1")
    async with running_node(settings) as node:
        status, body = await readyz(node)
        assert status == 503 and body["ready"] is False
        reasons = body["reasons"]
        assert isinstance(reasons, list) and len(reasons) == 1
        assert "NOTECARD_WAIT_REPLICAS=1 is below the 2 replicas" in reasons[0]
        assert "set NOTECARD_WAIT_REPLICAS=2" in reasons[0]
        _, metrics = await http_get(node.admin_url + "/metrics")
        assert "notecard_redis_replicas 2.0" in metrics.decode()
    assert [level for level, message in findings(caplog) if "is below the 2 replicas" in message] == [logging.ERROR]


async def test_strict_with_wait_equal_to_the_replicas_is_ready_and_quiet(
    ha: RedisHA, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = sentinel_settings(ha, tmp_path, NOTECARD_DURABILITY="strict")  # the preset's WAIT: 2
    assert settings.wait_replicas == 2
    async with running_node(settings) as node:
        status, body = await readyz(node)
        assert status == 200 and "reasons" not in body
    assert findings(caplog) == []


async def test_wait_above_the_replicas_seen_warns_and_stays_ready(
    ha: RedisHA, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """Every gift write would answer UNAVAILABLE: said at start, not discovered per gift."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = sentinel_settings(ha, tmp_path, NOTECARD_DURABILITY="strict", NOTECARD_WAIT_REPLICAS="3")
    async with running_node(settings) as node:
        assert (await readyz(node))[0] == 200
    assert findings(caplog) == [(logging.WARNING, "NOTECARD_WAIT_REPLICAS=3 but the primary has 2 replica(s): every "
                                                  "gift write answers UNAVAILABLE until enough replicas attach")]


async def test_no_preset_and_wait_below_the_replicas_warns(
    ha: RedisHA, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with running_node(sentinel_settings(ha, tmp_path)) as node:  # WAIT 0, no preset
        assert (await readyz(node))[0] == 200
    (level, message), = findings(caplog)
    assert level == logging.WARNING
    assert "NOTECARD_WAIT_REPLICAS=0 is below the 2 replicas" in message and "NOTECARD_DURABILITY" in message


async def test_wait_on_a_redis_without_replicas_warns(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    node = await node_factory(wait_replicas=1, wait_timeout_ms=200)
    assert (await readyz(node))[0] == 200
    assert findings(caplog) == [(logging.WARNING, "NOTECARD_WAIT_REPLICAS=1 but the primary has 0 replica(s): every "
                                                  "gift write answers UNAVAILABLE until enough replicas attach")]


def test_a_preset_contradicted_by_the_wait_setting_stops_the_start() -> None:
    with pytest.raises(ConfigError, match="NOTECARD_WAIT_REPLICAS=1 contradicts NOTECARD_DURABILITY=aof"):
        GatewaySettings.from_env({"NOTECARD_DURABILITY": "aof", "NOTECARD_WAIT_REPLICAS": "1"})
    with pytest.raises(ConfigError, match="NOTECARD_DURABILITY=strict needs NOTECARD_WAIT_REPLICAS"):
        GatewaySettings.from_env({"NOTECARD_DURABILITY": "strict", "NOTECARD_WAIT_REPLICAS": "0"})
    with pytest.raises(ConfigError, match="NOTECARD_DURABILITY"):
        GatewaySettings.from_env({"NOTECARD_DURABILITY": "paranoid"})
    replicated = GatewaySettings.from_env({"NOTECARD_DURABILITY": "replicated"})
    assert (replicated.wait_replicas, replicated.wait_timeout_ms) == (1, 500)
