"""The SQLite search index's cost on the message write path: process CPU per stored message (issues 13 and 14).

    .venv/bin/python -m bench.search_index --messages 20000

Stores chat-like messages (six words; one in ten with CJK words too)
through the writer's own statement (chatsvc/store/messages.py
``insert_messages``, one statement per batch, autocommit, synchronous=OFF so
that the disk is not measured) into a throwaway database made by chatsvc's
schema, for batches of 1, 5 and 50 rows: once with every message indexed in
its INSERT (the watermark set above every id, so the index's trigger runs for
each row: the write path before migration 010), and once without (as now).
Then the indexer's own cost per message, chunk by chunk
(chatsvc/search_index.py), for the messages stored without it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from chatsvc.db import SqliteDatabase
from chatsvc.search_index import CHUNK_MESSAGES, SearchIndexer
from chatsvc.store.messages import insert_messages

ROOMS = 20
WORDS = ["hello", "there", "how", "is", "the", "project", "going", "today", "meeting", "lunch", "later", "report"]
# One message in ten also has two CJK words (which the pair index takes in).
CJK_EVERY = 10


def _content(rng: random.Random) -> str:
    text = " ".join(rng.choices(WORDS, k=6))
    return text + " 你好 明天" if rng.randrange(CJK_EVERY) == 0 else text


async def _store(db: SqliteDatabase, messages: int, per_insert: int, rng: random.Random) -> float:
    """Process CPU seconds to store ``messages`` in INSERTs of ``per_insert`` rows."""
    started = time.process_time()
    for _ in range(messages // per_insert):
        drafts = [(" ".join(rng.choices(WORDS, k=6)), 0, rng.randint(1, ROOMS), 1, None) for _ in range(per_insert)]
        await db.write_statement(lambda conn, drafts=drafts: insert_messages(conn, drafts))  # type: ignore[misc]
    return time.process_time() - started


async def _set_watermark(db: SqliteDatabase, value: int) -> None:
    async with db.transaction() as conn:
        await conn.execute("UPDATE chat_search_watermark SET indexed_id = ?", (value,))


async def run(folder: Path, messages: int, chunk: int) -> None:
    """Print the CPU per message of each case."""
    rng = random.Random(13)
    print(f"{'rows per INSERT':>16} {'indexed in INSERT':>18} {'not indexed':>12}  (µs CPU per message)")
    for per_insert in (1, 5, 50):
        figures = []
        for indexed in (True, False):
            db = SqliteDatabase(folder / f"bench-{per_insert}-{indexed}.db", synchronous="OFF")
            await db.open()
            try:
                async with db.transaction() as conn:
                    await conn.execute(
                        "INSERT INTO user (id, username, password_hash, nick_name, email) "
                        "VALUES (1, 'bench', 'x', 'Bench', '')"
                    )
                    await conn.execute_many(
                        "INSERT INTO chatroom (id, name, type) VALUES (?, 'r', 1)", [(r,) for r in range(1, ROOMS + 1)]
                    )
                await _store(db, 1000, per_insert, rng)  # warm up
                await _set_watermark(db, 2**62 if indexed else 0)
                figures.append(await _store(db, messages, per_insert, rng) / messages * 1e6)
                if not indexed and per_insert == 5:
                    await _set_watermark(db, 1000)  # the warm-up's rows went in before; index only the measured
                    indexer = SearchIndexer(db, chunk)
                    started = time.process_time()
                    while await indexer.step():
                        pass
                    per_message = (time.process_time() - started) / messages * 1e6
            finally:
                await db.close()
        print(f"{per_insert:>16} {figures[0]:>18.1f} {figures[1]:>12.1f}")
    print(f"the indexer, {chunk} messages per chunk: {per_message:.1f} µs CPU per message")


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=CHUNK_MESSAGES)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder), args.messages, args.chunk))


if __name__ == "__main__":
    main()
