"""SQLite's search index, kept off the message write path: the message writer's idle work (chatsvc/writer.py).

Storing a message does not index it: FTS5 writes a segment per transaction,
which cost more than the small INSERT of a chat batch. The index holds the
messages up to its watermark (schema.sql); the writer indexes the ones above
in chunks, on its own connection, when its queue stays empty a moment or many
wait (one segment per chunk), and a search first has the writer finish them
(:meth:`MessageWriter.catch_up`), so a message acknowledged before a search
is always found. PostgreSQL's index is kept by PostgreSQL: it has none of this.
"""

from __future__ import annotations

from chatsvc.db import Database
from chatsvc.store.search_index import count_unindexed, index_next_messages

# Messages per chunk: a message that arrives meanwhile waits for one chunk at most (docs/performance.md).
CHUNK_MESSAGES = 128


class SearchIndexer:
    """Indexes the messages stored since the search index's watermark, a chunk at a time or all at once."""

    def __init__(self, db: Database, chunk: int = CHUNK_MESSAGES) -> None:
        self._db = db
        self._chunk = chunk

    async def pending(self) -> int:
        """How many message ids lie above the watermark, read on the reader (0: every message is searchable)."""
        return await count_unindexed(self._db.reader)

    async def step(self) -> int:
        """Index one chunk in a write transaction; how many ids remain above the watermark."""
        async with self._db.transaction() as conn:
            return await index_next_messages(conn, self._chunk)

    async def finish(self) -> None:
        """Index every message above the watermark in one write transaction."""
        async with self._db.transaction() as conn:
            await index_next_messages(conn, None)
