"""Bulk lookups and membership changes for trusted callers: the sidecar API, the CLI and chatsvc.testing."""

from __future__ import annotations

from typing import Any

import aiosqlite
import orjson

from chatsvc.store import fetch_all, fetch_value
from chatsvc.store.users import PROFILE_COLUMNS


def _json_list(values: list[Any]) -> str:
    return orjson.dumps(values).decode()


async def list_users_by_usernames(conn: aiosqlite.Connection, usernames: list[str]) -> list[dict[str, Any]]:
    """Profiles (with token version) of the users with these usernames; unknown names are left out."""
    return await fetch_all(
        conn,
        f"""
        SELECT {PROFILE_COLUMNS}, token_version AS tokenVersion
        FROM user WHERE username IN (SELECT value FROM json_each(?))
        ORDER BY id
        """,
        (_json_list(usernames),),
    )


async def add_members(conn: aiosqlite.Connection, chatroom_id: int, user_ids: list[int]) -> list[int]:
    """Make users members of a room with one statement; the ids that were not members before."""
    rows = await conn.execute_fetchall(
        """
        INSERT INTO user_chatroom (user_id, chatroom_id)
        SELECT value, :room FROM json_each(:ids) WHERE true
        ON CONFLICT (user_id, chatroom_id) DO NOTHING
        RETURNING user_id
        """,
        {"room": chatroom_id, "ids": _json_list(user_ids)},
    )
    return sorted(row[0] for row in rows)


async def remove_members(conn: aiosqlite.Connection, chatroom_id: int, user_ids: list[int]) -> list[int]:
    """End users' memberships of a room with one statement; the ids that were members."""
    rows = await conn.execute_fetchall(
        """
        DELETE FROM user_chatroom
        WHERE chatroom_id = :room AND user_id IN (SELECT value FROM json_each(:ids))
        RETURNING user_id
        """,
        {"room": chatroom_id, "ids": _json_list(user_ids)},
    )
    return sorted(row[0] for row in rows)


async def find_setting(conn: aiosqlite.Connection, key: str) -> str | None:
    """The stored value of a service-wide setting, or None."""
    value: str | None = await fetch_value(conn, "SELECT value FROM setting WHERE key = ?", (key,))
    return value


async def ping_database(conn: aiosqlite.Connection) -> bool:
    """Whether the database answers a query that reads its schema."""
    return await fetch_value(conn, "SELECT count(*) >= 0 FROM setting") == 1
