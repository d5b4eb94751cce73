"""/sidecar/v1: the server-to-server API of a host application that owns its users' identity.

Off unless ``CHATSVC_API_KEY`` is set (the routes then answer 404), and
authenticated by that key in ``X-Api-Key``, never by a user's token. Users
are named by username, the key the host chooses for them. Every change goes
through the same paths as the user-facing routes: messages through the
writer (stored durably, then broadcast), membership changes through
chatsvc/membership.py (cache invalidation, ``joinRoom`` / ``quitRoom``
events). See docs/sidecar.md.
"""

from __future__ import annotations

import functools
import hmac
from typing import Any

from aiohttp import web

from chatsvc import admin, models
from chatsvc.errors import BadRequest, Forbidden, NotFound, Unauthorized
from chatsvc.http.middleware import Handler, public
from chatsvc.jsonutil import json_response
from chatsvc.message_changes import change_delete, change_edit
from chatsvc.models import validate, validate_field, validate_params
from chatsvc.state import STATE, AppState
from chatsvc.store.messages import MESSAGE_TYPES
from chatsvc.store.rooms import find_room
from chatsvc.validation import json_body
from chatsvc.writer import Draft

routes = web.RouteTableDef()

PREFIX = "/sidecar/v1"
API_KEY_HEADER = "X-Api-Key"


def _same_key(given: str, expected: str) -> bool:
    # Constant time, on bytes: compare_digest refuses non-ASCII str.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def api_key_required(handler: Handler) -> Handler:
    """Serve the route only when an API key is configured and the request carries it; no user token is read."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        expected = request.app[STATE].config.api_key
        if expected is None:
            # As if the route did not exist: the sidecar API is off.
            raise NotFound("Not Found")
        given = request.headers.get(API_KEY_HEADER)
        if given is None or not _same_key(given, expected):
            raise Unauthorized(f"A valid {API_KEY_HEADER} header is required")
        return await handler(request)

    return public(checked)


def _unique(usernames: list[str]) -> list[str]:
    """The usernames without repeats, in the order given."""
    return list(dict.fromkeys(usernames))


def _room_id(request: web.Request) -> int:
    return validate_params(models.SidecarRoomPath, request.match_info).id


async def _member_ids(state: AppState, usernames: list[str]) -> list[int]:
    found = await admin.users_by_username(state.db, usernames)
    return [found[name]["id"] for name in usernames]


@routes.post(PREFIX + "/users")
@api_key_required
async def upsert_user(request: web.Request) -> web.Response:
    """Create a user without a password, or update nickName/email/headPic of an existing one."""
    state = request.app[STATE]
    body = validate(models.SidecarUserBody, await json_body(request), "Request body")
    username, nick_name, head_pic = body.username, body.nickName, body.headPic
    address = body.email
    if address:
        # An empty string clears it; anything else must be an address.
        address = validate_field(models.RegisterBody, "email", address)
    user, created = await admin.upsert_managed_user(
        state.db, username=username, nick_name=nick_name, email=address, head_pic=head_pic
    )
    # Messages carry their sender's profile from this cache, on every instance.
    await state.fanout.forget_profile(user["id"])
    return json_response({"user": user, "created": created}, status=201 if created else 200)


@routes.post(PREFIX + "/tokens")
@api_key_required
async def mint_token(request: web.Request) -> web.Response:
    """A token for a user, as ``/user/login`` would give, for the host to hand to its client."""
    state = request.app[STATE]
    username = validate(models.SidecarTokenBody, await json_body(request), "Request body").username
    user = (await admin.users_by_username(state.db, [username]))[username]
    token_version = user.pop("tokenVersion")
    token = state.issue_token(user, token_version)
    expires_in = min(state.config.token_ttl_seconds, state.config.session_max_age_seconds)
    return json_response({"token": token, "expiresIn": expires_in, "user": user}, status=201)


@routes.post(PREFIX + "/rooms")
@api_key_required
async def create_room(request: web.Request) -> web.Response:
    """Create a group with members, or find-or-create the one-to-one room of two users."""
    state = request.app[STATE]
    body = validate(models.SidecarRoomBody, await json_body(request), "Request body")
    kind = body.type
    name = None if body.name is None else body.name.strip()
    usernames = _unique(body.members)
    found = await admin.users_by_username(state.db, usernames)
    room_id, created = await state.membership.create_room(kind, [found[n] for n in usernames], name)
    room = await admin.room_with_members(state.db, room_id)
    return json_response({"room": room, "created": created}, status=201 if created else 200)


@routes.post(PREFIX + "/rooms/{id}/members")
@api_key_required
async def add_members(request: web.Request) -> web.Response:
    """Add users to a group; the room hears ``joinRoom`` for each new member."""
    state = request.app[STATE]
    room_id = _room_id(request)
    body = validate(models.SidecarMembersBody, await json_body(request), "Request body")
    user_ids = await _member_ids(state, _unique(body.members))
    added = await state.membership.add_members(room_id, user_ids)
    room = await admin.room_with_members(state.db, room_id)
    return json_response({"room": room, "added": added})


@routes.delete(PREFIX + "/rooms/{id}/members")
@api_key_required
async def remove_members(request: web.Request) -> web.Response:
    """Remove users (``?username=`` repeated) from a group; their sockets leave it and it hears ``quitRoom``."""
    state = request.app[STATE]
    room_id = _room_id(request)
    usernames = _unique(validate_params(models.SidecarRemoveQuery, request.query).username)
    user_ids = await _member_ids(state, usernames)
    removed = await state.membership.remove_members(room_id, user_ids)
    room = await admin.room_with_members(state.db, room_id)
    return json_response({"room": room, "removed": removed})


@routes.post(PREFIX + "/rooms/{id}/messages")
@api_key_required
async def post_message(request: web.Request) -> web.Response:
    """Store a message from a member, or a system message, and broadcast it to the room like any other."""
    state = request.app[STATE]
    room_id = _room_id(request)
    model = models.sidecar_message_model(state.config.message_max_length)
    body: Any = validate(model, await json_body(request), "Request body")
    kind = MESSAGE_TYPES[body.type]
    content, client_msg_id, system = body.content, body.clientMsgId, body.system
    if system == (body.username is not None):
        raise BadRequest("Give either username (a member sends it) or system: true (the service sends it)")
    if await find_room(state.db.reader, room_id) is None:
        raise NotFound("Chatroom not found")
    if system:
        sender_id = await admin.system_user_id(state.db)
    else:
        username = body.username
        sender_id = (await admin.users_by_username(state.db, [username]))[username]["id"]
        if not await state.members.is_member(state.db.reader, sender_id, room_id):
            raise Forbidden("That user is not a member of this chatroom")
    stored, new = await state.writer.submit(Draft(room_id, sender_id, kind, content, client_msg_id))
    return json_response(stored, status=201 if new else 200)


def _message_id(request: web.Request) -> int:
    return validate_params(models.SidecarMessagePath, request.match_info).messageId


@routes.patch(PREFIX + "/messages/{messageId}")
@api_key_required
async def edit_message(request: web.Request) -> web.Response:
    """Edit a text message on behalf of its sender, under the rules of ``editMessage``."""
    state = request.app[STATE]
    message_id = _message_id(request)
    body: Any = validate(models.sidecar_edit_model(state.config.message_max_length), await json_body(request))
    user_id = (await admin.users_by_username(state.db, [body.username]))[body.username]["id"]
    return json_response(await change_edit(state, user_id, message_id, body.content))


@routes.delete(PREFIX + "/messages/{messageId}")
@api_key_required
async def delete_message(request: web.Request) -> web.Response:
    """Delete a message on behalf of its sender (``?username=``), or any message as the service (no username)."""
    state = request.app[STATE]
    message_id = _message_id(request)
    username = validate_params(models.SidecarDeleteQuery, request.query).username
    user_id = None if username is None else (await admin.users_by_username(state.db, [username]))[username]["id"]
    return json_response(await change_delete(state, user_id, message_id))


@routes.post(PREFIX + "/rooms/{id}/read")
@api_key_required
async def mark_read(request: web.Request) -> web.Response:
    """Move a member's read position, as their ``markRead`` would; the room hears ``read`` if it moved."""
    state = request.app[STATE]
    room_id = _room_id(request)
    body = validate(models.SidecarReadBody, await json_body(request), "Request body")
    user_id = (await admin.users_by_username(state.db, [body.username]))[body.username]["id"]
    if not await state.members.is_member(state.db.reader, user_id, room_id):
        if await find_room(state.db.reader, room_id) is None:
            raise NotFound("Chatroom not found")
        raise Forbidden("That user is not a member of this chatroom")
    last_read_id = await state.reads.mark(user_id, room_id, body.messageId)
    return json_response({"chatroomId": room_id, "userId": user_id, "lastReadId": last_read_id})


@routes.get(PREFIX + "/presence")
@api_key_required
async def read_presence(request: web.Request) -> web.Response:
    """Online state and ``lastSeen`` of users (``?username=`` repeated), with their usernames."""
    state = request.app[STATE]
    usernames = _unique(validate_params(models.SidecarPresenceQuery, request.query).username)
    found = await admin.users_by_username(state.db, usernames)
    answer = await state.presence.presence_of(None, [found[name]["id"] for name in usernames])
    by_id = {entry["id"]: entry for entry in answer}
    return json_response([{**by_id[found[name]["id"]], "username": name} for name in usernames])
