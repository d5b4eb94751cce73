"""Read positions and typing notices: what members see of each other's reading and typing.

:class:`ReadPositions` stores ``markRead`` with group commit (every mark that
waits goes into one UPDATE statement, its own transaction) and announces a
moved position as ``{type: 'read'}`` to the room and to the reader's own
sockets. :class:`TypingNotices` keeps who is typing where, in memory only,
and announces ``{type: 'typing'}`` when that changes, ending it after a
timeout. Both send through the fan-out, so notices reach every instance, and
both go through :class:`NoticeThrottle`: at most one notice per user and room
per interval, the latest state following at the end of the interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from chatsvc.db import Database
from chatsvc.errors import Forbidden
from chatsvc.fanout import Fanout, room_name, user_room
from chatsvc.store.reads import MAX_MARKS_PER_STATEMENT, find_read_positions, mark_read
from chatsvc.writer import WriterClosed

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# At most one read or typing notice per user and room per this many seconds (docs/protocol.md).
NOTICE_INTERVAL = 1.0


@dataclass
class _Window(Generic[V]):
    sent: V
    timer: asyncio.TimerHandle
    pending: list[V] = field(default_factory=list)


class NoticeThrottle(Generic[K, V]):
    """Sends a key's first change at once, then at most one per interval: the latest, if it differs from the last."""

    def __init__(self, interval: float, send: Callable[[K, V], Awaitable[None]]) -> None:
        self._interval = interval
        self._send = send
        self._windows: dict[K, _Window[V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def offer(self, key: K, value: V) -> None:
        """Announce ``value`` for ``key`` now, or at the end of the key's current interval (nothing once closed)."""
        if self._closed:  # a timer opened now would fire after the fan-out closed
            return
        window = self._windows.get(key)
        if window is not None:
            window.pending[:] = [value]
            return
        self._open(key, value)
        await self._send(key, value)

    def _open(self, key: K, value: V) -> None:
        timer = asyncio.get_running_loop().call_later(self._interval, self._close, key)
        self._windows[key] = _Window(value, timer)

    def _close(self, key: K) -> None:
        window = self._windows.pop(key)
        if window.pending and window.pending[0] != window.sent:
            value = window.pending[0]
            self._open(key, value)
            task = asyncio.create_task(self._send_logged(key, value))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_logged(self, key: K, value: V) -> None:
        try:
            await self._send(key, value)
        except Exception:
            log.exception("sending a notice for %r failed", key)

    def close(self) -> None:
        """Drop what is still waiting or being sent, and send nothing more (on shutdown)."""
        self._closed = True
        for window in self._windows.values():
            window.timer.cancel()
        self._windows.clear()
        for task in self._tasks:
            task.cancel()


@dataclass
class _Mark:
    user_id: int
    chatroom_id: int
    message_id: int
    future: asyncio.Future[int]


class ReadPositions:
    """Stores read positions in batches and announces each one that moved."""

    def __init__(self, db: Database, fanout: Fanout, *, notice_interval: float = NOTICE_INTERVAL) -> None:
        self._db = db
        self._fanout = fanout
        self._queue: asyncio.Queue[_Mark | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._notices: NoticeThrottle[tuple[int, int], int] = NoticeThrottle(notice_interval, self._announce)

    def start(self) -> None:
        """Start the task that stores marks (on application startup)."""
        self._task = asyncio.create_task(self._run(), name="chatsvc-read-positions")

    async def close(self) -> None:
        """Store what was accepted, then stop."""
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        self._notices.close()

    async def mark(self, user_id: int, chatroom_id: int, message_id: int) -> int:
        """Move a member's read position towards ``message_id``; the position it has once stored."""
        if self._closed:
            raise WriterClosed("The server is shutting down")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Mark(user_id, chatroom_id, message_id, future))
        return await future

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_MARKS_PER_STATEMENT and not self._queue.empty():
                following = self._queue.get_nowait()
                if following is None:
                    stop = True
                    break
                batch.append(following)
            try:
                await self._store(batch)
            except Exception as exc:
                log.exception("storing %d read positions failed", len(batch))
                for mark in batch:
                    if not mark.future.done():
                        mark.future.set_exception(exc)
            if stop:
                return

    async def _store(self, batch: list[_Mark]) -> None:
        # Several marks of one member and room in a batch: the furthest counts.
        furthest: dict[tuple[int, int], int] = {}
        for mark in batch:
            key = (mark.user_id, mark.chatroom_id)
            furthest[key] = max(furthest.get(key, 0), mark.message_id)
        marks = [(user_id, chatroom_id, message_id) for (user_id, chatroom_id), message_id in furthest.items()]
        moved = await self._db.write_statement(lambda conn: mark_read(conn, marks))
        positions = {(row["userId"], row["chatroomId"]): int(row["lastReadId"]) for row in moved}
        positions.update(await find_read_positions(self._db.reader, [key for key in furthest if key not in positions]))
        for mark in batch:
            position = positions.get((mark.user_id, mark.chatroom_id))
            if mark.future.done():  # its event was cancelled (the socket went away)
                continue
            if position is None:
                mark.future.set_exception(Forbidden("You are not a member of this chatroom"))
            else:
                mark.future.set_result(position)
        for row in moved:
            await self._notices.offer((row["userId"], row["chatroomId"]), int(row["lastReadId"]))

    async def _announce(self, key: tuple[int, int], last_read_id: int) -> None:
        user_id, chatroom_id = key
        notice = {"type": "read", "chatroomId": chatroom_id, "userId": user_id, "lastReadId": last_read_id}
        # The room's sockets and every socket of the reader (which may show the room's unread count elsewhere).
        await self._fanout.notify([room_name(chatroom_id), user_room(user_id)], notice)


@dataclass
class _Typing:
    sid: str
    expiry: asyncio.TimerHandle


class TypingNotices:
    """Who is typing in which room, on this instance's sockets; announced to the room when it changes."""

    def __init__(self, fanout: Fanout, *, timeout: float, notice_interval: float = NOTICE_INTERVAL) -> None:
        self._fanout = fanout
        self._timeout = timeout
        self._typing: dict[tuple[int, int], _Typing] = {}
        self._keys_of_sid: dict[str, set[tuple[int, int]]] = {}
        self._notices: NoticeThrottle[tuple[int, int], bool] = NoticeThrottle(notice_interval, self._announce)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def update(self, sid: str, user_id: int, chatroom_id: int, typing: bool) -> None:
        """A client's ``typing`` event: start (or keep up) or stop the user's typing in the room."""
        if self._closed:  # its expiry timer would fire after shutdown
            return
        if not typing:
            await self.stop(user_id, chatroom_id)
            return
        key = (user_id, chatroom_id)
        current = self._typing.pop(key, None)
        if current is not None:
            current.expiry.cancel()
            self._keys_of_sid.get(current.sid, set()).discard(key)
        expiry = asyncio.get_running_loop().call_later(self._timeout, self._expire, key)
        self._typing[key] = _Typing(sid, expiry)
        self._keys_of_sid.setdefault(sid, set()).add(key)
        if current is None:
            await self._notices.offer(key, True)

    async def stop(self, user_id: int, chatroom_id: int) -> None:
        """The user no longer types in the room (they sent a message, left, or said so)."""
        key = (user_id, chatroom_id)
        current = self._typing.pop(key, None)
        if current is None:
            return
        current.expiry.cancel()
        keys = self._keys_of_sid.get(current.sid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys_of_sid[current.sid]
        await self._notices.offer(key, False)

    async def forget_socket(self, sid: str, chatroom_id: int | None = None) -> None:
        """A socket disconnected (or left ``chatroom_id``): what its user was typing there ends."""
        for user_id, room in list(self._keys_of_sid.get(sid, ())):
            if chatroom_id is None or room == chatroom_id:
                await self.stop(user_id, room)

    def close(self) -> None:
        """Forget everything and start no timer any more (on shutdown)."""
        self._closed = True
        for current in self._typing.values():
            current.expiry.cancel()
        self._typing.clear()
        self._keys_of_sid.clear()
        self._notices.close()
        for task in self._tasks:
            task.cancel()

    def _expire(self, key: tuple[int, int]) -> None:
        task = asyncio.create_task(self.stop(*key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, key: tuple[int, int], typing: bool) -> None:
        user_id, chatroom_id = key
        notice = {"type": "typing", "chatroomId": chatroom_id, "userId": user_id, "typing": typing}
        # Not to the socket that is typing; once it stopped, that socket may hear it too (clients know their own id).
        current = self._typing.get(key)
        await self._fanout.notify(room_name(chatroom_id), notice, skip_sid=current.sid if current else None)
