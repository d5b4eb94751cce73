"""GET /chatroom/list with read positions, unread counts and last messages over a large database (issue 15).

    .venv/bin/python -m bench.room_list --messages 10000000

Seeds an SQLite database: a caller in ``--rooms`` rooms (groups of 10, the
caller and 9 others) among ``--other-rooms`` rooms more, and ``--messages``
messages, a tenth of them in the caller's rooms and the rest spread over the
others. The caller has read each of its rooms up to a random point among its
last ``--unread`` messages (so the counts have something to count). Then a
real chatsvc serves it and the caller lists its rooms, one request at a time;
the report gives p50 and p99 of the whole request and of the store's
statements alone.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from chatsvc.config import Config
from chatsvc.db import SqliteDatabase
from chatsvc.store.reads import list_unread_of_user
from chatsvc.store.rooms import list_rooms_of_user
from chatsvc.testing import run_chatsvc


def seed(path: Path, caller: int, args: argparse.Namespace) -> None:
    """Users, rooms, memberships, messages and the caller's read positions, in a few bulk statements."""
    rng = random.Random(15)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    # Seeded rows are not sends: the trigger would only slow the bulk insert (schema.sql puts it back at start).
    conn.execute("DROP TRIGGER IF EXISTS chat_history_moves_sender_read")
    with conn:
        conn.execute(
            """
            WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?)
            INSERT INTO user (username, password_hash, nick_name, email)
            SELECT 'seed' || n, 'not-a-hash', 'Seeded ' || n, 'seed' || n || '@example.com' FROM seq
            """,
            (args.users,),
        )
    users = [row[0] for row in conn.execute("SELECT id FROM user WHERE id != ?", (caller,))]
    total_rooms = args.rooms + args.other_rooms
    with conn:
        conn.executemany(
            "INSERT INTO chatroom (id, name, type) VALUES (?, ?, 1)", [(r, f"g{r}") for r in range(1, total_rooms + 1)]
        )
        members = []
        for room in range(1, total_rooms + 1):
            others = rng.sample(users, 9)
            members += [(u, room) for u in others]
            if room <= args.rooms:
                members.append((caller, room))
        conn.executemany("INSERT OR IGNORE INTO user_chatroom (user_id, chatroom_id) VALUES (?, ?)", members)
    mine = args.messages // 10
    started = time.monotonic()
    with conn:
        # Messages in id order round-robin over rooms, as a busy service would store them.
        conn.execute(
            """
            WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < :count - 1)
            INSERT INTO chat_history (content, type, chatroom_id, sender_id)
            SELECT 'seeded message ' || n, 0,
                   CASE WHEN n % 10 = 0 THEN 1 + (n / 10) % :mine_rooms ELSE 1 + :mine_rooms + n % :other_rooms END,
                   2 + n % :users
            FROM seq
            """,
            {
                "count": args.messages,
                "mine_rooms": args.rooms,
                "other_rooms": args.other_rooms,
                "users": args.users - 1,
            },
        )
    print(f"seeded {args.messages:,} messages ({mine:,} in the caller's rooms) in {time.monotonic() - started:.0f} s")
    with conn:
        rooms = [row[0] for row in conn.execute("SELECT id FROM chatroom WHERE id <= ?", (args.rooms,))]
        for room in rooms:
            # Read up to a random point among its last --unread messages.
            behind = rng.randint(0, args.unread)
            position = conn.execute(
                """
                SELECT coalesce(min(id), 0)
                FROM (SELECT id FROM chat_history WHERE chatroom_id = ? ORDER BY id DESC LIMIT ?)
                """,
                (room, behind + 1),
            ).fetchone()[0]
            conn.execute(
                "UPDATE user_chatroom SET last_read_id = ? WHERE user_id = ? AND chatroom_id = ?",
                (position, caller, room),
            )
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms"


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="chatsvc-room-list-"))
    config = Config(host="127.0.0.1", port=0, db_path=folder / "chat.db", scrypt_n=2**4, rate_limit=0)
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        base = str(server.make_url("")).rstrip("/")
        body = {"username": "caller", "password": "secret123", "nickName": "Caller", "email": "caller@example.com"}
        await session.post(base + "/user/register", json=body)
    caller = 1
    seed(config.db_path, caller, args)
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        base = str(server.make_url("")).rstrip("/")
        async with session.post(base + "/user/login", json={"username": "caller", "password": "secret123"}) as resp:
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        http: list[float] = []
        for i in range(args.requests + 20):
            started = time.perf_counter()
            async with session.get(base + "/chatroom/list", headers=headers, params={"order": "activity"}) as resp:
                rooms = await resp.json()
            if i >= 20:  # warm-up
                http.append((time.perf_counter() - started) * 1000)
        assert len(rooms) == args.rooms, len(rooms)
        unread = sum(room["unreadCount"] for room in rooms)
    db = SqliteDatabase(config.db_path)
    await db.open()
    try:
        store: list[float] = []
        for i in range(args.requests + 20):
            started = time.perf_counter()
            await list_rooms_of_user(db.reader, caller)
            await list_unread_of_user(db.reader, caller)
            if i >= 20:
                store.append((time.perf_counter() - started) * 1000)
    finally:
        await db.close()
    print(
        f"/chatroom/list?order=activity for a caller in {args.rooms} rooms ({unread} unread in all), "
        f"{args.messages:,} messages, {args.rooms + args.other_rooms:,} rooms, {args.users:,} users:"
    )
    print(f"  HTTP request: {percentiles(http)}")
    print(f"  store statements alone: {percentiles(store)}")
    if not args.keep:
        shutil.rmtree(folder)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.room_list", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000_000, help="messages in the database (10,000,000)")
    p.add_argument("--rooms", type=int, default=50, help="the caller's rooms (50)")
    p.add_argument("--other-rooms", type=int, default=20_000, help="rooms the caller is not in (20,000)")
    p.add_argument("--users", type=int, default=10_000, help="users (10,000)")
    p.add_argument("--unread", type=int, default=30, help="at most this many unread messages per room (30)")
    p.add_argument("--requests", type=int, default=500, help="measured requests (500)")
    p.add_argument("--keep", action="store_true", help="keep the database")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
