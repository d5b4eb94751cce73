"""Logging: plain text or JSON lines, request ids, and the lines for socket connections.

Every HTTP request and every Socket.IO connect and disconnect writes one line
carrying a request id. The id comes from the client's ``X-Request-Id`` header
when it sends a sensible one, or is generated; the response echoes it, and a
socket's lines carry the id of the HTTP request that opened it.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from typing import Any

import orjson
from aiohttp import web

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_KEY = web.RequestKey("chatsvc_request_id", str)
# Where a Socket.IO session's compact environ keeps that id.
REQUEST_ID_ENVIRON = "chatsvc.request_id"
# A client's id is kept only if it is short and plain, so it cannot forge log lines.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# Libraries whose DEBUG lines may carry secrets (SQL parameters): never below WARNING.
QUIET_LOGGERS = ("aiosqlite",)

access_log = logging.getLogger("chatsvc.access")
socket_log = logging.getLogger("chatsvc.socket")

# Attributes every LogRecord has; anything else was passed with ``extra=`` and goes into JSON lines.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def request_id_for(header: str | None) -> str:
    """The client's request id if it is acceptable, otherwise a new one."""
    if header is not None and _CLIENT_REQUEST_ID.match(header):
        return header
    return secrets.token_hex(8)


def request_id_of_environ(environ: dict[str, Any] | None) -> str | None:
    """The request id of the HTTP request that opened a Socket.IO connection, if known."""
    environ = environ or {}
    if REQUEST_ID_ENVIRON in environ:  # the compact environ a session keeps (chatsvc/realtime/server.py)
        kept: str | None = environ[REQUEST_ID_ENVIRON]
        return kept
    request = environ.get("aiohttp.request")
    if isinstance(request, web.BaseRequest):
        return request.get(REQUEST_ID_KEY)
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Send every log record to stderr, as text lines or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # At DEBUG the driver logs every statement with its parameters: password hashes, codes, the token secret.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def log_socket_event(
    event: str, sid: str, user_id: int | None, environ: dict[str, Any] | None, reason: str | None = None
) -> None:
    """One line for a Socket.IO connect or disconnect."""
    request_id = request_id_of_environ(environ)
    socket_log.info(
        "socket %s sid=%s user=%s%s rid=%s",
        event,
        sid,
        user_id,
        f" reason={reason}" if reason else "",
        request_id,
        extra={"event": event, "sid": sid, "user_id": user_id, "reason": reason, "request_id": request_id},
    )


class ThrottledLog:
    """Warning lines about one kind of client misbehaviour, at most ``burst`` at once and ``per_minute`` after.

    A client can repeat a bad request as fast as it likes; the log must not
    grow as fast. Lines over the allowance are counted, and the next line
    that is written says how many were left out.
    """

    def __init__(self, logger: logging.Logger, *, burst: int = 20, per_minute: int = 60) -> None:
        self.logger = logger
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.allowance = float(burst)
        self.updated = time.monotonic()
        self.left_out = 0
        # Every occurrence, written or not (read by chatsvc/metrics.py).
        self.count = 0

    def warning(self, message: str, *args: Any) -> None:
        """Write one warning line, unless too many were written lately."""
        self.count += 1
        now = time.monotonic()
        self.allowance = min(self.burst, self.allowance + (now - self.updated) * self.rate)
        self.updated = now
        if self.allowance < 1:
            self.left_out += 1
            return
        self.allowance -= 1
        if self.left_out:
            message += " (%d similar lines left out)"
            args = (*args, self.left_out)
            self.left_out = 0
        self.logger.warning(message, *args)
