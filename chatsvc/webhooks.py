"""Webhooks for unseen messages: tell the host application about messages some member was not online to see.

How a delivery goes (docs/sidecar.md has the receiver's side):

1. The writer stores each batch of messages and, in the same transaction,
   one ``webhook_outbox`` row per message (chatsvc/store/webhooks.py): one
   more statement per batch, no second disk sync.
2. The fan-out delivers the batch; as it queues each message on this
   instance's sockets it records here, in memory, which members had a socket
   in the room (:class:`OnlineLog`). That is "online at that moment": the
   delivery is the moment the message reaches the sockets there were.
3. :class:`WebhookSender` claims due rows with a lease (one instance at a
   time sends each), works out the recipients (the room's members but the
   sender and those recorded online), POSTs one signed call per message,
   deletes what was delivered, and reschedules failures with exponential
   backoff until the retry window has passed.

What is lost in a crash is only the in-memory record of who was online: rows
whose messages this process delivered but did not send are then sent to
every member but the sender (more notifications, never fewer). Sockets in
``trust-client`` mode belong to no user and count as no one online.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from redis import asyncio as aioredis

from chatsvc.config import Config
from chatsvc.db import Database
from chatsvc.store import Connection
from chatsvc.store.webhooks import (
    claim_deliveries,
    count_pending,
    finish_deliveries,
    list_messages_with_members,
    newest_message_id,
    postpone_deliveries,
)
from chatsvc.webhook_client import WebhookClient

log = logging.getLogger(__name__)

EVENT_TYPE = "message.unseen"
# Deliveries claimed (and sent concurrently) per round, and the shortest time from one round to the next.
CLAIM_BATCH = 256
# Calls under way at once.
CONNECTIONS = 16
ROUND_SECONDS = 0.25
# How often the sender looks for due retries and for rows other instances delivered, when not woken sooner.
POLL_SECONDS = 1.0
# A failed attempt to make again: message id, seconds from now, recipients.
Retry = tuple[int, float, list[int]]
# What became of one attempt.
SENT, UNNEEDED, FAILED, RETRY = "sent", "unneeded", "failed", "retry"
# A claim lasts the attempt's timeout plus this: long enough to record the outcome, short after a crash.
LEASE_MARGIN_SECONDS = 5.0
# Messages whose online members are remembered; older ones have long been sent.
ONLINE_LOG_SIZE = 100_000
# A message is sent at the latest this long after it was stored, even if an instance never reported it.
STALE_SECONDS = 30.0
# With Redis: each instance reports at least this often; one silent for LIVE_SECONDS is no longer waited for.
REPORT_SECONDS = 2.0
LIVE_SECONDS = 10.0
# Reports are needed until a delivery's first attempt fixes its recipients.
ONLINE_TTL_SECONDS = 120


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Chatsvc-Signature`` value of a body sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def delivery_id(message_id: int) -> str:
    """The stable id of a message's delivery, the same in every attempt, for the receiver to de-duplicate."""
    return f"unseen-{message_id}"


class OnlineLog:
    """Which members had a socket of this instance in the room when each message was delivered here."""

    def __init__(self, size: int = ONLINE_LOG_SIZE, *, relay: bool = False) -> None:
        self._online: OrderedDict[int, frozenset[int]] = OrderedDict()
        self._size = size
        # With the sender in a process of its own: what was recorded since it was last passed on to it.
        self._relay: dict[int, frozenset[int]] | None = {} if relay else None
        # The newest message delivered to this instance's sockets: the sender waits for it.
        self.delivered_up_to = 0
        self.delivered = asyncio.Event()

    async def start(self, delivered_up_to: int) -> None:
        """Begin with every message up to ``delivered_up_to`` counted as delivered (stored before this process)."""
        self.delivered_up_to = max(self.delivered_up_to, delivered_up_to)

    async def close(self) -> None:
        """Nothing to stop here."""

    def record(self, message_id: int, online: frozenset[int]) -> None:
        """Remember a delivered message's online members (called by the fan-out as it delivers)."""
        if online:
            self._online[message_id] = online
            if len(self._online) > self._size:
                self._online.popitem(last=False)
            if self._relay is not None:
                self._relay[message_id] = online
        self.advance(message_id)

    def advance(self, message_id: int) -> None:
        """Count every message up to ``message_id`` as delivered here."""
        if message_id > self.delivered_up_to:
            self.delivered_up_to = message_id
        self.delivered.set()

    def take_relayed(self) -> dict[int, frozenset[int]]:
        """What was recorded (with someone online) since the last call; only with ``relay``."""
        taken, self._relay = self._relay or {}, {}
        return taken

    def remembered(self) -> dict[int, frozenset[int]]:
        """Every message's online members still remembered (what a restarted sender process is told)."""
        return dict(self._online)

    async def settled_up_to(self) -> int:
        """The newest message every instance has delivered: who was online is known up to it."""
        return self.delivered_up_to

    async def online(self, message_ids: list[int]) -> dict[int, frozenset[int]]:
        """The members recorded online for each message (none if it was never recorded)."""
        return {message_id: self._online.get(message_id, frozenset()) for message_id in message_ids}

    def forget(self, message_ids: list[int]) -> None:
        """Drop messages whose delivery is settled."""
        for message_id in message_ids:
            self._online.pop(message_id, None)


class RedisOnlineLog(OnlineLog):
    """The online log of instances sharing rooms through Redis: each reports what it recorded, the sender unions.

    Every instance delivers every batch (chatsvc/fanout/redis.py), so each
    knows who was online on its own sockets. It writes those sets to Redis
    (one pipelined round trip per flush, off the send path) and, after them,
    how far it has delivered. The sender takes a message once every live
    instance has reported past it, and unions the sets. An instance that stops
    reporting for LIVE_SECONDS no longer counts (it has no sockets, or its
    sockets will reconnect elsewhere); one that lags is waited for at most
    STALE_SECONDS. While Redis is unreachable each instance knows only its own
    sockets, and members online elsewhere may be notified.
    """

    def __init__(
        self, url: str, channel: str, size: int = ONLINE_LOG_SIZE, *, relay: bool = False, report: bool = True
    ) -> None:
        super().__init__(size, relay=relay)
        # False in a sender process: the server process it serves reports what its fan-out records.
        self._reporting = report
        self._url = url
        self._prefix = f"{channel}:webhook"
        self._host = uuid.uuid4().hex
        self._redis: aioredis.Redis | None = None
        self._unreported: dict[int, frozenset[int]] = {}
        self._report = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, delivered_up_to: int) -> None:
        """Connect and start reporting."""
        await super().start(delivered_up_to)
        self._redis = aioredis.Redis.from_url(self._url, socket_connect_timeout=2.0, socket_timeout=2.0)
        if self._reporting:
            self._task = asyncio.create_task(self._reporter(), name="chatsvc-webhook-online-log")

    async def close(self) -> None:
        """Stop reporting and leave the set of live instances."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            if self._reporting:
                with contextlib.suppress(Exception):
                    await self._redis.hdel(f"{self._prefix}:delivered", self._host)
            await self._redis.aclose()

    def record(self, message_id: int, online: frozenset[int]) -> None:
        """Remember here, and report to the other instances soon."""
        super().record(message_id, online)
        if not self._reporting:
            return
        if online:
            self._unreported[message_id] = online
        self._report.set()

    async def _reporter(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_SECONDS):  # not wait_for: see WebhookSender._run
                    await self._report.wait()
            self._report.clear()
            batch, self._unreported = self._unreported, {}
            up_to = self.delivered_up_to
            try:
                await self._write_report(batch, up_to)
            except Exception as exc:  # Redis down: keep the sets for the next try, within bounds
                if len(self._unreported) + len(batch) <= ONLINE_LOG_SIZE:
                    self._unreported = {**batch, **self._unreported}
                log.warning("reporting online members to Redis failed: %s", exc)

    async def _write_report(self, batch: dict[int, frozenset[int]], up_to: int) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for message_id, users in batch.items():
                key = f"{self._prefix}:online:{message_id}"
                pipe.sadd(key, *users)
                pipe.expire(key, ONLINE_TTL_SECONDS)
            # After the sets: a reader that sees this mark finds every set up to it.
            pipe.hset(f"{self._prefix}:delivered", self._host, f"{up_to} {time.time():.3f}")
            await pipe.execute()

    async def settled_up_to(self) -> int:
        """The smallest mark of the live instances (this one's included)."""
        up_to = self.delivered_up_to
        if self._redis is None:
            return up_to
        try:
            marks = await self._redis.hgetall(f"{self._prefix}:delivered")
        except Exception as exc:
            log.warning("reading the instances' delivery marks from Redis failed: %s", exc)
            return up_to
        now = time.time()
        for host, mark in marks.items():
            text = mark.decode() if isinstance(mark, bytes) else mark
            mark_id, _, reported = text.partition(" ")
            if now - float(reported) > LIVE_SECONDS:
                if now - float(reported) > 10 * LIVE_SECONDS:
                    with contextlib.suppress(Exception):
                        await self._redis.hdel(f"{self._prefix}:delivered", host)
                continue
            up_to = min(up_to, int(mark_id))
        return up_to

    async def online(self, message_ids: list[int]) -> dict[int, frozenset[int]]:
        """This instance's record united with every instance's report."""
        found = await super().online(message_ids)
        if self._redis is None or not message_ids:
            return found
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for message_id in message_ids:
                    pipe.smembers(f"{self._prefix}:online:{message_id}")
                reported = await pipe.execute()
        except Exception as exc:
            log.warning("reading online members from Redis failed: %s", exc)
            return found
        return {
            message_id: found[message_id] | frozenset(int(uid) for uid in users)
            for message_id, users in zip(message_ids, reported, strict=True)
        }


class WebhookSender:
    """Drains the webhook outbox: one signed POST per message, retried with backoff, one instance at a time."""

    def __init__(
        self, config: Config, db: Database, online: OnlineLog, on_round: Callable[[list[int]], None] | None = None
    ) -> None:
        assert config.webhook_url is not None and config.webhook_secret is not None
        self._url = config.webhook_url
        self._secret = config.webhook_secret
        self._window = config.webhook_retry_window
        self._backoff = config.webhook_backoff
        self._backoff_max = config.webhook_backoff_max
        self._timeout = config.webhook_timeout
        self._db = db
        self._online = online
        # Told, after each round, the messages whose deliveries it settled (a sender process reports them).
        self._on_round = on_round
        # Other instances use the database too (they share rooms through Redis): claims take leases.
        self._shared = config.redis_url is not None
        self._task: asyncio.Task[None] | None = None
        self._client: WebhookClient | None = None
        self._next_retry = POLL_SECONDS
        # Read by chatsvc/metrics.py when scraped.
        self.pending = 0
        self.sent = 0
        self.failed = 0
        self.attempts_failed = 0
        # Deliveries with no one to tell: every member but the sender was online (or the message is gone).
        self.unneeded = 0

    async def start(self, delivered_up_to: int | None = None) -> None:
        """Start sending (after the database is open): messages stored before now, or up to
        ``delivered_up_to`` (what the server process counted so), count as delivered."""
        # Rows left by an earlier process are due at once: their messages were delivered (or never will be).
        if delivered_up_to is None:
            delivered_up_to = await newest_message_id(self._db.reader)
        await self._online.start(delivered_up_to)
        self._client = WebhookClient(self._url, connections=CONNECTIONS, timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="chatsvc-webhook-sender")

    @property
    def up(self) -> bool:
        """Whether it is sending (started and not stopped)."""
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Stop; deliveries under way are abandoned and their leases expire, so another round sends them."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self._online.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # The soonest retry this instance scheduled, if sooner than the next poll.
            self._next_retry = POLL_SECONDS
            began = loop.time()
            try:
                claimed = await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook round failed")
                claimed = 0
            if claimed < CLAIM_BATCH:
                self._online.delivered.clear()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancel that comes as the event is
                # set (the last records before shutdown), and close() would then wait for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_retry):
                        await self._online.delivered.wait()
            # Rounds are spaced so that, under load, each takes many deliveries: the round's disk syncs
            # then stay few beside the writer's, whose batches they would otherwise match one for one.
            await asyncio.sleep(max(0.0, began + ROUND_SECONDS - loop.time()))

    async def _round(self) -> int:
        """Claim and send one round of due deliveries; how many were claimed."""
        # The lease outlasts the attempt, so no other instance sends the same row meanwhile. An instance
        # alone on its database (no Redis: the instance lock is exclusive) needs none, and only reads.
        lease = self._timeout + LEASE_MARGIN_SECONDS if self._shared else None
        up_to = await self._online.settled_up_to()

        def claim(conn: Connection) -> Awaitable[list[dict[str, Any]]]:
            return claim_deliveries(
                conn, limit=CLAIM_BATCH, lease_seconds=lease, up_to_id=up_to, stale_seconds=STALE_SECONDS
            )

        rows = await (self._db.write_statement(claim) if lease is not None else claim(self._db.reader))
        done: list[int] = []
        if rows:
            ids = [int(row["messageId"]) for row in rows]
            messages = await list_messages_with_members(self._db.reader, ids)
            online = await self._online.online([i for i, row in zip(ids, rows, strict=True) if not row["recipientIds"]])
            retries: list[Retry] = []
            outcomes = await asyncio.gather(
                *(
                    self._attempt(row, messages.get(i), online.get(i, frozenset()), retries)
                    for i, row in zip(ids, rows, strict=True)
                )
            )
            done = [i for i, outcome in zip(ids, outcomes, strict=True) if outcome != RETRY]
            # The round's outcomes in one transaction: one disk sync, whatever the number of calls. Without
            # retries (the usual round) it is one DELETE in autocommit: one trip to the database thread while
            # holding the write lock the message writer also needs, rather than three (BEGIN, DELETE, COMMIT)
            # with this process's event loop in between.
            if retries:
                async with self._db.transaction() as conn:
                    await finish_deliveries(conn, done)
                    await postpone_deliveries(conn, retries)
            elif done:
                await self._db.write_statement(lambda conn: finish_deliveries(conn, done))
            self._online.forget(done)
            # Counted once settled in the database, so a reader of the metrics finds the outbox agreeing.
            self.sent += outcomes.count(SENT)
            self.failed += outcomes.count(FAILED)
            self.unneeded += outcomes.count(UNNEEDED)
        self.pending = await count_pending(self._db.reader)
        if self._on_round is not None:
            self._on_round(done)
        return len(rows)

    async def _attempt(
        self, row: dict[str, Any], message: dict[str, Any] | None, online: frozenset[int], retries: list[Retry]
    ) -> str:
        """Send one delivery; the outcome (SENT, UNNEEDED, FAILED; RETRY, added to ``retries``)."""
        message_id = int(row["messageId"])
        if message is None:
            return UNNEEDED
        if row["recipientIds"] is not None:
            recipients = list(orjson.loads(row["recipientIds"]))
        else:
            members = message["members"]
            recipients = [uid for uid in members if uid != message["senderId"] and uid not in online]
        message.pop("members", None)
        if not recipients:
            return UNNEEDED
        body = orjson.dumps(
            {"type": EVENT_TYPE, "id": delivery_id(message_id), "message": message, "recipientIds": recipients}
        )
        error = await self._post(body)
        if error is None:
            return SENT
        attempts = int(row["attempts"]) + 1
        age = time.time() - _unix_time(row["createTime"])
        delay = min(self._backoff * 2 ** (attempts - 1), self._backoff_max)
        if age + delay > self._window:
            log.error("webhook for message %d given up after %d attempts: %s", message_id, attempts, error)
            return FAILED
        self.attempts_failed += 1
        self._next_retry = min(self._next_retry, delay)
        log.warning("webhook for message %d failed (%s); attempt %d in %.1fs", message_id, error, attempts + 1, delay)
        retries.append((message_id, delay, recipients))
        return RETRY

    async def _post(self, body: bytes) -> str | None:
        """POST a signed body; None on a 2xx answer, else what went wrong."""
        assert self._client is not None
        answer = await self._client.post(body, sign(self._secret, int(time.time()), body))
        if isinstance(answer, str):
            return answer
        return None if 200 <= answer < 300 else f"HTTP {answer}"


def _unix_time(stored: str) -> float:
    """A stored time (ISO 8601 UTC text, as both engines return it) as unix seconds."""
    return datetime.fromisoformat(stored.replace("Z", "+00:00")).timestamp()
