"""/friendship: friend requests (add, list, agree, reject) and the friend list.

At most one request is pending between two users, whichever of them sent it:
a user who was already asked is told to agree instead of asking back. Agreeing
still settles a pending request in the other direction too, so the pair ends
up with one friendship and no stale request whatever state it started from.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chatsvc.errors import BadRequest
from chatsvc.fanout import user_room
from chatsvc.http.middleware import caller
from chatsvc.jsonutil import json_response
from chatsvc.models import FriendAddBody, FriendListQuery, UserPath, validate, validate_params
from chatsvc.state import STATE, AppState
from chatsvc.store.friends import (
    AGREED,
    REJECTED,
    delete_friendship,
    find_pending_request_between,
    insert_friend_request,
    insert_friendship,
    is_friend,
    list_friend_requests,
    list_friends,
    settle_friend_request,
)
from chatsvc.store.users import find_user_by_id, find_user_by_username
from chatsvc.validation import json_body

routes = web.RouteTableDef()

# What a friend request shows of the other user (no email: they are not friends yet), and a friend of a friend list.
PUBLIC_KEYS = ("id", "username", "nickName", "headPic", "createTime")
FRIEND_KEYS = ("id", "username", "nickName", "email", "headPic")


async def _tell(state: AppState, user_id: int, notice: dict[str, Any]) -> None:
    """Send a notice to every socket of one user, on every instance (live friend lists)."""
    await state.fanout.notify(user_room(user_id), notice)


async def _profile(state: AppState, user_id: int, keys: tuple[str, ...]) -> dict[str, Any]:
    user = await find_user_by_id(state.db.reader, user_id) or {"id": user_id}
    return {key: user.get(key) for key in keys}


NO_PENDING_REQUEST = "There is no pending friend request from this user"


@routes.post("/friendship/add")
async def add_friend(request: web.Request) -> web.Response:
    """Send a friend request to the user named ``username``; answers the pending request."""
    me = caller(request)
    body = validate(FriendAddBody, await json_body(request), "Request body")
    username, reason = body.username, body.reason or ""
    state = request.app[STATE]
    # Checks and insert in one write transaction: two racing requests cannot both pass.
    async with state.db.transaction() as conn:
        friend = await find_user_by_username(conn, username)
        if friend is None:
            raise BadRequest("User not found")
        if friend["id"] == me.id:
            raise BadRequest("You cannot add yourself as a friend")
        if await is_friend(conn, me.id, friend["id"]):
            raise BadRequest("You are already friends")
        pending = await find_pending_request_between(conn, me.id, friend["id"])
        if pending is not None:
            if pending["fromUserId"] == me.id:
                raise BadRequest("You have already sent this user a friend request")
            raise BadRequest("This user has already sent you a friend request: agree to it instead")
        created = await insert_friend_request(conn, me.id, friend["id"], reason)
    sender = {key: me.user.get(key) for key in PUBLIC_KEYS}
    await _tell(state, friend["id"], {"type": "friendRequest", "request": {**created, "fromUser": sender}})
    return json_response(created, status=201)


@routes.get("/friendship/request_list")
async def list_requests(request: web.Request) -> web.Response:
    """Friend requests to the caller (with ``fromUser``) and from the caller (with ``toUser``)."""
    requests = await list_friend_requests(request.app[STATE].db.reader, caller(request).id)
    return json_response(requests)


@routes.get("/friendship/agree/{id}")
async def agree(request: web.Request) -> web.Response:
    """Agree to the pending request from user ``id``: the two become friends; answers the request."""
    me = caller(request)
    from_user_id = validate_params(UserPath, request.match_info).id
    state = request.app[STATE]
    async with state.db.transaction() as conn:
        settled = await settle_friend_request(conn, from_user_id, me.id, AGREED)
        if settled is None:
            raise BadRequest(NO_PENDING_REQUEST)
        # Should the caller have asked too, that request is answered by this one.
        await settle_friend_request(conn, me.id, from_user_id, AGREED)
        await insert_friendship(conn, me.id, from_user_id)
    await _tell(state, from_user_id, {"type": "friendAdded", "user": {key: me.user.get(key) for key in FRIEND_KEYS}})
    await _tell(state, me.id, {"type": "friendAdded", "user": await _profile(state, from_user_id, FRIEND_KEYS)})
    return json_response(settled)


@routes.get("/friendship/reject/{id}")
async def reject(request: web.Request) -> web.Response:
    """Reject the pending request from user ``id``; answers the request."""
    me = caller(request)
    from_user_id = validate_params(UserPath, request.match_info).id
    state = request.app[STATE]
    async with state.db.transaction() as conn:
        settled = await settle_friend_request(conn, from_user_id, me.id, REJECTED)
    if settled is None:
        raise BadRequest(NO_PENDING_REQUEST)
    answered = {**settled, "toUser": {key: me.user.get(key) for key in PUBLIC_KEYS}}
    await _tell(state, from_user_id, {"type": "friendRequest", "request": answered})
    return json_response(settled)


@routes.get("/friendship/list")
async def list_my_friends(request: web.Request) -> web.Response:
    """The caller's friends, filtered by a nickName substring."""
    name = validate_params(FriendListQuery, request.query).name
    friends = await list_friends(request.app[STATE].db.reader, caller(request).id, name.strip())
    return json_response(friends)


@routes.get("/friendship/remove/{id}")
async def remove_friend(request: web.Request) -> web.Response:
    """End the caller's friendship with user ``id``, both ways."""
    me = caller(request)
    friend_id = validate_params(UserPath, request.match_info).id
    async with request.app[STATE].db.transaction() as conn:
        removed = await delete_friendship(conn, me.id, friend_id)
    if not removed:
        raise BadRequest("This user is not your friend")
    return json_response("Friend removed")
