"""Real clients for tests: an HTTP API client and a Socket.IO client that records events."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp
import pytest
import socketio

from chatsvc.config import Config
from chatsvc.testing import run_chatsvc

EVENT_TIMEOUT = 5.0
_names = itertools.count(1)


def tool_missing(test: str, reason: str) -> NoReturn:
    """Skip a test whose outside tool is missing, but fail under CI=true, where everything must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{test} cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


async def until(condition: Callable[[], bool], what: str, timeout: float = EVENT_TIMEOUT) -> None:
    """Poll a condition with a deadline (for state that has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def assert_error(status: int, body: Any, expected: int) -> None:
    """The canonical error shape with the expected status."""
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"statusCode", "message", "error"}, body
    assert body["statusCode"] == expected
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["error"], str) and body["error"]


def assert_ack_error(ack: Any, expected: int) -> None:
    """A socket acknowledgement that carries the canonical error body."""
    assert isinstance(ack, dict) and ack.get("statusCode") == expected, ack
    assert ack.get("message") and ack.get("error"), ack


@dataclass
class User:
    """A registered, logged-in user of the server under test."""

    id: int
    username: str
    nick_name: str
    token: str
    profile: dict[str, Any]


def public_profile(user: User) -> dict[str, Any]:
    """What anyone may see of a user, as message senders and friend requests show them: the profile without email."""
    return {key: value for key, value in user.profile.items() if key != "email"}


def send_payload(
    user: User | None, room: int, content: str = "x", *, kind: str = "text", **extra: Any
) -> dict[str, Any]:
    """A ``sendMessage`` payload; with ``user`` None it has no ``sendUserId`` (the socket's own user sends)."""
    sender = {} if user is None else {"sendUserId": user.id}
    return {**sender, "chatroomId": room, "message": {"type": kind, "content": content}, **extra}


@dataclass
class Response:
    status: int
    body: Any
    headers: Any


class Api:
    """An HTTP client bound to one server, with shortcuts for the common calls."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.base_url + path, params=params, json=json, data=data, headers=all_headers
        ) as resp:
            text = await resp.text()
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = text
            return Response(resp.status, body, resp.headers)

    async def get(self, path: str, token: str | None = None, **params: Any) -> Response:
        return await self.request("GET", path, token=token, params={k: str(v) for k, v in params.items()})

    async def post(self, path: str, json: Any = None, token: str | None = None) -> Response:
        return await self.request("POST", path, token=token, json=json)

    async def register(self, username: str | None = None, password: str = "secret123", **extra: Any) -> dict[str, Any]:
        username = username or f"user{next(_names)}"
        body = {
            "username": username,
            "password": password,
            "nickName": f"Nick {username}",
            "email": f"{username}@example.com",
        }
        body.update(extra)
        resp = await self.post("/user/register", body)
        assert resp.status == 201, resp.body
        return resp.body

    async def login(self, username: str, password: str = "secret123") -> User:
        resp = await self.post("/user/login", {"username": username, "password": password})
        assert resp.status == 201, resp.body
        profile = resp.body["user"]
        return User(profile["id"], profile["username"], profile["nickName"], resp.body["token"], profile)

    async def new_user(self, username: str | None = None) -> User:
        profile = await self.register(username)
        return await self.login(profile["username"])

    async def history(self, user: User, room: int, **params: Any) -> list[dict[str, Any]]:
        """A page of a room's history as ``user`` sees it (which must be allowed)."""
        resp = await self.get("/chat-history/list", user.token, chatroomId=room, **params)
        assert resp.status == 200, resp.body
        return list(resp.body)

    async def one_to_one(self, user: User, friend: User) -> int:
        resp = await self.get("/chatroom/create-one-to-one", user.token, friendId=friend.id)
        assert resp.status == 200, resp.body
        return resp.body

    async def group(self, owner: User, *members: User, name: str = "Team") -> int:
        """A group made by ``owner``, who adds ``members``; its id."""
        resp = await self.get("/chatroom/create-group", owner.token, name=name)
        assert resp.status == 200, resp.body
        room = int(resp.body)
        for member in members:
            joined = await self.get(f"/chatroom/join/{room}", owner.token, joinUsername=member.username)
            assert joined.status == 200, joined.body
        return room


@asynccontextmanager
async def serve(config: Config) -> AsyncIterator[Api]:
    """Another chatsvc with its own settings, beside the ``server`` fixture's; an Api bound to it."""
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        yield Api(server.base_url, session)


@dataclass
class SocketClient:
    """A python-socketio AsyncClient that queues every ``message`` and ``exception`` it receives."""

    sio: socketio.AsyncClient
    messages: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    exceptions: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    async def call(self, event: str, data: Any, timeout: float = EVENT_TIMEOUT) -> Any:
        """Emit with an acknowledgement and return it."""
        return await self.sio.call(event, data, timeout=timeout)

    async def emit(self, event: str, data: Any) -> None:
        """Emit without an acknowledgement."""
        await self.sio.emit(event, data)

    async def send(self, user: User | None, room: int, content: str = "x", *, kind: str = "text") -> dict[str, Any]:
        """sendMessage with an ack, which must be the stored message; the message."""
        ack = await self.call("sendMessage", send_payload(user, room, content, kind=kind))
        assert isinstance(ack, dict) and "id" in ack, ack
        return ack

    async def next_message(
        self, predicate: Callable[[dict[str, Any]], bool] = lambda m: True, timeout: float = EVENT_TIMEOUT
    ) -> dict[str, Any]:
        """The next ``message`` event matching the predicate; others before it are dropped."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.messages.get()
                if predicate(event):
                    return event

    def drain(self) -> list[dict[str, Any]]:
        """Every ``message`` event received and not yet read, without waiting."""
        events = []
        while not self.messages.empty():
            events.append(self.messages.get_nowait())
        return events

    async def next_chat(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        """The next broadcast chat message (skipping join notices)."""
        return await self.next_message(lambda m: m.get("type") == "sendMessage", timeout)

    async def join(self, user: User, chatroom_id: int) -> Any:
        """joinRoom with an ack, then wait for our own join notice so later broadcasts are ours."""
        ack = await self.call("joinRoom", {"chatroomId": chatroom_id, "userId": user.id})
        assert ack == {"chatroomId": chatroom_id}, ack
        await self.next_message(lambda m: m == {"type": "joinRoom", "userId": user.id})
        return ack

    async def disconnect(self) -> None:
        await self.sio.disconnect()


async def connect_socket(
    base_url: str,
    token: str | None = None,
    *,
    transports: list[str] | None = None,
    auth: Any = None,
    headers: dict[str, str] | None = None,
) -> SocketClient:
    """Connect a real Socket.IO client; raises socketio.exceptions.ConnectionError if refused."""
    sio = socketio.AsyncClient(reconnection=False)
    client = SocketClient(sio)
    sio.on("message", client.messages.put_nowait)
    sio.on("exception", client.exceptions.put_nowait)
    refusals: list[Any] = []
    sio.on("connect_error", refusals.append)
    if auth is None and token is not None:
        auth = {"token": token}
    try:
        await sio.connect(
            base_url,
            auth=auth,
            headers=headers or {},
            transports=transports or ["websocket"],
            wait_timeout=EVENT_TIMEOUT,
        )
    except socketio.exceptions.ConnectionError as exc:
        # The client's own message is generic; the server's reason comes in connect_error.
        reason = refusals[0].get("message") if refusals and isinstance(refusals[0], dict) else refusals
        raise socketio.exceptions.ConnectionError(f"{exc}: {reason}") from exc
    return client


class HandFramedSocket:
    """A Socket.IO client written out by hand over aiohttp's WebSocket, to choose what the library does not."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_ack = 0

    async def frame(self) -> str:
        """The next Engine.IO text frame, answering pings on the way."""
        while True:
            message = await self.ws.receive(timeout=EVENT_TIMEOUT)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            if message.data == "2":
                await self.ws.send_str("3")
                continue
            return str(message.data)

    async def call(self, event: str, data: Any) -> Any:
        """Emit with an ack id and return the ack, keeping events that arrive first in ``self.events``."""
        ack_id = self.next_ack
        self.next_ack += 1
        await self.ws.send_str(f"42{ack_id}" + json.dumps([event, data]))
        prefix = f"43{ack_id}"
        while True:
            frame = await self.frame()
            if frame.startswith(prefix):
                return json.loads(frame[len(prefix) :])[0]

    async def chat_ids(self, count: int) -> list[int]:
        """The ids of the next ``count`` chat messages broadcast to this socket, in arrival order."""
        ids: list[int] = []
        while len(ids) < count:
            name, body = await self.event()
            if name == "message" and body.get("type") == "sendMessage":
                ids.append(body["message"]["id"])
        return ids

    async def event(self) -> list[Any]:
        """The next Socket.IO event as [name, *args]."""
        while True:
            frame = await self.frame()
            if frame.startswith("42"):
                decoded: list[Any] = json.loads(frame[2:])
                return decoded


async def raw_connect(
    session: aiohttp.ClientSession, base_url: str, user: User, compress: int = 0
) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket past the Engine.IO handshake and the Socket.IO connect, as ``user``."""
    url = base_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    ws = await session.ws_connect(url, compress=compress)
    opened = await ws.receive(timeout=EVENT_TIMEOUT)
    assert opened.type == aiohttp.WSMsgType.TEXT and opened.data.startswith("0{"), opened
    await ws.send_str("40" + json.dumps({"token": user.token}))
    connected = await ws.receive(timeout=EVENT_TIMEOUT)
    assert connected.type == aiohttp.WSMsgType.TEXT and connected.data.startswith("40{"), connected
    return ws


async def close_engineio_session(api: Api, sid: str) -> None:
    """End a raw long-polling session with an Engine.IO close packet."""
    resp = await api.request("POST", "/socket.io/", params={"EIO": "4", "transport": "polling", "sid": sid}, data="1")
    assert resp.status == 200, resp.body


async def engineio_handshake(api: Api, origin: str) -> Response:
    """Open a raw long-polling Engine.IO session, as a browser's first request does."""
    return await api.request(
        "GET", "/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Origin": origin}
    )


def session_id(resp: Response) -> str:
    # The handshake body is an Engine.IO OPEN packet: "0" followed by JSON.
    return str(json.loads(resp.body[1:] if isinstance(resp.body, str) else resp.body)["sid"])


async def upload_file(
    api: Api, token: str | None, data: bytes, filename: str = "file.bin", content_type: str = "application/octet-stream"
) -> Response:
    """POST /file/upload with one multipart part named ``file``, as a browser's FormData sends it."""
    # Browsers send the file name as raw UTF-8; aiohttp would percent-encode it.
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", data, filename=filename, content_type=content_type)
    return await api.request("POST", "/file/upload", token=token, data=form)


def png_bytes(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A real solid-colour PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )
