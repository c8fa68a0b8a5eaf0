"""Client tokens end to end: JWTs of each accepted algorithm reach ``welcome``; every kind of
bad token is refused at ``hello`` with the code docs/protocol.md section 13 gives it, on a
real node over a real WebSocket. The JWKS comes from a file or from a real HTTP server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway import GatewayNode, GatewaySettings, close_store, connect_store
from gateway.auth import Rejection, TokenError, mint_legacy_token, mint_token
from gateway.jwks import JwksCache, JwksUnavailable, parse_jwks
from protocol import CloseCode, Encoding
from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET, store_settings

ISSUER = "https://login.example.com"
AUDIENCE = "notecard"
JSON = [Encoding.JSON.subprotocol]

Keys = dict[str, Any]
NodeWith = Callable[..., Awaitable[GatewayNode]]


@pytest.fixture(scope="module")
def keys() -> Keys:
    """The login service's private keys (never given to a node)."""
    return {
        "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa-2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec-1": ec.generate_private_key(ec.SECP256R1()),
    }


def public_jwk(kid: str, private: Any) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
        return jwk | {"kid": kid, "alg": "RS256", "use": "sig"}
    jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return jwk | {"kid": kid, "alg": "ES256", "use": "sig"}


def jwks_document(keys: Keys, *kids: str) -> bytes:
    return orjson.dumps({"keys": [public_jwk(kid, keys[kid]) for kid in kids]})


def claims(user: str = "alice", **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": user, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 600,
                            "app": "main"}
    return {k: v for k, v in (base | changes).items() if v is not None}


def signed(keys: Keys, kid: str, **changes: Any) -> str:
    algorithm = "RS256" if kid.startswith("rsa") else "ES256"
    return jwt.encode(claims(**changes), keys[kid], algorithm=algorithm, headers={"kid": kid})


def hs256(secret: str = TOKEN_SECRET, **changes: Any) -> str:
    return jwt.encode(claims(**changes), secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand: what an attacker can send that PyJWT would refuse to make."""
    body = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}"
    signature = b64(hmac.new(key, body.encode(), hashlib.sha256).digest()) if key is not None else ""
    return f"{body}.{signature}"


@pytest.fixture
async def node_with(request: pytest.FixtureRequest, topology_kind: str, tmp_path: Path) -> AsyncIterator[NodeWith]:
    """Start a node with the given token settings (``token_secret=None``: JWKS alone)."""
    started: list[tuple[GatewayNode, Any]] = []
    where = store_settings(request, topology_kind)

    async def make(*, token_secret: str | None = TOKEN_SECRET, **overrides: Any) -> GatewayNode:
        settings = GatewaySettings(**{**where, "port": 0, "admin_port": 0, "data_dir": tmp_path / "data",
                                      "log_format": "text", "shutdown_grace_s": 2.0, "jwt_issuer": ISSUER,
                                      **overrides})
        store = await connect_store(settings)
        node = GatewayNode(settings, store, token_secret=token_secret, admin_token=ADMIN_TOKEN)
        await node.start()
        started.append((node, store))
        return node

    yield make
    for node, store in started:
        await node.stop()
        await close_store(store)


@pytest.fixture
def jwks_file(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks_document(keys, "rsa-1", "ec-1"))
    return path


async def outcome(node: GatewayNode, token: str) -> tuple[str, int | None]:
    """What the server does with a ``hello`` carrying ``token``: ``welcome`` (the user
    named), or the error code it sends and the close code that follows."""
    async with connect(node.url, subprotocols=JSON) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"t": "hello", "v": 1, "token": token}).decode())
        first = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if first["t"] == "welcome":
            return f"welcome {first['user']}", None
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return str(first["code"]), ws.close_code


WELCOME_ALICE = ("welcome alice", None)
INVALID = ("INVALID_TOKEN", CloseCode.INVALID_TOKEN)
EXPIRED = ("TOKEN_EXPIRED", CloseCode.TOKEN_EXPIRED)


async def test_good_tokens_of_each_algorithm_are_welcome(node_with: NodeWith, jwks_file: Path, keys: Keys) -> None:
    node = await node_with(jwks_url=str(jwks_file))
    assert await outcome(node, hs256()) == WELCOME_ALICE
    assert await outcome(node, signed(keys, "rsa-1")) == WELCOME_ALICE
    assert await outcome(node, signed(keys, "ec-1")) == WELCOME_ALICE
    # The app claim names the linked app; the user is the subject.
    assert await outcome(node, signed(keys, "ec-1", user="bob", app="toutiao")) == ("welcome bob", None)


@dataclasses.dataclass(frozen=True)
class FromNow:
    """A claim's time, this many seconds from when the test runs."""
    seconds: int


@pytest.mark.parametrize(("name", "changes", "expected"), [
    ("expired past the leeway", {"exp": FromNow(-120)}, EXPIRED),
    ("not yet valid", {"nbf": FromNow(600)}, INVALID),
    ("another audience", {"aud": "another-service"}, INVALID),
    ("no audience", {"aud": None}, INVALID),
    ("another issuer", {"iss": "https://evil.example.com"}, INVALID),
    ("no issuer", {"iss": None}, INVALID),
    ("no expiry", {"exp": None}, INVALID),
    ("a subject that is no user id", {"user": "alice bob"}, INVALID),
    ("an app that is no app", {"app": "Main App"}, INVALID),
])
async def test_bad_claims_are_refused_with_their_code(node_with: NodeWith, jwks_file: Path, keys: Keys, name: str,
                                                      changes: dict[str, Any], expected: tuple[str, int]) -> None:
    node = await node_with(jwks_url=str(jwks_file))
    # Times are taken now, not when pytest collected the cases (which can be minutes before).
    claims = {k: int(time.time()) + v.seconds if isinstance(v, FromNow) else v for k, v in changes.items()}
    assert await outcome(node, signed(keys, "rsa-1", **claims)) == expected, name
    assert await outcome(node, hs256(**claims)) == expected, name


async def test_the_leeway_absorbs_clock_skew_both_ways(node_with: NodeWith, jwks_file: Path, keys: Keys) -> None:
    node = await node_with(jwks_url=str(jwks_file), jwt_leeway_s=30)
    now = int(time.time())
    assert await outcome(node, signed(keys, "ec-1", exp=now - 5)) == WELCOME_ALICE
    assert await outcome(node, signed(keys, "ec-1", nbf=now + 5)) == WELCOME_ALICE
    assert await outcome(node, signed(keys, "ec-1", exp=now - 90)) == EXPIRED


async def test_forged_tokens_are_invalid(node_with: NodeWith, jwks_file: Path, keys: Keys) -> None:
    node = await node_with(jwks_url=str(jwks_file))
    good = signed(keys, "rsa-1")
    header, _, signature = good.split(".")
    # Tampered: another subject under the original signature.
    tampered = claims(user="mallory")
    assert await outcome(node, f"{header}.{b64(orjson.dumps(tampered))}.{signature}") == INVALID
    # alg none, with or without a kid, and no signature.
    assert await outcome(node, hand_signed({"alg": "none", "typ": "JWT"}, claims(), None)) == INVALID
    assert await outcome(node, hand_signed({"alg": "none", "kid": "rsa-1"}, claims(), None)) == INVALID
    # HS/RS confusion: HS256 "signed" with the RSA public key (which anyone can read in
    # the JWKS) as the HMAC secret, naming that key.
    public_pem = keys["rsa-1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    assert await outcome(node, hand_signed({"alg": "HS256", "kid": "rsa-1"}, claims(), public_pem)) == INVALID
    # An RS256 token naming the EC key, and an ES256 token naming an RSA key.
    assert await outcome(node, jwt.encode(claims(), keys["rsa-1"], algorithm="RS256",
                                          headers={"kid": "ec-1"})) == INVALID
    assert await outcome(node, jwt.encode(claims(), keys["ec-1"], algorithm="ES256",
                                          headers={"kid": "rsa-1"})) == INVALID
    # Signed by a key the login service does not publish; an HS256 token with another secret.
    assert await outcome(node, signed(keys, "rsa-2")) == INVALID
    assert await outcome(node, hs256("another-secret-" + "x" * 32)) == INVALID
    # Another algorithm, a token with no kid, garbage in JWT form.
    assert await outcome(node, jwt.encode(claims(), TOKEN_SECRET * 2, algorithm="HS384")) == INVALID
    assert await outcome(node, jwt.encode(claims(), keys["rsa-1"], algorithm="RS256")) == INVALID
    assert await outcome(node, "abc.def.ghi") == INVALID
    assert await outcome(node, good) == WELCOME_ALICE  # and the node still serves


async def test_a_node_with_a_jwks_alone_accepts_no_hs256_token(node_with: NodeWith, jwks_file: Path,
                                                                keys: Keys, tmp_path: Path) -> None:
    node = await node_with(token_secret=None, jwks_url=str(jwks_file))
    assert await outcome(node, signed(keys, "rsa-1")) == WELCOME_ALICE
    assert await outcome(node, hs256()) == INVALID
    assert await outcome(node, mint_legacy_token(TOKEN_SECRET, "alice")) == INVALID
    assert not (tmp_path / "data").exists()  # and no secret was generated for it


async def test_a_rotated_key_is_fetched_on_its_first_token(node_with: NodeWith, jwks_file: Path, keys: Keys) -> None:
    node = await node_with(jwks_url=str(jwks_file), jwks_min_refresh_s=0)
    assert await outcome(node, signed(keys, "rsa-2")) == INVALID  # not published (yet): unknown kid
    # The login service publishes its next key beside the current one, then signs with it.
    await asyncio.to_thread(jwks_file.write_bytes, jwks_document(keys, "rsa-1", "rsa-2", "ec-1"))
    assert await outcome(node, signed(keys, "rsa-2")) == WELCOME_ALICE
    assert await outcome(node, signed(keys, "rsa-1")) == WELCOME_ALICE


async def test_a_key_withdrawn_from_the_jwks_stops_working_once_the_jwks_is_read_again(
        node_with: NodeWith, jwks_file: Path, keys: Keys) -> None:
    """Revoking a leaked key: the login service removes it; nodes drop it at their next read
    (here every check reads, NOTECARD_JWKS_REFRESH_S being tiny)."""
    node = await node_with(jwks_url=str(jwks_file), jwks_refresh_s=0.001, jwks_min_refresh_s=0)
    assert await outcome(node, signed(keys, "rsa-1")) == WELCOME_ALICE
    await asyncio.to_thread(jwks_file.write_bytes, jwks_document(keys, "ec-1"))
    assert await outcome(node, signed(keys, "rsa-1")) == INVALID
    assert await outcome(node, signed(keys, "ec-1")) == WELCOME_ALICE


async def test_the_jwks_comes_from_a_url_and_an_unreachable_one_is_unavailable_not_invalid(
        node_with: NodeWith, keys: Keys) -> None:
    served = {"count": 0, "document": jwks_document(keys, "ec-1")}

    async def jwks(request: web.Request) -> web.Response:
        served["count"] += 1
        return web.Response(body=served["document"], content_type="application/json")

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        node = await node_with(jwks_url=f"http://127.0.0.1:{port}/.well-known/jwks.json", jwks_min_refresh_s=60)
        assert await outcome(node, signed(keys, "ec-1")) == WELCOME_ALICE
        # A flood of unknown kids costs the login service one request per period.
        before = served["count"]
        for _ in range(5):
            assert await outcome(node, signed(keys, "rsa-2")) == INVALID
        assert served["count"] - before <= 1
    finally:
        await runner.cleanup()
    # The login service is down: known keys keep working, an unseen kid cannot be checked
    # and the client is told to retry (3004), not that its token is forged.
    assert await outcome(node, signed(keys, "ec-1")) == WELCOME_ALICE
    down = await node_with(jwks_url=f"http://127.0.0.1:{port}/.well-known/jwks.json")
    assert await outcome(down, signed(keys, "ec-1")) == ("UNAVAILABLE", CloseCode.SERVICE_UNAVAILABLE)
    assert await outcome(down, hs256()) == WELCOME_ALICE


async def test_the_deprecated_format_works_behind_its_setting_and_is_counted(node_with: NodeWith) -> None:
    legacy = mint_legacy_token(TOKEN_SECRET, "alice")
    node = await node_with()
    assert await outcome(node, legacy) == WELCOME_ALICE
    assert await outcome(node, mint_legacy_token(TOKEN_SECRET, "alice", ttl_s=-1)) == EXPIRED
    assert await outcome(node, hs256()) == WELCOME_ALICE
    # What an operator watches before turning the deprecated format off.
    counted = node.metrics.render().decode()
    for line in ('notecard_tokens_total{format="legacy",outcome="accepted"} 1.0',
                 'notecard_tokens_total{format="legacy",outcome="expired"} 1.0',
                 'notecard_tokens_total{format="jwt",outcome="accepted"} 1.0'):
        assert line in counted, line
    assert await outcome(await node_with(legacy_tokens=False), legacy) == INVALID


async def test_development_tokens_carry_the_configured_audience_and_issuer(node_with: NodeWith) -> None:
    node = await node_with(jwt_audience="gifts", jwt_issuer="https://id.example")
    assert await outcome(node, mint_token(TOKEN_SECRET, "alice")) == INVALID  # audience "notecard"
    good = mint_token(TOKEN_SECRET, "alice", audience="gifts", issuer="https://id.example")
    assert await outcome(node, good) == WELCOME_ALICE


# ------------------------------------------------------------------ the JWKS cache (pure)


async def test_unknown_kids_refresh_the_jwks_at_most_once_per_period(keys: Keys) -> None:
    clock = {"now": 1000.0}
    fetched: list[float] = []

    async def fetch() -> bytes:
        fetched.append(clock["now"])
        await asyncio.sleep(0)  # callers at the same time share this one read
        return jwks_document(keys, "rsa-1")

    cache = JwksCache(fetch, max_age_s=300, min_refresh_s=10, clock=lambda: clock["now"])
    assert (await cache.key("rsa-1", "RS256")).algorithm_name == "RS256"
    clock["now"] += 11
    results = await asyncio.gather(*(cache.key(f"made-up-{i}", "RS256") for i in range(50)), return_exceptions=True)
    assert all(isinstance(r, TokenError) and r.rejection is Rejection.INVALID for r in results)
    assert len(fetched) == 2  # the first read, and one refresh for the 50 unknown kids
    clock["now"] += 5
    with pytest.raises(TokenError, match="unknown key"):
        await cache.key("made-up-again", "RS256")
    assert len(fetched) == 2  # within the period: no read
    clock["now"] += 6
    with pytest.raises(TokenError, match="unknown key"):
        await cache.key("made-up-again", "RS256")
    assert len(fetched) == 3
    clock["now"] += 400  # stale: read again before use
    await cache.key("rsa-1", "RS256")
    assert len(fetched) == 4


def test_a_jwks_is_bounded_and_only_signing_keys_of_accepted_types_are_kept(keys: Keys) -> None:
    rsa_key = public_jwk("rsa-1", keys["rsa-1"])
    ec_key = public_jwk("ec-1", keys["ec-1"])
    document = {"keys": [
        rsa_key, ec_key,
        rsa_key | {"kid": "enc", "use": "enc"},
        rsa_key | {"kid": "mislabelled", "alg": "ES256"},
        {k: v for k, v in rsa_key.items() if k != "kid"},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        public_jwk("short", rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "not a key",
    ]}
    assert sorted(parse_jwks(orjson.dumps(document))) == ["ec-1", "rsa-1"]
    many = {"keys": [rsa_key | {"kid": f"k{i}"} for i in range(100)]}
    assert len(parse_jwks(orjson.dumps(many))) == 32
    for bad in (b"not json", b"[]", b'{"keys": 1}', b"{" + b" " * 300_000 + b"}"):
        with pytest.raises(JwksUnavailable):
            parse_jwks(bad)
