"""Typed gateway settings, read from the environment (prefix ``NOTECARD_``).

Each setting is declared once, as a field of :class:`GatewaySettings` made by
:func:`setting`: its environment variable, its kind (type and range, gateway/setting_kinds.py),
its default and what it means. Reading the environment, the range checks, the error
messages, ``notecard config`` and README's configuration table all come from that one
declaration (tests/test_config.py checks the README's table against it). The gift rules
(``clearing.GiftRules``) keep their defaults in clearing; their variables are declared in
:data:`RULE_SETTINGS`.

Every setting has a working local default, so ``notecard dev`` needs no set-up. A bad
value stops the process at start with a message naming the variable and what it accepts,
never later.

Adding a setting: one field here, ``name: type = setting(default, "ENV_NAME", Kind(...),
"what it does")``; then ``notecard config --markdown`` prints the README table to paste.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clearing import GiftRules
from clearing.lua import Durability
from clearing.rules import MIN_POINTS_LOG
from gateway.auth import DEFAULT_AUDIENCE, MIN_SECRET_BYTES, ClaimRules, check_secret
from gateway.setting_kinds import (
    Choice,
    Flag,
    HostPorts,
    Integer,
    JwksSource,
    Kind,
    Names,
    Networks,
    Number,
    PathKind,
    Port,
    PostgresUrl,
    RedisUrl,
    Secret,
    SecretNames,
    Text,
    redact_url,
)

PREFIX = "NOTECARD_"
#: REDIS_URL of a Redis Cluster: ``redis+cluster://[user:password@]host:port,host:port``.
CLUSTER_SCHEME = "redis+cluster://"
T = TypeVar("T")
DurabilityPreset = Literal["", "fast", "aof", "replicated", "strict"]
#: WAIT replicas and timeout of each preset of docs/guarantees.md; AOF is Redis's own
#: setting. ``strict`` waits for every replica: 2 in the documented shape (one primary, two
#: replicas); a deployment with more sets NOTECARD_WAIT_REPLICAS to its count.
PRESET_WAIT: dict[str, tuple[int, int]] = {
    "fast": (0, 1000), "aof": (0, 1000), "replicated": (1, 500), "strict": (2, 500),
}
_DECLARED = "notecard.setting"
#: The largest clock skew allowed on a token's times.
MAX_LEEWAY_S = 300.0


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclasses.dataclass(frozen=True, slots=True)
class Declared:
    """One environment variable: what it accepts and means. ``field`` is the settings
    field it sets (``rules.<name>`` for a gift rule); ``scale`` turns the variable's unit
    into the field's (seconds into milliseconds); ``shown`` is the default as the README
    states it when the field's own default would not say it (``None`` meaning "generated")."""

    env: str
    kind: Kind[Any]
    doc: str
    field: str = ""
    shown: str = ""
    scale: int = 1
    #: Unprefixed names also read, after the prefixed one (REDIS_URL).
    aliases: tuple[str, ...] = ()

    @property
    def variable(self) -> str:
        return PREFIX + self.env

    @property
    def secret(self) -> bool:
        return isinstance(self.kind, (Secret, SecretNames))

    def parse(self, raw: str) -> Any:
        value = self.kind.parse(raw)
        return round(value * self.scale) if self.scale != 1 else value

    def echo(self, raw: str) -> str:
        """A bad value as an error message may quote it: never a secret or a URL's password."""
        return "(hidden)" if self.secret else repr(redact_url(raw) if isinstance(self.kind, RedisUrl | PostgresUrl)
                                                  else raw)

    def show(self, value: Any) -> str:
        if value is None or value == ():
            return ""
        if self.secret:
            return "*** (set)"
        return self.kind.show(value / self.scale if self.scale != 1 else value)


def setting(default: T, env: str, kind: Kind[Any], doc: str, *, shown: str = "",
            aliases: tuple[str, ...] = ()) -> T:
    """A settings field read from ``NOTECARD_<env>``: the single declaration of a setting."""
    declared = Declared(env, kind, doc, shown=shown, aliases=aliases)
    return dataclasses.field(default=default, metadata={_DECLARED: declared})


class TimeZone(Kind[str]):
    expected = "an IANA time zone such as Asia/Shanghai or UTC"

    def parse(self, raw: str) -> str:
        self.check(raw.strip())
        return raw.strip()

    def check(self, value: str) -> None:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"expected {self.expected}") from None


#: The gift rules' variables (gift-rules.md section 1); defaults are GiftRules's own.
#: A card kind is a wire name (docs/protocol.md: ``kind``), or clients could never send it.
RULE_SETTINGS: tuple[Declared, ...] = (
    Declared("CARD_KINDS", Names(r"[a-z0-9_]{1,32}", "comma-separated card kinds, each 1-32 of a-z 0-9 _"),
             "card kinds; the first is the default of `mint`", "rules.card_kinds"),
    Declared("UNITS_PER_CARD", Integer(1), "minor units per card", "rules.units_per_card"),
    Declared("MAX_QTY_PER_GIFT", Integer(1), "cards per gift", "rules.max_qty_per_gift"),
    Declared("DAILY_SEND_LIMIT", Integer(0), "gifts a sender may send per day", "rules.daily_send_limit"),
    Declared("VIP_SEND_BONUS", Integer(0), "more gifts a day for a VIP sender", "rules.vip_send_bonus"),
    Declared("DAILY_RECEIVE_LIMIT", Integer(0), "gifts a user may receive per day", "rules.daily_receive_limit"),
    Declared("RECEIVE_LIMIT_SCOPE", Choice("recipient", "pair"),
             "`recipient`: the receive limit counts all senders; `pair`: per (sender, recipient)",
             "rules.receive_limit_scope"),
    Declared("FOLLOW_MIN_AGE_S", Number(minimum=0), "minimum age of both follows, seconds (3 days)",
             "rules.follow_min_age_ms", scale=1000),
    Declared("CONFIRM_WINDOW_S", Number(minimum=0.001), "time to accept before the gift returns",
             "rules.confirm_window_ms", scale=1000),
    Declared("TIMEZONE", TimeZone(), "the calendar day of the daily limits", "rules.timezone"),
    Declared("STREAM_MAXLEN", Integer(1), "events kept per user for replay", "rules.stream_maxlen"),
    Declared("LEDGER_MAXLEN", Integer(1),
             "ledger entries kept per Redis server (docs/ledger.md); consumers must keep within it",
             "rules.ledger_maxlen"),
    Declared("LEDGER", Flag(),
             "off: the scripts write no ledger entries (no book of record, feed or webhooks); only for measuring "
             "the outbox's cost (docs/benchmarks.md)", "rules.ledger"),
    Declared("POINTS_LOG_MAXLEN", Integer(MIN_POINTS_LOG),
             "entries kept in the points log; older ones are folded into per-user sums, so the invariant "
             "check reads a bounded log", "rules.points_log_maxlen"),
    Declared("NODE_TTL_S", Number(minimum=0.001),
             "a node silent this long is dead (at least 3 `NODE_HEARTBEAT_S`)", "rules.node_ttl_ms", scale=1000),
    Declared("REFUSAL_MEMORY_S", Number(minimum=0.001),
             "a refused gift id answers the same refusal this long; keep it above `HEARTBEAT_S` + "
             "`PONG_TIMEOUT_S` + `REDIS_TIMEOUT_S`, the longest a copy of a request can be on its way",
             "rules.refusal_memory_ms", scale=1000),
    Declared("RISK_LIMITED_DAILY", Integer(0), "gifts a day a user of the risk engine's low tier may send",
             "rules.risk_limited_daily"),
    Declared("RISK_LIMITED_ROOMS", Flag(), "whether a user of the risk engine's low tier may send live-room gifts",
             "rules.risk_limited_rooms"),
)

_LOG_LEVELS = Choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", fold=str.upper)
_SECRET_SIZE = f"text of {MIN_SECRET_BYTES} bytes or more"
_DURABILITY = Choice("fast", "aof", "replicated", "strict")


@dataclasses.dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything one gateway node needs. Build with :meth:`from_env` or directly in tests;
    either way every declared value is checked against its range."""

    redis_url: str | None = setting(
        None, "REDIS_URL", RedisUrl(),
        "Redis to use; `rediss://` for TLS, credentials in the URL win over the settings below",
        shown="unset (required outside development)", aliases=("REDIS_URL",))
    sentinels: tuple[tuple[str, int], ...] = setting(
        (), "SENTINELS", HostPorts(), "Redis Sentinels, instead of `REDIS_URL`", shown="unset")
    sentinel_master: str = setting("notecard", "SENTINEL_MASTER", Text(), "the primary's name in Sentinel")
    redis_cluster: tuple[tuple[str, int], ...] = setting(
        (), "REDIS_CLUSTER", HostPorts(),
        "Redis Cluster nodes (any of them), instead of `REDIS_URL`: clearing spreads users over every shard "
        "(docs/architecture.md); `REDIS_URL=redis+cluster://[:password@]host:port,...` says the same",
        shown="unset")
    saga_step_s: float = setting(
        10.0, "SAGA_STEP_S", Number(above=0),
        "a cross-shard step not finished this long after it started is finished (or undone) by the sweeper of "
        "the node that owns its slot")
    brand_min_followers: int = setting(
        500_000, "BRAND_MIN_FOLLOWERS", Integer(0),
        "followers a verified business needs for brand marketing: a campaign to a list or to its followers "
        "(`BELOW_FOLLOWER_THRESHOLD`; docs/business.md)")
    campaign_rate_per_s: float = setting(
        500.0, "CAMPAIGN_RATE_PER_S", Number(above=0),
        "recipients a second each node's campaign runner issues, so that campaigns never take the Redis time "
        "users' own gifts need (docs/business.md, docs/benchmarks.md)")
    order_replay_s: float = setting(
        300.0, "ORDER_REPLAY_S", Number(above=0),
        "a shop's signed order notification is accepted this long around its timestamp (`STALE_ORDER` outside; "
        "docs/business.md)")
    campaign_poll_s: float = setting(
        1.0, "CAMPAIGN_POLL_S", Number(above=0), "how often each node's campaign runner looks for work")
    settings_refresh_s: float = setting(
        1.0, "SETTINGS_REFRESH_S", Number(above=0),
        "each node reads the operators' scene settings again at least this often (a write is announced and "
        "applied at once; this bounds a lost announcement)")
    host: str = setting("127.0.0.1", "HOST", Text(), "WebSocket listener address")
    port: int = setting(8765, "PORT", Port(), "WebSocket listener port")
    admin_host: str = setting("127.0.0.1", "ADMIN_HOST", Text(), "admin API address (plain HTTP: keep it private)")
    admin_port: int = setting(8766, "ADMIN_PORT", Port(), "admin API, metrics and probes port")
    #: Secret of HS256 client tokens; generated into data_dir in development.
    token_secret: str | None = setting(
        None, "TOKEN_SECRET", Secret(expected=_SECRET_SIZE),
        "shared secret of HS256 client tokens (and of the deprecated format), at least 32 bytes",
        shown="required outside development unless `JWKS_URL` is set (there: generated into "
              "`DATA_DIR/secrets.json`)")
    #: Bearer token of the admin API; generated into data_dir in development.
    admin_token: str | None = setting(
        None, "ADMIN_TOKEN", Secret(expected=_SECRET_SIZE), "admin API bearer token, at least 32 bytes",
        shown="required outside development (there: generated into `DATA_DIR/secrets.json`)")
    jwks_url: str | None = setting(
        None, "JWKS_URL", JwksSource(),
        "the login service's public keys (a JWKS) for RS256/ES256 client tokens: an https:// URL or a file; "
        "with it no signing secret is needed", shown="unset")
    jwt_audience: str = setting(DEFAULT_AUDIENCE, "JWT_AUDIENCE", Text(r"[^\s]{1,256}", "1-256 characters, no space"),
                                "the audience (`aud`) every client token must name")
    jwt_issuer: str | None = setting(None, "JWT_ISSUER", Text(r"[^\s]{1,256}", "1-256 characters, no space"),
                                     "the issuer (`iss`) every client token must name", shown="unset: not checked")
    jwt_leeway_s: float = setting(30.0, "JWT_LEEWAY_S", Number(minimum=0),
                                  "clock skew allowed on `exp` and `nbf`, seconds (at most 300)")
    jwt_app_claim: str = setting("app", "JWT_APP_CLAIM", Text(r"[A-Za-z0-9_]{1,64}", "1-64 of A-Z a-z 0-9 _"),
                                 "the claim naming the linked app (`main` when a token has none)")
    jwks_refresh_s: float = setting(300.0, "JWKS_REFRESH_S", Number(above=0),
                                    "the JWKS is read again when a token needs it and it is older than this")
    jwks_min_refresh_s: float = setting(
        10.0, "JWKS_MIN_REFRESH_S", Number(minimum=0),
        "a token with an unknown `kid` reads the JWKS again (key rotation), at most once this often")
    legacy_tokens: bool = setting(
        True, "LEGACY_TOKENS", Flag(),
        "also accept client tokens of the deprecated pre-JWT format (needs `TOKEN_SECRET`); deprecated: turn it "
        "off once the login service mints JWTs")
    data_dir: Path = setting(Path(".notecard"), "DATA_DIR", PathKind(),
                             "development Redis data and generated secrets (created mode 700)")
    node_id: str | None = setting(
        None, "NODE_ID", Text(r"[A-Za-z0-9_.:\-]{1,64}", "1-64 characters of A-Z a-z 0-9 _ . : -"),
        "this node's name in presence, channels and logs", shown="host-pid-random")
    rules: GiftRules = dataclasses.field(default_factory=GiftRules)
    heartbeat_s: float = setting(20.0, "HEARTBEAT_S", Number(above=0), "WebSocket ping interval")
    pong_timeout_s: float = setting(20.0, "PONG_TIMEOUT_S", Number(above=0), "close (1011) when no pong this long")
    auth_timeout_s: float = setting(10.0, "AUTH_TIMEOUT_S", Number(above=0), "time to send `hello` (else close 3003)")
    send_queue_max: int = setting(256, "SEND_QUEUE_MAX", Integer(1),
                                  "frames queued per connection before close 3001 (slow consumer)")
    #: WebSocket write buffer high-water mark per connection, bytes.
    write_limit: int = 32 * 1024
    rate_per_s: float = setting(20.0, "RATE_PER_S", Number(above=0),
                                "requests per second per connection (then `RATE_LIMITED`)")
    rate_burst: int = setting(40, "RATE_BURST", Integer(1), "request burst per connection")
    #: Refused requests in a row (rate limit) before the connection is closed (3002).
    rate_strikes_max: int = 50
    #: Per-user request rate over all of the user's connections on every node (Redis), so
    #: that more connections buy no more requests than one.
    user_rate_per_s: float = setting(
        20.0, "USER_RATE_PER_S", Number(above=0),
        "requests per second per user over all their connections and nodes (then `RATE_LIMITED`; one small "
        "Redis script per request)")
    user_rate_burst: int = setting(40, "USER_RATE_BURST", Integer(1), "request burst per user")
    max_connections_per_user: int = setting(10, "MAX_CONNECTIONS_PER_USER", Integer(1),
                                            "a user's connections over all live nodes; more are closed with 3510")
    max_connections_per_ip: int = setting(
        1000, "MAX_CONNECTIONS_PER_IP", Integer(1),
        "connections from one client address on one node; more are closed with 3511 (cap all nodes at the load "
        "balancer)")
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = setting(
        (), "TRUSTED_PROXIES", Networks(),
        "load balancers whose `X-Forwarded-For` (last entry) names the client", shown="unset")
    risk_engine: bool = setting(
        True, "RISK_ENGINE", Flag(),
        "tell the risk engine every hello, send and answer (device, address, app; docs/risk.md); the send "
        "scripts read its actions either way")
    max_rooms_per_connection: int = setting(5, "MAX_ROOMS_PER_CONNECTION", Integer(1),
                                            "live rooms one connection watches at once (then `TOO_MANY_ROOMS`)")
    max_bad_frames: int = setting(5, "MAX_BAD_FRAMES", Integer(1), "malformed frames before close 3502")
    shutdown_grace_s: float = setting(5.0, "SHUTDOWN_GRACE_S", Number(above=0), "graceful shutdown deadline")
    sweep_interval_s: float = setting(0.5, "SWEEP_INTERVAL_S", Number(above=0),
                                      "how often each node refunds expired gifts")
    room_push_s: float = setting(0.5, "ROOM_PUSH_S", Number(above=0),
                                 "live-room updates are pushed at most this often (the throttle)")
    node_heartbeat_s: float = setting(2.0, "NODE_HEARTBEAT_S", Number(above=0), "node heartbeat period")
    subscriber_probe_s: float = setting(
        2.0, "SUBSCRIBER_PROBE_S", Number(above=0),
        "pub/sub watchdog probe period; 3 periods without an answer make the node not ready and take it out of "
        "presence")
    redis_timeout_s: float = setting(
        5.0, "REDIS_TIMEOUT_S", Number(above=0),
        "a slower Redis call answers `UNAVAILABLE` (outcome unknown, retry with the same id)")
    redis_wait_s: float = setting(
        60.0, "REDIS_WAIT_S", Number(minimum=0),
        "how long a starting node waits for Redis (answering /healthz, not ready) before it gives up; 0: for ever")
    #: Durability of acknowledged gift writes (docs/guarantees.md).
    wait_replicas: int = setting(0, "WAIT_REPLICAS", Integer(0),
                                 "acknowledge a gift only once this many replicas have it (Redis WAIT)",
                                 shown="0, or `DURABILITY`'s")
    wait_timeout_ms: int = setting(1000, "WAIT_TIMEOUT_MS", Integer(1),
                                   "how long WAIT waits; fewer replicas in time answer `UNAVAILABLE`",
                                   shown="1000, or `DURABILITY`'s")
    log_level: str = setting("INFO", "LOG_LEVEL", _LOG_LEVELS, "log level")
    log_format: Literal["json", "text"] = setting("json", "LOG_FORMAT", Choice("json", "text"),
                                                  "one JSON object per line, or text for people")
    workers: int = setting(1, "WORKERS", Integer(1), "worker processes for `serve`")
    redis_username: str | None = setting(None, "REDIS_USERNAME", Text(),
                                         "Redis ACL user (with a URL or through Sentinel)", shown="unset")
    redis_password: str | None = setting(None, "REDIS_PASSWORD", Secret(),
                                         "Redis password (with a URL or through Sentinel)", shown="unset")
    redis_tls: bool = setting(False, "REDIS_TLS", Flag(),
                              "TLS to Redis (a `redis://` URL is used as `rediss://`); the server certificate is "
                              "always verified")
    redis_tls_ca_file: str | None = setting(None, "REDIS_TLS_CA_FILE", Text(),
                                            "PEM file of the CA that signed Redis's and the Sentinels' certificates",
                                            shown="unset: the system's CAs")
    redis_tls_cert_file: str | None = setting(None, "REDIS_TLS_CERT_FILE", Text(),
                                              "PEM client certificate, when the servers require one",
                                              shown="unset")
    redis_tls_key_file: str | None = setting(None, "REDIS_TLS_KEY_FILE", Text(),
                                             "PEM key of the client certificate", shown="unset")
    sentinel_username: str | None = setting(None, "SENTINEL_USERNAME", Text(),
                                            "the Sentinels' own ACL user", shown="unset")
    sentinel_password: str | None = setting(None, "SENTINEL_PASSWORD", Secret(),
                                            "the Sentinels' own password (their `requirepass`)", shown="unset")
    sentinel_tls: bool = setting(False, "SENTINEL_TLS", Flag(), "TLS to the Sentinels")
    durability_preset: DurabilityPreset = setting(
        "", "DURABILITY", _DURABILITY,
        "the preset promised (docs/guarantees.md); sets the default `WAIT_REPLICAS` / `WAIT_TIMEOUT_MS` "
        "(0, 1000; 0, 1000; 1, 500; 2, 500), and the node checks the replicas it sees against it", shown="unset")
    probe_host: str = setting("127.0.0.1", "PROBE_HOST", Text(), "probe listener address")
    probe_port: int | None = setting(
        None, "PROBE_PORT", Port(),
        "a second listener with only `/healthz`, `/readyz`, `/metrics` (worker *i* on `PROBE_PORT + i`)",
        shown="unset")
    dev: bool = setting(
        False, "DEV", Flag(),
        "development mode (`notecard dev` and `serve --dev` set it): with no Redis configured a private "
        "`redis-server` runs in `DATA_DIR`, and missing secrets are generated there; `/app` hands out "
        "development tokens")
    public_ws_urls: tuple[str, ...] = setting(
        (), "PUBLIC_WS_URLS", Names(r"wss?://[^\s,]+", "ws:// or wss:// URLs, comma-separated"),
        "the WebSocket URLs the web app at `/app` connects to, in turn on reconnects (`wss://gw.example.com`)",
        shown="this node's port on the host the page came from")
    # `notecard ledger` (ledger/, docs/ledger.md "PostgreSQL"); the dashboards (docs/dashboards.md)
    postgres_url: str | None = setting(
        None, "POSTGRES_URL", PostgresUrl(),
        "the book of record `notecard ledger` writes the ledger streams to (and `reconcile` / `restore` read), and "
        "the admin API's `/admin/dashboards/*` read; credentials in the URL",
        shown="unset (`notecard dev`: a local PostgreSQL of its own)")
    # `notecard webhooks` (notecard/webhooks.py, docs/ledger.md "Webhooks")
    webhook_urls: tuple[str, ...] = setting(
        (), "WEBHOOK_URLS", Names(r"https?://[^\s,]+", "http:// or https:// URLs, comma-separated"),
        "where `notecard webhooks` POSTs each gift event (every URL gets every event)", shown="unset")
    webhook_secret: str | None = setting(
        None, "WEBHOOK_SECRET", Secret(expected=_SECRET_SIZE),
        "the HMAC-SHA256 key of the `Notecard-Signature` header, at least 32 bytes", shown="unset")
    webhook_attempts: int = setting(6, "WEBHOOK_ATTEMPTS", Integer(1, 50),
                                    "deliveries tried per event and URL before it goes to the dead-letter list")
    webhook_backoff_s: float = setting(
        0.5, "WEBHOOK_BACKOFF_S", Number(above=0),
        "the wait after the first failed delivery; it doubles after each failure, with up to half of it "
        "taken off at random (jitter)")
    webhook_backoff_max_s: float = setting(30.0, "WEBHOOK_BACKOFF_MAX_S", Number(above=0),
                                           "the longest wait between two deliveries of one event")
    webhook_timeout_s: float = setting(10.0, "WEBHOOK_TIMEOUT_S", Number(above=0),
                                       "a delivery that has no answer this long has failed")
    webhook_dead_max: int = setting(10_000, "WEBHOOK_DEAD_MAX", Integer(1, 999_999),
                                    "dead letters kept (the oldest go first)")

    # purchases (clearing/purchases.py, docs/regions.md "Purchases")
    payment_secrets: tuple[str, ...] = setting(
        (), "PAYMENT_SECRETS", SecretNames(r"[a-z][a-z0-9_]{0,31}:[!-+\--~]{32,}",
                                           "provider:secret pairs, comma-separated, each secret 32 bytes or more"),
        "the payment providers whose notifications `POST /payments/{provider}/notify` accepts, each with the "
        "HMAC-SHA256 key of its signature (`ewallet:...,card:...,paypal:...,crypto:...`)", shown="unset")
    payment_window_s: int = setting(300, "PAYMENT_WINDOW_S", Integer(1, 86_400),
                                    "a payment notification whose timestamp is further than this from the node's "
                                    "clock is refused (the replay window)")

    def __post_init__(self) -> None:
        problems = [str(exc) for exc in _range_errors(self)]
        if problems:
            raise ConfigError("\n".join(problems))
        if self.rules.node_ttl_ms < 3 * self.node_heartbeat_s * 1000:
            raise ConfigError(f"{PREFIX}NODE_TTL_S must be at least 3 heartbeats ({PREFIX}NODE_HEARTBEAT_S)")
        if self.redis_cluster and self.sentinels:
            raise ConfigError(f"{PREFIX}REDIS_CLUSTER and {PREFIX}SENTINELS exclude each other: a cluster fails "
                              "over by itself")
        if self.wait_replicas and self.wait_timeout_ms >= self.redis_timeout_s * 1000:
            raise ConfigError(f"{PREFIX}WAIT_TIMEOUT_MS must be below {PREFIX}REDIS_TIMEOUT_S, "
                              "or every slow WAIT would look like a dead Redis")
        self._check_secrets()
        self._check_tokens()
        self._check_durability_preset()
        self._check_tls_files()

    def _check_secrets(self) -> None:
        for name, value in (("TOKEN_SECRET", self.token_secret), ("ADMIN_TOKEN", self.admin_token)):
            if value is not None:
                try:
                    check_secret(value, PREFIX + name)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None

    def _check_tokens(self) -> None:
        if self.jwt_leeway_s > MAX_LEEWAY_S:
            raise ConfigError(f"{PREFIX}JWT_LEEWAY_S={self.jwt_leeway_s:g}: at most {MAX_LEEWAY_S:g} seconds; a "
                              "larger leeway keeps expired tokens working")
        problem = JwksSource.missing_file(self.jwks_url)
        if problem:
            raise ConfigError(f"{PREFIX}JWKS_URL={self.jwks_url!r}: {problem}")

    @property
    def claim_rules(self) -> ClaimRules:
        return ClaimRules(self.jwt_audience, self.jwt_issuer, self.jwt_leeway_s, self.jwt_app_claim)

    def _check_durability_preset(self) -> None:
        preset, wait = self.durability_preset, self.wait_replicas
        if preset in ("fast", "aof") and wait:
            raise ConfigError(f"{PREFIX}WAIT_REPLICAS={wait} contradicts {PREFIX}DURABILITY={preset} (WAIT 0)")
        if preset in ("replicated", "strict") and not wait:
            raise ConfigError(f"{PREFIX}DURABILITY={preset} needs {PREFIX}WAIT_REPLICAS of at least 1")

    def _check_tls_files(self) -> None:
        files = {"REDIS_TLS_CA_FILE": self.redis_tls_ca_file, "REDIS_TLS_CERT_FILE": self.redis_tls_cert_file,
                 "REDIS_TLS_KEY_FILE": self.redis_tls_key_file}
        given = {name: path for name, path in files.items() if path}
        if given and not self.uses_tls:
            raise ConfigError(f"{PREFIX}{next(iter(given))} is set but no connection uses TLS: set "
                              f"{PREFIX}REDIS_TLS or {PREFIX}SENTINEL_TLS, or use a rediss:// URL")
        for name, path in given.items():
            if not Path(path).is_file():
                raise ConfigError(f"{PREFIX}{name}={path!r}: no such file")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ConfigError(f"{PREFIX}REDIS_TLS_CERT_FILE and {PREFIX}REDIS_TLS_KEY_FILE go together")

    @property
    def uses_tls(self) -> bool:
        url_tls = bool(self.redis_url and self.redis_url.startswith("rediss://"))
        return self.redis_tls or self.sentinel_tls or url_tls

    @property
    def redis_configured(self) -> bool:
        """An external Redis is named (else only development runs a private one)."""
        return bool(self.redis_url or self.sentinels or self.redis_cluster)

    @property
    def redis_address(self) -> str:
        """Where Redis is, for messages (a URL's password hidden)."""
        if self.redis_cluster:
            return "Redis Cluster via " + HostPorts().show(self.redis_cluster)
        if self.sentinels:
            return f"Sentinel primary {self.sentinel_master!r} via " + HostPorts().show(self.sentinels)
        return redact_url(self.redis_url) if self.redis_url else "no Redis configured"

    @property
    def durability(self) -> Durability:
        return Durability(self.wait_replicas, self.wait_timeout_ms)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> GatewaySettings:
        """Read settings from ``env`` (default ``os.environ``); ``overrides`` win. Every bad
        variable is named in the one :class:`ConfigError` raised."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        rules: dict[str, Any] = {}
        problems: list[str] = []
        for declared in declarations():
            raw = _raw(source, declared)
            if raw is None:
                continue
            try:
                value = declared.parse(raw)
            except ValueError as exc:
                problems.append(f"{declared.variable}={declared.echo(raw)}: {exc}")
                continue
            target, _, rule = declared.field.partition(".")
            (rules if rule else values)[rule or target] = value
        url = values.get("redis_url")
        if url is not None and url.startswith(CLUSTER_SCHEME):
            # A cluster by URL: its nodes and credentials, as REDIS_CLUSTER and REDIS_PASSWORD.
            values.update(_cluster_url(values.pop("redis_url")))
        if problems:
            raise ConfigError("\n".join(problems))
        preset = values.get("durability_preset", "")
        if preset:
            # The preset's WAIT is the default; an explicit NOTECARD_WAIT_* setting wins.
            wait, timeout = PRESET_WAIT[preset]
            values.setdefault("wait_replicas", wait)
            values.setdefault("wait_timeout_ms", timeout)
        try:
            values["rules"] = GiftRules(**rules)
        except ValueError as exc:  # a combination of rules (each rule's range is checked above)
            raise ConfigError(str(exc)) from None
        values.update(overrides)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _cluster_url(url: str) -> dict[str, Any]:
    """``redis+cluster://[user:password@]host:port,...`` as the cluster's settings."""
    userinfo, at, hosts = url[len(CLUSTER_SCHEME) :].partition("/")[0].rpartition("@")
    user, _, password = userinfo.partition(":") if at else ("", "", "")
    values: dict[str, Any] = {"redis_cluster": HostPorts().parse(hosts)}
    if user:
        values["redis_username"] = unquote(user)
    if password:
        values["redis_password"] = unquote(password)
    return values


def declarations() -> Iterator[Declared]:
    """Every setting, in the README's order (the rules where the settings hold them)."""
    for field in dataclasses.fields(GatewaySettings):
        if field.name == "rules":
            yield from RULE_SETTINGS
        declared = field.metadata.get(_DECLARED)
        if declared is not None:
            yield dataclasses.replace(declared, field=field.name)


def effective(settings: GatewaySettings, env: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(variable, value as it would be written, where it came from) for every setting;
    secrets are never shown."""
    source = os.environ if env is None else env
    rows = []
    for declared in declarations():
        target, _, rule = declared.field.partition(".")
        value = getattr(settings.rules, rule) if rule else getattr(settings, target)
        given = _raw(source, declared) is not None
        origin = "environment" if given else "default"
        if declared.env in ("WAIT_REPLICAS", "WAIT_TIMEOUT_MS") and settings.durability_preset and not given:
            origin = f"DURABILITY={settings.durability_preset}"
        rows.append((declared.variable, declared.show(value) or "(unset)", origin))
    return rows


def markdown_table() -> str:
    """README's configuration table, from the declarations."""
    lines = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    defaults = GatewaySettings()
    for declared in declarations():
        target, _, rule = declared.field.partition(".")
        value = getattr(defaults.rules, rule) if rule else getattr(defaults, target)
        default = declared.shown or f"`{declared.show(value)}`"
        name = f"`{declared.env}`" + "".join(f" (or plain `{alias}`)" for alias in declared.aliases)
        lines.append(f"| {name} | {default} | {declared.kind.expected} | {declared.doc} |")
    return "\n".join(lines) + "\n"


def production_problems(settings: GatewaySettings) -> list[str]:
    """What a node outside development refuses to start without: a Redis of the
    deployment's (not a private one per process) and the deployment's secrets (not ones
    generated per data folder, which other nodes would not share)."""
    if settings.dev:
        return []
    problems = []
    if not settings.redis_configured:
        problems.append(f"no Redis configured: set {PREFIX}REDIS_URL, {PREFIX}SENTINELS or {PREFIX}REDIS_CLUSTER "
                        "(a private Redis "
                        f"per process is for development: `notecard dev`, `notecard serve --dev` or {PREFIX}DEV=true)")
    if settings.admin_token is None:
        problems.append(f"{PREFIX}ADMIN_TOKEN is not set: outside development every node needs the deployment's "
                        "admin token (generated secrets are for `notecard dev` or --dev)")
    if settings.token_secret is None and settings.jwks_url is None:
        problems.append(f"no way to verify client tokens: set {PREFIX}JWKS_URL (the login service's public keys, "
                        f"RS256/ES256) or {PREFIX}TOKEN_SECRET (a shared HS256 secret); generated secrets are for "
                        "`notecard dev` or --dev")
    return problems


def _raw(source: Mapping[str, str], declared: Declared) -> str | None:
    for name in (declared.variable, *declared.aliases):
        raw = source.get(name)
        if raw is not None and raw.strip() != "":
            return raw
    return None


def _range_errors(settings: GatewaySettings) -> Iterator[ConfigError]:
    for field in dataclasses.fields(settings):
        declared: Declared | None = field.metadata.get(_DECLARED)
        value = getattr(settings, field.name)
        if declared is None or value is None or value in ("", ()):
            continue
        try:
            declared.kind.check(value)
        except ValueError as exc:
            yield ConfigError(f"{PREFIX}{declared.env}={declared.echo(declared.kind.show(value))}: {exc}")
