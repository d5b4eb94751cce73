"""Fan-out: getting stored messages, notices and control messages to every socket they concern.

The writer hands each durable batch to :meth:`Fanout.deliver`; socket handlers
and the membership service send notices and control messages through the
other methods. Two implementations do the same things:

* :class:`chatsvc.fanout.local.LocalFanout`: one process; everything happens
  at once, on this instance's sockets.
* :class:`chatsvc.fanout.redis.RedisFanout`: several instances sharing rooms
  through one Redis channel (``CHATSVC_REDIS_URL``); every instance, the
  sender's too, delivers what comes back from the channel, so all deliver in
  one order, and control messages travel in the same stream.

Both deliver to this instance's sockets through the Socket.IO server's public
``emit`` and the few room operations of chatsvc/realtime/server.py; neither
touches a library's private parts. Control messages are the fan-out's own
vocabulary: what each instance does for one is :meth:`Fanout.apply_here`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from chatsvc.cache import AccountCache, MembershipCache, ProfileCache
from chatsvc.realtime.server import ChatSocketServer

if TYPE_CHECKING:
    from chatsvc.webhooks import OnlineLog

# The one event chatsvc sends to rooms: stored messages and notices alike (docs/protocol.md).
MESSAGE_EVENT = "message"

# Control messages (op, then the keys of its arguments).
MEMBERS_CHANGED = "members_changed"  # chatroomId: drop the room's cached members
PROFILE_CHANGED = "profile_changed"  # userId: drop the user's cached profile
MEMBER_LEFT = "member_left"  # userId, chatroomId: drop the room's cached members, the user's sockets leave it
DISCONNECT_USER = "disconnect_user"  # userId: disconnect every socket of the user
CONTROL_OPS = frozenset({MEMBERS_CHANGED, PROFILE_CHANGED, MEMBER_LEFT, DISCONNECT_USER})
# Rooms whose members' user rooms the webhooks' online record keeps at once (it starts over past this).
HOLDERS_CACHED = 10_000


def room_name(chatroom_id: int) -> str:
    """The Socket.IO room of a chat room: its id as a string, as the original named it."""
    return str(chatroom_id)


def user_room(user_id: int) -> str:
    """The Socket.IO room holding every socket of one user."""
    return f"user:{user_id}"


def message_event(message: dict[str, Any]) -> dict[str, Any]:
    """The ``message`` event data of a stored chat message (docs/protocol.md)."""
    return {"type": "sendMessage", "userId": message["senderId"], "message": message}


class Fanout(ABC):
    """Delivers to rooms and users on every instance that serves them, in one order."""

    def __init__(
        self,
        sockets: ChatSocketServer,
        members: MembershipCache,
        profiles: ProfileCache,
        accounts: AccountCache,
        *,
        online_log: OnlineLog | None = None,
    ) -> None:
        self._sockets = sockets
        self._members = members
        self._profiles = profiles
        self._accounts = accounts
        # Set when webhooks are on: who had a socket here in the room as each message was delivered.
        self._online_log = online_log
        # Per room, its cached members and their user rooms, built once per membership rather than per message.
        self._holders: dict[int, tuple[frozenset[int], dict[str, int]]] = {}

    @abstractmethod
    async def start(self) -> None:
        """Start what delivery needs (on application startup, before the writer)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop (on cleanup, after the writer has handed over its last batch)."""

    @abstractmethod
    async def deliver(self, messages: list[dict[str, Any]]) -> None:
        """Send stored messages to their rooms as ``message`` events, in the order given (ascending id).

        The writer calls this under its order lock, once the batch is durable.
        """

    @abstractmethod
    async def notify(self, room: str | list[str], notice: dict[str, Any], *, skip_sid: str | None = None) -> None:
        """Send a ``message`` notice (``joinRoom``, ``quitRoom``) to a room or a user's room, on every instance.

        Given several rooms, a socket in more than one of them gets the notice once.
        """

    @abstractmethod
    async def control(self, op: str, args: dict[str, Any]) -> None:
        """Apply a control message on every instance, in the stream's order; return once all applied it."""

    @abstractmethod
    async def run_in_stream(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` on this instance after every delivery handed over before and before any handed over after.

        Called between the writer's batches (``MessageWriter.run_between_batches``),
        it puts a recovering join at one point of the stream.
        """

    def _record_online(self, event: dict[str, Any]) -> None:
        """After a ``message`` event was queued here: if it is a stored message, record its members online here."""
        if self._online_log is None or event.get("type") != "sendMessage":
            return
        message = event["message"]
        chatroom_id = int(message["chatroomId"])
        # Members are cached by the send's check and by every joinRoom here; a room no socket here joined
        # since its membership changed is not, and then no one here was in it.
        members = self._members.cached(chatroom_id) or frozenset()
        # The membership cache hands out a new set after every change: the same object means the same members.
        known = self._holders.get(chatroom_id)
        if known is None or known[0] is not members:
            if len(self._holders) >= HOLDERS_CACHED:
                self._holders.clear()
            known = self._holders[chatroom_id] = (members, {user_room(uid): uid for uid in members})
        holders = known[1]
        present = self._sockets.holders_in(room_name(chatroom_id), holders)
        # The sender is never a recipient: leaving them out keeps the record (and what is relayed to a
        # sender process) empty for the usual message, whose only member online is the one who sent it.
        sender_id = message["senderId"]
        self._online_log.record(
            int(message["id"]), frozenset([uid for uid in map(holders.__getitem__, present) if uid != sender_id])
        )

    async def forget_members(self, chatroom_id: int) -> None:
        """Drop a room's cached members everywhere (its membership changed)."""
        self._members.forget(chatroom_id)  # here at once; the others before this returns
        await self.control(MEMBERS_CHANGED, {"chatroomId": chatroom_id})

    async def forget_profile(self, user_id: int) -> None:
        """Drop a user's cached profile and account everywhere (they changed)."""
        self._forget_user(user_id)
        await self.control(PROFILE_CHANGED, {"userId": user_id})

    async def remove_from_room(self, user_id: int, chatroom_id: int) -> None:
        """Take every socket of a user who is no longer a member out of the room, everywhere."""
        self._members.forget(chatroom_id)
        await self.control(MEMBER_LEFT, {"userId": user_id, "chatroomId": chatroom_id})

    async def disconnect_user(self, user_id: int) -> None:
        """Disconnect every socket of a user and forget their account, everywhere (their tokens were revoked)."""
        self._accounts.forget(user_id)  # here at once; the others before this returns
        await self.control(DISCONNECT_USER, {"userId": user_id})

    def _forget_user(self, user_id: int) -> None:
        self._profiles.forget(user_id)
        self._accounts.forget(user_id)

    async def apply_here(self, op: str, args: dict[str, Any]) -> None:
        """What this instance does for a control message."""
        if op == MEMBERS_CHANGED:
            self._members.forget(int(args["chatroomId"]))
        elif op == PROFILE_CHANGED:
            self._forget_user(int(args["userId"]))
        elif op == MEMBER_LEFT:
            chatroom_id = int(args["chatroomId"])
            self._members.forget(chatroom_id)
            # Only sockets that connected with a token are in the user's room; in
            # trust-client mode a socket's user is known per event, not per socket.
            await self._sockets.leave_room_of(user_room(int(args["userId"])), room_name(chatroom_id))
        elif op == DISCONNECT_USER:
            self._accounts.forget(int(args["userId"]))
            await self._sockets.disconnect_room(user_room(int(args["userId"])))
        else:
            raise ValueError(f"unknown control message {op!r}")
