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

# Times are stored as ISO 8601 UTC text with milliseconds, as the API returns them.
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


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

    def search(self, text: str) -> tuple[str, str, str, dict[str, Any]]:
        """The FTS5 trigram index for three characters or more; a scan of the rooms for fewer.

        The text goes in as one FTS5 string (double quotes doubled), so no
        character of it is query syntax. The trigram tokenizer matches nothing
        shorter than three characters: a two-character query (a CJK word)
        scans the rooms newest first instead (docs/performance.md).
        """
        if len(text) >= 3:
            phrase = '"' + text.replace('"', '""') + '"'
            return (
                "chat_search AS s JOIN chat_history AS h ON h.id = s.rowid",
                "s.chat_search MATCH :phrase",
                "s.rowid",
                {"phrase": phrase},
            )
        # lower() folds ASCII only on SQLite, as the query's lower() below.
        return "chat_history AS h", "instr(lower(h.content), lower(:part)) > 0", "h.id", {"part": text}

    # The write lock makes a claiming UPDATE exclusive already.
    skip_locked = ""

    def fraction_from_now(self, param: str) -> str:
        """The time ``param`` seconds from now; SQLite's modifier takes fractions as they are."""
        return self.seconds_from_now(param)

    def in_room(self, room: str, after: str, before: str) -> str:
        """The room by equality and the id range: SQLite seeks (chatroom_id, id) to the range's end."""
        return f"h.chatroom_id = {room} AND h.id > {after} AND h.id < {before}"

    def search_in_room(self, room: str, before: str | None) -> tuple[str, str]:
        """The room by equality, the cursor only if given: the full-text index drives the search."""
        return f"h.chatroom_id = {room}" + (f" AND h.id < {before}" if before is not None else ""), ""


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
