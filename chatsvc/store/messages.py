"""Chat history: storing messages and reading pages of a room."""

from __future__ import annotations

from typing import Any

from chatsvc.store import Connection, fetch_all, fetch_one
from chatsvc.store.settings import SYSTEM_USER_SETTING

TEXT, IMAGE, FILE = 0, 1, 2
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
    u.username AS s_username, u.nick_name AS "s_nickName", u.head_pic AS "s_headPic", u.create_time AS "s_createTime"
"""


def nest_sender(row: dict[str, Any]) -> dict[str, Any]:
    """Move the ``s_`` columns of a MESSAGE_WITH_SENDER row into ``sender``."""
    row["system"] = bool(row["system"])
    sender = {"id": row["senderId"]}
    for key in ("username", "nickName", "headPic", "createTime"):
        sender[key] = row.pop("s_" + key)
    row["sender"] = sender
    return row


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
    Either way one indexed range scan on (chatroom_id, id).
    """
    # Conditions are added only when present: "(:x IS NULL OR id < :x)" would
    # hide the range from the planner and scan the room from its newest end.
    conditions = ["h.chatroom_id = :room"]
    if before_id is not None:
        conditions.append("h.id < :before")
    if after_id is not None:
        conditions.append("h.id > :after")
    order = "ASC" if after_id is not None else "DESC"
    rows = await fetch_all(
        conn,
        f"""
        SELECT {MESSAGE_WITH_SENDER} FROM chat_history AS h JOIN "user" AS u ON u.id = h.sender_id
        WHERE {" AND ".join(conditions)}
        ORDER BY h.id {order} LIMIT :limit
        """,
        {"room": chatroom_id, "limit": limit, "before": before_id, "after": after_id},
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
                  client_msg_id AS "clientMsgId", create_time AS "createTime", update_time AS "updateTime"
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
