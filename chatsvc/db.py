"""The database: the interface both engines offer, and the SQLite one (connections, PRAGMAs, the write path).

:func:`open_database` picks the engine from the settings: PostgreSQL
(chatsvc/store/postgres.py) when a database URL is set, else the SQLite file.

One connection writes and one reads. WAL lets reads proceed while a write is
in progress, and a lock around write transactions keeps coroutines sharing
the write connection from interleaving their statements. Several processes
may share the file (chatsvc/fanout/redis.py): SQLite waits up to the busy timeout
for another process's write lock, and a write that still finds the database
locked is retried a few times with backoff before it fails.

The file holds password hashes and possibly the token signing secret, so its
folder is created 0700 and the file 0600 (SQLite gives the ``-wal`` and
``-shm`` files the database file's mode). A write that fails because the
disk is full or failing raises :class:`StorageUnavailable` (503), and the
database remembers the failure until a write succeeds again (``/readyz``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiosqlite

from chatsvc.config import Config
from chatsvc.errors import StartupError
from chatsvc.migrate import migrate
from chatsvc.store import Connection
from chatsvc.store.sqlite import SqliteConnection, is_busy, ping, storage_failure

if TYPE_CHECKING:
    from chatsvc.instance_lock import InstanceLock

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
# Further attempts at a write that found the database locked after the whole busy timeout.
BUSY_RETRIES = 3
BUSY_BACKOFF_SECONDS = 0.05
# Only the service's own user may read the data: it holds password hashes and maybe the signing secret.
PRIVATE_UMASK = 0o077
FOLDER_MODE = 0o700
FILE_MODE = 0o600
# Files of one database, besides the database itself.
SIDE_FILE_SUFFIXES = ("-wal", "-shm")

T = TypeVar("T")


def schema_sql() -> str:
    """The DDL shipped with the package (a link to the repository's schema.sql)."""
    return resources.files("chatsvc").joinpath("schema.sql").read_text(encoding="utf-8")


@contextmanager
def private_umask() -> Iterator[None]:
    """Create files and folders readable by this user only, for the duration of the block."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def create_private_folder(folder: Path) -> None:
    """Create a folder (and missing parents) 0700; an existing one is left as it is."""
    try:
        with private_umask():
            folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"{folder} exists and is not a folder") from None


def prepare_database_file(path: Path) -> None:
    """Create the database's folder 0700 and the empty file 0600 if missing; warn if others can read them.

    SQLite creates the ``-wal`` and ``-shm`` files with the database file's
    permissions, so a 0600 database keeps all three private.
    """
    create_private_folder(path.parent)
    with private_umask(), suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    exposed = [
        (candidate, mode)
        for candidate in (path.parent, path, *(path.with_name(path.name + s) for s in SIDE_FILE_SUFFIXES))
        if (mode := _readable_by_others(candidate)) is not None
    ]
    for candidate, mode in exposed:
        kind = "folder" if candidate == path.parent else "file"
        log.warning(
            "the database %s %s is readable by other users of this host (mode %s): it holds password hashes "
            "and maybe the token secret; run chmod %s %s",
            kind,
            candidate,
            f"{mode:04o}",
            f"{FOLDER_MODE:o}" if kind == "folder" else f"{FILE_MODE:o}",
            candidate,
        )


def _readable_by_others(path: Path) -> int | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    return mode if mode & (stat.S_IRGRP | stat.S_IROTH) else None


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


class Database(Protocol):
    """What the service needs of a database, whichever the engine."""

    # Why the last write failed for lack of storage; None once a write succeeds again.
    write_failure: str | None

    async def claim(self, *, shared: bool) -> None:
        """Hold, until close, the mark of a serving process; StartupError (exit 2) if another one conflicts.

        Exclusive without Redis (one process serves the database), shared
        with it (instances that share rooms through Redis).
        """

    async def open(self) -> None:
        """Connect and bring the schema up to date; StartupError (exit status 2) if that cannot be done."""

    async def close(self) -> None:
        """Close every connection and give up the claim (idempotent)."""

    @property
    def reader(self) -> Connection:
        """The connection for queries outside a write transaction."""

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""

    async def write_statement(self, statement: Callable[[Connection], Awaitable[T]]) -> T:
        """Run one writing statement as its own transaction."""

    async def ping(self) -> bool:
        """Whether the database answers a query that reads its schema."""

    def describe(self) -> str:
        """Where the data is, for logs and messages (no password)."""


def open_database(config: Config) -> Database:
    """The database the settings name: PostgreSQL if a database URL is set, else the SQLite file."""
    if config.database_url is not None:
        try:
            from chatsvc.store.postgres import PostgresDatabase
        except ImportError as exc:
            raise StartupError(
                f"CHATSVC_DATABASE_URL needs the PostgreSQL driver ({exc}): pip install 'chatsvc[postgres]'",
                exit_status=2,
            ) from exc

        return PostgresDatabase(config.database_url, pool_size=config.database_pool_size)
    return SqliteDatabase(config.db_path, synchronous=config.sqlite_synchronous)


class SqliteDatabase:
    """The service's SQLite file, with a write connection and a read connection."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # The store's view of each connection.
        self._writer_conn: SqliteConnection | None = None
        self._reader_conn: SqliteConnection | None = None
        self._write_lock = asyncio.Lock()
        # Why the last write failed for lack of storage; None once a write succeeds again.
        self.write_failure: str | None = None
        self._claim: InstanceLock | None = None

    async def claim(self, *, shared: bool) -> None:
        """Hold the lock file beside the database (chatsvc/instance_lock.py) until close."""
        from chatsvc.instance_lock import InstanceLock  # it uses this module's file helpers

        lock = InstanceLock(self.path, shared=shared)
        await asyncio.to_thread(lock.acquire)
        self._claim = lock

    async def open(self) -> None:
        """Create the file and its folder if needed, bring the schema up to date, open both connections.

        Raises StartupError, with every connection closed, when the file cannot
        be created or opened as an SQLite database, or its schema is newer than
        this code.
        """
        try:
            await asyncio.to_thread(prepare_database_file, self.path)
            self._writer = writer = await self._connect()
            await migrate(writer, self.path, schema_sql())
            self._reader = await self._connect()
            await self._reader.execute("PRAGMA query_only = ON")
            self._writer_conn = SqliteConnection(writer)
            self._reader_conn = SqliteConnection(self._reader)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StartupError(f"cannot open the database {self.path}: {exc}") from exc
            raise

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: autocommit, so transactions are explicit.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            # Switching to WAL needs a moment alone with the file: another process may be starting too.
            await retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            await conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            # The connection's thread would keep the process alive after a failed start.
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close both connections (idempotent)."""
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None
        self._reader_conn = self._writer_conn = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def describe(self) -> str:
        """The database file's path."""
        return str(self.path)

    async def ping(self) -> bool:
        """Whether the database answers a query that reads its schema."""
        return await ping(self.reader)

    async def set_trace(self, callback: Callable[[str], Any] | None) -> None:
        """Call ``callback`` with every SQL statement either connection runs (None turns it off)."""
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.set_trace_callback(callback)  # type: ignore[arg-type]  # None turns it off

    @property
    def reader(self) -> SqliteConnection:
        """The connection for queries outside a write transaction."""
        assert self._reader_conn is not None, "database is not open"
        return self._reader_conn

    async def write_statement(self, statement: Callable[[Connection], Awaitable[T]]) -> T:
        """Run one writing statement in autocommit mode, retried while another process holds the lock.

        A statement that failed with "database is locked" wrote nothing, so running it again is safe. Autocommit
        makes it its own transaction: cheaper than :meth:`transaction` (no BEGIN and COMMIT round trips) for a
        write that is one statement, such as a batch of messages. The lock is taken without a context manager
        made of an async generator, which the event loop would track: this runs for every batch.
        """
        conn = self._writer_conn
        assert conn is not None, "database is not open"
        async with self._write_lock:
            try:
                result = await retry_busy(lambda: statement(conn))
            except sqlite3.Error as exc:
                self._raise_if_storage_failed(exc)
                raise
        self._write_succeeded()
        return result

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteConnection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        assert self._writer is not None and self._writer_conn is not None, "database is not open"
        async with self._write_lock:
            conn = self._writer
            # BEGIN IMMEDIATE takes the write lock at once, so a busy database shows here, before any work.
            try:
                await retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
            except sqlite3.Error as exc:
                self._raise_if_storage_failed(exc)
                raise
            try:
                yield self._writer_conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                await self._roll_back(conn)
                if isinstance(exc, sqlite3.Error):
                    self._raise_if_storage_failed(exc)
                raise
        self._write_succeeded()

    async def _roll_back(self, conn: aiosqlite.Connection) -> None:
        # After some errors (a full disk among them) SQLite has rolled back already.
        if not conn.in_transaction:
            return
        try:
            await conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("rolling back a failed transaction failed")

    def _raise_if_storage_failed(self, exc: sqlite3.Error) -> None:
        """Raise StorageUnavailable, and remember why, if a write failed for a full or failing disk."""
        unavailable = storage_failure(exc)
        if unavailable is not None:
            if self.write_failure is None:
                log.error("writes to the database fail (%s): answering 503 until one succeeds", exc)
            self.write_failure = str(exc)
            raise unavailable from exc

    def _write_succeeded(self) -> None:
        if self.write_failure is not None:
            log.warning("writes to the database succeed again")
            self.write_failure = None
