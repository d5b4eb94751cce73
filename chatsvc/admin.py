"""Changes made by trusted callers, not by a logged-in user: the sidecar API, the CLI and chatsvc.testing.

Each function is one write transaction on the database and raises the usual
errors (BadRequest, NotFound). Membership changes are not here: they go
through chatsvc/membership.py, which also tells caches and sockets.
"""

from __future__ import annotations

import secrets
from typing import Any

from chatsvc.auth import hash_password
from chatsvc.db import Database
from chatsvc.errors import BadRequest, NotFound
from chatsvc.store.rooms import find_room, list_member_profiles
from chatsvc.store.settings import SYSTEM_USER_SETTING, find_setting, find_system_user_id, get_or_create_setting
from chatsvc.store.users import find_user_by_username, insert_user, list_users_by_usernames, update_user_profile
from chatsvc.validation import not_reserved

# Not a scrypt hash, so no password ever matches it: the host application owns these users' identity.
UNUSABLE_PASSWORD = "!"
SYSTEM_USERNAME = "system"
SYSTEM_NICKNAME = "System"
SYSTEM_USER_REFUSED = "The system user only sends system messages: post them with system: true"


def public_profile(user: dict[str, Any]) -> dict[str, Any]:
    """A user row without its password hash and token version."""
    return {key: value for key, value in user.items() if key not in ("passwordHash", "tokenVersion")}


async def create_password_user(
    db: Database, *, username: str, password: str, nick_name: str, email: str, scrypt_n: int
) -> dict[str, Any]:
    """Create a user who logs in with a password; BadRequest if the username is taken or a name is reserved."""
    not_reserved(username, "username")
    not_reserved(nick_name, "nickName")
    password_hash = await hash_password(password, n=scrypt_n)
    async with db.transaction() as conn:
        user = await insert_user(conn, username=username, password_hash=password_hash, nick_name=nick_name, email=email)
    if user is None:
        raise BadRequest("Username already exists")
    return user


async def upsert_managed_user(
    db: Database, *, username: str, nick_name: str | None, email: str | None, head_pic: str | None
) -> tuple[dict[str, Any], bool]:
    """Create a user without a password, or update the given fields of an existing one; (profile, created).

    A user created here never logs in with a password: the host mints tokens.
    An existing user keeps their password, if they had one. Names that would
    pass for the system user, and the system user itself, are refused.
    """
    not_reserved(username, "username")
    if nick_name is not None:
        not_reserved(nick_name, "nickName")
    system_id = await find_system_user_id(db.reader)
    async with db.transaction() as conn:
        created = await insert_user(
            conn,
            username=username,
            password_hash=UNUSABLE_PASSWORD,
            nick_name=nick_name or username,
            email=email or "",
            head_pic=head_pic or "",
        )
        if created is not None:
            return created, True
        existing = await find_user_by_username(conn, username)
        assert existing is not None, "the insert conflicted on this username"
        if existing["id"] == system_id:
            raise BadRequest(SYSTEM_USER_REFUSED)
        if nick_name is None and email is None and head_pic is None:
            return public_profile(existing), False
        updated = await update_user_profile(
            conn,
            existing["id"],
            nick_name=nick_name,
            head_pic=head_pic,
            email=existing["email"] if email is None else email,
        )
    assert updated is not None
    return updated, False


async def users_by_username(db: Database, usernames: list[str]) -> dict[str, dict[str, Any]]:
    """The users with these usernames, by username (with token version); BadRequest naming any unknown one.

    The system user is refused too: no token is minted for it and it joins no
    room, so only a system message (``post_message`` with ``system``) comes from it.
    """
    found = {user["username"]: user for user in await list_users_by_usernames(db.reader, usernames)}
    unknown = [name for name in usernames if name not in found]
    if unknown:
        raise BadRequest("Unknown user: " + ", ".join(unknown))
    system_id = await find_system_user_id(db.reader)
    if any(user["id"] == system_id for user in found.values()):
        raise BadRequest(SYSTEM_USER_REFUSED)
    return found


async def room_with_members(db: Database, room_id: int) -> dict[str, Any]:
    """A room with its members' profiles, emails included (for trusted callers); NotFound if there is none."""
    room = await find_room(db.reader, room_id)
    if room is None:
        raise NotFound("Chatroom not found")
    return {**room, "users": await list_member_profiles(db.reader, room_id, seen_by=None)}


async def system_user_id(db: Database) -> int:
    """The id of the user system messages are sent as, created on first use.

    It is named ``system`` unless an account already has that name, in which
    case it gets a suffixed name: an account someone registered as "system"
    must never speak for the service. Its id is kept as a setting.
    """
    stored = await find_setting(db.reader, SYSTEM_USER_SETTING)
    if stored is not None:
        return int(stored)
    async with db.transaction() as conn:
        stored = await find_setting(conn, SYSTEM_USER_SETTING)
        if stored is not None:
            return int(stored)
        user = await insert_user(
            conn, username=SYSTEM_USERNAME, password_hash=UNUSABLE_PASSWORD, nick_name=SYSTEM_NICKNAME, email=""
        )
        if user is None:
            user = await insert_user(
                conn,
                username=f"{SYSTEM_USERNAME}-{secrets.token_hex(4)}",
                password_hash=UNUSABLE_PASSWORD,
                nick_name=SYSTEM_NICKNAME,
                email="",
            )
        assert user is not None
        await get_or_create_setting(conn, SYSTEM_USER_SETTING, str(user["id"]))
    return int(user["id"])
