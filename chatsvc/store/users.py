"""Users: accounts, profiles and password hashes."""

from __future__ import annotations

from typing import Any

import aiosqlite
import orjson

from chatsvc.store import fetch_all, fetch_one

# The public profile, as every API response shows a user.
PROFILE_COLUMNS = """
    id, username, nick_name AS nickName, email, head_pic AS headPic, create_time AS createTime
"""


async def insert_user(
    conn: aiosqlite.Connection, *, username: str, password_hash: str, nick_name: str, email: str, head_pic: str = ""
) -> dict[str, Any] | None:
    """Create a user and return its profile, or None if the username is taken."""
    return await fetch_one(
        conn,
        f"""
        INSERT INTO user (username, password_hash, nick_name, email, head_pic)
        VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (username) DO NOTHING
        RETURNING {PROFILE_COLUMNS}
        """,
        (username, password_hash, nick_name, email, head_pic),
    )


async def find_user_by_id(conn: aiosqlite.Connection, user_id: int) -> dict[str, Any] | None:
    """A user's profile plus its token version, or None."""
    return await fetch_one(
        conn, f"SELECT {PROFILE_COLUMNS}, token_version AS tokenVersion FROM user WHERE id = ?", (user_id,)
    )


async def find_user_by_username(conn: aiosqlite.Connection, username: str) -> dict[str, Any] | None:
    """A user's profile with password hash and token version, for logging in, or None."""
    return await fetch_one(
        conn,
        f"""
        SELECT {PROFILE_COLUMNS}, password_hash AS passwordHash, token_version AS tokenVersion
        FROM user WHERE username = ?
        """,
        (username,),
    )


async def list_users_by_ids(conn: aiosqlite.Connection, user_ids: list[int]) -> list[dict[str, Any]]:
    """Profiles of the given users, in id order."""
    return await fetch_all(
        conn,
        f"SELECT {PROFILE_COLUMNS} FROM user WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
        (orjson.dumps(list(user_ids)).decode(),),
    )
