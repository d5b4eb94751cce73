"""Chat history: storing messages and reading pages of a room."""

from __future__ import annotations

from typing import Any

from chatsvc.store import NO_ID_ABOVE, Connection, fetch_all, fetch_one
from chatsvc.store.settings import SYSTEM_USER_SETTING

TEXT, IMAGE, FILE = 0, 1, 2
# The highest message id search finds (the SQLite index packs room and id into one rowid).
MAX_SEARCH_ID = 2**32 - 1
MESSAGE_TYPES = {"text": TEXT, "image": IMAGE, "file": FILE}

# The id of the system user, or NULL before it exists. Uncorrelated, so SQLite runs it once per statement.
_SYSTEM_USER_ID = f"(SELECT CAST(value AS INTEGER) FROM setting WHERE key = '{SYSTEM_USER_SETTING}')"


def _from_system(sender_id: str) -> str:
    """Whether the sender is the system user: the mark of a system message, which no one else can send.

    IS NOT DISTINCT FROM, not =, so that "no system user yet" is false rather than NULL.
    """
    return f"{sender_id} IS NOT DISTINCT FROM {_SYSTEM_USER_ID}"


# A message joined with its sender's public profile (no email), flat; nest_sender() shapes it.
MESSAGE_WITH_SENDER = f"""
    h.id, h.content, h.type, h.chatroom_id AS "chatroomId", h.sender_id AS "senderId",
    {_from_system("h.sender_id")} AS system,
    h.client_msg_id AS "clientMsgId", h.create_time AS "createTime", h.update_time AS "updateTime",
    h.edit_time AS "editedAt", h.deleted,
    u.username AS s_username, u.nick_name AS "s_nickName", u.head_pic AS "s_headPic", u.create_time AS "s_createTime"
"""


def nest_sender(row: dict[str, Any]) -> dict[str, Any]:
    """Move the ``s_`` columns of a MESSAGE_WITH_SENDER row into ``sender``."""
    row["system"] = bool(row["system"])
    sender = {"id": row["senderId"]}
    for key in ("username", "nickName", "headPic", "createTime"):
        sender[key] = row.pop("s_" + key)
    row["sender"] = sender
    if row.pop("deleted"):
        return deleted_shape(row)
    return row


# What a deleted message keeps (docs/protocol.md): its place, so ids, cursors and recovery stay gap-free.
DELETED_KEYS = ("id", "chatroomId", "senderId", "createTime", "sender", "type")


def deleted_shape(row: dict[str, Any]) -> dict[str, Any]:
    """A deleted message as history shows it: its place, ``deleted: true`` and no content."""
    shaped = {key: row[key] for key in DELETED_KEYS}
    shaped["deleted"] = True
    shaped["content"] = ""
    return shaped


async def insert_message(
    conn: Connection,
    *,
    chatroom_id: int,
    sender_id: int,
    type: int,
    content: str,
    client_msg_id: str | None = None,
) -> dict[str, Any]:
    """Store a message and return it with its sender; inside a write transaction."""
    message_id = await conn.fetch_value(
        """
        INSERT INTO chat_history (content, type, chatroom_id, sender_id, client_msg_id) VALUES (?, ?, ?, ?, ?)
        RETURNING id
        """,
        (content, type, chatroom_id, sender_id, client_msg_id),
    )
    message = await find_message(conn, int(message_id))
    assert message is not None
    return message


async def find_message(conn: Connection, message_id: int) -> dict[str, Any] | None:
    """One message with its sender, or None."""
    row = await fetch_one(
        conn,
        f'SELECT {MESSAGE_WITH_SENDER} FROM chat_history AS h JOIN "user" AS u ON u.id = h.sender_id WHERE h.id = ?',
        (message_id,),
    )
    return nest_sender(row) if row is not None else None


async def list_history(
    conn: Connection,
    chatroom_id: int,
    *,
    limit: int,
    before_id: int | None = None,
    after_id: int | None = None,
) -> list[dict[str, Any]]:
    """A page of a room's messages with senders, in ascending id order.

    With ``after_id``: the oldest ``limit`` messages after it (catching up).
    Otherwise the newest ``limit`` messages, before ``before_id`` if given.
    Either way one indexed range scan on (chatroom_id, id), also on a
    PostgreSQL whose statistics say one room holds nearly every message.
    """
    # The range is always bounded (ids start at 1; NO_ID_ABOVE is past every id), so one statement serves every
    # page as a seek into (chatroom_id, id): the dialect writes it so that no planner can prefer the primary key.
    # The page is cut before the senders are joined: PostgreSQL misjudges how many rows a row comparison keeps,
    # and would otherwise join (and sort) the whole room before the LIMIT.
    order = "ASC" if after_id is not None else "DESC"
    rows = await fetch_all(
        conn,
        f"""
        SELECT {MESSAGE_WITH_SENDER}
        FROM (
            SELECT * FROM chat_history AS h
            WHERE {conn.dialect.in_room(":room", ":after", ":before")}
            ORDER BY h.chatroom_id {order}, h.id {order} LIMIT :limit
        ) AS h
        JOIN "user" AS u ON u.id = h.sender_id
        ORDER BY h.id {order}
        """,
        {
            "room": chatroom_id,
            "limit": limit,
            "before": NO_ID_ABOVE if before_id is None else before_id,
            "after": 0 if after_id is None else after_id,
        },
    )
    if order == "DESC":
        rows.reverse()
    return [nest_sender(row) for row in rows]


# SQLite allows 32766 bound variables per statement; five per row.
MAX_ROWS_PER_INSERT = 1000


async def insert_messages(conn: Connection, drafts: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Store ``(content, type, chatroom_id, sender_id, client_msg_id)`` rows with one statement.

    At most MAX_ROWS_PER_INSERT rows. Run in autocommit mode the statement is
    its own transaction, durable when this returns. A row whose
    ``(sender_id, client_msg_id)`` is already stored is skipped, so fewer rows
    may come back. Rows inserted by one statement take ascending ids in VALUES
    order, so the returned rows, sorted by id, follow the drafts' order.
    Senders are not attached.
    """
    assert len(drafts) <= MAX_ROWS_PER_INSERT
    values = ", ".join(["(?, ?, ?, ?, ?)"] * len(drafts))
    rows = await fetch_all(
        conn,
        f"""
        INSERT INTO chat_history (content, type, chatroom_id, sender_id, client_msg_id) VALUES {values}
        ON CONFLICT (sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL DO NOTHING
        RETURNING id, content, type, chatroom_id AS "chatroomId", sender_id AS "senderId",
                  {_from_system("sender_id")} AS system,
                  client_msg_id AS "clientMsgId", create_time AS "createTime", update_time AS "updateTime",
                  edit_time AS "editedAt"
        """,
        [value for draft in drafts for value in draft],
    )
    for row in rows:
        row["system"] = bool(row["system"])
    rows.sort(key=lambda row: row["id"])
    return rows


async def find_messages_by_client_ids(
    conn: Connection, keys: list[tuple[int, str]]
) -> dict[tuple[int, str], dict[str, Any]]:
    """Messages already stored under ``(sender_id, client_msg_id)`` keys, with senders, by key."""
    if not keys:
        return {}
    # One indexed lookup per key (a batch holds at most MAX_ROWS_PER_INSERT), written the same on both engines.
    matches = " OR ".join(["(h.sender_id = ? AND h.client_msg_id = ?)"] * len(keys))
    rows = await fetch_all(
        conn,
        f"""
        SELECT {MESSAGE_WITH_SENDER}
        FROM chat_history AS h JOIN "user" AS u ON u.id = h.sender_id
        WHERE {matches}
        """,
        [value for key in keys for value in key],
    )
    return {(row["senderId"], row["clientMsgId"]): nest_sender(row) for row in rows}


# -- edit and delete (issue 15) ------------------------------------------------------------------------------


async def find_message_to_change(conn: Connection, message_id: int, edit_window: int) -> dict[str, Any] | None:
    """What deciding on an edit or delete needs: room, sender, type, deleted, and whether within ``edit_window``.

    ``edit_window`` in seconds; 0 means no limit.
    """
    dialect = conn.dialect
    return await fetch_one(
        conn,
        f"""
        SELECT chatroom_id AS "chatroomId", sender_id AS "senderId", type, deleted,
               (:window = 0 OR create_time >= {dialect.seconds_from_now(":ago")}) AS editable
        FROM chat_history WHERE id = :id
        """,
        {"id": message_id, "window": edit_window, "ago": -edit_window},
    )


async def edit_message(conn: Connection, message_id: int, content: str) -> None:
    """Replace a live message's content and stamp ``edit_time``; inside a write transaction."""
    now = conn.dialect.now
    await conn.execute(
        f"UPDATE chat_history SET content = ?, edit_time = {now}, update_time = {now} WHERE id = ? AND deleted = 0",
        (content, message_id),
    )


async def delete_message(conn: Connection, message_id: int) -> None:
    """Erase a message's content and mark it deleted, and drop every favorite of it; inside a write transaction."""
    await conn.execute("DELETE FROM favorite WHERE chat_history_id = ?", (message_id,))
    await conn.execute(
        f"UPDATE chat_history SET content = '', deleted = 1, update_time = {conn.dialect.now} WHERE id = ?",
        (message_id,),
    )


# -- search ------------------------------------------------------------------------------------------------


async def search_messages(
    conn: Connection,
    user_id: int,
    text: str,
    *,
    limit: int,
    chatroom_id: int | None = None,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Live text messages containing ``text`` (any case), newest first, from rooms the user is a member of.

    The engine's index (``conn.dialect.search``) holds each room's matches
    apart, so a search in one room reads that room's only; ``text`` is always
    a bound parameter and matched literally.
    """
    source, condition, newest_first, params = conn.dialect.search(text, chatroom_id is not None)
    conditions = ["m.user_id = :user", condition, "h.type = 0", "h.deleted = 0"]
    if chatroom_id is not None:
        conditions.append("m.chatroom_id = :room")
    if before_id is not None:
        conditions.append("h.id < :before")
    top = MAX_SEARCH_ID if before_id is None else max(min(before_id - 1, MAX_SEARCH_ID), -1)
    rows = await fetch_all(
        conn,
        f"""
        SELECT {MESSAGE_WITH_SENDER} FROM {source} JOIN "user" AS u ON u.id = h.sender_id
        WHERE {" AND ".join(conditions)}
        ORDER BY {newest_first} LIMIT :limit
        """,
        {**params, "user": user_id, "room": chatroom_id, "before": before_id, "top": top, "limit": limit},
    )
    return [nest_sender(row) for row in rows]
