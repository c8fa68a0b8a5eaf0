"""Signed client tokens: ``base64url(json payload) "." base64url(HMAC-SHA256)``.

The payload names the user (``sub``), an expiry in unix seconds (``exp``) and the linked
app the connection comes from (``app``). Tokens are minted by the platform's login service
in production and by ``notecard token USER`` in development; the gateway only verifies.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
import time

import orjson

from clearing.keys import APP_PATTERN

DEFAULT_TTL_S = 24 * 3600
#: Shortest signing secret or admin token accepted: 256 bits, the size of HMAC-SHA256's
#: output, so that guessing the secret is no easier than forging a signature.
MIN_SECRET_BYTES = 32
_USER_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_APP_RE = re.compile(APP_PATTERN)


class TokenError(Exception):
    """The token is unusable. ``expired`` tells an old-but-genuine token from a forged one."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    app: str
    expires_at: int


def check_secret(secret: str, variable: str) -> None:
    """Refuse a secret too short to resist guessing; the message names its setting."""
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        raise ValueError(f"{variable} must be at least {MIN_SECRET_BYTES} bytes (got {size}); "
                         "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


def mint_token(secret: str, user_id: str, *, ttl_s: int = DEFAULT_TTL_S, app: str = "main",
               now: float | None = None) -> str:
    """A token for ``user_id`` valid for ``ttl_s`` seconds."""
    if not _USER_RE.fullmatch(user_id):
        raise ValueError("user id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    if not _APP_RE.fullmatch(app):
        raise ValueError("app must be 1-32 characters of a-z 0-9 _")
    issued = time.time() if now is None else now
    body = _b64(orjson.dumps({"sub": user_id, "exp": int(issued) + ttl_s, "app": app}))
    return f"{body}.{_sign(secret, body)}"


def verify_token(secret: str, token: str, *, now: float | None = None) -> Identity:
    """The identity a token carries, or :class:`TokenError`."""
    body, sep, signature = token.partition(".")
    if not sep or not hmac.compare_digest(_sign(secret, body), signature):
        raise TokenError("token signature is invalid")
    try:
        payload = orjson.loads(_unb64(body))
    except (binascii.Error, ValueError):
        raise TokenError("token payload is malformed") from None
    if not isinstance(payload, dict):
        raise TokenError("token payload is malformed")
    user, exp, app = payload.get("sub"), payload.get("exp"), payload.get("app", "main")
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        raise TokenError("token has no valid subject")
    if type(exp) is not int:
        raise TokenError("token has no valid expiry")
    if not isinstance(app, str) or not _APP_RE.fullmatch(app):
        raise TokenError("token has no valid app")
    if exp <= (time.time() if now is None else now):
        raise TokenError("token has expired", expired=True)
    return Identity(user_id=user, app=app, expires_at=exp)
