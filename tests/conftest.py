"""The real application on a real loopback port over a temporary SQLite file; a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatsvc.config import Config
from chatsvc.testing import TEST_SCRYPT_N, ChatsvcServer, run_chatsvc
from chatsvc.testing_postgres import PostgresServer, find_bindir
from tests.helpers import Api, SocketClient, User, connect_socket, tool_missing


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """Settings for one test: its own database, a cheap password hash, loopback; plus overrides."""
    return Config(host="127.0.0.1", port=0, db_path=tmp_path / "data" / "chat.db", scrypt_n=TEST_SCRYPT_N, **overrides)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The default test settings; a test module overrides this fixture to change some."""
    return make_config(tmp_path)


@pytest.fixture
async def server(config: Config) -> AsyncIterator[ChatsvcServer]:
    """The chatsvc app built by the real factory, listening on 127.0.0.1 (chatsvc.testing, as other projects use it)."""
    async with run_chatsvc(config) as running:
        yield running


@pytest.fixture
def base_url(server: ChatsvcServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def api(base_url: str) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(base_url, session)


@pytest.fixture
async def pair(api: Api) -> tuple[User, User, int]:
    """Two new users and their one-to-one room."""
    alice = await api.new_user()
    bob = await api.new_user()
    return alice, bob, await api.one_to_one(alice, bob)


@pytest.fixture
async def joined(
    pair: tuple[User, User, int], sockets: Callable[..., Awaitable[SocketClient]]
) -> tuple[User, User, int, SocketClient, SocketClient]:
    """``pair`` with a socket each, joined to their room: alice's first, so hers has also heard bob join."""
    alice, bob, room = pair
    a = await sockets(alice.token)
    b = await sockets(bob.token)
    await a.join(alice, room)
    await b.join(bob, room)
    return alice, bob, room, a, b


@pytest.fixture
async def trio(api: Api) -> tuple[User, User, User]:
    """Three new users, strangers to each other."""
    return await api.new_user(), await api.new_user(), await api.new_user()


@pytest.fixture
async def sockets(base_url: str) -> AsyncIterator[Callable[..., Awaitable[SocketClient]]]:
    """A factory of connected Socket.IO clients, all disconnected after the test."""
    opened: list[SocketClient] = []

    async def open_socket(token: str | None = None, **kwargs: object) -> SocketClient:
        client = await connect_socket(base_url, token, **kwargs)  # type: ignore[arg-type]
        opened.append(client)
        return client

    yield open_socket
    for client in opened:
        if client.sio.connected:
            await client.disconnect()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, started by the first test that asks (about a second)."""
    bindir = find_bindir()
    if bindir is None:
        tool_missing(
            "PostgreSQL tests",
            "no PostgreSQL server binaries (initdb, postgres, psql) in pg_config --bindir, /usr/lib/postgresql/*/bin "
            "or PATH (Debian: apt-get install postgresql; .ci/run installs it)",
        )
    with PostgresServer(bindir) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql://postgres:<password>@127.0.0.1:<port>/chatsvc_tests``: one database shared by the session."""
    return postgres_server.create_database("chatsvc_tests")


@pytest.fixture
def postgres_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh empty database for this test alone, dropped after it."""
    with postgres_server.temporary_database() as url:
        yield url
