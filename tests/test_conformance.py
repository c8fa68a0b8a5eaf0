"""docs/protocol.md is the one contract: the same conformance cases (tests/conformance/
cases.json) run against the Python SDK and the TypeScript SDK, on one real deployment per
module (``python -m notecard.testbed``: a redis-server and two gateway nodes), each case
with users of its own. The two SDKs run their cases at the same time (one Node process for
all the TypeScript runs); each case x SDK is one test that reads its report."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import mint_token
from notecard.admin_client import AdminClient
from tests.conformance.match import mismatch
from tests.conformance.runner import PythonRunner

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "tests" / "conformance"
JS = ROOT / "clients" / "js"
CASES: list[dict[str, Any]] = json.loads((HERE / "cases.json").read_text(encoding="utf-8"))["cases"]
VECTORS: list[dict[str, Any]] = json.loads((HERE / "match_vectors.json").read_text(encoding="utf-8"))["vectors"]
DAY_MS = 86_400_000
SDKS = ["python", "typescript"]


class Deployment:
    def __init__(self, info: dict[str, Any]) -> None:
        self.urls: list[str] = [node["url"] for node in info["nodes"]]
        self.admin_url: str = info["nodes"][0]["admin_url"]
        self.admin_token: str = info["admin_token"]
        self.token_secret: str = info["token_secret"]


def _node() -> str:
    node = shutil.which("node")
    assert node is not None, "Node.js 20+ is needed for the TypeScript SDK (clients/js)"
    return node


def _build_typescript_sdk() -> None:
    """Compile clients/js to dist/ when a source is newer than the build (as npm test does)."""
    built = JS / "dist" / "index.js"
    sources = list((JS / "src").glob("*.ts"))
    if built.exists() and all(s.stat().st_mtime <= built.stat().st_mtime for s in sources):
        return
    subprocess.run([str(JS / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"], cwd=JS, check=True,
                   timeout=300)


@pytest.fixture(scope="module")
def testbed() -> Iterator[Deployment]:
    _build_typescript_sdk()
    child = subprocess.Popen([sys.executable, "-m", "notecard.testbed", "--nodes", "2"], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()  # the testbed prints one line once every node is ready
        assert line, f"the testbed exited with {child.wait(timeout=30)} before it was ready"
        yield Deployment(json.loads(line))
    finally:
        if child.stdin is not None:
            child.stdin.close()  # the testbed stops, and removes what it started, at end of input
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


async def _prepare(bed: Deployment, case: dict[str, Any]) -> dict[str, Any]:
    """Users of the case's own (fresh ids), their tokens, fresh gift ids: the case's names.

    A user is created verified, 30 days old, not banned, with 10 cards, following and
    followed by every other user of the case for 4 days, unless the case says otherwise
    (``account``, ``verified``, ``banned``, ``age_days``, ``cards``, ``follows``; ``app``: the
    linked app in the user's token)."""
    run = uuid.uuid4().hex[:8]
    users: dict[str, dict[str, Any]] = case["users"]
    names: dict[str, Any] = {"forged_token": mint_token("not-the-gateway-secret-0123456789abcdef", "mallory")}
    for role, spec in users.items():
        user = f"{role}-{run}"
        names[role] = user
        names[f"{role}.token"] = mint_token(bed.token_secret, user, app=spec.get("app", "main"))
        names[f"{role}.expired_token"] = mint_token(bed.token_secret, user, now=time.time() - 7200, ttl_s=3600)
    for name in case.get("gift_ids", []):
        names[name] = f"{name}-{uuid.uuid4().hex}"
    now = int(time.time() * 1000)
    members = [role for role, spec in users.items() if spec.get("account", True)]
    async with AdminClient(bed.admin_url, bed.admin_token) as admin:
        for role in members:
            spec = users[role]
            await admin.create_user(names[role], verified=spec.get("verified", True), banned=spec.get("banned", False),
                                    created_at_ms=now - int(spec.get("age_days", 30) * DAY_MS))
            if cards := users[role].get("cards", 10):
                await admin.mint(names[role], cards)
        social = [role for role in members if users[role].get("follows", True)]
        for a in social:
            for b in social:
                if a != b:
                    await admin.follow(names[a], names[b], now - 4 * DAY_MS)
    return names


async def _run_typescript(payload: dict[str, Any]) -> Any:
    child = await asyncio.create_subprocess_exec(
        _node(), str(JS / "conformance" / "runner.mjs"), cwd=JS, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    out, err = await asyncio.wait_for(child.communicate(json.dumps(payload).encode()), timeout=300)
    assert child.returncode == 0, f"the TypeScript runner failed ({child.returncode}): {err.decode()}"
    return json.loads(out)


Run = tuple[dict[str, Any], dict[str, Any]]  # a case and its names (users, tokens, gift ids)


async def _run(bed: Deployment, sdk: str, runs: list[Run]) -> list[dict[str, Any]]:
    """The reports of ``runs``, one after the other, with one SDK (one Node process for all)."""
    admin = {"url": bed.admin_url, "token": bed.admin_token}
    if sdk == "python":
        reports: list[dict[str, Any]] = []
        for case, names in runs:
            try:
                reports.append(await PythonRunner(bed.urls, names, admin, bed.token_secret).run(case))
            except Exception as exc:  # a runner that broke fails its case, not the others
                reports.append({"ok": False, "steps": [], "crash": traceback.format_exc(limit=-8) or repr(exc)})
        return reports
    return list(await _run_typescript(
        {"runs": [{"case": case, "names": names} for case, names in runs], "urls": bed.urls, "admin": admin,
         "token_secret": bed.token_secret}))


async def _run_every_case(bed: Deployment) -> dict[tuple[str, str], dict[str, Any]]:
    """Every case with each SDK: the two SDKs at once (cases have users of their own), each
    SDK's cases one after the other."""
    runs = {sdk: [(case, await _prepare(bed, case)) for case in CASES] for sdk in SDKS}
    results = await asyncio.gather(*(_run(bed, sdk, runs[sdk]) for sdk in SDKS))
    return {(case["name"], sdk): report
            for sdk, reports in zip(SDKS, results, strict=True) for case, report in zip(CASES, reports, strict=True)}


@pytest.fixture(scope="module")
def reports(testbed: Deployment) -> dict[tuple[str, str], dict[str, Any]]:
    return asyncio.run(_run_every_case(testbed))


def _explain(report: dict[str, Any]) -> str:
    lines = [f"the runner broke: {report['crash']}"] if "crash" in report else []
    for step in report["steps"]:
        mark = "ok " if step["problem"] is None else "BAD"
        lines.append(f"{mark} #{step['index']} {step['as']} {step['do']}: {json.dumps(step['observed'])[:400]}")
        if step["problem"] is not None:
            lines.append(f"    {step['problem']}")
    return "\n".join(lines)


@pytest.mark.parametrize("sdk", SDKS)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_sdk_passes_the_conformance_case(reports: dict[tuple[str, str], dict[str, Any]], case: dict[str, Any],
                                             sdk: str) -> None:
    report = reports[case["name"], sdk]
    assert report["ok"], f"{sdk} SDK, case {case['name']} ({case['doc']}):\n{_explain(report)}"


async def test_the_ledger_is_conserved_after_the_cases(reports: dict[tuple[str, str], dict[str, Any]],
                                                        testbed: Deployment) -> None:
    async with AdminClient(testbed.admin_url, testbed.admin_token) as admin:
        invariant = await admin.invariant()
    assert invariant["ok"], invariant


@pytest.mark.parametrize("sdk", SDKS)
async def test_a_wrong_expectation_fails_the_runner(testbed: Deployment, sdk: str) -> None:
    """A case can fail: the welcome case, expecting an offset the fresh stream cannot have."""
    case = json.loads(json.dumps(next(c for c in CASES if c["name"] == "welcome_json")))
    case["steps"][0]["expect"]["offset"] = 1
    [report] = await _run(testbed, sdk, [(case, await _prepare(testbed, case))])
    assert not report["ok"]
    assert [s["problem"] for s in report["steps"]] == ["$.offset: expected 1, got 0"]


@pytest.mark.parametrize("vector", VECTORS, ids=[f"v{i}" for i in range(len(VECTORS))])
def test_the_python_comparison_follows_the_rules(vector: dict[str, Any]) -> None:
    assert (mismatch(vector["expected"], vector["actual"]) is None) is vector["match"]


def test_the_typescript_comparison_follows_the_same_rules() -> None:
    done = subprocess.run([_node(), str(JS / "conformance" / "runner.mjs")], cwd=JS, check=True, timeout=60,
                          input=json.dumps({"vectors": VECTORS}), capture_output=True, text=True)
    assert json.loads(done.stdout) == [v["match"] for v in VECTORS]


def test_every_case_is_well_formed() -> None:
    """Each case names its users and the doc sections it checks; steps use known actions."""
    actions = {"connect", "close", "state", "raw", "send_gift", "accept", "decline", "balance", "ping",
               "next_offer", "next_outcome", "open_wish", "join_room", "leave_room", "quote", "room",
               "redeem_frame", "bind_mentor", "next_room", "admin", "burst", "next_guardian", "guardian_answer"}
    assert len({c["name"] for c in CASES}) == len(CASES)
    for case in CASES:
        assert case["doc"] and case["users"] and case["steps"], case["name"]
        for step in case["steps"]:
            assert step["do"] in actions, (case["name"], step)
