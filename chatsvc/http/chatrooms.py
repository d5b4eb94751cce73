"""/chatroom: one-to-one rooms, groups and their members, and the caller's room list."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chatsvc import models
from chatsvc.errors import BadRequest, Forbidden, NotFound
from chatsvc.http.middleware import caller
from chatsvc.jsonutil import json_response
from chatsvc.models import validate_params
from chatsvc.state import STATE
from chatsvc.store import Connection
from chatsvc.store.rooms import (
    add_member,
    create_group_room,
    create_one_to_one_room,
    find_one_to_one_room,
    find_room,
    is_member,
    list_member_profiles,
    list_rooms_of_user,
    remove_member,
)
from chatsvc.store.settings import find_system_user_id
from chatsvc.store.users import find_user_by_id, find_user_by_username

routes = web.RouteTableDef()

# The system user sends system messages without being a member; as a member, a trusted-client socket could speak as it.
SYSTEM_USER_NOT_A_MEMBER = "The system user cannot be a member of a chatroom"


@routes.get("/chatroom/create-one-to-one")
async def create_one_to_one(request: web.Request) -> web.Response:
    """The id of the caller's one-to-one room with ``friendId``, created if missing."""
    me = caller(request)
    friend_id = validate_params(models.OneToOneQuery, request.query).friendId
    if friend_id == me.id:
        raise BadRequest("Cannot open a one-to-one chat with yourself")
    state = request.app[STATE]
    friend = await find_user_by_id(state.db.reader, friend_id)
    if friend is None:
        raise BadRequest("User not found")
    if friend_id == await find_system_user_id(state.db.reader):
        raise BadRequest(SYSTEM_USER_NOT_A_MEMBER)
    async with state.db.transaction() as conn:
        # The stored name is only a fallback: lists name the room after the other member.
        room_id = await create_one_to_one_room(
            conn, me.id, friend_id, name=f"{me.user['nickName']} & {friend['nickName']}"
        )
    state.members.forget(room_id)
    return json_response(room_id)


@routes.get("/chatroom/findChatroom")
async def find_chatroom(request: web.Request) -> web.Response:
    """The id of the one-to-one room of two users, or null."""
    me = caller(request)
    query = validate_params(models.FindChatroomQuery, request.query)
    user_a, user_b = query.userId1, query.userId2
    if me.id not in (user_a, user_b):
        raise Forbidden("You can only look up your own chatrooms")
    if user_a == user_b:
        raise BadRequest("userId1 and userId2 must be different users")
    room_id = await find_one_to_one_room(request.app[STATE].db.reader, user_a, user_b)
    return json_response(room_id)


@routes.get("/chatroom/list")
async def list_chatrooms(request: web.Request) -> web.Response:
    """The caller's rooms, filtered by a name substring."""
    name = validate_params(models.RoomListQuery, request.query).name
    rooms = await list_rooms_of_user(request.app[STATE].db.reader, caller(request).id, name.strip())
    return json_response(rooms)


async def _group_of_member(conn: Connection, room_id: int, user_id: int) -> dict[str, Any]:
    """The group room ``room_id``, checked in this order: it exists, the user is a member, it is a group."""
    room = await find_room(conn, room_id)
    if room is None:
        raise NotFound("Chatroom not found")
    if not await is_member(conn, user_id, room_id):
        raise Forbidden("You are not a member of this chatroom")
    if not room["type"]:
        raise BadRequest("This is a one-to-one chatroom: members can only change in a group")
    return room


@routes.get("/chatroom/create-group")
async def create_group(request: web.Request) -> web.Response:
    """Create a group room named ``name`` with the caller as its first member; its id."""
    me = caller(request)
    name = validate_params(models.CreateGroupQuery, request.query).name.strip()
    state = request.app[STATE]
    async with state.db.transaction() as conn:
        room_id = await create_group_room(conn, name, me.id)
    state.members.forget(room_id)
    return json_response(room_id)


@routes.get("/chatroom/members")
async def list_members(request: web.Request) -> web.Response:
    """The profiles of a room's members (emails only of the caller and friends); ``[]`` for an id that names no room."""
    me = caller(request)
    room_id = validate_params(models.MembersQuery, request.query).chatroomId
    reader = request.app[STATE].db.reader
    members = await list_member_profiles(reader, room_id, seen_by=me.id)
    if any(member["id"] == me.id for member in members):
        return json_response(members)
    # The original answered [] for a missing room, and its frontend relies on it (chatroomId=-1).
    if await find_room(reader, room_id) is None:
        return json_response([])
    raise Forbidden("You are not a member of this chatroom")


@routes.get("/chatroom/info/{id}")
async def room_info(request: web.Request) -> web.Response:
    """A room with its members' profiles (emails only of the caller and friends)."""
    me = caller(request)
    room_id = validate_params(models.RoomPath, request.match_info).id
    reader = request.app[STATE].db.reader
    room = await find_room(reader, room_id)
    if room is None:
        raise NotFound("Chatroom not found")
    users = await list_member_profiles(reader, room_id, seen_by=me.id)
    if not any(user["id"] == me.id for user in users):
        raise Forbidden("You are not a member of this chatroom")
    return json_response({**room, "users": users})


@routes.get("/chatroom/join/{id}")
async def join_group(request: web.Request) -> web.Response:
    """Add the user named ``joinUsername`` to a group the caller is in; the room id."""
    me = caller(request)
    room_id = validate_params(models.RoomPath, request.match_info).id
    username = validate_params(models.JoinGroupQuery, request.query).joinUsername
    state = request.app[STATE]
    async with state.db.transaction() as conn:
        await _group_of_member(conn, room_id, me.id)
        user = await find_user_by_username(conn, username)
        if user is None:
            raise BadRequest("User not found")
        if user["id"] == await find_system_user_id(conn):
            raise BadRequest(SYSTEM_USER_NOT_A_MEMBER)
        added = await add_member(conn, room_id, user["id"])
    state.members.forget(room_id)
    if added:
        await state.realtime.member_joined(user["id"], room_id)
    return json_response(room_id)


@routes.get("/chatroom/quit/{id}")
async def quit_group(request: web.Request) -> web.Response:
    """Remove member ``quitUserId`` (the caller or, as in the original, any other member) from a group; the room id."""
    me = caller(request)
    room_id = validate_params(models.RoomPath, request.match_info).id
    quit_user_id = validate_params(models.QuitGroupQuery, request.query).quitUserId
    state = request.app[STATE]

    async def remove() -> None:
        # Between write batches: every message stored before the removal has
        # been broadcast, and every one stored after it is broadcast to a room
        # the user's sockets have already left.
        async with state.db.transaction() as conn:
            await _group_of_member(conn, room_id, me.id)
            if not await remove_member(conn, room_id, quit_user_id):
                raise BadRequest("That user is not a member of this group")
        state.members.forget(room_id)
        await state.realtime.member_left(quit_user_id, room_id)

    await state.writer.run_between_batches(remove)
    return json_response(room_id)
