"""The outermost middleware: a request id, one log line and the metrics of every HTTP request.

It replaces aiohttp's access log (the server is run with ``access_log=None``),
so each request is logged exactly once, after its response, with the route it
matched, its status, its duration and the caller's user id when logged in.
Query strings are never logged: Socket.IO clients may carry a token there.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from chatsvc.http.middleware import CALLER_KEY, Handler
from chatsvc.logs import REQUEST_ID_HEADER, REQUEST_ID_KEY, access_log, request_id_for
from chatsvc.metrics import METRICS, UNMATCHED_ROUTE

# Logged for a request whose client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag the request with an id (echoed in ``X-Request-Id``), then log and count it once answered."""
    request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID_KEY] = request_id
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    except ConnectionResetError:
        # The client went away mid-request (e.g. while sending its body): this request's line says so,
        # and there is no one to answer (aiohttp drops a response to a closed connection quietly).
        status = CLIENT_CLOSED
        return web.Response(status=CLIENT_CLOSED)
    else:
        status = response.status
        # A WebSocket (Socket.IO) response has been sent already: its headers are gone.
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        _record(request, request_id, status, time.perf_counter() - started)


def _record(request: web.Request, request_id: str, status: int, seconds: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else UNMATCHED_ROUTE
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.observe_request(request.method, route, status, seconds)
    found = request.get(CALLER_KEY)
    user_id = found.id if found is not None else None
    access_log.info(
        "%s %s %s %.1fms rid=%s user=%s",
        request.method,
        request.path,
        status,
        seconds * 1000,
        request_id,
        user_id,
        extra={
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "remote": request.remote,
            "user_id": user_id,
        },
    )
