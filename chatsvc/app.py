"""The application factory: the one place that wires state, middlewares, routes and Socket.IO."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

from aiohttp import web

from chatsvc.auth import PasswordHasher, TokenService
from chatsvc.config import Config
from chatsvc.db import Database
from chatsvc.errors import error_middleware
from chatsvc.http import chatrooms, demo, favorites, friends, history, ops, sidecar, users
from chatsvc.http.middleware import auth_middleware, cors_middleware, security_headers
from chatsvc.http.observe import observe_middleware
from chatsvc.instance_lock import InstanceLock
from chatsvc.metrics import METRICS, Metrics
from chatsvc.order_lock import cluster_ctx
from chatsvc.realtime.events import create_socket_server
from chatsvc.state import STATE, AppState
from chatsvc.store.settings import get_or_create_setting
from chatsvc.throttle import Throttle
from chatsvc.writer import MessageWriter

log = logging.getLogger(__name__)


def create_app(config: Config) -> web.Application:
    """Build the aiohttp application with its Socket.IO server attached."""
    app = web.Application(
        # Observation outermost, so it logs and counts the final response; then CORS,
        # so error responses carry its headers too.
        middlewares=[observe_middleware, cors_middleware, error_middleware, auth_middleware],
        client_max_size=config.max_http_body,
        # aiohttp's keep-alive timer runs from when a connection opens or its last response ends until a
        # request's headers are complete, and bytes trickling in do not reset it: it bounds slow headers.
        handler_args={"keepalive_timeout": config.header_timeout},
    )
    state = AppState(
        config=config,
        db=Database(config.db_path, synchronous=config.sqlite_synchronous),
        hasher=PasswordHasher(config.scrypt_n, config.hash_concurrency),
        throttle=Throttle(config.login_failures, config.register_rate),
    )
    state.writer = MessageWriter(state.db, state.profiles, max_batch=config.write_batch_max)
    app[STATE] = state
    # The cluster (Redis, CHATSVC_REDIS_URL) outlives the database: the writer publishes through it until it stops.
    app.cleanup_ctx.append(cluster_ctx)
    app.cleanup_ctx.append(_database_ctx)
    for module in (users, chatrooms, history, friends, favorites, demo, sidecar, ops):
        app.add_routes(module.routes)
    state.sio = create_socket_server(state)
    state.sio.attach(app)
    metrics = Metrics()
    metrics.bind(state)
    state.sio.event_observer = metrics.observe_socket_event
    app[METRICS] = metrics
    app.on_response_prepare.append(security_headers)
    app.on_shutdown.append(_close_sockets)
    return app


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    # Claimed before opening, so a refused process neither migrates nor writes the database.
    lock = InstanceLock(state.config.db_path, shared=state.config.redis_url is not None)
    await asyncio.to_thread(lock.acquire)
    try:
        await state.db.open()
        secret = state.config.jwt_secret
        if secret is None:
            # Generated once and kept, so tokens survive a restart with no configuration.
            async with state.db.transaction() as conn:
                secret = await get_or_create_setting(conn, "jwt_secret", secrets.token_urlsafe(48))
    except BaseException:
        await state.db.close()
        lock.release()
        raise
    state.tokens = TokenService(secret, state.config.token_ttl_seconds, state.config.session_max_age_seconds)
    state.writer.start()
    log.debug("database ready at %s", state.config.db_path)
    yield
    await state.writer.close()
    await state.db.close()
    lock.release()


async def _close_sockets(app: web.Application) -> None:
    state = app[STATE]
    await state.realtime.close()
    await state.sio.shutdown()
