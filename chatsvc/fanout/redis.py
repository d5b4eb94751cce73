"""The fan-out of several instances sharing rooms: one Redis channel, one total order.

Enabled by ``CHATSVC_REDIS_URL``. How a message reaches every member in id
order, whichever instance holds their socket:

* Every instance stores its batches under one lock shared by all instances
  (chatsvc/order_lock.py), held from the INSERT until the batch is on the
  channel. The database hands out ids in commit order, so batches enter the
  channel in id order.
* Every instance, the sender's included, delivers a batch when it comes back
  from the channel, so each delivers in the channel's order. (python-socketio's
  own Redis manager delivers a host's broadcasts at once and only the others'
  through Redis, which would let a host show its own id 6 before another
  host's id 5.)
* Control messages (chatsvc/fanout/__init__.py: cache invalidations, taking a
  quitter's sockets out of a room, disconnecting a user) travel in the same
  stream, and the caller waits until every subscribed instance confirmed; a
  marker lets a recovering join read the history and enter the room at one
  point of the stream, so the catch-up and the live messages neither overlap
  nor leave a gap.

When Redis is unreachable, each instance delivers its own batches to its own
sockets (as a single instance would), logs the fault once, keeps retrying in
the background, and goes back to the shared stream when its own probe makes
the round trip through Redis again.

This is chatsvc's own pub/sub on redis-py's public asyncio API: python-socketio
only keeps each instance's local rooms (chatsvc/realtime/server.py), and no
python-socketio internal is touched here. Every message on the channel is one
JSON object: ``op`` (``emit``, ``probe``, ``sync``, ``ack`` or a control
message), ``origin`` (the publishing instance), ``done_by`` (an instance that
already applied it, or null), ``token``, and the op's own fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from chatsvc.cache import AccountCache, MembershipCache, ProfileCache
from chatsvc.fanout import CONTROL_OPS, MESSAGE_EVENT, Fanout, message_event, room_name
from chatsvc.jsonutil import SocketJSON
from chatsvc.realtime.server import ChatSocketServer

if TYPE_CHECKING:
    from chatsvc.webhooks import OnlineLog

log = logging.getLogger(__name__)

EMIT = "emit"
PROBE = "probe"
SYNC = "sync"
ACK = "ack"
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 2.0
# How long a control message waits for every instance to apply it before answering anyway.
ACK_TIMEOUT = 2.0
# How long a recovering join waits for its marker to come back before catching up locally.
SYNC_TIMEOUT = 5.0
RETRY_MIN = 0.1
RETRY_MAX = 2.0
# After a failed PUBLISH, deliver locally only for a while instead of failing (and maybe waiting for a
# timeout) on every batch: 1 s, doubling with each further failure up to 30 s, or until the probe is back.
PUBLISH_PAUSE = 1.0
PUBLISH_PAUSE_MAX = 30.0

# event, data, room, skip_sid
Broadcast = tuple[str, Any, str | list[str], str | None]


class _Acks:
    """Counts the instances that applied one control message."""

    def __init__(self) -> None:
        self.received = 0
        self._changed = asyncio.Event()

    def add(self) -> None:
        self.received += 1
        self._changed.set()

    async def wait(self, expected: int, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while self.received < expected:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True


class RedisFanout(Fanout):
    """Delivers every batch, notice and control message in the order of one Redis channel."""

    def __init__(
        self,
        sockets: ChatSocketServer,
        members: MembershipCache,
        profiles: ProfileCache,
        accounts: AccountCache,
        url: str,
        channel: str,
        *,
        online_log: OnlineLog | None = None,
    ) -> None:
        super().__init__(sockets, members, profiles, accounts, online_log=online_log)
        # Until this instance's probe comes back, another instance's token revocation could pass it by.
        accounts.suspend()
        self.url = url
        self.channel = channel
        self.host_id = uuid.uuid4().hex
        self._publisher: aioredis.Redis | None = None  # made on first use
        self._listener: asyncio.Task[None] | None = None
        # True once this instance's probe came back through its current subscription.
        self._in_stream = False
        self._publish_paused_until = 0.0
        self._publish_pause = PUBLISH_PAUSE
        self._faulty = False
        self._probe: str | None = None
        self._acks: dict[str, _Acks] = {}
        self._syncs: dict[str, Callable[[], Awaitable[None]]] = {}

    # -- state --------------------------------------------------------------

    def ordered(self) -> bool:
        """Whether deliveries go through the channel (Redis is up and this instance's probe came back)."""
        return self._in_stream and time.monotonic() >= self._publish_paused_until

    def _fault(self, what: str, exc: BaseException) -> None:
        if not self._faulty:
            self._faulty = True
            log.error(
                "Redis fan-out fault (%s: %s): serving this instance's sockets only, retrying until Redis is back",
                what,
                str(exc) or type(exc).__name__,
            )
        else:
            log.debug("Redis still unavailable (%s: %s)", what, exc)

    def _recovered(self) -> None:
        if self._faulty:
            self._faulty = False
            log.warning("Redis fan-out resumed: broadcasts reach every instance again")

    # -- the fan-out --------------------------------------------------------

    async def deliver(self, messages: list[dict[str, Any]]) -> None:
        """Put the batch on the channel as one message; every instance delivers it when it comes back."""
        await self._emit([(MESSAGE_EVENT, message_event(m), room_name(m["chatroomId"]), None) for m in messages])

    async def notify(self, room: str | list[str], notice: dict[str, Any], *, skip_sid: str | None = None) -> None:
        """Put a notice on the channel (``skip_sid`` is a socket of this instance)."""
        await self._emit([(MESSAGE_EVENT, notice, room, skip_sid)])

    async def _emit(self, broadcasts: list[Broadcast]) -> None:
        if self.ordered():
            if await self._publish_many([self._message(EMIT, broadcasts=broadcasts)]) is not None:
                return
            # Not taken by Redis: this instance's sockets still get them.
            await self._emit_here(broadcasts)
            return
        await self._emit_here(broadcasts)
        await self._publish_many([self._message(EMIT, done_by=self.host_id, broadcasts=broadcasts)])

    async def _emit_here(self, broadcasts: list[Broadcast]) -> None:
        emit = self._sockets.emit
        for event, data, room, skip_sid in broadcasts:
            await emit(event, data, room=room, skip_sid=skip_sid)
            if event == MESSAGE_EVENT:
                self._record_online(data)

    async def control(self, op: str, args: dict[str, Any]) -> None:
        """Apply ``op`` on every instance, this one included, in the channel's order.

        Returns once every subscribed instance has applied it (or after
        ACK_TIMEOUT, logged), so a change is in force everywhere when the
        caller answers.
        """
        token = uuid.uuid4().hex
        if self.ordered():
            acks = _Acks()
            self._acks[token] = acks
            try:
                counts = await self._publish_many([self._message(op, token=token, args=args)])
                if counts is not None:
                    if not await acks.wait(counts[0], ACK_TIMEOUT):
                        log.warning(
                            "%s: %d of %d instances confirmed within %ss", op, acks.received, counts[0], ACK_TIMEOUT
                        )
                    return
            finally:
                self._acks.pop(token, None)
        await self.apply_here(op, args)
        await self._publish_many([self._message(op, done_by=self.host_id, token=token, args=args, ack=False)])

    async def run_in_stream(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` on this instance at the channel's current end: after every earlier delivery, before any later.

        Falls back to running it at once when Redis is down (then there is no
        cross-instance stream to fit into).
        """
        if not self.ordered():
            await work()
            return
        token = uuid.uuid4().hex
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def in_listener() -> None:
            try:
                await work()
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        self._syncs[token] = in_listener
        if await self._publish_many([self._message(SYNC, token=token)]) is None:
            self._syncs.pop(token, None)
            await work()
            return
        try:
            await asyncio.wait_for(asyncio.shield(done), SYNC_TIMEOUT)
        except TimeoutError:
            if self._syncs.pop(token, None) is None:
                await done  # the listener started it meanwhile
                return
            log.warning("a stream marker did not come back within %ss; continuing on this instance", SYNC_TIMEOUT)
            await work()

    # -- the channel --------------------------------------------------------

    def _message(
        self, op: str, *, done_by: str | None = None, token: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        return {"op": op, "origin": self.host_id, "done_by": done_by, "token": token, **fields}

    def _connect_publisher(self) -> aioredis.Redis:
        # Short timeouts and one immediate retry, so a stale pooled connection after a Redis restart is
        # replaced quietly and a dead Redis fails fast. The subscription has a client of its own.
        self._publisher = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),
        )
        return self._publisher

    async def _publish_raw(self, messages: list[dict[str, Any]]) -> list[int]:
        """PUBLISH each message in order, in one round trip; how many subscribers got each. Raises on Redis errors."""
        redis = self._publisher or self._connect_publisher()
        payloads = [SocketJSON.dumps(message) for message in messages]
        if len(payloads) == 1:
            return [int(await redis.publish(self.channel, payloads[0]))]
        async with redis.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.publish(self.channel, payload)
            return [int(count) for count in await pipe.execute()]

    async def _publish_many(self, messages: list[dict[str, Any]]) -> list[int] | None:
        """Publish, or None if Redis did not take them (logged once per outage)."""
        if time.monotonic() < self._publish_paused_until:
            return None
        try:
            counts = await self._publish_raw(messages)
        except Exception as exc:
            self._publish_paused_until = time.monotonic() + self._publish_pause
            self._publish_pause = min(self._publish_pause * 2, PUBLISH_PAUSE_MAX)
            self._fault("publish", exc)
            return None
        self._publish_pause = PUBLISH_PAUSE
        if self._in_stream:
            self._recovered()
        return counts

    async def _listen(self) -> None:
        """Subscribe, announce this instance with a probe, and handle the channel's messages; resubscribe on faults."""
        delay = RETRY_MIN
        while True:
            # A client of its own, without a read timeout: a quiet channel is not a fault.
            subscriber: aioredis.Redis | None = None
            pubsub = None
            try:
                subscriber = aioredis.Redis.from_url(
                    self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_keepalive=True, retry=Retry(NoBackoff(), 0)
                )
                pubsub = subscriber.pubsub()
                await pubsub.subscribe(self.channel)
                # SUBSCRIBE is only sent above: wait for Redis to confirm it, or the probe could pass before it.
                confirmed = await pubsub.get_message(timeout=CONNECT_TIMEOUT)
                if not confirmed or confirmed.get("type") != "subscribe":
                    raise ConnectionError("no subscription confirmation")
                self._probe = uuid.uuid4().hex
                await self._publish_raw([self._message(PROBE, token=self._probe)])
                async for message in pubsub.listen():
                    delay = RETRY_MIN
                    if message.get("type") == "message":
                        await self._handle(message["data"])
            except Exception as exc:
                self._fault("subscribe", exc)
            finally:
                self._in_stream = False
                self._accounts.suspend()
                for closable in (pubsub, subscriber):
                    if closable is not None:
                        with contextlib.suppress(Exception):
                            await closable.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _handle(self, raw: bytes) -> None:
        """One message from the channel, handled between the messages before and after it."""
        try:
            data = SocketJSON.loads(raw)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        op, token, origin = data.get("op"), data.get("token"), data.get("origin")
        try:
            if op == EMIT:
                if data.get("done_by") != self.host_id:
                    await self._emit_here([tuple(item) for item in data.get("broadcasts") or ()])  # type: ignore[misc]
            elif op == PROBE:
                if origin == self.host_id and token == self._probe:
                    self._in_stream = True
                    self._accounts.resume()
                    self._publish_paused_until = 0.0
                    self._publish_pause = PUBLISH_PAUSE
                    log.info("Redis fan-out ready on channel %r", self.channel)
                    self._recovered()
            elif op == ACK:
                if data.get("to") == self.host_id and token in self._acks:
                    self._acks[token].add()
            elif op == SYNC:
                work = self._syncs.pop(str(token), None) if origin == self.host_id else None
                if work is not None:
                    await work()
            elif op in CONTROL_OPS and data.get("done_by") != self.host_id:
                await self.apply_here(op, data.get("args") or {})
                if data.get("ack", True):
                    await self._publish_many([self._message(ACK, token=token, to=origin)])
        except Exception:
            log.exception("handling %r from the Redis channel failed", op)

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Listen from the start, not from the first socket: invalidations must reach an instance without sockets."""
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="chatsvc-redis-fanout")

    async def close(self) -> None:
        """Stop listening and close the Redis clients."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.aclose()
            self._publisher = None
