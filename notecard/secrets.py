"""Local secrets: the token-signing secret and the admin token, kept in the data folder.

When the operator configures neither (``NOTECARD_TOKEN_SECRET``, ``NOTECARD_ADMIN_TOKEN``),
they are generated once into ``<data_dir>/secrets.json`` (mode 600), so that ``notecard
dev``, ``notecard token`` and ``notecard admin`` agree with no set-up and no secret is
ever hard-coded.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path

import orjson

FILE_NAME = "secrets.json"


@dataclasses.dataclass(frozen=True, slots=True)
class Secrets:
    token_secret: str
    admin_token: str


def load_or_create(data_dir: Path, token_secret: str | None = None, admin_token: str | None = None) -> Secrets:
    """Configured values win; missing ones come from (or are written to) the data folder."""
    path = data_dir / FILE_NAME
    stored: dict[str, str] = {}
    existed = path.exists()
    if existed:
        stored = orjson.loads(path.read_bytes())
    if token_secret and admin_token:
        return Secrets(token_secret, admin_token)
    changed = False
    for key in ("token_secret", "admin_token"):
        if key not in stored:
            stored[key] = secrets.token_urlsafe(32)
            changed = True
    if changed and not _write_first(path, stored, complete=existed):
        # Another process created the file meanwhile (workers starting together): use its
        # values, so that every process of the deployment signs and checks with the same ones.
        return load_or_create(data_dir, token_secret, admin_token)
    return Secrets(token_secret or stored["token_secret"], admin_token or stored["admin_token"])


def _write_first(path: Path, values: dict[str, str], *, complete: bool) -> bool:
    """Write ``values`` to ``path`` (mode 600): replace the file when ``complete`` (it was
    read and lacked a value), else create it only if it is still absent. False when another
    process created it first: then it is left alone.

    A file of our own under a unique name, then a hard link to the final name: the link
    fails if the name exists, so of processes starting at once exactly one creates it (a
    shared temporary name raced: one process renamed it away from under another).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
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
