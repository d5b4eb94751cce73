"""PostgreSQL's side of the store: its dialect, placeholders, times, errors, and the pooled database.

The store's SQL is written with SQLite's ``?`` and ``:name`` placeholders;
:func:`translate` rewrites them to PostgreSQL's ``$1...`` once per distinct
statement. Times are ``timestamptz`` columns, decoded straight to the text the
API has always returned (``2024-05-01T12:00:00.123Z``), so a JSON response is
the same on both engines. Losing the server (refused, restarted, out of disk
or connections, a pool that cannot hand out a connection in time) raises
StorageUnavailable: the client gets a 503, never a 500 or a hang.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from chatsvc.config import url_without_password
from chatsvc.errors import BadRequest, StartupError, StorageUnavailable
from chatsvc.order_lock import OrderLock
from chatsvc.store import Connection, Params
from chatsvc.store.search import is_cjk_pair

log = logging.getLogger(__name__)

T = TypeVar("T")

# The advisory lock a serving process holds on its database (see PostgresDatabase.claim).
SERVING_LOCK_KEY = 0x636861747376630A
# How long a request waits for a free pooled connection, and for one statement, before answering 503.
ACQUIRE_TIMEOUT_SECONDS = 5.0
STATEMENT_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0

# PostgreSQL's timestamps count microseconds from this instant.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_NAIVE = _PG_EPOCH.replace(tzinfo=None)


class PostgresDialect:
    """PostgreSQL's spelling of the fragments in chatsvc.store.Dialect."""

    name = "postgres"
    now = "now()"

    def seconds_from_now(self, param: str) -> str:
        """The time ``param`` seconds from now."""
        return f"(now() + CAST({param} AS integer) * interval '1 second')"

    def contains(self, text: str, part: str) -> str:
        """``part`` occurs in ``text``."""
        return f"strpos({text}, {part}) > 0"

    def json_array(self, column: str) -> str:
        """The group's values as a JSON array, ascending."""
        return f"json_agg({column} ORDER BY {column})"

    def in_list(self, param: str, kind: str) -> str:
        """The elements of an array parameter, as a one-column subquery named ``value``."""
        element = {"int": "bigint", "text": "text"}[kind]
        return f"(SELECT unnest(CAST({param} AS {element}[])) AS value)"

    def list_value(self, values: Iterable[Any]) -> Any:
        """A list, which asyncpg sends as an array."""
        return list(values)

    def search(self, text: str, one_room: bool) -> tuple[str, str, str, dict[str, Any]]:
        """ILIKE (``%``, ``_`` and ``\\`` escaped), through the room's terms (schema_postgres.sql) where it has any.

        The query's own terms (three characters or more, or a CJK pair) are
        looked up among the room's in the GIN index; two characters that are
        not both CJK have none, and the room is scanned. In one room, the
        messages are not joined to the membership by room: that equality
        would let the planner walk the primary key filtered by room (see
        :meth:`in_room`), so the room's range is given as :meth:`in_room`'s.
        """
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        condition = "h.content ILIKE :pattern ESCAPE '\\'"
        params = {"pattern": f"%{escaped}%", "part": text}
        room = ":room" if one_room else "m.chatroom_id"
        if len(text) >= 3 or is_cjk_pair(text):
            terms = f"chat_search_terms(h.chatroom_id, h.content) @> chat_search_terms({room}, :part)"
            condition = f"{terms} AND {condition}"
        if one_room:
            condition = f"{self.in_room(':room', '0', 'CAST(:top AS bigint) + 1')} AND {condition}"
            return "user_chatroom AS m CROSS JOIN chat_history AS h", condition, "h.chatroom_id DESC, h.id DESC", params
        source = "user_chatroom AS m JOIN chat_history AS h ON h.chatroom_id = m.chatroom_id"
        return source, condition, "h.id DESC", params

    skip_locked = " FOR UPDATE SKIP LOCKED"

    def fraction_from_now(self, param: str) -> str:
        """The time ``param`` seconds from now, fractions kept (seconds_from_now rounds to whole seconds)."""
        return f"(now() + CAST({param} AS double precision) * interval '1 second')"

    def in_room(self, room: str, after: str, before: str) -> str:
        """Two row comparisons on (chatroom_id, id): only that index can seek them.

        With ``h.chatroom_id = room AND h.id < before`` the planner may pick the primary key (a walk from
        ``before`` down, filtered by room) whenever its statistics say one room holds most messages, and
        that walk crosses every other room's messages: seconds where the index takes microseconds.
        """
        return f"(h.chatroom_id, h.id) > ({room}, {after}) AND (h.chatroom_id, h.id) < ({room}, {before})"


DIALECT = PostgresDialect()

# Strings, quoted identifiers and comments are skipped; "::" is PostgreSQL's cast, not a parameter.
_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|--[^\n]*|::|\?|(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> tuple[str, tuple[str, ...] | None]:
    """``sql`` with ``$n`` placeholders, and the parameter names in order (None for positional ``?``)."""
    names: list[str] = []
    positional = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal positional
        token = match.group(0)
        if token == "?":
            positional += 1
            return f"${positional}"
        name = match.group(1)
        if name is None:
            return token
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    translated = _PLACEHOLDER.sub(replace, sql)
    if positional and names:
        raise ValueError(f"a statement mixes ? and :name placeholders: {sql[:80]!r}")
    return translated, (tuple(names) if names else None)


def _arguments(names: tuple[str, ...] | None, params: Params) -> Sequence[Any]:
    if names is None:
        return params if isinstance(params, Sequence) else list(params)
    assert isinstance(params, dict), "named placeholders take a dict of parameters"
    return [params[name] for name in names]


# Errors that mean the database cannot be reached or cannot store anything now; trying later may work.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection the server dropped mid-operation (a restart) can surface as a client state error, also when the
    # pool resets a connection on release after the statement's own error.
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.PostgresSystemError,
    asyncpg.ReadOnlySQLTransactionError,
)


def storage_failure(exc: BaseException) -> StorageUnavailable | None:
    """The 503 to answer for an error that means PostgreSQL is out of reach or out of room; None for others."""
    if isinstance(exc, asyncpg.InsufficientResourcesError):
        return StorageUnavailable("The database server is out of resources: nothing was saved, please try again later")
    if isinstance(exc, _UNAVAILABLE):
        return StorageUnavailable("The database is unavailable: nothing was saved, please try again later")
    return None


# The text of each whole second decoded lately, and of each millisecond: a page of history carries two or three
# times per row, mostly within a few seconds of each other (a message's creation and update, its sender's
# creation), and building the text from a datetime costs several times a lookup (docs/performance.md).
_SECOND_TEXT: dict[int, str] = {}
_SECOND_TEXT_MAX = 4096
_MILLISECOND_TEXT = tuple(f".{ms:03d}Z" for ms in range(1000))


def decode_time(value: tuple[int]) -> str:
    """PostgreSQL's timestamptz (microseconds since 2000-01-01 UTC) as the API's text: ISO 8601, milliseconds, Z."""
    second, microseconds = divmod(value[0], 1_000_000)
    text = _SECOND_TEXT.get(second)
    if text is None:
        if len(_SECOND_TEXT) >= _SECOND_TEXT_MAX:
            _SECOND_TEXT.clear()
        text = _SECOND_TEXT[second] = (_PG_EPOCH_NAIVE + timedelta(seconds=second)).isoformat()
    return text + _MILLISECOND_TEXT[microseconds // 1000]


def _encode_time(value: str | datetime) -> tuple[int]:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return ((value - _PG_EPOCH) // timedelta(microseconds=1),)


async def _init_connection(raw: asyncpg.Connection) -> None:
    await raw.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_encode_time, decoder=decode_time, format="tuple"
    )


async def _keep_session(raw: asyncpg.Connection) -> None:
    """What a pooled connection needs undone when it comes back: nothing, so no round trip per statement.

    asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``, ``pg_advisory_unlock_all()``) is
    one more round trip after every statement. The store changes no session state on pooled connections:
    settings are given at connect (``server_settings``, which ``RESET ALL`` would keep anyway), migrations
    lock with ``pg_advisory_xact_lock`` (released at commit), and the advisory locks held for the whole
    session (the serving claim, the order lock) live on connections of their own. An open transaction is
    still rolled back by the pool before this is called.
    """


class PostgresConnection:
    """An asyncpg connection, or the pool (one pooled connection per statement), behind the store's interface."""

    dialect = DIALECT

    def __init__(self, raw: asyncpg.Connection | asyncpg.Pool, trace: Callable[[str], Any] | None = None) -> None:
        self.raw = raw
        self.trace = trace

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        """The first row of a query as a dict, or None."""
        row = await self._run(self.raw.fetchrow, sql, params)
        return dict(row) if row is not None else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Every row of a query as dicts."""
        return [dict(row) for row in await self._run(self.raw.fetch, sql, params)]

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, or None."""
        return await self._run(self.raw.fetchval, sql, params)

    async def fetch_column(self, sql: str, params: Params = ()) -> list[Any]:
        """The first column of every row."""
        return [row[0] for row in await self._run(self.raw.fetch, sql, params)]

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; the number of rows it changed (from its status, e.g. ``DELETE 3``)."""
        status: str = await self._run(self.raw.execute, sql, params)
        count = status.rpartition(" ")[2]
        return int(count) if count.isdigit() else 0

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement once per row of parameters."""
        await self._run(self.raw.executemany, sql, rows, many=True)

    async def _run(self, method: Callable[..., Awaitable[Any]], sql: str, params: Any, *, many: bool = False) -> Any:
        """One statement through an asyncpg method, translated, traced, and its errors mapped to the store's."""
        text, names = translate(sql)
        if self.trace is not None:
            self.trace(text)
        arguments = ([_arguments(names, row) for row in params],) if many else _arguments(names, params)
        try:
            return await method(text, *arguments)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        except _UNSTORABLE_TEXT as exc:
            raise BadRequest("Text must not contain the NUL character") from exc


# Text PostgreSQL cannot store (a NUL character): the request's fault. Validation refuses it first; this is the net.
_UNSTORABLE_TEXT = (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError)


def _unavailable(exc: BaseException) -> StorageUnavailable:
    failure = storage_failure(exc)
    assert failure is not None
    return failure


class _OneLineRetries(logging.Filter):
    """asyncpg's pool logs a full traceback each time it retries a connection during an outage: keep one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(_OneLineRetries())


class PostgresDatabase:
    """A PostgreSQL database through a pool of asyncpg connections; any number of instances may share it."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._reader: PostgresConnection | None = None
        self._trace: Callable[[str], Any] | None = None
        self._claim: asyncpg.Connection | None = None
        # Why the last write failed for lack of storage; None once a write succeeds again.
        self.write_failure: str | None = None

    def describe(self) -> str:
        """The database URL without its password."""
        return url_without_password(self.url)

    async def claim(self, *, shared: bool) -> None:
        """Hold an advisory lock on the database, on a connection of its own, until close.

        As the lock file does for SQLite (chatsvc/instance_lock.py), but across
        hosts: exclusive without Redis, shared by instances that share rooms
        through Redis. The server releases it if this process dies.
        """
        where = self.describe()
        try:
            raw = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT_SECONDS)
        except (asyncpg.ClientConfigurationError, ValueError) as exc:
            raise StartupError(f"invalid database URL {where}: {exc}", exit_status=2) from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StartupError(f"cannot connect to the database {where}: {exc}", exit_status=2) from exc
        lock = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        if await raw.fetchval(f"SELECT {lock}($1)", SERVING_LOCK_KEY):
            self._claim = raw
            return
        await raw.close()
        if shared:
            message = (
                f"a chatsvc process without CHATSVC_REDIS_URL is serving {where}: stop it, "
                "or set CHATSVC_REDIS_URL on every instance that serves this database"
            )
        else:
            message = (
                f"another chatsvc process is serving {where}: to run several instances on one database, "
                "set CHATSVC_REDIS_URL on every one of them (docs/deploy.md)"
            )
        raise StartupError(message, exit_status=2)

    async def open(self) -> None:
        """Connect the pool and bring the schema up to date.

        Raises StartupError (exit status 2) when the URL is not one asyncpg
        accepts, the server cannot be reached or refuses the login, or its
        schema is newer than this code.
        """
        from chatsvc.migrate import migrate_postgres

        where = self.describe()
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                init=_init_connection,
                reset=_keep_session,
                timeout=CONNECT_TIMEOUT_SECONDS,
                command_timeout=STATEMENT_TIMEOUT_SECONDS,
                # An acknowledged message is on the server's disk; times are UTC whatever the server's zone.
                server_settings={"synchronous_commit": "on", "timezone": "UTC", "application_name": "chatsvc"},
            )
        except (asyncpg.ClientConfigurationError, ValueError) as exc:
            raise StartupError(f"invalid database URL {where}: {exc}", exit_status=2) from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StartupError(f"cannot connect to the database {where}: {exc}", exit_status=2) from exc
        try:
            async with self._pool.acquire() as raw:
                await migrate_postgres(raw, where)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                raise StartupError(f"cannot prepare the database {where}: {exc}", exit_status=2) from exc
            raise
        self._reader = PostgresConnection(self._pool, self._trace)

    async def close(self) -> None:
        """Close the pool (idempotent); waits for connections in use, as after the writer has stopped."""
        pool, self._pool, self._reader = self._pool, None, None
        claim, self._claim = self._claim, None
        if claim is not None:
            # Ending the session releases the lock; a server that is gone has released it already.
            try:
                await asyncio.wait_for(claim.close(), STATEMENT_TIMEOUT_SECONDS)
            except Exception:
                claim.terminate()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), STATEMENT_TIMEOUT_SECONDS)
            except TimeoutError:
                pool.terminate()

    async def set_trace(self, callback: Callable[[str], Any] | None) -> None:
        """Call ``callback`` with every SQL statement the store runs, as sent ($n placeholders); None turns it off."""
        self._trace = callback
        if self._reader is not None:
            self._reader.trace = callback

    @property
    def reader(self) -> PostgresConnection:
        """The pool, for queries outside a write transaction: each takes a connection for its statement."""
        assert self._reader is not None, "database is not open"
        return self._reader

    async def ping(self) -> bool:
        """Whether the database answers a query that reads its schema."""
        return await self.reader.fetch_value("SELECT count(*) >= 0 FROM setting") is True

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        assert self._pool is not None, "database is not open"
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS) as raw:
                yield raw
        except BaseException as exc:
            self._raise_if_storage_failed(exc)
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        async with self._connection() as raw, raw.transaction():
            yield PostgresConnection(raw, self._trace)
        self._write_succeeded()

    async def write_statement(self, statement: Callable[[Connection], Awaitable[T]]) -> T:
        """Run one writing statement; outside a transaction block it commits on its own."""
        async with self._connection() as raw:
            result = await statement(PostgresConnection(raw, self._trace))
        self._write_succeeded()
        return result

    def _raise_if_storage_failed(self, exc: BaseException) -> None:
        unavailable = exc if isinstance(exc, StorageUnavailable) else storage_failure(exc)
        if unavailable is not None:
            if self.write_failure is None:
                log.error("the database %s fails (%s): answering 503 until it works", self.describe(), exc)
            self.write_failure = str(exc.__cause__ or exc)
            if unavailable is not exc:
                raise unavailable from exc

    def _write_succeeded(self) -> None:
        if self.write_failure is not None:
            log.warning("the database %s works again", self.describe())
            self.write_failure = None


# The advisory lock every instance's writer holds from a batch's INSERT until the batch is on the Redis channel.
ORDER_LOCK_KEY = 0x636861747376630B
# How long a batch waits for another instance to let go of the order lock, and for the lock's connection, before 503.
ORDER_LOCK_WAIT_SECONDS = 5.0
ORDER_LOCK_CONNECT_SECONDS = 5.0
# The lock's session asks the server to probe it, so that the lock of a host that vanished (power, network) is
# freed within about idle + interval x count = 11 s, not the system default of two hours: the other instances
# would wait for it, answering 503, until then.
ORDER_LOCK_SESSION = {
    "application_name": "chatsvc order lock",
    "lock_timeout": f"{int(ORDER_LOCK_WAIT_SECONDS * 1000)}ms",
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}


class PostgresOrderLock(OrderLock):
    """A session-level advisory lock on a connection of its own, shared by every instance on every host.

    Ids come from a sequence at INSERT time, not at commit, so two instances
    storing at once could commit (and publish) id 6 before id 5. Holding one
    lock across the cluster from before the INSERT, through its commit,
    until the batch is on the Redis channel means no other instance stores
    in between: the channel gets batches in id order, and every id in it is
    committed. A transaction-scoped lock would not do: it ends at the commit,
    before the publish.

    The lock lives as long as its session. Any doubt about the session (an
    error, a timeout, an unlock that finds nothing to release) ends it, which
    frees the lock server-side, and the next batch connects again; while that
    fails, or the lock stays busy past ORDER_LOCK_WAIT_SECONDS, batches fail
    with StorageUnavailable (503) and nothing is stored or published.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: asyncpg.Connection | None = None
        self._closed = False

    async def open(self) -> None:
        """Connect the lock's session (StartupError, exit 2, if the server cannot be reached)."""
        self._closed = False
        try:
            self._conn = await self._connect()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            where = url_without_password(self.url)
            raise StartupError(f"cannot connect the order lock to {where}: {exc}", exit_status=2) from exc

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.url,
            timeout=ORDER_LOCK_CONNECT_SECONDS,
            # Lock and unlock each answer in one round trip, or the lock waits out lock_timeout: a hung server
            # cannot hold a batch longer than this.
            command_timeout=ORDER_LOCK_WAIT_SECONDS + ORDER_LOCK_CONNECT_SECONDS,
            server_settings=ORDER_LOCK_SESSION,
        )

    async def close(self) -> None:
        """End the session, which releases the lock if held (idempotent)."""
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            # terminate, not close: no round trip to a server that may be gone; the server frees the lock then.
            conn.terminate()

    async def _session(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            if self._closed:
                raise StorageUnavailable("The server is shutting down")
            self._conn = await self._connect()
            log.warning("the order lock is connected to %s again", url_without_password(self.url))
        return self._conn

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold the lock for the block; StorageUnavailable (503) if it cannot be had in time."""
        try:
            conn = await self._session()
            await conn.fetchval("SELECT pg_advisory_lock($1)", ORDER_LOCK_KEY)
        except Exception as exc:
            # Whatever went wrong (refused, timed out, a session ended under the client's feet, which asyncpg may
            # report as an InternalClientError), the session's state is unknown: end it, store nothing.
            self._drop()
            log.error("the order lock on %s is unavailable: %s", url_without_password(self.url), exc)
            raise StorageUnavailable("The database is unavailable: nothing was saved, please try again later") from exc
        except BaseException:
            # Cancelled while waiting: the server may grant the lock anyway; ending the session frees it.
            self._drop()
            raise
        try:
            yield
        finally:
            await self._release(conn)

    async def _release(self, conn: asyncpg.Connection) -> None:
        try:
            released = await conn.fetchval("SELECT pg_advisory_unlock($1)", ORDER_LOCK_KEY)
        except BaseException as exc:
            self._drop()
            if not isinstance(exc, Exception):
                raise
            log.error("releasing the order lock failed (%s): its session is ended, which frees it", exc)
            return
        if not released:
            self._drop()
            log.error("the order lock was no longer held when released: its session had been replaced")
