"""Presence: who is online, counted over every instance, and the notices when someone comes or goes.

A user is online while at least one socket of theirs is connected to any
instance. :class:`Presence` is told of each token socket's connect and
disconnect (chatsvc/realtime/events.py); a counter keeps the numbers:

* :class:`LocalCounter` for one process: a dict.
* :class:`RedisCounter` for instances behind Redis (``CHATSVC_REDIS_URL``):
  each instance writes its own counts to a Redis hash that expires unless it
  is refreshed (``CHATSVC_PRESENCE_TTL``), so a crashed instance's sockets do
  not keep their users online; a user's total is the sum over the instances'
  hashes. A Redis set of the users announced online makes the announcement
  of each change happen once, whichever instance sees it.

Coming online is announced at once. Going offline is announced only when no
socket has come back within ``CHATSVC_PRESENCE_GRACE`` seconds, so a page
reload does not flicker. Either way ``lastSeen`` is stored, and the notice
``{type: 'presence', userId, online, lastSeen}`` goes through the fan-out to
the user rooms of the user's friends and of the other members of their
one-to-one rooms, on every instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from typing import Any

from redis import asyncio as aioredis

from chatsvc.db import Database
from chatsvc.fanout import Fanout, user_room
from chatsvc.store.presence import list_presence_watchers, list_visible_last_seen, set_last_seen

log = logging.getLogger(__name__)


def presence_notice(user_id: int, online: bool, last_seen: str | None) -> dict[str, Any]:
    """What a user's friends and one-to-one partners hear when the user comes online or goes offline."""
    return {"type": "presence", "userId": user_id, "online": online, "lastSeen": last_seen}


class PresenceCounter(ABC):
    """Counts each user's sockets over every instance and says when a user comes or goes, once."""

    def __init__(self) -> None:
        self.local: dict[int, int] = {}

    async def start(self) -> None:  # noqa: B027 - nothing to start unless a subclass has
        """Start what counting needs (on application startup)."""

    async def close(self) -> None:  # noqa: B027 - nothing to stop unless a subclass has
        """Stop (on cleanup)."""

    @abstractmethod
    async def connected(self, user_id: int) -> bool:
        """Count one more socket of the user here; True if the user has just come online (announce it)."""

    @abstractmethod
    async def disconnected(self, user_id: int) -> None:
        """Count one socket of the user less here."""

    @abstractmethod
    async def went_offline(self, user_id: int) -> bool:
        """True, once, if the user was announced online and has no socket on any instance now (announce it)."""

    @abstractmethod
    async def online(self, user_ids: list[int]) -> set[int]:
        """Which of these users have a socket on some instance."""

    def _add_here(self, user_id: int, change: int) -> int:
        count = self.local.get(user_id, 0) + change
        if count > 0:
            self.local[user_id] = count
        else:
            self.local.pop(user_id, None)
        return max(count, 0)


class LocalCounter(PresenceCounter):
    """One process: the counts and the announced users are in memory."""

    def __init__(self) -> None:
        super().__init__()
        self._announced: set[int] = set()

    async def connected(self, user_id: int) -> bool:
        """Count the socket; True if the user was not announced online."""
        self._add_here(user_id, 1)
        if user_id in self._announced:
            return False
        self._announced.add(user_id)
        return True

    async def disconnected(self, user_id: int) -> None:
        """Count one socket less."""
        self._add_here(user_id, -1)

    async def went_offline(self, user_id: int) -> bool:
        """True if the user has no socket and was announced online."""
        if self.local.get(user_id):
            return False
        if user_id not in self._announced:
            return False
        self._announced.discard(user_id)
        return True

    async def online(self, user_ids: list[int]) -> set[int]:
        """The users with a socket here."""
        return {user_id for user_id in user_ids if self.local.get(user_id)}


# Offline only if no live instance counts a socket: the check and the removal from the announced set are one step,
# so a socket connecting on another instance meanwhile cannot be missed. KEYS: hosts zset, announced set;
# ARGV: the prefix of the instances' hashes, the user id.
_WENT_OFFLINE = """
for _, host in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local count = tonumber(redis.call('HGET', ARGV[1] .. host, ARGV[2]) or '0')
    if count > 0 then return 0 end
end
return redis.call('SREM', KEYS[2], ARGV[2])
"""
# Hosts not seen for this long leave the hosts set (their hashes expired long before).
HOST_FORGET_SECONDS = 24 * 3600


class RedisCounter(PresenceCounter):
    """Instances behind Redis: each instance's counts in a hash of its own that expires unless refreshed.

    Keys (``<channel>`` is CHATSVC_REDIS_CHANNEL): ``<channel>:presence:host:<id>``
    (user id → sockets on that instance), ``<channel>:presence:hosts`` (instance
    ids, scored by when they were last refreshed) and
    ``<channel>:presence:online`` (users announced online). When Redis is
    unreachable, each instance counts and announces from its own sockets.
    """

    def __init__(self, url: str, channel: str, host_id: str, ttl: int) -> None:
        super().__init__()
        self.url = url
        self.ttl = ttl
        self.host_id = host_id
        self._host_prefix = f"{channel}:presence:host:"
        self._hosts = f"{channel}:presence:hosts"
        self._announced = f"{channel}:presence:online"
        self._redis: aioredis.Redis | None = None
        # Writes of this instance's hash in the order the counts changed (the refresh rewrites it whole).
        self._write_lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self._faulty = False

    @property
    def _host_key(self) -> str:
        return self._host_prefix + self.host_id

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.url, socket_connect_timeout=2.0, socket_timeout=2.0)
        return self._redis

    def _fault(self, exc: BaseException) -> None:
        if not self._faulty:
            self._faulty = True
            log.error("presence: Redis unavailable (%s); counting this instance's sockets only", exc)

    async def _write(self, user_id: int, count: int, *, announce: bool) -> int | None:
        """Store this instance's count of a user (and add them to the announced set); SADD's answer, or None."""
        async with self._write_lock:
            try:
                async with self._client().pipeline(transaction=True) as pipe:
                    if count > 0:
                        pipe.hset(self._host_key, str(user_id), count)
                    else:
                        pipe.hdel(self._host_key, str(user_id))
                    pipe.expire(self._host_key, self.ttl)
                    pipe.zadd(self._hosts, {self.host_id: time.time()})
                    if announce:
                        pipe.sadd(self._announced, str(user_id))
                    results = await pipe.execute()
            except Exception as exc:
                self._fault(exc)
                return None
        self._faulty = False
        return int(results[-1]) if announce else 0

    async def connected(self, user_id: int) -> bool:
        """Count the socket; True if this instance added the user to the announced set."""
        count = self._add_here(user_id, 1)
        added = await self._write(user_id, count, announce=True)
        if added is None:  # Redis is down: announce what this instance sees
            return count == 1
        return added == 1

    async def disconnected(self, user_id: int) -> None:
        """Count one socket less."""
        await self._write(user_id, self._add_here(user_id, -1), announce=False)

    async def went_offline(self, user_id: int) -> bool:
        """True if no live instance counts a socket of the user and this instance took them out of the announced set."""
        if self.local.get(user_id):
            return False
        try:
            removed = await self._client().eval(
                _WENT_OFFLINE, 2, self._hosts, self._announced, self._host_prefix, str(user_id)
            )
        except Exception as exc:
            self._fault(exc)
            return True
        return int(removed) == 1

    async def online(self, user_ids: list[int]) -> set[int]:
        """The users some live instance counts a socket of."""
        if not user_ids:
            return set()
        try:
            redis = self._client()
            hosts = [h.decode() if isinstance(h, bytes) else str(h) for h in await redis.zrange(self._hosts, 0, -1)]
            fields = [str(user_id) for user_id in user_ids]
            async with redis.pipeline(transaction=False) as pipe:
                for host in hosts:
                    pipe.hmget(self._host_prefix + host, fields)
                rows = await pipe.execute()
        except Exception as exc:
            self._fault(exc)
            return {user_id for user_id in user_ids if self.local.get(user_id)}
        online = {user_id for user_id in user_ids if self.local.get(user_id)}
        for counts in rows:
            online.update(user_id for user_id, count in zip(user_ids, counts, strict=True) if count and int(count) > 0)
        return online

    async def refresh(self) -> None:
        """Rewrite this instance's hash from its counts and renew its expiry (also after a Redis outage)."""
        async with self._write_lock:
            try:
                async with self._client().pipeline(transaction=True) as pipe:
                    pipe.delete(self._host_key)
                    if self.local:
                        pipe.hset(self._host_key, mapping={str(u): c for u, c in self.local.items()})
                        pipe.expire(self._host_key, self.ttl)
                    now = time.time()
                    pipe.zadd(self._hosts, {self.host_id: now})
                    pipe.zremrangebyscore(self._hosts, "-inf", now - HOST_FORGET_SECONDS)
                    await pipe.execute()
            except Exception as exc:
                self._fault(exc)
                return
        self._faulty = False

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.refresh()

    async def start(self) -> None:
        """Refresh the counts every third of their lifetime."""
        await self.refresh()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever(), name="chatsvc-presence")

    async def close(self) -> None:
        """Stop refreshing and take this instance's counts out of Redis."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self._host_key)
                    pipe.zrem(self._hosts, self.host_id)
                    await pipe.execute()
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None


class Presence:
    """Tracks who is online, stores lastSeen, and announces each change to whoever may see it."""

    def __init__(self, db: Database, fanout: Fanout, counter: PresenceCounter, grace: float) -> None:
        self._db = db
        self._fanout = fanout
        self.counter = counter
        self.grace = grace
        self._pending: dict[int, asyncio.Task[None]] = {}
        # Shutdown: from the start of close() no user comes online here, and once it has settled every pending
        # user nothing starts a grace timer any more; a timer left running would fire after the database closed.
        self._closing = False
        self._closed = False

    async def start(self) -> None:
        """Start the counter."""
        await self.counter.start()

    async def close(self) -> None:
        """Settle every user whose grace period is running (no socket will come back here), then stop.

        Runs before the database closes (chatsvc/app.py). A socket that goes
        while this settles others is settled here too; one that goes after it
        starts no timer, so none is left to fire once the database is closed.
        """
        self._closing = True
        while self._pending:
            user_id, task = self._pending.popitem()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                await self._settle(user_id)
            except Exception as exc:
                log.warning("presence: user %s not announced offline at shutdown: %s", user_id, exc)
        self._closed = True
        await self.counter.close()

    async def socket_connected(self, user_id: int) -> None:
        """A socket of the user connected here: announce the user online if they were not."""
        if self._closing:  # the server is going away, and this socket with it
            return
        pending = self._pending.pop(user_id, None)
        if pending is not None and not pending.done():
            pending.cancel()
        if await self.counter.connected(user_id):
            await self._announce(user_id, True)

    async def socket_disconnected(self, user_id: int) -> None:
        """A socket of the user went: once the grace period passes with none back, announce them offline."""
        if self._closed:
            return
        await self.counter.disconnected(user_id)
        if self._closed or self.counter.local.get(user_id) or user_id in self._pending:
            return
        self._pending[user_id] = asyncio.get_running_loop().create_task(
            self._after_grace(user_id), name=f"chatsvc-presence-{user_id}"
        )

    async def _after_grace(self, user_id: int) -> None:
        # Stays in _pending until done, so that close() waits for (or cancels and redoes) a settle under way.
        try:
            await asyncio.sleep(self.grace)
            await self._settle(user_id)
        except Exception:
            log.exception("presence: announcing user %s offline failed", user_id)
        finally:
            if self._pending.get(user_id) is asyncio.current_task():
                del self._pending[user_id]

    async def _settle(self, user_id: int) -> None:
        if await self.counter.went_offline(user_id):
            await self._announce(user_id, False)

    async def _announce(self, user_id: int, online: bool) -> None:
        async with self._db.transaction() as conn:
            last_seen = await set_last_seen(conn, user_id)
        notice = presence_notice(user_id, online, last_seen)
        for watcher in await list_presence_watchers(self._db.reader, user_id):
            await self._fanout.notify(user_room(watcher), notice)

    async def presence_of(self, viewer: int | None, user_ids: list[int]) -> list[dict[str, Any]]:
        """``[{id, online, lastSeen}]`` of those users the viewer may see (``viewer`` None: a trusted caller, all)."""
        rows = await list_visible_last_seen(self._db.reader, viewer, user_ids)
        online = await self.counter.online([row["id"] for row in rows])
        return [{"id": row["id"], "online": row["id"] in online, "lastSeen": row["lastSeen"]} for row in rows]


def make_counter(redis_url: str | None, channel: str, host_id: str, ttl: int) -> PresenceCounter:
    """The counter for this deployment: in memory for one instance, in Redis for several."""
    if redis_url is None:
        return LocalCounter()
    return RedisCounter(redis_url, channel, host_id, ttl)
