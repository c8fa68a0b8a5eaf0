"""The login service's public keys (a JWKS, RFC 7517), cached, for RS256 / ES256 tokens.

The source is ``NOTECARD_JWKS_URL``: an ``https://`` (or ``http://``) URL, or a file (a
path, or ``file://``; a mounted Kubernetes Secret, say). Keys are kept by ``kid``:

- read at start and again every ``NOTECARD_JWKS_REFRESH_S`` when a token needs them;
- a token naming a ``kid`` not in the cache triggers a refresh (the login service rotated
  its keys), but at most once per ``NOTECARD_JWKS_MIN_REFRESH_S``, and concurrent callers
  share one fetch: a flood of made-up ``kid`` values costs the identity provider one
  request per period, not one per connection;
- a document is bounded (``MAX_DOCUMENT_BYTES``, ``MAX_KEYS``) and read with a timeout;
- when a refresh fails, the keys already known stay in use (a brief outage of the login
  service does not lock every client out); a ``kid`` never seen cannot be checked then,
  and the token is refused as UNAVAILABLE (the client retries), not as forged.

A key without ``kid``, of another use than ``sig``, or of a type the gateway does not
verify (only RSA for RS256, EC P-256 for ES256) is skipped and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from gateway.auth import Rejection, TokenError

log = logging.getLogger("notecard.gateway.jwks")

#: A JWKS larger than this is refused (a real one holds a handful of keys, a few KiB).
MAX_DOCUMENT_BYTES = 256 * 1024
#: Keys kept from one document; more are ignored (and logged).
MAX_KEYS = 32
#: Fetching the document takes at most this long.
FETCH_TIMEOUT_S = 5.0
#: The key type and curve each accepted algorithm needs (no RSA key may check an EC
#: signature and the other way round, and HS256 never uses a JWKS key).
_KEY_TYPES = {"RS256": ("RSA", None), "ES256": ("EC", "P-256")}

Fetch = Callable[[], Awaitable[bytes]]


class JwksUnavailable(Exception):
    """The document could not be read or parsed."""


def source_fetcher(source: str) -> Fetch:
    """Read the document at ``source``: a URL (http, https) or a file (path or file://)."""
    scheme = urlsplit(source).scheme
    if scheme in ("http", "https"):
        return lambda: _fetch_url(source)
    path = Path(urlsplit(source).path if scheme == "file" else source)
    return lambda: _read_file(path)


async def _fetch_url(url: str) -> bytes:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status != 200:
                raise JwksUnavailable(f"GET {url}: HTTP {resp.status}")
            body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise JwksUnavailable(f"GET {url}: {type(exc).__name__}: {exc}") from None
    return body


async def _read_file(path: Path) -> bytes:
    def read() -> bytes:
        with path.open("rb") as fh:
            return fh.read(MAX_DOCUMENT_BYTES + 1)

    try:
        return await asyncio.to_thread(read)
    except OSError as exc:
        raise JwksUnavailable(f"{path}: {exc.strerror or exc}") from None


def parse_jwks(document: bytes) -> dict[str, PyJWK]:
    """The usable signing keys of a JWKS document, by ``kid``."""
    if len(document) > MAX_DOCUMENT_BYTES:
        raise JwksUnavailable(f"JWKS larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        data = orjson.loads(document)
    except orjson.JSONDecodeError:
        raise JwksUnavailable("JWKS is not JSON") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise JwksUnavailable("JWKS has no 'keys' list")
    keys: dict[str, PyJWK] = {}
    for entry in entries:
        if len(keys) >= MAX_KEYS:
            log.warning("JWKS has more keys than are kept; the rest are ignored", extra={"kept": MAX_KEYS})
            break
        key = _usable(entry)
        if key is not None:
            keys[entry["kid"]] = key
    return keys


def _usable(entry: Any) -> PyJWK | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or not entry["kid"]:
        log.warning("JWKS key without a kid skipped")
        return None
    kid = entry["kid"]
    if entry.get("use", "sig") != "sig":
        return None
    algorithm = entry.get("alg") or {"RSA": "RS256", "EC": "ES256"}.get(str(entry.get("kty")))
    if algorithm not in _KEY_TYPES:
        log.warning("JWKS key of an algorithm the gateway does not accept skipped",
                    extra={"kid": kid, "alg": algorithm})
        return None
    kty, crv = _KEY_TYPES[algorithm]
    if entry.get("kty") != kty or (crv is not None and entry.get("crv") != crv):
        log.warning("JWKS key whose type does not match its algorithm skipped", extra={"kid": kid})
        return None
    try:
        key = PyJWK(entry, algorithm)
    except (PyJWKError, ValueError, TypeError):
        log.warning("JWKS key that does not parse skipped", extra={"kid": kid})
        return None
    too_weak = getattr(key.Algorithm, "check_key_length", lambda _: None)(key.key)
    if too_weak:
        # An RSA key under 2048 bits can be factored by a determined attacker.
        log.warning("JWKS key too weak skipped", extra={"kid": kid, "cause": too_weak})
        return None
    return key


class JwksCache:
    def __init__(self, fetch: Fetch, *, max_age_s: float = 300.0, min_refresh_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self.max_age_s = max_age_s
        self.min_refresh_s = min_refresh_s
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._loaded_at: float | None = None
        self._tried_at: float | None = None
        self._refreshing: asyncio.Task[None] | None = None
        #: The last read failed: an unknown kid may be a new key we could not fetch.
        self._failing = False
        #: Documents fetched (or attempted): what the bound on refreshes is measured by.
        self.fetches = 0

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def key(self, kid: str, algorithm: str) -> PyJWK:
        """The key ``kid`` for ``algorithm``, or :class:`TokenError` (INVALID: no such key
        after a refresh, or a key of another algorithm; UNAVAILABLE: could not look)."""
        now = self._clock()
        stale = self._loaded_at is None or now - self._loaded_at >= self.max_age_s
        unknown = kid not in self._keys
        may_retry = self._tried_at is None or now - self._tried_at >= self.min_refresh_s
        failure: JwksUnavailable | None = None
        if (stale or unknown) and may_retry:
            try:
                await self.refresh()
            except JwksUnavailable as exc:
                failure = exc
        key = self._keys.get(kid)
        if key is None:
            if failure is not None or self._failing or self._loaded_at is None:
                raise TokenError("signing keys unavailable", rejection=Rejection.UNAVAILABLE)
            raise TokenError("token signed with an unknown key (kid)")
        if key.algorithm_name != algorithm:
            raise TokenError("token algorithm does not match its key")
        return key

    async def refresh(self) -> None:
        """Read the document again (callers at the same time share one read)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._load())
            # Its failure is logged in _load; callers cancelled meanwhile must not leave it
            # "never retrieved".
            self._refreshing.add_done_callback(lambda task: task.cancelled() or task.exception())
        await asyncio.shield(self._refreshing)

    async def _load(self) -> None:
        self._tried_at = self._clock()
        self.fetches += 1
        try:
            keys = parse_jwks(await self._fetch())
        except JwksUnavailable as exc:
            self._failing = True
            log.warning("JWKS refresh failed; keeping the keys known", extra={"cause": str(exc),
                                                                               "keys": len(self._keys)})
            raise
        if set(keys) != set(self._keys):
            log.info("JWKS keys changed", extra={"kids": sorted(keys)})
        self._keys = keys
        self._failing = False
        self._loaded_at = self._clock()
