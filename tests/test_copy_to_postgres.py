"""``chatsvc copy-to-postgres``: a database made by the demo arrives whole in PostgreSQL, ids and all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from chatsvc.config import Config
from chatsvc.db import SqliteDatabase
from chatsvc.demo import DEMO_PASSWORD, prepare_demo
from chatsvc.store.postgres import PostgresDatabase
from chatsvc.store.transfer import TABLES
from chatsvc.testing import TEST_SCRYPT_N, run_chatsvc
from tests.helpers import Api
from tests.process import run_chatsvc_command

Rows = dict[str, list[tuple[Any, ...]]]


async def every_row(db: SqliteDatabase | PostgresDatabase) -> Rows:
    await db.open()
    try:
        tables = {}
        for table in TABLES:
            rows = await db.reader.fetch_all(f'SELECT * FROM "{table}" ORDER BY 1, 2')
            tables[table] = [tuple(row.items()) for row in rows]
        return tables
    finally:
        await db.close()


async def demo_database(tmp_path: Path) -> Path:
    """The database ``chatsvc demo`` makes, once served (its token secret), with a favorite and a friend request."""
    config = Config(db_path=tmp_path / "demo.db", scrypt_n=TEST_SCRYPT_N)
    await prepare_demo(config)
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        api = Api(server.base_url, session)
        login = await api.post("/user/login", {"username": "alice", "password": DEMO_PASSWORD})
        assert login.status in (200, 201), login.body
        token = login.body["token"]
        assert (await api.get("/favorite/add", token, chatHistoryId=1)).status == 200
        dave = await api.new_user("dave")
        assert (await api.post("/friendship/add", {"username": "alice", "reason": "hi"}, dave.token)).status in (
            200,
            201,
        )
    return config.db_path


async def test_copy_to_postgres_round_trips_a_demo_database(tmp_path: Path, postgres_database_url: str) -> None:
    source = await demo_database(tmp_path)
    before = await every_row(SqliteDatabase(source))
    assert before["chat_history"] and before["user"] and before["friendship"] and before["user_chatroom"]

    status, stdout, stderr = await run_chatsvc_command(
        "copy-to-postgres", "--from", str(source), "--to", postgres_database_url
    )
    assert status == 0, stderr
    assert f"chat_history: {len(before['chat_history'])}" in stdout

    assert await every_row(PostgresDatabase(postgres_database_url)) == before
    assert await every_row(SqliteDatabase(source)) == before
    # New rows take ids past the copied ones: the sequences were moved.
    conn = await asyncpg.connect(postgres_database_url)
    try:
        room = before["chat_history"][0][3][1]
        sender = before["chat_history"][0][4][1]
        new_id = await conn.fetchval(
            "INSERT INTO chat_history (content, type, chatroom_id, sender_id) VALUES ('after', 0, $1, $2) RETURNING id",
            room,
            sender,
        )
        assert new_id == max(row[0][1] for row in before["chat_history"]) + 1
        # The copied rooms keep their newest message (compared above), and the trigger moves it on from there.
        assert await conn.fetchval("SELECT last_message_id FROM chatroom WHERE id = $1", room) == new_id
    finally:
        await conn.close()


async def test_copy_to_postgres_refuses_a_target_that_is_not_empty(tmp_path: Path, postgres_database_url: str) -> None:
    source = await demo_database(tmp_path)
    copy = ("copy-to-postgres", "--from", str(source), "--to", postgres_database_url)
    first = await run_chatsvc_command(*copy)
    assert first[0] == 0, first[2]
    copied = await every_row(PostgresDatabase(postgres_database_url))

    status, _, stderr = await run_chatsvc_command(
        "copy-to-postgres", "--from", str(source), "--to", postgres_database_url
    )
    assert status == 1
    assert "is not empty" in stderr and stderr.strip().count("\n") == 0
    assert await every_row(PostgresDatabase(postgres_database_url)) == copied


async def test_copy_to_postgres_refuses_a_missing_source_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    status, _, stderr = await run_chatsvc_command(
        "copy-to-postgres", "--from", str(missing), "--to", "postgresql://u:p@127.0.0.1:5432/chat"
    )
    assert status == 1 and "no SQLite database" in stderr
    assert not missing.exists()
