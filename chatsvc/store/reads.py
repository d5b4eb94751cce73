"""Read positions: how far each member has read a room, unread counts and each room's newest message."""

from __future__ import annotations

from typing import Any

from chatsvc.store import Connection, fetch_all
from chatsvc.store.messages import MESSAGE_WITH_SENDER, nest_sender
from chatsvc.store.rooms import list_rooms_of_user

# Most read positions one statement moves (three bound values each; SQLite allows 32766).
MAX_MARKS_PER_STATEMENT = 1000
# Unread messages are counted up to this many (docs/http-api.md): a room never read, of millions of messages,
# costs no more than this to count, and a client shows "999+" as chat apps do.
UNREAD_COUNT_CAP = 1000


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
    # VALUES columns are column1.. on both engines. A mark at or past the room's newest message (what a client
    # that shows the room sends) reads the room's row; only an older mark looks for the message at or before it,
    # one descending step of the (chatroom_id, id) index. A room that does not exist gives NULL: nothing moves.
    return await fetch_all(
        conn,
        f"""
        UPDATE user_chatroom
        SET last_read_id = target.position
        FROM (
            SELECT mark.column1 AS reader, mark.column2 AS room, (
                SELECT CASE WHEN mark.column3 >= c.last_message_id THEN c.last_message_id ELSE coalesce((
                    SELECT h.id FROM chat_history AS h
                    WHERE {conn.dialect.in_room("mark.column2", "0", "mark.column3 + 1")}
                    ORDER BY h.chatroom_id DESC, h.id DESC LIMIT 1
                ), 0) END
                FROM chatroom AS c WHERE c.id = mark.column2
            ) AS position
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
    the rooms' newest message ids (kept on each room's row), then those
    messages with their senders. A count is made only for a room with
    something after the read position, and stops at UNREAD_COUNT_CAP: it
    costs what is unread, at most that many index entries (and those of the
    reader's own messages among them).
    """
    in_room = conn.dialect.in_room("m.chatroom_id", "m.last_read_id", "c.last_message_id + 1")
    rows = await fetch_all(
        conn,
        f"""
        SELECT
            m.chatroom_id AS "chatroomId",
            m.last_read_id AS "lastReadId",
            CASE WHEN c.last_message_id > m.last_read_id THEN (
                SELECT count(*) FROM (
                    SELECT 1 FROM chat_history AS h
                    WHERE {in_room} AND h.sender_id != m.user_id
                    LIMIT {UNREAD_COUNT_CAP}
                ) AS unread
            ) ELSE 0 END AS "unreadCount",
            nullif(c.last_message_id, 0) AS "lastMessageId"
        FROM user_chatroom AS m
        JOIN chatroom AS c ON c.id = m.chatroom_id
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
