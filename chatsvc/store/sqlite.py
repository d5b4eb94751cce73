"""SQLite's side of the store: its dialect, its connection as the store uses it, and its errors.

The store's SQL is already SQLite's (``?`` and ``:name`` placeholders), so a
statement runs as written: this wrapper adds one method call to aiosqlite.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import aiosqlite
import orjson

from chatsvc.errors import StorageUnavailable
from chatsvc.store import Params
from chatsvc.store.search import is_cjk_pair

# Times are stored as ISO 8601 UTC text with milliseconds, as the API returns them.
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

# A search index entry's rowid is chatroom_id * ROOM_STRIDE + message id (schema.sql).
ROOM_STRIDE = 2**32


class SqliteDialect:
    """SQLite's spelling of the fragments in chatsvc.store.Dialect."""

    name = "sqlite"
    now = NOW

    def seconds_from_now(self, param: str) -> str:
        """The time ``param`` seconds from now, as stored text."""
        return f"strftime('%Y-%m-%dT%H:%M:%fZ', 'now', {param} || ' seconds')"

    def contains(self, text: str, part: str) -> str:
        """``part`` occurs in ``text``."""
        return f"instr({text}, {part}) > 0"

    def json_array(self, column: str) -> str:
        """The group's values as a JSON array (in the order the index delivers them)."""
        return f"json_group_array({column})"

    def in_list(self, param: str, kind: str) -> str:
        """The values of a JSON array parameter."""
        return f"(SELECT value FROM json_each({param}))"

    def list_value(self, values: Iterable[Any]) -> Any:
        """A list as the JSON text json_each reads."""
        return orjson.dumps(list(values)).decode()

    def search(self, text: str, one_room: bool) -> tuple[str, str, str, dict[str, Any]]:
        """An FTS5 index (schema.sql): trigrams for three characters or more, CJK pairs for two.

        An entry's rowid is ``chatroom_id * 2^32 + message id``. In one room,
        the room's rowid range is read newest first until ``limit``; across
        rooms, the word's matches in every room are read once, the newest
        ``limit`` in the caller's rooms kept (one index lookup instead of one
        per room, and ``limit`` rows of the history read). The
        text goes in as one FTS5 string (double quotes doubled), so no
        character of it is query syntax. Two characters that are not both CJK
        have no index: the caller's rooms are scanned (docs/performance.md).
        """
        if len(text) >= 3:
            table, match = "chat_search", '"' + text.replace('"', '""') + '"'
        elif is_cjk_pair(text):
            table, match = "chat_search_pairs", '"' + text.encode("utf-8", "surrogatepass").hex().upper() + '"'
        else:
            # lower() folds ASCII only on SQLite, as the query's lower() below. Across rooms, the history newest
            # first (CROSS JOIN keeps it outside) until ``limit`` matches in the caller's rooms.
            pair = "user_chatroom AS m JOIN chat_history AS h ON h.chatroom_id = m.chatroom_id"
            if not one_room:
                pair = "chat_history AS h CROSS JOIN user_chatroom AS m ON m.chatroom_id = h.chatroom_id"
            return pair, "instr(lower(h.content), lower(:part)) > 0", "h.id DESC", {"part": text}
        room = f"m.chatroom_id * {ROOM_STRIDE}"
        # CROSS JOIN fixes the order (SQLite does not reorder it): the room, then its range of the index.
        if one_room:
            source = f"""user_chatroom AS m
                CROSS JOIN {table} AS s ON s.{table} MATCH :match AND s.rowid BETWEEN {room} AND {room} + :top
                JOIN chat_history AS h ON h.id = s.rowid - {room}"""
            return source, "1", "s.rowid DESC", {"match": match}
        # Across rooms: the index once, each match's room (its rowid's high half) checked against the caller's
        # rooms, and only the newest ``limit`` of them (by the rowid's low half, the id) read from the history.
        source = f"""(
                SELECT s.rowid % {ROOM_STRIDE} AS id, s.rowid / {ROOM_STRIDE} AS room FROM {table} AS s
                WHERE s.{table} MATCH :match AND s.rowid % {ROOM_STRIDE} <= :top
                  AND s.rowid / {ROOM_STRIDE} IN (SELECT chatroom_id FROM user_chatroom WHERE user_id = :user)
                ORDER BY 1 DESC LIMIT :limit
            ) AS hit
            JOIN user_chatroom AS m ON m.user_id = :user AND m.chatroom_id = hit.room
            JOIN chat_history AS h ON h.id = hit.id"""
        return source, "1", "h.id DESC", {"match": match}

    # The write lock makes a claiming UPDATE exclusive already.
    skip_locked = ""

    def fraction_from_now(self, param: str) -> str:
        """The time ``param`` seconds from now; SQLite's modifier takes fractions as they are."""
        return self.seconds_from_now(param)

    def in_room(self, room: str, after: str, before: str) -> str:
        """The room by equality and the id range: SQLite seeks (chatroom_id, id) to the range's end."""
        return f"h.chatroom_id = {room} AND h.id > {after} AND h.id < {before}"


DIALECT = SqliteDialect()


class SqliteConnection:
    """An aiosqlite connection behind the store's Connection interface."""

    dialect = DIALECT

    def __init__(self, raw: aiosqlite.Connection) -> None:
        self.raw = raw

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        """The first row of a query as a dict, or None."""
        async with self.raw.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return dict(row) if row is not None else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Every row of a query as dicts."""
        rows = await self.raw.execute_fetchall(sql, params)
        return [dict(row) for row in rows]

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, or None."""
        async with self.raw.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return row[0] if row is not None else None

    async def fetch_column(self, sql: str, params: Params = ()) -> list[Any]:
        """The first column of every row."""
        return [row[0] for row in await self.raw.execute_fetchall(sql, params)]

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; the number of rows it changed."""
        async with self.raw.execute(sql, params) as cursor:
            return cursor.rowcount

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement once per row of parameters."""
        await self.raw.executemany(sql, rows)


def is_busy(exc: BaseException) -> bool:
    """Whether an error is SQLite's "database is locked": another connection holds the write lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY
    return "database is locked" in str(exc)


def storage_failure(exc: BaseException) -> StorageUnavailable | None:
    """The 503 to answer for a write that failed because the disk is full or failing; None for other errors."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if code is not None else None
    if primary == sqlite3.SQLITE_FULL or (primary is None and "database or disk is full" in str(exc)):
        return StorageUnavailable("The server's disk is full: nothing was saved, please try again later")
    if primary == sqlite3.SQLITE_IOERR or (primary is None and "disk I/O error" in str(exc)):
        return StorageUnavailable("The server cannot write to its disk: nothing was saved, please try again later")
    return None


async def ping(conn: SqliteConnection) -> bool:
    """Whether the database answers a query that reads its schema."""
    return await conn.fetch_value("SELECT count(*) >= 0 FROM setting") == 1
