"""Request and response models: the one place where every field and its limits are written.

Each model is a msgspec Struct whose annotations carry the limits
(``msgspec.Meta``). Three things read them: the validator
(:func:`validate` for bodies and socket payloads, :func:`validate_params` for
query strings and path segments), which refuses bad input with the texts
clients already know ("username is required", "content must be at most 500
characters"); the OpenAPI document (chatsvc/openapi.py, through
:func:`schema_components` and :func:`parameters_of`); and the handlers and CLI,
which use the typed result.

msgspec was chosen by measurement (``python -m bench.validate_send``): its
``convert`` decodes and checks a ``sendMessage`` payload faster than the
hand-written checks it replaces, where pydantic 2 was no faster. ``convert``
is the fast path; only a payload it refuses (or the few rules a JSON schema
cannot say: a blank string, lone surrogates, an email's shape) goes through the
slower field-by-field walk that finds the first fault and names it as before.

A limit that is a runtime setting (the message length, the history page size)
is passed in: :func:`send_message_model` and :func:`history_query_model` build
the model for a given limit, and the OpenAPI document is built from the same call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from operator import attrgetter
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from chatsvc.errors import BadRequest

MAX_ID = 2**63 - 1

USERNAME_MAX = 50
NICKNAME_MAX = 50
HEAD_PIC_MAX = 1000
EMAIL_MAX = 254
PASSWORD_MIN = 6
PASSWORD_MAX = 128
CAPTCHA_MAX = 32
ROOM_NAME_MAX = 50
REASON_MAX = 100
# A client's own id for a message, which makes a retried send idempotent.
CLIENT_MSG_ID_MAX = 64
# Most usernames one sidecar call may name: in a JSON body, and in a query string (which must stay under 8 KiB).
MAX_USERNAMES = 1000
MAX_QUERY_USERNAMES = 10
STATIC_NAME_MAX = 100
# Defaults of the runtime limits (chatsvc/config.py reads the settings).
DEFAULT_MESSAGE_MAX_LENGTH = 500
DEFAULT_HISTORY_MAX_LIMIT = 1000

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MESSAGE_TYPE_NAMES = ("text", "image", "file")

# Meta(extra=...) keys the validator reads; JSON schema does not show them.
BLANK = "blank"  # a string of only spaces is accepted (a password, a search filter)
LABEL = "label"  # the name errors use, where it is not the field's own

Id = Annotated[int, Meta(ge=1, le=MAX_ID)]
AnyInt = Annotated[int, Meta(ge=-MAX_ID, le=MAX_ID)]
Cursor = Annotated[int, Meta(ge=0, le=MAX_ID)]
Username = Annotated[str, Meta(min_length=1, max_length=USERNAME_MAX)]
NickName = Annotated[str, Meta(min_length=1, max_length=NICKNAME_MAX)]
Email = Annotated[str, Meta(max_length=EMAIL_MAX, extra_json_schema={"format": "email"})]
Password = Annotated[str, Meta(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX, extra={BLANK: True})]
Captcha = Annotated[str, Meta(min_length=1, max_length=CAPTCHA_MAX)]
HeadPic = Annotated[str, Meta(max_length=HEAD_PIC_MAX, extra={BLANK: True})]
RoomName = Annotated[str, Meta(min_length=1, max_length=ROOM_NAME_MAX)]
RoomNameFilter = Annotated[str, Meta(max_length=ROOM_NAME_MAX, extra={BLANK: True})]
NickNameFilter = Annotated[str, Meta(max_length=NICKNAME_MAX, extra={BLANK: True})]
Reason = Annotated[str, Meta(max_length=REASON_MAX, extra={BLANK: True})]
ClientMsgId = Annotated[str, Meta(min_length=1, max_length=CLIENT_MSG_ID_MAX)]
MessageTypeName = Annotated[Literal["text", "image", "file"], Meta(extra={"order": MESSAGE_TYPE_NAMES})]
StaticName = Annotated[str, Meta(min_length=1, max_length=STATIC_NAME_MAX)]
Time = Annotated[str, Meta(description="ISO 8601 UTC time with milliseconds, e.g. 2024-08-02T13:50:08.123Z")]


def history_limit(maximum: int = DEFAULT_HISTORY_MAX_LIMIT) -> Any:
    """The type of a history page size, up to the configured maximum."""
    return Annotated[int, Meta(ge=1, le=maximum)]


def message_content(max_length: int = DEFAULT_MESSAGE_MAX_LENGTH) -> Any:
    """The type of a message's content, up to the configured length."""
    return Annotated[str, Meta(min_length=1, max_length=max_length)]


# --- requests: HTTP bodies -------------------------------------------------------------------------------------


class _Request(Struct, kw_only=True):
    """Base of request models: unknown fields are ignored, as before."""


class RegisterBody(_Request, kw_only=True):
    username: Username
    nickName: NickName
    email: Email
    password: Password
    captcha: (
        Annotated[str, Meta(max_length=CAPTCHA_MAX, description="the register code; required when SMTP is configured")]
        | None
    ) = None


class LoginBody(_Request, kw_only=True):
    username: Username
    password: Annotated[str, Meta(max_length=PASSWORD_MAX, extra={BLANK: True})]


class UpdateUserBody(_Request, kw_only=True):
    nickName: NickName | None = None
    headPic: HeadPic | None = None
    email: Email
    captcha: Captcha


class UpdatePasswordBody(_Request, kw_only=True):
    username: Username
    email: Email
    password: Password
    captcha: Captcha


class FriendAddBody(_Request, kw_only=True):
    username: Username
    reason: Reason | None = None


class SidecarUserBody(_Request, kw_only=True):
    username: Username
    nickName: NickName | None = None
    email: (
        Annotated[
            str, Meta(max_length=EMAIL_MAX, description="an email address, or empty to clear it", extra={BLANK: True})
        ]
        | None
    ) = None
    headPic: HeadPic | None = None


class SidecarTokenBody(_Request, kw_only=True):
    username: Username


SidecarUsernames = Annotated[list[Username], Meta(min_length=1, max_length=MAX_USERNAMES)]
QueryUsernames = Annotated[list[Username], Meta(min_length=1, max_length=MAX_QUERY_USERNAMES)]


class SidecarRoomBody(_Request, kw_only=True):
    type: Literal["group", "one-to-one"]
    name: RoomName | None = None
    members: SidecarUsernames


class SidecarMembersBody(_Request, kw_only=True):
    members: SidecarUsernames


class SidecarRemoveQuery(_Request, kw_only=True):
    """The query of DELETE /sidecar/v1/rooms/{id}/members: ``?username=`` repeated."""

    username: Annotated[
        QueryUsernames,
        Meta(description=f"repeat for several users (at most {MAX_QUERY_USERNAMES}, to keep the URL short)"),
    ]


def _sidecar_message_model(max_length: int) -> type[Struct]:
    return msgspec.defstruct(
        "SidecarMessageBody",
        [
            ("type", MessageTypeName, "text"),
            ("content", message_content(max_length)),
            ("clientMsgId", ClientMsgId | None, None),
            ("system", bool, False),
            ("username", Username | None, None),
        ],
        bases=(_Request,),
        kw_only=True,
        module=__name__,
    )


# --- requests: query strings and path segments -----------------------------------------------------------------
# One model per route; a field's Meta description is the parameter's description in the OpenAPI document.


class FindUserQuery(_Request, kw_only=True):
    username: Username


class CodeQuery(_Request, kw_only=True):
    """Where a registration or password-reset code goes."""

    address: Annotated[Email, Meta(description="where the code is sent")]


class OneToOneQuery(_Request, kw_only=True):
    friendId: Id


class FindChatroomQuery(_Request, kw_only=True):
    userId1: Id
    userId2: Id


ROOM_ORDERS = ("id", "activity")
RoomOrder = Annotated[
    Literal["id", "activity"],
    Meta(
        description="id: oldest room first (the default); activity: newest message first", extra={"order": ROOM_ORDERS}
    ),
]


class RoomListQuery(_Request, kw_only=True):
    name: RoomNameFilter = ""
    order: RoomOrder = "id"


class CreateGroupQuery(_Request, kw_only=True):
    name: RoomName


# A room id in the /chatroom routes: any integer; one that names no room (such as -1) is not refused here.
RoomRef = Annotated[AnyInt, Meta(description="the room id")]


class MembersQuery(_Request, kw_only=True):
    chatroomId: RoomRef


class RoomPath(_Request, kw_only=True):
    id: RoomRef


class JoinGroupQuery(_Request, kw_only=True):
    joinUsername: Username


class QuitGroupQuery(_Request, kw_only=True):
    quitUserId: Id


def _history_query_model(max_limit: int) -> type[Struct]:
    return msgspec.defstruct(
        "HistoryQuery",
        [
            ("chatroomId", Id),
            ("limit", history_limit(max_limit) | None, None),
            ("beforeId", Annotated[Id, Meta(description="messages older than this id")] | None, None),
            ("afterId", Cursor | None, None),
        ],
        bases=(_Request,),
        kw_only=True,
        module=__name__,
    )


class UserPath(_Request, kw_only=True):
    id: Annotated[Id, Meta(description="the other user's id")]


class FriendListQuery(_Request, kw_only=True):
    name: NickNameFilter = ""


class ChatHistoryIdQuery(_Request, kw_only=True):
    chatHistoryId: Id


class FavoriteIdQuery(_Request, kw_only=True):
    id: Id


class SidecarRoomPath(_Request, kw_only=True):
    id: Annotated[Id, Meta(description="the room id")]


class StaticPath(_Request, kw_only=True):
    name: StaticName


# --- requests: socket events -----------------------------------------------------------------------------------


class JoinRoom(_Request, kw_only=True):
    chatroomId: Id
    userId: Id | None = None
    lastMessageId: Cursor | None = None


class LeaveRoom(_Request, kw_only=True):
    chatroomId: Id


# --- read positions and typing (chatsvc/receipts.py) ---


class MarkRead(_Request, kw_only=True):
    chatroomId: Id
    messageId: Id
    userId: Id | None = None


class Typing(_Request, kw_only=True):
    chatroomId: Id
    typing: bool
    userId: Id | None = None


class ReadReceiptsQuery(_Request, kw_only=True):
    chatroomId: Id


class SidecarReadBody(_Request, kw_only=True):
    username: Username
    messageId: Id


def _send_message_model(max_length: int) -> type[Struct]:
    content = Annotated[str, Meta(min_length=1, max_length=max_length)]
    message = msgspec.defstruct(
        "OutgoingMessage",
        [
            ("type", Annotated[MessageTypeName, Meta(extra={LABEL: "message.type", "order": MESSAGE_TYPE_NAMES})]),
            ("content", content),
        ],
        bases=(_Request,),
        kw_only=True,
        module=__name__,
    )
    return msgspec.defstruct(
        "SendMessage",
        [
            ("chatroomId", Id),
            ("message", message),
            ("clientMsgId", ClientMsgId | None, None),
            ("sendUserId", Id | None, None),
        ],
        bases=(_Request,),
        kw_only=True,
        module=__name__,
    )


# Edit and delete (issue 15).
def _edit_message_model(max_length: int) -> type[Struct]:
    return msgspec.defstruct(
        "EditMessage",
        [("messageId", Id), ("content", message_content(max_length)), ("userId", Id | None, None)],
        bases=(_Request,),
        kw_only=True,
        module=__name__,
    )


class DeleteMessage(_Request, kw_only=True):
    messageId: Id
    userId: Id | None = None


def _sidecar_edit_model(max_length: int) -> type[Struct]:
    return msgspec.defstruct(
        "SidecarEditBody",
        [("content", message_content(max_length)), ("username", Username)],
        bases=(_Request,),
        kw_only=True,
        module=__name__,
    )


class SidecarMessagePath(_Request, kw_only=True):
    messageId: Annotated[Id, Meta(description="the message id")]


class SidecarDeleteQuery(_Request, kw_only=True):
    username: Annotated[Username, Meta(description="who deletes; absent: the service, any message")] | None = None


SEARCH_MIN, SEARCH_MAX, SEARCH_DEFAULT_LIMIT, SEARCH_MAX_LIMIT = 2, 200, 20, 100


class SearchQuery(_Request, kw_only=True):
    q: Annotated[str, Meta(min_length=SEARCH_MIN, max_length=SEARCH_MAX, description="the text to find, literally")]
    chatroomId: Annotated[Id, Meta(description="only this room")] | None = None
    beforeId: Annotated[Id, Meta(description="messages older than this id")] | None = None
    limit: Annotated[int, Meta(ge=1, le=SEARCH_MAX_LIMIT, description="at most this many (default 20)")] | None = None


edit_message_model = cache(_edit_message_model)
sidecar_edit_model = cache(_sidecar_edit_model)
send_message_model = cache(_send_message_model)
sidecar_message_model = cache(_sidecar_message_model)
history_query_model = cache(_history_query_model)

# --- responses ---------------------------------------------------------------------------------------------------


class _Response(Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of response models: every field present (unless optional), nothing else."""


class Error(_Response, kw_only=True):
    statusCode: int
    message: Annotated[str, Meta(min_length=1)]
    error: Annotated[str, Meta(min_length=1)]


class User(_Response, kw_only=True):
    """A user's whole profile, as the user themselves (and the trusted sidecar API) see it."""

    id: int
    username: str
    nickName: str
    email: str
    headPic: str
    createTime: Time


class Profile(_Response, kw_only=True):
    """Another user as the caller sees them: the email only if they are the caller or a friend of the caller."""

    id: int
    username: str
    nickName: str
    email: Annotated[str, Meta(description="present only for the caller and the caller's friends")] | UnsetType = UNSET
    headPic: str
    createTime: Time


class PublicUser(_Response, kw_only=True):
    """What anyone may see of a user, as messages and friend requests show them: no email."""

    id: int
    username: str
    nickName: str
    headPic: str
    createTime: Time


class Friend(_Response, kw_only=True):
    id: int
    username: str
    nickName: str
    email: str
    headPic: str


class Message(_Response, kw_only=True):
    id: int
    content: str
    type: Annotated[Literal[0, 1, 2], Meta(description="0 text, 1 image, 2 file")]
    chatroomId: int
    senderId: int
    system: Annotated[bool, Meta(description="true only for a system message (sent by the service)")]
    clientMsgId: str | None
    createTime: Time
    updateTime: Time
    editedAt: Annotated[Time | None, Meta(description="when the content was last edited; null if never")]
    sender: PublicUser


class DeletedMessage(_Response, kw_only=True):
    id: int
    chatroomId: int
    senderId: int
    createTime: Time
    sender: PublicUser
    deleted: Literal[True]
    content: Literal[""]
    type: Annotated[Literal[0, 1, 2], Meta(description="0 text, 1 image, 2 file")]


class DeletedAck(_Response, kw_only=True):
    id: int
    chatroomId: int
    deleted: Literal[True]


class RoomSummary(_Response, kw_only=True):
    id: int
    name: Annotated[str, Meta(description="a one-to-one room is named after the other member")]
    type: Annotated[bool, Meta(description="true for a group")]
    createTime: Time
    userCount: int
    userIds: list[int]
    lastReadId: Annotated[int, Meta(description="the newest message the caller has read; 0 if none")]
    unreadCount: Annotated[int, Meta(description="messages by others after lastReadId")]
    lastMessage: Annotated[Message | None, Meta(description="the room's newest message; null if it has none")]


class Room(_Response, kw_only=True):
    id: int
    name: str
    type: Annotated[bool, Meta(description="true for a group")]
    createTime: Time
    updateTime: Time
    users: list[Member]


class FriendRequest(_Response, kw_only=True):
    id: int
    fromUserId: int
    toUserId: int
    reason: str
    status: Annotated[Literal[0, 1, 2], Meta(description="0 pending, 1 agreed, 2 rejected")]
    createTime: Time
    updateTime: Time


class FriendRequestToMe(FriendRequest, kw_only=True):
    fromUser: PublicUser


class FriendRequestFromMe(FriendRequest, kw_only=True):
    toUser: PublicUser


class FriendRequestList(_Response, kw_only=True):
    toMe: list[FriendRequestToMe]
    fromMe: list[FriendRequestFromMe]


class Favorite(_Response, kw_only=True):
    id: int
    chatHistoryId: int
    userId: int
    createTime: Time


class FavoriteWithMessage(Favorite, kw_only=True):
    chatHistory: Message


class LoginResult(_Response, kw_only=True):
    user: User
    token: str


class SidecarUserResult(_Response, kw_only=True):
    user: User
    created: bool


class SidecarTokenResult(_Response, kw_only=True):
    token: str
    expiresIn: int
    user: User


class SidecarRoomResult(_Response, kw_only=True):
    room: Room
    created: bool


class SidecarAddedResult(_Response, kw_only=True):
    room: Room
    added: list[int]


class SidecarRemovedResult(_Response, kw_only=True):
    room: Room
    removed: list[int]


class Status(_Response, kw_only=True):
    status: str


class ReadReceipt(_Response, kw_only=True):
    userId: int
    lastReadId: Annotated[int, Meta(description="the newest message this member has read; 0 if none")]


class ReadPosition(_Response, kw_only=True):
    chatroomId: int
    userId: int
    lastReadId: int


# --- files (chatsvc/http/files.py) -------------------------------------------------------------------------------

# An object name for GET /minio/presignedUrl: S3 allows keys of up to 1024 bytes.
OBJECT_NAME_MAX = 1024
ObjectName = Annotated[str, Meta(min_length=1, max_length=OBJECT_NAME_MAX)]
FileName = Annotated[str, Meta(pattern="^[0-9a-f]{32}$", description="the name an upload answered")]


class FilePath(_Request, kw_only=True):
    name: FileName


class PresignedUrlQuery(_Request, kw_only=True):
    name: Annotated[ObjectName, Meta(description="the object name in the bucket")]


class Upload(_Response, kw_only=True):
    """A stored upload: where to fetch it, and what it turned out to be."""

    url: Annotated[str, Meta(description="the file's URL: GET it, or send it as an image/file message or headPic")]
    name: Annotated[str, Meta(description="the unguessable name in the URL (128 random bits)")]
    size: Annotated[int, Meta(ge=1, description="bytes")]
    contentType: Annotated[str, Meta(description="decided from the file's first bytes, not from the client")]


RESPONSE_MODELS: tuple[type[Struct], ...] = (
    Error,
    User,
    Profile,
    PublicUser,
    Friend,
    Message,
    DeletedMessage,
    DeletedAck,
    RoomSummary,
    Room,
    ReadReceipt,
    FriendRequest,
    FriendRequestList,
    Favorite,
    FavoriteWithMessage,
    Upload,
)

# --- presence and group roles (issue 15) ------------------------------------------------------------------------

# Most user ids one GET /user/presence names.
MAX_PRESENCE_IDS = 100
RoleName = Annotated[Literal["owner", "admin", "member"], Meta(extra={"order": ("owner", "admin", "member")})]


class SetRoleQuery(_Request, kw_only=True):
    userId: Id
    role: Annotated[Literal["admin", "member"], Meta(extra={"order": ("admin", "member")})]


class PresenceQuery(_Request, kw_only=True):
    ids: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_PRESENCE_IDS * 20,
            pattern=r"^[0-9]+(,[0-9]+)*$",
            description=f"comma-separated user ids, at most {MAX_PRESENCE_IDS}",
        ),
    ]


class SidecarPresenceQuery(_Request, kw_only=True):
    """The query of GET /sidecar/v1/presence: ``?username=`` repeated."""

    username: Annotated[
        QueryUsernames,
        Meta(description=f"repeat for several users (at most {MAX_QUERY_USERNAMES}, to keep the URL short)"),
    ]


class Member(Profile, kw_only=True):
    """A member of a room as /chatroom/members lists them: the profile and the role."""

    role: Annotated[RoleName, Meta(description="owner, admin or member; one-to-one rooms have members only")]


class Presence(_Response, kw_only=True):
    id: int
    online: bool
    lastSeen: Annotated[str, Meta(description="when the user came online or went offline")] | None


class SidecarPresence(Presence, kw_only=True):
    username: str


class RoleResult(_Response, kw_only=True):
    chatroomId: int
    userId: int
    role: RoleName


PRESENCE_MODELS: tuple[type[Struct], ...] = (Member, Presence, SidecarPresence, RoleResult)


def parse_id_list(raw: str) -> list[int]:
    """The ids of a validated comma-separated list, without repeats; BadRequest past the limits."""
    if not re.fullmatch(r"[0-9]+(,[0-9]+)*", raw):
        raise BadRequest("ids must be user ids separated by commas")
    ids = list(dict.fromkeys(int(part) for part in raw.split(",")))
    if len(ids) > MAX_PRESENCE_IDS:
        raise BadRequest(f"ids must name at most {MAX_PRESENCE_IDS} users")
    if any(not 1 <= user_id <= MAX_ID for user_id in ids):
        raise BadRequest(f"ids must be between 1 and {MAX_ID}")
    return ids


# --- OpenAPI -----------------------------------------------------------------------------------------------------

REF_TEMPLATE = "#/components/schemas/{name}"


def _openapi_3_0(schema: Any) -> Any:
    """A msgspec JSON Schema (2020-12) rewritten for OpenAPI 3.0: ``nullable`` instead of a ``null`` branch."""
    if isinstance(schema, list):
        return [_openapi_3_0(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _openapi_3_0(value) for key, value in schema.items() if key != "title"}
    branches = schema.get("anyOf")
    if branches is not None:
        rest = [branch for branch in branches if branch != {"type": "null"}]
        if len(rest) < len(branches):
            del schema["anyOf"]
            if len(rest) == 1 and "$ref" not in rest[0]:
                schema = {**rest[0], **schema, "nullable": True}
            else:
                schema = {**schema, "anyOf": rest, "nullable": True}
    if "$ref" in schema and len(schema) > 1:
        # OpenAPI 3.0 ignores siblings of $ref: wrap it.
        ref = schema.pop("$ref")
        schema = {"allOf": [{"$ref": ref}], **schema}
    if schema.get("type") == "object" and "properties" in schema:
        schema.setdefault("required", [])
    if "enum" in schema and "type" not in schema:
        if all(type(v) is int for v in schema["enum"]):
            schema["type"] = "integer"
        elif all(type(v) is str for v in schema["enum"]):
            schema["type"] = "string"
    return schema


def schema_components(*types: Any) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """OpenAPI 3.0 schemas of ``types`` (in order) and the components they refer to."""
    schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    return [_openapi_3_0(s) for s in schemas], {name: _openapi_3_0(s) for name, s in components.items()}


def schema_of(tp: Any) -> dict[str, Any]:
    """The inline OpenAPI 3.0 schema of a plain (non-Struct) type, such as a query parameter's."""
    schemas, components = schema_components(tp)
    assert not components, "schema_of is for types without components"
    return schemas[0]


@dataclass(frozen=True)
class Parameter:
    """One field of a query or path model, as the OpenAPI document describes a parameter."""

    name: str
    required: bool
    schema: dict[str, Any]
    description: str | None
    repeated: bool


def parameters_of(model: type[Struct]) -> list[Parameter]:
    """The fields of a query or path model in order, each with the schema of its type (``None`` left out)."""
    hints = get_type_hints(model, include_extras=True)
    info = msgspec.inspect.type_info(model)
    assert isinstance(info, msgspec.inspect.StructType)
    found = []
    for field in info.fields:
        tp = hints[field.name]
        if get_origin(tp) in (Union, UnionType):
            kept = [arg for arg in get_args(tp) if arg is not type(None)]
            assert len(kept) == 1, f"{field.name}: one type besides None"
            tp = kept[0]
        schema = schema_of(tp)
        description = schema.pop("description", None)
        found.append(Parameter(field.encode_name, field.required, schema, description, schema.get("type") == "array"))
    return found


# --- validation --------------------------------------------------------------------------------------------------

T = TypeVar("T", bound=Struct)


@dataclass(frozen=True)
class _Check:
    """One field of a model, compiled from its type for the field-by-field walk."""

    name: str
    label: str
    kind: str  # "int" | "str" | "bool" | "enum" | "struct" | "list"
    required: bool
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    blank: bool = False
    email: bool = False
    choices: tuple[Any, ...] = ()
    model: Any = None
    item: _Check | None = None


def object_payload(data: Any, what: str = "payload") -> dict[str, Any]:
    """The payload itself if it is a JSON object."""
    if not isinstance(data, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return data


def _compile(name: str, label: str, info: msgspec.inspect.Type, required: bool, default: Any) -> _Check:
    if isinstance(info, msgspec.inspect.UnionType):
        kept = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        assert len(kept) == 1, f"{name}: one type besides None"
        info = kept[0]
    extra: dict[str, Any] = {}
    json_extra: dict[str, Any] = {}
    if isinstance(info, msgspec.inspect.Metadata):
        extra, json_extra, info = info.extra or {}, info.extra_json_schema or {}, info.type
    label = extra.get(LABEL, label)
    common: dict[str, Any] = {"name": name, "label": label, "required": required, "default": default}
    if isinstance(info, msgspec.inspect.IntType):
        return _Check(kind="int", minimum=info.ge, maximum=info.le, **common)
    if isinstance(info, msgspec.inspect.StrType):
        return _Check(
            kind="str",
            min_length=info.min_length,
            max_length=info.max_length,
            blank=bool(extra.get(BLANK)),
            email=json_extra.get("format") == "email",
            **common,
        )
    if isinstance(info, msgspec.inspect.BoolType):
        return _Check(kind="bool", **common)
    if isinstance(info, msgspec.inspect.LiteralType):
        # msgspec sorts a Literal's values; errors list them in the order the model declares.
        declared = tuple(extra.get("order", ())) or tuple(info.values)
        return _Check(kind="enum", choices=declared, **common)
    if isinstance(info, msgspec.inspect.StructType):
        return _Check(kind="struct", model=info.cls, **common)
    if isinstance(info, msgspec.inspect.ListType):
        item = _compile(name, f"{label}[]", info.item_type, True, None)
        return _Check(kind="list", min_length=info.min_length, max_length=info.max_length, item=item, **common)
    raise TypeError(f"{name}: no validator for {info!r}")


@cache
def _checks(model: type[Struct]) -> tuple[_Check, ...]:
    info = msgspec.inspect.type_info(model)
    assert isinstance(info, msgspec.inspect.StructType)
    checks = []
    for field in info.fields:
        default = field.default if field.default is not msgspec.NODEFAULT else None
        checks.append(_compile(field.encode_name, field.encode_name, field.type, field.required, default))
    return tuple(checks)


def _check_text(check: _Check, value: str) -> str:
    """The checks a JSON schema does not express, in the order clients have always seen."""
    if not check.blank and not value.strip():
        raise BadRequest(f"{check.label} must not be empty")
    if check.max_length is not None and len(value) > check.max_length:
        raise BadRequest(f"{check.label} must be at most {check.max_length} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{check.label} contains invalid unicode (lone surrogates)") from None
    if "\x00" in value:  # PostgreSQL's text cannot hold it: refused on both engines alike
        raise BadRequest(f"{check.label} must not contain the NUL character")
    if check.email and not EMAIL_RE.match(value):
        raise BadRequest(f"{check.label} is not a valid email address")
    if check.min_length is not None and check.min_length > 1 and len(value) < check.min_length:
        raise BadRequest(f"{check.label} must be at least {check.min_length} characters")
    return value


def _walk_value(check: _Check, value: Any) -> Any:
    """A present, non-null value checked against its field; BadRequest naming the first fault."""
    if check.kind == "int":
        if type(value) is not int:
            raise BadRequest(f"{check.label} must be an integer")
        return check_range(value, check.label, check.minimum, check.maximum)
    if check.kind == "str":
        if not isinstance(value, str):
            raise BadRequest(f"{check.label} must be a string")
        return _check_text(check, value)
    if check.kind == "bool":
        if not isinstance(value, bool):
            raise BadRequest(f"{check.label} must be a boolean")
        return value
    if check.kind == "enum":
        if value not in check.choices or type(value) is not type(check.choices[0]):
            raise BadRequest(f"{check.label} must be one of: {', '.join(map(str, check.choices))}")
        return value
    if check.kind == "struct":
        return _walk(check.model, object_payload(value, check.label))
    assert check.kind == "list" and check.item is not None
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{check.label} must be a non-empty array of usernames")
    if check.max_length is not None and len(value) > check.max_length:
        raise BadRequest(f"{check.label} may name at most {check.max_length} users")
    return [_walk_value(check.item, item) for item in value]


def _walk(model: type[T], data: dict[str, Any]) -> T:
    values = {}
    for check in _checks(model):
        value = data.get(check.name)
        if value is None:
            if check.required:
                if check.kind == "enum":
                    raise BadRequest(f"{check.label} must be one of: {', '.join(map(str, check.choices))}")
                if check.kind == "struct":
                    raise BadRequest(f"{check.label} must be a JSON object")
                if check.kind == "list":
                    raise BadRequest(f"{check.label} must be a non-empty array of usernames")
                raise BadRequest(f"{check.label} is required")
            values[check.name] = check.default
            continue
        values[check.name] = _walk_value(check, value)
    return model(**values)


# One text field a converted model still needs looked at: how to reach it, and its check.
_TextRule = tuple[Callable[[Any], Any], _Check, bool]
_PLANS: dict[type[Struct], tuple[_TextRule, ...]] = {}


def _text_rules(model: type[Struct], prefix: str = "") -> list[_TextRule]:
    """Every string (or list of strings) of a model and its nested models, reached by a dotted attribute path."""
    rules: list[_TextRule] = []
    for check in _checks(model):
        path = prefix + check.name
        if check.kind == "str":
            rules.append((attrgetter(path), check, False))
        elif check.kind == "struct":
            rules.extend(_text_rules(check.model, path + "."))
        elif check.kind == "list" and check.item is not None and check.item.kind == "str":
            rules.append((attrgetter(path), check.item, True))
    return rules


def _post_plan(model: type[Struct]) -> tuple[_TextRule, ...]:
    """The text fields :func:`_post_check` must look at, flattened once per model."""
    # A plain dict, not functools.cache: this runs for every sendMessage.
    found = _PLANS.get(model)
    if found is None:
        found = _PLANS[model] = tuple(_text_rules(model))
    return found


def _post_text(check: _Check, value: str) -> None:
    # convert checked type and length already; ASCII has no blank-only surprises beyond strip, nor surrogates.
    if not check.blank and not value.strip():
        raise BadRequest(f"{check.label} must not be empty")
    if not value.isascii() or check.email or (check.min_length or 0) > 1 or "\x00" in value:
        _check_text(check, value)


def _post_check(model: type[Struct], obj: Struct) -> None:
    """The string rules of a model that ``msgspec.convert`` cannot check, on a converted value."""
    for get, check, is_list in _post_plan(model):
        try:
            value = get(obj)
        except AttributeError:  # an optional nested model that is absent
            continue
        if value is None:
            continue
        if is_list:
            for item in value:
                _post_text(check, item)
        else:
            _post_text(check, value)


def check_range(value: int, name: str, minimum: int | None, maximum: int | None) -> int:
    """``value`` if it lies within the bounds; BadRequest naming them otherwise."""
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise BadRequest(f"{name} must be an integer between {minimum} and {maximum}")
    return value


def validate(model: type[T], data: Any, what: str = "payload") -> T:
    """``data`` as an instance of ``model``, or BadRequest naming the first bad field as the API always has."""
    if type(data) is not dict:
        data = object_payload(data, what)
    try:
        obj = msgspec.convert(data, model)
    except msgspec.ValidationError:
        # Refused: walk the fields in order to name the first fault with the usual text. The walk
        # is also the judge: it lets null stand for "absent", which convert does not.
        return _walk(model, data)
    _post_check(model, obj)
    return obj


# A JSON decoder per model and whether the model has text rules for _post_check, made on first use
# (validate_json runs for every event taken as its frame is read).
_DECODERS: dict[type[Any], tuple[msgspec.json.Decoder[Any], bool]] = {}


def validate_json(model: type[T], text: str, loads: Callable[[str], Any]) -> T | None:
    """A payload's JSON text as an instance of ``model``: what ``validate(model, loads(text))`` answers, in one step.

    Returns None, checking nothing, if ``text`` is not JSON (``loads`` raises
    ValueError); otherwise the instance, or BadRequest with ``validate``'s text.
    A payload that fits the model is decoded and checked in one call of
    msgspec's decoder, without a dict in between (the same limits, read from
    the same annotations); any other goes through ``loads`` and
    :func:`validate`, so refusals keep their texts exactly.
    """
    found = _DECODERS.get(model)
    if found is None:
        found = _DECODERS[model] = (msgspec.json.Decoder(model), bool(_post_plan(model)))
    decoder, has_text_rules = found
    try:
        obj = decoder.decode(text)
    except msgspec.DecodeError:  # ValidationError too
        try:
            data = loads(text)
        except ValueError:
            return None
        return validate(model, data)
    if has_text_rules:
        _post_check(model, obj)
    return obj


_DIGITS_RE = re.compile(r"^[+-]?[0-9]{1,19}$")


def _parse_param(check: _Check, raw: str) -> Any:
    """An integer parameter's text as an int (None when blank, so it counts as absent); other text as it is."""
    if check.kind != "int":
        return raw
    if not raw.strip():
        return None
    if not _DIGITS_RE.match(raw.strip()):
        raise BadRequest(f"{check.label} must be an integer")
    return int(raw)


def validate_params(model: type[T], params: Mapping[str, str]) -> T:
    """Query or path parameters (``request.query``, ``request.match_info``) as an instance of ``model``.

    Integers are parsed from their text first; then every field is checked as
    body fields are, with the same error texts.
    """
    getall = getattr(params, "getall", None)
    values: dict[str, Any] = {}
    for check in _checks(model):
        if check.kind == "list":
            values[check.name] = getall(check.name, []) if getall is not None else params.get(check.name)
            continue
        raw = params.get(check.name)
        values[check.name] = None if raw is None else _parse_param(check, raw)
    return _walk(model, values)


def field_check(model: type[Struct], name: str) -> _Check:
    """The compiled check of one field of a model."""
    for check in _checks(model):
        if check.name == name:
            return check
    raise KeyError(name)


def validate_field(model: type[Struct], name: str, value: Any, *, label: str | None = None) -> Any:
    """One field of ``model`` checked on its own (a query parameter, a CLI argument); None stays None if optional."""
    check = field_check(model, name)
    if label is not None:
        check = _Check(**{**check.__dict__, "label": label})
    if value is None:
        if check.required:
            raise BadRequest(f"{check.label} is required")
        return None
    return _walk_value(check, value)
