"""The SDK as a client application gets it: its own wheel, installed into a fresh
virtualenv with pip, pulling only what the SDK needs, importable beside the application's
own ``protocol.py``, typed for the application's mypy, and talking to a real node."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from gateway import GatewayNode
from notecard.admin_client import AdminClient
from tests.gateway_fixtures import ADMIN_TOKEN, befriend_all, token_for

ROOT = Path(__file__).resolve().parent.parent
SDK_PROJECT = ROOT / "packaging" / "notecard-sdk"
PACKAGES = ("protocol", "clearing", "gateway", "notecard", "notecard_sdk", "loadtest", "risk")

USER_PROTOCOL = 'NAME = "the application\'s own protocol module"\n'
USER_APP = '''\
import asyncio
import sys

import protocol  # the application's own module, not ours
from notecard_sdk import Balance, NotecardClient
from notecard_sdk.protocol import ErrorCode


async def main(url: str, token: str) -> None:
    async with NotecardClient(url, token) as client:
        balance: Balance = await client.balance()
        notes: int = balance.available.get("note", 0)
        print(protocol.NAME, "|", notes, balance.units_per_card, ErrorCode.SELF_GIFT.value)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
'''
REVEAL = '''\
from notecard_sdk import NotecardClient

async def f(client: NotecardClient) -> None:
    gift = await client.send_gift("bob")
    reveal_type(gift)
    reveal_type(gift.qty)
    wrong: str = gift.qty
'''


def load_backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notecard_sdk_backend", SDK_PROJECT / "backend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sdk_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    return out / load_backend().build_wheel(str(out))


@pytest.fixture(scope="module")
def sdk_venv(sdk_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A fresh virtualenv with the SDK wheel installed by pip (dependencies from the
    index); returns its python and the distributions pip installed."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    report = venv / "report.json"
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    "--report", str(report), str(sdk_wheel)], check=True, timeout=300)
    installed = [item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]]
    return python, installed


def test_the_wheel_holds_one_top_level_package_and_needs_no_server_dependency(sdk_wheel: Path) -> None:
    with zipfile.ZipFile(sdk_wheel) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"notecard_sdk"}
    assert "notecard_sdk/py.typed" in names and "notecard_sdk/protocol/messages.py" in names
    assert "notecard_sdk/protocol.py" not in names  # the repository's re-export stays home
    # The wire code is the repository's, byte for byte.
    with zipfile.ZipFile(sdk_wheel) as wheel:
        for path in (ROOT / "protocol").glob("*.py"):
            assert wheel.read(f"notecard_sdk/protocol/{path.name}") == path.read_bytes(), path.name
    required = {line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")}
    assert required == {"websockets>=14,<18", "msgpack>=1.0,<2", "orjson>=3.9,<4"}


def test_the_sdk_project_agrees_with_the_server_project() -> None:
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    sdk = tomllib.loads((SDK_PROJECT / "pyproject.toml").read_text())["project"]
    assert sdk["version"] == server["version"]
    for dependency in sdk["dependencies"]:
        assert dependency in server["dependencies"], dependency


def test_every_package_ships_its_type_annotations() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "py.typed").is_file(), package
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["*"]


@pytest.mark.slow
def test_pip_installs_the_sdk_with_its_own_dependencies_only(sdk_venv: tuple[Path, list[str]]) -> None:
    _, installed = sdk_venv
    assert set(installed) == {"notecard-sdk", "websockets", "msgpack", "orjson"}


@pytest.mark.slow
async def test_an_application_with_its_own_protocol_module_uses_the_installed_sdk(
    sdk_venv: tuple[Path, list[str]], node: GatewayNode, tmp_path: Path
) -> None:
    python, _ = sdk_venv
    (tmp_path / "protocol.py").write_text(USER_PROTOCOL)
    (tmp_path / "app.py").write_text(USER_APP)
    async with AdminClient(node.admin_url, ADMIN_TOKEN) as admin:
        await befriend_all(admin, "appuser", "other", cards=2)
    done = await asyncio.to_thread(
        subprocess.run, [str(python), "app.py", node.url, token_for("appuser")], cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the application's own protocol module | 20 10 SELF_GIFT"


@pytest.mark.slow
def test_mypy_sees_the_installed_sdk_typed(sdk_venv: tuple[Path, list[str]], tmp_path: Path) -> None:
    python, _ = sdk_venv
    (tmp_path / "protocol.py").write_text(USER_PROTOCOL)
    (tmp_path / "app.py").write_text(USER_APP)
    (tmp_path / "reveal.py").write_text(REVEAL)
    mypy = [sys.executable, "-m", "mypy", "--python-executable", str(python), "--no-incremental",
            "--cache-dir", str(tmp_path / ".mypy_cache"), "--config-file", "/dev/null"]
    strict = subprocess.run([*mypy, "--strict", "app.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False)
    assert strict.returncode == 0, strict.stdout
    revealed = subprocess.run([*mypy, "reveal.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              check=False)
    out = revealed.stdout
    assert 'Revealed type is "notecard_sdk.protocol.messages.Gift"' in out, out
    assert re.search(r'reveal.py:6: note: Revealed type is "(builtins\.)?int"', out), out
    assert 'Incompatible types in assignment (expression has type "int", variable has type "str")' in out, out
