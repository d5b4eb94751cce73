"""All settings of chatsvc, read from the environment in one place."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from chatsvc.files.sniff import DEFAULT_ALLOWED as DEFAULT_UPLOAD_TYPES
from chatsvc.files.sniff import KNOWN_TYPES as KNOWN_UPLOAD_TYPES

SocketAuthMode = Literal["token", "trust-client"]
LogFormat = Literal["text", "json"]
WebhookSenderMode = Literal["process", "inline"]


def _default_hash_concurrency() -> int:
    """Half the CPUs this process may run on, at least one: the rest stay free for the event loop."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // 2)


@dataclass(frozen=True)
class Config:
    """Immutable service settings; see docs/configuration.md for each one."""

    host: str = "0.0.0.0"
    port: int = 3005
    db_path: Path = Path("data/chatsvc.db")
    # postgresql://user:password@host:port/database: PostgreSQL instead of the SQLite file of db_path.
    database_url: str | None = None
    # Most connections each instance opens to PostgreSQL.
    database_pool_size: int = 10
    # None: a random secret is generated once and kept in the database.
    jwt_secret: str | None = None
    token_ttl_seconds: int = 7 * 24 * 3600
    cors_origins: tuple[str, ...] = ("*",)
    socket_auth: SocketAuthMode = "token"
    # scrypt cost (N). 2**15 takes ~80 ms and 32 MiB per hash; tests lower it.
    scrypt_n: int = 2**15
    # Most password hashes computed at once; more wait their turn (chatsvc/auth.py PasswordHasher).
    hash_concurrency: int = field(default_factory=_default_hash_concurrency)
    # Failed logins allowed per username and per client address in 15 minutes (0 = no limit).
    login_failures: int = 10
    # Registrations allowed per client address in an hour (0 = no limit).
    register_rate: int = 30
    # A session (a login and the tokens renewed from it) ends this long after the login.
    session_max_age_seconds: int = 30 * 24 * 3600
    # Reverse proxies in front that append to X-Forwarded-For; 0 = the peer address is the client's.
    proxy_hops: int = 0
    message_max_length: int = 500
    history_default_limit: int = 100
    history_max_limit: int = 1000
    max_http_body: int = 1024 * 1024
    max_socket_payload: int = 64 * 1024
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # Per-connection token bucket for sendMessage: messages/s (0 = off) and burst.
    rate_limit: float = 20.0
    rate_burst: int = 40
    # A bucket of its own for markRead and typing, so that marking every message received is not refused.
    receipt_rate: float = 200.0
    receipt_burst: int = 400
    max_connections_per_user: int = 20
    # Engine.IO keep-alive: a ping every interval; a client that has not answered within the timeout is dropped.
    ping_interval: int = 25
    ping_timeout: int = 20
    recovery_limit: int = 500
    # Seconds after sending during which a message may be edited (0 = no limit).
    edit_window: int = 86400
    # Seconds after a user's last `typing: true` that the server announces they stopped (docs/protocol.md#typing).
    typing_timeout: float = 6.0
    # Bound of each socket's outgoing queue (chatsvc/realtime/engine.py SendQueue): past it the socket is cut off.
    socket_queue_packets: int = 10_000
    socket_queue_bytes: int = 16 * 1024 * 1024
    # Engine.IO sessions that have not completed the Socket.IO connect: at most this many in all, and from
    # one client address (0: no bound).
    max_pending_sessions: int = 10_000
    max_pending_sessions_per_address: int = 1_000
    # Seconds a connection may take to send a complete request (its headers) from when it opens or its
    # previous response ends; also how long an idle kept-alive connection stays open.
    header_timeout: float = 15.0
    # Most messages committed in one transaction; see chatsvc/writer.py.
    write_batch_max: int = 512
    smtp_url: str | None = None
    mail_from: str = "chatsvc@localhost"
    # None: one instance, in-process fan-out. Set: instances share rooms through Redis (chatsvc/fanout/redis.py).
    redis_url: str | None = None
    redis_channel: str = "chatsvc"
    # None: the sidecar API (chatsvc/http/sidecar.py) is off and its routes answer 404.
    api_key: str | None = None
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    # --- files (chatsvc/files/) ---
    # None: the folder "files" beside the database.
    files_dir: Path | None = None
    max_upload: int = 10 * 1024 * 1024
    upload_types: tuple[str, ...] = DEFAULT_UPLOAD_TYPES
    # An upload no message or profile refers to is removed this long after it was made; the sweep runs this often.
    upload_unused_ttl: int = 24 * 3600
    upload_sweep_interval: int = 3600
    # None: files are kept on disk. Set: in S3-compatible object storage (chatsvc/files/s3.py).
    s3_url: str | None = None
    # The S3 endpoint as browsers reach it, for presigned URLs (None: the endpoint of s3_url).
    s3_public_url: str | None = None
    # Base of the URLs upload answers give (None: the scheme and host the request came to).
    public_url: str | None = None
    # --- webhooks for unseen messages (chatsvc/webhooks.py) ---
    # None: off. Set: each message some member had no socket in its room for is POSTed here, signed.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # A delivery is retried for this long after its message, waiting backoff * 2 ** attempts (at most
    # backoff_max) between attempts; each attempt waits at most timeout for the answer.
    webhook_retry_window: int = 24 * 3600
    webhook_backoff: float = 1.0
    webhook_backoff_max: float = 3600.0
    webhook_timeout: float = 10.0
    # "process": the calls are made by a child process of their own (chatsvc/webhook_process.py), off the
    # server's event loop and core; "inline": by a task on the server's event loop.
    webhook_sender: WebhookSenderMode = "process"
    # --- presence (chatsvc/presence.py) ---
    # Seconds a user stays online after their last socket went, so a page reload does not flicker.
    presence_grace: float = 5.0
    # With Redis: seconds an instance's socket counts outlive it, should it stop without clearing them.
    presence_ttl: int = 30

    @property
    def files_path(self) -> Path:
        """The folder uploads are kept in (and spooled through, with S3)."""
        return self.files_dir if self.files_dir is not None else self.db_path.parent / "files"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a Config from CHATSVC_* variables, then apply explicit overrides (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, (field_name, parse) in ENVIRONMENT.items():
            raw = env.get(variable)
            if raw is not None and (raw != "" or field_name not in SKIP_WHEN_EMPTY):
                values[field_name] = parse(variable, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        if config.scrypt_n & (config.scrypt_n - 1):
            raise ValueError("CHATSVC_SCRYPT_N must be a power of two")
        if config.webhook_url is not None and config.webhook_secret is None:
            # Unsigned calls would let anyone who can reach the receiver forge them.
            raise ValueError("CHATSVC_WEBHOOK_URL needs CHATSVC_WEBHOOK_SECRET (the key its calls are signed with)")
        return config

    def with_changes(self, **changes: Any) -> Config:
        """A copy with some settings changed (used by tests and the CLI)."""
        return replace(self, **changes)


Parse = Callable[[str, str], Any]


def _text(name: str, raw: str) -> str:
    return raw


def _path(name: str, raw: str) -> Path:
    # An empty value would be the working directory itself, which SQLite cannot open.
    if not raw.strip():
        raise ValueError(f"{name} must name a file")
    return Path(raw)


def _int(*, minimum: int, maximum: int | None = None) -> Parse:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(f"{name} is out of range: {value}")
        return value

    return parse


def _rate(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0")
    return value


def _positive_seconds(name: str, raw: str) -> float:
    value = _rate(name, raw)
    if value <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0")
    return value


def _choice(*options: str, case: Callable[[str], str] = str) -> Parse:
    def parse(name: str, raw: str) -> str:
        value = case(raw)
        if value not in options:
            raise ValueError(f"{name} must be one of: {', '.join(options)}")
        return value

    return parse


def _origins(name: str, raw: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in raw.split(",") if o.strip()) or ("*",)


# HS256 keys shorter than the hash output are guessable offline from one token (RFC 7518 section 3.2).
JWT_SECRET_MIN_BYTES = 32


def _secret(name: str, raw: str) -> str:
    if len(raw.encode("utf-8", "surrogateescape")) < JWT_SECRET_MIN_BYTES:
        raise ValueError(f"{name} must be at least {JWT_SECRET_MIN_BYTES} bytes long (or unset to generate one)")
    return raw


def _redis_url(name: str, raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{name} must be a redis://, rediss:// or unix:// URL")
    _check_url_port(name, raw)
    return raw


def _database_url(name: str, raw: str) -> str:
    # Checked whole here so that a typo stops the start with one line, before anything connects.
    if not raw.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{name} must be a postgresql:// URL such as postgresql://user:password@host:5432/chatsvc")
    parts = urlsplit(raw)
    _check_url_port(name, raw)
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError(f"{name} must name a host, as in postgresql://user:password@host:5432/chatsvc")
    if not parts.path.strip("/"):
        raise ValueError(f"{name} must name a database, as in postgresql://user:password@host:5432/chatsvc")
    return raw


def _check_url_port(name: str, raw: str) -> None:
    # urlsplit reads the port lazily: asking for it is what raises on a bad one.
    try:
        _ = urlsplit(raw).port
    except ValueError:
        raise ValueError(f"{name} has an invalid port: {raw!r}") from None


def _smtp_url(name: str, raw: str) -> str:
    # chatsvc.mail imports this module, so the one parser of SMTP URLs is imported where it is used.
    from chatsvc.mail import parse_smtp_url

    try:
        parse_smtp_url(raw)
    except ValueError:
        raise ValueError(f"{name} must look like smtp://user:pass@host:port or smtps://user:pass@host:port") from None
    return raw


def _mail_address(name: str, raw: str) -> str:
    # A bad sender is otherwise found only when the first mail is refused, making registration impossible.
    _, address = parseaddr(raw)
    if "\r" in raw or "\n" in raw or not re.fullmatch(r"[^@\s]+@[^@\s]+", address):
        raise ValueError(f"{name} must be a mail address such as chatsvc@example.com, got {raw!r}")
    return raw


def _cors_origins(name: str, raw: str) -> tuple[str, ...]:
    # Browsers send an origin as scheme://host[:port]: anything else (a path, a trailing slash) never matches.
    origins = _origins(name, raw)
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", origin):
            raise ValueError(f"{name}: {origin!r} is not an origin like https://chat.example.com or *")
    return origins


def _upload_types(name: str, raw: str) -> tuple[str, ...]:
    types = tuple(t.strip().lower() for t in raw.split(",") if t.strip())
    unknown = [t for t in types if t not in KNOWN_UPLOAD_TYPES]
    if not types or unknown:
        raise ValueError(f"{name}: {', '.join(unknown) or 'nothing'} is not one of: {', '.join(KNOWN_UPLOAD_TYPES)}")
    return types


def _s3_url(name: str, raw: str) -> str:
    # chatsvc.files imports this module: the one parser of S3 URLs is imported where it is used.
    from chatsvc.files import parse_s3_url

    parse_s3_url(raw, name)
    return raw


def _positive(name: str, raw: str) -> float:
    value = _rate(name, raw)
    if value <= 0:
        raise ValueError(f"{name} must be a number > 0")
    return value


def _http_url(name: str, raw: str) -> str:
    if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", raw):
        raise ValueError(f"{name} must be an http:// or https:// URL such as https://chat.example.com, got {raw!r}")
    _check_url_port(name, raw)
    return raw.rstrip("/")


def _webhook_url(name: str, raw: str) -> str:
    # Checked as other URLs are, but kept as given: a receiver's path may end in a slash.
    _http_url(name, raw)
    return raw


# Longest ping interval or timeout, in seconds (see the ping settings below).
MAX_PING_SECONDS = 86400

# Every environment variable, the Config field it sets, and how its text is read.
ENVIRONMENT: dict[str, tuple[str, Parse]] = {
    "CHATSVC_HOST": ("host", _text),
    "CHATSVC_PORT": ("port", _int(minimum=0, maximum=65535)),
    "CHATSVC_DB": ("db_path", _path),
    "CHATSVC_DATABASE_URL": ("database_url", _database_url),
    "CHATSVC_DATABASE_POOL_SIZE": ("database_pool_size", _int(minimum=1, maximum=1000)),
    "CHATSVC_JWT_SECRET": ("jwt_secret", _secret),
    "CHATSVC_TOKEN_TTL": ("token_ttl_seconds", _int(minimum=1)),
    "CHATSVC_CORS_ORIGINS": ("cors_origins", _cors_origins),
    "CHATSVC_SOCKET_AUTH": ("socket_auth", _choice("token", "trust-client")),
    # Above 2**19 the memory scrypt needs passes what hashlib accepts, and every login would fail.
    "CHATSVC_SCRYPT_N": ("scrypt_n", _int(minimum=2, maximum=2**19)),
    "CHATSVC_LOGIN_FAILURES": ("login_failures", _int(minimum=0)),
    "CHATSVC_REGISTER_RATE": ("register_rate", _int(minimum=0)),
    "CHATSVC_SESSION_MAX_AGE": ("session_max_age_seconds", _int(minimum=1)),
    "CHATSVC_PROXY_HOPS": ("proxy_hops", _int(minimum=0, maximum=10)),
    "CHATSVC_MAX_HTTP_BODY": ("max_http_body", _int(minimum=1024)),
    "CHATSVC_MAX_SOCKET_PAYLOAD": ("max_socket_payload", _int(minimum=1024)),
    "CHATSVC_SQLITE_SYNCHRONOUS": ("sqlite_synchronous", _choice("FULL", "NORMAL", case=str.upper)),
    "CHATSVC_RATE_LIMIT": ("rate_limit", _rate),
    "CHATSVC_RATE_BURST": ("rate_burst", _int(minimum=1)),
    "CHATSVC_RECEIPT_RATE": ("receipt_rate", _rate),
    "CHATSVC_RECEIPT_BURST": ("receipt_burst", _int(minimum=1)),
    "CHATSVC_MAX_CONNECTIONS_PER_USER": ("max_connections_per_user", _int(minimum=1)),
    "CHATSVC_RECOVERY_LIMIT": ("recovery_limit", _int(minimum=0)),
    "CHATSVC_EDIT_WINDOW": ("edit_window", _int(minimum=0)),
    "CHATSVC_TYPING_TIMEOUT": ("typing_timeout", _positive_seconds),
    # Browsers wait pingInterval + pingTimeout with setTimeout, which fires at once past 2**31 ms (24.8 days).
    "CHATSVC_PING_INTERVAL": ("ping_interval", _int(minimum=1, maximum=MAX_PING_SECONDS)),
    "CHATSVC_PING_TIMEOUT": ("ping_timeout", _int(minimum=1, maximum=MAX_PING_SECONDS)),
    "CHATSVC_SOCKET_QUEUE_PACKETS": ("socket_queue_packets", _int(minimum=100)),
    "CHATSVC_SOCKET_QUEUE_BYTES": ("socket_queue_bytes", _int(minimum=64 * 1024)),
    "CHATSVC_MAX_PENDING_SESSIONS": ("max_pending_sessions", _int(minimum=0)),
    "CHATSVC_MAX_PENDING_SESSIONS_PER_ADDRESS": ("max_pending_sessions_per_address", _int(minimum=0)),
    "CHATSVC_HEADER_TIMEOUT": ("header_timeout", _int(minimum=1)),
    "CHATSVC_SMTP_URL": ("smtp_url", _smtp_url),
    "CHATSVC_MAIL_FROM": ("mail_from", _mail_address),
    "CHATSVC_API_KEY": ("api_key", _text),
    "CHATSVC_LOG_FORMAT": ("log_format", _choice("text", "json", case=str.lower)),
    "CHATSVC_LOG_LEVEL": ("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR", case=str.upper)),
    "CHATSVC_REDIS_URL": ("redis_url", _redis_url),
    "CHATSVC_REDIS_CHANNEL": ("redis_channel", _text),
    "CHATSVC_FILES_DIR": ("files_dir", _path),
    "CHATSVC_MAX_UPLOAD": ("max_upload", _int(minimum=1)),
    "CHATSVC_UPLOAD_TYPES": ("upload_types", _upload_types),
    "CHATSVC_UPLOAD_UNUSED_TTL": ("upload_unused_ttl", _int(minimum=1)),
    "CHATSVC_UPLOAD_SWEEP_INTERVAL": ("upload_sweep_interval", _int(minimum=1)),
    "CHATSVC_S3_URL": ("s3_url", _s3_url),
    "CHATSVC_S3_PUBLIC_URL": ("s3_public_url", _http_url),
    "CHATSVC_PUBLIC_URL": ("public_url", _http_url),
    "CHATSVC_WEBHOOK_URL": ("webhook_url", _webhook_url),
    "CHATSVC_WEBHOOK_SECRET": ("webhook_secret", _secret),
    "CHATSVC_WEBHOOK_RETRY_WINDOW": ("webhook_retry_window", _int(minimum=1)),
    "CHATSVC_WEBHOOK_BACKOFF": ("webhook_backoff", _positive),
    "CHATSVC_WEBHOOK_BACKOFF_MAX": ("webhook_backoff_max", _positive),
    "CHATSVC_WEBHOOK_TIMEOUT": ("webhook_timeout", _positive),
    "CHATSVC_WEBHOOK_SENDER": ("webhook_sender", _choice("process", "inline", case=str.lower)),
    "CHATSVC_PRESENCE_GRACE": ("presence_grace", _rate),
    "CHATSVC_PRESENCE_TTL": ("presence_ttl", _int(minimum=3, maximum=86400)),
}
# Settings whose variable, set but empty, means "not set" (a secret, a URL, a key).
SKIP_WHEN_EMPTY = {
    "jwt_secret",
    "smtp_url",
    "api_key",
    "redis_url",
    "redis_channel",
    "files_dir",
    "s3_url",
    "s3_public_url",
    "public_url",
    "database_url",
    "webhook_url",
    "webhook_secret",
}


def database_label(config: Config) -> str:
    """Where the data is, for logs and messages: the SQLite path, or the PostgreSQL URL without its password."""
    return str(config.db_path) if config.database_url is None else url_without_password(config.database_url)


def url_without_password(url: str) -> str:
    """A URL with its password left out, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=user + parts.netloc.rpartition("@")[2]).geturl()


def parse_flag(flag: str, field_name: str, raw: str) -> Any:
    """A command-line flag's value, read and checked exactly as the variable setting the same field is."""
    for variable_field, parse in ENVIRONMENT.values():
        if variable_field == field_name:
            return parse(flag, raw)
    raise KeyError(field_name)
