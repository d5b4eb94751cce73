"""In-memory caches of what rarely changes but every message needs.

A message needs its room's members (may this user send here?) and its
sender's public profile (the broadcast carries it; it has no email, which
only the user and their friends may see). Both change seldom, so
they are loaded once and kept until a change invalidates them. Correctness
first: an entry is dropped the moment the change commits, and the next
reader loads the new truth from the database. These caches are this
process's; a change is announced to every instance by the fan-out
(``Fanout.forget_members`` / ``forget_profile``, chatsvc/fanout/), which
calls ``forget`` on each.
"""

from __future__ import annotations

from typing import Any

from chatsvc.store import Connection
from chatsvc.store.rooms import list_member_ids
from chatsvc.store.users import list_users_by_ids


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
