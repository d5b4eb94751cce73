"""The SQLite database: connections, PRAGMAs, schema, and the write path.

One connection writes and one reads. WAL lets reads proceed while a write is
in progress, and a lock around write transactions keeps coroutines sharing
the write connection from interleaving their statements. Several processes
may share the file (chatsvc/cluster.py): SQLite waits up to the busy timeout
for another process's write lock, and a write that still finds the database
locked is retried a few times with backoff before it fails.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

BUSY_TIMEOUT_MS = 5000
# Further attempts at a write that found the database locked after the whole busy timeout.
BUSY_RETRIES = 3
BUSY_BACKOFF_SECONDS = 0.05

T = TypeVar("T")


def schema_sql() -> str:
    """The DDL shipped with the package (a link to the repository's schema.sql)."""
    return resources.files("chatsvc").joinpath("schema.sql").read_text(encoding="utf-8")


def is_busy(exc: BaseException) -> bool:
    """Whether an error is SQLite's "database is locked": another connection holds the write lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY
    return "database is locked" in str(exc)


async def retry_busy(operation: Callable[[], Awaitable[T]], *, retries: int = BUSY_RETRIES) -> T:
    """Run ``operation``, again after a growing pause while it fails with "database is locked"."""
    delay = BUSY_BACKOFF_SECONDS
    for _ in range(retries):
        try:
            return await operation()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
        await asyncio.sleep(delay)
        delay *= 2
    return await operation()


class Database:
    """The service's SQLite file, with a write connection and a read connection."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        """Create the file and its folder if needed, apply the schema, open both connections."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = writer = await self._connect()
        # Idempotent DDL, so a retry after another process held the lock is safe.
        await retry_busy(lambda: writer.executescript(schema_sql()))
        self._reader = await self._connect()
        await self._reader.execute("PRAGMA query_only = ON")

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: autocommit, so transactions are explicit.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        # Switching to WAL needs a moment alone with the file: another process may be starting too.
        await retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL"))
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

    async def write_statement(self, statement: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run one writing statement in autocommit mode, retried while another process holds the lock.

        A statement that failed with "database is locked" wrote nothing, so running it again is safe.
        """
        async with self.single_statement() as conn:
            return await retry_busy(lambda: statement(conn))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        assert self._writer is not None, "database is not open"
        async with self._write_lock:
            conn = self._writer
            # BEGIN IMMEDIATE takes the write lock at once, so a busy database shows here, before any work.
            await retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield conn
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
