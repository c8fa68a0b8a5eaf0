"""Typed gateway settings, read from the environment (prefix ``NOTECARD_``).

Every setting has a working local default, so ``notecard dev`` needs no set-up. A bad
value stops the process at start with a message naming the variable, never later.
The full reference table is in README.md ("Configuration").
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal, TypeVar, cast

from clearing import GiftRules
from clearing.lua import Durability
from gateway.auth import check_secret

PREFIX = "NOTECARD_"
T = TypeVar("T")
DurabilityPreset = Literal["", "fast", "aof", "replicated", "strict"]
#: WAIT replicas and timeout of each preset of docs/guarantees.md; AOF is Redis's own
#: setting. ``strict`` waits for every replica: 2 in the documented shape (one primary, two
#: replicas); a deployment with more sets NOTECARD_WAIT_REPLICAS to its count.
PRESET_WAIT: dict[str, tuple[int, int]] = {
    "fast": (0, 1000), "aof": (0, 1000), "replicated": (1, 500), "strict": (2, 500),
}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclasses.dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything one gateway node needs. Build with :meth:`from_env` or directly in tests."""

    #: Redis to use; ``None`` means "start a local redis-server child in data_dir".
    redis_url: str | None = None
    #: Redis Sentinel addresses ("host:port,host:port") and the monitored primary's name.
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "notecard"
    host: str = "127.0.0.1"
    port: int = 8765
    admin_host: str = "127.0.0.1"
    admin_port: int = 8766
    #: Secret that signs client tokens; generated into data_dir when not configured.
    token_secret: str | None = None
    #: Bearer token of the admin API; generated into data_dir when not configured.
    admin_token: str | None = None
    data_dir: Path = Path(".notecard")
    node_id: str | None = None
    rules: GiftRules = dataclasses.field(default_factory=GiftRules)
    #: WebSocket keepalive: ping every heartbeat_s, close (1011) when no pong in pong_timeout_s.
    heartbeat_s: float = 20.0
    pong_timeout_s: float = 20.0
    #: A connection must send ``hello`` within this time.
    auth_timeout_s: float = 10.0
    #: Frames queued for one connection before it is a slow consumer (closed with 3001).
    send_queue_max: int = 256
    #: WebSocket write buffer high-water mark per connection, bytes.
    write_limit: int = 32 * 1024
    #: Per-connection request rate: sustained requests per second and burst size.
    rate_per_s: float = 20.0
    rate_burst: int = 40
    #: Refused requests in a row (rate limit) before the connection is closed (3002).
    rate_strikes_max: int = 50
    #: Per-user request rate over all of the user's connections on every node (Redis), so
    #: that more connections buy no more requests than one.
    user_rate_per_s: float = 20.0
    user_rate_burst: int = 40
    #: A user's connections over all live nodes (more are closed with 3510) and connections
    #: from one client address on this node (more are closed with 3511).
    max_connections_per_user: int = 10
    max_connections_per_ip: int = 1000
    #: Peers whose X-Forwarded-For names the client (a load balancer); CIDR networks.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    #: Live rooms one connection may watch at once (more are refused TOO_MANY_ROOMS).
    max_rooms_per_connection: int = 5
    #: Malformed frames on one connection before it is closed (3502).
    max_bad_frames: int = 5
    #: How long a graceful shutdown waits for connections to drain.
    shutdown_grace_s: float = 5.0
    #: Sweeper period: pending gifts past their window are refunded at most this late.
    sweep_interval_s: float = 0.5
    #: Live-room updates (viewers, wish progress, leaderboard) are pushed at most this often.
    room_push_s: float = 0.5
    #: Node heartbeat period; rules.node_ttl_ms must be several of these.
    node_heartbeat_s: float = 2.0
    #: Subscriber watchdog: a self-addressed probe must come back within this time.
    subscriber_probe_s: float = 2.0
    #: A Redis call slower than this is treated as unavailable (the outcome is unknown).
    redis_timeout_s: float = 5.0
    #: Durability of acknowledged gift writes: also on this many replicas (Redis WAIT), waiting
    #: at most wait_timeout_ms; fewer in time answers UNAVAILABLE (outcome unknown). 0: the
    #: primary's word is enough. What each setting guarantees: docs/guarantees.md.
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    #: Start N worker processes sharing the port (SO_REUSEPORT); 1 runs in-process.
    workers: int = 1
    #: Credentials and TLS for Redis, with a URL as with Sentinel's primary. A URL's own user
    #: and password win, and ``rediss://`` turns TLS on as redis_tls does.
    redis_username: str | None = None
    redis_password: str | None = None
    redis_tls: bool = False
    #: PEM files for TLS (to Redis and to the Sentinels): the CA that signed the servers'
    #: certificates (default: the system's), and this client's certificate and key when the
    #: servers require one (``tls-auth-clients``).
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    #: The Sentinels' own credentials (their ``requirepass`` or ACL user) and TLS.
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    sentinel_tls: bool = False
    #: The durability preset the deployment promises (docs/guarantees.md): its WAIT becomes
    #: the default of wait_replicas / wait_timeout_ms, and the node checks the replicas it
    #: sees against it. "" promises nothing beyond the WAIT settings.
    durability_preset: DurabilityPreset = ""
    #: A second HTTP listener with only /healthz, /readyz and /metrics, for load balancers
    #: and scrapers on other hosts while the admin API stays on loopback. None: none.
    probe_host: str = "127.0.0.1"
    probe_port: int | None = None

    def __post_init__(self) -> None:
        if self.rules.node_ttl_ms < 3 * self.node_heartbeat_s * 1000:
            raise ConfigError("NOTECARD_NODE_TTL_S must be at least 3 heartbeats (NOTECARD_NODE_HEARTBEAT_S)")
        if self.room_push_s <= 0:
            raise ConfigError(f"{PREFIX}ROOM_PUSH_S must be positive")
        for name in ("send_queue_max", "rate_burst", "max_bad_frames", "workers", "wait_timeout_ms",
                     "user_rate_burst", "max_connections_per_user", "max_connections_per_ip",
                     "max_rooms_per_connection"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{PREFIX}{name.upper()} must be at least 1")
        for name in ("rate_per_s", "user_rate_per_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{PREFIX}{name.upper()} must be positive")
        if self.wait_replicas < 0:
            raise ConfigError(f"{PREFIX}WAIT_REPLICAS must not be negative")
        if self.wait_replicas and self.wait_timeout_ms >= self.redis_timeout_s * 1000:
            raise ConfigError(f"{PREFIX}WAIT_TIMEOUT_MS must be below {PREFIX}REDIS_TIMEOUT_S, "
                              "or every slow WAIT would look like a dead Redis")
        self._check_secrets()
        self._check_durability_preset()
        self._check_tls_files()

    def _check_secrets(self) -> None:
        for name, value in (("TOKEN_SECRET", self.token_secret), ("ADMIN_TOKEN", self.admin_token)):
            if value is not None:
                try:
                    check_secret(value, PREFIX + name)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None

    def _check_durability_preset(self) -> None:
        preset, wait = self.durability_preset, self.wait_replicas
        if preset not in ("", *PRESET_WAIT):
            raise ConfigError(f"{PREFIX}DURABILITY: expected one of {', '.join(PRESET_WAIT)}")
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
    def durability(self) -> Durability:
        return Durability(self.wait_replicas, self.wait_timeout_ms)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> GatewaySettings:
        """Read settings from ``env`` (default ``os.environ``); ``overrides`` win."""
        source = os.environ if env is None else env
        reader = _EnvReader(source)
        # Defaults come from instances: on a slotted dataclass, a class attribute is a slot
        # descriptor, not the default value.
        base, default_rules = cls(), GiftRules()
        try:
            rules = cls._rules_from(reader, default_rules)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except KeyError:  # zoneinfo's ZoneInfoNotFoundError
            raise ConfigError(f"{PREFIX}TIMEZONE: unknown time zone") from None
        redis_url = source.get(f"{PREFIX}REDIS_URL") or source.get("REDIS_URL") or None
        values: dict[str, object] = {
            "redis_url": redis_url,
            "sentinels": reader.get("SENTINELS", _hostports, base.sentinels),
            "sentinel_master": reader.get("SENTINEL_MASTER", str, base.sentinel_master),
            "host": reader.get("HOST", str, base.host),
            "port": reader.get("PORT", _port, base.port),
            "admin_host": reader.get("ADMIN_HOST", str, base.admin_host),
            "admin_port": reader.get("ADMIN_PORT", _port, base.admin_port),
            "token_secret": reader.get("TOKEN_SECRET", str, None),
            "admin_token": reader.get("ADMIN_TOKEN", str, None),
            "data_dir": Path(reader.get("DATA_DIR", str, str(base.data_dir))),
            "node_id": reader.get("NODE_ID", str, None),
            "rules": rules,
            "heartbeat_s": reader.get("HEARTBEAT_S", float, base.heartbeat_s),
            "pong_timeout_s": reader.get("PONG_TIMEOUT_S", float, base.pong_timeout_s),
            "auth_timeout_s": reader.get("AUTH_TIMEOUT_S", float, base.auth_timeout_s),
            "send_queue_max": reader.get("SEND_QUEUE_MAX", int, base.send_queue_max),
            "rate_per_s": reader.get("RATE_PER_S", float, base.rate_per_s),
            "rate_burst": reader.get("RATE_BURST", int, base.rate_burst),
            "max_bad_frames": reader.get("MAX_BAD_FRAMES", int, base.max_bad_frames),
            "user_rate_per_s": reader.get("USER_RATE_PER_S", float, base.user_rate_per_s),
            "user_rate_burst": reader.get("USER_RATE_BURST", int, base.user_rate_burst),
            "max_connections_per_user": reader.get("MAX_CONNECTIONS_PER_USER", int, base.max_connections_per_user),
            "max_connections_per_ip": reader.get("MAX_CONNECTIONS_PER_IP", int, base.max_connections_per_ip),
            "trusted_proxies": reader.get("TRUSTED_PROXIES", _networks, base.trusted_proxies),
            "max_rooms_per_connection": reader.get("MAX_ROOMS_PER_CONNECTION", int, base.max_rooms_per_connection),
            "shutdown_grace_s": reader.get("SHUTDOWN_GRACE_S", float, base.shutdown_grace_s),
            "sweep_interval_s": reader.get("SWEEP_INTERVAL_S", float, base.sweep_interval_s),
            "node_heartbeat_s": reader.get("NODE_HEARTBEAT_S", float, base.node_heartbeat_s),
            "subscriber_probe_s": reader.get("SUBSCRIBER_PROBE_S", float, base.subscriber_probe_s),
            "room_push_s": reader.get("ROOM_PUSH_S", float, base.room_push_s),
            "redis_timeout_s": reader.get("REDIS_TIMEOUT_S", float, base.redis_timeout_s),
            "wait_replicas": reader.get("WAIT_REPLICAS", int, base.wait_replicas),
            "wait_timeout_ms": reader.get("WAIT_TIMEOUT_MS", int, base.wait_timeout_ms),
            "log_level": reader.get("LOG_LEVEL", str, base.log_level).upper(),
            "log_format": reader.get("LOG_FORMAT", _log_format, base.log_format),
            "workers": reader.get("WORKERS", int, base.workers),
            **cls._connection_from(reader, base),
        }
        preset = reader.get("DURABILITY", _preset, base.durability_preset)
        if preset:
            # The preset's WAIT is the default; an explicit NOTECARD_WAIT_* setting wins.
            wait, timeout = PRESET_WAIT[preset]
            values["durability_preset"] = preset
            values["wait_replicas"] = reader.get("WAIT_REPLICAS", int, wait)
            values["wait_timeout_ms"] = reader.get("WAIT_TIMEOUT_MS", int, timeout)
        values.update(overrides)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @staticmethod
    def _connection_from(reader: _EnvReader, base: GatewaySettings) -> dict[str, object]:
        """Redis and Sentinel credentials and TLS, and the probe listener."""
        return {
            "redis_username": reader.get("REDIS_USERNAME", str, None),
            "redis_password": reader.get("REDIS_PASSWORD", str, None),
            "redis_tls": reader.get("REDIS_TLS", _bool, base.redis_tls),
            "redis_tls_ca_file": reader.get("REDIS_TLS_CA_FILE", str, None),
            "redis_tls_cert_file": reader.get("REDIS_TLS_CERT_FILE", str, None),
            "redis_tls_key_file": reader.get("REDIS_TLS_KEY_FILE", str, None),
            "sentinel_username": reader.get("SENTINEL_USERNAME", str, None),
            "sentinel_password": reader.get("SENTINEL_PASSWORD", str, None),
            "sentinel_tls": reader.get("SENTINEL_TLS", _bool, base.sentinel_tls),
            "probe_host": reader.get("PROBE_HOST", str, base.probe_host),
            "probe_port": reader.get("PROBE_PORT", _port, base.probe_port),
        }

    @staticmethod
    def _rules_from(reader: _EnvReader, default_rules: GiftRules) -> GiftRules:
        return GiftRules(
            card_kinds=reader.get("CARD_KINDS", _csv, default_rules.card_kinds),
            units_per_card=reader.get("UNITS_PER_CARD", int, default_rules.units_per_card),
            max_qty_per_gift=reader.get("MAX_QTY_PER_GIFT", int, default_rules.max_qty_per_gift),
            daily_send_limit=reader.get("DAILY_SEND_LIMIT", int, default_rules.daily_send_limit),
            vip_send_bonus=reader.get("VIP_SEND_BONUS", int, default_rules.vip_send_bonus),
            daily_receive_limit=reader.get("DAILY_RECEIVE_LIMIT", int, default_rules.daily_receive_limit),
            receive_limit_scope=reader.get("RECEIVE_LIMIT_SCOPE", _scope, default_rules.receive_limit_scope),
            follow_min_age_ms=_ms(reader.get("FOLLOW_MIN_AGE_S", float, default_rules.follow_min_age_ms / 1000)),
            confirm_window_ms=_ms(reader.get("CONFIRM_WINDOW_S", float, default_rules.confirm_window_ms / 1000)),
            refusal_memory_ms=_ms(reader.get("REFUSAL_MEMORY_S", float, default_rules.refusal_memory_ms / 1000)),
            timezone=reader.get("TIMEZONE", str, default_rules.timezone),
            stream_maxlen=reader.get("STREAM_MAXLEN", int, default_rules.stream_maxlen),
            points_log_maxlen=reader.get("POINTS_LOG_MAXLEN", int, default_rules.points_log_maxlen),
            node_ttl_ms=_ms(reader.get("NODE_TTL_S", float, default_rules.node_ttl_ms / 1000)),
        )


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str, cast_to: Callable[[str], T], default: T) -> T:
        raw = self.env.get(PREFIX + name)
        if raw is None or raw == "":
            return default
        try:
            return cast_to(raw)
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}{name}={raw!r}: {exc}") from None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("a port is 0..65535")
    return value


def _scope(raw: str) -> Literal["recipient", "pair"]:
    if raw not in ("recipient", "pair"):
        raise ValueError("expected 'recipient' or 'pair'")
    return cast(Literal["recipient", "pair"], raw)


def _log_format(raw: str) -> Literal["json", "text"]:
    if raw not in ("json", "text"):
        raise ValueError("expected 'json' or 'text'")
    return cast(Literal["json", "text"], raw)


def _networks(raw: str) -> tuple[IPv4Network | IPv6Network, ...]:
    return tuple(ip_network(part) for part in _csv(raw))  # ValueError names the bad part


def _hostports(raw: str) -> tuple[tuple[str, int], ...]:
    out = []
    for part in _csv(raw):
        host, sep, port = part.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port[,host:port...]")
        out.append((host, _port(port)))
    return tuple(out)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _preset(raw: str) -> DurabilityPreset:
    if raw not in PRESET_WAIT:
        raise ValueError(f"expected one of {', '.join(PRESET_WAIT)}")
    return cast(DurabilityPreset, raw)
