"""The Redis fan-out of several instances: python-socketio's Redis manager, in one total order.

Every instance, the sender's included, delivers a broadcast when it comes back
from the one Redis channel, so all of them deliver in the channel's order;
python-socketio's stock pub/sub manager delivers a host's own broadcasts at once
and only the others' through Redis, which would let a host show its own id 6
before another host's id 5. chatsvc's control messages (cache invalidations,
membership changes, stream markers) travel in the same stream. When Redis is
unreachable, the instance delivers to its own sockets, logs the fault once, and
rejoins the stream when its own probe makes the round trip again. The design
as a whole is described in chatsvc/cluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import socketio
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from chatsvc.fanout.local import LeanManager

log = logging.getLogger(__name__)

# The "method" of chatsvc's own messages on the channel; python-socketio ignores methods it does not know.
CONTROL = "chatsvc"
# The host id of a message that every instance handles, its sender included.
EVERY_HOST = "*"
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 2.0
# How long a membership change waits for every instance to apply it before answering anyway.
ACK_TIMEOUT = 2.0
# How long a recovering join waits for its marker to come back before catching up locally.
SYNC_TIMEOUT = 5.0
RETRY_MIN = 0.1
RETRY_MAX = 2.0
# After a failed PUBLISH, deliver locally only for a while instead of failing (and maybe waiting for a
# timeout) on every batch: 1 s, doubling with each further failure up to 30 s, or until the probe is back.
PUBLISH_PAUSE = 1.0
PUBLISH_PAUSE_MAX = 30.0

ControlHandler = Callable[[dict[str, Any]], Awaitable[None]]
Broadcast = tuple[str, Any, Any, Any]  # event, data, room, skip_sid


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


class RedisFanout(socketio.AsyncRedisManager, LeanManager):
    """python-socketio's Redis manager, delivering every broadcast in the channel's order, with lean local delivery.

    The base order matters: AsyncRedisManager → AsyncPubSubManager → LeanManager
    (LeanEmitMixin → AsyncManager). The pub/sub manager's local delivery, the
    ``super().emit`` in its ``_handle_emit``, thus lands in the lean emit, while
    the public ``emit`` still goes through Redis.
    """

    name = "chatsvc-redis"

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(url, channel=channel, logger=log)
        self.redis: aioredis.Redis | None = None  # the publishing client, made on first use
        # True once this instance's probe came back through its current subscription.
        self._in_stream = False
        self._publish_paused_until = 0.0
        self._publish_pause = PUBLISH_PAUSE
        self._faulty = False
        self._probe: str | None = None
        self._handlers: dict[str, ControlHandler] = {}
        self._acks: dict[str, _Acks] = {}
        self._syncs: dict[str, Callable[[], Awaitable[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.thread: asyncio.Task[None] | None = None

    # -- state --------------------------------------------------------------

    def ordered(self) -> bool:
        """Whether broadcasts go through the channel (Redis is up and this instance's probe came back)."""
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

    # -- transport ----------------------------------------------------------

    def _redis_connect(self) -> None:
        # The publishing client: short timeouts and one immediate retry, so a
        # stale pooled connection after a Redis restart is replaced quietly and
        # a dead Redis fails fast. The subscription has a client of its own.
        self.redis = aioredis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),
        )
        self.connected = True

    async def _publish_raw(self, messages: list[dict[str, Any]]) -> list[int]:
        """PUBLISH each message in order, in one round trip; how many subscribers got each. Raises on Redis errors."""
        if self.redis is None:
            self._redis_connect()
        assert self.redis is not None
        payloads = [self.json.dumps(message) for message in messages]
        if len(payloads) == 1:
            return [int(await self.redis.publish(self.channel, payloads[0]))]
        async with self.redis.pipeline(transaction=False) as pipe:
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

    async def _publish(self, data: Any) -> int | None:
        """The pub/sub manager's publish (remote room changes, disconnects, callbacks), without retry storms."""
        counts = await self._publish_many([data])
        return None if counts is None else counts[0]

    async def _redis_listen_with_retries(self) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        delay = RETRY_MIN
        while True:
            # A client of its own, without a read timeout: a quiet channel is not a fault.
            subscriber: aioredis.Redis | None = None
            pubsub = None
            try:
                subscriber = aioredis.Redis.from_url(
                    self.redis_url,
                    socket_connect_timeout=CONNECT_TIMEOUT,
                    socket_keepalive=True,
                    retry=Retry(NoBackoff(), 0),
                )
                pubsub = subscriber.pubsub()
                await pubsub.subscribe(self.channel)
                # SUBSCRIBE is only sent above: wait for Redis to confirm it, or the probe could pass before it.
                confirmed = await pubsub.get_message(timeout=CONNECT_TIMEOUT)
                if not confirmed or confirmed.get("type") != "subscribe":
                    raise ConnectionError("no subscription confirmation")
                self._probe = uuid.uuid4().hex
                await self._publish_raw([self._control("probe", host_id=self.host_id, token=self._probe)])
                async for message in pubsub.listen():
                    delay = RETRY_MIN
                    yield message
            except Exception as exc:
                self._fault("subscribe", exc)
            finally:
                self._in_stream = False
                for closable in (pubsub, subscriber):
                    if closable is not None:
                        with contextlib.suppress(Exception):
                            await closable.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _listen(self) -> AsyncIterator[Any]:  # type: ignore[override]
        channel = self.channel.encode()
        async for message in self._redis_listen_with_retries():
            if message.get("channel") != channel or message.get("type") != "message":
                continue
            try:
                data = self.json.loads(message["data"])
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("method") == CONTROL:
                # Handled right here, between the broadcasts before and after it.
                await self._handle_control(data)
            else:
                yield data

    # -- broadcasts ---------------------------------------------------------

    async def emit(  # type: ignore[override]
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        """Broadcast through the channel in order; one socket of this instance is served directly."""
        room = to or room
        namespace = namespace or "/"
        if callback is not None:
            await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid, callback=callback)
            return
        local = isinstance(room, str) and self.eio_sid_from_sid(room, namespace) is not None
        binary = self.server.packet_class.data_is_binary(list(data) if isinstance(data, tuple) else [data])
        if kwargs.get("ignore_queue") or local or binary:
            # ignore_queue makes the pub/sub manager deliver on this instance only (binary: its stock path).
            await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid, ignore_queue=not binary)
            return
        await self.emit_many(namespace, [(event, data, room, skip_sid)])

    async def emit_many(self, namespace: str, broadcasts: list[Broadcast]) -> None:
        """Broadcast JSON events to rooms of every instance, in this order, with one Redis round trip."""
        messages = [
            {
                "method": "emit",
                "event": event,
                "data": list(data) if isinstance(data, tuple) else [data],
                "binary": False,
                "namespace": namespace,
                "room": room,
                "skip_sid": skip_sid,
                "callback": None,
            }
            for event, data, room, skip_sid in broadcasts
        ]
        if self.ordered():
            if await self._publish_many([{**message, "host_id": EVERY_HOST} for message in messages]) is not None:
                return
            # Not taken by Redis: this instance's sockets still get them.
            for message in messages:
                await self._handle_emit(message)
            return
        for message in messages:
            await self._handle_emit(message)
        await self._publish_many([{**message, "host_id": self.host_id} for message in messages])

    # -- control messages ---------------------------------------------------

    def _control(self, op: str, *, host_id: str, token: str | None = None, **fields: Any) -> dict[str, Any]:
        return {"method": CONTROL, "op": op, "origin": self.host_id, "host_id": host_id, "token": token, **fields}

    def on_control(self, op: str, handler: ControlHandler) -> None:
        """Register what every instance does when a control message ``op`` arrives."""
        self._handlers[op] = handler

    async def broadcast_control(self, op: str, args: dict[str, Any], *, wait: bool = False) -> None:
        """Run ``op`` on every instance, this one included, in the channel's order.

        With ``wait``, return once every subscribed instance has run it (or
        after ACK_TIMEOUT, logged), so a change is in force everywhere when the
        caller answers.
        """
        token = uuid.uuid4().hex
        if self.ordered():
            acks = _Acks()
            if wait:
                self._acks[token] = acks
            try:
                counts = await self._publish_many(
                    [self._control(op, host_id=EVERY_HOST, token=token, args=args, ack=wait)]
                )
                if counts is not None:
                    if wait and not await acks.wait(counts[0], ACK_TIMEOUT):
                        log.warning(
                            "%s: %d of %d instances confirmed within %ss", op, acks.received, counts[0], ACK_TIMEOUT
                        )
                    return
            finally:
                self._acks.pop(token, None)
        await self._run_handler(op, args)
        await self._publish_many([self._control(op, host_id=self.host_id, token=token, args=args, ack=False)])

    def notify_control(self, op: str, args: dict[str, Any]) -> None:
        """Run ``op`` on the other instances, without waiting (this one did its part already)."""
        task = asyncio.get_running_loop().create_task(
            self._publish_many([self._control(op, host_id=self.host_id, args=args, ack=False)])
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_in_stream(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` on this instance at the channel's current end: after every earlier broadcast, before any later.

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
        if await self._publish_many([self._control("sync", host_id=self.host_id, token=token)]) is None:
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

    async def _run_handler(self, op: str, args: dict[str, Any]) -> None:
        handler = self._handlers.get(op)
        if handler is None:
            log.warning("unknown control message %r", op)
            return
        await handler(args)

    async def _handle_control(self, data: dict[str, Any]) -> None:
        op = data.get("op")
        token = data.get("token")
        origin = data.get("origin")
        try:
            if op == "probe":
                if origin == self.host_id and token == self._probe:
                    self._in_stream = True
                    self._publish_paused_until = 0.0
                    self._publish_pause = PUBLISH_PAUSE
                    log.info("Redis fan-out ready on channel %r", self.channel)
                    self._recovered()
            elif op == "ack":
                if data.get("to") == self.host_id and token in self._acks:
                    self._acks[token].add()
            elif op == "sync":
                work = self._syncs.pop(str(token), None) if origin == self.host_id else None
                if work is not None:
                    await work()
            elif data.get("host_id") != self.host_id and isinstance(op, str):
                await self._run_handler(op, data.get("args") or {})
                if data.get("ack"):
                    await self._publish_many([self._control("ack", host_id=self.host_id, token=token, to=origin)])
        except Exception:
            log.exception("control message %r failed", op)

    # -- life cycle ---------------------------------------------------------

    async def close(self) -> None:
        """Stop listening and close the Redis clients."""
        if self.thread is not None:
            self.thread.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.thread
            self.thread = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=COMMAND_TIMEOUT)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
            self.redis = None
            self.connected = False
