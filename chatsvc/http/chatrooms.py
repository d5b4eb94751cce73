"""/chatroom: one-to-one rooms and the caller's room list."""

from __future__ import annotations

from aiohttp import web

from chatsvc.errors import BadRequest, Forbidden
from chatsvc.http.middleware import caller
from chatsvc.jsonutil import json_response
from chatsvc.state import STATE
from chatsvc.store.rooms import create_one_to_one_room, find_one_to_one_room, list_rooms_of_user
from chatsvc.store.users import find_user_by_id
from chatsvc.validation import required_query_int, text

routes = web.RouteTableDef()

ROOM_NAME_MAX = 50


@routes.get("/chatroom/create-one-to-one")
async def create_one_to_one(request: web.Request) -> web.Response:
    """The id of the caller's one-to-one room with ``friendId``, created if missing."""
    me = caller(request)
    friend_id = required_query_int(request, "friendId")
    if friend_id == me.id:
        raise BadRequest("Cannot open a one-to-one chat with yourself")
    state = request.app[STATE]
    friend = await find_user_by_id(state.db.reader, friend_id)
    if friend is None:
        raise BadRequest("User not found")
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
    user_a = required_query_int(request, "userId1")
    user_b = required_query_int(request, "userId2")
    if me.id not in (user_a, user_b):
        raise Forbidden("You can only look up your own chatrooms")
    if user_a == user_b:
        raise BadRequest("userId1 and userId2 must be different users")
    room_id = await find_one_to_one_room(request.app[STATE].db.reader, user_a, user_b)
    return json_response(room_id)


@routes.get("/chatroom/list")
async def list_chatrooms(request: web.Request) -> web.Response:
    """The caller's rooms, filtered by a name substring."""
    name = text(request.query.get("name"), "name", max_length=ROOM_NAME_MAX, required=False, allow_blank=True)
    rooms = await list_rooms_of_user(request.app[STATE].db.reader, caller(request).id, name.strip())
    return json_response(rooms)
