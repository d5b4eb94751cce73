"""Read positions: how far each member has read a room, unread counts and each room's newest message."""

from __future__ import annotations

from typing import Any

from chatsvc.store import Connection, fetch_all
from chatsvc.store.messages import MESSAGE_WITH_SENDER, nest_sender
from chatsvc.store.rooms import list_rooms_of_user

# Most read positions one statement moves (three bound values each; SQLite allows 32766).
MAX_MARKS_PER_STATEMENT = 1000


async def mark_read(conn: Connection, marks: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Move ``(user_id, chatroom_id, message_id)`` read positions forward with one statement.

    Each position becomes the newest message of the room at or before
    ``message_id`` (so never past the room's newest message), and only if
    that is ahead of where it was. Returns the rows that moved as
    ``{userId, chatroomId, lastReadId}``; a mark that would go backwards, or
    of a user who is not a member, moves nothing.
    """
    assert 0 < len(marks) <= MAX_MARKS_PER_STATEMENT
    values = ", ".join(["(CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT))"] * len(marks))
    # VALUES columns are column1.. on both engines. The room's newest message at or before the mark is
    # one descending step of the (chatroom_id, id) index.
    return await fetch_all(
        conn,
        f"""
        UPDATE user_chatroom
        SET last_read_id = target.position
        FROM (
            SELECT mark.column1 AS reader, mark.column2 AS room, coalesce((
                SELECT max(h.id) FROM chat_history AS h WHERE h.chatroom_id = mark.column2 AND h.id <= mark.column3
            ), 0) AS position
            FROM (VALUES {values}) AS mark
        ) AS target
        WHERE user_id = target.reader AND chatroom_id = target.room AND last_read_id < target.position
        RETURNING user_id AS "userId", chatroom_id AS "chatroomId", last_read_id AS "lastReadId"
        """,
        [value for mark in marks for value in mark],
    )


async def find_read_positions(conn: Connection, keys: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """The read positions of ``(user_id, chatroom_id)`` memberships, by key; a non-member is left out."""
    if not keys:
        return {}
    # One primary-key lookup per key, written the same on both engines.
    matches = " OR ".join(["(user_id = ? AND chatroom_id = ?)"] * len(keys))
    rows = await conn.fetch_all(
        f"SELECT user_id, chatroom_id, last_read_id FROM user_chatroom WHERE {matches}",
        [value for key in keys for value in key],
    )
    return {(row["user_id"], row["chatroom_id"]): row["last_read_id"] for row in rows}


async def list_read_receipts(conn: Connection, chatroom_id: int) -> list[dict[str, Any]]:
    """Every member's read position in a room, in user id order."""
    return await fetch_all(
        conn,
        """
        SELECT user_id AS "userId", last_read_id AS "lastReadId"
        FROM user_chatroom WHERE chatroom_id = ?
        ORDER BY user_id
        """,
        (chatroom_id,),
    )


async def list_unread_of_user(conn: Connection, user_id: int) -> dict[int, dict[str, Any]]:
    """For each room of the user: ``lastReadId``, ``unreadCount`` and ``lastMessage`` (with sender, or None).

    Two statements whatever the number of rooms: the positions with counts and
    the newest message ids (index range scans from the read position on), then
    those messages with their senders. A count costs what is unread.
    """
    rows = await fetch_all(
        conn,
        """
        SELECT
            m.chatroom_id AS "chatroomId",
            m.last_read_id AS "lastReadId",
            (SELECT count(*) FROM chat_history AS h
             WHERE h.chatroom_id = m.chatroom_id AND h.id > m.last_read_id AND h.sender_id != m.user_id
            ) AS "unreadCount",
            (SELECT max(h.id) FROM chat_history AS h WHERE h.chatroom_id = m.chatroom_id) AS "lastMessageId"
        FROM user_chatroom AS m
        WHERE m.user_id = ?
        """,
        (user_id,),
    )
    newest = [row["lastMessageId"] for row in rows if row["lastMessageId"] is not None]
    messages: dict[int, dict[str, Any]] = {}
    if newest:
        found = await fetch_all(
            conn,
            f"""
            SELECT {MESSAGE_WITH_SENDER} FROM chat_history AS h JOIN "user" AS u ON u.id = h.sender_id
            WHERE h.id IN {conn.dialect.in_list(":ids", "int")}
            """,
            {"ids": conn.dialect.list_value(newest)},
        )
        messages = {row["id"]: nest_sender(row) for row in found}
    unread: dict[int, dict[str, Any]] = {}
    for row in rows:
        last_id = row.pop("lastMessageId")
        row["lastMessage"] = messages.get(last_id) if last_id is not None else None
        row["unreadCount"] = int(row["unreadCount"])
        unread[row.pop("chatroomId")] = row
    return unread


async def list_room_items(
    conn: Connection, user_id: int, name_filter: str = "", *, only_room: int | None = None
) -> list[dict[str, Any]]:
    """The user's rooms as ``/chatroom/list`` items: the rooms with their read positions, unread counts and newest
    messages (``only_room``: just that one, as ``roomAdded`` carries it)."""
    rooms = await list_rooms_of_user(conn, user_id, name_filter, only_room=only_room)
    unread = await list_unread_of_user(conn, user_id)
    for room in rooms:
        # A room the user joined between the two reads: nothing read, nothing known yet.
        room.update(unread.get(room["id"]) or {"lastReadId": 0, "unreadCount": 0, "lastMessage": None})
    return rooms
