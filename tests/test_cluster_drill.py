"""The cluster drill in CI: a 3-shard Redis Cluster (a replica each), two gateway nodes,
users giving cards on their own shard and across shards, while a shard's primary is killed
(its replica promoted) and a gateway node is killed in the middle of sagas. Under the
``strict`` preset the bank check must show nothing lost, created or settled twice, and no
saga left unfinished after the recovery deadline (docs/guarantees.md)."""

from __future__ import annotations

import pytest

from loadtest.cluster_drill import ClusterDrillSettings, build_parser, fault_plan, run_cluster_drill, settings_from
from loadtest.drill import PRESETS
from loadtest.faults.cluster_faults import ClusterFaultKind, parse_cluster_kinds


def test_fault_plan_puts_the_site_loss_last() -> None:
    s = ClusterDrillSettings(per_kind=2, site_loss=True)
    plan = fault_plan(s)
    assert [r.kind for r in plan][-1] is ClusterFaultKind.SITE_LOSS
    assert sum(r.kind is ClusterFaultKind.PRIMARY_KILL for r in plan) == 2
    assert [r.target for r in plan] == [r.target for r in fault_plan(s)], "the same seed, the same plan"
    assert parse_cluster_kinds("site-loss") == (ClusterFaultKind.SITE_LOSS,)
    assert ClusterFaultKind.SITE_LOSS not in parse_cluster_kinds("all")


def test_command_line() -> None:
    s = settings_from(build_parser().parse_args(["--cluster", "--shards", "2", "--site-loss"]))
    assert (s.shards, s.replicas, s.wait_replicas, s.durability.name) == (2, 2, 2, "strict")
    s = settings_from(build_parser().parse_args(["--cluster", "--durability", "fast"]))
    assert (s.replicas, s.wait_replicas) == (1, 0)
    with pytest.raises(ValueError, match="site"):
        settings_from(build_parser().parse_args(["--cluster", "--site-loss", "--nodes", "1"]))


@pytest.mark.slow
async def test_primary_and_gateway_kills_on_a_cluster_lose_nothing() -> None:
    settings = ClusterDrillSettings(
        seed=3, shards=3, nodes=2, users=12, friends=4, duration_s=16.0, per_kind=1,
        kinds=(ClusterFaultKind.NODE_KILL, ClusterFaultKind.PRIMARY_KILL), durability=PRESETS["strict"],
        confirm_window_s=4.0, saga_step_s=2.0)
    report = await run_cluster_drill(settings)
    assert report["violations"] == [], report["violations"]
    assert report["ok"]
    n = report["numbers"]
    # The workload ran on both paths (how much depends on the machine).
    assert n["acked_cross_shard"] > 5 and n["acked_same_shard"] > 0
    assert n["acked_then_lost"] == 0
    assert n["ledger_mismatches"] == 0
    assert n["sagas_unfinished"] == 0 and n["transit_at_rest"] == 0 and n["offers_queued"] == 0
    assert n["final_states"].get("pending", 0) == 0
    # Gifts to the wards waited for their guardians, across shards too (docs/regions.md).
    assert n["guardian"]["gifts"] > 0, n["guardian"]
    assert n["anomalies"].get("offered_without_approval", 0) == 0
    for row in n["per_kind"].values():
        assert row["minted"] == row["available"] + row["held"] + row["consumed"] + row["transit"]
    ran = {f["kind"]: f for f in report["faults"]}
    assert set(ran) == {"node_kill", "primary_kill"}
    assert "promoted" in ran["primary_kill"]["detail"] and not ran["primary_kill"]["error"]
    assert report["per_fault"]["primary_kill"]["gifts_during"] > 0
    assert report["per_fault"]["node_kill"]["gifts_during"] > 0


@pytest.mark.slow
async def test_losing_site_a_and_promoting_site_b_loses_nothing_under_strict() -> None:
    """Every site-A process (each shard's primary and first replica, one gateway node) killed
    at once; each shard's site-B replica takes over with CLUSTER FAILOVER TAKEOVER; clients
    move to the site-B node. Under ``strict`` (WAIT for both replicas) nothing acknowledged
    is lost and no saga is left half-done."""
    settings = ClusterDrillSettings(
        seed=5, shards=2, nodes=2, users=10, friends=4, duration_s=8.0, per_kind=1, kinds=(), site_loss=True,
        durability=PRESETS["strict"], confirm_window_s=4.0, saga_step_s=2.0)
    report = await run_cluster_drill(settings)
    assert report["violations"] == [], report["violations"]
    n = report["numbers"]
    assert n["acked_cross_shard"] > 0 and n["acked_then_lost"] == 0 and n["ledger_mismatches"] == 0
    assert n["sagas_unfinished"] == 0 and n["transit_at_rest"] == 0 and n["offers_queued"] == 0
    (site_loss,) = report["faults"]
    assert site_loss["kind"] == "site_loss" and not site_loss["error"]
    assert "took over" in site_loss["detail"] and "cluster healthy: True" in site_loss["detail"]
    assert report["per_fault"]["site_loss"]["gifts_during"] > 0
