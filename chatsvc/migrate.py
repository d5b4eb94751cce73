"""Versioned schema migrations: ``PRAGMA user_version`` and the SQL files in ``chatsvc/migrations/``.

A database records its schema version in SQLite's ``user_version``. Each file
``chatsvc/migrations/NNN_name.sql`` turns version NNN-1 into version NNN; at
start the pending ones run in number order, each in its own transaction
together with its version bump, so a step is applied whole or not at all.

* A new database is made from ``schema.sql`` (the readable current schema)
  and gets the newest version at once; no step runs.
* A database made before migrations existed has tables and ``user_version``
  0: it has the schema of version 1 (``001_baseline.sql`` says which), and is
  upgraded from there.
* A database whose version is newer than the newest file is refused: an older
  chatsvc must not write into a schema it does not know.

After the steps, ``schema.sql`` is applied again (every statement in it is
idempotent), so a new table or index may be added there alone; a change to an
existing table needs a step file as well, and ``schema.sql`` updated to match.
Several processes may start at once on one database: each transaction reads
the version again after taking the write lock, so a step runs once.

PostgreSQL (:func:`migrate_postgres`) has its own steps, with the same
numbers, in ``chatsvc/migrations/postgres/``: every SQLite step has its
PostgreSQL twin. There a new database is made by running every step from
``001_baseline.sql`` (``schema-postgres.sql`` is the readable result, tested
equal), the version is the largest in the ``schema_migration`` table, and
instances starting together take turns through an advisory lock.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite

from chatsvc.errors import StartupError

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

# The version of a database made before migrations existed (it has tables, and user_version 0).
BASELINE_VERSION = 1
MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# How long a starting process waits for another one that holds the write lock (e.g. migrating).
LOCK_WAIT_SECONDS = 60.0
# The advisory lock PostgreSQL migrations hold (any number unlikely to be used by another application).
POSTGRES_LOCK_KEY = 0x63686174737663


@dataclass(frozen=True)
class Migration:
    """One step: the SQL that turns version ``version - 1`` into ``version``."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """The step as its file is named, e.g. ``002_user_status``."""
        return f"{self.version:03d}_{self.name}"


def postgres_migrations_folder() -> Traversable:
    """The package's folder of PostgreSQL steps."""
    return resources.files("chatsvc").joinpath("migrations").joinpath("postgres")


def load_migrations(folder: Traversable | None = None) -> list[Migration]:
    """The steps in ``folder`` (default: the package's SQLite ``migrations``), by version; ValueError if misnumbered."""
    folder = folder if folder is not None else resources.files("chatsvc").joinpath("migrations")
    steps = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        match = MIGRATION_FILE.match(entry.name)
        if match is None:
            raise ValueError(f"migration file {entry.name!r} is not named NNN_lowercase_name.sql")
        steps.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    steps.sort(key=lambda step: step.version)
    versions = [step.version for step in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise ValueError(f"migrations must be numbered 001, 002, ... with no gap or repeat, found {versions}")
    return steps


def latest_version(steps: list[Migration]) -> int:
    """The schema version this code writes: the last step's, at least the baseline."""
    return max([BASELINE_VERSION, *(step.version for step in steps)])


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script, each ending with its ``;`` (comments stay with the next statement)."""
    statements: list[str] = []
    pending = ""
    *pieces, last = script.split(";")
    for piece in pieces:
        pending += piece + ";"
        # A ";" inside a string, a comment or a trigger body does not end the statement.
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    rest = pending + last
    if _without_comments(rest).strip():
        raise ValueError(f"SQL script ends with an unfinished statement: {rest.strip()[:80]!r}")
    return [statement for statement in statements if _without_comments(statement).strip(" \t\r\n;")]


def _without_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.DOTALL)


async def migrate(conn: aiosqlite.Connection, path: Path, schema: str, steps: list[Migration] | None = None) -> int:
    """Bring the database behind ``conn`` (autocommit) to the newest version; returns it.

    Raises StartupError (exit status 2) if the database is newer than this
    code, and StartupError naming the step if a step fails (the database is
    then left at the version before it).
    """
    steps = load_migrations() if steps is None else steps
    latest = latest_version(steps)
    async with _exclusive(conn):
        version = await _user_version(conn)
        _refuse_newer(version, latest, path)
        if version == 0 and not await _has_tables(conn):
            await _run_script(conn, schema)
            await _set_user_version(conn, latest)
            log.info("created the database %s at schema version %d", path, latest)
            return latest
        if version == 0:
            version = BASELINE_VERSION
            await _set_user_version(conn, version)
    for step in steps:
        if step.version <= version:
            continue
        version = await _apply(conn, step, path, latest)
    async with _exclusive(conn):
        # New tables and indexes may be added to schema.sql alone.
        await _run_script(conn, schema)
    return version


async def _apply(conn: aiosqlite.Connection, step: Migration, path: Path, latest: int) -> int:
    # A step may rebuild a table; references are checked once, before its commit.
    await conn.execute("PRAGMA foreign_keys = OFF")
    try:
        async with _exclusive(conn):
            version = await _user_version(conn)
            _refuse_newer(version, latest, path)
            if version >= step.version:  # another process applied it meanwhile
                return version
            try:
                await _run_script(conn, step.sql)
                broken = list(await conn.execute_fetchall("PRAGMA foreign_key_check"))
                if broken:
                    raise sqlite3.IntegrityError(f"{len(broken)} rows break a foreign key")
            except sqlite3.Error as exc:
                raise StartupError(
                    f"migration {step.label} failed on {path}: {exc}; the database is left at version {version}"
                ) from exc
            await _set_user_version(conn, step.version)
    finally:
        await conn.execute("PRAGMA foreign_keys = ON")
    log.info("migrated the database %s to schema version %d (%s)", path, step.version, step.label)
    return step.version


@asynccontextmanager
async def _exclusive(conn: aiosqlite.Connection) -> AsyncIterator[None]:
    """A write transaction on ``conn``, waiting (bounded) while another process holds the write lock."""
    async with asyncio.timeout(LOCK_WAIT_SECONDS):
        while True:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                # Each attempt has already waited the connection's busy timeout, so this loop does not spin.
                code = getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY)
                if code & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
    try:
        yield
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise


def _refuse_newer(version: int, latest: int, path: Path | str) -> None:
    if version > latest:
        raise StartupError(
            f"the database {path} has schema version {version}, newer than this chatsvc knows ({latest}): "
            "run the chatsvc release that made it, or restore a backup",
            exit_status=2,
        )


async def _run_script(conn: aiosqlite.Connection, script: str) -> None:
    # One statement at a time: executescript() would commit the open transaction first.
    for statement in split_statements(script):
        await conn.execute(statement)


async def _user_version(conn: aiosqlite.Connection) -> int:
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def _set_user_version(conn: aiosqlite.Connection, version: int) -> None:
    # PRAGMA takes no parameters; the version is an int we computed.
    await conn.execute(f"PRAGMA user_version = {int(version)}")


async def _has_tables(conn: aiosqlite.Connection) -> bool:
    rows = list(await conn.execute_fetchall("SELECT count(*) FROM sqlite_master WHERE type = 'table'"))
    return int(rows[0][0]) > 0


async def migrate_postgres(conn: asyncpg.Connection, where: str, steps: list[Migration] | None = None) -> int:
    """Bring the PostgreSQL database behind ``conn`` to the newest version, one transaction per step; returns it.

    Raises StartupError (exit status 2) if the database is newer than this
    code, and StartupError naming the step if a step fails (the database is
    then left at the version before it).
    """
    import asyncpg  # the optional driver: only a PostgreSQL database needs it

    steps = load_migrations(postgres_migrations_folder()) if steps is None else steps
    latest = latest_version(steps)
    version = 0
    for step in [None, *steps]:
        async with conn.transaction():
            # Transaction-scoped: released by the commit, and by the server if this process dies.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", POSTGRES_LOCK_KEY)
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migration (
                    version    INTEGER PRIMARY KEY,
                    name       TEXT NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )
                """
            )
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migration")
            _refuse_newer(version, latest, where)
            if step is None or version >= step.version:
                continue
            try:
                await conn.execute(step.sql)
            except asyncpg.PostgresError as exc:
                raise StartupError(
                    f"migration {step.label} failed on {where}: {exc}; the database is left at version {version}"
                ) from exc
            await conn.execute("INSERT INTO schema_migration (version, name) VALUES ($1, $2)", step.version, step.name)
        log.info("migrated the database %s to schema version %d (%s)", where, step.version, step.label)
        version = step.version
    return version
