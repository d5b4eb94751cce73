"""The message write path: group commit, then broadcast in id order.

One task owns chat message inserts. It takes every message that arrived
while the previous batch was being written, stores them in one transaction,
and only after the commit has reached the disk publishes them (in ascending
id order) and resolves each sender's future, which sends the ack. Work that
must not interleave with broadcasts, such as a recovering join, runs between
batches through :meth:`MessageWriter.run_between_batches`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from chatsvc.db import Database
from chatsvc.store.messages import find_messages_by_client_ids, insert_messages
from chatsvc.store.users import list_users_by_ids

log = logging.getLogger(__name__)

T = TypeVar("T")
Publish = Callable[[list[dict[str, Any]]], Awaitable[None]]


class WriterClosed(Exception):
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


@dataclass
class _Submitted:
    draft: Draft
    future: asyncio.Future[tuple[dict[str, Any], bool]]


@dataclass
class _Barrier:
    work: Callable[[], Awaitable[Any]]
    future: asyncio.Future[Any]


class MessageWriter:
    """Stores chat messages in batches and publishes each batch after it is durable."""

    def __init__(self, db: Database, *, max_batch: int = 512) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Submitted | _Barrier | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.publish: Publish | None = None

    def start(self) -> None:
        """Start the writer task (on application startup)."""
        self._task = asyncio.create_task(self._run(), name="chatsvc-message-writer")

    async def close(self) -> None:
        """Refuse new messages, write and publish everything already accepted, then stop."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    async def submit(self, draft: Draft) -> tuple[dict[str, Any], bool]:
        """Store a message; returns it once durable, and whether it is new.

        A repeat of a stored ``(sender, client_msg_id)`` returns the original
        message with ``False`` and is not stored or published again.
        """
        if self._closed:
            raise WriterClosed("The server is shutting down")
        future: asyncio.Future[tuple[dict[str, Any], bool]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Submitted(draft, future))
        return await future

    async def run_between_batches(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` when no batch is being written or published."""
        if self._closed:
            raise WriterClosed("The server is shutting down")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Barrier(work, future))
        return await future

    async def _run(self) -> None:
        pending: _Submitted | _Barrier | None = None
        while True:
            item = pending if pending is not None else await self._queue.get()
            pending = None
            if item is None:
                return
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
            if pending is None and self._closed and self._queue.empty():
                return

    async def _run_barrier(self, barrier: _Barrier) -> None:
        try:
            result = await barrier.work()
        except Exception as exc:
            if not barrier.future.done():
                barrier.future.set_exception(exc)
        else:
            if not barrier.future.done():
                barrier.future.set_result(result)

    async def _write_batch(self, batch: list[_Submitted]) -> None:
        try:
            results, new_messages = await self._store(batch)
        except Exception as exc:
            log.exception("storing a batch of %d messages failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        if new_messages and self.publish is not None:
            try:
                await self.publish(new_messages)
            except Exception:
                # The messages are durable; a failed fan-out must not fail their acks.
                log.exception("publishing %d messages failed", len(new_messages))
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def _store(self, batch: list[_Submitted]) -> tuple[list[tuple[dict[str, Any], bool]], list[dict[str, Any]]]:
        """One transaction for the batch: skip known client ids, insert the rest, attach senders."""
        keys = [(i.draft.sender_id, i.draft.client_msg_id) for i in batch if i.draft.client_msg_id is not None]
        async with self._db.transaction() as conn:
            existing = await find_messages_by_client_ids(conn, keys)  # type: ignore[arg-type]
            to_insert: list[Draft] = []
            seen: set[tuple[int, str]] = set(existing)
            for item in batch:
                key = (item.draft.sender_id, item.draft.client_msg_id)
                if item.draft.client_msg_id is not None:
                    if key in seen:
                        continue
                    seen.add(key)  # type: ignore[arg-type]
                to_insert.append(item.draft)
            stored = await insert_messages(conn, [draft.row() for draft in to_insert])
            senders = await list_users_by_ids(conn, sorted({m["senderId"] for m in stored}))
        profiles = {profile["id"]: profile for profile in senders}
        for message in stored:
            message["sender"] = profiles[message["senderId"]]
        new_iter = iter(stored)
        by_key: dict[tuple[int, str | None], dict[str, Any]] = dict(existing)  # type: ignore[arg-type]
        results: list[tuple[dict[str, Any], bool]] = []
        for item in batch:
            key = (item.draft.sender_id, item.draft.client_msg_id)
            if item.draft.client_msg_id is not None and key in by_key:
                results.append((by_key[key], False))
                continue
            message = next(new_iter)
            if item.draft.client_msg_id is not None:
                by_key[key] = message
            results.append((message, True))
        return results, stored
