"""Search over a large history (issue 15): p50 and p95 of /chat-history/search's query, one room and all rooms.

    .venv/bin/python -m bench.search --messages 1000000

Seeds a throwaway SQLite database made by chatsvc's own schema, then times
the store's ``search_messages`` on the server's read connection: a word in
one room, a word across the caller's rooms, and the same for two-character
CJK words. Every message has three words from a vocabulary of Latin words and
two-character CJK words; messages are spread over the rooms, of which the
caller is a member of a quarter.

Seeding fills the search index the way migration 008 fills it for the
messages of an existing database: the messages go in with the index's
triggers set aside, then the migration's own backfill statements index them
all, in rowid order, the triggers are put back exactly as they were and the
index's watermark is set to the newest message (as migration 010 sets it). The
database is then what a production database migrated to 010 is; per-row
triggers would write an FTS5 segment per message (rowids out of order).

On SQLite each search first asks whether the index has messages to catch up
with (chatsvc/writer.py ``catch_up``): that query is timed with the search.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.pg import DATABASE as PG_DATABASE
from bench.pg import start_postgres
from chatsvc.db import SqliteDatabase
from chatsvc.migrate import load_migrations, split_statements
from chatsvc.search_index import SearchIndexer
from chatsvc.store.messages import search_messages
from chatsvc.store.postgres import PostgresDatabase
from chatsvc.store.search_index import count_unindexed

BATCH = 500_000
Database = SqliteDatabase | PostgresDatabase
SEARCH_MIGRATION = "search_by_room"
TAIL_BATCH = 50
# Messages number :first to :last: three words each and the room, spread by multiplying with primes (every
# word about equally often, in every room).
MESSAGES = """
    WITH RECURSIVE seq(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM seq WHERE n < :last)
    INSERT INTO chat_history (content, type, chatroom_id, sender_id)
    SELECT a.w || ' ' || b.w || ' ' || c.w, 0, (n * 2654435761) % 4294967291 % :rooms + 1, n % 2 + 1
    FROM seq
    JOIN vocab AS a ON a.i = (n * 7919) % :size
    JOIN vocab AS b ON b.i = (n * 104729 + 17) % :size
    JOIN vocab AS c ON c.i = (n * 1299709 + 31) % :size
"""


def _vocabulary(rng: random.Random, latin: int, cjk: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choice(letters) for _ in range(rng.randint(4, 9))) for _ in range(latin)}
    hanzi = {chr(rng.randint(0x4E00, 0x4FFF)) + chr(rng.randint(0x4E00, 0x4FFF)) for _ in range(cjk)}
    return sorted(words) + sorted(hanzi)


def seed(path: Path, messages: int, rooms: int, vocabulary: list[str]) -> None:
    """Users 1 and 2, ``rooms`` rooms (user 1 in every fourth), and ``messages`` messages, indexed as 008 does."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -3000000")  # 3 GB: the index is built from rows read in room order
    triggers = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'chat\\_search\\_%' ESCAPE '\\'"
    ).fetchall()
    for name, _sql in triggers:
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("BEGIN")
    for n in (1, 2):
        conn.execute(
            "INSERT INTO user (id, username, password_hash, nick_name, email) VALUES (?, ?, 'x', ?, '')",
            (n, f"search{n}", f"Search {n}"),
        )
    conn.executemany(
        "INSERT INTO chatroom (id, name, type) VALUES (?, ?, 1)", [(r, f"r{r}") for r in range(1, rooms + 1)]
    )
    members = [(2, r) for r in range(1, rooms + 1)] + [(1, r) for r in range(1, rooms + 1, 4)]
    conn.executemany("INSERT INTO user_chatroom (user_id, chatroom_id) VALUES (?, ?)", members)
    conn.execute("CREATE TEMP TABLE vocab (i INTEGER PRIMARY KEY, w TEXT NOT NULL)")
    conn.executemany("INSERT INTO vocab (i, w) VALUES (?, ?)", list(enumerate(vocabulary)))
    conn.execute("COMMIT")
    size = len(vocabulary)
    started = time.monotonic()
    done = 0
    tail = min(messages // 100, 100_000)
    while done < messages - tail:
        count = min(BATCH, messages - tail - done)
        conn.execute("BEGIN")
        conn.execute(MESSAGES, {"first": done, "last": done + count - 1, "rooms": rooms, "size": size})
        conn.execute("COMMIT")
        done += count
        print(f"  seeded {done:,}/{messages:,} messages ({time.monotonic() - started:.0f} s)", flush=True)
    conn.execute("BEGIN")
    for statement in backfill_statements():
        conn.execute(statement)
    for _name, sql in triggers:
        conn.execute(sql)
    conn.execute("UPDATE chat_search_watermark SET indexed_id = (SELECT max(id) FROM chat_history)")
    conn.execute("COMMIT")
    print(f"  indexed ({time.monotonic() - started:.0f} s)", flush=True)
    # The newest messages as a running server stores them: a few per transaction (the writer's group commit),
    # then indexed by the writer's indexer a chunk per transaction, so the index also has the small segments
    # that live traffic leaves on top.
    for first in range(messages - tail, messages, TAIL_BATCH):
        conn.execute("BEGIN")
        conn.execute(MESSAGES, {"first": first, "last": first + TAIL_BATCH - 1, "rooms": rooms, "size": size})
        conn.execute("COMMIT")
    conn.close()
    asyncio.run(_index_the_rest(path))
    print(f"  {tail:,} more stored, then indexed a chunk at a time ({time.monotonic() - started:.0f} s)", flush=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def _index_the_rest(path: Path) -> None:
    db = SqliteDatabase(path, synchronous="OFF")
    await db.open()
    try:
        indexer = SearchIndexer(db)
        while await indexer.step():
            pass
    finally:
        await db.close()


def backfill_statements() -> list[str]:
    """The statements with which migration 008 indexes the messages already stored (after its "-- Backfill")."""
    step = next(step for step in load_migrations() if step.name == SEARCH_MIGRATION)
    return split_statements(step.sql[step.sql.index("-- Backfill") :])


async def measure(db: Database, words: list[str], rooms: list[int], runs: int) -> dict[str, tuple[float, float, int]]:
    """Per case: p50 and p95 in ms, and the mean number of results."""
    await db.open()
    try:
        rng = random.Random(7)
        cases = {
            "latin, one room": ([w for w in words if w.isascii()], True),
            "latin, all 50 rooms": ([w for w in words if w.isascii()], False),
            "cjk 2 chars, one room": ([w for w in words if not w.isascii()], True),
            "cjk 2 chars, all 50 rooms": ([w for w in words if not w.isascii()], False),
        }
        results = {}
        for name, (pool, one_room) in cases.items():
            times, found = [], 0
            for _ in range(runs):
                word = rng.choice(pool)
                room = rng.choice(rooms) if one_room else None
                started = time.perf_counter()
                if isinstance(db, SqliteDatabase):
                    await count_unindexed(db.reader)
                rows = await search_messages(db.reader, 1, word, limit=20, chatroom_id=room)
                times.append((time.perf_counter() - started) * 1000)
                found += len(rows)
            times.sort()
            results[name] = (statistics.median(times), times[max(int(len(times) * 0.95) - 1, 0)], found // runs)
            print(f"  {name}: p50 {results[name][0]:.2f} ms", flush=True)
        return results
    finally:
        await db.close()


def main() -> None:
    """Seed, measure, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="use (and keep) this database file; seeded only if missing")
    parser.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL server (bench/pg.py)")
    args = parser.parse_args()
    rng = random.Random(15)
    vocabulary = _vocabulary(rng, 5000, 500)
    rooms = list(range(1, args.rooms + 1, 4))
    if args.postgres:
        results = _on_postgres(args.messages, args.rooms, vocabulary, rooms, args.runs)
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = args.keep or Path(folder) / "search.db"
            fresh = not path.exists()
            asyncio.run(_create(path))
            if fresh:
                started = time.monotonic()
                seed(path, args.messages, args.rooms, vocabulary)
                print(f"seeded in {time.monotonic() - started:.0f} s; {path.stat().st_size / 2**30:.2f} GiB")
            results = asyncio.run(measure(SqliteDatabase(path), vocabulary, rooms, args.runs))
    print(f"{'case':28} {'p50 ms':>8} {'p95 ms':>8} {'results':>8}")
    for name, (p50, p95, found) in results.items():
        print(f"{name:28} {p50:8.2f} {p95:8.2f} {found:8}")


def _on_postgres(
    messages: int, rooms: int, vocabulary: list[str], member_rooms: list[int], runs: int
) -> dict[str, tuple[float, float, int]]:
    server = start_postgres(None, print)
    if isinstance(server, str):
        raise SystemExit(f"no PostgreSQL: {server}")
    try:
        url = server.url(PG_DATABASE)
        started = time.monotonic()
        asyncio.run(seed_postgres(url, messages, rooms, vocabulary))
        print(f"seeded in {time.monotonic() - started:.0f} s", flush=True)
        return asyncio.run(measure(PostgresDatabase(url), vocabulary, member_rooms, runs))
    finally:
        server.close()


async def seed_postgres(url: str, messages: int, rooms: int, vocabulary: list[str]) -> None:
    """As :func:`seed`, on PostgreSQL: the search index made again after the bulk insert, as migration 008 makes it."""
    db = PostgresDatabase(url)
    await db.open()
    await db.close()
    conn = await asyncpg.connect(url)
    try:
        index = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'chat_history_search'")
        await conn.execute("DROP INDEX chat_history_search")
        await conn.executemany(
            """INSERT INTO "user" (id, username, password_hash, nick_name, email) VALUES ($1, $2, 'x', $2, '')""",
            [(1, "search1"), (2, "search2")],
        )
        await conn.executemany(
            "INSERT INTO chatroom (id, name, type) VALUES ($1, $2, 1)", [(r, f"r{r}") for r in range(1, rooms + 1)]
        )
        members = [(2, r) for r in range(1, rooms + 1)] + [(1, r) for r in range(1, rooms + 1, 4)]
        await conn.executemany("INSERT INTO user_chatroom (user_id, chatroom_id) VALUES ($1, $2)", members)
        await conn.execute("CREATE TEMP TABLE vocab (i INTEGER PRIMARY KEY, w TEXT NOT NULL)")
        await conn.executemany("INSERT INTO vocab (i, w) VALUES ($1, $2)", list(enumerate(vocabulary)))
        size, started = len(vocabulary), time.monotonic()
        for first in range(0, messages, BATCH):
            last = min(first + BATCH, messages) - 1
            await conn.execute(
                """
                INSERT INTO chat_history (content, type, chatroom_id, sender_id)
                SELECT a.w || ' ' || b.w || ' ' || c.w, 0, (n * 2654435761) % 4294967291 % $3 + 1, n % 2 + 1
                FROM generate_series($1::bigint, $2::bigint) AS n
                JOIN vocab AS a ON a.i = (n * 7919) % $4
                JOIN vocab AS b ON b.i = (n * 104729 + 17) % $4
                JOIN vocab AS c ON c.i = (n * 1299709 + 31) % $4
                ORDER BY n
                """,
                first,
                last,
                rooms,
                size,
            )
            print(f"  seeded {last + 1:,}/{messages:,} messages ({time.monotonic() - started:.0f} s)", flush=True)
        await conn.execute(index)
        await conn.execute("ANALYZE")
        print(f"  indexed ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        await conn.close()


async def _create(path: Path) -> None:
    db = SqliteDatabase(path)
    await db.open()
    await db.close()


if __name__ == "__main__":
    main()
