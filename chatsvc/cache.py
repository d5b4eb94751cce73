"""In-memory caches of what rarely changes but every message needs.

A message needs its room's members (may this user send here?) and its
sender's public profile (the broadcast carries it; it has no email, which
only the user and their friends may see); every authenticated request needs
its caller's own account row (is the token's version still the user's?).
All of these change seldom, so
they are loaded once and kept until a change invalidates them. Correctness
first: an entry is dropped the moment the change commits, and the next
reader loads the new truth from the database. These caches are this
process's; a change is announced to every instance by the fan-out
(``Fanout.forget_members`` / ``forget_profile`` / ``disconnect_user``,
chatsvc/fanout/), which calls ``forget`` on each.
"""

from __future__ import annotations

import time
from typing import Any

from chatsvc.store import Connection
from chatsvc.store.rooms import list_member_ids
from chatsvc.store.users import find_user_by_id, list_users_by_ids

# How long an account entry is trusted without a reload. Invalidations reach every instance before the change
# is answered while Redis is up; this bounds what an instance that missed one (Redis partitioned from it) may
# accept: a token revoked elsewhere at most this long.
ACCOUNT_TTL_SECONDS = 30.0


class MembershipCache:
    """Member ids per room."""

    def __init__(self, max_rooms: int = 100_000) -> None:
        self._members: dict[int, frozenset[int]] = {}
        self._max_rooms = max_rooms
        # Bumped by every forget(): a load that overlapped a change is not kept,
        # since it may have read the membership from before the change.
        self._generation = 0

    async def members(self, conn: Connection, chatroom_id: int) -> frozenset[int]:
        """The room's member ids (empty for a room that does not exist)."""
        found = self._members.get(chatroom_id)
        if found is None:
            generation = self._generation
            found = frozenset(await list_member_ids(conn, chatroom_id))
            if not found or generation != self._generation:
                # Not kept: an empty id may be taken by a room created a moment
                # later, and an overlapping change may have made this stale.
                return found
            if len(self._members) >= self._max_rooms:
                self._members.clear()  # crude bound; a miss only costs one indexed query
            self._members[chatroom_id] = found
        return found

    def cached(self, chatroom_id: int) -> frozenset[int] | None:
        """The room's member ids if cached, without reading the database (None if not)."""
        return self._members.get(chatroom_id)

    async def is_member(self, conn: Connection, user_id: int, chatroom_id: int) -> bool:
        """Whether the user is a member of the room."""
        return user_id in await self.members(conn, chatroom_id)

    def forget(self, chatroom_id: int) -> None:
        """Drop a room after its membership changed."""
        self._generation += 1
        self._members.pop(chatroom_id, None)

    def clear(self) -> None:
        """Drop everything (e.g. after a change made by another process)."""
        self._generation += 1
        self._members.clear()


class ProfileCache:
    """Public profiles of users (no email), as messages show their sender."""

    def __init__(self, max_users: int = 100_000) -> None:
        self._profiles: dict[int, dict[str, Any]] = {}
        self._max_users = max_users
        self._generation = 0  # as in MembershipCache

    async def profiles(self, conn: Connection, user_ids: set[int]) -> dict[int, dict[str, Any]]:
        """Profiles of the given users by id, loading the missing ones with one query."""
        found = {user_id: self._profiles[user_id] for user_id in user_ids if user_id in self._profiles}
        missing = [user_id for user_id in user_ids if user_id not in found]
        if missing:
            generation = self._generation
            loaded = await list_users_by_ids(conn, missing)
            keep = generation == self._generation
            if keep and len(self._profiles) + len(loaded) > self._max_users:
                self._profiles.clear()
            for profile in loaded:
                found[profile["id"]] = profile
                if keep:
                    self._profiles[profile["id"]] = profile
        return found

    def forget(self, user_id: int) -> None:
        """Drop a user after their profile changed."""
        self._generation += 1
        self._profiles.pop(user_id, None)

    def clear(self) -> None:
        """Drop everything."""
        self._generation += 1
        self._profiles.clear()


class AccountCache:
    """Each authenticated user's own row: the profile with email, and the token version that checks tokens.

    Saves the query that every authenticated request and socket connection
    would otherwise make. Forgotten on every instance when the profile
    changes and when the user's tokens are revoked (logout, password change);
    an entry is also reloaded after ACCOUNT_TTL_SECONDS. While this instance
    may miss invalidations (its Redis subscription is down) the cache is
    suspended: every lookup reads the database.
    """

    def __init__(self, max_users: int = 100_000, ttl: float = ACCOUNT_TTL_SECONDS) -> None:
        self._accounts: dict[int, tuple[float, dict[str, Any]]] = {}
        self._max_users = max_users
        self._ttl = ttl
        self._generation = 0  # as in MembershipCache
        self._suspended = False

    async def account(self, conn: Connection, user_id: int) -> dict[str, Any] | None:
        """The user's profile with ``tokenVersion`` (a copy the caller may change), or None if there is no such user."""
        now = time.monotonic()
        entry = self._accounts.get(user_id)
        if entry is not None and entry[0] > now and not self._suspended:
            return dict(entry[1])
        generation = self._generation
        found = await find_user_by_id(conn, user_id)
        if found is None:
            self._accounts.pop(user_id, None)
            return None
        if generation == self._generation and not self._suspended:
            if len(self._accounts) >= self._max_users:
                self._accounts.clear()
            self._accounts[user_id] = (now + self._ttl, found)
        return dict(found)

    def forget(self, user_id: int) -> None:
        """Drop a user whose profile changed or whose tokens were revoked."""
        self._generation += 1
        self._accounts.pop(user_id, None)

    def suspend(self) -> None:
        """Stop trusting and keeping entries: invalidations from other instances may be missed from now on."""
        self._suspended = True
        self.clear()

    def resume(self) -> None:
        """Keep entries again, starting empty: invalidations reach this instance again."""
        self._suspended = False
        self.clear()

    def clear(self) -> None:
        """Drop everything."""
        self._generation += 1
        self._accounts.clear()
