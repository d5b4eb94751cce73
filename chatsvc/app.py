"""The application factory: the one place that builds and wires every long-lived object.

Each object is made once here and handed to whoever needs it through its
constructor; none assigns another's attributes afterwards. Who owns what is
in docs/architecture.md.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from chatsvc.auth import PasswordHasher, TokenService
from chatsvc.cache import AccountCache, MembershipCache, ProfileCache
from chatsvc.config import Config
from chatsvc.db import SqliteDatabase, open_database
from chatsvc.errors import error_middleware
from chatsvc.fanout import Fanout
from chatsvc.fanout.local import LocalFanout
from chatsvc.fanout.redis import RedisFanout
from chatsvc.files import make_file_store
from chatsvc.files.sweep import UploadSweeper
from chatsvc.http import chatrooms, demo, favorites, files, friends, history, ops, presence, sidecar, users
from chatsvc.http.middleware import auth_middleware, cors_middleware, security_headers
from chatsvc.http.observe import observe_middleware
from chatsvc.membership import Membership
from chatsvc.metrics import METRICS, Metrics
from chatsvc.order_lock import OrderLock, order_lock_for
from chatsvc.presence import Presence, make_counter
from chatsvc.realtime.events import ChatNamespace
from chatsvc.realtime.server import ChatSocketServer, build_socket_server
from chatsvc.receipts import ReadPositions, TypingNotices
from chatsvc.search_index import SearchIndexer
from chatsvc.state import STATE, AppState
from chatsvc.throttle import Throttle
from chatsvc.webhook_process import WebhookProcess
from chatsvc.webhooks import OnlineLog, RedisOnlineLog, WebhookSender
from chatsvc.writer import MessageWriter

log = logging.getLogger(__name__)

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


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
    db = open_database(config)
    members, profiles, accounts = MembershipCache(), ProfileCache(), AccountCache()
    metrics = Metrics()
    sio = build_socket_server(config, event_observer=metrics.observe_socket_event)
    # Webhooks for unseen messages: the fan-out records who was online, the sender drains the outbox
    # (in a process of its own, fed the records, unless CHATSVC_WEBHOOK_SENDER=inline).
    online_log: OnlineLog | None = None
    webhooks: WebhookSender | WebhookProcess | None = None
    if config.webhook_url is not None:
        redis_url, relay = config.redis_url, config.webhook_sender == "process"
        online_log = (
            OnlineLog(relay=relay)
            if redis_url is None
            else RedisOnlineLog(redis_url, config.redis_channel, relay=relay)
        )
        webhooks = WebhookProcess(config, db, online_log) if relay else WebhookSender(config, db, online_log)
    fanout: Fanout
    if config.redis_url is not None:
        fanout = RedisFanout(
            sio, members, profiles, accounts, config.redis_url, config.redis_channel, online_log=online_log
        )
        host_id = fanout.host_id
    else:
        fanout = LocalFanout(sio, members, profiles, accounts, online_log=online_log)
        host_id = "local"
    order_lock = order_lock_for(config)
    writer = MessageWriter(
        db,
        profiles,
        fanout,
        order_lock,
        max_batch=config.write_batch_max,
        webhook_outbox=webhooks is not None,
        # SQLite's search index is filled by the writer when it has time; PostgreSQL keeps its own.
        idle_work=SearchIndexer(db) if isinstance(db, SqliteDatabase) else None,
    )
    file_store = make_file_store(config)
    state = AppState(
        config=config,
        db=db,
        hasher=PasswordHasher(config.scrypt_n, config.hash_concurrency),
        throttle=Throttle(config.login_failures, config.register_rate),
        tokens=TokenService(config.token_ttl_seconds, config.session_max_age_seconds),
        members=members,
        profiles=profiles,
        accounts=accounts,
        sio=sio,
        fanout=fanout,
        writer=writer,
        membership=Membership(db, writer, fanout),
        files=file_store,
        upload_sweeper=UploadSweeper(
            db, file_store, max_age=config.upload_unused_ttl, interval=config.upload_sweep_interval
        ),
        webhooks=webhooks,
        reads=ReadPositions(db, fanout),
        typing=TypingNotices(fanout, timeout=config.typing_timeout),
        presence=Presence(
            db,
            fanout,
            make_counter(config.redis_url, config.redis_channel, host_id, config.presence_ttl),
            config.presence_grace,
        ),
    )
    namespace = ChatNamespace(state)
    sio.register_namespace(namespace)
    for event, (handler, in_turn) in namespace.inline_handlers().items():
        sio.handle_inline(event, handler, in_turn=in_turn)
    sio.attach(app)
    metrics.bind(state)
    app[STATE] = state
    app[METRICS] = metrics
    # The fan-out outlives the database: the writer hands batches to it until it stops.
    app.cleanup_ctx.append(_fanout_ctx(fanout))
    app.cleanup_ctx.append(_database_ctx(state, order_lock))
    app.cleanup_ctx.append(_files_ctx(state))
    # Last in, so first out: users still in their grace period are settled while the database and fan-out run.
    app.cleanup_ctx.append(_presence_ctx(state))
    for module in (users, chatrooms, history, friends, favorites, files, demo, sidecar, ops, presence):
        app.add_routes(module.routes)
    app.on_response_prepare.append(security_headers)
    app.on_shutdown.append(_close_sockets(namespace, sio))
    return app


def _fanout_ctx(fanout: Fanout) -> CleanupContext:
    async def fanout_ctx(app: web.Application) -> AsyncIterator[None]:
        await fanout.start()
        yield
        await fanout.close()

    return fanout_ctx


def _database_ctx(state: AppState, order_lock: OrderLock) -> CleanupContext:
    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        config = state.config
        # Claimed before opening, so a refused process neither migrates nor writes the database.
        await state.db.claim(shared=config.redis_url is not None)
        try:
            await state.db.open()
            await state.tokens.load_secret(state.db, config.jwt_secret)
            await order_lock.open()
        except BaseException:
            await order_lock.close()
            await state.db.close()
            raise
        if state.webhooks is not None:
            # Before the writer: what is stored before this counts as delivered, what is stored after does not.
            await state.webhooks.start()
        state.writer.start()
        state.reads.start()
        log.debug("database ready at %s", state.db.describe())
        yield
        await state.reads.close()
        state.typing.close()
        await state.writer.close()
        if state.webhooks is not None:
            await state.webhooks.close()
        await order_lock.close()
        await state.db.close()

    return database_ctx


def _files_ctx(state: AppState) -> CleanupContext:
    async def files_ctx(app: web.Application) -> AsyncIterator[None]:
        await state.files.start()
        state.upload_sweeper.start()
        yield
        await state.upload_sweeper.close()
        await state.files.close()

    return files_ctx


def _presence_ctx(state: AppState) -> CleanupContext:
    async def presence_ctx(app: web.Application) -> AsyncIterator[None]:
        await state.presence.start()
        yield
        await state.presence.close()

    return presence_ctx


def _close_sockets(namespace: ChatNamespace, sio: ChatSocketServer) -> Callable[[web.Application], Awaitable[None]]:
    async def close_sockets(app: web.Application) -> None:
        await namespace.close()
        await sio.shutdown()

    return close_sockets
