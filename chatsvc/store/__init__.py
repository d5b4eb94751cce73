"""All SQL of chatsvc, one module per group of tables.

Functions take the connection to run on (the reader, or the one a write
transaction yields) and return plain dicts keyed by the API's camelCase names.
The SQL is written once for both engines, with ``?`` or ``:name``
placeholders; the few things the two dialects spell differently come from
``conn.dialect`` (chatsvc/store/sqlite.py, chatsvc/store/postgres.py), which
also maps each engine's errors. Identifiers the API spells in camelCase are
quoted (``AS "chatroomId"``) because PostgreSQL folds unquoted ones to lower
case, and so is the ``"user"`` table, a reserved word there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

Params = Sequence[Any] | dict[str, Any]
# No message id is as large: the upper bound of "every message of the room" (SQLite's and PostgreSQL's largest
# 64-bit integer).
NO_ID_ABOVE = 2**63 - 1


class Dialect(Protocol):
    """What the two engines spell differently, as SQL fragments."""

    name: str
    # The current time, comparable with the stored times (create_time, expires_at...).
    now: str

    def seconds_from_now(self, param: str) -> str:
        """The time ``param`` (a placeholder holding a signed number of seconds) from now."""

    def contains(self, text: str, part: str) -> str:
        """A condition: ``part`` occurs in ``text``, both already lowered by the caller."""

    def json_array(self, column: str) -> str:
        """An aggregate: the column's values in the group, ascending, as JSON array text."""

    def in_list(self, param: str, kind: str) -> str:
        """A subquery of the values of a list placeholder (``kind``: "int" or "text"), for ``x IN ...``."""

    def list_value(self, values: Iterable[Any]) -> Any:
        """The parameter value for a list placeholder of :meth:`in_list`."""

    def search(self, text: str, one_room: bool) -> tuple[str, str, str, dict[str, Any]]:
        """Messages ``h`` holding ``text`` (any case) in rooms of memberships ``m``: FROM, condition, newest-first
        ORDER BY, params.

        The FROM clause and the condition may use ``:top`` (the highest message id wanted); ``one_room``: ``m`` is
        one membership, of room ``:room``.
        """

    # Appended to a SELECT that claims rows, so that concurrent claimers pass over each other's rows
    # (PostgreSQL); empty where one writer at a time is all there is (SQLite).
    skip_locked: str

    def fraction_from_now(self, param: str) -> str:
        """The time ``param`` (a placeholder holding seconds, possibly fractional) from now."""

    def in_room(self, room: str, after: str, before: str) -> str:
        """A condition on messages ``h``: of room ``room``, with ``after < h.id < before`` (SQL expressions).

        Written so that only the (chatroom_id, id) index can serve it, whatever the planner believes of the
        rooms' sizes; order such messages by ``h.chatroom_id, h.id`` to read them in index order.
        """


class Connection(Protocol):
    """A connection of either engine, as the store uses it; errors of lost storage raise StorageUnavailable."""

    @property
    def dialect(self) -> Dialect:
        """How this engine spells what differs."""

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        """The first row of a query as a dict, or None."""

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Every row of a query as dicts."""

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, or None."""

    async def fetch_column(self, sql: str, params: Params = ()) -> list[Any]:
        """The first column of every row."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; the number of rows it changed."""

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement once per row of parameters."""


async def fetch_one(conn: Connection, sql: str, params: Params = ()) -> dict[str, Any] | None:
    """The first row of a query as a dict, or None."""
    return await conn.fetch_one(sql, params)


async def fetch_all(conn: Connection, sql: str, params: Params = ()) -> list[dict[str, Any]]:
    """Every row of a query as dicts."""
    return await conn.fetch_all(sql, params)


async def fetch_value(conn: Connection, sql: str, params: Params = ()) -> Any:
    """The first column of the first row, or None."""
    return await conn.fetch_value(sql, params)
