"""Several chatsvc processes sharing rooms: Redis fan-out in one total order, and a cross-process order lock.

Enabled by ``CHATSVC_REDIS_URL``; without it none of this runs. How a message
reaches every member in id order, whichever instance holds their socket:

* Every instance stores its batches under one lock shared by all instances on
  the host (:class:`OrderLock`, an ``flock`` beside the database), held from
  the INSERT until the batch's broadcasts are on the Redis channel. SQLite
  hands out ids in commit order, so broadcasts enter the channel in id order.
* Every instance, the sender's included, delivers a broadcast when it comes
  back from the channel, so each delivers in the channel's order.
  python-socketio's stock pub/sub manager delivers a host's own broadcasts at
  once and only the others' through Redis, which would let a host show its own
  id 6 before another host's id 5.
* chatsvc's control messages travel in the same stream: cache invalidations,
  taking a quitter's sockets out of a room on every instance, and a marker that
  lets a recovering join read the history and enter the room at one point of
  the stream, so the catch-up and the live messages neither overlap nor leave
  a gap.

When Redis is unreachable, each instance delivers its own broadcasts to its
own sockets (as a single instance would), logs the fault once, keeps retrying
in the background, and goes back to the shared stream when its own probe makes
the round trip through Redis again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import socketio
from aiohttp import web

from chatsvc.fanout.redis import RedisFanout
from chatsvc.state import STATE, AppState

if TYPE_CHECKING:
    from chatsvc.realtime.events import ChatNamespace


def order_lock_path(db_path: Path) -> Path:
    """The lock file every instance serving ``db_path`` shares."""
    return db_path.with_name(db_path.name + ".order-lock")


class OrderLock:
    """An exclusive ``flock`` on a file beside the database, shared by every instance on the host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._executor: ThreadPoolExecutor | None = None

    def open(self) -> None:
        """Create and open the lock file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatsvc-order-lock")

    def close(self) -> None:
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


class Cluster:
    """What one instance needs to share rooms with the others: the Redis fan-out and the order lock."""

    def __init__(self, redis_url: str, channel: str, db_path: Path) -> None:
        self.fanout = RedisFanout(redis_url, channel)
        self.order_lock = OrderLock(order_lock_path(db_path))

    def bind(self, state: AppState, namespace: ChatNamespace) -> None:
        """Wire the instance's writer, caches and namespace to the other instances."""
        fanout = self.fanout
        namespace.cluster = self
        state.writer.order_lock = self.order_lock.held
        # Changes made through this instance: its own cache is dropped at once, the others' a moment later.
        state.members.on_forget = lambda room: fanout.notify_control("members_changed", {"chatroomId": room})
        state.profiles.on_forget = lambda user: fanout.notify_control("profile_changed", {"userId": user})

        async def members_changed(args: dict[str, Any]) -> None:
            state.members.drop(int(args["chatroomId"]))

        async def profile_changed(args: dict[str, Any]) -> None:
            state.profiles.drop(int(args["userId"]))

        async def member_left(args: dict[str, Any]) -> None:
            state.members.drop(int(args["chatroomId"]))
            await namespace.remove_local_sockets(int(args["userId"]), int(args["chatroomId"]))

        async def disconnect_user(args: dict[str, Any]) -> None:
            await namespace.disconnect_local_sockets(int(args["userId"]))

        fanout.on_control("members_changed", members_changed)
        fanout.on_control("profile_changed", profile_changed)
        fanout.on_control("member_left", member_left)
        fanout.on_control("disconnect_user", disconnect_user)

    def start(self, sio: socketio.AsyncServer) -> None:
        """Open the lock file and start listening to the channel."""
        self.order_lock.open()
        # Listen from the start, not from the first socket: invalidations must reach an instance without sockets.
        sio.manager_initialized = True
        self.fanout.initialize()

    async def close(self) -> None:
        """Stop listening and close the lock file."""
        await self.fanout.close()
        self.order_lock.close()


async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Startup and cleanup of the cluster parts, when Redis is configured; wraps the database's life."""
    state = app[STATE]
    cluster = state.realtime.cluster
    if cluster is None:
        yield
        return
    cluster.start(state.sio)
    yield
    await cluster.close()
