"""Read positions and typing notices: what members see of each other's reading and typing.

:class:`ReadPositions` stores ``markRead`` with group commit: marks wait in a
dict keyed by member and room, where a later mark only raises the pending one
(a client marking every message it receives adds no rows), and every key that
waits goes into one UPDATE statement, its own transaction. A moved position
is announced as ``{type: 'read'}`` to the room and to the reader's own
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
from itertools import islice
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
# Marks nobody waits for (a markRead without an ack) are stored at most this long after they came: what arrives
# meanwhile joins them, and a client marking each message it receives costs one row per interval, not per message.
# A mark that is waited for (an ack, the sidecar) starts the write at once, with whatever else waits.
MARK_DELAY = 0.1


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
        if self._due_now(key, value):
            await self._send(key, value)

    def offer_soon(self, key: K, value: V) -> None:
        """As :meth:`offer`, from code that cannot wait: a notice due now goes out from a task of its own."""
        if self._due_now(key, value):
            self._send_in_task(key, value)

    def _due_now(self, key: K, value: V) -> bool:
        """Whether ``value`` goes out now (its interval opens); if not, it waits for the interval's end."""
        if self._closed:  # a timer opened now would fire after the fan-out closed
            return False
        window = self._windows.get(key)
        if window is not None:
            window.pending[:] = [value]
            return False
        self._open(key, value)
        return True

    def _open(self, key: K, value: V) -> None:
        timer = asyncio.get_running_loop().call_later(self._interval, self._close, key)
        self._windows[key] = _Window(value, timer)

    def _close(self, key: K) -> None:
        window = self._windows.pop(key)
        if window.pending and window.pending[0] != window.sent:
            value = window.pending[0]
            self._open(key, value)
            self._send_in_task(key, value)

    def _send_in_task(self, key: K, value: V) -> None:
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


# Told what became of a mark: the position it has once stored, or why it failed.
MarkDone = Callable[[int | Exception], None]


@dataclass
class _Pending:
    """The furthest mark waiting for one member and room, and who wants to hear how it ended."""

    message_id: int
    # Told the position stored (or why it failed) when ``answered``, else only of a failure to store.
    waiters: list[MarkDone]
    answered: bool


class ReadPositions:
    """Stores read positions in batches and announces each one that moved."""

    def __init__(
        self, db: Database, fanout: Fanout, *, notice_interval: float = NOTICE_INTERVAL, delay: float = MARK_DELAY
    ) -> None:
        self._db = db
        self._fanout = fanout
        self._delay = delay
        # Insertion order is arrival order, so a batch takes the marks that waited longest.
        self._pending: dict[tuple[int, int], _Pending] = {}
        # Set when what is pending is to be written: at once for a mark someone waits for, else after the delay.
        self._due = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._notices: NoticeThrottle[tuple[int, int], int] = NoticeThrottle(notice_interval, self._announce)
        # Read by tests and chatsvc/metrics.py: marks handed in, and UPDATE statements they took.
        self.marks_received = 0
        self.statements = 0

    def start(self) -> None:
        """Start the task that stores marks (on application startup)."""
        self._task = asyncio.create_task(self._run(), name="chatsvc-read-positions")

    async def close(self) -> None:
        """Store what was accepted, then stop."""
        self._closed = True
        self._due.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._notices.close()

    def mark_soon(
        self, user_id: int, chatroom_id: int, message_id: int, done: MarkDone | None = None, *, waited: bool = False
    ) -> None:
        """Queue a move of a member's read position towards ``message_id``; ``done`` hears how it ended.

        Does not wait, so a socket event can hand its mark over without a task
        of its own. Marks of one member and room that wait together are one:
        the furthest counts, and each ``done`` hears the position stored. A mark
        is stored within MARK_DELAY seconds, or at once if ``waited``: someone
        waits for ``done`` to hear the position. Without ``waited``, ``done``
        only hears of a failure to store (not of a mark that moved nothing,
        which needs no answer and costs no lookup).
        """
        if self._closed:
            raise WriterClosed("The server is shutting down")
        self.marks_received += 1
        key = (user_id, chatroom_id)
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = _Pending(message_id, [] if done is None else [done], waited)
        else:
            if message_id > pending.message_id:
                pending.message_id = message_id
            if done is not None:
                pending.waiters.append(done)
            if not waited:
                # Most marks of a client marking each message it receives end here: the write that takes this
                # one is already due (a pending mark always has its timer or the due event set).
                return
            pending.answered = True
        if waited or self._delay <= 0:
            self._due.set()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._due.set)

    async def mark(self, user_id: int, chatroom_id: int, message_id: int) -> int:
        """Move a member's read position towards ``message_id``; the position it has once stored."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def done(result: int | Exception) -> None:
            if future.done():  # the caller was cancelled
                return
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.mark_soon(user_id, chatroom_id, message_id, done, waited=True)
        return await future

    async def _run(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            # Marks that come in while these are stored wait for their own turn (group commit).
            due, self._pending = self._pending, {}
            while due:
                keys = list(islice(due, MAX_MARKS_PER_STATEMENT))
                batch = {key: due.pop(key) for key in keys}
                try:
                    await self._store(batch)
                except Exception as exc:
                    log.exception("storing %d read positions failed", len(batch))
                    for pending in batch.values():
                        _tell(pending.waiters, exc)
            if self._closed and not self._pending:
                return

    async def _store(self, batch: dict[tuple[int, int], _Pending]) -> None:
        marks = [(user_id, chatroom_id, pending.message_id) for (user_id, chatroom_id), pending in batch.items()]
        moved = await self._db.write_statement(lambda conn: mark_read(conn, marks))
        self.statements += 1
        positions = {(row["userId"], row["chatroomId"]): int(row["lastReadId"]) for row in moved}
        waiting = [key for key, pending in batch.items() if pending.answered and key not in positions]
        if waiting:  # a mark that moved nothing answers with where the position is (or that there is none)
            positions.update(await find_read_positions(self._db.reader, waiting))
        for key, pending in batch.items():
            if pending.answered:
                position = positions.get(key)
                _tell(
                    pending.waiters,
                    Forbidden("You are not a member of this chatroom") if position is None else position,
                )
        for row in moved:
            await self._notices.offer((row["userId"], row["chatroomId"]), int(row["lastReadId"]))

    async def _announce(self, key: tuple[int, int], last_read_id: int) -> None:
        user_id, chatroom_id = key
        notice = {"type": "read", "chatroomId": chatroom_id, "userId": user_id, "lastReadId": last_read_id}
        # The room's sockets and every socket of the reader (which may show the room's unread count elsewhere).
        await self._fanout.notify([room_name(chatroom_id), user_room(user_id)], notice)


def _tell(waiters: list[MarkDone], result: int | Exception) -> None:
    for done in waiters:
        try:
            done(result)
        except Exception:
            log.exception("answering a mark failed")


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

    def update(self, sid: str, user_id: int, chatroom_id: int, typing: bool) -> None:
        """A client's ``typing`` event: start (or keep up) or stop the user's typing in the room.

        Does not wait: a notice due now goes out from a task of its own (at
        most one per user and room per interval), so the event needs none.
        """
        if self._closed:  # its expiry timer would fire after shutdown
            return
        key = (user_id, chatroom_id)
        if not typing:
            if self._forget(key):
                self._notices.offer_soon(key, False)
            return
        current = self._typing.pop(key, None)
        if current is not None:
            current.expiry.cancel()
            self._keys_of_sid.get(current.sid, set()).discard(key)
        expiry = asyncio.get_running_loop().call_later(self._timeout, self._expire, key)
        self._typing[key] = _Typing(sid, expiry)
        self._keys_of_sid.setdefault(sid, set()).add(key)
        if current is None:
            self._notices.offer_soon(key, True)

    def is_typing(self, user_id: int, chatroom_id: int) -> bool:
        """Whether the user is typing in the room (so that :meth:`stop` would announce something)."""
        return (user_id, chatroom_id) in self._typing

    async def stop(self, user_id: int, chatroom_id: int) -> None:
        """The user no longer types in the room (they sent a message, left, or said so)."""
        key = (user_id, chatroom_id)
        if self._forget(key):
            await self._notices.offer(key, False)

    def _forget(self, key: tuple[int, int]) -> bool:
        """Forget that the user types in the room; whether they did."""
        current = self._typing.pop(key, None)
        if current is None:
            return False
        current.expiry.cancel()
        keys = self._keys_of_sid.get(current.sid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys_of_sid[current.sid]
        return True

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
