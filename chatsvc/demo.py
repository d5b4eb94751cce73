"""Demo data for ``chatsvc demo`` / ``make demo``: three users who are friends, a group, a few messages."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import webbrowser
from dataclasses import dataclass

from chatsvc.auth import PasswordHasher, hash_password
from chatsvc.config import Config, database_label
from chatsvc.db import Database, open_database
from chatsvc.store import Connection
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


@dataclass(frozen=True)
class DemoSeed:
    """What preparing the demo found and did."""

    created: tuple[str, ...]  # demo users created now, with DEMO_PASSWORD
    existing: tuple[str, ...]  # demo usernames that were taken already; their accounts keep their passwords
    demo_password: tuple[str, ...]  # the demo users who log in with DEMO_PASSWORD, created now or before


async def seed_demo(db: Database, *, scrypt_n: int) -> DemoSeed:
    """Create whichever demo users are missing; when any was created, their friendships, group and messages.

    Existing users are never changed: a username taken before (by the README
    tour, say) keeps its password. The database must be open. The writes are
    one transaction, so an interrupted run never leaves half the data.
    """
    found = {username: await find_user_by_username(db.reader, username) for username, _ in DEMO_USERS}
    existing = {username: user for username, user in found.items() if user is not None}
    missing = [(username, nick_name) for username, nick_name in DEMO_USERS if username not in existing]
    hashes = await asyncio.gather(*(hash_password(DEMO_PASSWORD, n=scrypt_n) for _ in missing))
    # Which existing users the demo password opens, so the banner says the truth about logging in.
    checker = PasswordHasher(scrypt_n, concurrency=len(existing) or 1)
    opens = await asyncio.gather(*(checker.verify(DEMO_PASSWORD, user["passwordHash"]) for user in existing.values()))
    if missing:
        async with db.transaction() as conn:
            ids = {username: user["id"] for username, user in existing.items()}
            for (username, nick_name), password_hash in zip(missing, hashes, strict=True):
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
            await _seed_rooms(conn, ids)
    created = tuple(username for username, _ in missing)
    with_demo_password = set(created) | {username for username, ok in zip(existing, opens, strict=True) if ok}
    return DemoSeed(
        created=created,
        existing=tuple(existing),
        demo_password=tuple(username for username, _ in DEMO_USERS if username in with_demo_password),
    )


async def _seed_rooms(conn: Connection, ids: dict[str, int]) -> None:
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    for a, b in ((alice, bob), (alice, carol), (bob, carol)):
        await insert_friendship(conn, a, b)
    group = await create_group_room(conn, DEMO_GROUP, alice)
    for member in (bob, carol):
        await add_member(conn, group, member)
    # Alice and Bob's existing one-to-one room, if they have one, gets the messages.
    direct = await create_one_to_one_room(conn, alice, bob, name="Alice & Bob")
    for room, messages in ((group, GROUP_MESSAGES), (direct, DIRECT_MESSAGES)):
        for sender, text in messages:
            await insert_message(conn, chatroom_id=room, sender_id=ids[sender], type=TEXT, content=text)


async def prepare_demo(config: Config) -> DemoSeed:
    """Open the configured database (creating it if needed), seed the demo data, close it."""
    db = open_database(config)
    await db.open()
    try:
        return await seed_demo(db, scrypt_n=config.scrypt_n)
    finally:
        await db.close()


def _names(usernames: tuple[str, ...] | list[str], last: str = "and") -> str:
    if len(usernames) < 2:
        return "".join(usernames)
    return f"{', '.join(usernames[:-1])} {last} {usernames[-1]}"


def demo_banner(config: Config, seed: DemoSeed, page: str) -> str:
    """What ``chatsvc demo`` prints before serving: what it did, where to go and how to log in."""
    lines = []
    where = database_label(config)
    if seed.created:
        lines.append(
            f"Created demo user{'s' if len(seed.created) > 1 else ''} {_names(seed.created)} in {where},"
            " with friendships, a group and a few messages."
        )
    if seed.existing:
        one = len(seed.existing) == 1
        lines.append(
            f"{_names(seed.existing)} already existed in {where}: "
            f"{'its password was' if one else 'their passwords were'} not changed."
        )
    own = [username for username, _ in DEMO_USERS if username not in seed.demo_password]
    if seed.demo_password:
        login = f"Open {page} and log in as {_names(seed.demo_password, 'or')} with password: {DEMO_PASSWORD}"
        if own:
            login += f" ({_names(own)} with the password{'s' if len(own) > 1 else ''} set before)"
    else:
        login = f"Open {page} and log in as {_names(own, 'or')} with the passwords set before"
    lines.append(login)
    return "\n".join(lines)


def open_in_browser(url: str) -> None:
    """Open the page in a desktop browser, if this machine has one, and say so; otherwise do nothing."""
    if sys.platform not in ("darwin", "win32") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return  # no desktop: a server, a container, an SSH session
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return
    # A text browser (lynx, w3m) runs in the foreground and would take over the terminal the server logs to.
    if type(browser) is webbrowser.GenericBrowser:
        return

    def run() -> None:
        if browser.open(url):
            print(f"Opened {url} in your browser.", flush=True)

    # Starting a browser can take a moment: not on the event loop.
    threading.Thread(target=run, name="open-browser", daemon=True).start()
