"""The order lock the message writer holds from a batch's INSERT until the batch is handed to the fan-out.

With several instances sharing rooms (chatsvc/fanout/redis.py), every
instance must put its batches on the shared channel in the order the
database gave them ids, or one host could show id 6 before id 5. SQLite
hands out ids in commit order, so one lock shared by every instance, held
from the INSERT until the batch is on the channel, makes publish order
commit order. One instance needs no lock: its writer is the only one.

The writer is given an :class:`OrderLock` and knows nothing of how it is
held: :class:`NoOrderLock` for one instance, :class:`FileOrderLock` (an
``flock`` beside the SQLite file) for instances on one host, and on
PostgreSQL ``PostgresOrderLock`` (chatsvc/store/postgres.py: an advisory
lock in the shared database) for instances on any number of hosts.
:func:`order_lock_for` chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from chatsvc.config import Config


class OrderLock(ABC):
    """What makes the order batches reach the fan-out the order the database stored them in."""

    @abstractmethod
    async def open(self) -> None:
        """Get ready (on startup, after the database opened)."""

    @abstractmethod
    async def close(self) -> None:
        """Let go of what ``open`` took (idempotent)."""

    @abstractmethod
    def held(self) -> AbstractAsyncContextManager[None]:
        """Hold the lock for the block: no other instance stores or publishes a batch meanwhile."""


class NoOrderLock(OrderLock):
    """One instance: the writer task alone orders its batches."""

    _free: AbstractAsyncContextManager[None] = contextlib.nullcontext()

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    def held(self) -> AbstractAsyncContextManager[None]:
        """Nothing to wait for."""
        return self._free


def order_lock_path(db_path: Path) -> Path:
    """The lock file every instance serving ``db_path`` shares."""
    return db_path.with_name(db_path.name + ".order-lock")


class FileOrderLock(OrderLock):
    """An exclusive ``flock`` on a file beside the SQLite database, shared by every instance on the host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        """Create and open the lock file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatsvc-order-lock")

    async def close(self) -> None:
        """Close the lock file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold the lock for the block; waiting for another instance happens in a thread, off the event loop."""
        fd = self._fd
        assert fd is not None and self._executor is not None, "order lock is not open"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting = asyncio.get_running_loop().run_in_executor(self._executor, fcntl.flock, fd, fcntl.LOCK_EX)
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:
                # The thread may still get the lock: give it back then, or every instance would stall.
                waiting.add_done_callback(lambda done: _unlock_if_taken(fd, done))
                raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _unlock_if_taken(fd: int, done: asyncio.Future[Any]) -> None:
    if not done.cancelled() and done.exception() is None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def order_lock_for(config: Config) -> OrderLock:
    """The lock this configuration needs: shared when instances share rooms (CHATSVC_REDIS_URL), else none.

    On PostgreSQL the lock is an advisory lock in the database every instance
    already shares, so instances on different hosts need no common file.
    """
    if config.redis_url is None:
        return NoOrderLock()
    if config.database_url is not None:
        from chatsvc.store.postgres import PostgresOrderLock  # asyncpg is an extra: imported only when used

        return PostgresOrderLock(config.database_url)
    return FileOrderLock(order_lock_path(config.db_path))
