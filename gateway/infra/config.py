"""gateway.yaml: infrastructure settings (AMI hosts, Redis, listeners, carriers).

Secrets are never in the file: it names the environment variables that hold them.
Every error names the file, the line and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.errors import ConfigError, RulesError
from gateway.infra import redisurl
from gateway.infra.crypto import Sealer
from gateway.infra.tls import TlsFileError, server_context
from gateway.infra.yamldoc import Lines, file_label, line_of, load_yaml, validate

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the gateway package (its data/ folder)
DEFAULT_CONFIG = PACKAGE_DIR / "data" / "gateway.default.yaml"
PROJECT_RULES = PACKAGE_DIR.parent / "rules"

_NAME = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_.-]+$",
    "x-message": "{value!r} is not a valid name (letters, digits, '_', '.', '-')",
}
_ENV = {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$", "x-message": "{value!r} is not an environment variable name"}
_SECONDS = {"type": "number", "exclusiveMinimum": 0}
_HHMM = "([01][0-9]|2[0-3]):[0-5][0-9]"
_DAYS = {"type": "integer", "minimum": 1, "x-message": {"minimum": "{value!r} is not a positive number of days"}}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["pbx"],
    "properties": {
        "pbx": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "host", "username", "secret_env"],
                "properties": {
                    "name": _NAME,
                    "host": {"type": "string", "minLength": 1},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "username": {"type": "string", "minLength": 1},
                    "secret_env": _ENV,
                    "trunks": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    "ping_interval_s": _SECONDS,
                    "ping_timeout_s": _SECONDS,
                    "backoff_max_s": _SECONDS,
                },
            },
        },
        "redis": {
            "type": "object",
            "additionalProperties": False,
            # sentinel_password_env: the variable holding the sentinels' own password, for a
            # `redis+sentinel://` URL (gateway.infra.redisurl; default REDIS_SENTINEL_PASSWORD).
            # min_replicas_ack: durable means acknowledged by this many replicas (Redis WAIT) before
            # an accept / opt-out / lettering claim succeeds; 0 (default): not waited for.
            "properties": {
                "url": {"type": "string"},
                "url_env": _ENV,
                "sentinel_password_env": _ENV,
                "min_replicas_ack": {"type": "integer", "minimum": 0, "maximum": 16},
                "replica_ack_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 60_000},
            },
        },
        "http": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "host": {"type": "string"},
                "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                # Bounds on slow, idle and numerous clients (every HTTP listener).
                "header_timeout_s": _SECONDS,
                "body_timeout_s": _SECONDS,
                "keepalive_timeout_s": _SECONDS,
                "max_connections": {"type": "integer", "minimum": 1},
                # /health and /metrics only here when set (not on the public listener).
                "internal_host": {"type": "string"},
                "internal_port": {"type": "integer", "minimum": 0, "maximum": 65535},
            },
        },
        "rules_dir": {"type": "string"},
        # SIGTERM: stop intake, finish in-flight work, exit within this bound (< systemd's TimeoutStopSec).
        "shutdown_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
        # Start: wait this long for every PBX login before telling systemd READY anyway (webhooks work
        # without a PBX; /health stays 503 until the PBX is back).
        "ready_timeout_s": {"type": "number", "minimum": 0, "maximum": 600},
        "carriers": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "required": ["kind"],
                "properties": {"kind": {"enum": ["sandbox", "http"]}},
            },
        },
        "alimtalk": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "required": ["kind"],
                "properties": {"kind": {"enum": ["sandbox", "nhn"]}},
            },
        },
        "sms": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "required": ["kind"],
                "properties": {"kind": {"enum": ["sandbox", "nhn"]}},
            },
        },
        "webhooks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "signature_env"],
                "properties": {"kind": {"enum": ["nhn", "sandbox"]}, "signature_env": _ENV},
            },
        },
        "inbound": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "signature_env", "public_url"],
                "properties": {
                    "kind": {"enum": ["generic"]},
                    "signature_env": _ENV,
                    "public_url": {"type": "string", "pattern": "^https?://"},
                },
            },
        },
        "unsubscribe": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "signature_env"],
                "properties": {"kind": {"enum": ["nhn"]}, "signature_env": _ENV},
            },
        },
        "smtp": {
            "type": "object",
            "additionalProperties": False,
            "required": ["port", "peers", "senders", "recipient_domain", "city_numbers"],
            "properties": {
                "host": {"type": "string"},
                "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                "peers": {"type": "array", "items": {"type": "string"}},
                "senders": {"type": "array", "items": {"type": "string"}},
                "recipient_domain": {"type": "string", "minLength": 1},
                "city_numbers": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "max_bytes": {"type": "integer", "minimum": 1024},
                # a silent client (before a command or mid-DATA) is disconnected after this
                "idle_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                "max_connections": {"type": "integer", "minimum": 1},
                # STARTTLS: PEM certificate chain and unencrypted PEM key (relative to this file)
                "tls_cert": {"type": "string", "minLength": 1},
                "tls_key": {"type": "string", "minLength": 1},
                "require_tls": {"type": "boolean"},
            },
        },
        # The staff console (gateway.console) on a listener of its own, and its sign-in rules.
        "console": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "host": {"type": "string"},
                "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                "secure_cookie": {"type": "boolean"},
                "session_idle_minutes": {"type": "integer", "minimum": 1, "maximum": 720},
                "session_max_hours": {"type": "integer", "minimum": 1, "maximum": 72},
                "lockout_failures": {"type": "integer", "minimum": 3, "maximum": 20},
                "lockout_minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
                "waiting_minutes": {"type": "integer", "minimum": 1, "maximum": 10080},
            },
        },
        "worker": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "threads": {"type": "integer", "minimum": 1, "maximum": 64},
                "namespace": {"type": "string", "pattern": "^[a-z0-9-]+$"},
                "heartbeat_timeout_ms": {"type": "integer", "minimum": 1000},
                "maintenance_chance": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                "http_host": {"type": "string"},
                "http_port": {"type": "integer", "minimum": 0, "maximum": 65535},
            },
        },
        "outbox": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "number_key_env": _ENV,
                "data_key_env": _ENV,
                "dedupe_ttl_s": {"type": "integer", "minimum": 60},
            },
        },
        # The SQL archive (gateway.records): where, and how long each kind of record is kept.
        "records": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "url_env": _ENV,
                "url": {
                    "type": "string",
                    "pattern": "^(sqlite|postgresql|postgres)://",
                    "x-message": "{value!r} is not a records URL (sqlite:///FILE or postgresql://...)",
                },
                "retention_days": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {kind: _DAYS for kind in ("messages", "calls", "sends", "access", "accounts")},
                },
                "purge_at": {
                    "type": "string",
                    "pattern": f"^{_HHMM}$",
                    "x-message": "{value!r} is not a time of day (HH:MM, Asia/Seoul)",
                },
                "office_hours": {
                    "type": "string",
                    "pattern": f"^{_HHMM}-{_HHMM}$",
                    "x-message": "{value!r} is not a range of times of day (HH:MM-HH:MM)",
                },
                "stream_maxlen": {"type": "integer", "minimum": 1000},
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 100_000},
            },
        },
        "log": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"json": {"type": "boolean"}, "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]}},
        },
    },
}


@dataclass(frozen=True, slots=True)
class PbxConfig:
    name: str
    host: str
    port: int
    username: str
    secret_env: str
    trunks: tuple[str, ...]
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 5.0
    backoff_max_s: float = 30.0

    def secret(self, environ: Mapping[str, str]) -> str:
        value = environ.get(self.secret_env)
        if not value:
            raise ConfigError(f"pbx {self.name!r}: environment variable {self.secret_env} (AMI secret) is not set")
        return value


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client may take of an HTTP listener (gateway.yaml `http:`; the worker's listener too)."""

    header_timeout_s: float = 10.0  # from a request's first byte to the end of its headers
    body_timeout_s: float = 30.0  # from the end of the headers to the end of the body
    keepalive_timeout_s: float = 15.0  # idle between requests (and before the first one)
    max_connections: int = 1024  # open at once per listener; more are answered 503 and closed


RETENTION_DEFAULTS: Mapping[str, int] = MappingProxyType({"messages": 365, "calls": 365, "sends": 365, "access": 730})
DEFAULT_RECORDS_URL = "sqlite:///records.sqlite3"


def _hhmm(text: str) -> time:
    hour, minute = text.split(":")
    return time(int(hour), int(minute))


@dataclass(frozen=True, slots=True)
class RecordsConfig:
    """gateway.yaml `records:`: the SQL archive's URL, retention periods and writer bounds."""

    url_env: str = "GATEWAY_RECORDS_URL"
    # A relative SQLite path is already resolved against gateway.yaml's directory here.
    url: str = DEFAULT_RECORDS_URL
    # Days each kind of record is kept: messages (texts and thread history), calls (raw call
    # records), sends, access (audit of who read what). Roll-ups hold no personal data: kept.
    retention_days: Mapping[str, int] = field(default_factory=lambda: RETENTION_DEFAULTS)
    purge_at: str = "03:30"  # the daily purge, Asia/Seoul
    office_hours: str = "09:00-18:00"  # working days; outside is "after hours" in the inbox report
    stream_maxlen: int = 1_000_000  # facts waiting in Redis for the writer, at most (older are trimmed)
    batch_size: int = 1000  # facts per write transaction

    @property
    def purge_time(self) -> time:
        return _hhmm(self.purge_at)

    @property
    def office_start(self) -> time:
        return _hhmm(self.office_hours.split("-")[0])

    @property
    def office_end(self) -> time:
        return _hhmm(self.office_hours.split("-")[1])


def _resolve_records_url(url: str, base: Path) -> str:
    """A relative SQLite file is relative to `base` (gateway.yaml's directory), like `rules_dir`."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
        return f"{prefix}{(base / url[len(prefix) :]).absolute()}"
    return url


def _records(section: Mapping[str, Any], source: Path, label: str, lines: Lines) -> RecordsConfig:
    office = str(section.get("office_hours", "09:00-18:00"))
    start, end = (_hhmm(t) for t in office.split("-"))
    if start >= end:
        line = line_of(lines, ("records", "office_hours"))
        raise ConfigError(f"{label}:{line}: records.office_hours: {office!r} ends before it starts")
    # The embedded default lives inside the package: its relative file goes to the working directory.
    base = Path.cwd() if source == DEFAULT_CONFIG else source.parent
    return RecordsConfig(
        url_env=section.get("url_env", "GATEWAY_RECORDS_URL"),
        url=_resolve_records_url(str(section.get("url", DEFAULT_RECORDS_URL)), base),
        retention_days=MappingProxyType({**RETENTION_DEFAULTS, **(section.get("retention_days") or {})}),
        purge_at=str(section.get("purge_at", "03:30")),
        office_hours=office,
        stream_maxlen=int(section.get("stream_maxlen", 1_000_000)),
        batch_size=int(section.get("batch_size", 1000)),
    )


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """gateway.yaml `console:`: the staff console's listener and sign-in rules (gateway.console)."""

    host: str = "127.0.0.1"
    port: int = 8090
    # The session cookie's Secure flag: on behind the city's TLS reverse proxy (the default);
    # off only for a console reached over plain HTTP on loopback (the demo).
    secure_cookie: bool = True
    session_idle_minutes: int = 30  # signed out after this long without a request
    session_max_hours: int = 12  # and after this long in any case (one shift)
    lockout_failures: int = 5  # consecutive failed logins that lock an account
    lockout_minutes: int = 30  # for this long (an admin may unlock it sooner)
    waiting_minutes: int = 30  # a citizen's unanswered text older than this is "waiting too long"


def _console(section: Mapping[str, Any] | None) -> ConsoleConfig | None:
    if section is None:
        return None
    return ConsoleConfig(**dict(section))


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: str
    pbxes: tuple[PbxConfig, ...]
    redis_url: str
    redis_url_env: str
    http_host: str
    http_port: int
    rules_dir: Path
    carriers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    number_key_env: str = "GATEWAY_NUMBER_KEY"
    data_key_env: str = "GATEWAY_DATA_KEY"
    dedupe_ttl_s: int = 21600
    alimtalk: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sms: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    webhooks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    inbound: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    unsubscribe: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    smtp: Mapping[str, Any] = field(default_factory=dict)  # empty: no SMTP intake
    worker_threads: int = 4
    queue_namespace: str = "gw"
    # A killed worker's jobs are re-queued once its heartbeat is this old (dramatiq: 60 s).
    heartbeat_timeout_ms: int = 60_000
    maintenance_chance: int = 1000
    log_json: bool = True
    log_level: str = "INFO"
    shutdown_timeout_s: float = 20.0
    ready_timeout_s: float = 30.0
    worker_http_host: str = "127.0.0.1"
    worker_http_port: int | None = None  # the worker's /healthz, /health and /metrics; None: no listener
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    # /health and /metrics on their own listener (and not on the public one); None: on the public one.
    http_internal_host: str = "127.0.0.1"
    http_internal_port: int | None = None
    records: RecordsConfig = field(default_factory=RecordsConfig)
    console: ConsoleConfig | None = None  # None: no console listener
    sentinel_password_env: str = redisurl.DEFAULT_PASSWORD_ENV
    # Redis WAIT after the durable writes (gateway.infra.wire.ReplicaAck); 0: not waited for.
    min_replicas_ack: int = 0
    replica_ack_timeout_ms: int = 500

    def records_url(self, environ: Mapping[str, str]) -> str:
        """The records database's URL: the `records.url_env` variable, else `records.url`."""
        return environ.get(self.records.url_env, "") or self.records.url

    def resolved_redis_url(self, environ: Mapping[str, str]) -> str:
        """The Redis URL from the environment variable, else the file; "" if neither. A
        `redis+sentinel://` URL names the sentinels' password variable when it is not the default."""
        url = environ.get(self.redis_url_env, "") or self.redis_url
        return redisurl.with_password_env(url, self.sentinel_password_env)

    def number_key(self, environ: Mapping[str, str]) -> bytes:
        value = environ.get(self.number_key_env, "")
        if len(value) < 16:
            raise ConfigError(
                f"environment variable {self.number_key_env} must hold a secret of at least "
                "16 characters (it keys the hashes of citizens' numbers)"
            )
        return value.encode()

    def sealer(self, environ: Mapping[str, str]) -> Sealer:
        return Sealer.from_env(environ.get(self.data_key_env, ""), self.data_key_env)


def _smtp(section: Mapping[str, Any], source: Path, label: str, lines: Lines) -> dict[str, Any]:
    """The `smtp:` section with its TLS settings checked now, at startup (each file read and
    parsed; an error names the file, line and key), and their paths made absolute (relative
    ones are read from the directory of gateway.yaml, like `rules_dir`)."""
    smtp = dict(section)

    def where(key: str) -> str:
        return f"{label}:{line_of(lines, ('smtp', key))}: smtp.{key}"

    cert, key = smtp.get("tls_cert"), smtp.get("tls_key")
    if smtp.get("require_tls") and not (cert and key):
        raise ConfigError(f"{where('require_tls')}: requiring STARTTLS needs smtp.tls_cert and smtp.tls_key")
    if bool(cert) != bool(key):
        raise ConfigError(
            f"{where('tls_cert' if cert else 'tls_key')}: smtp.{'tls_key' if cert else 'tls_cert'} is needed too"
        )
    if cert and key:
        paths = {name: (source.parent / str(smtp[name])).absolute() for name in ("tls_cert", "tls_key")}
        try:
            server_context(paths["tls_cert"], paths["tls_key"])
        except TlsFileError as exc:
            raise ConfigError(f"{where('tls_' + exc.setting)}: {exc}") from None
        smtp.update({name: str(path) for name, path in paths.items()})
    return smtp


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load and validate gateway.yaml (the embedded default when `path` is None)."""
    source = path or DEFAULT_CONFIG
    label = file_label(source)
    try:
        data, lines = load_yaml(source, label)
    except RulesError as exc:
        raise ConfigError(str(exc)) from exc
    if isinstance(data, dict) and "api" in data:
        # Issue #16: the shared staff-API token is gone; each person has their own.
        raise ConfigError(
            f"{label}:{line_of(lines, ('api',))}: api: the shared staff-API token was removed; "
            "delete this section and give each person a token of their own (gateway staff token USER)"
        )
    problems = validate(data, SCHEMA, lines, label)
    if problems:
        raise ConfigError("\n".join(problems))
    env = os.environ if environ is None else environ
    names = [p["name"] for p in data["pbx"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"{label}: pbx names must be unique, got {names}")
    if "rules_dir" in data:
        rules_dir = (source.parent / data["rules_dir"]).resolve()
    else:
        rules_dir = Path(env.get("GATEWAY_RULES", "")) if env.get("GATEWAY_RULES") else PROJECT_RULES
    redis = data.get("redis", {})
    http = data.get("http", {})
    outbox = data.get("outbox", {})
    log = data.get("log", {})
    return GatewayConfig(
        source=label,
        pbxes=tuple(
            PbxConfig(
                name=p["name"],
                host=p["host"],
                port=p.get("port", 5038),
                username=p["username"],
                secret_env=p["secret_env"],
                trunks=tuple(p.get("trunks", ())),
                ping_interval_s=float(p.get("ping_interval_s", 5.0)),
                ping_timeout_s=float(p.get("ping_timeout_s", 5.0)),
                backoff_max_s=float(p.get("backoff_max_s", 30.0)),
            )
            for p in data["pbx"]
        ),
        redis_url=redis.get("url", ""),
        redis_url_env=redis.get("url_env", "REDIS_URL"),
        sentinel_password_env=redis.get("sentinel_password_env", redisurl.DEFAULT_PASSWORD_ENV),
        min_replicas_ack=int(redis.get("min_replicas_ack", 0)),
        replica_ack_timeout_ms=int(redis.get("replica_ack_timeout_ms", 500)),
        http_host=http.get("host", "127.0.0.1"),
        http_port=int(http.get("port", 8080)),
        rules_dir=rules_dir,
        carriers=data.get("carriers") or {"sandbox": {"kind": "sandbox"}},
        number_key_env=outbox.get("number_key_env", "GATEWAY_NUMBER_KEY"),
        data_key_env=outbox.get("data_key_env", "GATEWAY_DATA_KEY"),
        alimtalk=data.get("alimtalk") or {},
        sms=data.get("sms") or {},
        webhooks=data.get("webhooks") or {},
        inbound=data.get("inbound") or {},
        unsubscribe=data.get("unsubscribe") or {},
        console=_console(data.get("console")),
        smtp=_smtp(data.get("smtp") or {}, source, label, lines),
        worker_threads=int((data.get("worker") or {}).get("threads", 4)),
        queue_namespace=(data.get("worker") or {}).get("namespace", "gw"),
        heartbeat_timeout_ms=int((data.get("worker") or {}).get("heartbeat_timeout_ms", 60_000)),
        maintenance_chance=int((data.get("worker") or {}).get("maintenance_chance", 1000)),
        dedupe_ttl_s=int(outbox.get("dedupe_ttl_s", 21600)),
        log_json=bool(log.get("json", True)),
        log_level=log.get("level", "INFO"),
        shutdown_timeout_s=float(data.get("shutdown_timeout_s", 20.0)),
        ready_timeout_s=float(data.get("ready_timeout_s", 30.0)),
        worker_http_host=(data.get("worker") or {}).get("http_host", "127.0.0.1"),
        worker_http_port=(data.get("worker") or {}).get("http_port"),
        http_limits=HttpLimits(
            header_timeout_s=float(http.get("header_timeout_s", 10.0)),
            body_timeout_s=float(http.get("body_timeout_s", 30.0)),
            keepalive_timeout_s=float(http.get("keepalive_timeout_s", 15.0)),
            max_connections=int(http.get("max_connections", 1024)),
        ),
        http_internal_host=http.get("internal_host", "127.0.0.1"),
        http_internal_port=http.get("internal_port"),
        records=_records(data.get("records") or {}, source, label, lines),
    )
