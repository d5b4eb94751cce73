"""Migrations 008 (issue 15) and 010: the search index by room is filled for the messages stored before it.

Each test makes a database at the schema before the step (SQLite: version 1,
the schema before migrations, whose steps include the old trigram index of
004; PostgreSQL: version 7), stores messages in it with plain SQL, then starts
chatsvc, which migrates it, and searches over HTTP as the members would.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
import aiosqlite
import asyncpg

from chatsvc.auth import hash_password
from chatsvc.migrate import load_migrations, migrate, migrate_postgres, postgres_migrations_folder
from chatsvc.testing import TEST_SCRYPT_N, run_chatsvc
from tests.conftest import make_config
from tests.helpers import Api, User, connect_socket
from tests.test_migrations import PASSWORD, build_v1_database

SEARCH_STEP = 8
# The search index off the write path (SQLite only): the watermark.
WATERMARK_STEP = 10

# Room 1 is alice and bob's, room 2 the group of all three, room 3 carol's alone (ids as the rows below make them).
MESSAGES = [
    (10, "Quarterly REPORT is due", 0, 1, 1),
    (11, "大家你好呀", 0, 2, 3),
    (12, "report in the group, 你好", 0, 2, 2),
    (13, "http://x/report.png", 1, 2, 1),  # an image: not text, not searched
    (14, "你好 report where bob is not", 0, 3, 3),
]


async def search(api: Api, user: User, q: str, **params: object) -> list[int]:
    resp = await api.get("/chat-history/search", user.token, q=q, **params)
    assert resp.status == 200, resp.body
    return [message["id"] for message in resp.body]


async def check_found(api: Api) -> None:
    """What bob finds among MESSAGES (and, on PostgreSQL, not the deleted message 15)."""
    bob = await api.login("bob", PASSWORD)
    assert await search(api, bob, "report") == [12, 10]
    assert await search(api, bob, "report", chatroomId=1) == [10]
    assert await search(api, bob, "你好") == [12, 11]
    assert await search(api, bob, "你好", chatroomId=2) == [12, 11]
    assert await search(api, bob, "大家你好", chatroomId=2) == [11]
    assert await search(api, bob, "png") == []


async def test_sqlite_migration_indexes_the_messages_stored_before_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    build_v1_database(config.db_path, await hash_password(PASSWORD, n=TEST_SCRYPT_N))
    with closing(sqlite3.connect(config.db_path)) as conn, conn:
        conn.execute("INSERT INTO chatroom (id, name, type) VALUES (3, 'Carol alone', 1)")
        conn.execute("INSERT INTO user_chatroom (user_id, chatroom_id) VALUES (3, 3)")
        conn.executemany(
            "INSERT INTO chat_history (id, content, type, chatroom_id, sender_id) VALUES (?, ?, ?, ?, ?)", MESSAGES
        )
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        await check_found(Api(server.base_url, session))


async def test_postgres_migration_indexes_the_messages_stored_before_it(
    tmp_path: Path, postgres_database_url: str
) -> None:
    steps = [step for step in load_migrations(postgres_migrations_folder()) if step.version < SEARCH_STEP]
    password_hash = await hash_password(PASSWORD, n=TEST_SCRYPT_N)
    conn = await asyncpg.connect(postgres_database_url)
    try:
        await migrate_postgres(conn, "the test database", steps)
        await conn.executemany(
            """INSERT INTO "user" (id, username, password_hash, nick_name, email) VALUES ($1, $2, $3, $2, '')""",
            [(1, "alice", password_hash), (2, "bob", password_hash), (3, "carol", password_hash)],
        )
        await conn.execute("SELECT setval(pg_get_serial_sequence('\"user\"', 'id'), 3)")
        await conn.executemany(
            "INSERT INTO chatroom (id, name, type) VALUES ($1, $2, $3)",
            [(1, "Alice & Bob", 0), (2, "Group", 1), (3, "Carol alone", 1)],
        )
        await conn.executemany(
            "INSERT INTO user_chatroom (user_id, chatroom_id) VALUES ($1, $2)",
            [(1, 1), (2, 1), (1, 2), (2, 2), (3, 2), (3, 3)],
        )
        await conn.executemany(
            "INSERT INTO chat_history (id, content, type, chatroom_id, sender_id) VALUES ($1, $2, $3, $4, $5)",
            MESSAGES,
        )
        # A message deleted before the step (kept with its text here, so that only the mark keeps it out).
        await conn.execute(
            "INSERT INTO chat_history (id, content, type, chatroom_id, sender_id, deleted)"
            " VALUES (15, 'deleted report 你好', 0, 2, 1, 1)"
        )
    finally:
        await conn.close()
    config = make_config(tmp_path, database_url=postgres_database_url)
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        await check_found(Api(server.base_url, session))
    conn = await asyncpg.connect(postgres_database_url)
    try:
        assert await conn.fetchval("SELECT max(version) FROM schema_migration") >= SEARCH_STEP
    finally:
        await conn.close()


async def test_sqlite_migration_010_keeps_the_messages_indexed_before_it_found(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    build_v1_database(config.db_path, await hash_password(PASSWORD, n=TEST_SCRYPT_N))
    async with aiosqlite.connect(config.db_path, isolation_level=None) as conn:
        steps = [step for step in load_migrations() if step.version < WATERMARK_STEP]
        # The schema the step before left: no more of schema.sql than those steps make.
        await migrate(conn, config.db_path, "", steps)
    with closing(sqlite3.connect(config.db_path)) as conn, conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (WATERMARK_STEP - 1,)
        conn.execute("INSERT INTO chatroom (id, name, type) VALUES (3, 'Carol alone', 1)")
        conn.execute("INSERT INTO user_chatroom (user_id, chatroom_id) VALUES (3, 3)")
        # Indexed as they are stored, by the triggers of that version.
        conn.executemany(
            "INSERT INTO chat_history (id, content, type, chatroom_id, sender_id) VALUES (?, ?, ?, ?, ?)", MESSAGES
        )
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        api = Api(server.base_url, session)
        await check_found(api)
        # Edited after the step: its entry leaves the index (it was there once, not twice) and comes back.
        bob = await api.login("bob", PASSWORD)
        socket = await connect_socket(server.base_url, bob.token)
        try:
            ack = await socket.call("editMessage", {"messageId": 12, "content": "rewritten"})
            assert ack["content"] == "rewritten", ack
        finally:
            await socket.disconnect()
        assert await search(api, bob, "report") == [10]
        assert await search(api, bob, "你好") == [11]
        assert await search(api, bob, "rewritten") == [12]
    with closing(sqlite3.connect(config.db_path)) as conn:
        assert conn.execute("SELECT indexed_id FROM chat_search_watermark").fetchone() == (14,)
