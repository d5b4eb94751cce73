"""The Socket.IO side: connect with a token, joinRoom, sendMessage, leaveRoom.

A message goes in through ``on_sendMessage``: validated, checked against the
room's membership, stored in one transaction, then broadcast to the room as
``message`` and acknowledged to the sender with the stored row.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import socketio

from chatsvc.auth import bearer_token
from chatsvc.errors import BadRequest, ChatError, Forbidden, Unauthorized
from chatsvc.state import AppState
from chatsvc.store.messages import MESSAGE_TYPES, insert_message
from chatsvc.store.rooms import is_member
from chatsvc.validation import int_field, object_payload, text_field

log = logging.getLogger(__name__)

# Whether the event being handled came with an acknowledgement callback.
# python-socketio does not tell handlers, so the server sets it per event.
_ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested", default=False)


class ChatSocketServer(socketio.AsyncServer):
    """An AsyncServer that lets handlers know whether the client wants an ack."""

    async def _handle_event_internal(  # type: ignore[no-untyped-def]
        self, server, sid, eio_sid, data, namespace, id
    ):
        _ack_requested.set(id is not None)
        return await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)


def room_name(chatroom_id: int) -> str:
    """The Socket.IO room of a chat room: its id as a string, as the original named it."""
    return str(chatroom_id)


def user_room(user_id: int) -> str:
    """The Socket.IO room holding every socket of one user."""
    return f"user:{user_id}"


def _token_from_handshake(environ: Mapping[str, Any], auth: Any) -> str | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str) and auth["token"]:
        token: str = auth["token"]
        return bearer_token(token) or token
    header = bearer_token(environ.get("HTTP_AUTHORIZATION"))
    if header:
        return header
    query = parse_qs(environ.get("QUERY_STRING", ""))
    return query.get("token", [None])[0] or None


class ChatNamespace(socketio.AsyncNamespace):
    """Handlers of the default namespace; event names are the protocol's."""

    def __init__(self, state: AppState) -> None:
        super().__init__("/")
        self.state = state
        # sid -> user id, or None for a trusted-client socket that sent no token.
        self._users: dict[str, int | None] = {}
        # Serialises store-then-broadcast so members see messages in id order.
        self._send_lock = asyncio.Lock()

    # -- connection -------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Authenticate the handshake or refuse it with a clear message."""
        token = _token_from_handshake(environ, auth)
        if token is None:
            if self.state.config.socket_auth == "trust-client":
                self._users[sid] = None
                return
            raise socketio.exceptions.ConnectionRefusedError("Authentication required: connect with auth {token}")
        try:
            found = await self.state.authenticate(token)
        except Unauthorized as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
        self._users[sid] = found.id
        await self.enter_room(sid, user_room(found.id))

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        """Forget the socket."""
        self._users.pop(sid, None)

    # -- events -----------------------------------------------------------

    async def on_joinRoom(self, sid: str, data: Any = None) -> Any:
        """Join a room the user is a member of; the room hears ``joinRoom``."""
        return await self._answer(sid, self._join_room(sid, data))

    async def on_sendMessage(self, sid: str, data: Any = None) -> Any:
        """Store a message and broadcast it to the room."""
        return await self._answer(sid, self._send_message(sid, data))

    async def on_leaveRoom(self, sid: str, data: Any = None) -> Any:
        """Stop receiving a room's messages."""
        return await self._answer(sid, self._leave_room(sid, data))

    async def _answer(self, sid: str, work: Any) -> Any:
        """Run an event; a failure goes to the ack if there is one, else as ``exception``."""
        try:
            return await work
        except ChatError as exc:
            error = exc
        except Exception:
            log.exception("unhandled error in socket event from %s", sid)
            error = ChatError("Internal server error")
        if _ack_requested.get():
            return error.body()
        await self.emit("exception", {"status": "error", "message": error.message}, to=sid)
        return None

    def _acting_user(self, sid: str, claimed: int | None) -> int:
        """The user an event acts as: the token's, which a claimed id must match."""
        if sid not in self._users:
            raise Unauthorized("Not connected")
        user_id = self._users[sid]
        if user_id is None:  # trust-client mode: the payload names the user
            if claimed is None:
                raise BadRequest("userId is required")
            return claimed
        if claimed is not None and claimed != user_id:
            raise Forbidden("The user in the payload is not the logged-in user")
        return user_id

    async def _require_member(self, user_id: int, chatroom_id: int) -> None:
        if not await is_member(self.state.db.reader, user_id, chatroom_id):
            raise Forbidden("You are not a member of this chatroom")

    async def _join_room(self, sid: str, data: Any) -> dict[str, Any]:
        payload = object_payload(data)
        chatroom_id = int_field(payload, "chatroomId")
        assert chatroom_id is not None
        user_id = self._acting_user(sid, int_field(payload, "userId", required=False))
        await self._require_member(user_id, chatroom_id)
        await self.enter_room(sid, room_name(chatroom_id))
        await self.emit("message", {"type": "joinRoom", "userId": user_id}, room=room_name(chatroom_id))
        return {"chatroomId": chatroom_id}

    async def _leave_room(self, sid: str, data: Any) -> dict[str, Any]:
        payload = object_payload(data)
        chatroom_id = int_field(payload, "chatroomId")
        assert chatroom_id is not None
        if sid not in self._users:
            raise Unauthorized("Not connected")
        await self.leave_room(sid, room_name(chatroom_id))
        return {"chatroomId": chatroom_id}

    async def _send_message(self, sid: str, data: Any) -> dict[str, Any]:
        payload = object_payload(data)
        chatroom_id = int_field(payload, "chatroomId")
        assert chatroom_id is not None
        message = object_payload(payload.get("message"), "message")
        kind = message.get("type")
        if kind not in MESSAGE_TYPES:
            raise BadRequest("message.type must be one of: text, image, file")
        content = text_field(message, "content", max_length=self.state.config.message_max_length)
        user_id = self._acting_user(sid, int_field(payload, "sendUserId", required=False))
        await self._require_member(user_id, chatroom_id)
        async with self._send_lock:
            async with self.state.db.transaction() as conn:
                stored = await insert_message(
                    conn, chatroom_id=chatroom_id, sender_id=user_id, type=MESSAGE_TYPES[kind], content=content
                )
            await self.emit(
                "message",
                {"type": "sendMessage", "userId": user_id, "message": stored},
                room=room_name(chatroom_id),
            )
        return stored


def create_socket_server(state: AppState) -> ChatSocketServer:
    """The Socket.IO server of one application, with the chat namespace registered."""
    origins = state.config.cors_origins
    sio = ChatSocketServer(
        async_mode="aiohttp",
        cors_allowed_origins="*" if "*" in origins else list(origins),
        max_http_buffer_size=state.config.max_socket_payload,
        logger=False,
        engineio_logger=False,
    )
    sio.register_namespace(ChatNamespace(state))
    return sio
