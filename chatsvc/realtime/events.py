"""The Socket.IO event handlers: connect with a token, joinRoom, sendMessage, leaveRoom.

A message goes in through ``on_sendMessage`` (validated, rate limited,
checked against the room's membership), is stored by the MessageWriter
(chatsvc/writer.py), which hands it to the fan-out (chatsvc/fanout/) once it
is durable, and is acknowledged to the sender with the stored row. The
handlers talk to python-socketio through its public namespace API only;
what it lacks is in chatsvc/realtime/server.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import socketio

from chatsvc.auth import bearer_token
from chatsvc.config import Config
from chatsvc.errors import BadRequest, ChatError, Forbidden, TooManyRequests, Unauthorized
from chatsvc.fanout import MESSAGE_EVENT, message_event, room_name, user_room
from chatsvc.jsonutil import SocketJSON
from chatsvc.logs import log_socket_event
from chatsvc.membership import join_notice
from chatsvc.message_changes import change_delete, change_edit
from chatsvc.models import (
    DeleteMessage,
    JoinRoom,
    LeaveRoom,
    MarkRead,
    Typing,
    edit_message_model,
    send_message_model,
    validate,
    validate_json,
)
from chatsvc.realtime.server import TRANSPORT_FLUSH_SECONDS, ChatSocketServer, InlineAck, InlineHandler, ack_requested
from chatsvc.receipts import MarkDone
from chatsvc.state import AppState
from chatsvc.store.messages import MESSAGE_TYPES, list_history
from chatsvc.writer import Draft, WriterClosed

log = logging.getLogger(__name__)


def _token_from_handshake(environ: Mapping[str, Any], auth: Any) -> str | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str) and auth["token"]:
        token: str = auth["token"]
        return bearer_token(token) or token
    header = bearer_token(environ.get("HTTP_AUTHORIZATION"))
    if header:
        return header
    query = parse_qs(environ.get("QUERY_STRING", ""))
    return query.get("token", [None])[0] or None


# A recovering joinRoom costs one token more per this many messages it replays (docs/protocol.md).
RECOVERY_MESSAGES_PER_TOKEN = 50
# At most what one chat message takes in a send queue besides 4 bytes per character of content:
# ids, times, and the sender's profile (a head picture URL of up to 1,000 characters).
MESSAGE_OVERHEAD_BYTES = 6 * 1024

# Event names a client may not send: Socket.IO's own, which its client libraries reserve too, and the
# events chatsvc sends. None of them reaches a handler; above all not connect and disconnect, which
# python-socketio would otherwise hand to on_connect and on_disconnect like its own.
RESERVED_EVENTS = frozenset(
    {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
        "message",
        "exception",
        "serverShutdown",
    }
)
_LIFECYCLE_EVENTS = frozenset({"connect", "disconnect"})
SEND_MESSAGE = "sendMessage"


def recovery_limit(config: Config) -> int:
    """Most messages one recovery replays: CHATSVC_RECOVERY_LIMIT, but at most half of what a send queue holds.

    A replay goes through the socket's bounded send queue at once; were it
    bigger than the queue, the socket would be cut off by its own recovery.
    """
    # Queued, a message counts twice (chatsvc/realtime/engine.py packet_bytes): its text and its WebSocket frame.
    largest = 2 * (4 * config.message_max_length + MESSAGE_OVERHEAD_BYTES)
    return min(config.recovery_limit, config.socket_queue_packets // 2, config.socket_queue_bytes // 2 // largest)


class TokenBucket:
    """Allows ``rate`` events per second on average, ``burst`` at once; rate 0 allows everything."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one."""
        if self.rate <= 0:
            return True
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def charge(self, cost: float) -> None:
        """Spend ``cost`` tokens after the fact (work whose size was only known once done): may go into debt."""
        if self.rate > 0:
            self._refill()
            self.tokens -= cost

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now


@dataclass
class SocketSession:
    """What the server knows of one connected socket."""

    # None for a trusted-client socket that sent no token.
    user_id: int | None
    bucket: TokenBucket
    # markRead and typing: an allowance of their own, so a client marking each message it receives in a busy room
    # neither runs out nor uses up what sending and joining need (docs/protocol.md#rate-limit).
    receipts: TokenBucket
    # Told when a markRead without an ack could not be stored (made once, not per mark).
    mark_failed: MarkDone


class ChatNamespace(socketio.AsyncNamespace):
    """Handlers of the default namespace; event names are the protocol's."""

    def __init__(self, state: AppState) -> None:
        super().__init__("/")
        self.state = state
        self._sessions: dict[str, SocketSession] = {}
        self._sids_of_user: dict[int, set[str]] = {}
        # Sockets with a sendMessage taken inline and not answered yet (send_message_now).
        self._sending: set[str] = set()
        self.recovery_limit = recovery_limit(state.config)
        self._send_model = send_message_model(state.config.message_max_length)
        self.server: ChatSocketServer

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Dispatch an event to its handler, except a client's event under a reserved name: that gets a 400."""
        if event in RESERVED_EVENTS and self._sent_by_client(event, args[0]):
            return await self._answer(args[0], self._refuse_reserved(event))
        return await super().trigger_event(event, *args)

    def _sent_by_client(self, event: str, sid: str) -> bool:
        if event not in _LIFECYCLE_EVENTS:
            return True  # python-socketio itself triggers only connect and disconnect
        # python-socketio dispatches a client's event only for a connected socket, while it triggers
        # connect before the socket counts as connected and disconnect after it stopped counting
        # (AsyncServer._handle_connect without always_connect, _handle_disconnect and disconnect).
        return self.server.is_connected(sid, self.namespace)

    async def _refuse_reserved(self, event: str) -> None:
        raise BadRequest(f"{event} is a reserved event name")

    # -- connection -------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Authenticate the handshake or refuse it with a clear message."""
        config = self.state.config
        token = _token_from_handshake(environ, auth)
        user_id: int | None = None
        if token is None:
            if config.socket_auth != "trust-client":
                raise socketio.exceptions.ConnectionRefusedError("Authentication required: connect with auth {token}")
        else:
            try:
                user_id = (await self.state.authenticate(token)).id
            except Unauthorized as exc:
                raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
            sids = self._sids_of_user.setdefault(user_id, set())
            if len(sids) >= config.max_connections_per_user:
                raise socketio.exceptions.ConnectionRefusedError(
                    f"Too many connections for this user (at most {config.max_connections_per_user})"
                )
            sids.add(sid)
            await self.enter_room(sid, user_room(user_id))
        self._sessions[sid] = SocketSession(
            user_id,
            TokenBucket(config.rate_limit, config.rate_burst),
            TokenBucket(config.receipt_rate, config.receipt_burst),
            self._on_mark_failure(sid),
        )
        log_socket_event("connect", sid, user_id, environ)
        if user_id is not None:
            await self.state.presence.socket_connected(user_id)

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        """Forget the socket."""
        await self.state.typing.forget_socket(sid)
        session = self._sessions.pop(sid, None)
        if session is not None:
            log_socket_event("disconnect", sid, session.user_id, self.server.get_environ(sid), reason)
        if session is not None and session.user_id is not None:
            sids = self._sids_of_user.get(session.user_id)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self._sids_of_user[session.user_id]
            await self.state.presence.socket_disconnected(session.user_id)

    async def close(self, timeout: float = 5.0) -> None:
        """On shutdown: store and ack what was accepted, then tell every socket and disconnect it."""
        await self.state.writer.close()
        if not await self.server.wait_idle(timeout):
            log.warning("shutting down with socket events still in flight")
        for sid in list(self._sessions):
            await self.emit("serverShutdown", {"message": "The server is shutting down; reconnect shortly"}, to=sid)
            await self.server.disconnect(sid)
        # Socket.IO's disconnect leaves the Engine.IO transport open; close it so
        # the HTTP server has no long-lived request left to wait for.
        await self.server.close_transports(min(timeout, TRANSPORT_FLUSH_SECONDS))

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

    async def on_editMessage(self, sid: str, data: Any = None) -> Any:
        """Edit one's own text message; the room hears ``messageUpdated``."""
        return await self._answer(sid, self._edit_message(sid, data))

    async def on_deleteMessage(self, sid: str, data: Any = None) -> Any:
        """Delete one's own message; the room hears ``messageDeleted``."""
        return await self._answer(sid, self._delete_message(sid, data))

    async def on_markRead(self, sid: str, data: Any = None) -> Any:
        """Move the user's read position in a room; the room and the user's sockets hear ``read``.

        Most ``markRead`` events never get here: :meth:`mark_read_now` takes them
        as their frame is read. This is the path of the rest (long-polling
        clients, a room whose members are not cached yet, binary packets).
        """
        return await self._answer(sid, self._mark_read(sid, data))

    async def on_typing(self, sid: str, data: Any = None) -> Any:
        """Start or stop the user's typing in a room; the room's other sockets hear ``typing``.

        As with ``markRead``, most arrive through :meth:`typing_now` instead.
        """
        return await self._answer(sid, self._typing(sid, data))

    def inline_handlers(self) -> dict[str, tuple[InlineHandler, bool]]:
        """The events the socket server hands over as their frame is read, and whether each waits its turn
        behind the socket's events on the full path (ChatSocketServer.handle_inline)."""
        return {
            "sendMessage": (self.send_message_now, True),
            "markRead": (self.mark_read_now, False),
            "typing": (self.typing_now, False),
        }

    async def _answer(self, sid: str, work: Any) -> Any:
        """Run an event; a failure goes to the ack if there is one, else as ``exception``."""
        try:
            return await work
        except ChatError as exc:
            error = exc
        except Exception:
            log.exception("unhandled error in socket event from %s", sid)
            error = ChatError("Internal server error")
        if ack_requested():
            return error.body()
        await self.emit("exception", {"status": "error", "message": error.message}, to=sid)
        return None

    def _session(self, sid: str) -> SocketSession:
        session = self._sessions.get(sid)
        if session is None:
            raise Unauthorized("Not connected")
        return session

    def _acting_user(self, sid: str, claimed: int | None, field: str) -> int:
        """The user an event acts as: the token's, which a claimed id must match."""
        user_id = self._session(sid).user_id
        if user_id is None:  # trust-client mode: the payload names the user
            if claimed is None:
                raise BadRequest(f"{field} is required")
            return claimed
        if claimed is not None and claimed != user_id:
            raise Forbidden(f"{field} is not the logged-in user")
        return user_id

    async def _require_member(self, user_id: int, chatroom_id: int) -> None:
        if not await self.state.members.is_member(self.state.db.reader, user_id, chatroom_id):
            raise Forbidden("You are not a member of this chatroom")

    async def _join_room(self, sid: str, data: Any) -> dict[str, Any]:
        session = self._session(sid)
        join = validate(JoinRoom, data)
        chatroom_id, last_id = join.chatroomId, join.lastMessageId
        user_id = self._acting_user(sid, join.userId, "userId")
        # Joins share the socket's allowance with sends; a recovery pays for what it replays, below.
        if not session.bucket.take():
            raise TooManyRequests("Joining too fast: slow down")
        await self._require_member(user_id, chatroom_id)
        if self._session(sid).user_id is None:
            # A trusted-client socket is known by user from its first join on, so
            # a later quit can take it out of the room like any other socket.
            await self.enter_room(sid, user_room(user_id))
        room = room_name(chatroom_id)
        notice = join_notice(user_id)
        if last_id is None:
            await self.enter_room(sid, room)
            await self.state.fanout.notify(room, notice)
            return {"chatroomId": chatroom_id}

        async def join_and_catch_up() -> dict[str, Any]:
            # Between write batches, so no batch is being stored or handed to the fan-out: this read
            # holds every message handed over before the point below and none handed over after it.
            limit = self.recovery_limit
            missed = await list_history(self.state.db.reader, chatroom_id, limit=limit + 1, after_id=last_id)
            recovered = len(missed) <= limit
            if recovered:
                session.bucket.charge(len(missed) / RECOVERY_MESSAGES_PER_TOKEN)

            async def enter_and_catch_up() -> None:
                # At that point of the stream: older deliveries passed before the socket entered, newer ones
                # follow the catch-up (with several instances, the point where the marker comes back).
                await self.enter_room(sid, room)
                await self.emit(MESSAGE_EVENT, notice, to=sid)
                for message in missed if recovered else ():
                    await self.emit(MESSAGE_EVENT, message_event(message), to=sid)

            await self.state.fanout.run_in_stream(enter_and_catch_up)
            await self.state.fanout.notify(room, notice, skip_sid=sid)
            if not recovered:
                return {"chatroomId": chatroom_id, "recovered": False}
            return {"chatroomId": chatroom_id, "recovered": True, "count": len(missed)}

        return await self.state.writer.run_between_batches(join_and_catch_up)

    async def _leave_room(self, sid: str, data: Any) -> dict[str, Any]:
        chatroom_id = validate(LeaveRoom, data).chatroomId
        self._session(sid)
        await self.leave_room(sid, room_name(chatroom_id))
        await self.state.typing.forget_socket(sid, chatroom_id)
        return {"chatroomId": chatroom_id}

    async def _send_message(self, sid: str, data: Any) -> dict[str, Any]:
        session = self._session(sid)
        send: Any = validate(self._send_model, data)
        chatroom_id, kind, content = send.chatroomId, MESSAGE_TYPES[send.message.type], send.message.content
        client_msg_id = send.clientMsgId
        user_id = self._acting_user(sid, send.sendUserId, "sendUserId")
        if not session.bucket.take():
            raise TooManyRequests("Sending too fast: slow down")
        await self._require_member(user_id, chatroom_id)
        stored, _ = await self.state.writer.submit(Draft(chatroom_id, user_id, kind, content, client_msg_id))
        await self.state.typing.stop(user_id, chatroom_id)
        return stored

    async def _edit_message(self, sid: str, data: Any) -> dict[str, Any]:
        session = self._session(sid)
        edit: Any = validate(edit_message_model(self.state.config.message_max_length), data)
        user_id = self._acting_user(sid, edit.userId, "userId")
        if not session.bucket.take():
            raise TooManyRequests("Editing too fast: slow down")
        # Membership, sender and window are checked with the change, in its transaction (chatsvc/message_changes.py).
        return await change_edit(self.state, user_id, edit.messageId, edit.content)

    async def _delete_message(self, sid: str, data: Any) -> dict[str, Any]:
        session = self._session(sid)
        delete = validate(DeleteMessage, data)
        user_id = self._acting_user(sid, delete.userId, "userId")
        if not session.bucket.take():
            raise TooManyRequests("Deleting too fast: slow down")
        return await change_delete(self.state, user_id, delete.messageId)

    # -- read positions and typing (chatsvc/receipts.py) --------------------
    #
    # Each is one check sequence, run by two callers: the full path (on_markRead / on_typing, a task per event
    # and the usual answer) and the inline one (mark_read_now / typing_now, called by the socket server as the
    # frame is read, without a task). A client marking every message it receives sends as many events as its
    # rooms carry messages; through the full path each cost several times what delivering a message does.

    async def _mark_read(self, sid: str, data: Any) -> dict[str, Any]:
        self._session(sid)
        mark = validate(MarkRead, data)
        user_id = self._take_receipt_token(sid, mark.userId, "Marking read too fast: slow down")
        await self._require_member(user_id, mark.chatroomId)
        last_read_id = await self.state.reads.mark(user_id, mark.chatroomId, mark.messageId)
        return {"chatroomId": mark.chatroomId, "lastReadId": last_read_id}

    async def _typing(self, sid: str, data: Any) -> dict[str, Any]:
        self._session(sid)
        typing = validate(Typing, data)
        user_id = self._take_receipt_token(sid, typing.userId, "Typing notices too fast: slow down")
        await self._require_member(user_id, typing.chatroomId)
        self.state.typing.update(sid, user_id, typing.chatroomId, typing.typing)
        return {}

    def _take_receipt_token(self, sid: str, claimed: int | None, refusal: str) -> int:
        """The acting user of a markRead or typing, once it has taken a token from the socket's receipt allowance."""
        user_id = self._acting_user(sid, claimed, "userId")
        if not self._session(sid).receipts.take():
            raise TooManyRequests(refusal)
        return user_id

    def _inline_member(
        self,
        sid: str,
        session_user: int | None,
        claimed: int | None,
        field: str,
        members: frozenset[int],
        allowance: TokenBucket,
        too_fast: str,
    ) -> int:
        """The acting user of an event taken inline, after the full path's checks in its order.

        Who acts (the socket's user, or a claim: trust-client mode), then the
        socket's allowance, then membership of the room.
        """
        user_id = session_user
        if user_id is None or (claimed is not None and claimed != user_id):
            user_id = self._acting_user(sid, claimed, field)  # trust-client mode, or a claim
        if not allowance.take():
            raise TooManyRequests(too_fast)
        if user_id not in members:
            raise Forbidden("You are not a member of this chatroom")
        return user_id

    def send_message_now(self, sid: str, text: str, ack: InlineAck | None) -> bool:
        """``sendMessage`` as its frame is read: the full path's checks in its order and its answers; False = not here.

        The message goes to the writer at once and the ack follows when the
        writer has stored it, from a callback on the writer's future instead
        of a task per event. Declined, for the full path to handle, only before
        anything happened: for a socket without a session, a payload that is no
        JSON, a room whose members are not in the cache (the full path loads
        them), or while an earlier send of the socket taken here waits for its
        ack. python-socketio's path handles a socket's events one after the
        other, each once the one before is answered; so a client that sends
        without waiting still has its sends stored one or two at a time, not in
        one burst that could fill a slow reader's queue at once.
        """
        session = self._sessions.get(sid)
        sending = self._sending
        if session is None or sid in sending:
            return False
        started = time.perf_counter()
        try:
            send: Any = validate_json(self._send_model, text, SocketJSON.loads)
            if send is None:
                return False
            chatroom_id = send.chatroomId
            members = self.state.members.cached(chatroom_id)
            if members is None:
                return False
            message = send.message
            kind = MESSAGE_TYPES[message.type]
            user_id = self._inline_member(
                sid,
                session.user_id,
                send.sendUserId,
                "sendUserId",
                members,
                session.bucket,
                "Sending too fast: slow down",
            )
            stored = self.state.writer.submit_soon(Draft(chatroom_id, user_id, kind, message.content, send.clientMsgId))
        except Exception as exc:
            self._answer_now(sid, ack, exc)
            self.server.observe_event(SEND_MESSAGE, time.perf_counter() - started)
            return True
        sending.add(sid)
        release = partial(sending.discard, sid)
        stored.add_done_callback(partial(self._message_stored, sid, user_id, chatroom_id, ack, started, release))
        return True

    def _message_stored(
        self,
        sid: str,
        user_id: int,
        chatroom_id: int,
        ack: InlineAck | None,
        started: float,
        release: Callable[[], None],
        stored: asyncio.Future[tuple[dict[str, Any], bool]],
    ) -> None:
        """The writer has stored (or failed to store) a message sent inline: what the full path does after submit."""
        if stored.cancelled():
            result: Any = WriterClosed("The server is shutting down")
        else:
            error = stored.exception()
            result = error if error is not None else stored.result()[0]
        if not isinstance(result, Exception) and self.state.typing.is_typing(user_id, chatroom_id):
            # The full path announces that the sender stopped typing before it acks: so does this, from a task.
            self.server.run_soon(self._stop_typing_and_answer(sid, user_id, chatroom_id, ack, started, release, result))
            return
        try:
            self._answer_now(sid, ack, result)
        finally:
            release()
        self.server.observe_event(SEND_MESSAGE, time.perf_counter() - started)

    async def _stop_typing_and_answer(
        self,
        sid: str,
        user_id: int,
        chatroom_id: int,
        ack: InlineAck | None,
        started: float,
        release: Callable[[], None],
        result: Any,
    ) -> None:
        try:
            await self.state.typing.stop(user_id, chatroom_id)
        except Exception as exc:
            result = exc
        try:
            self._answer_now(sid, ack, result)
        finally:
            release()
        self.server.observe_event(SEND_MESSAGE, time.perf_counter() - started)

    def mark_read_now(self, sid: str, text: str, ack: InlineAck | None) -> bool:
        """``markRead`` as its frame is read: the full path's checks and answers, without a task; False = not here.

        Declined, for the full path to handle, only before anything happened:
        for a socket without a session, a payload that is no JSON, or a room
        whose members are not in the cache (the full path loads them).
        """
        session = self._sessions.get(sid)
        if session is None:
            return False
        try:
            mark = validate_json(MarkRead, text, SocketJSON.loads)
            if mark is None:
                return False
            room = mark.chatroomId
            members = self.state.members.cached(room)
            if members is None:
                return False
            user_id = self._inline_member(
                sid,
                session.user_id,
                mark.userId,
                "userId",
                members,
                session.receipts,
                "Marking read too fast: slow down",
            )
            if ack is None:
                self.state.reads.mark_soon(user_id, room, mark.messageId, session.mark_failed)
            else:
                self.state.reads.mark_soon(
                    user_id, room, mark.messageId, self._on_mark_done(sid, room, ack), waited=True
                )
        except Exception as exc:
            self._answer_now(sid, ack, exc)
        return True

    def typing_now(self, sid: str, text: str, ack: InlineAck | None) -> bool:
        """``typing`` as its frame is read, as :meth:`mark_read_now` takes ``markRead``."""
        session = self._sessions.get(sid)
        if session is None:
            return False
        try:
            typing = validate_json(Typing, text, SocketJSON.loads)
            if typing is None:
                return False
            members = self.state.members.cached(typing.chatroomId)
            if members is None:
                return False
            user_id = self._inline_member(
                sid,
                session.user_id,
                typing.userId,
                "userId",
                members,
                session.receipts,
                "Typing notices too fast: slow down",
            )
            self.state.typing.update(sid, user_id, typing.chatroomId, typing.typing)
        except Exception as exc:
            self._answer_now(sid, ack, exc)
        else:
            self._answer_now(sid, ack, {})
        return True

    def _on_mark_done(self, sid: str, chatroom_id: int, ack: InlineAck) -> MarkDone:
        def done(result: int | Exception) -> None:
            self._answer_now(
                sid, ack, result if isinstance(result, Exception) else {"chatroomId": chatroom_id, "lastReadId": result}
            )

        return done

    def _on_mark_failure(self, sid: str) -> MarkDone:
        def done(result: int | Exception) -> None:
            if isinstance(result, Exception):
                self._answer_now(sid, None, result)

        return done

    def _answer_now(self, sid: str, ack: InlineAck | None, result: Any) -> None:
        """What ``_answer`` does, without waiting: the result or error to the ack, else an error as ``exception``."""
        if not isinstance(result, Exception):
            if ack is not None:
                ack(result)
            return
        if isinstance(result, ChatError):
            error = result
        else:
            log.error("unhandled error in socket event from %s", sid, exc_info=result)
            error = ChatError("Internal server error")
        if ack is not None:
            ack(error.body())
        else:
            self.server.emit_now("exception", {"status": "error", "message": error.message}, to=sid)
