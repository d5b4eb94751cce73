"""The OpenAPI 3 description of every HTTP route, served at ``GET /openapi.json``.

Kept true by tests: tests/test_openapi.py checks that the routes the
application registers and the paths described here are the same set, and
runs Schemathesis against a live server to check that responses match.
The Socket.IO endpoint (``/socket.io/``) is not an HTTP API and is left out;
docs/protocol.md describes it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from chatsvc import __version__

JSON = "application/json"
MAX_ID = 2**63 - 1

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(max_length: int | None = None, *, min_length: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if max_length is not None:
        schema["maxLength"] = max_length
    if min_length is not None:
        schema["minLength"] = min_length
    return schema


def _object(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    return {"type": "object", "properties": properties, "required": required or [], **extra}


def _closed(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """A response object: every property present but the optional ones, nothing else."""
    required = [name for name in properties if name not in optional]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


ID: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
TIME: Schema = _string(description="ISO 8601 UTC time with milliseconds, e.g. 2024-08-02T13:50:08.123Z")

SCHEMAS: dict[str, Schema] = {
    "Error": _closed(
        {
            "statusCode": {"type": "integer"},
            "message": _string(min_length=1),
            "error": _string(min_length=1),
        }
    ),
    # A user's whole profile, as the user themselves (and the trusted sidecar API) see it.
    "User": _closed(
        {
            "id": {"type": "integer"},
            "username": _string(),
            "nickName": _string(),
            "email": _string(),
            "headPic": _string(),
            "createTime": TIME,
        }
    ),
    # Another user as the caller sees them: the email only if they are the caller or a friend of the caller.
    "Profile": _closed(
        {
            "id": {"type": "integer"},
            "username": _string(),
            "nickName": _string(),
            "email": _string(description="present only for the caller and the caller's friends"),
            "headPic": _string(),
            "createTime": TIME,
        },
        optional=("email",),
    ),
    # What anyone may see of a user, as messages and friend requests show them: no email.
    "PublicUser": _closed(
        {
            "id": {"type": "integer"},
            "username": _string(),
            "nickName": _string(),
            "headPic": _string(),
            "createTime": TIME,
        }
    ),
    "Friend": _closed(
        {
            "id": {"type": "integer"},
            "username": _string(),
            "nickName": _string(),
            "email": _string(),
            "headPic": _string(),
        }
    ),
    "Message": _closed(
        {
            "id": {"type": "integer"},
            "content": _string(),
            "type": {"type": "integer", "enum": [0, 1, 2], "description": "0 text, 1 image, 2 file"},
            "chatroomId": {"type": "integer"},
            "senderId": {"type": "integer"},
            "system": {"type": "boolean", "description": "true only for a system message (sent by the service)"},
            "clientMsgId": {"type": "string", "nullable": True},
            "createTime": TIME,
            "updateTime": TIME,
            "sender": _ref("PublicUser"),
        }
    ),
    "RoomSummary": _closed(
        {
            "id": {"type": "integer"},
            "name": _string(description="a one-to-one room is named after the other member"),
            "type": {"type": "boolean", "description": "true for a group"},
            "createTime": TIME,
            "userCount": {"type": "integer"},
            "userIds": {"type": "array", "items": {"type": "integer"}},
        }
    ),
    "Room": _closed(
        {
            "id": {"type": "integer"},
            "name": _string(),
            "type": {"type": "boolean", "description": "true for a group"},
            "createTime": TIME,
            "updateTime": TIME,
            "users": {"type": "array", "items": _ref("Profile")},
        }
    ),
    "FriendRequest": _closed(
        {
            "id": {"type": "integer"},
            "fromUserId": {"type": "integer"},
            "toUserId": {"type": "integer"},
            "reason": _string(),
            "status": {"type": "integer", "enum": [0, 1, 2], "description": "0 pending, 1 agreed, 2 rejected"},
            "createTime": TIME,
            "updateTime": TIME,
        }
    ),
    "Favorite": _closed(
        {
            "id": {"type": "integer"},
            "chatHistoryId": {"type": "integer"},
            "userId": {"type": "integer"},
            "createTime": TIME,
        }
    ),
}


def _with(base: str, **extra: Schema) -> Schema:
    """A response object: the properties of schema ``base`` plus ``extra``."""
    properties = {**SCHEMAS[base]["properties"], **extra}
    return _closed(properties)


SCHEMAS["FriendRequestList"] = _closed(
    {
        "toMe": {"type": "array", "items": _with("FriendRequest", fromUser=_ref("PublicUser"))},
        "fromMe": {"type": "array", "items": _with("FriendRequest", toUser=_ref("PublicUser"))},
    }
)
SCHEMAS["FavoriteWithMessage"] = _with("Favorite", chatHistory=_ref("Message"))

ERROR_DESCRIPTIONS = {
    400: "Invalid input or a refused request",
    401: "Missing or invalid credentials",
    403: "Not allowed (not a member of the room)",
    404: "Not found",
    413: "Request body too large",
    429: "Too many requests",
    503: "Service unavailable",
}


def _json(schema: Schema, description: str, *, refreshed_token: bool = False) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if refreshed_token:
        response["headers"] = {
            "token": {
                "description": "A refreshed token for the caller",
                "schema": {"type": "string"},
                "required": False,
            }
        }
    return response


def _error(status: int) -> Schema:
    response = _json(_ref("Error"), ERROR_DESCRIPTIONS[status])
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before trying again (failed-login and registration limits)",
                "schema": {"type": "integer", "minimum": 1},
                "required": False,
            }
        }
    return response


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(status): _error(status) for status in statuses}


def _query(name: str, schema: Schema, *, required: bool = True, description: str | None = None) -> Schema:
    param: Schema = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        param["description"] = description
    return param


def _path(name: str, schema: Schema, description: str | None = None) -> Schema:
    param: Schema = {"name": name, "in": "path", "required": True, "schema": schema}
    if description:
        param["description"] = description
    return param


def _body(schema: Schema) -> Schema:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def _operation(
    summary: str,
    status: int,
    schema: Schema,
    *,
    params: list[Schema] | None,
    body: Schema | None,
    errors: tuple[int, ...],
    tag: str,
    login: bool,
    renews_token: bool = True,
) -> Schema:
    operation: Schema = {"summary": summary, "tags": [tag]}
    if login:
        success = _json(schema, "Success", refreshed_token=renews_token)
        operation["responses"] = {str(status): success, **_errors(*errors, 401)}
    else:
        operation["security"] = []
        operation["responses"] = {str(status): _json(schema, "Success"), **_errors(*errors)}
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = _body(body)
    return operation


def _user_route(
    summary: str,
    status: int,
    schema: Schema,
    *,
    params: list[Schema] | None = None,
    body: Schema | None = None,
    errors: tuple[int, ...] = (400,),
    tag: str,
    renews_token: bool = True,
) -> Schema:
    """An operation that needs a logged-in user (Bearer token)."""
    return _operation(
        summary,
        status,
        schema,
        params=params,
        body=body,
        errors=errors,
        tag=tag,
        login=True,
        renews_token=renews_token,
    )


def _public_route(
    summary: str,
    status: int,
    schema: Schema,
    *,
    params: list[Schema] | None = None,
    body: Schema | None = None,
    errors: tuple[int, ...] = (400,),
    tag: str,
) -> Schema:
    """An operation that needs no login: any Authorization header is ignored."""
    return _operation(summary, status, schema, params=params, body=body, errors=errors, tag=tag, login=False)


def _sidecar_route(
    summary: str,
    responses: dict[int, Schema],
    *,
    body: Schema | None = None,
    params: list[Schema] | None = None,
    errors: tuple[int, ...] = (400,),
) -> Schema:
    """An operation of the sidecar API: X-Api-Key, 404 when the API is off."""
    operation: Schema = {
        "summary": summary,
        "tags": ["sidecar"],
        "security": [{"apiKey": []}],
        "responses": {
            **{str(status): _json(schema, "Success") for status, schema in responses.items()},
            **_errors(*errors, 401, 404),
        },
    }
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = _body(body)
    return operation


def _text_response(content_types: list[str], description: str) -> Schema:
    return {"description": description, "content": {ct: {"schema": {"type": "string"}} for ct in content_types}}


STRING_MESSAGE = _string(description="A human-readable confirmation")
INTEGER_ID = {"type": "integer", "description": "a room id"}
ANY_INT: Schema = {"type": "integer", "minimum": -MAX_ID, "maximum": MAX_ID}
USERNAME = _string(50, min_length=1)
NICKNAME = _string(50, min_length=1)
EMAIL = _string(254, format="email")
PASSWORD = _string(128, min_length=6)
ADDRESS_QUERY = _query("address", EMAIL, description="where the code is sent")

USERS: dict[str, Schema] = {
    "/user/register": {
        "post": _public_route(
            "Create an account",
            201,
            _ref("User"),
            body=_object(
                {
                    "username": USERNAME,
                    "password": PASSWORD,
                    "nickName": NICKNAME,
                    "email": EMAIL,
                    "captcha": _string(32, description="the register code; required when SMTP is configured"),
                },
                ["username", "password", "nickName", "email"],
            ),
            errors=(400, 429),
            tag="users",
        )
    },
    "/user/login": {
        "post": _public_route(
            "Exchange username and password for the user and a token",
            201,
            _closed({"user": _ref("User"), "token": _string()}),
            body=_object({"username": USERNAME, "password": _string(128)}, ["username", "password"]),
            errors=(400, 429),
            tag="users",
        )
    },
    "/user/logout": {
        "post": _user_route(
            "End every token of the caller and close their sockets",
            201,
            STRING_MESSAGE,
            errors=(404,),
            tag="users",
            renews_token=False,
        )
    },
    "/user/find": {
        "get": _user_route(
            "A user's profile by username, to start a chat with them (the email only for the caller and friends)",
            200,
            _ref("Profile"),
            params=[_query("username", USERNAME)],
            errors=(400, 404),
            tag="users",
        )
    },
    "/user/info": {"get": _user_route("The caller's profile", 200, _ref("User"), errors=(), tag="users")},
    "/user/register-captcha": {
        "get": _public_route(
            "Send a registration code (valid 5 minutes)",
            200,
            STRING_MESSAGE,
            params=[ADDRESS_QUERY],
            errors=(400, 429, 503),
            tag="users",
        )
    },
    "/user/update_password/captcha": {
        "get": _public_route(
            "Send a password reset code (valid 10 minutes)",
            200,
            STRING_MESSAGE,
            params=[ADDRESS_QUERY],
            errors=(400, 429, 503),
            tag="users",
        )
    },
    "/user/update/captcha": {
        "get": _user_route(
            "Send a profile change code to the caller's email",
            200,
            STRING_MESSAGE,
            errors=(400, 429, 503),
            tag="users",
        )
    },
    "/user/update": {
        "post": _user_route(
            "Change the caller's nickName, headPic and email with a code sent to the current email",
            201,
            _ref("User"),
            body=_object(
                {
                    "nickName": NICKNAME,
                    "headPic": _string(1000),
                    "email": EMAIL,
                    "captcha": _string(32, min_length=1),
                },
                ["email", "captcha"],
            ),
            errors=(400, 404),
            tag="users",
        )
    },
    "/user/update_password": {
        "post": _public_route(
            "Set a new password with a code sent to the account's email; ends older tokens",
            201,
            STRING_MESSAGE,
            body=_object(
                {"username": USERNAME, "email": EMAIL, "password": PASSWORD, "captcha": _string(32, min_length=1)},
                ["username", "email", "password", "captcha"],
            ),
            tag="users",
        )
    },
}

ROOM_ID_PATH = _path("id", ANY_INT, "the room id")
CHATROOMS: dict[str, Schema] = {
    "/chatroom/create-one-to-one": {
        "get": _user_route(
            "The id of the caller's one-to-one room with friendId, created if missing",
            200,
            INTEGER_ID,
            params=[_query("friendId", ID)],
            tag="chatrooms",
        )
    },
    "/chatroom/findChatroom": {
        "get": _user_route(
            "The id of the one-to-one room of two users, or null",
            200,
            {"type": "integer", "nullable": True},
            params=[_query("userId1", ID), _query("userId2", ID)],
            errors=(400, 403),
            tag="chatrooms",
        )
    },
    "/chatroom/list": {
        "get": _user_route(
            "The caller's rooms, filtered by a name substring",
            200,
            {"type": "array", "items": _ref("RoomSummary")},
            params=[_query("name", _string(50), required=False)],
            tag="chatrooms",
        )
    },
    "/chatroom/create-group": {
        "get": _user_route(
            "Create a group with the caller as its first member; its id",
            200,
            INTEGER_ID,
            params=[_query("name", _string(50, min_length=1))],
            tag="chatrooms",
        )
    },
    "/chatroom/members": {
        "get": _user_route(
            "The members of a room the caller is in (emails only of the caller and friends); [] for no room",
            200,
            {"type": "array", "items": _ref("Profile")},
            params=[_query("chatroomId", ANY_INT)],
            errors=(400, 403),
            tag="chatrooms",
        )
    },
    "/chatroom/info/{id}": {
        "get": _user_route(
            "A room the caller is in, with its members",
            200,
            _ref("Room"),
            params=[ROOM_ID_PATH],
            errors=(400, 403, 404),
            tag="chatrooms",
        )
    },
    "/chatroom/join/{id}": {
        "get": _user_route(
            "Add the user joinUsername to a group the caller is in; the room id",
            200,
            INTEGER_ID,
            params=[ROOM_ID_PATH, _query("joinUsername", USERNAME)],
            errors=(400, 403, 404),
            tag="chatrooms",
        )
    },
    "/chatroom/quit/{id}": {
        "get": _user_route(
            "Remove member quitUserId from a group the caller is in; the room id",
            200,
            INTEGER_ID,
            params=[ROOM_ID_PATH, _query("quitUserId", ID)],
            errors=(400, 403, 404, 503),
            tag="chatrooms",
        )
    },
    "/chat-history/list": {
        "get": _user_route(
            "Messages of a room the caller is in, in ascending id order: the newest page, or one beside a cursor",
            200,
            {"type": "array", "items": _ref("Message")},
            params=[
                _query("chatroomId", ID),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, required=False),
                _query("beforeId", ID, required=False, description="messages older than this id"),
                _query("afterId", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, required=False),
            ],
            errors=(400, 403),
            tag="history",
        )
    },
}

USER_ID_PATH = _path("id", ID, "the other user's id")
FRIENDS: dict[str, Schema] = {
    "/friendship/add": {
        "post": _user_route(
            "Send a friend request to the user named username",
            201,
            _ref("FriendRequest"),
            body=_object({"username": USERNAME, "reason": _string(100)}, ["username"]),
            tag="friends",
        )
    },
    "/friendship/request_list": {
        "get": _user_route(
            "Friend requests to and from the caller", 200, _ref("FriendRequestList"), errors=(), tag="friends"
        )
    },
    "/friendship/agree/{id}": {
        "get": _user_route(
            "Agree to the pending request from user id",
            200,
            _ref("FriendRequest"),
            params=[USER_ID_PATH],
            tag="friends",
        )
    },
    "/friendship/reject/{id}": {
        "get": _user_route(
            "Reject the pending request from user id", 200, _ref("FriendRequest"), params=[USER_ID_PATH], tag="friends"
        )
    },
    "/friendship/list": {
        "get": _user_route(
            "The caller's friends, filtered by a nickName substring",
            200,
            {"type": "array", "items": _ref("Friend")},
            params=[_query("name", _string(50), required=False)],
            tag="friends",
        )
    },
    "/friendship/remove/{id}": {
        "get": _user_route(
            "End the friendship with user id, both ways", 200, STRING_MESSAGE, params=[USER_ID_PATH], tag="friends"
        )
    },
}

FAVORITES: dict[str, Schema] = {
    "/favorite/add": {
        "get": _user_route(
            "Save a message of a room the caller is in",
            200,
            _ref("Favorite"),
            params=[_query("chatHistoryId", ID)],
            errors=(400, 403),
            tag="favorites",
        )
    },
    "/favorite/list": {
        "get": _user_route(
            "The caller's favorites, newest first, with their messages",
            200,
            {"type": "array", "items": _ref("FavoriteWithMessage")},
            errors=(),
            tag="favorites",
        )
    },
    "/favorite/del": {
        "get": _user_route(
            "Delete one of the caller's favorites; the deleted favorite",
            200,
            _ref("Favorite"),
            params=[_query("id", ID)],
            errors=(400, 404),
            tag="favorites",
        )
    },
}

SIDECAR_USERNAMES: Schema = {"type": "array", "items": USERNAME, "minItems": 1, "maxItems": 1000}
SIDECAR_ROOM_ID = _path("id", ID, "the room id")
SIDECAR_ROOM = _closed({"room": _ref("Room"), "created": {"type": "boolean"}})
SIDECAR_USER = _closed({"user": _ref("User"), "created": {"type": "boolean"}})
SIDECAR: dict[str, Schema] = {
    "/sidecar/v1/users": {
        "post": _sidecar_route(
            "Create a user without a password (201), or update the given fields of an existing one (200)",
            {201: SIDECAR_USER, 200: SIDECAR_USER},
            body=_object(
                {
                    "username": USERNAME,
                    "nickName": NICKNAME,
                    "email": _string(254, description="an email address, or empty to clear it"),
                    "headPic": _string(1000),
                },
                ["username"],
            ),
        )
    },
    "/sidecar/v1/tokens": {
        "post": _sidecar_route(
            "A token for a user, as /user/login gives",
            {201: _closed({"token": _string(), "expiresIn": {"type": "integer"}, "user": _ref("User")})},
            body=_object({"username": USERNAME}, ["username"]),
        )
    },
    "/sidecar/v1/rooms": {
        "post": _sidecar_route(
            "Create a group with members (201), or find (200) or create (201) the one-to-one room of two users",
            {201: SIDECAR_ROOM, 200: SIDECAR_ROOM},
            body=_object(
                {
                    "type": {"type": "string", "enum": ["group", "one-to-one"]},
                    "name": _string(50, min_length=1),
                    "members": SIDECAR_USERNAMES,
                },
                ["type", "members"],
            ),
        )
    },
    "/sidecar/v1/rooms/{id}/members": {
        "post": _sidecar_route(
            "Add users to a group; the room hears joinRoom for each new member",
            {200: _closed({"room": _ref("Room"), "added": {"type": "array", "items": {"type": "integer"}}})},
            params=[SIDECAR_ROOM_ID],
            body=_object({"members": SIDECAR_USERNAMES}, ["members"]),
        ),
        "delete": _sidecar_route(
            "Remove users from a group; their sockets leave it and it hears quitRoom",
            {200: _closed({"room": _ref("Room"), "removed": {"type": "array", "items": {"type": "integer"}}})},
            params=[
                SIDECAR_ROOM_ID,
                {
                    "name": "username",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "array", "items": USERNAME, "minItems": 1, "maxItems": 10},
                    "style": "form",
                    "explode": True,
                    "description": "repeat for several users (at most 10, to keep the URL short)",
                },
            ],
            errors=(400, 503),
        ),
    },
    "/sidecar/v1/rooms/{id}/messages": {
        "post": _sidecar_route(
            "Post a message as a member (username) or as the service (system: true); stored and broadcast",
            {201: _ref("Message"), 200: _ref("Message")},
            params=[SIDECAR_ROOM_ID],
            body=_object(
                {
                    "username": USERNAME,
                    "system": {"type": "boolean"},
                    "type": {"type": "string", "enum": ["text", "image", "file"], "default": "text"},
                    "content": _string(500, min_length=1),
                    "clientMsgId": _string(64, min_length=1),
                },
                ["content"],
            ),
            errors=(400, 403, 503),
        )
    },
}

OPERATIONS: dict[str, Schema] = {
    "/healthz": {
        "get": _public_route(
            "Liveness: the process serves HTTP",
            200,
            _closed({"status": {"type": "string"}}),
            errors=(),
            tag="operations",
        )
    },
    "/readyz": {
        "get": _public_route(
            "Readiness: the database answers a query",
            200,
            _closed({"status": {"type": "string"}}),
            errors=(503,),
            tag="operations",
        )
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format)",
            "tags": ["operations"],
            "security": [],
            "responses": {"200": _text_response(["text/plain"], "The metrics")},
        }
    },
    "/openapi.json": {"get": _public_route("This document", 200, {"type": "object"}, errors=(), tag="operations")},
    "/": {
        "get": {
            "summary": "The demo chat page",
            "tags": ["demo"],
            "security": [],
            "responses": {"200": _text_response(["text/html"], "The page")},
        }
    },
    "/static/{name}": {
        "get": {
            "summary": "A file of the demo page (script, style sheet, image)",
            "tags": ["demo"],
            "security": [],
            "parameters": [_path("name", _string(100, min_length=1))],
            "responses": {
                "200": _text_response(
                    ["text/javascript", "text/css", "text/html", "image/svg+xml", "image/png", "image/x-icon"],
                    "The file",
                ),
                **_errors(404),
            },
        }
    },
}


@cache
def openapi_spec() -> dict[str, Any]:
    """The OpenAPI document (built once; callers must not change it)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "chatsvc",
            "version": __version__,
            "description": (
                "HTTP API of chatsvc, compatible with the NestJS chat-room backend it replaces. Every error is "
                '{"statusCode", "message", "error"}. The Socket.IO endpoint /socket.io/ is described in '
                "docs/protocol.md, the sidecar API in docs/sidecar.md."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": {**USERS, **CHATROOMS, **FRIENDS, **FAVORITES, **SIDECAR, **OPERATIONS},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }
