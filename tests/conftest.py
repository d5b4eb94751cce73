"""The real application on a real loopback port over a temporary SQLite file or a real PostgreSQL database.

A test that runs a server runs on SQLite; in a module marked ``both_engines``
it runs on PostgreSQL too (``test_x[sqlite]``, ``test_x[postgres]``), with a
fresh database of its own on the session's PostgreSQL server. A test of such
a module that looks into the SQLite file itself is marked ``sqlite_only``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
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


ENGINES = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests of ``both_engines`` modules on each engine; every other test on SQLite."""
    if "engine" not in metafunc.fixturenames:
        return
    both = metafunc.definition.get_closest_marker("both_engines") is not None
    sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") is not None
    metafunc.parametrize("engine", ENGINES if both and not sqlite_only else ENGINES[:1], indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The storage engine of this test's server: "sqlite" or "postgres"."""
    return str(request.param)


@pytest.fixture
def database_url(engine: str, request: pytest.FixtureRequest) -> str | None:
    """A fresh PostgreSQL database for this test on the postgres leg; None on SQLite."""
    if engine == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_database_url")
    return url


Rows = list[tuple[Any, ...]]


@pytest.fixture
def db_rows(config: Config, database_url: str | None) -> Callable[..., Rows]:
    """Run one statement (``?`` placeholders) on this test's database from a connection of its own; its rows.

    Synchronous, as a test looks into the database between two requests: on
    PostgreSQL the query runs on a loop of its own in another thread.
    """
    if database_url is None:

        def sqlite_rows(sql: str, params: tuple[Any, ...] = ()) -> Rows:
            with contextlib.closing(sqlite3.connect(config.db_path, timeout=5)) as conn, conn:
                return conn.execute(sql, params).fetchall()

        return sqlite_rows
    url = database_url

    def postgres_rows(sql: str, params: tuple[Any, ...] = ()) -> Rows:
        from chatsvc.store.postgres import PostgresDatabase

        async def query() -> Rows:
            db = PostgresDatabase(url, pool_size=1)
            await db.open()
            try:
                async with db.transaction() as conn:
                    found = await conn.fetch_all(sql, params)
            finally:
                await db.close()
            return [tuple(row.values()) for row in found]

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, query()).result()

    return postgres_rows


@pytest.fixture
async def server(config: Config, database_url: str | None) -> AsyncIterator[ChatsvcServer]:
    """The chatsvc app built by the real factory, listening on 127.0.0.1 (chatsvc.testing, as other projects use it)."""
    if database_url is not None:
        config = config.with_changes(database_url=database_url)
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
