"""Bulk data written straight into the benchmark's databases: its SQLite file and its PostgreSQL database.

The service's API would take hours to store ten million messages, so the
history and the large user and room populations are written by SQL, in
large transactions with ``synchronous=OFF`` (SQLite) or
``synchronous_commit=off`` for the seeding session only (PostgreSQL), while
the server is stopped. Only the benchmark's own throwaway databases are ever
touched.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatsvc.db import SqliteDatabase
from chatsvc.search_index import SearchIndexer

HISTORY_BATCH = 1_000_000
# Messages per transaction when the seeded history is indexed for search (fewer, larger FTS5 segments).
INDEX_CHUNK = 500_000
SEED_TIME = "2024-01-01T00:00:00.000Z"
Log = Callable[[str], None]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _bulk(conn: sqlite3.Connection) -> None:
    # The server is stopped and the file is thrown away after the run: durability buys nothing here.
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")


def create_groups(path: Path, groups: list[tuple[str, list[int]]]) -> list[int]:
    """Create group rooms with their members (used when the API has no group routes); return their ids."""
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        ids = []
        for name, members in groups:
            room_id = conn.execute("INSERT INTO chatroom (name, type) VALUES (?, 1) RETURNING id", (name,)).fetchone()[
                0
            ]
            conn.executemany(
                "INSERT INTO user_chatroom (user_id, chatroom_id) VALUES (?, ?)", [(m, room_id) for m in members]
            )
            ids.append(room_id)
        conn.execute("COMMIT")
        return ids
    finally:
        conn.close()


@dataclass
class HistoryRoom:
    """The seeded history room: its id, a member who reads it, and its range of message ids."""

    room_id: int
    reader_id: int
    first_id: int
    last_id: int
    rows: int


def seed_history(path: Path, rows: int, members: list[int], log: Log) -> HistoryRoom:
    """A group room of ``members`` holding ``rows`` messages sent by them in turn."""
    conn = _connect(path)
    try:
        _bulk(conn)
        conn.execute("BEGIN IMMEDIATE")
        room_id = conn.execute("INSERT INTO chatroom (name, type) VALUES ('bench history', 1) RETURNING id").fetchone()[
            0
        ]
        conn.executemany(
            "INSERT INTO user_chatroom (user_id, chatroom_id) VALUES (?, ?)", [(m, room_id) for m in members]
        )
        conn.execute("COMMIT")
        senders = ", ".join(f"({i}, {user_id})" for i, user_id in enumerate(members))
        started = time.monotonic()
        done = 0
        while done < rows:
            count = min(HISTORY_BATCH, rows - done)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"""
                WITH RECURSIVE seq(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM seq WHERE n < :last),
                senders(i, user_id) AS (VALUES {senders})
                INSERT INTO chat_history (content, type, chatroom_id, sender_id, create_time, update_time)
                SELECT 'history message number ' || n, 0, :room, s.user_id, :time, :time
                FROM seq JOIN senders AS s ON s.i = n % :members
                """,
                {
                    "first": done,
                    "last": done + count - 1,
                    "room": room_id,
                    "time": SEED_TIME,
                    "members": len(members),
                },
            )
            conn.execute("COMMIT")
            done += count
            log(f"  history: {done:,}/{rows:,} messages ({time.monotonic() - started:.1f} s)")
        # Indexed for search as the server's writer indexes new messages, so it need not when it starts again.
        asyncio.run(_index_for_search(path))
        log(f"  history: indexed for search ({time.monotonic() - started:.1f} s)")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        first_id, last_id = conn.execute(
            "SELECT min(id), max(id) FROM chat_history WHERE chatroom_id = ?", (room_id,)
        ).fetchone()
        return HistoryRoom(room_id, members[0], first_id or 0, last_id or 0, rows)
    finally:
        conn.close()


async def _index_for_search(path: Path) -> None:
    db = SqliteDatabase(path, synchronous="OFF")
    await db.open()
    try:
        indexer = SearchIndexer(db, INDEX_CHUNK)
        while await indexer.step():
            pass
    finally:
        await db.close()


@dataclass
class Population:
    """The seeded users and rooms, and what the benchmark's callers can ask about them."""

    users: int
    rooms: int
    memberships: int
    # For each caller: users it has a one-to-one room with.
    partners: dict[int, list[int]] = field(default_factory=dict)
    user_ids: list[int] = field(default_factory=list)


def _pairs(keys: Any) -> set[tuple[int, int]]:
    """The user pairs of existing one-to-one rooms, from their ``pair_key`` values."""
    return {tuple(sorted(map(int, key.split(":")))) for key in keys}  # type: ignore[misc]


def room_and_member_rows(
    next_id: int, one_to_one: list[tuple[int, int]], groups: list[list[int]]
) -> tuple[list[tuple[int, str, int, str | None]], list[tuple[int, int]]]:
    """The planned rooms as chatroom rows (ids from ``next_id``) and user_chatroom rows, for either engine."""
    room_rows: list[tuple[int, str, int, str | None]] = []
    member_rows: list[tuple[int, int]] = []
    for a, b in one_to_one:
        room_rows.append((next_id, f"Seeded {a} & Seeded {b}", 0, f"{a}:{b}"))
        member_rows += [(a, next_id), (b, next_id)]
        next_id += 1
    for index, members in enumerate(groups):
        room_rows.append((next_id, f"group {index}", 1, None))
        member_rows += [(m, next_id) for m in set(members)]
        next_id += 1
    return room_rows, member_rows


def plan_rooms(
    rng: random.Random, user_ids: list[int], pairs: set[tuple[int, int]], callers: list[int], rooms: int
) -> tuple[dict[int, list[int]], list[tuple[int, int]], list[list[int]]]:
    """``rooms`` new rooms, 3/4 one-to-one (no pair in ``pairs`` twice), 1/4 groups of 3–10; each caller's first.

    Returns each caller's one-to-one partners, the new pairs and the new groups' members.
    """
    partners: dict[int, list[int]] = {caller: [] for caller in callers}
    one_to_one: list[tuple[int, int]] = []
    groups: list[list[int]] = []

    def add_pair(a: int, b: int) -> None:
        pair = (min(a, b), max(a, b))
        if a != b and pair not in pairs:
            pairs.add(pair)
            one_to_one.append(pair)
            for x, y in ((a, b), (b, a)):
                if x in partners:
                    partners[x].append(y)

    for caller in callers:
        for _ in range(5):
            add_pair(caller, rng.choice(user_ids))
        for _ in range(2):
            groups.append([caller, *rng.sample(user_ids, rng.randint(2, 9))])
    wanted_pairs = rooms * 3 // 4
    while len(one_to_one) < wanted_pairs:
        add_pair(rng.choice(user_ids), rng.choice(user_ids))
    while len(one_to_one) + len(groups) < rooms:
        groups.append(rng.sample(user_ids, rng.randint(3, 10)))
    return partners, one_to_one, groups


def seed_population(path: Path, users: int, rooms: int, callers: list[int], log: Log, seed: int = 5) -> Population:
    """Bring the database to ``users`` users and ``rooms`` more rooms: 3/4 one-to-one, 1/4 groups of 3–10.

    Every caller also gets 5 one-to-one rooms and 2 groups, so the rooms it
    lists are a typical user's, not an empty list.
    """
    rng = random.Random(seed)
    conn = _connect(path)
    try:
        _bulk(conn)
        started = time.monotonic()
        existing = conn.execute("SELECT count(*) FROM user").fetchone()[0]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            """
            WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :count)
            INSERT INTO user (username, password_hash, nick_name, email)
            SELECT 'seed' || n, 'not-a-hash', 'Seeded ' || n, 'seed' || n || '@example.com' FROM seq
            """,
            {"count": max(users - existing, 0)},
        )
        conn.execute("COMMIT")
        user_ids = [row[0] for row in conn.execute("SELECT id FROM user ORDER BY id")]
        pairs = _pairs(key for (key,) in conn.execute("SELECT pair_key FROM chatroom WHERE pair_key IS NOT NULL"))
        partners, one_to_one, groups = plan_rooms(rng, user_ids, pairs, callers, rooms)
        conn.execute("BEGIN IMMEDIATE")
        next_id = (conn.execute("SELECT max(id) FROM chatroom").fetchone()[0] or 0) + 1
        room_rows, member_rows = room_and_member_rows(next_id, one_to_one, groups)
        conn.executemany("INSERT INTO chatroom (id, name, type, pair_key) VALUES (?, ?, ?, ?)", room_rows)
        conn.executemany("INSERT INTO user_chatroom (user_id, chatroom_id) VALUES (?, ?)", member_rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log(
            f"  population: {len(user_ids):,} users, {len(room_rows):,} rooms, "
            f"{len(member_rows):,} memberships ({time.monotonic() - started:.1f} s)"
        )
        return Population(len(user_ids), len(room_rows), len(member_rows), partners, user_ids)
    finally:
        conn.close()


# --- PostgreSQL ------------------------------------------------------------------------------------------------


async def _pg_connect(url: str) -> Any:
    """A session for bulk writes: no wait for the WAL flush, and no per-row foreign-key triggers."""
    import asyncpg  # the postgres extra; imported here so that the SQLite-only benchmark does not need it

    conn = await asyncpg.connect(url)
    # The server keeps fsync and synchronous_commit on for chatsvc; this seeding session alone skips the flush at
    # each commit (the cluster is thrown away after the run). session_replication_role=replica skips the
    # foreign-key triggers, a lookup per row: the rows below reference users and rooms that exist by construction.
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET session_replication_role = replica")
    return conn


async def seed_history_postgres(url: str, rows: int, members: list[int], log: Log) -> HistoryRoom:
    """:func:`seed_history` on PostgreSQL: the rows come from ``generate_series`` on the server, a million a commit."""
    conn = await _pg_connect(url)
    try:
        async with conn.transaction():
            room_id = await conn.fetchval("INSERT INTO chatroom (name, type) VALUES ('bench history', 1) RETURNING id")
            await conn.executemany(
                "INSERT INTO user_chatroom (user_id, chatroom_id) VALUES ($1, $2)", [(m, room_id) for m in members]
            )
        started = time.monotonic()
        done = 0
        while done < rows:
            count = min(HISTORY_BATCH, rows - done)
            await conn.execute(
                """
                INSERT INTO chat_history (content, type, chatroom_id, sender_id, create_time, update_time)
                SELECT 'history message number ' || n, 0, $1, ($2::bigint[])[n % $3 + 1], $4::timestamptz,
                       $4::timestamptz
                FROM generate_series($5::bigint, $6::bigint) AS n
                """,
                room_id,
                members,
                len(members),
                _pg_time(),
                done,
                done + count - 1,
            )
            done += count
            log(f"  history (PostgreSQL): {done:,}/{rows:,} messages ({time.monotonic() - started:.1f} s)")
        # session_replication_role=replica skipped the triggers too: set the room's newest message, as the trigger
        # that keeps it would have.
        await conn.execute(
            "UPDATE chatroom SET last_message_id = (SELECT max(id) FROM chat_history WHERE chatroom_id = $1) "
            "WHERE id = $1",
            room_id,
        )
        # What autovacuum would do soon after a real load: statistics for the planner, hint bits and the visibility
        # map set, so that the first reads of each page do not write it.
        await conn.execute("VACUUM (ANALYZE) chat_history")
        log(f"  history (PostgreSQL): vacuumed and analysed ({time.monotonic() - started:.1f} s)")
        first_id, last_id = await conn.fetchrow(
            "SELECT min(id), max(id) FROM chat_history WHERE chatroom_id = $1", room_id
        )
        return HistoryRoom(room_id, members[0], first_id or 0, last_id or 0, rows)
    finally:
        await conn.close()


def _pg_time() -> Any:
    from datetime import datetime

    return datetime.fromisoformat(SEED_TIME.replace("Z", "+00:00"))


async def seed_population_postgres(
    url: str, users: int, rooms: int, callers: list[int], log: Log, seed: int = 5
) -> Population:
    """:func:`seed_population` on PostgreSQL: users by ``generate_series``, rooms and members by ``COPY``."""
    rng = random.Random(seed)
    conn = await _pg_connect(url)
    try:
        started = time.monotonic()
        existing = await conn.fetchval('SELECT count(*) FROM "user"')
        await conn.execute(
            """
            INSERT INTO "user" (username, password_hash, nick_name, email)
            SELECT 'seed' || n, 'not-a-hash', 'Seeded ' || n, 'seed' || n || '@example.com'
            FROM generate_series(1, $1::bigint) AS n
            """,
            max(users - existing, 0),
        )
        user_ids = [row[0] for row in await conn.fetch('SELECT id FROM "user" ORDER BY id')]
        pairs = _pairs(row[0] for row in await conn.fetch("SELECT pair_key FROM chatroom WHERE pair_key IS NOT NULL"))
        partners, one_to_one, groups = plan_rooms(rng, user_ids, pairs, callers, rooms)
        next_id = (await conn.fetchval("SELECT max(id) FROM chatroom") or 0) + 1
        room_rows, member_rows = room_and_member_rows(next_id, one_to_one, groups)
        async with conn.transaction():
            await conn.copy_records_to_table("chatroom", records=room_rows, columns=["id", "name", "type", "pair_key"])
            await conn.copy_records_to_table("user_chatroom", records=member_rows, columns=["user_id", "chatroom_id"])
            # The ids were given explicitly: move the identity past them, as copy-to-postgres does.
            await conn.execute("SELECT setval(pg_get_serial_sequence('chatroom', 'id'), max(id)) FROM chatroom")
        await conn.execute('VACUUM (ANALYZE) "user", chatroom, user_chatroom')
        log(
            f"  population (PostgreSQL): {len(user_ids):,} users, {len(room_rows):,} rooms, "
            f"{len(member_rows):,} memberships ({time.monotonic() - started:.1f} s)"
        )
        return Population(len(user_ids), len(room_rows), len(member_rows), partners, user_ids)
    finally:
        await conn.close()
