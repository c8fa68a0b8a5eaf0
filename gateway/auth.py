"""Client tokens: JWTs (RFC 7519), and the deprecated home-made format.

A client token is a JWT signed by the platform's login service: HS256 with a secret the
gateway shares (``NOTECARD_TOKEN_SECRET``), or RS256 / ES256 with a private key only the
login service holds, verified against its public keys (a JWKS, ``NOTECARD_JWKS_URL``;
gateway/jwks.py). The claims: ``sub`` (the user), ``exp`` (required), ``nbf`` and ``iat``
(optional), ``aud`` (must name ``NOTECARD_JWT_AUDIENCE``), ``iss`` (must equal
``NOTECARD_JWT_ISSUER`` when that is set) and the linked app (``app``, or the claim
``NOTECARD_JWT_APP_CLAIM`` names; ``main`` when absent). ``notecard token USER`` mints an
HS256 token for development; :func:`mint_token` does the same for tests and tools.

The earlier format, ``base64url(json {sub, exp, app}) "." base64url(HMAC-SHA256)``, is
still accepted while ``NOTECARD_LEGACY_TOKENS`` is on (the default during its deprecation
period): it has two parts where a JWT has three, so the two never read as each other.

This module is pure (no I/O): the verifier that fetches keys is gateway/tokens.py.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import hmac
import re
import time
from typing import Any

import jwt
import orjson

from clearing.keys import APP_PATTERN

DEFAULT_TTL_S = 24 * 3600
#: Shortest signing secret or admin token accepted: 256 bits, the size of HMAC-SHA256's
#: output, so that guessing the secret is no easier than forging a signature.
MIN_SECRET_BYTES = 32
#: The audience a token must name unless NOTECARD_JWT_AUDIENCE says otherwise.
DEFAULT_AUDIENCE = "notecard"
#: Algorithms a token may be signed with; anything else (``none`` first) is refused.
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
USER_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_APP_RE = re.compile(APP_PATTERN)


class Rejection(enum.Enum):
    """Why a token is refused; each maps to one close code (gateway/session.py)."""

    #: Forged, malformed, of another audience or issuer, not yet valid, of an unknown key:
    #: INVALID_TOKEN (3500).
    INVALID = "invalid"
    #: Genuine but past its ``exp`` (plus the leeway): TOKEN_EXPIRED (3501).
    EXPIRED = "expired"
    #: The keys to check it could not be fetched (the JWKS URL is down): SERVICE_UNAVAILABLE
    #: (3004), the client retries; not the client's fault.
    UNAVAILABLE = "unavailable"


class TokenError(Exception):
    """The token is unusable; ``rejection`` says why (and so the close code)."""

    def __init__(self, message: str, *, expired: bool = False, rejection: Rejection | None = None) -> None:
        super().__init__(message)
        self.rejection = rejection or (Rejection.EXPIRED if expired else Rejection.INVALID)

    @property
    def expired(self) -> bool:
        return self.rejection is Rejection.EXPIRED


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    app: str
    expires_at: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimRules:
    """What a JWT's claims must say (NOTECARD_JWT_*)."""

    audience: str = DEFAULT_AUDIENCE
    issuer: str | None = None
    leeway_s: float = 30.0
    app_claim: str = "app"


def check_secret(secret: str, variable: str) -> None:
    """Refuse a secret too short to resist guessing; the message names its setting."""
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        raise ValueError(f"{variable} must be at least {MIN_SECRET_BYTES} bytes (got {size}); "
                         "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")


def _check_ids(user_id: str, app: str) -> None:
    if not USER_RE.fullmatch(user_id):
        raise ValueError("user id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    if not _APP_RE.fullmatch(app):
        raise ValueError("app must be 1-32 characters of a-z 0-9 _")


def mint_token(secret: str, user_id: str, *, ttl_s: int = DEFAULT_TTL_S, app: str = "main",
               now: float | None = None, audience: str = DEFAULT_AUDIENCE, issuer: str | None = None) -> str:
    """An HS256 JWT for ``user_id`` valid for ``ttl_s`` seconds (development and tests: in
    production the login service mints tokens, the gateway only verifies them)."""
    _check_ids(user_id, app)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": user_id, "aud": audience, "iat": issued, "exp": issued + ttl_s, "app": app}
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def claims_identity(claims: dict[str, Any], rules: ClaimRules) -> Identity:
    """The identity of a verified JWT's claims (signature, ``exp``, ``nbf``, ``aud``,
    ``iss`` already checked), or :class:`TokenError`."""
    user, exp, app = claims.get("sub"), claims.get("exp"), claims.get(rules.app_claim, "main")
    if not isinstance(user, str) or not USER_RE.fullmatch(user):
        raise TokenError("token has no valid subject")
    if type(exp) is not int:
        raise TokenError("token has no valid expiry")
    if not isinstance(app, str) or not _APP_RE.fullmatch(app):
        raise TokenError("token has no valid app")
    return Identity(user_id=user, app=app, expires_at=exp)


def decode_jwt(token: str, key: Any, algorithm: str, rules: ClaimRules) -> Identity:
    """Check a JWT's signature with ``key`` for exactly ``algorithm``, then its claims."""
    required = ["exp", "sub", "aud"] + (["iss"] if rules.issuer is not None else [])
    try:
        claims = jwt.decode(token, key, algorithms=[algorithm], audience=rules.audience, issuer=rules.issuer,
                            leeway=rules.leeway_s, options={"require": required})
    except jwt.ExpiredSignatureError:
        raise TokenError("token has expired", rejection=Rejection.EXPIRED) from None
    except jwt.ImmatureSignatureError:
        raise TokenError("token is not valid yet (nbf)") from None
    except jwt.InvalidAudienceError:
        raise TokenError("token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise TokenError("token is from another issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token lacks the claim {exc.claim}") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid") from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        # Malformed parts, a key of the wrong type for the algorithm: never a stack trace.
        raise TokenError("token is malformed") from None
    return claims_identity(claims, rules)


def is_jwt(token: str) -> bool:
    """Three dot-separated parts: a JWT (JWS compact form); two: the legacy format."""
    return token.count(".") == 2


# ------------------------------------------------------------------ the legacy format
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


def mint_legacy_token(secret: str, user_id: str, *, ttl_s: int = DEFAULT_TTL_S, app: str = "main",
                      now: float | None = None) -> str:
    """A token of the deprecated format (for tests of the deprecation period)."""
    _check_ids(user_id, app)
    issued = time.time() if now is None else now
    body = _b64(orjson.dumps({"sub": user_id, "exp": int(issued) + ttl_s, "app": app}))
    return f"{body}.{_sign(secret, body)}"


def verify_legacy_token(secret: str, token: str, *, now: float | None = None) -> Identity:
    """The identity a token of the deprecated format carries, or :class:`TokenError`."""
    body, sep, signature = token.partition(".")
    if not sep or not hmac.compare_digest(_sign(secret, body), signature):
        raise TokenError("token signature is invalid")
    try:
        payload = orjson.loads(_unb64(body))
    except (binascii.Error, ValueError):
        raise TokenError("token payload is malformed") from None
    if not isinstance(payload, dict):
        raise TokenError("token payload is malformed")
    identity = claims_identity(payload, ClaimRules())
    if identity.expires_at <= (time.time() if now is None else now):
        raise TokenError("token has expired", rejection=Rejection.EXPIRED)
    return identity


def verify_token(secret: str, token: str, *, now: float | None = None, rules: ClaimRules | None = None,
                 legacy: bool = True) -> Identity:
    """A token checked against a shared secret alone: an HS256 JWT (against the real clock),
    or (``legacy``) the deprecated format (at ``now``). A node verifies with
    gateway/tokens.py, which also knows JWKS keys."""
    if is_jwt(token):
        return decode_jwt(token, secret, "HS256", rules or ClaimRules())
    if not legacy:
        raise TokenError("token of the retired format (NOTECARD_LEGACY_TOKENS is off)")
    return verify_legacy_token(secret, token, now=now)
