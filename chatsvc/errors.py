"""Error classes and the only code that turns an error into JSON.

Every error leaves chatsvc as ``{"statusCode", "message", "error"}``: HTTP
responses through :func:`error_middleware`, socket acknowledgements through
:meth:`ChatError.body`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from aiohttp import web

from chatsvc.jsonutil import json_response

log = logging.getLogger(__name__)


class ChatError(Exception):
    """An error with an HTTP status, safe to show to the client."""

    status: ClassVar[int] = 500
    # HTTP response headers that go with the error (socket acks have none).
    headers: Mapping[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        """The error as the client sees it."""
        return error_body(self.status, self.message)


class BadRequest(ChatError):
    status = 400


class Unauthorized(ChatError):
    status = 401


class Forbidden(ChatError):
    status = 403


class NotFound(ChatError):
    status = 404


class PayloadTooLarge(ChatError):
    status = 413


class UnsupportedMediaType(ChatError):
    status = 415


class TooManyRequests(ChatError):
    status = 429

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            # Whole seconds, rounded up: a client that waits exactly this long is let through.
            self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


class ServiceUnavailable(ChatError):
    status = 503


class StorageUnavailable(ServiceUnavailable):
    """A write failed because the disk is full or failing: nothing was stored, and trying later may work."""


class StartupError(Exception):
    """The service cannot start (database unopenable, in use, too new); the CLI prints it as one line."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status


def error_body(status: int, message: str) -> dict[str, Any]:
    """The canonical error shape, as the original NestJS backend produced it."""
    return {"statusCode": status, "message": message, "error": HTTPStatus(status).phrase}


def error_response(status: int, message: str) -> web.Response:
    """An HTTP response carrying the canonical error body."""
    return json_response(error_body(status, message), status=status)


def client_gone(request: web.BaseRequest) -> bool:
    """Whether the client's connection is closed."""
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn every exception a handler raises into the canonical JSON error."""
    try:
        return await handler(request)
    except ChatError as exc:
        response = error_response(exc.status, exc.message)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        # aiohttp's own: unknown route, wrong method, body too large...
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        response = error_response(exc.status, message)
        for header in ("Allow", "Retry-After"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and client_gone(request):
            # The client went away mid-request, e.g. while sending its body: chatsvc/http/observe.py logs it.
            raise
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "Internal server error")
