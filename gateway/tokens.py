"""The node's token verifier: which key checks which token (gateway/auth.py says what a
token is).

- ``alg`` HS256: the shared secret (``NOTECARD_TOKEN_SECRET``), if one is configured;
- ``alg`` RS256 or ES256: the JWKS key its ``kid`` names (``NOTECARD_JWKS_URL``), of that
  key's own algorithm, if a JWKS is configured;
- anything else (``none``, HS384, a public key offered as an HMAC secret...) is refused.

The key is chosen by the algorithm before anything is verified, and each key checks only
its own algorithm: an RS256 public key can never serve as an HS256 secret (the classic
algorithm confusion), and a deployment without a shared secret accepts no HS256 token.
"""

from __future__ import annotations

import logging

import jwt
from prometheus_client import Counter

from gateway.auth import (
    ASYMMETRIC_ALGORITHMS,
    ClaimRules,
    Identity,
    TokenError,
    decode_jwt,
    is_jwt,
    verify_legacy_token,
)
from gateway.config import GatewaySettings
from gateway.jwks import JwksCache, JwksUnavailable, source_fetcher
from gateway.logs import ThrottledLog

log = logging.getLogger("notecard.gateway.tokens")


class TokenVerifier:
    def __init__(self, rules: ClaimRules, *, secret: str | None = None, jwks: JwksCache | None = None,
                 legacy: bool = False) -> None:
        self.rules = rules
        self.secret = secret
        self.jwks = jwks
        #: Where the JWKS comes from, for messages.
        self.jwks_source = ""
        #: notecard_tokens_total{format, outcome}, when a node counts.
        self.counter: Counter | None = None
        #: The deprecated format is accepted (it needs the shared secret).
        self.legacy = legacy and secret is not None
        self.legacy_used = ThrottledLog(log, "client token of the deprecated format accepted "
                                             "(NOTECARD_LEGACY_TOKENS); have the login service mint JWTs")

    @classmethod
    def from_settings(cls, settings: GatewaySettings, secret: str | None, counter: Counter | None = None
                      ) -> TokenVerifier:
        jwks = None
        if settings.jwks_url:
            jwks = JwksCache(source_fetcher(settings.jwks_url), max_age_s=settings.jwks_refresh_s,
                             min_refresh_s=settings.jwks_min_refresh_s)
        verifier = cls(settings.claim_rules, secret=secret, jwks=jwks, legacy=settings.legacy_tokens)
        verifier.jwks_source = settings.jwks_url or ""
        verifier.counter = counter
        return verifier

    async def start(self) -> None:
        """Read the JWKS once before serving; a failure is logged, not fatal (the keys are
        read again when a token needs them)."""
        if self.jwks is not None:
            if self.jwks_source.startswith("http://"):
                # Whoever can change the document in transit can sign tokens for anyone.
                log.warning("JWKS fetched over plain HTTP: use https:// outside a trusted network",
                            extra={"jwks": self.jwks_source})
            try:
                await self.jwks.refresh()
            except JwksUnavailable as exc:
                log.error("JWKS unreadable at start; RS256/ES256 tokens wait for it", extra={"cause": str(exc)})

    async def verify(self, token: str) -> Identity:
        """The identity ``token`` carries, or :class:`TokenError`; counted by format
        (``jwt``, ``legacy``: how many clients still hold the deprecated one) and outcome."""
        form = "jwt" if is_jwt(token) else "legacy"
        try:
            identity = await self._verify(token)
        except TokenError as exc:
            if self.counter is not None:
                self.counter.labels(format=form, outcome=exc.rejection.value).inc()
            raise
        if self.counter is not None:
            self.counter.labels(format=form, outcome="accepted").inc()
        return identity

    async def _verify(self, token: str) -> Identity:
        if not is_jwt(token):
            if not self.legacy or self.secret is None:
                raise TokenError("token is not a JWT (the deprecated format is off: NOTECARD_LEGACY_TOKENS)")
            identity = verify_legacy_token(self.secret, token)
            self.legacy_used.log(user=identity.user_id)
            return identity
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("token header is malformed") from None
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.secret is not None:
            return decode_jwt(token, self.secret, "HS256", self.rules)
        if algorithm in ASYMMETRIC_ALGORITHMS and self.jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise TokenError("token has no key id (kid)")
            key = await self.jwks.key(kid, str(algorithm))
            return decode_jwt(token, key.key, str(algorithm), self.rules)
        raise TokenError(f"token algorithm not accepted: {str(algorithm)[:16]!r}")
