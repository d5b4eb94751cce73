"""Every change of who is in a room, in one place.

HTTP routes (chatsvc/http/chatrooms.py), the sidecar API
(chatsvc/http/sidecar.py) and the test helper (chatsvc/testing.py) all change
memberships through :class:`Membership`, which does the four things each
change needs, in this order:

1. the write transaction, with the checks that belong in it (the room exists,
   the acting user is a member, it is a group);
2. the cache forget, here and on every instance, before the caller answers
   (``Fanout.forget_members``): a new member may send through any instance at once;
3. the live notices: the room hears ``joinRoom`` / ``quitRoom``, and a removed
   user's sockets leave the room on every instance;
4. the ordering: a removal runs between the writer's batches, so every message
   stored before it reaches the removed user's sockets and none stored after it does.
"""

from __future__ import annotations

from typing import Any, Literal

from chatsvc.db import Database
from chatsvc.errors import BadRequest, Forbidden, NotFound
from chatsvc.fanout import Fanout, room_name
from chatsvc.store import Connection
from chatsvc.store.rooms import (
    add_members,
    create_group_room,
    create_one_to_one_room,
    find_one_to_one_room,
    find_room,
    is_member,
    remove_members,
)
from chatsvc.writer import MessageWriter

RoomKind = Literal["group", "one-to-one"]


def join_notice(user_id: int) -> dict[str, Any]:
    """What a room hears when a user joins it (docs/protocol.md)."""
    return {"type": "joinRoom", "userId": user_id}


def quit_notice(user_id: int) -> dict[str, Any]:
    """What a room hears when a user is no longer a member."""
    return {"type": "quitRoom", "userId": user_id}


async def _check_group(conn: Connection, room_id: int, member: int | None) -> None:
    """The room exists, ``member`` (if given) is one of its members, and it is a group: checked in that order."""
    room = await find_room(conn, room_id)
    if room is None:
        raise NotFound("Chatroom not found")
    if member is not None and not await is_member(conn, member, room_id):
        raise Forbidden("You are not a member of this chatroom")
    if not room["type"]:
        raise BadRequest("This is a one-to-one chatroom: members can only change in a group")


class Membership:
    """Creates rooms and adds and removes members, with the cache, the notices and the ordering each change needs."""

    def __init__(self, db: Database, writer: MessageWriter, fanout: Fanout) -> None:
        self._db = db
        self._writer = writer
        self._fanout = fanout

    async def open_one_to_one(
        self, first: dict[str, Any], second: dict[str, Any], name: str | None = None
    ) -> tuple[int, bool]:
        """The one-to-one room of two users, created if missing; (room id, created).

        The stored name is only a fallback (lists name the room after the other
        member): by default "<first nickName> & <second nickName>".
        """
        user_a, user_b = int(first["id"]), int(second["id"])
        async with self._db.transaction() as conn:
            existing = await find_one_to_one_room(conn, user_a, user_b)
            if existing is not None:
                return existing, False
            room_id = await create_one_to_one_room(
                conn, user_a, user_b, name=name or f"{first['nickName']} & {second['nickName']}"
            )
        await self._fanout.forget_members(room_id)
        return room_id, True

    async def create_group(self, name: str, member_ids: list[int]) -> int:
        """Create a group named ``name``: the first id is its first member, the others join with it; its id."""
        ids = list(dict.fromkeys(member_ids))
        if not ids:
            raise BadRequest("A group needs at least one member")
        async with self._db.transaction() as conn:
            room_id = await create_group_room(conn, name, ids[0])
            if len(ids) > 1:
                await add_members(conn, room_id, ids[1:])
        await self._fanout.forget_members(room_id)
        return room_id

    async def create_room(
        self, kind: RoomKind, members: list[dict[str, Any]], name: str | None = None
    ) -> tuple[int, bool]:
        """Create a room with these members, for trusted callers; (room id, created).

        A one-to-one room needs exactly two members, and the existing room of the
        pair is returned instead of a second one. A group needs a name and at
        least one member.
        """
        ids = list(dict.fromkeys(int(member["id"]) for member in members))
        if kind == "one-to-one":
            if len(ids) != 2:
                raise BadRequest("A one-to-one room has exactly two different members")
            first = members[0]
            second = next(member for member in members if member["id"] != first["id"])
            return await self.open_one_to_one(first, second, name)
        if not name:
            raise BadRequest("A group needs a name")
        return await self.create_group(name, ids), True

    async def check_group(self, room_id: int, *, member: int | None = None) -> None:
        """Raise unless the room exists, ``member`` (if given) belongs to it, and it is a group (before a change)."""
        await _check_group(self._db.reader, room_id, member)

    async def add_members(self, room_id: int, user_ids: list[int], *, by: int | None = None) -> list[int]:
        """Add users to a group (``by``: the member asking, None for trusted callers); the ids that were not members.

        The room hears ``joinRoom`` for each; their sockets join it with ``joinRoom`` themselves.
        """
        async with self._db.transaction() as conn:
            await _check_group(conn, room_id, by)
            added = await add_members(conn, room_id, user_ids)
        if added:
            await self._fanout.forget_members(room_id)
        for user_id in added:
            await self._fanout.notify(room_name(room_id), join_notice(user_id))
        return added

    async def remove_members(self, room_id: int, user_ids: list[int], *, by: int | None = None) -> list[int]:
        """Remove users from a group (``by`` as in add_members); the ids that were members.

        Their sockets leave the room on every instance and the room hears
        ``quitRoom`` for each, all between the writer's batches.
        """

        async def remove() -> list[int]:
            async with self._db.transaction() as conn:
                await _check_group(conn, room_id, by)
                removed = await remove_members(conn, room_id, user_ids)
            for user_id in removed:
                await self._fanout.remove_from_room(user_id, room_id)
                await self._fanout.notify(room_name(room_id), quit_notice(user_id))
            return removed

        return await self._writer.run_between_batches(remove)
