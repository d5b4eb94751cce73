"""The message write path: group commit, then hand the batch to the fan-out in id order.

One task owns chat message inserts. It takes every message that arrived
while the previous batch was being written, stores them with one INSERT
statement (its own transaction, so one disk sync for the whole batch), and
only after the commit has reached the disk resolves each sender's future,
which sends the ack, and hands the new messages to the fan-out
(chatsvc/fanout/), in ascending id order, under the order lock it was given
(chatsvc/order_lock.py). Work that must not interleave with deliveries, such
as a recovering join or a member's removal, runs between batches through
:meth:`MessageWriter.run_between_batches`.

Work that may wait, such as indexing new messages for search on SQLite
(chatsvc/search_index.py), is the writer's idle work: it runs on the same
connection between batches, so it never contends with their commits; a piece
of it when the queue has stayed empty a moment or the backlog has grown, and
all of it when someone needs it done (:meth:`MessageWriter.catch_up`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from chatsvc.cache import ProfileCache
from chatsvc.db import Database
from chatsvc.errors import ServiceUnavailable, StorageUnavailable
from chatsvc.fanout import Fanout
from chatsvc.order_lock import OrderLock
from chatsvc.store.messages import MAX_ROWS_PER_INSERT, find_messages_by_client_ids, insert_messages
from chatsvc.store.webhooks import enqueue_deliveries, queue_deliveries_with_each_insert

log = logging.getLogger(__name__)

T = TypeVar("T")

# Idle work waits this long for the queue to stay empty (so that a busy writer does a piece per many messages),
# and is done between batches anyway once this many messages wait (so that a saturated writer keeps up).
IDLE_WORK_DELAY = 0.1
IDLE_WORK_BACKLOG = 256


class WriterClosed(ServiceUnavailable):
    """The writer no longer accepts messages: the service is shutting down."""


@dataclass(frozen=True)
class Draft:
    """A validated message waiting to be stored."""

    chatroom_id: int
    sender_id: int
    type: int
    content: str
    client_msg_id: str | None = None

    def row(self) -> tuple[Any, ...]:
        """The values in insert_messages' column order."""
        return (self.content, self.type, self.chatroom_id, self.sender_id, self.client_msg_id)

    def key(self) -> tuple[int, str] | None:
        """What makes a retry the same message: sender and client message id, if given."""
        return None if self.client_msg_id is None else (self.sender_id, self.client_msg_id)


@dataclass
class _Submitted:
    draft: Draft
    future: asyncio.Future[tuple[dict[str, Any], bool]]


@dataclass
class _Barrier:
    work: Callable[[], Awaitable[Any]]
    future: asyncio.Future[Any]
    # Held under the order lock: the work must not interleave with any instance's deliveries.
    ordered: bool = True


class _Idle:
    """Queued by the idle timer when the queue has stayed empty IDLE_WORK_DELAY: time for the idle work."""


_IDLE = _Idle()


class IdleWork(Protocol):
    """Work that may wait, done on the writer's connection when it has time (chatsvc/search_index.py)."""

    async def pending(self) -> int:
        """How much of it waits (0: none), read without the writer."""

    async def step(self) -> int:
        """Do one short piece of it; how much still waits."""

    async def finish(self) -> None:
        """Do all of it that waits."""


class MessageWriter:
    """Stores chat messages in batches and hands each batch to the fan-out after it is durable."""

    def __init__(
        self,
        db: Database,
        profiles: ProfileCache,
        fanout: Fanout,
        order_lock: OrderLock,
        *,
        max_batch: int = 512,
        webhook_outbox: bool = False,
        idle_work: IdleWork | None = None,
    ) -> None:
        self._db = db
        self._profiles = profiles
        self._fanout = fanout
        # Held from INSERT to hand-over, so commit order is delivery order across instances.
        self._order_lock = order_lock
        self._max_batch = min(max_batch, MAX_ROWS_PER_INSERT)
        # Webhooks on (chatsvc/webhooks.py): each batch also queues its deliveries, in its own transaction.
        self._webhook_outbox = webhook_outbox
        # Set when the engine queues them inside the INSERT itself (an SQLite TEMP trigger): no transaction needed.
        self._outbox_in_insert = False
        self._idle_work = idle_work
        # What the idle work last said waited, plus the messages stored since.
        self._idle_backlog = 0
        self._queue: asyncio.Queue[_Submitted | _Barrier | _Idle | None] = asyncio.Queue()
        # One timer per quiet spell, not one per wait: when the writer began waiting (None while it works).
        self._waiting_since: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        # Known once started: asyncio.get_running_loop() costs a system call per message on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Read by chatsvc/metrics.py when scraped: plain integers cost the write path nothing.
        self.batches_written = 0
        self.messages_stored = 0

    def start(self) -> None:
        """Start the writer task (on application startup)."""
        if self._idle_work is not None:
            # A previous run may have left idle work: the first idle moment does a piece and learns how much.
            self._idle_backlog = 1
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="chatsvc-message-writer")

    async def close(self) -> None:
        """Refuse new messages, write and publish everything already accepted, then stop."""
        if self._closed:
            return
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    async def submit(self, draft: Draft) -> tuple[dict[str, Any], bool]:
        """Store a message; returns it once durable, and whether it is new.

        A repeat of a stored ``(sender, client_msg_id)`` returns the original
        message with ``False`` and is not stored or published again.
        """
        return await self.submit_soon(draft)

    def submit_soon(self, draft: Draft) -> asyncio.Future[tuple[dict[str, Any], bool]]:
        """Queue a message to be stored, without waiting; the future ``submit`` awaits (WriterClosed if closed)."""
        if self._closed:
            raise WriterClosed("The server is shutting down")
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[tuple[dict[str, Any], bool]] = loop.create_future()
        self._queue.put_nowait(_Submitted(draft, future))
        return future

    async def run_between_batches(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` when no batch is being written or published."""
        if self._closed:
            raise WriterClosed("The server is shutting down")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Barrier(work, future))
        return await future

    async def catch_up(self) -> None:
        """Finish the idle work if any waits, between batches: e.g. a search then finds every stored message."""
        if self._idle_work is None or not await self._idle_work.pending():
            return
        if self._closed:
            raise WriterClosed("The server is shutting down")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Not under the order lock: it stores and delivers nothing, and the write transaction orders it.
        self._queue.put_nowait(_Barrier(self._finish_idle_work, future, ordered=False))
        await future

    async def _finish_idle_work(self) -> None:
        assert self._idle_work is not None
        await self._idle_work.finish()
        self._idle_backlog = 0

    async def _run(self) -> None:
        if self._webhook_outbox:
            try:
                self._outbox_in_insert = await self._db.write_statement(queue_deliveries_with_each_insert)
            except Exception:
                log.exception("webhook deliveries will be queued in each batch's transaction instead")
        pending: _Submitted | _Barrier | _Idle | None = None
        while True:
            item = pending if pending is not None else await self._next_item()
            pending = None
            if item is None:
                return
            if isinstance(item, _Idle):
                # One short piece at a time: an item queued meanwhile waits for one piece at most.
                while self._idle_backlog and self._queue.empty():
                    await self._idle_step()
                continue
            if isinstance(item, _Barrier):
                await self._run_barrier(item)
                continue
            batch = [item]
            while len(batch) < self._max_batch and not self._queue.empty():
                following = self._queue.get_nowait()
                if not isinstance(following, _Submitted):
                    pending = following
                    break
                batch.append(following)
            await self._write_batch(batch)
            if self._idle_backlog >= IDLE_WORK_BACKLOG:
                await self._idle_step()
            if pending is None and self._closed and self._queue.empty():
                return

    async def _next_item(self) -> _Submitted | _Barrier | _Idle | None:
        """The next queued item; _IDLE if the queue stays empty IDLE_WORK_DELAY while idle work waits."""
        if self._idle_backlog and self._queue.empty():
            assert self._loop is not None
            self._waiting_since = self._loop.time()
            if self._idle_timer is None:
                self._idle_timer = self._loop.call_at(self._waiting_since + IDLE_WORK_DELAY, self._idle_timer_fired)
        item = await self._queue.get()
        self._waiting_since = None
        return item

    def _idle_timer_fired(self) -> None:
        self._idle_timer = None
        since = self._waiting_since
        if since is None or not self._queue.empty():
            return  # the writer is at work: its next wait arms the timer again
        assert self._loop is not None
        due = since + IDLE_WORK_DELAY
        if self._loop.time() >= due:
            self._queue.put_nowait(_IDLE)
        else:  # it worked and waits again since the timer was set
            self._idle_timer = self._loop.call_at(due, self._idle_timer_fired)

    async def _idle_step(self) -> None:
        assert self._idle_work is not None
        try:
            self._idle_backlog = await self._idle_work.step()
        except Exception as exc:
            # Not again until more messages are stored; catch_up still finishes it when it is needed.
            if isinstance(exc, StorageUnavailable):  # expected while the disk is full: one line, no traceback
                log.error("the writer's idle work failed: %s", exc.__cause__ or exc)
            else:
                log.exception("the writer's idle work failed")
            self._idle_backlog = 0

    async def _run_barrier(self, barrier: _Barrier) -> None:
        try:
            if barrier.ordered:
                async with self._order_lock.held():
                    result = await barrier.work()
            else:
                result = await barrier.work()
        except Exception as exc:
            if not barrier.future.done():
                barrier.future.set_exception(exc)
        else:
            if not barrier.future.done():
                barrier.future.set_result(result)

    async def _write_batch(self, batch: list[_Submitted]) -> None:
        try:
            async with self._order_lock.held():
                results, new_messages = await self._store(batch)
                self.batches_written += 1
                self.messages_stored += len(new_messages)
                if self._idle_work is not None:
                    self._idle_backlog += len(new_messages)
                # Resolved before the broadcast is queued, but the senders' handlers only run once this
                # task yields: each sender's ack and the broadcast then reach its socket's queue in the
                # same loop turn and leave in one write.
                for item, result in zip(batch, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(result)
                await self._publish(new_messages)
        except Exception as exc:
            if isinstance(exc, StorageUnavailable):
                # Expected while the disk is full: one line per batch, no traceback; the senders get 503.
                log.error("storing a batch of %d messages failed: %s", len(batch), exc.__cause__ or exc)
            else:
                log.exception("storing a batch of %d messages failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)

    async def _publish(self, new_messages: list[dict[str, Any]]) -> None:
        if new_messages:
            try:
                await self._fanout.deliver(new_messages)
            except Exception:
                # The messages are durable; a failed fan-out must not fail their acks.
                log.exception("publishing %d messages failed", len(new_messages))

    async def _insert(self, drafts: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """The batch's INSERT; with webhooks on, its new messages' outbox rows in the same transaction.

        On SQLite the INSERT queues them itself (store/webhooks.py queue_deliveries_with_each_insert).
        """
        if not self._webhook_outbox or self._outbox_in_insert:
            return await self._db.write_statement(lambda conn: insert_messages(conn, drafts))
        # One more statement in the same transaction: the deliveries are durable exactly when the messages are.
        async with self._db.transaction() as conn:
            rows = await insert_messages(conn, drafts)
            if rows:
                await enqueue_deliveries(conn, [row["id"] for row in rows])
        return rows

    async def _store(self, batch: list[_Submitted]) -> tuple[list[tuple[dict[str, Any], bool]], list[dict[str, Any]]]:
        """One INSERT statement for the batch (its own transaction); returns each item's result and the new rows."""
        # A retry may sit in the same batch as its original: only the first is written.
        first_of_key: dict[tuple[int, str], _Submitted] = {}
        to_insert: list[_Submitted] = []
        for item in batch:
            key = item.draft.key()
            if key is not None:
                if key in first_of_key:
                    continue
                first_of_key[key] = item
            to_insert.append(item)
        drafts = [item.draft.row() for item in to_insert]
        rows = await self._insert(drafts)
        # Rows come back in draft order; a draft with no row hit a stored client id.
        stored_by_item: dict[int, dict[str, Any]] = {}
        conflicts: list[tuple[int, str]] = []
        pending_rows = iter(rows)
        row = next(pending_rows, None)
        for item in to_insert:
            draft = item.draft
            if row is not None and row["senderId"] == draft.sender_id and row["clientMsgId"] == draft.client_msg_id:
                stored_by_item[id(item)] = row
                row = next(pending_rows, None)
            else:
                key = draft.key()
                assert key is not None, "a draft without client id is always inserted"
                conflicts.append(key)
        profiles = await self._profiles.profiles(self._db.reader, {row["senderId"] for row in rows})
        for row in rows:
            row["sender"] = profiles[row["senderId"]]
        earlier = await find_messages_by_client_ids(self._db.reader, conflicts)
        results: list[tuple[dict[str, Any], bool]] = []
        for item in batch:
            key = item.draft.key()
            if id(item) in stored_by_item:
                results.append((stored_by_item[id(item)], True))
            elif key in earlier:
                results.append((earlier[key], False))
            else:  # a repeat inside this batch of a message stored just now
                assert key is not None
                results.append((stored_by_item[id(first_of_key[key])], False))
        return results, rows
