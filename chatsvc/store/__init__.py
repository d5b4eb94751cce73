"""All SQL of chatsvc, one module per group of tables.

Functions take the connection to run on (the reader, or the one a write
transaction yields) and return plain dicts keyed by the API's camelCase names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiosqlite

Params = Iterable[Any] | dict[str, Any]


async def fetch_one(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> dict[str, Any] | None:
    """The first row of a query as a dict, or None."""
    async with conn.execute(sql, params) as cursor:
        row = await cursor.fetchone()
    return dict(row) if row is not None else None


async def fetch_all(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> list[dict[str, Any]]:
    """Every row of a query as dicts."""
    rows = await conn.execute_fetchall(sql, params)
    return [dict(row) for row in rows]


async def fetch_value(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> Any:
    """The first column of the first row, or None."""
    async with conn.execute(sql, params) as cursor:
        row = await cursor.fetchone()
    return row[0] if row is not None else None
