"""``notecard campaign bench``: a brand campaign's issuing rate, and what it does to users' gifts.

One run, on a throw-away local deployment (loadtest/target.py: one redis-server, gateway
node processes): users' gifts go at a fixed rate (open loop, SDK clients, sender and
recipient on different nodes) in ``--windows`` pairs of windows, one without a campaign
(the baseline) and one while a campaign issues to ``--recipients`` offline users (the list
sent in parts through the admin API, as ``notecard campaign start --file`` does; paused
between its windows), alternated so that a neighbour's load drifting during the run weighs
on both alike. It reports the campaign's recipients per second inside its windows and the
p50/p99 of send->offer of the users' gifts in both phases; then the campaign runs to its
end and the campaign's report (every recipient one gift, the budget balanced) and the
conservation check are read.

    .venv/bin/python -m notecard campaign bench --recipients 100000 --user-rate 200 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from loadtest.gifting import GiftLoad, provision_pairs
from loadtest.stats import LatencySummary, Recorder
from loadtest.target import LoadTarget
from notecard.admin_client import AdminApiError, AdminClient

#: Users created per bulk call (the admin API's limit).
BULK = 500
#: Recipients per call when the list is sent.
PART = 5000
OPS = {"operator": "bench"}
#: The report and the conservation check read every gift of the run.
CHECK_TIMEOUT_S = 1800


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="notecard campaign bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipients", type=int, default=100_000, help="campaign recipients (offline users)")
    p.add_argument("--campaign-rate", type=float, default=1_000_000.0,
                   help="NOTECARD_CAMPAIGN_RATE_PER_S of the nodes (default: no practical cap)")
    p.add_argument("--user-rate", type=float, default=200.0, help="users' gifts a second, in both phases")
    p.add_argument("--pairs", type=int, default=50, help="sender/recipient pairs giving them")
    p.add_argument("--seconds", type=float, default=60.0, help="time of each phase, over all its windows")
    p.add_argument("--windows", type=int, default=3, help="windows of each phase, alternated")
    p.add_argument("--nodes", type=int, default=2, help="gateway node processes")
    p.add_argument("--invariant", action=argparse.BooleanOptionalAction, default=True,
                   help="run the conservation check at the end (reads every gift: slow for big runs)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


async def _create_recipients(admin: AdminClient, count: int) -> list[str]:
    users = [f"cb{i:07d}" for i in range(count)]
    gate = asyncio.Semaphore(8)

    async def part(start: int) -> None:
        async with gate:
            await admin.bulk_users([{"user_id": u} for u in users[start : start + BULK]])

    await asyncio.gather(*(part(s) for s in range(0, count, BULK)))
    return users


async def _start_campaign(admin: AdminClient, users: list[str]) -> None:
    ends = int(time.time() * 1000) + 3_600_000
    await admin.call("POST", "/admin/campaigns", {
        "campaign_id": "bench", "brand": "benchbrand", "kind": "bench_card", "ends_at_ms": ends, "open": True,
        "recipients": [[u, 1] for u in users[:PART]], **OPS})
    for start in range(PART, len(users), PART):
        await admin.call("POST", "/admin/campaigns/bench/recipients",
                         {"recipients": [[u, 1] for u in users[start : start + PART]], **OPS})
    await admin.call("POST", "/admin/campaigns/bench/start", OPS)


async def _progress(admin: AdminClient, samples: list[tuple[float, int, str]]) -> None:
    while True:
        status = await admin.call("GET", "/admin/campaigns/bench")
        samples.append((time.perf_counter(), int(status["issued"]), str(status["state"])))
        if status["state"] != "running":
            return
        await asyncio.sleep(1.0)


async def _switch(admin: AdminClient, action: str) -> Any:
    """Pause or resume the campaign (it may have finished meanwhile); its status after."""
    try:
        return await admin.call("POST", f"/admin/campaigns/bench/{action}", OPS)
    except AdminApiError as exc:
        if exc.code != "CAMPAIGN_STATE":
            raise
        return await admin.call("GET", "/admin/campaigns/bench")


async def _pause_if_running(admin: AdminClient) -> Any:
    return await _switch(admin, "pause")


def issuing_rate(samples: list[tuple[float, int, str]]) -> float:
    """Recipients a second between the first sample that saw issuing and the first that saw
    the campaign done (or the last one)."""
    moving = [s for s in samples if s[1] > 0]
    if len(moving) < 2:
        return float("nan")
    first = moving[0]
    last = next((s for s in moving if s[2] != "running"), moving[-1])
    return (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else float("nan")


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = {"NOTECARD_CAMPAIGN_RATE_PER_S": str(args.campaign_rate), "NOTECARD_CAMPAIGN_POLL_S": "0.2",
           "NOTECARD_BRAND_MIN_FOLLOWERS": "0"}
    with LoadTarget(work, nodes=args.nodes, env=env) as deployment:
        target = deployment.target
        async with AdminClient(target.admin_url, target.admin_token, timeout_s=120) as admin:
            provisioning = time.perf_counter()
            pairs = await provision_pairs(admin, args.pairs)
            users = await _create_recipients(admin, args.recipients)
            await admin.create_user("benchbrand")
            await admin.call("PATCH", "/admin/business/benchbrand", {"business": True, **OPS})
            await admin.call("PUT", "/admin/kinds/bench_card", {
                "brand": "benchbrand", "name": "Bench card", "artwork": "https://cdn.example/b.png",
                "budget_cards": args.recipients, **OPS})
            provisioned_s = time.perf_counter() - provisioning
            rec = Recorder()
            urls = list(target.urls)
            async with GiftLoad(urls[0], urls[-1], target.token, pairs, rec, seed=1) as load:
                await load.run_paced(args.user_rate, min(5.0, args.seconds), name="warmup")
                loading = time.perf_counter()
                await _start_campaign(admin, users)
                await _pause_if_running(admin)
                loaded_s = time.perf_counter() - loading
                # Alternate windows without and with the campaign: a neighbour's load that
                # drifts during the run then weighs on both phases alike.
                issued_s, issued = 0.0, 0
                settled, errors = dict.fromkeys(("baseline", "campaign"), 0), dict.fromkeys(("baseline", "campaign"), 0)
                for _ in range(args.windows):
                    off = await load.run_paced(args.user_rate, args.seconds / args.windows, name="baseline")
                    before = await _switch(admin, "resume")
                    began = time.perf_counter()
                    on = await load.run_paced(args.user_rate, args.seconds / args.windows, name="campaign")
                    after = await _pause_if_running(admin)
                    if after["state"] not in ("running", "paused"):
                        break  # a small campaign may be over before the windows are
                    issued_s += time.perf_counter() - began
                    issued += int(after["issued"]) - int(before["issued"])
                    for phase, result in (("baseline", off), ("campaign", on)):
                        settled[phase] += result.settled
                        errors[phase] += result.errors
                samples: list[tuple[float, int, str]] = []
                if (await admin.call("GET", "/admin/campaigns/bench"))["state"] == "paused":
                    await admin.call("POST", "/admin/campaigns/bench/resume", OPS)
                await asyncio.wait_for(_progress(admin, samples), timeout=max(600.0, args.recipients / 50))
            latencies = {name: _summary(rec, name) for name in ("baseline", "campaign")}
            # the numbers first: the checks below read every gift and take a while
            rate = round(issued / issued_s if issued_s > 0 else math.nan, 1)
            print(orjson.dumps({"recipients_per_s": rate,
                                "send_to_offer_ms": latencies}).decode(), file=sys.stderr, flush=True)
        async with AdminClient(target.admin_url, target.admin_token, timeout_s=CHECK_TIMEOUT_S) as admin:
            report = await admin.call("GET", "/admin/campaigns/bench/report")
            invariant = await admin.call("GET", "/admin/invariant") if args.invariant else {"ok": None}
    return {
        "recipients": args.recipients, "campaign_rate_setting": args.campaign_rate, "nodes": args.nodes,
        "user_gifts_per_s": args.user_rate, "phase_s": args.seconds, "provisioning_s": round(provisioned_s, 1),
        "list_upload_s": round(loaded_s, 1), "recipients_per_s": rate,
        "recipients_per_s_after_the_windows": round(issuing_rate(samples), 1), "windows": args.windows,
        "send_to_offer_ms": latencies,
        "user_gifts_settled": settled, "user_gift_errors": errors,
        "report": {"recipients": report["recipients"], "balanced": report["balanced"]},
        "invariant_ok": invariant["ok"],
    }


def _summary(rec: Recorder, phase: str) -> dict[str, float]:
    s = LatencySummary.of(rec.get(f"{phase}/send->offer").latency)
    return {"count": s.count, "p50": round(s.p50_ms, 2), "p99": round(s.p99_ms, 2), "max": round(s.max_ms, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    with tempfile.TemporaryDirectory(prefix="campaign-bench-") as folder:
        results = asyncio.run(run(args, Path(folder)))
    text = orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out is not None:
        with contextlib.suppress(FileExistsError):
            args.out.parent.mkdir(parents=True)
        args.out.write_text(text + "\n")
    ok = results["invariant_ok"] is not False and results["report"]["balanced"]
    return 0 if ok else 1
