"""Local secrets: the token-signing secret, the admin token and the managed Redis's
password, kept in the data folder.

When the operator configures neither (``NOTECARD_TOKEN_SECRET``, ``NOTECARD_ADMIN_TOKEN``),
they are generated once into ``<data_dir>/secrets.json`` (mode 600), so that ``notecard
dev``, ``notecard token`` and ``notecard admin`` agree with no set-up and no secret is
ever hard-coded. The managed local ``redis-server`` gets a generated password from the
same file. The data folder itself is created mode 700: it holds these secrets and Redis's
data, whatever the umask.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import orjson

FILE_NAME = "secrets.json"
#: Owner only: the folder holds the secrets and the managed Redis's data files.
DATA_DIR_MODE = 0o700
#: Bytes of randomness in a generated value (43 URL-safe characters).
GENERATED_BYTES = 32


@dataclasses.dataclass(frozen=True, slots=True)
class Secrets:
    token_secret: str
    admin_token: str


def ensure_data_dir(data_dir: Path) -> Path:
    """Create ``data_dir`` (and missing parents) readable by its owner only.

    ``mkdir`` applies the umask to the mode it is given, and 700 has no bit a umask could
    add: the folder comes out 700 under 022 as under 077. A folder that already exists is
    left as the operator made it (a mounted volume, say).
    """
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(mode=DATA_DIR_MODE, exist_ok=True)
    return data_dir


def load_or_create(data_dir: Path, token_secret: str | None = None, admin_token: str | None = None) -> Secrets:
    """Configured values win; missing ones come from (or are written to) the data folder."""
    if token_secret and admin_token:
        return Secrets(token_secret, admin_token)
    stored = _load_or_create(data_dir, ("token_secret", "admin_token"))
    return Secrets(token_secret or stored["token_secret"], admin_token or stored["admin_token"])


def redis_password(data_dir: Path) -> str:
    """The managed local Redis's password (``requirepass``), generated on first use."""
    return _load_or_create(data_dir, ("redis_password",))["redis_password"]


def _load_or_create(data_dir: Path, names: Iterable[str]) -> dict[str, str]:
    path = data_dir / FILE_NAME
    stored: dict[str, str] = {}
    existed = path.exists()
    if existed:
        stored = orjson.loads(path.read_bytes())
    missing = [name for name in names if name not in stored]
    if not missing:
        return stored
    for name in missing:
        stored[name] = secrets.token_urlsafe(GENERATED_BYTES)
    if not _write_first(path, stored, complete=existed):
        # Another process created the file meanwhile (workers starting together): use its
        # values, so that every process of the deployment signs and checks with the same ones.
        return _load_or_create(data_dir, names)
    return stored


def _write_first(path: Path, values: dict[str, str], *, complete: bool) -> bool:
    """Write ``values`` to ``path`` (mode 600): replace the file when ``complete`` (it was
    read and lacked a value), else create it only if it is still absent. False when another
    process created it first: then it is left alone.

    A file of our own under a unique name, then a hard link to the final name: the link
    fails if the name exists, so of processes starting at once exactly one creates it (a
    shared temporary name raced: one process renamed it away from under another).
    """
    ensure_data_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(values))
        if complete:
            tmp.replace(path)  # completing an existing file that lacked a value
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)
