"""JSON encoding for HTTP responses and the Socket.IO server, backed by orjson."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def dumps(obj: Any) -> str:
    """Encode to a str (aiohttp's ``json_response`` wants text)."""
    return orjson.dumps(obj).decode()


def json_response(data: Any, *, status: int = 200) -> web.Response:
    """A JSON response encoded once with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
