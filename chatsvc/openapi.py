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

from chatsvc import __version__, models
from chatsvc.config import Config
from chatsvc.models import parameters_of

JSON = "application/json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _model(model: Any) -> Schema:
    """A reference to the component of a model in chatsvc/models.py (collected by :func:`openapi_spec`)."""
    return _ref(model.__name__)


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STRING: Schema = {"type": "string"}


ERROR_DESCRIPTIONS = {
    400: "Invalid input or a refused request",
    401: "Missing or invalid credentials",
    403: "Not allowed (not a member of the room)",
    404: "Not found",
    413: "Request body too large",
    415: "A type of file that is not accepted",
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


def _params(model: Any, where: str = "query") -> list[Schema]:
    """The parameters of a query or path model of chatsvc/models.py, the one the route validates with."""
    params = []
    for field in parameters_of(model):
        param: Schema = {"name": field.name, "in": where, "required": field.required, "schema": field.schema}
        if field.repeated:
            param.update(style="form", explode=True)
        if field.description:
            param["description"] = field.description
        params.append(param)
    return params


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


STRING_MESSAGE: Schema = {"type": "string", "description": "A human-readable confirmation"}
INTEGER_ID: Schema = {"type": "integer", "description": "a room id"}

USERS: dict[str, Schema] = {
    "/user/register": {
        "post": _public_route(
            "Create an account",
            201,
            _model(models.User),
            body=_model(models.RegisterBody),
            errors=(400, 429),
            tag="users",
        )
    },
    "/user/login": {
        "post": _public_route(
            "Exchange username and password for the user and a token",
            201,
            _model(models.LoginResult),
            body=_model(models.LoginBody),
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
            params=_params(models.FindUserQuery),
            errors=(400, 404),
            tag="users",
        )
    },
    "/user/info": {"get": _user_route("The caller's profile", 200, _model(models.User), errors=(), tag="users")},
    "/user/register-captcha": {
        "get": _public_route(
            "Send a registration code (valid 5 minutes)",
            200,
            STRING_MESSAGE,
            params=_params(models.CodeQuery),
            errors=(400, 429, 503),
            tag="users",
        )
    },
    "/user/update_password/captcha": {
        "get": _public_route(
            "Send a password reset code (valid 10 minutes)",
            200,
            STRING_MESSAGE,
            params=_params(models.CodeQuery),
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
            _model(models.User),
            body=_model(models.UpdateUserBody),
            errors=(400, 404),
            tag="users",
        )
    },
    "/user/update_password": {
        "post": _public_route(
            "Set a new password with a code sent to the account's email; ends older tokens",
            201,
            STRING_MESSAGE,
            body=_model(models.UpdatePasswordBody),
            tag="users",
        )
    },
}

CHATROOMS: dict[str, Schema] = {
    "/chatroom/create-one-to-one": {
        "get": _user_route(
            "The id of the caller's one-to-one room with friendId, created if missing",
            200,
            INTEGER_ID,
            params=_params(models.OneToOneQuery),
            tag="chatrooms",
        )
    },
    "/chatroom/findChatroom": {
        "get": _user_route(
            "The id of the one-to-one room of two users, or null",
            200,
            {"type": "integer", "nullable": True},
            params=_params(models.FindChatroomQuery),
            errors=(400, 403),
            tag="chatrooms",
        )
    },
    "/chatroom/list": {
        "get": _user_route(
            "The caller's rooms, filtered by a name substring, with read positions, unread counts and newest messages",
            200,
            _array(_ref("RoomSummary")),
            params=_params(models.RoomListQuery),
            tag="chatrooms",
        )
    },
    "/chatroom/read-receipts": {
        "get": _user_route(
            "Every member's read position in a room the caller is a member of",
            200,
            _array(_ref("ReadReceipt")),
            params=_params(models.ReadReceiptsQuery),
            errors=(400, 403),
            tag="chatrooms",
        )
    },
    "/chatroom/create-group": {
        "get": _user_route(
            "Create a group with the caller as its first member; its id",
            200,
            INTEGER_ID,
            params=_params(models.CreateGroupQuery),
            tag="chatrooms",
        )
    },
    "/chatroom/members": {
        "get": _user_route(
            "The members of a room the caller is in (emails only of the caller and friends); [] for no room",
            200,
            _array(_model(models.Member)),
            params=_params(models.MembersQuery),
            errors=(400, 403),
            tag="chatrooms",
        )
    },
    "/chatroom/info/{id}": {
        "get": _user_route(
            "A room the caller is in, with its members",
            200,
            _ref("Room"),
            params=_params(models.RoomPath, "path"),
            errors=(400, 403, 404),
            tag="chatrooms",
        )
    },
    "/chatroom/join/{id}": {
        "get": _user_route(
            "Add the user joinUsername to a group the caller is in; the room id",
            200,
            INTEGER_ID,
            params=[*_params(models.RoomPath, "path"), *_params(models.JoinGroupQuery)],
            errors=(400, 403, 404),
            tag="chatrooms",
        )
    },
    "/chatroom/quit/{id}": {
        "get": _user_route(
            "Remove member quitUserId from a group the caller is in; the room id",
            200,
            INTEGER_ID,
            params=[*_params(models.RoomPath, "path"), *_params(models.QuitGroupQuery)],
            errors=(400, 403, 404, 503),
            tag="chatrooms",
        )
    },
}


def _history(history_max_limit: int) -> dict[str, Schema]:
    """The history route, whose page size is a setting."""
    return {
        "/chat-history/list": {
            "get": _user_route(
                "Messages of a room the caller is in, in ascending id order: the newest page, or one beside a cursor",
                200,
                _array(HISTORY_OR_DELETED),
                params=_params(models.history_query_model(history_max_limit)),
                errors=(400, 403),
                tag="history",
            )
        },
    }


USER_ID_PATH = _params(models.UserPath, "path")
FRIENDS: dict[str, Schema] = {
    "/friendship/add": {
        "post": _user_route(
            "Send a friend request to the user named username",
            201,
            _ref("FriendRequest"),
            body=_model(models.FriendAddBody),
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
            params=USER_ID_PATH,
            tag="friends",
        )
    },
    "/friendship/reject/{id}": {
        "get": _user_route(
            "Reject the pending request from user id", 200, _ref("FriendRequest"), params=USER_ID_PATH, tag="friends"
        )
    },
    "/friendship/list": {
        "get": _user_route(
            "The caller's friends, filtered by a nickName substring",
            200,
            _array(_ref("Friend")),
            params=_params(models.FriendListQuery),
            tag="friends",
        )
    },
    "/friendship/remove/{id}": {
        "get": _user_route(
            "End the friendship with user id, both ways", 200, STRING_MESSAGE, params=USER_ID_PATH, tag="friends"
        )
    },
}

FAVORITES: dict[str, Schema] = {
    "/favorite/add": {
        "get": _user_route(
            "Save a message of a room the caller is in",
            200,
            _ref("Favorite"),
            params=_params(models.ChatHistoryIdQuery),
            errors=(400, 403),
            tag="favorites",
        )
    },
    "/favorite/list": {
        "get": _user_route(
            "The caller's favorites, newest first, with their messages",
            200,
            _array(_ref("FavoriteWithMessage")),
            errors=(),
            tag="favorites",
        )
    },
    "/favorite/del": {
        "get": _user_route(
            "Delete one of the caller's favorites; the deleted favorite",
            200,
            _ref("Favorite"),
            params=_params(models.FavoriteIdQuery),
            errors=(400, 404),
            tag="favorites",
        )
    },
}

SIDECAR_ROOM_ID = _params(models.SidecarRoomPath, "path")
SIDECAR_ROOM = _model(models.SidecarRoomResult)
SIDECAR_USER = _model(models.SidecarUserResult)
SIDECAR: dict[str, Schema] = {
    "/sidecar/v1/users": {
        "post": _sidecar_route(
            "Create a user without a password (201), or update the given fields of an existing one (200)",
            {201: SIDECAR_USER, 200: SIDECAR_USER},
            body=_model(models.SidecarUserBody),
        )
    },
    "/sidecar/v1/tokens": {
        "post": _sidecar_route(
            "A token for a user, as /user/login gives",
            {201: _model(models.SidecarTokenResult)},
            body=_model(models.SidecarTokenBody),
        )
    },
    "/sidecar/v1/rooms": {
        "post": _sidecar_route(
            "Create a group with members (201), or find (200) or create (201) the one-to-one room of two users",
            {201: SIDECAR_ROOM, 200: SIDECAR_ROOM},
            body=_model(models.SidecarRoomBody),
        )
    },
    "/sidecar/v1/rooms/{id}/members": {
        "post": _sidecar_route(
            "Add users to a group; the room hears joinRoom for each new member",
            {200: _model(models.SidecarAddedResult)},
            params=SIDECAR_ROOM_ID,
            body=_model(models.SidecarMembersBody),
        ),
        "delete": _sidecar_route(
            "Remove users from a group; their sockets leave it and it hears quitRoom",
            {200: _model(models.SidecarRemovedResult)},
            params=[*SIDECAR_ROOM_ID, *_params(models.SidecarRemoveQuery)],
            errors=(400, 503),
        ),
    },
    "/sidecar/v1/rooms/{id}/messages": {
        "post": _sidecar_route(
            "Post a message as a member (username) or as the service (system: true); stored and broadcast",
            {201: _ref("Message"), 200: _ref("Message")},
            params=SIDECAR_ROOM_ID,
            body=_ref("SidecarMessageBody"),
            errors=(400, 403, 503),
        )
    },
    "/sidecar/v1/rooms/{id}/read": {
        "post": _sidecar_route(
            "Move a member's read position (as their markRead would); the room hears read if it moved",
            {200: _ref("ReadPosition")},
            params=SIDECAR_ROOM_ID,
            body=_ref("SidecarReadBody"),
            errors=(400, 403),
        )
    },
}

# --- edit, delete and search (issue 15: chatsvc/http/history.py, chatsvc/http/sidecar.py) ---
HISTORY_OR_DELETED: Schema = {"oneOf": [_ref("Message"), _ref("DeletedMessage")]}
SIDECAR_MESSAGE_ID = _params(models.SidecarMessagePath, "path")


def _edit_delete_search(message_max_length: int) -> tuple[dict[str, Schema], dict[str, Schema]]:
    """The search route and the sidecar's edit and delete routes, and the edit body's component."""
    edit_body = models.sidecar_edit_model(message_max_length)
    _, schemas = models.schema_components(edit_body)
    paths: dict[str, Schema] = {
        "/chat-history/search": {
            "get": _user_route(
                "Live text messages containing q (any case, literally), newest first, from the caller's rooms",
                200,
                _array(_ref("Message")),
                params=_params(models.SearchQuery),
                errors=(400, 403),
                tag="history",
            )
        },
        "/sidecar/v1/messages/{messageId}": {
            "patch": _sidecar_route(
                "Edit a text message on behalf of its sender (the rules of editMessage); the updated message",
                {200: _ref("Message")},
                params=SIDECAR_MESSAGE_ID,
                body=_model(edit_body),
                errors=(400, 403, 404, 503),
            ),
            "delete": _sidecar_route(
                "Delete a message on behalf of its sender (username), or any message as the service",
                {200: _model(models.DeletedAck)},
                params=[*SIDECAR_MESSAGE_ID, *_params(models.SidecarDeleteQuery)],
                errors=(400, 403, 404, 503),
            ),
        },
    }
    return paths, schemas


# --- presence and group roles (issue 15: chatsvc/http/presence.py, /chatroom/set-role, the sidecar) ---
PRESENCE: dict[str, Schema] = {
    "/user/presence": {
        "get": _user_route(
            "Online state and lastSeen of the listed users the caller is friends with or shares a room with",
            200,
            _array(_model(models.Presence)),
            params=_params(models.PresenceQuery),
            tag="users",
        )
    },
    "/chatroom/set-role/{id}": {
        "get": _user_route(
            "The group's owner makes a member an admin or a member again; the room hears roleChanged",
            200,
            _model(models.RoleResult),
            params=[*_params(models.RoomPath, "path"), *_params(models.SetRoleQuery)],
            errors=(400, 403, 404),
            tag="chatrooms",
        )
    },
    "/sidecar/v1/presence": {
        "get": _sidecar_route(
            "Online state and lastSeen of users (?username= repeated)",
            {200: _array(_model(models.SidecarPresence))},
            params=_params(models.SidecarPresenceQuery),
        )
    },
}

# --- files (chatsvc/http/files.py) ---
BINARY: Schema = {"type": "string", "format": "binary"}
FILE_HEADERS: Schema = {
    "ETag": {"description": "Changes only if the bytes do", "schema": STRING, "required": False},
    "Cache-Control": {"description": "A year: a name never holds other bytes", "schema": STRING, "required": False},
    "Content-Disposition": {
        "description": "attachment with the original name, for anything but an image",
        "schema": STRING,
        "required": False,
    },
    "Content-Security-Policy": {"description": "sandbox, for anything but an image", "schema": STRING},
}
FILES: dict[str, Schema] = {
    "/file/upload": {
        "post": {
            **_user_route(
                "Store a file (multipart part 'file'); its type is decided from its bytes",
                201,
                _model(models.Upload),
                errors=(400, 413, 415, 503),
                tag="files",
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {"type": "object", "properties": {"file": BINARY}, "required": ["file"]}
                    }
                },
            },
        }
    },
    "/file/{name}": {
        "get": {
            "summary": "A stored file: its bytes (Range and If-None-Match work), or with S3 a redirect to them",
            "tags": ["files"],
            "security": [],
            "parameters": _params(models.FilePath, "path"),
            "responses": {
                "200": {"description": "The file", "headers": FILE_HEADERS, "content": {"*/*": {"schema": BINARY}}},
                "206": {"description": "The requested range", "content": {"*/*": {"schema": BINARY}}},
                "302": {"description": "With S3 storage: a short-lived presigned URL of the file"},
                "304": {"description": "The copy the client has is current"},
                "416": {"description": "The range lies outside the file"},
                **_errors(404),
            },
        }
    },
    "/minio/presignedUrl": {
        "get": _user_route(
            "A presigned URL to PUT object name into the bucket for an hour, as the original backend gave (S3 only)",
            200,
            {"type": "string", "description": "the presigned PUT URL"},
            params=_params(models.PresignedUrlQuery),
            errors=(400, 404),
            tag="files",
        )
    },
}

OPERATIONS: dict[str, Schema] = {
    "/healthz": {
        "get": _public_route(
            "Liveness: the process serves HTTP",
            200,
            _model(models.Status),
            errors=(),
            tag="operations",
        )
    },
    "/readyz": {
        "get": _public_route(
            "Readiness: the database answers a query",
            200,
            _model(models.Status),
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
            "parameters": _params(models.StaticPath, "path"),
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


# Every model the document names; its components are generated from them (chatsvc/models.py).
MODELS: tuple[Any, ...] = (
    *models.RESPONSE_MODELS,
    *models.PRESENCE_MODELS,
    models.RegisterBody,
    models.LoginBody,
    models.UpdateUserBody,
    models.UpdatePasswordBody,
    models.FriendAddBody,
    models.SidecarUserBody,
    models.SidecarTokenBody,
    models.SidecarRoomBody,
    models.SidecarMembersBody,
    models.SidecarReadBody,
    models.LoginResult,
    models.SidecarUserResult,
    models.SidecarTokenResult,
    models.SidecarRoomResult,
    models.SidecarAddedResult,
    models.SidecarRemovedResult,
    models.ReadPosition,
    models.Status,
)


def openapi_spec(config: Config | None = None) -> dict[str, Any]:
    """The OpenAPI document for the limits of ``config`` (the defaults without one); callers must not change it."""
    config = config or Config()
    return _spec(config.message_max_length, config.history_max_limit)


@cache
def _spec(message_max_length: int, history_max_limit: int) -> dict[str, Any]:
    _, schemas = models.schema_components(*MODELS, models.sidecar_message_model(message_max_length))
    edit_paths, edit_schemas = _edit_delete_search(message_max_length)
    schemas = {**schemas, **edit_schemas}
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
        "paths": {
            **USERS,
            **CHATROOMS,
            **_history(history_max_limit),
            **FRIENDS,
            **FAVORITES,
            **FILES,
            **SIDECAR,
            **edit_paths,
            **PRESENCE,
            **OPERATIONS,
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }
