"""Demo data for ``chatsvc demo`` / ``make demo``: three users who are friends, a group, a few messages."""

from __future__ import annotations

import asyncio

from chatsvc.auth import hash_password
from chatsvc.config import Config
from chatsvc.db import Database
from chatsvc.store.friends import insert_friendship
from chatsvc.store.messages import TEXT, insert_message
from chatsvc.store.rooms import add_member, create_group_room, create_one_to_one_room
from chatsvc.store.users import find_user_by_username, insert_user

# Printed for anyone to read: the demo binds to loopback unless told otherwise.
DEMO_PASSWORD = "chatsvc-demo"
DEMO_USERS = (("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol"))
DEMO_GROUP = "Demo group"
# (sender, text) in the group, then in alice and bob's one-to-one room.
GROUP_MESSAGES = (
    ("alice", "Welcome to the chatsvc demo! This group has all three of us."),
    ("bob", "Hi Alice! Messages are stored in SQLite and arrive live over Socket.IO."),
    ("carol", "Open a second browser window, log in as someone else, and chat with yourself."),
)
DIRECT_MESSAGES = (
    ("bob", "Hi Alice, this is our one-to-one chat."),
    ("alice", "Hi Bob! Pick Image URL or File URL next to the box to send a picture or a link."),
)


async def seed_demo(db: Database, *, scrypt_n: int) -> bool:
    """Create the demo users, friendships, rooms and messages unless they exist; whether it created them.

    The database must be open. Everything is written in one transaction, so a
    second run (or an interrupted first one) never leaves half the data.
    """
    for username, _ in DEMO_USERS:
        if await find_user_by_username(db.reader, username) is not None:
            return False
    hashes = await asyncio.gather(*(hash_password(DEMO_PASSWORD, n=scrypt_n) for _ in DEMO_USERS))
    async with db.transaction() as conn:
        ids: dict[str, int] = {}
        for (username, nick_name), password_hash in zip(DEMO_USERS, hashes, strict=True):
            user = await insert_user(
                conn,
                username=username,
                password_hash=password_hash,
                nick_name=nick_name,
                email=f"{username}@example.com",
            )
            if user is None:  # registered meanwhile by someone else: leave their account alone
                raise RuntimeError(f"username {username!r} was taken while seeding the demo")
            ids[username] = user["id"]
        alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
        for a, b in ((alice, bob), (alice, carol), (bob, carol)):
            await insert_friendship(conn, a, b)
        group = await create_group_room(conn, DEMO_GROUP, alice)
        for member in (bob, carol):
            await add_member(conn, group, member)
        direct = await create_one_to_one_room(conn, alice, bob, name="Alice & Bob")
        for room, messages in ((group, GROUP_MESSAGES), (direct, DIRECT_MESSAGES)):
            for sender, text in messages:
                await insert_message(conn, chatroom_id=room, sender_id=ids[sender], type=TEXT, content=text)
    return True


async def prepare_demo(config: Config) -> bool:
    """Open the configured database (creating it if needed), seed the demo data, close it; whether it seeded."""
    db = Database(config.db_path, synchronous=config.sqlite_synchronous)
    await db.open()
    try:
        return await seed_demo(db, scrypt_n=config.scrypt_n)
    finally:
        await db.close()


def demo_url(config: Config) -> str:
    """The address to open in a browser: a wildcard bind is reachable on loopback."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.port}/"


def demo_banner(config: Config, seeded: bool) -> str:
    """What ``chatsvc demo`` prints before serving: where to go and how to log in."""
    users = ", ".join(username for username, _ in DEMO_USERS)
    state = "Demo data created" if seeded else "Demo users already exist (not changed)"
    return f"{state} in {config.db_path}.\nOpen {demo_url(config)} and log in as {users} with password: {DEMO_PASSWORD}"
