"""Users: accounts, profiles and password hashes."""

from __future__ import annotations

from typing import Any

from chatsvc.store import Connection, fetch_all, fetch_one

# A user's whole profile, as the user themselves and trusted callers (the sidecar API) see it.
PROFILE_COLUMNS = """
    id, username, nick_name AS "nickName", email, head_pic AS "headPic", create_time AS "createTime"
"""
# What anyone may see of a user: the profile without the email address. Messages carry it as their sender.
PUBLIC_PROFILE_COLUMNS = """
    id, username, nick_name AS "nickName", head_pic AS "headPic", create_time AS "createTime"
"""
# The profile of user ``u`` as user ``:viewer`` may see it: the email only for the user and their friends,
# NULL (left out by without_hidden_email) for everyone else. The friendship check is one primary-key lookup.
PROFILE_SEEN_BY_VIEWER = """
    u.id, u.username, u.nick_name AS "nickName",
    CASE WHEN u.id = :viewer
           OR EXISTS (SELECT 1 FROM friendship AS f WHERE f.user_id = :viewer AND f.friend_id = u.id)
         THEN u.email END AS email,
    u.head_pic AS "headPic", u.create_time AS "createTime"
"""


def without_hidden_email(profile: dict[str, Any]) -> dict[str, Any]:
    """A PROFILE_SEEN_BY_VIEWER row with the email left out where the viewer may not see it."""
    if profile.get("email") is None:
        profile.pop("email", None)
    return profile


async def insert_user(
    conn: Connection, *, username: str, password_hash: str, nick_name: str, email: str, head_pic: str = ""
) -> dict[str, Any] | None:
    """Create a user and return its profile, or None if the username is taken."""
    return await fetch_one(
        conn,
        f"""
        INSERT INTO "user" (username, password_hash, nick_name, email, head_pic)
        VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (username) DO NOTHING
        RETURNING {PROFILE_COLUMNS}
        """,
        (username, password_hash, nick_name, email, head_pic),
    )


async def find_user_by_id(conn: Connection, user_id: int) -> dict[str, Any] | None:
    """A user's profile plus its token version, or None."""
    return await fetch_one(
        conn, f'SELECT {PROFILE_COLUMNS}, token_version AS "tokenVersion" FROM "user" WHERE id = ?', (user_id,)
    )


async def find_user_by_username(conn: Connection, username: str) -> dict[str, Any] | None:
    """A user's profile with password hash and token version, for logging in, or None."""
    return await fetch_one(
        conn,
        f"""
        SELECT {PROFILE_COLUMNS}, password_hash AS "passwordHash", token_version AS "tokenVersion"
        FROM "user" WHERE username = ?
        """,
        (username,),
    )


async def find_user_seen_by(conn: Connection, username: str, viewer_id: int) -> dict[str, Any] | None:
    """A user's profile as ``viewer_id`` may see it (email only for the user and their friends), or None."""
    found = await fetch_one(
        conn,
        f'SELECT {PROFILE_SEEN_BY_VIEWER} FROM "user" AS u WHERE u.username = :username',
        {"username": username, "viewer": viewer_id},
    )
    return without_hidden_email(found) if found is not None else None


async def find_user_by_username_and_email(conn: Connection, username: str, email: str) -> dict[str, Any] | None:
    """The id of the user with that username and email (any case), or None."""
    return await fetch_one(
        conn, 'SELECT id FROM "user" WHERE username = ? AND lower(email) = lower(?)', (username, email)
    )


async def list_users_by_ids(conn: Connection, user_ids: list[int]) -> list[dict[str, Any]]:
    """Public profiles (no email) of the given users, in id order."""
    return await fetch_all(
        conn,
        f'SELECT {PUBLIC_PROFILE_COLUMNS} FROM "user" WHERE id IN {conn.dialect.in_list("?", "int")} ORDER BY id',
        (conn.dialect.list_value(user_ids),),
    )


async def update_user_profile(
    conn: Connection, user_id: int, *, nick_name: str | None, head_pic: str | None, email: str
) -> dict[str, Any] | None:
    """Change a user's email and, where given, nickName and headPic; the new profile, or None if no such user."""
    return await fetch_one(
        conn,
        f"""
        UPDATE "user" SET
            nick_name = coalesce(:nick_name, nick_name),
            head_pic = coalesce(:head_pic, head_pic),
            email = :email,
            update_time = {conn.dialect.now}
        WHERE id = :id
        RETURNING {PROFILE_COLUMNS}
        """,
        {"id": user_id, "nick_name": nick_name, "head_pic": head_pic, "email": email},
    )


async def reset_password(conn: Connection, *, username: str, email: str, password_hash: str) -> dict[str, Any] | None:
    """Set the password of the user with that username and email (any case), ending its tokens; None if no match.

    Bumping token_version makes every token issued before the change invalid.
    """
    return await fetch_one(
        conn,
        f"""
        UPDATE "user" SET
            password_hash = :password_hash,
            token_version = token_version + 1,
            update_time = {conn.dialect.now}
        WHERE username = :username AND lower(email) = lower(:email)
        RETURNING id, token_version AS "tokenVersion"
        """,
        {"username": username, "email": email, "password_hash": password_hash},
    )


async def revoke_tokens(conn: Connection, user_id: int) -> dict[str, Any] | None:
    """End every token issued to the user so far (logout); the new token version, or None if no such user."""
    return await fetch_one(
        conn,
        'UPDATE "user" SET token_version = token_version + 1 WHERE id = ? RETURNING token_version AS "tokenVersion"',
        (user_id,),
    )


async def list_users_by_usernames(conn: Connection, usernames: list[str]) -> list[dict[str, Any]]:
    """Profiles (with token version) of the users with these usernames; unknown names are left out."""
    return await fetch_all(
        conn,
        f"""
        SELECT {PROFILE_COLUMNS}, token_version AS "tokenVersion"
        FROM "user" WHERE username IN {conn.dialect.in_list("?", "text")}
        ORDER BY id
        """,
        (conn.dialect.list_value(usernames),),
    )
