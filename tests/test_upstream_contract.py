"""The private parts of python-engineio, python-socketio and aiohttp that chatsvc leans on, on the installed versions.

chatsvc goes below the libraries' public API in one module per library: chatsvc/realtime/server.py for
python-socketio, chatsvc/realtime/engine.py for python-engineio and aiohttp's WebSocket internals (the table
is in docs/performance.md). An upgrade that
renames or changes one of them need not fail anywhere else: a renamed ``_service_task`` would simply leave
silent peers connected. Every assertion here names the upstream function and the chatsvc module that
depends on it. ``make check-upstream`` runs this file, with the transport, delivery and cluster tests,
against the newest releases; docs/performance.md says what to do when it fails.

Three kinds of check: each private name exists with the signature chatsvc calls or overrides; where it is
cheap, it behaves as chatsvc assumes; and the upstream functions chatsvc copies (rather than calls) are
unchanged since the copy was made (``FORKS``; run ``python -m tests.test_upstream_contract`` to print the
fingerprints of the installed versions).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import inspect
import io
import json
import logging
import pathlib
import re
import textwrap
import time
import tokenize
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import engineio
import pytest
import socketio
from aiohttp import web, web_protocol
from aiohttp.test_utils import TestServer
from engineio import async_server as eio_async_server
from engineio import async_socket as eio_async_socket
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_drivers import aiohttp as eio_aiohttp_driver
from engineio.async_socket import AsyncSocket
from socketio import packet as sio_packet
from socketio.base_manager import BaseManager

import chatsvc
from chatsvc.realtime import engine as transport
from chatsvc.realtime.engine import ChatEngineServer, LeanWebSocket, SharedPacket, SocketLimits
from chatsvc.realtime.server import ChatPacket, ChatSocketServer, LeanManager, ack_requested, encode_ack
from chatsvc.realtime.websocket import WebSocketProtocol, take_over, websocket_frame
from tests.helpers import EVENT_TIMEOUT, connect_socket

log = logging.getLogger(__name__)


def upstream_name(owner: Any, name: str) -> str:
    """``module.Class.name``, the way to find the function in the library's source."""
    return f"{owner.__module__}.{owner.__qualname__}.{name}"


# -- names and signatures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Touch:
    """One private (or undocumented) function of a library that chatsvc calls, overrides or matches."""

    owner: Any
    name: str
    kind: str  # "def", "async def", "async generator" or "classmethod"
    signature: str  # str(inspect.signature(...)) of the installed version chatsvc was written against
    user: str  # the chatsvc module under chatsvc/, and what in it depends on this

    @property
    def upstream(self) -> str:
        return upstream_name(self.owner, self.name)


TOUCHES = [
    # python-engineio
    Touch(engineio.AsyncServer, "start_background_task", "def", "(self, target, *args, **kwargs)",
          "realtime/engine.py ChatEngineServer.start_background_task (turns each socket's ping task into a timer)"),
    Touch(engineio.AsyncServer, "_service_task", "async def", "(self)",
          "realtime/engine.py ChatEngineServer._service_task (replaces it with the keep-alive sweep)"),
    Touch(AsyncSocket, "_send_ping", "async def", "(self)",
          "realtime/engine.py ChatEngineServer.start_background_task (recognises it) and _send_ping (mirrors it)"),
    Touch(AsyncSocket, "schedule_ping", "def", "(self)",
          "realtime/engine.py (a PONG restarts the ping through start_background_task(socket._send_ping))"),
    Touch(AsyncSocket, "_upgrade_websocket", "async def", "(self, environ)",
          "realtime/engine.py LeanWebSocket (called as server._async['websocket'](socket._websocket_handler, server))"),
    Touch(AsyncSocket, "_websocket_handler", "async def", "(self, ws)",
          "realtime/engine.py LeanWebSocket (takes the handler's __self__) and _WebSocketSession (its fork)"),
    Touch(AsyncSocket, "receive", "async def", "(self, pkt)", "realtime/engine.py _WebSocketSession._receive"),
    Touch(AsyncSocket, "close", "async def", "(self, wait=True, abort=False, reason=None)",
          "realtime/engine.py _WebSocketSession._close_socket and ChatEngineServer.close_transports"),
    Touch(AsyncSocket, "check_ping_timeout", "async def", "(self)", "realtime/engine.py ChatEngineServer._sweep"),
    Touch(eio_packet.Packet, "__init__", "def", "(self, packet_type=6, data=None, encoded_packet=None)",
          "realtime/engine.py SharedPacket and ChatEngineServer.queue_message (packets put on socket queues)"),
    Touch(eio_packet.Packet, "encode", "def", "(self, b64=False)",
          "realtime/engine.py SharedPacket.encode (overrides it)"),
    # python-socketio
    Touch(socketio.AsyncServer, "_engineio_server_class", "def", "(self)",
          "realtime/server.py ChatSocketServer._engineio_server_class (installs ChatEngineServer)"),
    Touch(socketio.AsyncServer, "_handle_event_internal", "async def",
          "(self, server, sid, eio_sid, data, namespace, id)",
          "realtime/server.py ChatSocketServer._handle_event_internal (ack_requested, wait_idle, event_observer)"),
    Touch(socketio.AsyncServer, "_handle_eio_disconnect", "async def", "(self, eio_sid, reason)",
          "realtime/server.py ChatSocketServer._handle_eio_disconnect (answers a polling client's goodbye)"),
    Touch(socketio.AsyncServer, "_handle_eio_connect", "async def", "(self, eio_sid, environ)",
          "realtime/server.py ChatSocketServer._handle_eio_connect (counts sessions short of the Socket.IO connect)"),
    Touch(socketio.AsyncServer, "_handle_connect", "async def", "(self, eio_sid, namespace, data)",
          "realtime/server.py ChatSocketServer._handle_connect (a session leaves the pending count)"),
    Touch(socketio.AsyncServer, "_handle_eio_message", "async def", "(self, eio_sid, data)",
          "realtime/server.py ChatSocketServer._handle_eio_message (a malformed packet is one warning line)"),
    Touch(socketio.AsyncManager, "emit", "async def",
          "(self, event, data, namespace, room=None, skip_sid=None, callback=None, to=None, **kwargs)",
          "realtime/server.py LeanManager.emit (overrides and mirrors it)"),
    Touch(BaseManager, "get_participants", "def", "(self, namespace, room)",
          "realtime/server.py LeanManager.emit and ChatSocketServer.participants (a user's sockets)"),
    Touch(BaseManager, "is_connected", "def", "(self, sid, namespace)",
          "realtime/server.py ChatSocketServer.is_connected (did a client send connect? events.py asks)"),
    Touch(BaseManager, "sid_from_eio_sid", "def", "(self, eio_sid, namespace)",
          "realtime/server.py ChatSocketServer._handle_connect (was the connect refused?)"),
    Touch(sio_packet.Packet, "data_is_binary", "classmethod", "(data)",
          "realtime/server.py ChatPacket.data_is_binary (overrides it)"),
    # aiohttp
    Touch(web_protocol.RequestHandler, "connection_lost", "def", "(self, exc)",
          "realtime/websocket.py _TakenOver.write_eof (aiohttp forgets a connection taken over)"),
    Touch(web_protocol.RequestHandler, "keep_alive", "def", "(self, val)",
          "realtime/websocket.py take_over (no keep-alive timer on a connection taken over)"),
]  # fmt: skip


def kind_of(owner: Any, name: str) -> str:
    static = inspect.getattr_static(owner, name)
    if isinstance(static, classmethod):
        return "classmethod"
    function = getattr(owner, name)
    if inspect.isasyncgenfunction(function):
        return "async generator"
    if inspect.iscoroutinefunction(function):
        return "async def"
    return "def"


def bare_signature(function: Callable[..., Any]) -> str:
    """The signature without annotations (aiohttp's have them, python-socketio's not)."""
    signature = inspect.signature(function)
    parameters = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


@pytest.mark.parametrize("touch", TOUCHES, ids=lambda touch: touch.upstream)
def test_upstream_private_name_exists_with_the_signature_chatsvc_uses(touch: Touch) -> None:
    user = f"chatsvc/{touch.user}"
    try:
        inspect.getattr_static(touch.owner, touch.name)
    except AttributeError:
        pytest.fail(f"{touch.upstream} is gone; chatsvc depends on it in {user}")
    kind = kind_of(touch.owner, touch.name)
    assert kind == touch.kind, f"{touch.upstream} is now a {kind}, was a {touch.kind}; chatsvc uses it in {user}"
    signature = bare_signature(getattr(touch.owner, touch.name))
    assert signature == touch.signature, f"{touch.upstream}{signature} was {touch.name}{touch.signature}: check {user}"


# The one chatsvc module per library allowed below its public API (issue 13, 4 (a)).
FENCES = {
    "socketio": "chatsvc/realtime/server.py",
    "engineio": "chatsvc/realtime/engine.py",
    "aiohttp": "chatsvc/realtime/websocket.py",
}
# Other modules that import a Socket.IO library, and the public names they use from it.
PUBLIC_USES = {
    "chatsvc/realtime/events.py": {"socketio": {"AsyncNamespace", "exceptions"}},
    "chatsvc/testing.py": {"socketio": {"AsyncClient"}},
}
PACKAGE = Path(chatsvc.__file__).parent


def chatsvc_modules() -> dict[str, ast.Module]:
    return {
        f"chatsvc/{path.relative_to(PACKAGE).as_posix()}": ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_each_library_internal_is_touched_in_its_one_module() -> None:
    private = {
        (touch.owner.__module__.split(".")[0], touch.name)
        for touch in TOUCHES
        if touch.name.startswith("_") and not touch.name.startswith("__")
    }
    misplaced: list[str] = []
    for module, tree in chatsvc_modules().items():
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [node.name]
            for library, name in private:
                if name in names and module != FENCES[library]:
                    misplaced.append(f"{module}:{node.lineno} {library} {name}")
            if isinstance(node, ast.Import | ast.ImportFrom):
                imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in imported:
                    library = name.split(".")[0]
                    fenced_out = library in ("socketio", "engineio") and module != FENCES[library]
                    if fenced_out and (name != library or library not in PUBLIC_USES.get(module, {})):
                        misplaced.append(f"{module}:{node.lineno} imports {name}")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                allowed = PUBLIC_USES.get(module, {}).get(node.value.id)
                if allowed is not None and node.attr not in allowed:
                    misplaced.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert misplaced == [], (
        "library internals outside their one module (chatsvc/realtime/server.py for python-socketio, "
        f"engine.py for python-engineio, websocket.py for aiohttp's): {misplaced}"
    )


def test_aiohttp_request_handler_has_the_fields_a_take_over_uses() -> None:
    slots = set()
    for owner in web_protocol.RequestHandler.__mro__:
        slots.update(getattr(owner, "__slots__", ()))
    for name in ("_message_tail", "transport"):
        assert name in slots, (
            f"aiohttp.web_protocol.RequestHandler has no {name!r} any more: chatsvc/realtime/websocket.py "
            "take_over reads _message_tail (bytes after the upgrade request) and _TakenOver.write_eof sets "
            "transport to None so that aiohttp's request loop ends without closing the connection"
        )
    for owner, name in ((web.BaseRequest, "transport"), (web.BaseRequest, "protocol")):
        assert isinstance(inspect.getattr_static(owner, name, None), property), (
            f"{upstream_name(owner, name)} is no longer a property: chatsvc/realtime/websocket.py take_over "
            "moves request.transport from request.protocol to its own protocol"
        )


# -- the state chatsvc reads and writes on real objects -----------------------------------------------------


def missing_attributes(obj: Any, names: list[str]) -> list[str]:
    return [name for name in names if not hasattr(obj, name)]


def test_engineio_socket_has_the_fields_chatsvc_reads_and_sets() -> None:
    server = engineio.AsyncServer(async_mode="aiohttp")
    socket = AsyncSocket(server, "sid-1")
    fields = ["sid", "server", "queue", "last_ping", "connected", "upgrading", "upgraded", "closing", "closed"]
    assert missing_attributes(socket, fields) == [], (
        "engineio.base_socket.BaseSocket.__init__ no longer sets these fields: chatsvc/realtime/engine.py "
        "(_WebSocketSession, _sweep, _send_ping, queue_message, answer_goodbye) uses them"
    )
    assert isinstance(socket.queue, asyncio.Queue), (
        "engineio.base_socket.BaseSocket.queue is no longer an asyncio.Queue (AsyncServer.create_queue): "
        "chatsvc/realtime/engine.py _WebSocketSession and ChatEngineServer.queue_message call "
        "put_nowait/get_nowait on it"
    )
    assert (socket.connected, socket.upgrading, socket.upgraded, socket.closing, socket.closed) == (
        False,
        False,
        False,
        False,
        False,
    ), "engineio.base_socket.BaseSocket starts in another state: check chatsvc/realtime/engine.py _WebSocketSession"
    assert isinstance(socket.last_ping, float), (
        "engineio.base_socket.BaseSocket.last_ping is no longer a time.time() float: chatsvc/realtime/engine.py "
        "_send_ping sets it like AsyncSocket._send_ping, and schedule_ping only restarts pings when it is set"
    )


def test_engineio_and_socketio_read_no_environ_key_chatsvc_drops() -> None:
    # chatsvc/realtime/engine.py _translate_request keeps only ENVIRON_KEYS of python-engineio's aiohttp environ
    # (engineio.async_drivers.aiohttp.translate_request).
    other_drivers = re.compile(r"^(asgi\.|eventlet\.|gunicorn\.|sanic\.|tornado\.|wsgi\.websocket$)")
    pattern = re.compile(
        r"environ\[['\"]([\w.]+)['\"]\]|environ\.get\(['\"]([\w.]+)['\"]|['\"]([\w.]+)['\"] in environ"
    )
    read: set[str] = set()
    for package in (engineio, socketio):
        for path in sorted(pathlib.Path(package.__file__).parent.rglob("*.py")):
            for match in pattern.finditer(path.read_text(encoding="utf-8")):
                read.add(next(group for group in match.groups() if group))
    dropped = sorted(key for key in read if not other_drivers.match(key) and key not in transport.ENVIRON_KEYS)
    assert dropped == [], (
        f"python-engineio or python-socketio now read {dropped} from the environ: add them to "
        "chatsvc/realtime/engine.py ENVIRON_KEYS, which _translate_request keeps"
    )


def test_engineio_uses_only_the_queue_methods_chatsvc_send_queue_has() -> None:
    # chatsvc/realtime/engine.py SendQueue is not an asyncio.Queue: it has the part of its interface that
    # python-engineio calls on socket.queue (AsyncSocket.poll, send, close; AsyncServer), mirrored.
    used = set()
    for module in (eio_async_socket, eio_async_server):
        used |= set(re.findall(r"\bqueue\.(\w+)", inspect.getsource(module)))
    missing = sorted(name for name in used if not hasattr(transport.SendQueue, name))
    assert missing == [], (
        f"python-engineio now calls {missing} on a socket's queue: chatsvc/realtime/engine.py SendQueue "
        "mirrors asyncio.Queue's get/get_nowait/put/put_nowait/task_done/join/empty/qsize only"
    )
    assert "asyncio.QueueEmpty" in inspect.getsource(AsyncSocket.poll), (
        "engineio.async_socket.AsyncSocket.poll no longer catches asyncio.QueueEmpty, which "
        "chatsvc/realtime/engine.py SendQueue.get_nowait raises"
    )


def test_engineio_server_has_the_fields_chatsvc_reads_and_sets() -> None:
    server = engineio.AsyncServer(async_mode="aiohttp")
    fields = [
        "_async",
        "sockets",
        "service_task_event",
        "service_task_handle",
        "start_service_task",
        "ping_interval",
        "ping_timeout",
        "max_http_buffer_size",
    ]
    assert missing_attributes(server, fields) == [], (
        "engineio.base_server.BaseServer.__init__ no longer sets these fields: chatsvc/realtime/engine.py "
        "ChatEngineServer uses them"
    )
    assert isinstance(server.sockets, dict), "engineio.AsyncServer.sockets is no longer a dict of sid to socket"
    for reason in ("CLIENT_DISCONNECT", "TRANSPORT_CLOSE", "PING_TIMEOUT"):
        assert hasattr(server.reason, reason), (
            f"engineio.base_server.BaseServer.reason.{reason} is gone: chatsvc/realtime/engine.py "
            "(_WebSocketSession, ChatEngineServer.answer_goodbye) uses it"
        )


def test_engineio_async_table_has_the_websocket_driver_that_chatsvc_replaces() -> None:
    server = engineio.AsyncServer(async_mode="aiohttp")
    assert isinstance(server._async, dict) and server._async.get("websocket") is eio_aiohttp_driver.WebSocket, (
        "engineio.base_server.BaseServer.__init__ no longer keeps the aiohttp driver table in self._async with a "
        "'websocket' entry (engineio.async_drivers.aiohttp._async): chatsvc/realtime/engine.py "
        "ChatEngineServer.__init__ replaces that entry with LeanWebSocket"
    )
    chat = ChatEngineServer(async_mode="aiohttp")
    assert chat._async["websocket"] is LeanWebSocket
    assert server._async["websocket"] is eio_aiohttp_driver.WebSocket, (
        "chatsvc/realtime/engine.py ChatEngineServer changed python-engineio's shared driver table "
        "(engineio.async_drivers.aiohttp._async) instead of its own copy"
    )
    assert engineio.AsyncServer(async_mode="aiohttp")._async["websocket"] is eio_aiohttp_driver.WebSocket


def test_socketio_server_has_the_fields_chatsvc_reads_and_sets() -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=LeanManager(), serializer=ChatPacket)
    assert missing_attributes(sio, ["eio", "manager", "packet_class", "environ"]) == [], (
        "socketio.base_server.BaseServer.__init__ no longer sets eio/manager/packet_class/environ: "
        "chatsvc/realtime/server.py uses them"
    )
    assert isinstance(getattr(sio, "_binary_packet", None), dict), (
        "socketio.AsyncServer._binary_packet (eio_sid -> the binary packet waiting for its attachments) is gone: "
        "chatsvc/realtime/server.py ChatSocketServer._inline_message reads it so that a frame which python-socketio "
        "would take as an attachment is not taken as an event"
    )
    assert sio.packet_class is ChatPacket, "socketio.AsyncServer(serializer=...) no longer sets packet_class"
    assert sio.manager.server is sio, (
        "socketio.base_manager.BaseManager.set_server no longer keeps the server: "
        "chatsvc/realtime/server.py LeanManager.emit encodes with server.packet_class and queues through server.eio"
    )


# -- python-engineio behaviour ------------------------------------------------------------------------------


class RecordingEngineServer(engineio.AsyncServer):
    """python-engineio's own server, noting every background task it starts."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.targets: list[Any] = []
        self.tasks: list[asyncio.Future[Any]] = []

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        self.targets.append(target)
        task = super().start_background_task(target, *args, **kwargs)
        self.tasks.append(task)
        return task


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[TestServer]:
    """The app on a loopback port for the block."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def polling_handshake(server: TestServer, path: str) -> str:
    """Open an Engine.IO session by long-polling; the OPEN packet's text."""
    query = {"EIO": "4", "transport": "polling"}
    async with aiohttp.ClientSession() as session, session.get(server.make_url(path), params=query) as response:
        body = await response.text()
        assert response.status == 200, body
        return body


async def test_engineio_starts_the_service_task_and_each_sockets_ping_through_start_background_task() -> None:
    eio = RecordingEngineServer(async_mode="aiohttp")
    environs: list[dict[str, Any]] = []

    async def on_connect(sid: str, environ: dict[str, Any]) -> None:
        environs.append(environ)

    eio.on("connect", on_connect)
    app = web.Application()
    eio.attach(app)
    try:
        async with serve_app(app) as server:
            body = await polling_handshake(server, "/engine.io/")
            assert body.startswith("0{"), body
        assert len(environs) == 1 and isinstance(environs[0].get("aiohttp.request"), web.BaseRequest), (
            "engineio.async_drivers.aiohttp.translate_request no longer puts the request under "
            "environ['aiohttp.request']: chatsvc/realtime/engine.py LeanWebSocket.__call__ reads it"
        )
        (socket,) = eio.sockets.values()
        service_task = getattr(engineio.AsyncServer, "_service_task", None)
        services = [t for t in eio.targets if service_task is not None and getattr(t, "__func__", None) is service_task]
        assert len(services) == 1 and services[0].__self__ is eio, (
            "engineio.AsyncServer._handle_connect no longer starts self._service_task through "
            f"start_background_task (started: {eio.targets}): chatsvc/realtime/engine.py "
            "ChatEngineServer._service_task would never run, and clients that stop answering pings would stay connected"
        )
        pings = [t for t in eio.targets if getattr(t, "__func__", None) is getattr(AsyncSocket, "_send_ping", None)]
        assert len(pings) == 1 and pings[0].__self__ is socket, (
            "engineio.AsyncServer._handle_connect / AsyncSocket.schedule_ping no longer start the socket's ping as "
            f"start_background_task(socket._send_ping) (started: {eio.targets}): chatsvc/realtime/engine.py "
            "ChatEngineServer.start_background_task would not replace it with a timer"
        )
    finally:
        for task in eio.tasks:
            task.cancel()
        await asyncio.gather(*eio.tasks, return_exceptions=True)


async def test_engineio_service_task_under_its_name_is_chatsvc_sweep_and_stops_on_shutdown() -> None:
    eio = ChatEngineServer(async_mode="aiohttp")
    app = web.Application()
    eio.attach(app)
    async with serve_app(app) as server:
        await polling_handshake(server, "/engine.io/")
        handle = eio.service_task_handle
        assert isinstance(handle, asyncio.Task), (
            "engineio.AsyncServer._handle_connect no longer keeps the service task in self.service_task_handle: "
            "chatsvc/realtime/engine.py ChatEngineServer relies on AsyncServer.shutdown stopping it"
        )
        assert handle.get_coro().__qualname__ == ChatEngineServer._service_task.__qualname__, (
            f"python-engineio started {handle.get_coro()} as its service task, not self._service_task: "
            "chatsvc/realtime/engine.py ChatEngineServer._service_task (the keep-alive sweep) is not running"
        )
        # The task set the event on its first step, which ran while the handshake went over the network.
        assert eio.service_task_event is not None
        await asyncio.wait_for(eio.shutdown(), EVENT_TIMEOUT)
        assert handle.done() and eio.service_task_handle is None, (
            "engineio.AsyncServer.shutdown no longer ends the service task through service_task_event and "
            "service_task_handle: chatsvc/realtime/engine.py ChatEngineServer._service_task waits on that event"
        )


async def test_engineio_socket_upgrade_calls_the_websocket_driver_with_its_websocket_handler() -> None:
    calls: list[tuple[Any, Any, dict[str, Any]]] = []

    class RecordingDriver:
        def __init__(self, handler: Any, server: Any) -> None:
            self.handler = handler
            self.server = server

        async def __call__(self, environ: dict[str, Any]) -> str:
            calls.append((self.handler, self.server, environ))
            return "served"

    eio = engineio.AsyncServer(async_mode="aiohttp")
    eio._async = {**eio._async, "websocket": RecordingDriver}
    socket = AsyncSocket(eio, "sid-1")
    socket.connected = True
    environ = {"HTTP_CONNECTION": "keep-alive, Upgrade", "HTTP_UPGRADE": "websocket"}
    served = await socket.handle_get_request(environ)
    assert served == "served" and len(calls) == 1, (
        "engineio.async_socket.AsyncSocket._upgrade_websocket no longer calls "
        "server._async['websocket'](handler, server)(environ): chatsvc/realtime/engine.py LeanWebSocket is never used"
    )
    handler, server, seen = calls[0]
    assert getattr(handler, "__func__", None) is AsyncSocket._websocket_handler and handler.__self__ is socket, (
        f"engineio.async_socket.AsyncSocket._upgrade_websocket passes {handler!r} to the driver, not the socket's "
        "_websocket_handler: chatsvc/realtime/engine.py LeanWebSocket finds the socket as handler.__self__"
    )
    assert server is eio and seen is environ


async def test_engineio_send_ping_does_what_chatsvc_timer_does() -> None:
    eio = engineio.AsyncServer(async_mode="aiohttp", ping_interval=0)
    upstream, mirror = AsyncSocket(eio, "upstream"), AsyncSocket(eio, "mirror")
    upstream.last_ping = mirror.last_ping = None
    before = time.time()
    await upstream._send_ping()
    transport._send_ping(mirror)
    for socket in (upstream, mirror):
        assert socket.last_ping is not None and socket.last_ping >= before
        queued = [socket.queue.get_nowait() for _ in range(socket.queue.qsize())]
        assert [(p.packet_type, p.encode()) for p in queued] == [(eio_packet.PING, "2")], (
            f"{socket.sid}: engineio.async_socket.AsyncSocket._send_ping no longer sets last_ping and queues one "
            "PING (or chatsvc/realtime/engine.py _send_ping no longer does the same): "
            "a ping from the timer would differ"
        )
    for socket in (upstream, mirror):
        socket.closing = True
    await upstream._send_ping()
    transport._send_ping(mirror)
    assert upstream.queue.empty() and mirror.queue.empty(), (
        "engineio.async_socket.AsyncSocket._send_ping now pings a closing socket: "
        "update chatsvc/realtime/engine.py _send_ping to match"
    )


async def test_engineio_pong_schedules_the_next_ping_through_send_ping() -> None:
    eio = RecordingEngineServer(async_mode="aiohttp")
    socket = AsyncSocket(eio, "sid-1")
    socket.last_ping = time.time()  # a ping went out
    try:
        await socket.receive(eio_packet.Packet(eio_packet.PONG))
        assert [getattr(t, "__func__", None) for t in eio.targets] == [getattr(AsyncSocket, "_send_ping", None)], (
            "engineio.async_socket.AsyncSocket.receive(PONG) / schedule_ping no longer start the next ping as "
            f"start_background_task(socket._send_ping) (started: {eio.targets}): chatsvc/realtime/engine.py "
            "ChatEngineServer.start_background_task would miss it and pings would run as sleeping tasks"
        )
        assert socket.last_ping is None, (
            "engineio.async_socket.AsyncSocket.schedule_ping no longer clears last_ping: chatsvc/realtime/engine.py "
            "_send_ping and _sweep read it as python-engineio does"
        )
        await socket.receive(eio_packet.Packet(eio_packet.PONG))
        assert len(eio.targets) == 1, "a second PONG before the next ping now starts another ping"
    finally:
        for task in eio.tasks:
            task.cancel()
        await asyncio.gather(*eio.tasks, return_exceptions=True)


async def test_engineio_ping_timeout_check_closes_a_silent_socket_and_returns_false() -> None:
    eio = engineio.AsyncServer(async_mode="aiohttp", ping_timeout=5)
    reasons: list[Any] = []

    async def on_disconnect(sid: str, reason: Any) -> None:
        reasons.append(reason)

    eio.on("disconnect", on_disconnect)
    live, silent = AsyncSocket(eio, "live"), AsyncSocket(eio, "silent")
    live.last_ping = time.time()
    silent.last_ping = time.time() - eio.ping_timeout - 1
    assert await live.check_ping_timeout() is True and not live.closed
    assert await silent.check_ping_timeout() is False, (
        "engineio.async_socket.AsyncSocket.check_ping_timeout no longer returns False for a socket whose ping went "
        "unanswered: chatsvc/realtime/engine.py ChatEngineServer._sweep ends the transport on False"
    )
    assert silent.closed and reasons == [eio.reason.PING_TIMEOUT], (
        "engineio.async_socket.AsyncSocket.check_ping_timeout no longer closes the socket with reason PING_TIMEOUT"
    )
    with pytest.raises(eio_exceptions.SocketIsClosedError):
        await silent.check_ping_timeout()


async def test_engineio_close_packet_disconnects_with_the_client_disconnect_reason() -> None:
    eio = engineio.AsyncServer(async_mode="aiohttp")
    reasons: list[Any] = []

    async def on_disconnect(sid: str, reason: Any) -> None:
        reasons.append(reason)

    eio.on("disconnect", on_disconnect)
    socket = AsyncSocket(eio, "sid-1")
    await socket.receive(eio_packet.Packet(eio_packet.CLOSE))
    assert socket.closed and reasons == [eio.reason.CLIENT_DISCONNECT], (
        "engineio.async_socket.AsyncSocket.receive(CLOSE) no longer closes with reason CLIENT_DISCONNECT: "
        "chatsvc/realtime/server.py ChatSocketServer._handle_eio_disconnect answers the polling client on that reason"
    )
    with pytest.raises(eio_exceptions.UnknownPacketError):
        await socket.receive(eio_packet.Packet(eio_packet.OPEN))


def test_engineio_polling_payload_encodes_a_shared_packet_like_a_plain_one() -> None:
    text = '42["message",{"type":"sendMessage","userId":1}]'
    shared = SharedPacket(eio_packet.MESSAGE, text)
    assert shared.frame() == websocket_frame("4" + text)  # framed once for WebSocket sockets first
    plain = eio_packet.Packet(eio_packet.MESSAGE, text)
    assert eio_payload.Payload(packets=[shared]).encode() == eio_payload.Payload(packets=[plain]).encode(), (
        "engineio.payload.Payload.encode encodes chatsvc/realtime/engine.py SharedPacket differently from a plain "
        "Packet: a long-polling client would get other bytes than a WebSocket one"
    )


# -- python-socketio behaviour ------------------------------------------------------------------------------


def test_socketio_builds_its_engineio_server_from_engineio_server_class() -> None:
    sio = ChatSocketServer(async_mode="aiohttp")
    assert type(sio.eio) is ChatEngineServer, (
        "socketio.base_server.BaseServer.__init__ no longer builds self.eio from self._engineio_server_class(): "
        "chatsvc/realtime/server.py ChatSocketServer would run the stock transport and keep-alive"
    )
    limits = SocketLimits(queue_packets=7)
    passed = ChatSocketServer(async_mode="aiohttp", socket_limits=limits).eio
    assert sio.eio.cut_off_notice is not None and passed.limits is limits, (
        "socketio.base_server.BaseServer.__init__ no longer hands the keyword arguments it does not know to the "
        "Engine.IO server: chatsvc/realtime/server.py passes cut_off_notice and socket_limits that way"
    )
    assert sio.eio.handlers.get("disconnect") == sio._handle_eio_disconnect, (
        "socketio.base_server.BaseServer.__init__ no longer registers self._handle_eio_disconnect as Engine.IO's "
        "disconnect handler: chatsvc/realtime/server.py ChatSocketServer._handle_eio_disconnect would never run"
    )


def test_socketio_acks_an_event_with_the_packet_chatsvc_encode_ack_builds() -> None:
    result = {"id": 7, "content": "héllo \u2028", "sender": {"id": 1, "nickName": None}, "n": [1, 2.5, True]}
    for ack_id in (0, 7, 10**15 - 1):
        stock = sio_packet.Packet(sio_packet.ACK, namespace="/", id=ack_id, data=[result]).encode()
        chat = ChatPacket(sio_packet.ACK, namespace="/", id=ack_id, data=[result]).encode()
        assert encode_ack(ack_id, result) == chat and json.loads(chat[1 + len(str(ack_id)) :]) == [result], (
            "socketio.packet.Packet.encode no longer encodes an ACK of the default namespace as "
            f"'3' + id + JSON ({stock!r}): chatsvc/realtime/server.py encode_ack builds the ack of every event "
            "taken inline that way"
        )
        assert json.loads(stock[1 + len(str(ack_id)) :]) == [result] and stock.startswith(f"3{ack_id}[")


def test_socketio_has_engineio_handle_each_sockets_messages_in_order_through_handle_eio_message() -> None:
    sio = ChatSocketServer(async_mode="aiohttp", async_handlers=False)
    assert sio.eio.async_handlers is False, (
        "socketio.base_server.BaseServer.__init__ no longer sets async_handlers=False on its Engine.IO server, so "
        "a socket's messages would each run in a task: chatsvc/realtime/engine.py _WebSocketSession relies on its "
        "packets that take python-socketio's path being handled one after the other (ChatEngineServer.full_path)"
    )
    assert sio.eio.handlers.get("message") == sio._handle_eio_message, (
        "socketio.base_server.BaseServer.__init__ no longer registers self._handle_eio_message as Engine.IO's "
        "message handler: chatsvc/realtime/server.py counts each handled packet there (full_path_done), and a "
        "socket would never be taken inline again"
    )


class CountingManager(socketio.AsyncManager):
    """python-socketio's in-process manager, counting initialize() calls."""

    initialized = 0

    def initialize(self) -> None:
        self.initialized += 1
        super().initialize()


async def test_socketio_passes_every_event_and_its_ack_id_through_handle_event_internal() -> None:
    manager = CountingManager()
    observed: list[str] = []
    sio = ChatSocketServer(
        async_mode="aiohttp",
        client_manager=manager,
        async_handlers=False,
        event_observer=lambda event, seconds: observed.append(event),
    )
    asked: asyncio.Queue[bool] = asyncio.Queue()

    @sio.on("probe")
    async def probe(sid: str, data: Any) -> str:
        asked.put_nowait(ack_requested())
        return f"ack {data}"

    app = web.Application()
    sio.attach(app)
    async with serve_app(app) as server:
        client = await connect_socket(str(server.make_url("")).rstrip("/"), transports=["polling", "websocket"])
        try:
            assert await client.call("probe", 1) == "ack 1"
            assert await asyncio.wait_for(asked.get(), EVENT_TIMEOUT) is True, (
                "socketio.AsyncServer._handle_event_internal no longer receives the ack id as `id`: "
                "chatsvc/realtime/server.py ack_requested() is wrong for every event"
            )
            await client.emit("probe", 2)
            assert await asyncio.wait_for(asked.get(), EVENT_TIMEOUT) is False
            assert observed == ["probe", "probe"], (
                "socketio.AsyncServer._handle_event no longer goes through self._handle_event_internal: "
                "chatsvc/realtime/server.py ChatSocketServer (ack_requested, wait_idle, event_observer) is bypassed"
            )
            assert manager.initialized == 1, "socketio.AsyncServer no longer initializes its client manager once"
        finally:
            await client.disconnect()
            await sio.shutdown()


async def connected_socket(sio: socketio.AsyncServer, eio_sid: str, room: str) -> tuple[str, AsyncSocket]:
    """A real Engine.IO socket, connected to the default namespace and in ``room``, without a client."""
    socket = AsyncSocket(sio.eio, eio_sid)
    socket.connected = True
    sio.eio.sockets[eio_sid] = socket
    sid = await sio.manager.connect(eio_sid, "/")
    await sio.manager.enter_room(sid, "/", room)
    return sid, socket


def queued(socket: AsyncSocket) -> list[Any]:
    return [socket.queue.get_nowait() for _ in range(socket.queue.qsize())]


async def test_socketio_manager_rooms_map_namespace_and_room_to_sid_and_eio_sid() -> None:
    sio = ChatSocketServer(async_mode="aiohttp", client_manager=LeanManager(), serializer=ChatPacket)
    sid, _ = await connected_socket(sio, "eio-1", "5")
    rooms = sio.manager.rooms
    assert rooms.get("/", {}).get(None, {}).get(sid) == "eio-1" and rooms["/"]["5"][sid] == "eio-1", (
        "socketio.base_manager.BaseManager.rooms is no longer rooms[namespace][room][sid] = eio_sid with every "
        f"connected sid under room None ({rooms!r}): chatsvc/metrics.py _socket_counts reads it"
    )
    assert list(sio.manager.get_participants("/", "5")) == [(sid, "eio-1")], (
        "socketio.base_manager.BaseManager.get_participants no longer yields (sid, eio_sid): "
        "chatsvc/realtime/server.py LeanManager.emit and ChatSocketServer.participants use it"
    )
    assert sio.manager.sid_from_eio_sid("eio-1", "/") == sid
    assert sio.manager.is_connected(sid, "/") is True


async def test_socketio_stock_emit_and_chatsvc_lean_emit_queue_the_same_packet() -> None:
    sio = ChatSocketServer(async_mode="aiohttp", client_manager=LeanManager(), serializer=ChatPacket)
    sid, socket = await connected_socket(sio, "eio-1", "5")
    _, other = await connected_socket(sio, "eio-2", "6")
    data = {"type": "sendMessage", "userId": 1, "message": {"id": 7, "content": "héllo"}}
    # The unbound upstream method on the same manager: what python-socketio itself would queue.
    await socketio.AsyncManager.emit(sio.manager, "message", data, "/", room="5")
    stock = queued(socket)
    await sio.manager.emit("message", data, "/", room="5")
    lean = queued(socket)
    assert [(p.packet_type, p.encode()) for p in lean] == [(p.packet_type, p.encode()) for p in stock], (
        "socketio.AsyncManager.emit (through AsyncServer._send_eio_packet and engineio AsyncServer.send_packet) "
        f"now queues {[p.encode() for p in stock]} where chatsvc/realtime/server.py LeanManager.emit queues "
        f"{[p.encode() for p in lean]} on the Engine.IO socket"
    )
    assert queued(other) == []
    await socketio.AsyncManager.emit(sio.manager, "message", data, "/", room="5", skip_sid=sid)
    await sio.manager.emit("message", data, "/", room="5", skip_sid=sid)
    assert queued(socket) == [], "skip_sid means something else now in socketio.AsyncManager.emit"


# -- aiohttp behaviour --------------------------------------------------------------------------------------


def test_aiohttp_websocket_mask_unmasks_in_place() -> None:
    from aiohttp._websocket.helpers import websocket_mask

    data = bytearray(b"\x00\x00\x00\x00\xff")
    websocket_mask(b"\x01\x02\x03\x04", data)
    assert data == bytearray(b"\x01\x02\x03\x04\xfe"), (
        "aiohttp._websocket.helpers.websocket_mask(mask, data) no longer XORs data in place with the repeated "
        "4-byte key: chatsvc/realtime/websocket.py WebSocketProtocol.data_received uses it on every client frame"
    )


class EchoProtocol(WebSocketProtocol):
    """Echoes each message; closes on "bye"."""

    def __init__(self) -> None:
        super().__init__(max_size=1024)
        self.closed = asyncio.get_running_loop().create_future()

    def message_received(self, data: str | bytes) -> None:
        if data == "bye":
            self.close()
        else:
            self.write(websocket_frame(data))

    def connection_closed(self) -> None:
        self.closed.set_result(None)


async def test_aiohttp_hands_a_websocket_connection_over_and_forgets_it() -> None:
    facts: dict[str, Any] = {}
    protocols: list[EchoProtocol] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        protocols.append(EchoProtocol())
        response = await take_over(request, protocols[-1])
        facts["handler returned"] = True
        return response

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with serve_app(app) as server:
        async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws"), compress=15) as ws:
            assert ws.compress == 0, "chatsvc/realtime/websocket.py take_over agreed to permessage-deflate"
            await ws.send_str("héllo")
            await ws.send_bytes(b"\x01" * 300)  # a 16-bit length
            await ws.ping(b"p")
            replies = [(await ws.receive(timeout=EVENT_TIMEOUT)).data for _ in range(2)]
            facts["connections aiohttp knows"] = len(server.runner.server.connections)  # type: ignore[union-attr]
            await ws.send_str("bye")
            closing = await ws.receive(timeout=EVENT_TIMEOUT)
        await asyncio.wait_for(protocols[0].closed, EVENT_TIMEOUT)
        # Bytes sent right behind the upgrade request, before the 101, are kept by aiohttp and handed over.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        mask = b"\x01\x02\x03\x04"
        early = bytes(b ^ mask[i % 4] for i, b in enumerate(b"early"))
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + bytes((0x81, 0x80 | 5))
            + mask
            + early
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EVENT_TIMEOUT)
        echoed = await asyncio.wait_for(reader.readexactly(7), EVENT_TIMEOUT)
        writer.close()
        await asyncio.wait_for(protocols[1].closed, EVENT_TIMEOUT)
    assert replies == ["héllo", b"\x01" * 300] and closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert facts == {"handler returned": True, "connections aiohttp knows": 0}, (
        f"aiohttp still counts a connection taken over ({facts}): chatsvc/realtime/websocket.py _TakenOver.write_eof "
        "sets RequestHandler.transport to None and calls connection_lost so that aiohttp lets go of it"
    )
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head, "RFC 6455's sample key got another Sec-WebSocket-Accept"
    assert echoed == websocket_frame("early"), (
        "bytes that followed the upgrade request were lost: chatsvc/realtime/websocket.py take_over reads "
        "aiohttp's RequestHandler._message_tail"
    )


# -- code chatsvc copies ------------------------------------------------------------------------------------


def fingerprint(function: Callable[..., Any]) -> str:
    """A hash of a function's code, blind to comments, blank lines and indentation."""
    source = textwrap.dedent(inspect.getsource(function))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    tokens = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]
    return hashlib.sha256(" ".join(tokens).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fork:
    """An upstream function whose code chatsvc mirrors: an upstream change must be read and maybe ported."""

    owner: Any
    name: str
    copy: str  # where chatsvc mirrors it
    fingerprint: str  # of the version chatsvc mirrors (python-engineio 4.15.1, python-socketio 5.18.1)

    @property
    def upstream(self) -> str:
        return upstream_name(self.owner, self.name)


FORKS = [
    Fork(
        AsyncSocket,
        "_websocket_handler",
        "chatsvc/realtime/engine.py _WebSocketSession",
        "5cece101ba931afc",
    ),
    Fork(AsyncSocket, "_send_ping", "chatsvc/realtime/engine.py _send_ping", "fe340a2c86787979"),
    Fork(
        engineio.AsyncServer,
        "_service_task",
        "chatsvc/realtime/engine.py ChatEngineServer._service_task and _sweep",
        "cd7637bb04e1fecb",
    ),
    Fork(
        eio_aiohttp_driver.WebSocket,
        "__call__",
        "chatsvc/realtime/engine.py LeanWebSocket.__call__",
        "22fe7e629b1a3a05",
    ),
    Fork(socketio.AsyncManager, "emit", "chatsvc/realtime/server.py LeanManager.emit", "065f7fc5f7e6a501"),
    # ChatSocketServer._inline_message reads an EVENT packet as these do, and _Ack sends its ACK as the last does.
    Fork(
        sio_packet.Packet, "decode", "chatsvc/realtime/server.py ChatSocketServer._inline_message", "775aec33b3e6994e"
    ),
    Fork(
        socketio.AsyncServer,
        "_handle_eio_message",
        "chatsvc/realtime/server.py ChatSocketServer._inline_message",
        "25f43efd33db5a82",
    ),
    Fork(
        socketio.AsyncServer,
        "_handle_event",
        "chatsvc/realtime/server.py ChatSocketServer._inline_message",
        "bd95b5164077f357",
    ),
    Fork(socketio.AsyncServer, "_handle_event_internal", "chatsvc/realtime/server.py _Ack", "2caacc756eb32e5b"),
    Fork(sio_packet.Packet, "encode", "chatsvc/realtime/server.py encode_ack", "16bf0b83017f63f5"),
    # serve_websocket skips AsyncSocket.receive for a MESSAGE taken inline: receive must do nothing else with one.
    Fork(AsyncSocket, "receive", "chatsvc/realtime/engine.py serve_websocket (the inline branch)", "e7395ddf0f5b22c4"),
]


@pytest.mark.parametrize("fork", FORKS, ids=lambda fork: fork.upstream)
def test_upstream_code_that_chatsvc_mirrors_is_unchanged(fork: Fork) -> None:
    function = getattr(fork.owner, fork.name, None)
    if function is None:
        pytest.fail(f"{fork.upstream} is gone; chatsvc mirrors it in {fork.copy}")
    found = fingerprint(function)
    assert found == fork.fingerprint, (
        f"{fork.upstream} changed (fingerprint {found}, was {fork.fingerprint}); chatsvc mirrors it in {fork.copy}. "
        "Read the upstream change, port what applies, then record the new fingerprint in FORKS "
        "(python -m tests.test_upstream_contract prints them)"
    )


if __name__ == "__main__":
    for fork in FORKS:
        print(f"{fingerprint(getattr(fork.owner, fork.name))}  {fork.upstream}")
