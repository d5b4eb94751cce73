"""Cross-cutting HTTP behaviour: CORS and security headers on every response, login by default, the client's address.

Routes need a logged-in user unless their handler is marked :func:`public`.
The Socket.IO endpoint is left alone: python-socketio answers its own CORS
and authenticates in its connect handler. Security headers are set just
before any response goes out, Socket.IO's included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chatsvc.auth import bearer_token
from chatsvc.errors import Unauthorized
from chatsvc.state import STATE, Caller

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SOCKETIO_PREFIX = "/socket.io"
CALLER_KEY = web.RequestKey("chatsvc_caller", Caller)
ALLOWED_HEADERS = "Authorization, Content-Type, X-Api-Key, X-Request-Id"
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
PREFLIGHT_MAX_AGE = "86400"
# Replaces aiohttp's "Python/3.x aiohttp/3.x": no library versions for a scanner to match.
SERVER_NAME = "chatsvc"


def public(handler: Handler) -> Handler:
    """Mark a route as needing no login: any Authorization header is ignored."""
    handler.chatsvc_public = True  # type: ignore[attr-defined]
    return handler


def ends_session(handler: Handler) -> Handler:
    """Mark a route whose response must not carry a renewed token (it revokes the caller's tokens)."""
    handler.chatsvc_ends_session = True  # type: ignore[attr-defined]
    return handler


def caller(request: web.Request) -> Caller:
    """The authenticated caller of a route that needs a login."""
    return request[CALLER_KEY]


def client_address(request: web.Request) -> str:
    """The address the request came from, as far as it can be trusted.

    With ``CHATSVC_PROXY_HOPS`` = 0 (the default) it is the peer of the TCP
    connection, which behind a reverse proxy is the proxy. With N > 0, it is
    the Nth address from the right of ``X-Forwarded-For``: the one the
    outermost of our N proxies received the request from. Entries further
    left were written by the client and are ignored.
    """
    hops = request.app[STATE].config.proxy_hops
    peer = request.remote or ""
    if hops == 0:
        return peer
    forwarded = [a.strip() for v in request.headers.getall("X-Forwarded-For", ()) for a in v.split(",") if a.strip()]
    if not forwarded:
        return peer
    # Fewer entries than proxies: the request skipped some; the leftmost is the closest to the client we know.
    return forwarded[-hops] if len(forwarded) >= hops else forwarded[0]


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Name no library version, and tell browsers not to guess content types, on every response."""
    response.headers["Server"] = SERVER_NAME
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def _is_socketio(request: web.Request) -> bool:
    return request.path == SOCKETIO_PREFIX or request.path.startswith(SOCKETIO_PREFIX + "/")


def _allowed_origin(origins: tuple[str, ...], origin: str | None) -> str | None:
    if "*" in origins:
        return "*"
    if origin is not None and origin in origins:
        return origin
    return None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflights before anything else and put CORS headers on every response, errors included."""
    if _is_socketio(request):
        return await handler(request)
    origins = request.app[STATE].config.cors_origins
    allowed = _allowed_origin(origins, request.headers.get("Origin"))
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # Redirects and other non-error exceptions pass the error middleware.
            response = exc
    if allowed is not None:
        response.headers["Access-Control-Allow-Origin"] = allowed
        # X-Request-Id too, so a browser client can quote it in a bug report (see docs/operations.md),
        # and Retry-After, so it can tell its user how long a 429 lasts.
        response.headers["Access-Control-Expose-Headers"] = "token, X-Request-Id, Retry-After"
        if allowed != "*":
            response.headers["Vary"] = "Origin"
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a valid token unless the route is public, and hand back a renewed one of the same session."""
    route_handler: Any = request.match_info.handler
    if (
        _is_socketio(request)
        or getattr(route_handler, "chatsvc_public", False)
        or request.match_info.http_exception is not None
    ):
        return await handler(request)
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise Unauthorized("Login required: send Authorization: Bearer <token>")
    state = request.app[STATE]
    found = await state.authenticate(token)
    request[CALLER_KEY] = found
    response = await handler(request)
    if not getattr(route_handler, "chatsvc_ends_session", False):
        response.headers["token"] = state.issue_token(found.user, found.token_version, found.auth_time)
    return response
