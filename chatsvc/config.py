"""All settings of chatsvc, read from the environment in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

SocketAuthMode = Literal["token", "trust-client"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class Config:
    """Immutable service settings; see docs/configuration.md for each one."""

    host: str = "0.0.0.0"
    port: int = 3005
    db_path: Path = Path("data/chatsvc.db")
    # None: a random secret is generated once and kept in the database.
    jwt_secret: str | None = None
    token_ttl_seconds: int = 7 * 24 * 3600
    cors_origins: tuple[str, ...] = ("*",)
    socket_auth: SocketAuthMode = "token"
    # scrypt cost (N). 2**15 takes ~80 ms and 32 MiB per hash; tests lower it.
    scrypt_n: int = 2**15
    message_max_length: int = 500
    history_default_limit: int = 100
    history_max_limit: int = 1000
    max_http_body: int = 1024 * 1024
    max_socket_payload: int = 64 * 1024
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # Per-connection token bucket for sendMessage: messages/s (0 = off) and burst.
    rate_limit: float = 20.0
    rate_burst: int = 40
    max_connections_per_user: int = 20
    recovery_limit: int = 500
    # Most messages committed in one transaction; see chatsvc/writer.py.
    write_batch_max: int = 512
    smtp_url: str | None = None
    mail_from: str = "chatsvc@localhost"
    # None: one instance, in-process fan-out. Set: several instances share rooms through Redis (chatsvc/cluster.py).
    redis_url: str | None = None
    redis_channel: str = "chatsvc"
    # None: the sidecar API (chatsvc/http/sidecar.py) is off and its routes answer 404.
    api_key: str | None = None
    log_format: LogFormat = "text"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a Config from CHATSVC_* variables, then apply explicit overrides (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "CHATSVC_HOST" in env:
            values["host"] = env["CHATSVC_HOST"]
        if "CHATSVC_PORT" in env:
            values["port"] = _int(env, "CHATSVC_PORT", minimum=0, maximum=65535)
        if "CHATSVC_DB" in env:
            values["db_path"] = Path(env["CHATSVC_DB"])
        if env.get("CHATSVC_JWT_SECRET"):
            values["jwt_secret"] = env["CHATSVC_JWT_SECRET"]
        if "CHATSVC_TOKEN_TTL" in env:
            values["token_ttl_seconds"] = _int(env, "CHATSVC_TOKEN_TTL", minimum=1)
        if "CHATSVC_CORS_ORIGINS" in env:
            origins = tuple(o.strip() for o in env["CHATSVC_CORS_ORIGINS"].split(",") if o.strip())
            values["cors_origins"] = origins or ("*",)
        if "CHATSVC_SOCKET_AUTH" in env:
            mode = env["CHATSVC_SOCKET_AUTH"]
            if mode not in ("token", "trust-client"):
                raise ValueError("CHATSVC_SOCKET_AUTH must be 'token' or 'trust-client'")
            values["socket_auth"] = mode
        if "CHATSVC_SCRYPT_N" in env:
            values["scrypt_n"] = _int(env, "CHATSVC_SCRYPT_N", minimum=2)
        if "CHATSVC_MAX_HTTP_BODY" in env:
            values["max_http_body"] = _int(env, "CHATSVC_MAX_HTTP_BODY", minimum=1024)
        if "CHATSVC_MAX_SOCKET_PAYLOAD" in env:
            values["max_socket_payload"] = _int(env, "CHATSVC_MAX_SOCKET_PAYLOAD", minimum=1024)
        if "CHATSVC_SQLITE_SYNCHRONOUS" in env:
            sync = env["CHATSVC_SQLITE_SYNCHRONOUS"].upper()
            if sync not in ("FULL", "NORMAL"):
                raise ValueError("CHATSVC_SQLITE_SYNCHRONOUS must be FULL or NORMAL")
            values["sqlite_synchronous"] = sync
        if "CHATSVC_RATE_LIMIT" in env:
            values["rate_limit"] = _float(env, "CHATSVC_RATE_LIMIT")
        if "CHATSVC_RATE_BURST" in env:
            values["rate_burst"] = _int(env, "CHATSVC_RATE_BURST", minimum=1)
        if "CHATSVC_MAX_CONNECTIONS_PER_USER" in env:
            values["max_connections_per_user"] = _int(env, "CHATSVC_MAX_CONNECTIONS_PER_USER", minimum=1)
        if "CHATSVC_RECOVERY_LIMIT" in env:
            values["recovery_limit"] = _int(env, "CHATSVC_RECOVERY_LIMIT", minimum=0)
        if env.get("CHATSVC_SMTP_URL"):
            values["smtp_url"] = env["CHATSVC_SMTP_URL"]
        if "CHATSVC_MAIL_FROM" in env:
            values["mail_from"] = env["CHATSVC_MAIL_FROM"]
        if env.get("CHATSVC_API_KEY"):
            values["api_key"] = env["CHATSVC_API_KEY"]
        if "CHATSVC_LOG_FORMAT" in env:
            log_format = env["CHATSVC_LOG_FORMAT"].lower()
            if log_format not in ("text", "json"):
                raise ValueError("CHATSVC_LOG_FORMAT must be 'text' or 'json'")
            values["log_format"] = log_format
        if "CHATSVC_LOG_LEVEL" in env:
            level = env["CHATSVC_LOG_LEVEL"].upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise ValueError("CHATSVC_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
            values["log_level"] = level
        if env.get("CHATSVC_REDIS_URL"):
            if not env["CHATSVC_REDIS_URL"].startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("CHATSVC_REDIS_URL must be a redis://, rediss:// or unix:// URL")
            values["redis_url"] = env["CHATSVC_REDIS_URL"]
        if env.get("CHATSVC_REDIS_CHANNEL"):
            values["redis_channel"] = env["CHATSVC_REDIS_CHANNEL"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        if config.scrypt_n & (config.scrypt_n - 1):
            raise ValueError("CHATSVC_SCRYPT_N must be a power of two")
        return config

    def with_changes(self, **changes: Any) -> Config:
        """A copy with some settings changed (used by tests and the CLI)."""
        return replace(self, **changes)


def _int(env: Mapping[str, str], name: str, *, minimum: int, maximum: int | None = None) -> int:
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} is out of range: {value}")
    return value


def _float(env: Mapping[str, str], name: str) -> float:
    raw = env[name]
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0")
    return value
