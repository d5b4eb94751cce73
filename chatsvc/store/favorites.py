"""Favorites: messages a user saved, each with the message and its sender."""

from __future__ import annotations

from typing import Any

from chatsvc.store import Connection, fetch_all, fetch_one, fetch_value
from chatsvc.store.messages import MESSAGE_WITH_SENDER, nest_sender

FAVORITE_COLUMNS = """
    id, chat_history_id AS "chatHistoryId", user_id AS "userId", create_time AS "createTime"
"""


async def can_see_message(conn: Connection, user_id: int, chat_history_id: int) -> bool:
    """Whether the message exists in a room the user is a member of."""
    found = await fetch_value(
        conn,
        """
        SELECT 1 FROM chat_history AS h
        JOIN user_chatroom AS m ON m.chatroom_id = h.chatroom_id AND m.user_id = ?
        WHERE h.id = ?
        """,
        (user_id, chat_history_id),
    )
    return found is not None


async def save_favorite(conn: Connection, user_id: int, chat_history_id: int) -> dict[str, Any]:
    """Save a message for the user, or return the favorite already saved; inside a write transaction."""
    created = await fetch_one(
        conn,
        f"""
        INSERT INTO favorite (user_id, chat_history_id) VALUES (?, ?)
        ON CONFLICT (user_id, chat_history_id) DO NOTHING
        RETURNING {FAVORITE_COLUMNS}
        """,
        (user_id, chat_history_id),
    )
    if created is not None:
        return created
    existing = await fetch_one(
        conn,
        f"SELECT {FAVORITE_COLUMNS} FROM favorite WHERE user_id = ? AND chat_history_id = ?",
        (user_id, chat_history_id),
    )
    assert existing is not None
    return existing


async def list_favorites(conn: Connection, user_id: int) -> list[dict[str, Any]]:
    """The user's favorites, newest first, each with ``chatHistory``: the message and its sender."""
    rows = await fetch_all(
        conn,
        f"""
        SELECT f.id AS f_id, f.chat_history_id AS "f_chatHistoryId", f.user_id AS "f_userId",
               f.create_time AS "f_createTime", {MESSAGE_WITH_SENDER}
        FROM favorite AS f
        JOIN chat_history AS h ON h.id = f.chat_history_id
        JOIN "user" AS u ON u.id = h.sender_id
        WHERE f.user_id = ?
        ORDER BY f.id DESC
        """,
        (user_id,),
    )
    favorites = []
    for row in rows:
        favorite = {key: row.pop("f_" + key) for key in ("id", "chatHistoryId", "userId", "createTime")}
        favorite["chatHistory"] = nest_sender(row)
        favorites.append(favorite)
    return favorites


async def delete_favorite(conn: Connection, user_id: int, favorite_id: int) -> dict[str, Any] | None:
    """Delete one of the user's favorites and return it; None if the user has no favorite with that id."""
    return await fetch_one(
        conn,
        f"DELETE FROM favorite WHERE id = ? AND user_id = ? RETURNING {FAVORITE_COLUMNS}",
        (favorite_id, user_id),
    )
