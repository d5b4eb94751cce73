"""The SQLite database: connections, PRAGMAs, schema, and the write path.

One connection writes and one reads. WAL lets reads proceed while a write is
in progress, and a lock around write transactions keeps coroutines sharing
the write connection from interleaving their statements.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

BUSY_TIMEOUT_MS = 5000


def schema_sql() -> str:
    """The DDL shipped with the package (a link to the repository's schema.sql)."""
    return resources.files("chatsvc").joinpath("schema.sql").read_text(encoding="utf-8")


class Database:
    """The service's SQLite file, with a write connection and a read connection."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        """Create the file and its folder if needed, apply the schema, open both connections."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._writer.executescript(schema_sql())
        self._reader = await self._connect()
        await self._reader.execute("PRAGMA query_only = ON")

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: autocommit, so transactions are explicit.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def close(self) -> None:
        """Close both connections (idempotent)."""
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def set_trace(self, callback: Callable[[str], Any] | None) -> None:
        """Call ``callback`` with every SQL statement either connection runs (None turns it off)."""
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.set_trace_callback(callback)  # type: ignore[arg-type]  # None turns it off

    @property
    def reader(self) -> aiosqlite.Connection:
        """The connection for queries outside a write transaction."""
        assert self._reader is not None, "database is not open"
        return self._reader

    @asynccontextmanager
    async def single_statement(self) -> AsyncIterator[aiosqlite.Connection]:
        """The write connection for one statement, which autocommit makes its own transaction.

        Cheaper than :meth:`transaction` (no BEGIN and COMMIT round trips), for
        a write that is one statement, such as a batch of messages.
        """
        assert self._writer is not None, "database is not open"
        async with self._write_lock:
            yield self._writer

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        assert self._writer is not None, "database is not open"
        async with self._write_lock:
            conn = self._writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
