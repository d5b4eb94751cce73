"""The webhook sender in a process of its own (``CHATSVC_WEBHOOK_SENDER=process``, the default).

The calls (JSON, signing, HTTP) cost CPU for every message some member was
not online to see; made on the server's event loop, they take it from the
send path. So the server starts ``python -m chatsvc.webhook_process``, which
runs the same :class:`~chatsvc.webhooks.WebhookSender` on its own connections
to the database, and the server's core only writes the outbox rows.

Between the two, over the child's stdin and stdout:

- server → sender: first the settings, the mark up to which messages count as
  delivered and the online members the server still remembers (a pickle,
  8-byte length first); then, at most every FEED_SECONDS, one JSON line of
  the fan-out's records since the last (members online other than the
  sender): ``[delivered_up_to, [[message_id, [user_id, ...]], ...]]``.
- sender → server: one JSON line per round, ``{"sent", "failed", "unneeded",
  "attemptsFailed"}`` (increments), ``"pending"`` and ``"done"`` (the messages
  whose deliveries it settled), so the server's metrics stay right.

:class:`WebhookProcess` (in the server) starts the child, restarts it with
backoff if it dies, and stops it on shutdown by closing its stdin. The child
exits when its stdin closes, so a server killed with SIGKILL leaves no sender
behind. Only one child runs at a time: a restarted one starts after the old
one has exited, so without Redis one sender claims rows without leases, as
the server alone did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from chatsvc.config import Config
from chatsvc.db import Database, open_database
from chatsvc.logs import configure_logging
from chatsvc.store.webhooks import newest_message_id
from chatsvc.webhooks import OnlineLog, RedisOnlineLog, WebhookSender

log = logging.getLogger(__name__)

# A child that died is started again after this long, doubled while it keeps dying soon after its start.
RESTART_SECONDS = 0.2
RESTART_MAX_SECONDS = 10.0
# A child that ran this long counts as having started well: the next restart waits RESTART_SECONDS again.
STABLE_SECONDS = 30.0
# How long shutdown waits for the child to exit after its stdin closed, before killing it.
STOP_SECONDS = 10.0
# The child's niceness above the server's: its calls are background work.
SENDER_NICE = 10
# The shortest time from one line of records to the child to the next.
FEED_SECONDS = 0.05
# The child's connections: one reader and one writer are all a sender uses.
CHILD_POOL_SIZE = 2
LENGTH_BYTES = 8
# A line from the child carries at most one round's settled ids (CLAIM_BATCH of them).
LINE_LIMIT = 1 << 20


@dataclass
class SenderCounts:
    """The sender's counts, as chatsvc/metrics.py reads them (summed over every child started)."""

    pending: int = 0
    sent: int = 0
    failed: int = 0
    attempts_failed: int = 0
    unneeded: int = 0


class WebhookProcess(SenderCounts):
    """In the server: starts, feeds, supervises and stops the sender process."""

    def __init__(self, config: Config, db: Database, online: OnlineLog) -> None:
        super().__init__()
        self._config = config
        self._db = db
        self._online = online
        self._task: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._closing = False
        # The running child's process id (None between children), and how many were started.
        self.pid: int | None = None
        self.starts = 0
        # How the last child ended (0: it stopped by itself once its stdin closed; -9: it was killed).
        self.exit_status: int | None = None
        # Set once a child has made its first round (it is sending); cleared when it exits.
        self.ready = asyncio.Event()

    @property
    def up(self) -> bool:
        """Whether a sender process runs and has made its first round."""
        return self.ready.is_set()

    async def start(self) -> None:
        """Start the sender process (after the database is open, before the writer)."""
        # What is stored before now counts as delivered, as for a sender on the server's loop.
        await self._online.start(await newest_message_id(self._db.reader))
        self._task = asyncio.create_task(self._supervise(), name="chatsvc-webhook-process")

    async def close(self) -> None:
        """Pass on the last records, close the child's stdin, wait for it to exit (kill it after STOP_SECONDS)."""
        self._closing = True
        process = self._process
        if process is not None and process.stdin is not None and process.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                process.stdin.write(self._records_line())
                process.stdin.close()
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), STOP_SECONDS)
            except TimeoutError:
                log.warning("webhook sender process %d did not stop within %gs; killed", process.pid, STOP_SECONDS)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            self.exit_status = process.returncode
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._online.close()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_SECONDS
        while not self._closing:
            began = loop.time()
            try:
                status: int | str | None = await self._run_child()
            except (OSError, ValueError) as exc:
                status = f"{type(exc).__name__}: {exc}"
            if self._closing:
                return
            if loop.time() - began >= STABLE_SECONDS:
                delay = RESTART_SECONDS
            log.error("webhook sender process exited (%s); starting another in %.1fs", status, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_SECONDS)

    async def _run_child(self) -> int | None:
        """Start one child, feed it until it exits; its exit status."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatsvc.webhook_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        self._process, self.pid = process, process.pid
        self.starts += 1
        assert process.stdin is not None and process.stdout is not None
        # Taken together, with no await between: what the child is told first and what it is fed after
        # leave out no record (one recorded in both is harmless).
        self._online.take_relayed()
        settings = pickle.dumps(
            {
                "config": self._config,
                "delivered_up_to": self._online.delivered_up_to,
                "online": {message_id: sorted(users) for message_id, users in self._online.remembered().items()},
            }
        )
        process.stdin.write(len(settings).to_bytes(LENGTH_BYTES, "big") + settings)
        log.info("webhook sender process %d started", process.pid)
        feeding = asyncio.create_task(self._feed(process.stdin), name="chatsvc-webhook-process-feed")
        try:
            while line := await process.stdout.readline():
                self._count(orjson.loads(line))
            return await process.wait()
        finally:
            self.ready.clear()
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await feeding
            if process.returncode is None:
                # Only when this task is cancelled mid-way: no child outlives its supervisor.
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            self._process, self.pid = None, None
            self.exit_status = process.returncode

    async def _feed(self, stdin: asyncio.StreamWriter) -> None:
        """Pass the fan-out's records on to the child, at most one line per FEED_SECONDS."""
        delivered = self._online.delivered
        while True:
            await delivered.wait()
            delivered.clear()
            stdin.write(self._records_line())
            await stdin.drain()
            # The writer's batches come hundreds of times a second under load; the child makes a round at
            # most every ROUND_SECONDS. Waiting here gathers their records into one line: one write and one
            # wake-up of each process per interval instead of per batch, at most this much later.
            await asyncio.sleep(FEED_SECONDS)

    def _records_line(self) -> bytes:
        records = [[message_id, sorted(users)] for message_id, users in self._online.take_relayed().items()]
        return orjson.dumps([self._online.delivered_up_to, records]) + b"\n"

    def _count(self, report: dict[str, Any]) -> None:
        self.pending = int(report["pending"])
        self.sent += int(report["sent"])
        self.failed += int(report["failed"])
        self.attempts_failed += int(report["attemptsFailed"])
        self.unneeded += int(report["unneeded"])
        self._online.forget(report["done"])
        self.ready.set()


class _Reporter:
    """In the child: after each round, the sender's new counts and settled ids as a line to the server."""

    def __init__(self, channel: asyncio.WriteTransport) -> None:
        self._channel = channel
        self._last = SenderCounts()
        self.sender: WebhookSender | None = None

    def __call__(self, done: list[int]) -> None:
        sender, last = self.sender, self._last
        assert sender is not None
        report = {
            "pending": sender.pending,
            "sent": sender.sent - last.sent,
            "failed": sender.failed - last.failed,
            "attemptsFailed": sender.attempts_failed - last.attempts_failed,
            "unneeded": sender.unneeded - last.unneeded,
            "done": done,
        }
        self._last = SenderCounts(sender.pending, sender.sent, sender.failed, sender.attempts_failed, sender.unneeded)
        self._channel.write(orjson.dumps(report) + b"\n")


async def _serve() -> None:
    """The child's life: read the settings, send until stdin closes, stop."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer)
    # The reports get stdout's descriptor to themselves: anything printed goes to stderr, with the logs.
    report_file = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    channel, _ = await loop.connect_write_pipe(asyncio.Protocol, report_file)
    try:
        length = int.from_bytes(await stdin.readexactly(LENGTH_BYTES), "big")
    except asyncio.IncompleteReadError:
        return  # the server went before telling anything
    settings = pickle.loads(await stdin.readexactly(length))
    config: Config = settings["config"]
    configure_logging(config.log_format, config.log_level)
    online = (
        OnlineLog()
        if config.redis_url is None
        else RedisOnlineLog(config.redis_url, config.redis_channel, report=False)
    )
    for message_id, users in settings["online"].items():
        online.record(message_id, frozenset(users))
    # synchronous=NORMAL on this process's own SQLite connections: its writes (deleting what was sent,
    # postponing retries, leases) then commit without waiting for the disk, so it holds the write lock the
    # server's writer needs for less time. A power loss may undo its last rounds: their deliveries are sent
    # again (at-least-once) and a lease is lost only with the machine whose instances held it. The server's
    # own connections keep CHATSVC_SQLITE_SYNCHRONOUS: messages and their outbox rows are as durable as ever.
    db = open_database(config.with_changes(database_pool_size=CHILD_POOL_SIZE, sqlite_synchronous="NORMAL"))
    await db.open()
    reporter = _Reporter(channel)
    sender = WebhookSender(config, db, online, on_round=reporter)
    reporter.sender = sender
    try:
        await sender.start(delivered_up_to=settings["delivered_up_to"])
        while line := await stdin.readline():
            delivered_up_to, records = orjson.loads(line)
            for message_id, users in records:
                online.record(message_id, frozenset(users))
            online.advance(delivered_up_to)
        # End of input: the server closed it, or is gone.
        log.debug("webhook sender process stopping: its server closed the pipe")
    finally:
        await sender.close()
        await db.close()
        channel.close()


def main() -> int:
    """``python -m chatsvc.webhook_process``: the sender process the server starts (not to be run by hand)."""
    # Ctrl-C reaches the whole process group: the server stops this child itself, after its last records.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the server in the scheduler's eyes: on a core it shares with the server (or the server's clients),
    # the calls wait for the send path, never the reverse; idle cores still run them at full speed.
    os.nice(SENDER_NICE)
    try:
        import uvloop  # as the server does (chatsvc/__main__.py): less CPU per call
    except ImportError:
        asyncio.run(_serve())
    else:
        uvloop.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
