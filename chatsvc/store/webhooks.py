"""The webhook outbox: one row per stored message while its ``message.unseen`` delivery is pending.

Rows are written by the writer in the same transaction as their messages
(chatsvc/writer.py), claimed by one instance at a time with a lease, and
deleted once delivered or given up (chatsvc/webhooks.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from chatsvc.store import Connection, fetch_all, fetch_value
from chatsvc.store.messages import MESSAGE_WITH_SENDER, nest_sender


async def enqueue_deliveries(conn: Connection, message_ids: list[int]) -> None:
    """Queue one delivery per message, with one statement; inside the transaction that stores them."""
    dialect = conn.dialect
    await conn.execute(
        f"INSERT INTO webhook_outbox (message_id) SELECT value FROM {dialect.in_list('?', 'int')} AS ids",
        (dialect.list_value(message_ids),),
    )


async def queue_deliveries_with_each_insert(conn: Connection) -> bool:
    """Have this connection's message INSERTs queue their deliveries themselves, where the engine allows it.

    On SQLite a TEMP trigger, which lives on this one connection (the
    writer's, opened with webhooks on), adds each message's outbox row inside
    the INSERT statement: a batch stays one statement, one trip to the
    database thread, instead of four (BEGIN, INSERT, the outbox INSERT,
    COMMIT), and the writer's batches follow each other as fast as without
    webhooks. PostgreSQL has no trigger of one connection: False, and the
    writer calls :func:`enqueue_deliveries` in the batch's transaction.
    """
    if conn.dialect.name != "sqlite":
        return False
    await conn.execute(
        "CREATE TEMP TRIGGER IF NOT EXISTS webhook_outbox_follows_messages AFTER INSERT ON main.chat_history "
        # The message's own create_time is "now" for both times: SQLite's 'now' is one value for the whole
        # statement, so this equals the columns' defaults without two more strftime calls per row.
        "BEGIN INSERT INTO webhook_outbox (message_id, next_attempt_at, create_time) "
        "VALUES (NEW.id, NEW.create_time, NEW.create_time); END"
    )
    return True


async def claim_deliveries(
    conn: Connection, *, limit: int, lease_seconds: float | None, up_to_id: int, stale_seconds: float
) -> list[dict[str, Any]]:
    """Up to ``limit`` due deliveries, soonest first, leased to this instance unless ``lease_seconds`` is None.

    A row is due when its next attempt time has come, no other instance holds
    a live lease on it, and its message is at most ``up_to_id`` (delivered on
    every instance, so who was online is known) or ``stale_seconds`` old
    (an instance that never reported it is not waited for longer). Without a
    lease (one instance alone on its database) this only reads.
    """
    dialect = conn.dialect
    due = f"""
        SELECT message_id FROM webhook_outbox
        WHERE next_attempt_at <= {dialect.now}
          AND (lease_until IS NULL OR lease_until <= {dialect.now})
          AND (message_id <= :up_to OR create_time <= {dialect.fraction_from_now(":stale")})
        ORDER BY next_attempt_at LIMIT :limit
    """
    returned = 'message_id AS "messageId", attempts, recipient_ids AS "recipientIds", create_time AS "createTime"'
    params: dict[str, Any] = {"stale": -stale_seconds, "up_to": up_to_id, "limit": limit}
    if lease_seconds is None:
        return await fetch_all(
            conn, f"SELECT {returned} FROM webhook_outbox WHERE message_id IN ({due}) ORDER BY next_attempt_at", params
        )
    return await fetch_all(
        conn,
        f"""
        UPDATE webhook_outbox SET lease_until = {dialect.fraction_from_now(":lease")}
        WHERE message_id IN ({due}{dialect.skip_locked})
        RETURNING {returned}
        """,
        {**params, "lease": lease_seconds},
    )


async def list_messages_with_members(conn: Connection, message_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The messages (with senders) by id, each with ``members``: the ids of its room's current members."""
    dialect = conn.dialect
    rows = await fetch_all(
        conn,
        f"""
        SELECT {MESSAGE_WITH_SENDER},
               (SELECT {dialect.json_array("m.user_id")} FROM user_chatroom AS m WHERE m.chatroom_id = h.chatroom_id)
                   AS members
        FROM chat_history AS h JOIN "user" AS u ON u.id = h.sender_id
        WHERE h.id IN {dialect.in_list("?", "int")}
        """,
        (dialect.list_value(message_ids),),
    )
    messages: dict[int, dict[str, Any]] = {}
    for row in rows:
        members = row.pop("members")
        parsed = orjson.loads(members) if isinstance(members, str | bytes) else members
        message = nest_sender(row)
        message["members"] = sorted(parsed or ())
        messages[int(message["id"])] = message
    return messages


async def finish_deliveries(conn: Connection, message_ids: list[int]) -> None:
    """Drop deliveries that were made, had no one to go to, or were given up."""
    if message_ids:
        dialect = conn.dialect
        await conn.execute(
            f"DELETE FROM webhook_outbox WHERE message_id IN {dialect.in_list('?', 'int')}",
            (dialect.list_value(message_ids),),
        )


async def postpone_deliveries(conn: Connection, retries: list[tuple[int, float, list[int]]]) -> None:
    """Count a failed attempt of each ``(message_id, delay, recipient_ids)``, release its lease, and try again
    ``delay`` seconds from now with the same body; inside one transaction, so one disk sync for the round."""
    await conn.execute_many(
        f"""
        UPDATE webhook_outbox
        SET attempts = attempts + 1, lease_until = NULL, recipient_ids = :recipients,
            next_attempt_at = {conn.dialect.fraction_from_now(":delay")}
        WHERE message_id = :id
        """,
        [
            {"id": message_id, "delay": delay, "recipients": orjson.dumps(recipients).decode()}
            for message_id, delay, recipients in retries
        ],
    )


async def count_pending(conn: Connection) -> int:
    """Deliveries not yet made nor given up."""
    # Every id is positive: the condition lets both engines count from the primary key index.
    return int(await fetch_value(conn, "SELECT count(*) FROM webhook_outbox WHERE message_id > 0"))


async def newest_message_id(conn: Connection) -> int:
    """The largest stored message id (0 when there is none)."""
    return int(await fetch_value(conn, "SELECT coalesce(max(id), 0) FROM chat_history") or 0)
