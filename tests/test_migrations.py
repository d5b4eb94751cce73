"""Schema migrations: an old database upgrades in place with nothing lost, and ends up equal to a new one.

"Old" is schema version 1, the schema chatsvc had before migrations
(tests/fixtures/schema_v1.sql, a frozen copy). The tests read the shipped
steps (chatsvc/migrations/) and the current schema.sql, so they keep checking
every step added later.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from chatsvc.auth import hash_password
from chatsvc.config import Config
from chatsvc.db import SqliteDatabase, schema_sql
from chatsvc.errors import StartupError
from chatsvc.migrate import Migration, latest_version, load_migrations, migrate, split_statements
from chatsvc.testing import TEST_SCRYPT_N, run_chatsvc
from tests.process import run_chatsvc_command

SCHEMA_V1 = Path(__file__).parent / "fixtures" / "schema_v1.sql"
PASSWORD = "secret123"
LATEST = latest_version(load_migrations())


def build_v1_database(path: Path, password_hash: str) -> None:
    """A database made by chatsvc before migrations (user_version 0), with rows in every table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(SCHEMA_V1.read_text(encoding="utf-8"))
        conn.executescript(
            f"""
            PRAGMA foreign_keys = ON;
            INSERT INTO setting (key, value) VALUES ('jwt_secret', 'a-secret-from-before-migrations-0123456789');
            INSERT INTO user (id, username, password_hash, nick_name, email, head_pic, token_version)
            VALUES (1, 'alice', '{password_hash}', 'Alice', 'alice@example.com', 'http://x/a.png', 2),
                   (2, 'bob', '{password_hash}', 'Bob', 'bob@example.com', '', 0),
                   (3, 'carol', '{password_hash}', 'Carol', 'carol@example.com', '', 0);
            INSERT INTO chatroom (id, name, type, pair_key) VALUES (1, 'Alice & Bob', 0, '1:2'), (2, 'Group', 1, NULL);
            INSERT INTO user_chatroom (user_id, chatroom_id) VALUES (1, 1), (2, 1), (1, 2), (2, 2), (3, 2);
            INSERT INTO chat_history (id, content, type, chatroom_id, sender_id, client_msg_id)
            VALUES (1, 'hello bob', 0, 1, 1, NULL), (2, 'http://x/cat.png', 1, 1, 2, 'bob-1'),
                   (3, 'hi all', 0, 2, 3, 'carol-1');
            INSERT INTO friendship (user_id, friend_id) VALUES (1, 2), (2, 1);
            INSERT INTO friend_request (id, from_user_id, to_user_id, reason, status)
            VALUES (1, 1, 2, 'hi', 1), (2, 3, 1, 'me too', 0);
            INSERT INTO favorite (id, user_id, chat_history_id) VALUES (1, 1, 2);
            INSERT INTO captcha (purpose, address, code, expires_at)
            VALUES ('register', 'dan@example.com', '123456', '2999-01-01T00:00:00.000Z');
            """
        )
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
        empty = [table for table in user_tables(conn) if not conn.execute(f"SELECT 1 FROM {table}").fetchone()]
        assert empty == [], f"give every version-1 table a row, so the test sees it survive: {empty}"


def user_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return sorted(name for (name,) in rows)


def dump(path: Path, columns: dict[str, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the given tables, restricted to the given columns, in a stable order."""
    with closing(sqlite3.connect(path)) as conn:
        return {
            table: sorted(conn.execute(f"SELECT {', '.join(names)} FROM {table}").fetchall(), key=repr)
            for table, names in columns.items()
        }


def table_columns(path: Path) -> dict[str, list[str]]:
    with closing(sqlite3.connect(path)) as conn:
        return {table: [row[1] for row in conn.execute(f"PRAGMA table_info({table})")] for table in user_tables(conn)}


_SQL_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\s+|\w+|.", re.DOTALL)


def normalise_sql(sql: str | None) -> str | None:
    """SQL text without comments and layout, keywords and names in lower case, string literals kept."""
    if sql is None:
        return None
    tokens = []
    for token in _SQL_TOKEN.findall(sql):
        if token.isspace() or token.startswith(("--", "/*")):
            continue
        tokens.append(token if token[0] == "'" else token.lower())
    return " ".join(tokens)


def schema_of(path: Path) -> dict[str, Any]:
    """The schema as sqlite_master holds it, normalised, plus each table's columns and the version."""
    with closing(sqlite3.connect(path)) as conn:
        objects = {
            f"{kind} {name} on {table}": normalise_sql(sql)
            for kind, name, table, sql in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
        }
        columns = {table: conn.execute(f"PRAGMA table_xinfo({table})").fetchall() for table in user_tables(conn)}
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    return {"objects": objects, "columns": columns, "user_version": version}


async def open_and_close(path: Path) -> None:
    db = SqliteDatabase(path)
    await db.open()
    await db.close()


async def test_migrations_upgrade_a_version_1_database_with_nothing_lost(tmp_path: Path) -> None:
    path = tmp_path / "data" / "chat.db"
    build_v1_database(path, await hash_password(PASSWORD, n=TEST_SCRYPT_N))
    v1_columns = table_columns(path)
    before = dump(path, v1_columns)

    async with run_chatsvc(Config(db_path=path, scrypt_n=TEST_SCRYPT_N)) as server:
        http, url = server.http, server.base_url
        async with http.post(url + "/user/login", json={"username": "carol", "password": PASSWORD}) as resp:
            assert resp.status == 201, await resp.text()
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(url + "/chat-history/list", params={"chatroomId": "2"}, headers=headers) as resp:
            assert resp.status == 200
            assert [m["content"] for m in await resp.json()] == ["hi all"]
        async with http.get(url + "/chatroom/list", headers=headers) as resp:
            assert [room["id"] for room in await resp.json()] == [2]

    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (LATEST,)
    # Every row of version 1 is still there with the same values (columns added later are not compared).
    assert dump(path, v1_columns) == before


async def test_migrated_schema_equals_a_new_database_made_from_schema_sql(tmp_path: Path) -> None:
    migrated = tmp_path / "migrated.db"
    build_v1_database(migrated, "!")
    await open_and_close(migrated)
    fresh = tmp_path / "fresh.db"
    await open_and_close(fresh)

    got, expected = schema_of(migrated), schema_of(fresh)
    # Part by part, so a difference shows as the object that differs.
    assert got["user_version"] == expected["user_version"] == LATEST
    assert sorted(got["objects"]) == sorted(expected["objects"]), "tables, indexes, triggers and views differ"
    for key, sql in expected["objects"].items():
        assert got["objects"][key] == sql, f"{key}: a migrated database differs from schema.sql"
    assert got["columns"] == expected["columns"]


async def test_a_database_newer_than_the_code_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "data" / "chat.db"
    await open_and_close(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    before = schema_of(path)

    with pytest.raises(StartupError) as refused:
        await open_and_close(path)
    assert refused.value.exit_status == 2
    assert f"schema version {LATEST + 1}" in refused.value.message and "newer" in refused.value.message

    status, _, stderr = await run_chatsvc_command("serve", "--host", "127.0.0.1", "--port", "0", "--db", str(path))
    assert status == 2, stderr
    assert [line for line in stderr.splitlines() if line.startswith("chatsvc:")] == [
        f"chatsvc: {refused.value.message}"
    ]
    assert "Traceback" not in stderr
    assert schema_of(path) == before


async def test_a_new_step_runs_once_in_number_order_with_its_version(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    build_v1_database(path, "!")
    steps = [
        *load_migrations(),
        Migration(LATEST + 1, "add_note", "ALTER TABLE user ADD COLUMN note TEXT NOT NULL DEFAULT '';"),
        Migration(LATEST + 2, "fill_note", "UPDATE user SET note = note || 'x';"),
    ]
    for _ in range(2):  # the second start finds nothing to do
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            assert await migrate(conn, path, schema_sql(), steps) == LATEST + 2
    with closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (LATEST + 2,)
        assert check.execute("SELECT DISTINCT note FROM user").fetchall() == [("x",)]


async def test_a_failing_step_leaves_the_database_at_the_version_before_it(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    build_v1_database(path, "!")
    await open_and_close(path)
    before = schema_of(path)
    broken = Migration(LATEST + 1, "broken", "CREATE TABLE extra (x INTEGER);\nINSERT INTO no_such_table VALUES (1);")
    with pytest.raises(StartupError) as failed:
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            await migrate(conn, path, schema_sql(), [*load_migrations(), broken])
    assert f"{LATEST + 1:03d}_broken" in failed.value.message and "no_such_table" in failed.value.message
    # The step's first statement went with it: the schema and version are as before.
    assert schema_of(path) == before


def test_shipped_steps_are_numbered_from_001_without_gaps(tmp_path: Path) -> None:
    steps = load_migrations()
    assert [step.version for step in steps] == list(range(1, len(steps) + 1))
    assert steps[0].label == "001_baseline"
    (tmp_path / "001_baseline.sql").write_text("")
    (tmp_path / "003_later.sql").write_text("")
    with pytest.raises(ValueError, match="no gap"):
        load_migrations(tmp_path)
    (tmp_path / "003_later.sql").unlink()
    (tmp_path / "2_bad-name.sql").write_text("")
    with pytest.raises(ValueError, match="NNN_lowercase_name"):
        load_migrations(tmp_path)


def test_statements_split_at_semicolons_outside_strings_comments_and_triggers() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');  /* block; comment */
    CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN UPDATE t SET x = 'c;d'; DELETE FROM t WHERE 0; END;
    -- trailing comment only
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[0].endswith("DEFAULT 'a;b');")
    assert statements[1].startswith("/* block; comment */") and statements[1].endswith("END;")
    with pytest.raises(ValueError, match="unfinished"):
        split_statements("CREATE TABLE t (x);\nCREATE TABLE u (y)")
