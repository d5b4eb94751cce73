"""JSON encoding for HTTP responses and the Socket.IO server, backed by orjson."""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web


def dumps(obj: Any) -> str:
    """Encode to a str (aiohttp's ``json_response`` wants text)."""
    return orjson.dumps(obj).decode()


# Answers are per user and often private: no cache, shared or not, may keep them.
# (X-Content-Type-Options goes on every response: chatsvc/http/middleware.py security_headers.)
JSON_HEADERS = {"Cache-Control": "no-store"}


def json_response(data: Any, *, status: int = 200) -> web.Response:
    """A JSON response encoded once with orjson, that no cache may keep."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=JSON_HEADERS)


class SocketJSON:
    """The ``json`` module python-socketio and python-engineio are given: orjson with their signatures.

    They call ``dumps(obj, separators=...)`` and expect ``str``. orjson refuses
    some of what the stdlib accepts (lone surrogate escapes, NaN, integers past
    64 bits), so both directions fall back to the stdlib there: the event's own
    validation then refuses such a value with a clear error, instead of the
    packet being dropped unanswered.
    """

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        """Encode compactly (the only separators python-socketio asks for)."""
        try:
            return orjson.dumps(obj).decode()
        except TypeError:  # integers beyond 64 bits, which orjson does not encode
            return json.dumps(obj, separators=(",", ":"))

    @staticmethod
    def loads(data: str | bytes, **_: Any) -> Any:
        """Decode with orjson, or the stdlib for inputs orjson refuses."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)
