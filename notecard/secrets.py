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
    if path.exists():
        stored = orjson.loads(path.read_bytes())
    if token_secret and admin_token:
        return Secrets(token_secret, admin_token)
    changed = False
    for key in ("token_secret", "admin_token"):
        if key not in stored:
            stored[key] = secrets.token_urlsafe(32)
            changed = True
    if changed:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(stored))
        tmp.replace(path)
    return Secrets(token_secret or stored["token_secret"], admin_token or stored["admin_token"])
