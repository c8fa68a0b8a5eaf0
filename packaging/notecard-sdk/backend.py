"""A PEP 517 build backend for the SDK's own distribution (``notecard-sdk``).

The wheel holds one top-level package, ``notecard_sdk``: the SDK's modules from the
repository's ``notecard_sdk/`` and, as the subpackage ``notecard_sdk.protocol``, the files
of the repository's ``protocol/`` package, unchanged (its modules import each other
relatively). In the repository ``notecard_sdk/protocol.py`` re-exports the top-level
``protocol`` package instead, so the gateway and the SDK share one set of classes there;
the wheel leaves that module out. No file is rewritten, so the wheel runs the code the
tests run.

An sdist carries the staged tree (``notecard_sdk/`` with its ``protocol/``) beside this
file, and a wheel built from it takes the tree from there.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The repository, when building from it (packaging/notecard-sdk/ is two levels down).
REPO = HERE.parent.parent
#: A fixed timestamp in archives: the same sources give the same wheel.
EPOCH = (2020, 1, 1, 0, 0, 0)


def _project() -> dict[str, object]:
    table: dict[str, object] = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
    return table


def _sources() -> Iterator[tuple[str, Path]]:
    """(path in the wheel, file) for every file the package holds."""
    staged = HERE / "notecard_sdk"
    if staged.is_dir():  # an unpacked sdist
        for path in sorted(staged.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                yield path.relative_to(HERE).as_posix(), path
        return
    for path in sorted((REPO / "notecard_sdk").iterdir()):
        if path.name == "protocol.py" or not (path.suffix == ".py" or path.name == "py.typed"):
            continue  # protocol.py: the repository's re-export of the top-level package
        yield f"notecard_sdk/{path.name}", path
    for path in sorted((REPO / "protocol").iterdir()):
        if path.suffix == ".py" or path.name == "py.typed":
            yield f"notecard_sdk/protocol/{path.name}", path


def _metadata() -> str:
    project = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project['description']}",
        f"Requires-Python: {project['requires-python']}",
    ]
    lines += [f"Requires-Dist: {dep}" for dep in project["dependencies"]]  # type: ignore[attr-defined]
    return "\n".join(lines) + "\n"


def _dist_name() -> str:
    project = _project()
    return f"{str(project['name']).replace('-', '_')}-{project['version']}"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings: object = None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings: object = None) -> list[str]:
    return []


def build_wheel(wheel_directory: str, config_settings: object = None, metadata_directory: object = None) -> str:
    name = f"{_dist_name()}-py3-none-any.whl"
    info = f"{_dist_name()}.dist-info"
    files = [(arcname, path.read_bytes()) for arcname, path in _sources()]
    files += [
        (f"{info}/METADATA", _metadata().encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: notecard-sdk backend\nRoot-Is-Purelib: true\n"
                          b"Tag: py3-none-any\n"),
        (f"{info}/top_level.txt", b"notecard_sdk\n"),
    ]
    record = [_record_line(arcname, data) for arcname, data in files] + [f"{info}/RECORD,,"]
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as wheel:
        for arcname, data in files:
            entry = zipfile.ZipInfo(arcname, EPOCH)
            entry.external_attr = 0o644 << 16
            wheel.writestr(entry, data, zipfile.ZIP_DEFLATED)
    return name


def build_sdist(sdist_directory: str, config_settings: object = None) -> str:
    base = _dist_name()
    name = f"{base}.tar.gz"
    members = [("pyproject.toml", HERE / "pyproject.toml"), ("backend.py", HERE / "backend.py")]
    members += list(_sources())
    pkg_info = _metadata().encode()
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as sdist:
        for arcname, path in members:
            _add(sdist, f"{base}/{arcname}", path.read_bytes())
        _add(sdist, f"{base}/PKG-INFO", pkg_info)
    return name


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    entry = tarfile.TarInfo(name)
    entry.size, entry.mode, entry.mtime = len(data), 0o644, 1577836800
    archive.addfile(entry, io.BytesIO(data))
