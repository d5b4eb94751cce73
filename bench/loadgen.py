"""The load generator: worker processes holding Socket.IO clients, and the pool that drives them.

Each worker process runs its own event loop with a share of the sockets.
Every socket receives; some also send. A message's content carries its send
time, its sender and the sender's sequence number (``t=<ns>;s=<sender>;n=<seq>``),
found in each broadcast frame by substring search, so a delivery costs a
search and three ``int()`` calls, not a JSON decode. Times are
``time.monotonic_ns()``, one clock for every process on the machine.

A workload goes through the same steps in every worker, each started by the
coordinator (bench/run.py) over a pipe: ``setup`` (connect and join rooms),
``start`` (send until the window ends, then wait for the last acks),
``finish`` (wait until every receiver has every acknowledged message, then
count what is missing or duplicated) and ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

from bench.rawsio import RawSocket

Mode = Literal["closed", "open", "idle"]

MARKER = '"content":"t='
MESSAGE_ID = '"message":{"id":'
CHATROOM_ID = '"chatroomId":'
TYPING_EVERY_S = 2.0
# A closed-loop sender whose own message does not come back in this time sends the next one anyway.
STALL_TIMEOUT_S = 10.0
ACK_WAIT_S = 15.0
CONNECT_CONCURRENCY = 64


@dataclass(frozen=True)
class SocketSpec:
    """One client socket: who it is, which rooms it joins, where it sends (if it does)."""

    index: int
    user_id: int
    token: str
    rooms: tuple[int, ...]
    send_room: int | None = None
    # Open loop: where in each send interval this sender sends (0 to 1), so senders take turns.
    phase: float = 0.0
    # Which of the plan's servers this socket connects to (an index into Plan.base_urls, modulo its length).
    server: int = 0


@dataclass(frozen=True)
class Plan:
    """What one worker does in one workload."""

    # One URL per server: several when chatsvc runs as several instances (bench --cluster).
    base_urls: tuple[str, ...]
    sockets: list[SocketSpec]
    mode: Mode
    rate_per_sender: float = 0.0
    pad: int = 0
    # Issue 15's variant: every socket also marks each message it receives read and says it is typing every 2 s.
    receipts: bool = False
    # With receipts: 0 marks every message; otherwise a socket marks the newest it received at most this often (s).
    receipts_debounce: float = 0.0


def parse_stamp(frame: str) -> tuple[int, int, int] | None:
    """The ``(send time, sender, sequence)`` embedded in a broadcast frame, or None for other frames."""
    i = frame.find(MARKER)
    if i < 0:
        return None
    start = i + len(MARKER)
    fields = frame[start : frame.find('"', start)].split(";", 3)
    return int(fields[0]), int(fields[1][2:]), int(fields[2][2:])


# Per sender: how many messages it sent, and the sequence numbers the server refused (never broadcast).
Finals = dict[int, tuple[int, list[int]]]


@dataclass
class Received:
    """What one receiver got from each sender, checked against the senders' sequence numbers."""

    next_seq: dict[int, int] = field(default_factory=dict)
    gaps: dict[int, set[int]] = field(default_factory=dict)
    duplicates: int = 0
    out_of_order: int = 0

    def record(self, sender: int, seq: int) -> None:
        """Note one delivery."""
        expected = self.next_seq.get(sender, 0)
        if seq == expected:
            self.next_seq[sender] = seq + 1
        elif seq > expected:
            self.gaps.setdefault(sender, set()).update(range(expected, seq))
            self.next_seq[sender] = seq + 1
        else:
            gaps = self.gaps.get(sender)
            if gaps is not None and seq in gaps:
                gaps.discard(seq)
                self.out_of_order += 1
            else:
                self.duplicates += 1

    def missing(self, senders: list[int], finals: Finals) -> int:
        """How many messages of these senders, not refused by the server, have not arrived."""
        total = 0
        for sender in senders:
            sent, refused = finals.get(sender, (0, []))
            lost = set(refused)
            total += len(self.gaps.get(sender, set()) - lost)
            total += sum(1 for n in range(self.next_seq.get(sender, 0), sent) if n not in lost)
        return total


@dataclass
class Member:
    """A connected socket and what it has received."""

    spec: SocketSpec
    sock: RawSocket | None = None
    received: Received = field(default_factory=Received)
    # Closed loop: the sequence number this sender waits to see come back, and the future to wake it.
    waiting: tuple[int, asyncio.Future[None]] | None = None
    sent: int = 0
    failed: list[int] = field(default_factory=list)
    # Broadcasts of the workload received, warm-up included.
    delivered: int = 0
    # --receipts-debounce: when this socket last sent markRead, and the newest message it has not marked since.
    marked_at: float = 0.0
    unmarked: tuple[str, str] | None = None


class Worker:
    """The sockets of one worker process and their counters."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.reset(None)

    def reset(self, plan: Plan | None) -> None:
        """A fresh slate for a workload."""
        self.plan = plan
        self.members: list[Member] = []
        self.t_measure = 0
        self.t_end = 0
        self.deliveries = 0
        self.latencies = array("q")
        self.acks = 0
        self.ack_latencies = array("q")
        self.ack_errors = 0
        self.first_error: str | None = None
        self.stalls = 0

    async def serve(self) -> None:
        """Answer the coordinator's commands until told to exit."""
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, self.conn.recv)
            if command == "exit":
                return
            handler = getattr(self, "do_" + command)
            reply = await handler(*args)
            self.conn.send(reply)

    # -- commands ---------------------------------------------------------

    async def do_setup(self, plan: Plan) -> dict[str, Any]:
        """Connect every socket and join its rooms."""
        self.reset(plan)
        self.members = [Member(spec) for spec in plan.sockets]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        errors: list[str] = []

        async def connect(member: Member) -> None:
            async with gate:
                try:
                    await self._connect(member)
                except Exception as exc:
                    errors.append(f"socket {member.spec.index}: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(connect(member) for member in self.members))
        return {"connected": sum(1 for m in self.members if m.sock is not None), "errors": errors[:5]}

    async def _connect(self, member: Member) -> None:
        assert self.plan is not None
        urls = self.plan.base_urls
        sock = RawSocket(urls[member.spec.server % len(urls)], lambda data: self._on_event(member, data))
        await sock.connect({"token": member.spec.token})
        member.sock = sock
        for room in member.spec.rooms:
            ack = await sock.call("joinRoom", f'{{"chatroomId":{room},"userId":{member.spec.user_id}}}')
            if isinstance(ack, dict) and "statusCode" in ack:
                raise RuntimeError(f"joinRoom {room} refused: {ack}")

    async def do_start(self, t_begin: int, t_measure: int, t_end: int) -> dict[str, Any]:
        """Send from t_begin until t_end; return each sender's count once its acks are in."""
        assert self.plan is not None
        self.t_measure, self.t_end = t_measure, t_end
        senders = [m for m in self.members if m.spec.send_room is not None and m.sock is not None]
        if self.plan.mode == "closed":
            tasks = [self._closed_loop(m, t_begin) for m in senders]
        elif self.plan.mode == "open":
            tasks = [self._open_loop(m, t_begin) for m in senders]
        else:
            tasks = []
        if self.plan.receipts:
            tasks += [self._typing_loop(m, t_begin) for m in self.members if m.sock is not None and m.spec.rooms]
        await asyncio.gather(*tasks)
        await asyncio.gather(*(m.sock.wait_for_acks(ACK_WAIT_S) for m in senders if m.sock is not None))
        return {"finals": {m.spec.index: (m.sent, m.failed) for m in senders}}

    async def do_finish(self, finals: Finals, room_senders: dict[int, list[int]], drain_s: float) -> dict[str, Any]:
        """Wait until every receiver has every message sent to its rooms (or drain_s passed); count the rest."""
        receivers = [
            (m.received, sorted({s for room in m.spec.rooms for s in room_senders.get(room, [])}))
            for m in self.members
            if m.sock is not None
        ]
        deadline = time.monotonic() + drain_s
        while True:
            missing = sum(received.missing(senders, finals) for received, senders in receivers)
            if missing == 0 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        assert self.plan is not None
        by_server = [0] * len(self.plan.base_urls)
        for m in self.members:
            by_server[m.spec.server % len(by_server)] += m.delivered
        return {
            "sockets": len(receivers),
            "deliveries_by_server": by_server,
            "deliveries": self.deliveries,
            "latencies": self.latencies.tobytes(),
            "acks": self.acks,
            "ack_latencies": self.ack_latencies.tobytes(),
            "ack_errors": self.ack_errors,
            "first_error": self.first_error,
            "stalls": self.stalls,
            "missing": missing,
            "duplicates": sum(m.received.duplicates for m in self.members),
            "out_of_order": sum(m.received.out_of_order for m in self.members),
        }

    async def do_close(self) -> dict[str, Any]:
        """Disconnect every socket."""
        await asyncio.gather(*(m.sock.close() for m in self.members if m.sock is not None), return_exceptions=True)
        self.members = []
        return {"closed": True}

    # -- receiving --------------------------------------------------------

    def _on_event(self, member: Member, data: str) -> None:
        stamp = parse_stamp(data)
        if stamp is None:
            return  # joinRoom notices and other events
        now = time.monotonic_ns()
        sent_at, sender, seq = stamp
        if self.t_measure <= now < self.t_end:
            self.deliveries += 1
            self.latencies.append(now - sent_at)
        member.delivered += 1
        member.received.record(sender, seq)
        if self.plan is not None and self.plan.receipts and member.sock is not None:
            self._mark_read(member, data)
        waiting = member.waiting
        if waiting is not None and sender == member.spec.index and waiting[0] == seq and not waiting[1].done():
            waiting[1].set_result(None)

    def _mark_read(self, member: Member, frame: str) -> None:
        """markRead the message of a broadcast frame, without an ack (as a client showing it would)."""
        assert member.sock is not None
        i = frame.find(MESSAGE_ID)
        j = frame.find(CHATROOM_ID, i)
        if i < 0 or j < 0:
            return
        message_id = frame[i + len(MESSAGE_ID) : frame.find(",", i)]
        room = frame[j + len(CHATROOM_ID) : frame.find(",", j)]
        assert self.plan is not None
        if self.plan.receipts_debounce > 0:
            # Like a client that marks what is on screen now and then: the newest, once per interval.
            now = time.monotonic()
            if now - member.marked_at < self.plan.receipts_debounce:
                member.unmarked = (room, message_id)
                return
            member.marked_at, member.unmarked = now, None
        member.sock.emit_now("markRead", f'{{"chatroomId":{room},"messageId":{message_id}}}')

    async def _typing_loop(self, member: Member, t_begin: int) -> None:
        """``typing: true`` in the socket's first room every TYPING_EVERY_S, phase-shifted per socket."""
        assert member.sock is not None
        room = member.spec.rooms[0]
        at = t_begin + int(TYPING_EVERY_S * 1e9 * ((member.spec.index * 0.618) % 1.0))
        while at < self.t_end:
            await _sleep_until(at)
            await member.sock.emit("typing", f'{{"chatroomId":{room},"typing":true}}')
            if member.unmarked is not None:  # debounced marks: the last one of a quiet spell goes out here
                marked_room, message_id = member.unmarked
                member.unmarked, member.marked_at = None, time.monotonic()
                member.sock.emit_now("markRead", f'{{"chatroomId":{marked_room},"messageId":{message_id}}}')
            at += int(TYPING_EVERY_S * 1e9)

    # -- sending ----------------------------------------------------------

    async def _send(self, member: Member, seq: int) -> None:
        assert member.sock is not None and self.plan is not None
        spec = member.spec
        sent_at = time.monotonic_ns()
        content = f"t={sent_at};s={spec.index};n={seq}"
        if self.plan.pad:
            content += ";" + "x" * self.plan.pad
        payload = (
            f'{{"sendUserId":{spec.user_id},"chatroomId":{spec.send_room},'
            f'"message":{{"type":"text","content":"{content}"}}}}'
        )

        def on_ack(raw: str) -> None:
            now = time.monotonic_ns()
            if '"statusCode"' in raw:
                self.ack_errors += 1
                member.failed.append(seq)
                if self.first_error is None:
                    self.first_error = raw[:200]
                waiting = member.waiting
                if waiting is not None and waiting[0] == seq and not waiting[1].done():
                    waiting[1].set_result(None)
            elif self.t_measure <= now < self.t_end:
                self.acks += 1
                self.ack_latencies.append(now - sent_at)

        member.sent = seq + 1
        await member.sock.emit("sendMessage", payload, on_ack)

    async def _closed_loop(self, member: Member, t_begin: int) -> None:
        await _sleep_until(t_begin)
        loop = asyncio.get_running_loop()
        seq = 0
        while time.monotonic_ns() < self.t_end:
            back: asyncio.Future[None] = loop.create_future()
            member.waiting = (seq, back)
            await self._send(member, seq)
            try:
                async with asyncio.timeout(STALL_TIMEOUT_S):
                    await back
            except TimeoutError:
                self.stalls += 1
            seq += 1
        member.waiting = None

    async def _open_loop(self, member: Member, t_begin: int) -> None:
        assert self.plan is not None
        interval = 1e9 / self.plan.rate_per_sender
        at = t_begin + interval * member.spec.phase
        seq = 0
        while at < self.t_end:
            await _sleep_until(int(at))
            await self._send(member, seq)
            seq += 1
            at += interval


async def _sleep_until(t_ns: int) -> None:
    delay = t_ns - time.monotonic_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)


def raise_open_files_limit() -> int:
    """Raise this process's open-files soft limit to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft)


def worker_main(conn: Connection, cores: list[int] | None) -> None:
    """Entry point of a worker process."""
    if cores:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cores)
    raise_open_files_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(Worker(conn).serve())


class WorkerPool:
    """The worker processes, driven from the coordinator's event loop."""

    # The function each worker process runs; a subclass names its own.
    worker_entry: Callable[[Connection, list[int] | None], None] = staticmethod(worker_main)

    def __init__(self, count: int, cores: list[int] | None) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs = []
        for _ in range(count):
            parent, child = context.Pipe()
            proc = context.Process(target=self.worker_entry, args=(child, cores), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def size(self) -> int:
        """The number of workers."""
        return len(self._procs)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [proc.pid for proc in self._procs if proc.pid is not None]

    async def command(self, command: str, per_worker_args: list[tuple[Any, ...]]) -> list[Any]:
        """Send a command with its own arguments to every worker; return their replies in order."""
        loop = asyncio.get_running_loop()
        for conn, args in zip(self._conns, per_worker_args, strict=True):
            conn.send((command, args))
        return list(await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for conn in self._conns)))

    async def command_all(self, command: str, *args: Any) -> list[Any]:
        """Send the same command to every worker."""
        return await self.command(command, [args] * self.size)

    def close(self) -> None:
        """Tell the workers to exit and wait for them."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("exit", ()))
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
