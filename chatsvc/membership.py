"""Every change of who is in a room, in one place.

HTTP routes (chatsvc/http/chatrooms.py), the sidecar API
(chatsvc/http/sidecar.py) and the test helper (chatsvc/testing.py) all change
memberships through :class:`Membership`, which does the four things each
change needs, in this order:

1. the write transaction, with the checks that belong in it (the room exists,
   the acting user is a member, it is a group);
2. the cache forget, here and on every instance, before the caller answers
   (``Fanout.forget_members``): a new member may send through any instance at once;
3. the live notices: the room hears ``joinRoom`` / ``quitRoom`` (and
   ``roleChanged``), a removed user's sockets leave the room on every instance,
   and the users concerned hear ``roomAdded`` / ``roomRemoved`` on their own
   sockets (their user room), so room lists stay live;
4. the ordering: a removal runs between the writer's batches, so every message
   stored before it reaches the removed user's sockets and none stored after it does.
"""

from __future__ import annotations

from typing import Any, Literal

from chatsvc.db import Database
from chatsvc.errors import BadRequest, Forbidden, NotFound
from chatsvc.fanout import Fanout, room_name, user_room
from chatsvc.store import Connection
from chatsvc.store.reads import list_room_items
from chatsvc.store.rooms import (
    ADMIN,
    MEMBER,
    OWNER,
    add_members,
    create_group_room,
    create_one_to_one_room,
    find_member_role,
    find_one_to_one_room,
    find_room,
    find_successor,
    is_member,
    remove_members,
    set_member_role,
)
from chatsvc.writer import MessageWriter

RoomKind = Literal["group", "one-to-one"]
# Who may add others to a group or remove them (anyone may leave).
MANAGERS = frozenset({OWNER, ADMIN})


def join_notice(user_id: int) -> dict[str, Any]:
    """What a room hears when a user joins it (docs/protocol.md)."""
    return {"type": "joinRoom", "userId": user_id}


def quit_notice(user_id: int) -> dict[str, Any]:
    """What a room hears when a user is no longer a member."""
    return {"type": "quitRoom", "userId": user_id}


def room_added_notice(chatroom: dict[str, Any]) -> dict[str, Any]:
    """What a user's sockets hear when they become a member of a room (``chatroom``: a /chatroom/list item)."""
    return {"type": "roomAdded", "chatroom": chatroom}


def room_removed_notice(chatroom_id: int) -> dict[str, Any]:
    """What a user's sockets hear when they are no longer a member of a room."""
    return {"type": "roomRemoved", "chatroomId": chatroom_id}


def role_changed_notice(chatroom_id: int, user_id: int, role: str) -> dict[str, Any]:
    """What a group hears when a member's role changes."""
    return {"type": "roleChanged", "chatroomId": chatroom_id, "userId": user_id, "role": role}


async def _require_manager(conn: Connection, room_id: int, by: int, action: str) -> str:
    """``by``'s role in the group, which must be owner or admin to ``action``; Forbidden otherwise."""
    role = await find_member_role(conn, room_id, by)
    if role not in MANAGERS:
        raise Forbidden(f"Only the group's owner and admins may {action}")
    return str(role)


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
        await self._announce_room_added(room_id, [user_a, user_b])
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
        await self._announce_room_added(room_id, ids)
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

        Only the group's owner and admins may add others. The room hears
        ``joinRoom`` for each and their own sockets hear ``roomAdded``; their
        sockets join the room with ``joinRoom`` themselves.
        """
        async with self._db.transaction() as conn:
            await _check_group(conn, room_id, by)
            if by is not None and set(user_ids) - {by}:
                await _require_manager(conn, room_id, by, "add members")
            added = await add_members(conn, room_id, user_ids)
        if added:
            await self._fanout.forget_members(room_id)
        for user_id in added:
            await self._fanout.notify(room_name(room_id), join_notice(user_id))
        await self._announce_room_added(room_id, added)
        return added

    async def remove_members(self, room_id: int, user_ids: list[int], *, by: int | None = None) -> list[int]:
        """Remove users from a group (``by`` as in add_members); the ids that were members.

        Anyone may leave; only the owner and admins may remove others, and
        nobody but the owner removes the owner. When the owner leaves, the
        longest-standing admin (else member) becomes owner, announced with
        ``roleChanged``. Their sockets leave the room on every instance, the
        room hears ``quitRoom`` for each and their own sockets ``roomRemoved``,
        all between the writer's batches.
        """

        async def remove() -> list[int]:
            successor: int | None = None
            async with self._db.transaction() as conn:
                await _check_group(conn, room_id, by)
                others = set(user_ids) - {by}
                if by is not None and others:
                    await _require_manager(conn, room_id, by, "remove other members")
                    for other in others:
                        if await find_member_role(conn, room_id, other) == OWNER:
                            raise Forbidden("Nobody but the owner may remove the group's owner")
                owners = [uid for uid in user_ids if await find_member_role(conn, room_id, uid) == OWNER]
                removed = await remove_members(conn, room_id, user_ids)
                if owners:
                    successor = await find_successor(conn, room_id)
                    if successor is not None:
                        await set_member_role(conn, room_id, successor, OWNER)
            for user_id in removed:
                await self._fanout.remove_from_room(user_id, room_id)
                await self._fanout.notify(room_name(room_id), quit_notice(user_id))
                await self._fanout.notify(user_room(user_id), room_removed_notice(room_id))
            if successor is not None:
                await self._fanout.forget_members(room_id)
                await self._fanout.notify(room_name(room_id), role_changed_notice(room_id, successor, OWNER))
            return removed

        return await self._writer.run_between_batches(remove)

    async def set_role(self, room_id: int, user_id: int, role: str, *, by: int | None = None) -> str:
        """Make a group member an admin or a member again (``by``: who asks, who must be the owner); the role.

        The owner's own role does not change this way. The room hears
        ``roleChanged`` when the role is new.
        """
        if role not in (ADMIN, MEMBER):
            raise BadRequest("role must be admin or member")
        async with self._db.transaction() as conn:
            await _check_group(conn, room_id, by)
            if by is not None and await find_member_role(conn, room_id, by) != OWNER:
                raise Forbidden("Only the group's owner may change roles")
            current = await find_member_role(conn, room_id, user_id)
            if current is None:
                raise BadRequest("That user is not a member of this group")
            if current == OWNER:
                raise BadRequest("The owner's role cannot be changed")
            if current != role:
                await set_member_role(conn, room_id, user_id, role)
        if current != role:
            await self._fanout.notify(room_name(room_id), role_changed_notice(room_id, user_id, role))
        return role

    async def _announce_room_added(self, room_id: int, user_ids: list[int]) -> None:
        """Tell each user's own sockets about a room they are now in, shaped as in their /chatroom/list."""
        for user_id in user_ids:
            rooms = await list_room_items(self._db.reader, user_id, only_room=room_id)
            if rooms:
                await self._fanout.notify(user_room(user_id), room_added_notice(rooms[0]))
