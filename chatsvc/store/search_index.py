"""SQLite's search index, filled after the fact: the messages above its watermark (schema.sql), a chunk at a time.

Storing a message does not index it; chatsvc/search_index.py runs these on
the writer's connection when the writer is idle and before each search.
"""

from __future__ import annotations

from chatsvc.store import Connection
from chatsvc.store.sqlite import ROOM_STRIDE


async def count_unindexed(conn: Connection) -> int:
    """How many message ids lie above the index's watermark (0: every stored message is searchable)."""
    above: int = await conn.fetch_value(
        """
        SELECT max(coalesce((SELECT max(id) FROM chat_history), 0) - indexed_id, 0)
        FROM chat_search_watermark WHERE id = 1
        """
    )
    return above


async def index_next_messages(conn: Connection, limit: int | None) -> int:
    """Index the next ``limit`` message ids above the watermark (every one if None) and raise it past them.

    Returns how many ids remain above it. Run it in a write transaction: the
    watermark and the newest id are read under the write lock, so processes
    sharing the file never index a message twice.
    """
    # The limit-th id above the watermark: the chunk's last.
    nth = "NULL"
    if limit is not None:
        nth = "(SELECT id FROM chat_history WHERE id > indexed_id ORDER BY id LIMIT 1 OFFSET ?)"
    row = await conn.fetch_one(
        f"""
        SELECT indexed_id AS low, coalesce((SELECT max(id) FROM chat_history), 0) AS newest, {nth} AS nth
        FROM chat_search_watermark WHERE id = 1
        """,
        () if limit is None else (limit - 1,),
    )
    assert row is not None, "schema.sql makes the watermark's row"
    low, newest = row["low"], row["newest"]
    if newest <= low:
        return 0
    high = newest if row["nth"] is None else row["nth"]
    # In rowid order (room, then id): FTS5 starts a new segment whenever an entry's rowid is not above the last
    # one's, so the chunk is one segment.
    await conn.execute(
        f"""
        INSERT INTO chat_search (rowid, content)
        SELECT chatroom_id * {ROOM_STRIDE} + id, content FROM chat_history
        WHERE id > ? AND id <= ? AND type = 0 AND deleted = 0
        ORDER BY 1
        """,
        (low, high),
    )
    await conn.execute(
        """
        INSERT INTO chat_search_pairs (rowid, pairs)
        SELECT entry, pairs FROM chat_search_pairs_source WHERE id > ? AND id <= ? ORDER BY entry
        """,
        (low, high),
    )
    await conn.execute("UPDATE chat_search_watermark SET indexed_id = ? WHERE id = 1", (high,))
    return int(newest - high)
