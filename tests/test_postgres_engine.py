"""PostgreSQL as the storage engine: choosing it, its schema and migrations, refused starts, and losing the server.

The behaviour of every route and event on PostgreSQL is checked by the
``both_engines`` modules (tests/conftest.py); this module covers what only
PostgreSQL has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsvc.config import Config, database_label
from chatsvc.errors import StartupError
from chatsvc.migrate import latest_version, load_migrations, migrate_postgres, postgres_migrations_folder
from chatsvc.store import transfer
from chatsvc.store.postgres import PostgresDatabase, decode_time, translate
from chatsvc.testing import TEST_SCRYPT_N, run_chatsvc
from chatsvc.testing_postgres import PostgresServer, free_port
from tests.conftest import make_config
from tests.helpers import Api, assert_error
from tests.process import run_chatsvc_command

ROOT = Path(__file__).parent.parent
SCHEMA_POSTGRES = ROOT / "schema_postgres.sql"

# The shape of a schema: columns, constraints and indexes of every table but the migrations' own.
SHAPE_QUERIES = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity, identity_generation
        FROM information_schema.columns WHERE table_schema = 'public' AND table_name != 'schema_migration'
        ORDER BY 1, 2
    """,
    "constraints": """
        SELECT rel.relname, con.conname, con.contype, pg_get_constraintdef(con.oid)
        FROM pg_constraint AS con JOIN pg_class AS rel ON rel.oid = con.conrelid
        JOIN pg_namespace AS ns ON ns.oid = rel.relnamespace
        WHERE ns.nspname = 'public' AND rel.relname != 'schema_migration'
        ORDER BY 1, 2
    """,
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename != 'schema_migration'
        ORDER BY 1, 2
    """,
}


async def schema_shape(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {name: [tuple(row) for row in await conn.fetch(sql)] for name, sql in SHAPE_QUERIES.items()}
    finally:
        await conn.close()


@pytest.fixture
def second_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    with postgres_server.temporary_database() as url:
        yield url


async def test_postgres_schema_file_equals_the_migrated_database(
    postgres_database_url: str, second_database_url: str
) -> None:
    db = PostgresDatabase(postgres_database_url)
    await db.open()
    await db.close()
    conn = await asyncpg.connect(second_database_url)
    try:
        await conn.execute(SCHEMA_POSTGRES.read_text(encoding="utf-8"))
    finally:
        await conn.close()
    migrated, fresh = await schema_shape(postgres_database_url), await schema_shape(second_database_url)
    assert migrated == fresh
    # Every table of the schema, and no other, is one copy-to-postgres copies.
    assert {row[0] for row in migrated["columns"]} == set(transfer.TABLES)


def test_every_sqlite_step_has_a_postgres_twin() -> None:
    sqlite_steps = [(step.version, step.name) for step in load_migrations()]
    postgres_steps = [(step.version, step.name) for step in load_migrations(postgres_migrations_folder())]
    assert postgres_steps == sqlite_steps


async def test_postgres_records_each_step_and_runs_it_once(postgres_database_url: str) -> None:
    for _ in range(2):
        db = PostgresDatabase(postgres_database_url)
        await db.open()
        await db.close()
    conn = await asyncpg.connect(postgres_database_url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migration ORDER BY version")
    finally:
        await conn.close()
    expected = load_migrations(postgres_migrations_folder())
    assert [(row["version"], row["name"]) for row in rows] == [(step.version, step.name) for step in expected]


async def test_postgres_database_newer_than_the_code_is_refused_and_left_alone(postgres_database_url: str) -> None:
    db = PostgresDatabase(postgres_database_url)
    await db.open()
    await db.close()
    newer = latest_version(load_migrations(postgres_migrations_folder())) + 1
    conn = await asyncpg.connect(postgres_database_url)
    try:
        await conn.execute("INSERT INTO schema_migration (version, name) VALUES ($1, 'from_the_future')", newer)
        with pytest.raises(StartupError) as refused:
            await migrate_postgres(conn, "the test database")
        assert await conn.fetchval("SELECT max(version) FROM schema_migration") == newer
    finally:
        await conn.close()
    assert refused.value.exit_status == 2
    assert f"schema version {newer}, newer than this chatsvc knows" in refused.value.message


async def test_database_url_wins_over_the_sqlite_file_which_is_never_created(
    tmp_path: Path, postgres_database_url: str
) -> None:
    config = make_config(tmp_path, database_url=postgres_database_url)
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        api = Api(server.base_url, session)
        alice = await api.new_user("alice")
        assert (await api.get("/user/info", alice.token)).body["username"] == "alice"
    # The data folder still holds uploads (the disk file store); no SQLite file or lock appears in it.
    assert not list(config.db_path.parent.glob(config.db_path.name + "*"))
    conn = await asyncpg.connect(postgres_database_url)
    try:
        assert await conn.fetchval('SELECT username FROM "user"') == "alice"
    finally:
        await conn.close()


async def test_times_have_the_same_json_shape_as_on_sqlite(tmp_path: Path, postgres_database_url: str) -> None:
    config = make_config(tmp_path, database_url=postgres_database_url)
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        api = Api(server.base_url, session)
        alice = await api.new_user("alice")
        info = (await api.get("/user/info", alice.token)).body
    # 2024-05-01T12:00:00.123Z: what SQLite's strftime('%Y-%m-%dT%H:%M:%fZ') stores.
    assert len(info["createTime"]) == 24 and info["createTime"].endswith("Z") and info["createTime"][10] == "T"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u:p@127.0.0.1/chat", "CHATSVC_DATABASE_URL must be a postgresql:// URL"),
        ("postgresql://u:p@127.0.0.1:99999/chat", "CHATSVC_DATABASE_URL has an invalid port"),
        ("postgresql://u:p@127.0.0.1:5432/", "CHATSVC_DATABASE_URL must name a database"),
    ],
)
async def test_a_malformed_database_url_stops_the_start_with_one_line(url: str, says: str, tmp_path: Path) -> None:
    status, _, stderr = await run_chatsvc_command(
        "init-db", env={"CHATSVC_DATABASE_URL": url, "CHATSVC_DB": str(tmp_path / "x.db")}
    )
    assert status == 2
    assert stderr.strip().count("\n") == 0 and says in stderr
    assert not (tmp_path / "x.db").exists()


async def test_an_unreachable_server_stops_the_start_with_one_line_without_the_password(tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://chat:hunter2-secret@127.0.0.1:{port}/chat"
    status, _, stderr = await run_chatsvc_command(
        "serve", "--host", "127.0.0.1", "--port", "0", "--database-url", url, "--db", str(tmp_path / "x.db")
    )
    assert status == 2
    assert stderr.strip().count("\n") == 0
    assert f"cannot connect to the database postgresql://chat@127.0.0.1:{port}/chat" in stderr
    assert "hunter2" not in stderr
    assert not (tmp_path / "x.db").exists()


def test_database_label_hides_the_password() -> None:
    config = Config(database_url="postgresql://chat:pw@db.internal:5432/chat")
    assert database_label(config) == "postgresql://chat@db.internal:5432/chat"


def test_placeholders_are_translated_outside_strings_and_casts() -> None:
    assert translate("SELECT ? , '?' , x::text, ?") == ("SELECT $1 , '?' , x::text, $2", None)
    assert translate("SELECT :a, :b, :a, ':c' -- :d\n") == ("SELECT $1, $2, $1, ':c' -- :d\n", ("a", "b"))
    with pytest.raises(ValueError):
        translate("SELECT ?, :a")


@pytest.fixture
async def own_postgres(postgres_server: PostgresServer) -> AsyncIterator[PostgresServer]:
    """A PostgreSQL server of this test alone, which it may stop and start (skipped as the session's is)."""
    server = PostgresServer(postgres_server.bindir)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)


async def test_postgres_down_answers_503_and_the_pool_reconnects_when_it_is_back(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    with own_postgres.temporary_database() as url:
        config = Config(host="127.0.0.1", port=0, db_path=tmp_path / "chat.db", scrypt_n=TEST_SCRYPT_N)
        async with run_chatsvc(config, database_url=url) as server, aiohttp.ClientSession() as session:
            api = Api(server.base_url, session)
            alice = await api.new_user("alice")
            await asyncio.to_thread(own_postgres.stop)
            for path in ("/user/info", "/chatroom/list"):
                resp = await api.get(path, alice.token)
                assert_error(resp.status, resp.body, 503)
            resp = await api.get("/readyz")
            assert_error(resp.status, resp.body, 503)
            await asyncio.to_thread(own_postgres.start)
            assert (await api.get("/readyz")).status == 200
            assert (await api.get("/user/info", alice.token)).body["username"] == "alice"
            assert (await api.new_user("bob")).username == "bob"


async def test_a_second_process_without_redis_on_one_postgres_database_is_refused(
    tmp_path: Path, postgres_database_url: str
) -> None:
    first = make_config(tmp_path / "one", database_url=postgres_database_url)
    second = make_config(tmp_path / "two", database_url=postgres_database_url)
    async with run_chatsvc(first):
        with pytest.raises(StartupError) as refused:
            async with run_chatsvc(second):
                pass
    assert refused.value.exit_status == 2
    assert "another chatsvc process is serving postgresql://postgres@" in refused.value.message
    # Once the first has stopped, the database is free again.
    async with run_chatsvc(second) as server, aiohttp.ClientSession() as session:
        assert (await Api(server.base_url, session).get("/readyz")).status == 200


# Microseconds from PostgreSQL's epoch (2000-01-01) to the first and the last instant a datetime holds.
FIRST_INSTANT = (datetime(1, 1, 1) - datetime(2000, 1, 1)) // timedelta(microseconds=1)
LAST_INSTANT = (datetime(9999, 12, 31, 23, 59, 59, 999999) - datetime(2000, 1, 1)) // timedelta(microseconds=1)


@given(st.lists(st.integers(FIRST_INSTANT, LAST_INSTANT), min_size=1, max_size=50))
def test_decoded_time_is_the_iso_text_of_the_instant_to_the_millisecond(instants: list[int]) -> None:
    for microseconds in instants + instants:  # the second time through, from the text kept of each second
        expected = (datetime(2000, 1, 1) + timedelta(microseconds=microseconds)).isoformat(timespec="milliseconds")
        assert decode_time((microseconds,)) == expected + "Z"


def test_decoded_times_stay_right_past_the_number_of_seconds_kept() -> None:
    seconds = [n * 1_000_003 for n in range(10_000)]  # more distinct seconds than are kept, each one again later
    first = [decode_time((s,)) for s in seconds]
    assert [decode_time((s,)) for s in seconds] == first
    assert first[1] == "2000-01-01T00:00:01.000Z" and first[-1] == "2000-01-01T02:46:39.029Z"
