"""Run chatsvc inside another project's tests: a real server on a free loopback port, a throwaway database.

::

    from chatsvc.testing import run_chatsvc

    async def test_my_app_talks_to_chat():
        async with run_chatsvc() as chat:
            alice = await chat.create_user("alice")
            bob = await chat.create_user("bob")
            room = await chat.create_room([alice, bob], type="one-to-one")
            sio = await chat.connect(bob)
            ...

The same is available as the ``chatsvc`` pytest fixture (chatsvc/pytest_plugin.py).
See docs/testing.md.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import aiohttp
import socketio
from aiohttp import web
from yarl import URL

from chatsvc import admin
from chatsvc.app import create_app
from chatsvc.config import Config
from chatsvc.state import STATE, AppState

# The cheapest scrypt cost: hashing stays real, tests stay fast.
TEST_SCRYPT_N = 16
DEFAULT_PASSWORD = "secret123"
CONNECT_TIMEOUT = 5.0
# Seconds open requests get to finish when the server stops (sockets are closed before).
SHUTDOWN_TIMEOUT = 5.0
LOOPBACK = "127.0.0.1"

UserRef = dict[str, Any] | str


class ChatsvcServer:
    """A running chatsvc: where it listens, its application, and helpers to set up users, rooms and sockets."""

    def __init__(self, app: web.Application, base_url: str) -> None:
        self.app = app
        self.base_url = base_url
        self._names = itertools.count(1)
        self._clients: list[socketio.AsyncClient] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def state(self) -> AppState:
        """The application's state: database, caches, Socket.IO server."""
        return self.app[STATE]

    @property
    def config(self) -> Config:
        """The settings the server runs with."""
        return self.state.config

    def make_url(self, path: str = "") -> URL:
        """The absolute URL of a path on this server."""
        return URL(self.base_url + path)

    @property
    def http(self) -> aiohttp.ClientSession:
        """An HTTP client session, closed with the server; pass ``base_url + path``."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def create_user(
        self,
        username: str | None = None,
        *,
        password: str = DEFAULT_PASSWORD,
        nick_name: str | None = None,
        email: str | None = None,
    ) -> dict[str, Any]:
        """Create a user who can log in; their profile plus ``token`` and ``password``."""
        username = username or f"user{next(self._names)}"
        user = await admin.create_password_user(
            self.state.db,
            username=username,
            password=password,
            nick_name=nick_name or username,
            email=email if email is not None else f"{username}@example.com",
            scrypt_n=self.config.scrypt_n,
        )
        return {**user, "token": self.state.issue_token(user, 0), "password": password}

    async def token(self, username: str) -> str:
        """A fresh token for an existing user."""
        user = (await admin.users_by_username(self.state.db, [username]))[username]
        version = user.pop("tokenVersion")
        return self.state.issue_token(user, version)

    async def create_room(
        self, members: Sequence[UserRef], *, name: str | None = None, type: Literal["group", "one-to-one"] = "group"
    ) -> int:
        """Create a room with these members (user dicts or usernames); its id.

        A group is named ``name`` (default "Test group"); a one-to-one room
        takes exactly two members and is the pair's existing room if they have one.
        """
        usernames = [member["username"] if isinstance(member, dict) else member for member in members]
        found = await admin.users_by_username(self.state.db, usernames)
        if type == "group":
            name = name or "Test group"
        room_id, _ = await self.state.membership.create_room(type, [found[n] for n in usernames], name)
        return room_id

    async def connect(self, user: UserRef, **kwargs: Any) -> socketio.AsyncClient:
        """A python-socketio client connected as ``user`` (a user dict or a token), disconnected on exit.

        Extra keyword arguments go to ``AsyncClient.connect`` (default: WebSocket transport).
        """
        token = user["token"] if isinstance(user, dict) else user
        client = socketio.AsyncClient(reconnection=False)
        kwargs.setdefault("transports", ["websocket"])
        kwargs.setdefault("wait_timeout", CONNECT_TIMEOUT)
        await client.connect(self.base_url, auth={"token": token}, **kwargs)
        self._clients.append(client)
        return client

    async def close_clients(self) -> None:
        """Disconnect every client ``connect`` made and close the HTTP session."""
        for client in self._clients:
            if client.connected:
                await client.disconnect()
        self._clients.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


@asynccontextmanager
async def run_chatsvc(config: Config | None = None, /, **overrides: Any) -> AsyncIterator[ChatsvcServer]:
    """Start chatsvc in this event loop on a free loopback port; stop it and remove its data on exit.

    Without ``config``, the database lives in a new temporary folder and the
    password hash is the cheapest; keyword arguments change any setting
    (``run_chatsvc(api_key="k", rate_limit=0)``). The server always listens
    on 127.0.0.1 and a free port, whatever ``host`` and ``port`` say.
    """
    with tempfile.TemporaryDirectory(prefix="chatsvc-test-") as folder:
        if config is None:
            config = Config(db_path=Path(folder) / "chatsvc.db", scrypt_n=TEST_SCRYPT_N)
        if overrides:
            config = config.with_changes(**overrides)
        app = create_app(config.with_changes(host=LOOPBACK, port=0))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        try:
            # Inside the try: a start refused half-way (e.g. StartupError) still stops what had started.
            await runner.setup()
            site = web.TCPSite(runner, LOOPBACK, 0)
            await site.start()
            port = runner.addresses[0][1]
            server = ChatsvcServer(app, f"http://{LOOPBACK}:{port}")
            try:
                yield server
            finally:
                await server.close_clients()
        finally:
            await runner.cleanup()
