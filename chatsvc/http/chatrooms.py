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
from chatsvc.store.reads import list_read_receipts, list_room_items
from chatsvc.store.rooms import (
    find_one_to_one_room,
    find_room,
    list_member_profiles,
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
    room_id, _ = await state.membership.open_one_to_one(me.user, friend)
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
    """The caller's rooms, filtered by a name substring, with read positions, unread counts and newest messages."""
    query = validate_params(models.RoomListQuery, request.query)
    reader, me = request.app[STATE].db.reader, caller(request).id
    rooms = await list_room_items(reader, me, query.name.strip())
    if query.order == "activity":
        rooms.sort(key=activity, reverse=True)
    return json_response(rooms)


def activity(room: dict[str, Any]) -> tuple[str, int]:
    """The sort key of ``order=activity``: when the newest message was sent, else when the room was made."""
    last = room["lastMessage"]
    return (last["createTime"] if last is not None else room["createTime"], room["id"])


@routes.get("/chatroom/read-receipts")
async def read_receipts(request: web.Request) -> web.Response:
    """Every member's read position in a room the caller is a member of."""
    me = caller(request)
    room_id = validate_params(models.ReadReceiptsQuery, request.query).chatroomId
    state = request.app[STATE]
    if not await state.members.is_member(state.db.reader, me.id, room_id):
        raise Forbidden("You are not a member of this chatroom")
    return json_response(await list_read_receipts(state.db.reader, room_id))


@routes.get("/chatroom/create-group")
async def create_group(request: web.Request) -> web.Response:
    """Create a group room named ``name`` with the caller as its first member; its id."""
    me = caller(request)
    name = validate_params(models.CreateGroupQuery, request.query).name.strip()
    room_id = await request.app[STATE].membership.create_group(name, [me.id])
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
    """Add the user named ``joinUsername`` to a group the caller owns or administers; the room id."""
    me = caller(request)
    room_id = validate_params(models.RoomPath, request.match_info).id
    username = validate_params(models.JoinGroupQuery, request.query).joinUsername
    state = request.app[STATE]
    reader = state.db.reader
    await state.membership.check_group(room_id, member=me.id)
    user = await find_user_by_username(reader, username)
    if user is None:
        raise BadRequest("User not found")
    if user["id"] == await find_system_user_id(reader):
        raise BadRequest(SYSTEM_USER_NOT_A_MEMBER)
    await state.membership.add_members(room_id, [user["id"]], by=me.id)
    return json_response(room_id)


@routes.get("/chatroom/quit/{id}")
async def quit_group(request: web.Request) -> web.Response:
    """Remove member ``quitUserId`` (the caller, or another member if the caller is owner or admin); the room id."""
    me = caller(request)
    room_id = validate_params(models.RoomPath, request.match_info).id
    quit_user_id = validate_params(models.QuitGroupQuery, request.query).quitUserId
    removed = await request.app[STATE].membership.remove_members(room_id, [quit_user_id], by=me.id)
    if not removed:
        raise BadRequest("That user is not a member of this group")
    return json_response(room_id)


@routes.get("/chatroom/set-role/{id}")
async def set_role(request: web.Request) -> web.Response:
    """The group's owner makes member ``userId`` an admin or a member again; the room hears ``roleChanged``."""
    me = caller(request)
    room_id = validate_params(models.RoomPath, request.match_info).id
    query = validate_params(models.SetRoleQuery, request.query)
    role = await request.app[STATE].membership.set_role(room_id, query.userId, query.role, by=me.id)
    return json_response({"chatroomId": room_id, "userId": query.userId, "role": role})
