"""Presence: when users were last seen, and who may see whose presence."""

from __future__ import annotations

from typing import Any

from chatsvc.store import Connection, fetch_all, fetch_value


async def set_last_seen(conn: Connection, user_id: int) -> str | None:
    """Record that the user is seen now (they came online or went offline); the time stored (None: no such user)."""
    seen: str | None = await fetch_value(
        conn, f'UPDATE "user" SET last_seen = {conn.dialect.now} WHERE id = ? RETURNING last_seen', (user_id,)
    )
    return seen


async def list_presence_watchers(conn: Connection, user_id: int) -> list[int]:
    """Who hears the user go online or offline: their friends and the other members of their one-to-one rooms."""
    return await conn.fetch_column(
        """
        SELECT f.friend_id FROM friendship AS f WHERE f.user_id = :me
        UNION
        SELECT o.user_id
        FROM user_chatroom AS m
        JOIN chatroom AS c ON c.id = m.chatroom_id AND c.type = 0
        JOIN user_chatroom AS o ON o.chatroom_id = m.chatroom_id AND o.user_id != :me
        WHERE m.user_id = :me
        """,
        {"me": user_id},
    )


async def list_visible_last_seen(conn: Connection, viewer: int | None, user_ids: list[int]) -> list[dict[str, Any]]:
    """``id`` and ``lastSeen`` of those users the viewer may see: themselves, friends, members of a shared room.

    ``viewer`` None is a trusted caller (the sidecar API), who sees every user named.
    """
    ids = conn.dialect.in_list(":ids", "int")
    if viewer is None:
        return await fetch_all(
            conn,
            f'SELECT u.id, u.last_seen AS "lastSeen" FROM "user" AS u WHERE u.id IN {ids} ORDER BY u.id',
            {"ids": conn.dialect.list_value(user_ids)},
        )
    return await fetch_all(
        conn,
        f"""
        SELECT u.id, u.last_seen AS "lastSeen"
        FROM "user" AS u
        WHERE u.id IN {ids}
          AND (u.id = :viewer
               OR EXISTS (SELECT 1 FROM friendship AS f WHERE f.user_id = :viewer AND f.friend_id = u.id)
               OR EXISTS (
                   SELECT 1 FROM user_chatroom AS m
                   JOIN user_chatroom AS o ON o.chatroom_id = m.chatroom_id AND o.user_id = u.id
                   WHERE m.user_id = :viewer
               ))
        ORDER BY u.id
        """,
        {"viewer": viewer, "ids": conn.dialect.list_value(user_ids)},
    )
