"""Routes for operators and tools: health probes, Prometheus metrics, the OpenAPI description."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from chatsvc.db import Database
from chatsvc.errors import ServiceUnavailable
from chatsvc.http.middleware import public
from chatsvc.jsonutil import json_response
from chatsvc.metrics import METRICS
from chatsvc.openapi import openapi_spec
from chatsvc.state import STATE
from chatsvc.store.settings import record_write_probe

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

# A readiness probe must answer quickly even when the database does not.
READY_TIMEOUT_SECONDS = 2.0


@routes.get("/healthz")
@public
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
@public
async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers a query, and takes writes if the last one failed; 503 otherwise."""
    db = request.app[STATE].db
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            ready = await db.ping()
    except Exception as exc:  # a closed or broken database is "not ready", never a 500
        log.warning("readiness check failed: %r", exc)
        ready = False
    if not ready:
        raise ServiceUnavailable("The database is not answering")
    if db.write_failure is not None and not await _writes_again(db):
        raise ServiceUnavailable(f"The database cannot store data: {db.write_failure}")
    return json_response({"status": "ok"})


async def _writes_again(db: Database) -> bool:
    """After a write failed for lack of storage: whether a small write succeeds now (it clears the failure)."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), db.transaction() as conn:
            await record_write_probe(conn)
    except Exception as exc:
        log.warning("readiness write probe failed: %r", exc)
        return False
    return True


@routes.get("/metrics")
@public
async def metrics(request: web.Request) -> web.Response:
    """Every metric in the Prometheus text format."""
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/openapi.json")
@public
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3 description of every HTTP route."""
    return json_response(openapi_spec(request.app[STATE].config))
