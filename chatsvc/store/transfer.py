"""Whole tables, for ``chatsvc copy-to-postgres``: read them from one engine, write them to another, ids and all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from chatsvc.store import Connection

# Every table, parents before children, so each row's references exist when it is written.
TABLES = (
    "setting",
    "user",
    "chatroom",
    "user_chatroom",
    "chat_history",
    "friendship",
    "friend_request",
    "favorite",
    "captcha",
    "upload",
    "webhook_outbox",
)
# Tables with an integer id: read by ranges of ids, and their id sequence set past the largest after a copy.
WITH_ID = {"user", "chatroom", "chat_history", "friend_request", "favorite"}
PAGE_ROWS = 5000


async def count_rows(conn: Connection, table: str) -> int:
    """The number of rows in one of TABLES."""
    assert table in TABLES
    return int(await conn.fetch_value(f'SELECT count(*) FROM "{table}"'))


async def read_pages(conn: Connection, table: str) -> AsyncIterator[list[dict[str, Any]]]:
    """The rows of one of TABLES, in pages of at most PAGE_ROWS, in primary-key order."""
    assert table in TABLES
    if table in WITH_ID:
        last = 0
        while rows := await conn.fetch_all(
            f'SELECT * FROM "{table}" WHERE id > ? ORDER BY id LIMIT ?', (last, PAGE_ROWS)
        ):
            yield rows
            last = rows[-1]["id"]
        return
    offset = 0
    while rows := await conn.fetch_all(f'SELECT * FROM "{table}" ORDER BY 1, 2 LIMIT ? OFFSET ?', (PAGE_ROWS, offset)):
        yield rows
        offset += len(rows)


async def write_rows(conn: Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows, read by read_pages from another database, into one of TABLES, keeping every column."""
    assert table in TABLES
    if not rows:
        return
    columns = list(rows[0])
    names = ", ".join(f'"{column}"' for column in columns)
    marks = ", ".join("?" * len(columns))
    await conn.execute_many(
        f'INSERT INTO "{table}" ({names}) VALUES ({marks})', [tuple(row[c] for c in columns) for row in rows]
    )


async def move_postgres_sequences_past_ids(conn: Connection) -> None:
    """Set each id sequence of a PostgreSQL database past the largest id stored, so new rows get new ids."""
    for table in sorted(WITH_ID):
        await conn.fetch_value(
            f"""
            SELECT setval(pg_get_serial_sequence('"{table}"', 'id'), coalesce(max(id), 0) + 1, false)
            FROM "{table}"
            """
        )
