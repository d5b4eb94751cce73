"""Engine.IO as chatsvc runs it: a leaner WebSocket transport and keep-alive.

python-engineio drains each socket's send queue in a writer task that wraps
every wait in ``asyncio.wait_for`` (a task and a timer per wake-up) and writes
every packet with its own ``send_str`` call, which is one system call per
frame. Profiles of a 100-member room put those two at a third of the server's
time. This transport drains the same queue but writes every packet that
has piled up in one ``transport.write``, and a broadcast queued on many
sockets (``SharedPacket``) builds its WebSocket frame once for all of them.
Each WebSocket runs as one small protocol object (``_WebSocketSession``) on
the connection taken over from aiohttp after the handshake
(chatsvc/realtime/websocket.py), with no task and no request kept alive:
an idle socket costs a few KB.

Fan-out still only puts packets on each Engine.IO socket's queue; this module is
the WebSocket end of that queue. Long-polling clients and the upgrade from
polling to WebSocket behave as in python-engineio, whose socket state
(``connected``, ``upgrading``, ``upgraded``, ``queue``) this transport uses and
updates the same way. permessage-deflate is not offered, as the JavaScript
Engine.IO server does by default since version 4: chat packets are small, and
compressing each one for each recipient costs more CPU than it saves bytes.

``ChatEngineServer`` installs the transport and replaces python-engineio's
keep-alive tasks with timers and one periodic sweep (see its docstring).

It also bounds what a client can make the server hold: each socket's send
queue (``SendQueue``; a socket over it is cut off), the bytes handed to the
kernel per write, the sessions that have not completed the Socket.IO connect
(chatsvc/handshakes.py), and it logs malformed input in one throttled line.

This is the one module that touches python-engineio's internals (the
connection and its frames are chatsvc/realtime/websocket.py's, the one
module below aiohttp's public API). Each is checked by
tests/test_upstream_contract.py; docs/performance.md has the table:

* ``AsyncServer._async["websocket"]``, the aiohttp driver table
  (``engineio.async_drivers.aiohttp._async``), replaced by ``LeanWebSocket``,
  which mirrors ``engineio.async_drivers.aiohttp.WebSocket.__call__``;
  ``AsyncSocket._upgrade_websocket`` calls it with ``socket._websocket_handler``.
* ``AsyncSocket._websocket_handler``, mirrored by ``_WebSocketSession``;
  ``AsyncSocket.receive`` and ``close``.
* ``AsyncSocket._send_ping`` (mirrored by ``_send_ping``), ``schedule_ping``
  and ``AsyncServer.start_background_task`` (ping timers instead of tasks).
* ``AsyncServer._service_task`` (mirrored by ``ChatEngineServer._service_task``
  and ``_sweep``), ``service_task_event``, ``service_task_handle`` and
  ``AsyncSocket.check_ping_timeout``.
* Socket fields ``connected``, ``upgrading``, ``upgraded``, ``closing``,
  ``closed``, ``last_ping``, ``queue``; ``AsyncServer.sockets``, ``reason``,
  ``create_queue``; ``environ["aiohttp.request"]`` and ``translate_request``.
* ``engineio.packet.Packet.encode`` (overridden by ``SharedPacket``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Any

import engineio
from aiohttp import web
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket

from chatsvc.errors import BadRequest
from chatsvc.handshakes import PendingSessions
from chatsvc.logs import ThrottledLog
from chatsvc.realtime.websocket import WebSocketProtocol, take_over, websocket_frame

log = logging.getLogger(__name__)

# Most bytes handed to the kernel in one write: with websocket.py's WRITE_BUFFER_LIMIT, what a connection
# holds outside its (bounded) send queue while its client does not read.
WRITE_BATCH_BYTES = 256 * 1024
# The disconnect reason handlers and the log see for a socket that was cut off.
CUT_OFF_REASON = "send queue full"
# Malformed input from clients is logged in one warning line each, at most this many at once and per minute.
MALFORMED_LOG_BURST = 20
MALFORMED_LOG_PER_MINUTE = 60
# Where a long-polling POST body that was read to be checked waits for python-engineio.
_POLLING_BODY = web.RequestKey("chatsvc_polling_body", bytes)
# How often the keep-alive sweep visits every socket (at most; a quarter of the ping timeout if shorter),
# and how many sockets it checks before letting other work run.
SWEEP_SECONDS = 5.0
SWEEP_CHUNK = 1000


class SharedPacket(eio_packet.Packet):
    """An Engine.IO packet queued on many sockets: encoded, and framed, once."""

    _encoded: str | bytes | None = None
    _frame: bytes | None = None
    _nbytes: int | None = None

    def encode(self, b64: bool = False) -> str | bytes:
        """The packet as Engine.IO text or bytes (cached unless base64 is asked for)."""
        if b64:
            return super().encode(b64)  # type: ignore[no-any-return]
        if self._encoded is None:
            self._encoded = super().encode()
        return self._encoded

    def frame(self) -> bytes:
        """The packet as a WebSocket frame."""
        if self._frame is None:
            self._frame = websocket_frame(self.encode())
        return self._frame

    def nbytes(self) -> int:
        """The memory the packet holds while queued: its text and its frame (the frame is needed anyway)."""
        if self._nbytes is None:
            self._nbytes = sys.getsizeof(self.data) + len(self.frame())
        return self._nbytes


def _frame_of(packet: eio_packet.Packet) -> bytes:
    if isinstance(packet, SharedPacket):
        return packet.frame()
    return websocket_frame(packet.encode())


def packet_bytes(packet: eio_packet.Packet) -> int:
    """The memory a queued packet holds: its encoded text and, for a broadcast, its WebSocket frame."""
    if type(packet) is SharedPacket:
        return packet.nbytes()  # worked out once per broadcast, not once per recipient
    return sys.getsizeof(packet.data)  # O(1) for text; 4 bytes a character once there is an emoji in it


@dataclass(frozen=True)
class SocketLimits:
    """What one Engine.IO server lets a client make it hold (see docs/configuration.md)."""

    queue_packets: int = 10_000
    queue_bytes: int = 16 * 1024 * 1024
    pending_sessions: int = 10_000
    pending_sessions_per_address: int = 1_000


class SendQueue:
    """An Engine.IO socket's send queue, bounded in packets and bytes.

    Fan-out puts packets on it without waiting (ChatEngineServer.queue_message), so a client
    that reads slower than its rooms talk would make it grow without end. Past
    either bound it takes no more messages, from then on, and tells its server,
    which cuts the socket off: the client got a gap-free prefix and rejoins with
    ``lastMessageId`` for the rest. Other packets (pings, the close packet, the
    writer's stop marker ``None``) are always taken: they are few and small.

    It has the interface of ``asyncio.Queue`` that python-engineio uses (its
    long-polling ``AsyncSocket.poll`` awaits ``get`` under ``wait_for`` and
    catches ``asyncio.QueueEmpty``; ``close`` awaits ``join``), but holds one
    deque where ``asyncio.Queue`` allocates four (items, getters, putters and
    the ``join`` event's waiters: 3 KB per idle socket). Over WebSocket nothing
    waits on it: ``put_nowait`` schedules the socket's ``_WebSocketSession.flush`` for the
    end of the loop turn instead of waking a writer task.
    """

    __slots__ = (
        "_getters",
        "_joiners",
        "_on_overflow",
        "_queue",
        "_unfinished",
        "_writer",
        "_writer_scheduled",
        "bytes",
        "max_bytes",
        "max_packets",
        "overflowed",
        "transport",
    )

    def __init__(self, max_packets: int, max_bytes: int, on_overflow: Callable[[SendQueue], None]) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        # What the queued messages hold (packet_bytes), kept up to date by put_nowait and _pop.
        self.bytes = 0
        self.overflowed = False
        # The connection of the WebSocket writer draining this queue, if there is one.
        self.transport: asyncio.BaseTransport | None = None
        self._on_overflow = on_overflow
        self._queue: deque[Any] = deque()
        # Made when first needed: only a long-polling request waits in get(), and only close() in join().
        self._getters: list[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self._joiners: list[asyncio.Future[None]] | None = None
        # The WebSocket writer, called soon after a put (see _WebSocketSession).
        self._writer: _WebSocketSession | None = None
        self._writer_scheduled = False

    def put_nowait(self, item: Any) -> None:
        """Queue a packet; a message past the bounds is dropped and the socket is reported (once)."""
        # On the fan-out's path, once per recipient: kept to a few attribute reads.
        if item is not None and item.packet_type == _MESSAGE:
            if self.overflowed:
                return
            size = item._nbytes if type(item) is SharedPacket and item._nbytes is not None else packet_bytes(item)
            if len(self._queue) >= self.max_packets or self.bytes + size > self.max_bytes:
                self.overflowed = True
                self._on_overflow(self)
                return
            self.bytes += size
        self._append(item)

    async def put(self, item: Any) -> None:
        """As put_nowait: the queue never makes a producer wait."""
        self.put_nowait(item)

    def put_final(self, item: Any) -> None:
        """Queue a packet whatever the bounds: the last words to a socket that is cut off."""
        if item is not None and item.packet_type == _MESSAGE:
            self.bytes += packet_bytes(item)
        self._append(item)

    def _append(self, item: Any) -> None:
        self._queue.append(item)
        self._unfinished += 1
        writer = self._writer
        if writer is not None:
            if not self._writer_scheduled:
                self._writer_scheduled = True
                writer.loop.call_soon(writer.flush)
        elif self._getters:
            for getter in self._getters:
                if not getter.done():
                    getter.set_result(None)
                    break

    def get_nowait(self) -> Any:
        """The oldest packet; asyncio.QueueEmpty if there is none."""
        if not self._queue:
            raise asyncio.QueueEmpty
        return self._pop()

    async def get(self) -> Any:
        """The oldest packet, once there is one."""
        while not self._queue:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if not getter.cancelled() and self._queue:
                    # Woken and cancelled at once: pass the wake-up on, as asyncio.Queue does.
                    self._wake_next_getter()
                raise
            finally:
                self._getters.remove(getter)
        return self._pop()

    def _wake_next_getter(self) -> None:
        for getter in self._getters or ():
            if not getter.done():
                getter.set_result(None)
                return

    def _pop(self) -> Any:
        item = self._queue.popleft()
        if item is not None and item.packet_type == _MESSAGE:
            # The same as when it was put: a packet does not change, and a broadcast's size is kept on it.
            self.bytes -= (
                item._nbytes if type(item) is SharedPacket and item._nbytes is not None else packet_bytes(item)
            )
        return item

    def task_done(self) -> None:
        """A packet taken from the queue has been handled (asyncio.Queue's counting, for join)."""
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners:
            for joiner in self._joiners:
                if not joiner.done():
                    joiner.set_result(None)
            self._joiners = None

    async def join(self) -> None:
        """Wait until every packet put has been taken and handled."""
        if self._unfinished:
            joiner = asyncio.get_running_loop().create_future()
            if self._joiners is None:
                self._joiners = []
            self._joiners.append(joiner)
            await joiner

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._queue

    def qsize(self) -> int:
        """How many packets are queued."""
        return len(self._queue)

    def discard_backlog(self) -> int:
        """Drop everything queued (a cut-off socket will not get it); how many packets that was."""
        dropped = 0
        while self._queue:
            self._pop()
            self.task_done()
            dropped += 1
        return dropped


_MESSAGE = eio_packet.MESSAGE


class LeanWebSocket:
    """Takes the place of python-engineio's aiohttp WebSocket driver for one server.

    Engine.IO calls it with the socket's ``_websocket_handler``; the handler is
    only used to find the socket, whose WebSocket session a ``_WebSocketSession``
    then runs, on the connection taken over from aiohttp: the request handler
    returns the 101 response at once instead of living as long as the socket.
    """

    def __init__(self, handler: Any, server: Any) -> None:
        self.socket = handler.__self__
        self.server = server

    async def __call__(self, environ: dict[str, Any]) -> web.StreamResponse:
        """Accept the WebSocket and start serving the Engine.IO session on it."""
        request: web.Request = environ["aiohttp.request"]
        session = _WebSocketSession(self.socket, self.server)
        return await take_over(request, session)


def _decode(data: str | bytes) -> eio_packet.Packet | None:
    try:
        packet = eio_packet.Packet(encoded_packet=data)
    except (ValueError, IndexError, TypeError):
        return None
    return packet if _known_type(packet) else None


def _known_type(packet: eio_packet.Packet) -> bool:
    # python-engineio names the packet type in a log call before looking at it: an unknown one raises IndexError.
    return isinstance(packet.packet_type, int) and 0 <= packet.packet_type < len(eio_packet.packet_names)


# Where a session is in the Engine.IO upgrade of a long-polling socket (python-engineio's
# AsyncSocket._websocket_handler): waiting for the client's ping "probe", then for its upgrade packet.
_PROBE = 1
_CONFIRM = 2
# A session stops reading while this many received packets wait for Engine.IO.
_INBOUND_PAUSE = 64


class _WebSocketSession(WebSocketProtocol):
    """One Engine.IO socket over a WebSocket: what python-engineio's ``_websocket_handler`` does, without a task.

    Frames arrive in ``message_received`` (from the connection's
    ``data_received``). During the upgrade of a long-polling socket they are
    the probe and the upgrade packet, answered on the spot under a timer;
    afterwards each packet goes to ``AsyncSocket.receive`` in order, in a
    task that lives only while packets wait (python-engineio runs each
    message's handler in its own task, so one rarely waits long).

    Outgoing, the socket's queue calls ``flush`` once per loop turn in which
    something was queued (``SendQueue._append``): everything that piled up
    is written in one ``transport.write`` (up to ``WRITE_BATCH_BYTES``); once
    the connection's buffer is over ``WRITE_BUFFER_LIMIT`` a task waits for
    the client to read. ``None`` in the queue stops the writer and closes
    the WebSocket; when the connection is gone, the Engine.IO socket is
    closed (``TRANSPORT_CLOSE``), as python-engineio does when its
    WebSocket ends.
    """

    __slots__ = (
        "_ended",
        "_inbound",
        "_receiving",
        "_stage",
        "_timer",
        "_writing",
        "loop",
        "queue",
        "server",
        "socket",
    )

    def __init__(self, socket: Any, server: Any) -> None:
        super().__init__(server.max_http_buffer_size)
        self.socket = socket
        self.server = server
        self.queue: SendQueue = socket.queue
        self.loop = asyncio.get_running_loop()
        # _PROBE or _CONFIRM during an upgrade; 0 once packets go to Engine.IO.
        self._stage = 0
        self._timer: asyncio.TimerHandle | None = None
        # Received packets waiting for Engine.IO, and the task handing them over (only while there are some).
        self._inbound: list[eio_packet.Packet] | None = None
        self._receiving: asyncio.Task[None] | None = None
        # True while the writer is attached to the queue; None once it has stopped.
        self._writing: bool | None = False
        # Set once the session stopped taking packets (the client's last ones are dropped while it closes).
        self._ended = False

    # -- the connection ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the session: the upgrade handshake, or straight to the writer for a WebSocket-only client."""
        super().connection_made(transport)
        self.server.connections.add(self)
        socket = self.socket
        if socket.connected:
            socket.upgrading = True  # Engine.IO holds back packets from the polling side meanwhile
            self._stage = _PROBE
            self._arm_timer()
        else:
            socket.connected = True
            socket.upgraded = True
            self._start_writer()

    def connection_closed(self) -> None:
        """The connection is gone: end the upgrade, or close the Engine.IO socket (its session ends)."""
        self.server.connection_gone(self)
        self.server.full_path.pop(self.socket.sid, None)
        self._cancel_timer()
        self._stop_writer()
        self.queue.transport = None
        if self._stage:
            self.socket.upgrading = False  # the client keeps long-polling
            return
        self.server.run_soon(self._close_socket())

    async def _close_socket(self) -> None:
        receiving = self._receiving
        if receiving is not None:
            await asyncio.wait([receiving])  # packets received before the end are handled first
        await self.socket.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    def message_received(self, data: str | bytes) -> None:
        """A message from the client: an upgrade step, or an Engine.IO packet for the socket."""
        if self._ended:
            return
        server = self.server
        # A MESSAGE packet the Socket.IO server takes at once: no packet object, and none of the work
        # AsyncSocket.receive would do for it. Only when no earlier packet waits for Engine.IO, so that packets
        # are still handled in the order they came (the server also keeps a send behind one of the socket's
        # packets still on python-socketio's path: ChatEngineServer.full_path).
        inline = server.inline_message
        if inline is not None and not self._stage and self._inbound is None and type(data) is str and data[:1] == "4":
            try:
                if inline(self.socket.sid, data):
                    return
            except Exception:
                log.exception("%s: error while handling a packet", self.socket.sid)
                return
        packet = _decode(data)
        if self._stage:
            self._upgrade_step(packet)
            return
        if packet is None:
            server.malformed_input.warning(
                "%s: not an Engine.IO packet from %s (%d bytes), closing the connection",
                self.socket.sid,
                self.peer(),
                len(data),
            )
            self._end()
            return
        if packet.packet_type == _MESSAGE:
            server.full_path_started(self.socket.sid)
        inbound = self._inbound
        if inbound is None:
            self._inbound = [packet]
        else:
            inbound.append(packet)
            if len(inbound) >= _INBOUND_PAUSE and self.transport is not None:
                self.transport.pause_reading()  # the client sends faster than its packets are handled
        if self._receiving is None:
            self._receiving = self.loop.create_task(self._receive())

    async def _receive(self) -> None:
        socket = self.socket
        try:
            while self._inbound and not self._ended:
                packets = self._inbound
                self._inbound = None
                for packet in packets:
                    if self._ended:
                        return
                    try:
                        await socket.receive(packet)
                    except eio_exceptions.UnknownPacketError:
                        pass
                    except eio_exceptions.SocketIsClosedError:
                        self._end()
                        return
                    except Exception:
                        log.exception("%s: error while handling a packet", socket.sid)
                transport = self.transport
                if transport is not None and not transport.is_reading() and not transport.is_closing():
                    transport.resume_reading()
        finally:
            self._inbound = None
            self._receiving = None

    def _end(self) -> None:
        """Take no more packets; write what is queued, then close the WebSocket (as the end of engineio's reader)."""
        self._ended = True
        self._inbound = None
        transport = self.transport
        if transport is not None and not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()  # paused for a backlog, which is dropped: the client's close frame is read
        if self._writing is not None and self.queue._writer is self:
            self.queue.put_nowait(None)  # the writer finishes what is queued and closes
        else:
            self.close()

    # -- the upgrade (python-engineio AsyncSocket._websocket_handler, its first part) ----------------------------

    def _upgrade_step(self, packet: eio_packet.Packet | None) -> None:
        socket = self.socket
        self._cancel_timer()
        if self._stage == _PROBE:
            if packet is None or packet.packet_type != eio_packet.PING or packet.data != "probe":
                log.info("%s: WebSocket upgrade failed, no ping probe", socket.sid)
                self._upgrade_failed()
                return
            self.write(websocket_frame(eio_packet.Packet(eio_packet.PONG, data="probe").encode()))
            # A no-op answers the poll the client still has open, so it can switch.
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
            self._stage = _CONFIRM
            self._arm_timer()
            return
        if packet is None or packet.packet_type != eio_packet.UPGRADE:
            log.info("%s: WebSocket upgrade failed, expected an upgrade packet", socket.sid)
            socket.upgraded = False
            self._upgrade_failed()
            return
        self._stage = 0
        socket.upgraded = True
        socket.upgrading = False
        self._start_writer()

    def _upgrade_failed(self) -> None:
        self.socket.upgrading = False
        self.close()  # the stage stays set: the socket lives on, long-polling

    def _arm_timer(self) -> None:
        # A client silent this long in the handshake is gone (python-engineio waits as long for each frame).
        self._timer = self.loop.call_later(
            self.server.ping_interval + self.server.ping_timeout, self._upgrade_timed_out
        )

    def _upgrade_timed_out(self) -> None:
        self._timer = None
        self._upgrade_failed()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the writer ---------------------------------------------------------------------------------------------

    def _start_writer(self) -> None:
        """Take over the queue, and send what is already on it."""
        queue = self.queue
        queue.transport = self.transport
        queue._writer = self
        self._writing = True
        if queue._queue and not queue._writer_scheduled:
            queue._writer_scheduled = True
            self.loop.call_soon(self.flush)

    def _stop_writer(self) -> None:
        if self._writing is not None:
            self._writing = None
            if self.queue._writer is self:
                self.queue._writer = None

    def flush(self) -> None:
        """Write what is queued (called by the loop, soon after a put)."""
        queue = self.queue
        queue._writer_scheduled = False
        if self._writing is not True:
            return
        try:
            while queue._queue:
                frames: list[bytes] = []
                size = 0
                stop = False
                while queue._queue:
                    packet = queue._pop()
                    queue.task_done()
                    if packet is None:
                        stop = True
                        break
                    frame = _frame_of(packet)
                    frames.append(frame)
                    size += len(frame)
                    # Bounded, so a client that does not read holds at most this much in the transport's buffer.
                    if size >= WRITE_BATCH_BYTES:
                        break
                slow_reader = False
                if frames:
                    if self.closing():
                        stop = True
                    else:
                        slow_reader = self.write(frames[0] if len(frames) == 1 else b"".join(frames))
                if stop:
                    self._stop_writer()
                    self.close()
                    return
                if slow_reader:
                    self._writing = False
                    self.server.run_soon(self._drain())
                    return
        except Exception:  # the connection is gone; connection_lost ends the session
            log.debug("%s: WebSocket write failed", self.socket.sid, exc_info=True)
            self._stop_writer()
            self.abort()

    async def _drain(self) -> None:
        try:
            await self.drain()
        except Exception:
            log.debug("%s: WebSocket write failed", self.socket.sid, exc_info=True)
            return
        if self._writing is False:
            self._writing = True
            self.flush()


class ChatEngineServer(engineio.AsyncServer):
    """python-engineio's server with this module's WebSocket transport and cheaper keep-alive bookkeeping.

    Per idle socket, python-engineio runs a task that sleeps until the next
    ping, and one service task visits every socket in turn, waking the loop
    (through ``wait_for``: a task and a timer) once per socket per ping
    timeout: 500 wake-ups a second at 10,000 sockets. Here a ping is a timer,
    and the sweep visits every socket in one pass every ``SWEEP_SECONDS``.
    What is checked, and when a silent client is dropped, stays the same.
    """

    def __init__(
        self,
        *,
        socket_limits: SocketLimits | None = None,
        cut_off_notice: str | None = None,
        inline_message: Callable[[str, str], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Offered each message read from a WebSocket, as (sid, text), before python-engineio gets it: True if
        # it was handled there and then (chatsvc/realtime/server.py ChatSocketServer._inline_message).
        self.inline_message = inline_message
        if self.async_mode == "aiohttp":
            # A copy: python-engineio shares the driver table between servers in one process.
            self._async = {  # type: ignore[has-type]
                **self._async,  # type: ignore[has-type]
                "websocket": LeanWebSocket,
                "translate_request": _translate_request,
            }
        self.limits = socket_limits or SocketLimits()
        self.pending = PendingSessions(self.limits.pending_sessions, self.limits.pending_sessions_per_address)
        self.malformed_input = ThrottledLog(log, burst=MALFORMED_LOG_BURST, per_minute=MALFORMED_LOG_PER_MINUTE)
        # Counted for chatsvc/metrics.py.
        self.handshakes_refused = 0
        self.sockets_cut_off = 0
        # The encoded Socket.IO packet a socket that is cut off hears last, telling the client why.
        self.cut_off_notice = None if cut_off_notice is None else SharedPacket(eio_packet.MESSAGE, cut_off_notice)
        # The WebSocket connections this server runs (taken over from aiohttp, which no longer closes them).
        self.connections: set[WebSocketProtocol] = set()
        # By Engine.IO sid: how many MESSAGE packets of a WebSocket went to python-socketio's dispatch and are not
        # handled yet. While a socket has any, its next packets go the same way (see message_received).
        self.full_path: dict[str, int] = {}
        self._all_closed: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    def queue_message(self, recipients: Iterable[tuple[str, str]], skip: Container[str], encoded: str) -> int:
        """Queue one encoded Socket.IO packet on each recipient's socket that is still open; how many got it.

        The fan-out's last step (chatsvc/realtime/server.py LeanManager): the
        packet is encoded, and framed, once for all of them. ``recipients``
        are (Socket.IO sid, Engine.IO sid) pairs; those whose sid is in
        ``skip`` are left out.
        """
        packet = SharedPacket(_MESSAGE, encoded)
        sockets = self.sockets
        sent = 0
        for sid, eio_sid in recipients:
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if socket is not None and not socket.closed:
                socket.queue.put_nowait(packet)
                sent += 1
        return sent

    def queue_one(self, eio_sid: str, encoded: str) -> None:
        """Queue one encoded Socket.IO packet on one socket, if it is still open (an inline event's ack).

        A plain packet, as python-socketio's ``send`` queues one: it counts
        against the queue's byte bound once, where a broadcast's shared packet
        also counts its frame.
        """
        socket = self.sockets.get(eio_sid)
        if socket is not None and not socket.closed:
            socket.queue.put_nowait(eio_packet.Packet(_MESSAGE, encoded))

    def full_path_started(self, eio_sid: str) -> None:
        """A WebSocket's MESSAGE packet goes to python-socketio's dispatch (counted until ``full_path_done``)."""
        self.full_path[eio_sid] = self.full_path.get(eio_sid, 0) + 1

    def full_path_done(self, eio_sid: str) -> None:
        """python-socketio's dispatch has handled a MESSAGE packet of the socket (called for every one)."""
        count = self.full_path.get(eio_sid)
        if count is None:
            return  # long-polling, or its connection is gone
        if count <= 1:
            del self.full_path[eio_sid]
        else:
            self.full_path[eio_sid] = count - 1

    def answer_goodbye(self, eio_sid: str, reason: Any) -> None:
        """Answer the waiting GET of a long-polling client that said goodbye (from Socket.IO's disconnect handler).

        The JavaScript Engine.IO server answers it at once; python-engineio
        leaves it open until the next ping (25 s), and its client waits for it.
        """
        socket = self.sockets.get(eio_sid)
        if socket is not None and not socket.upgraded and reason == self.reason.CLIENT_DISCONNECT:
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))

    async def close_transports(self, flush_timeout: float) -> None:
        """Close every Engine.IO connection, giving live ones up to ``flush_timeout`` to send the CLOSE packet.

        engineio's own disconnect-all waits for each queue to drain, which never
        happens for a long-polling client that went away without saying so.
        """
        transports = list(self.sockets.values())
        for transport in transports:
            await transport.close(wait=False)
        flushes = [asyncio.ensure_future(transport.queue.join()) for transport in transports]
        if flushes:
            _, stuck = await asyncio.wait(flushes, timeout=flush_timeout)
            for flush in stuck:
                flush.cancel()
        self.sockets.clear()
        # aiohttp no longer knows these connections, so it would not close them on shutdown. Those that sent
        # their close frame get a moment for the client's answer: closing with its data unread would reset
        # the connection, and the client could lose the last packets.
        if self.connections:
            self._all_closed = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_closed), flush_timeout)
            self._all_closed = None
        for connection in list(self.connections):
            connection.hang_up()

    def connection_gone(self, connection: WebSocketProtocol) -> None:
        """A WebSocket connection of this server has closed."""
        self.connections.discard(connection)
        if not self.connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    def create_queue(self, *args: Any, **kwargs: Any) -> Any:
        """A new socket's send queue, bounded (python-engineio calls this once per socket)."""
        return SendQueue(self.limits.queue_packets, self.limits.queue_bytes, self._queue_overflowed)

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        """As python-engineio's, after refusing a handshake over the pending bounds or a malformed polling body."""
        request: web.Request = args[0]
        if "sid" not in request.query:
            if request.method == "GET":
                refusal = self.pending.refusal(request.remote or "")
                if refusal is not None:
                    self.handshakes_refused += 1
                    raise refusal  # chatsvc/errors.py answers it as JSON
        elif request.method == "POST":
            problem = await self._check_polling_body(request)
            if problem is not None:
                sid = request.query["sid"]
                self.malformed_input.warning(
                    "%s: malformed long-polling body from %s: %s",
                    sid if sid in self.sockets else "(unknown session)",  # never a client's text in the log
                    request.remote,
                    problem,
                )
                raise BadRequest("Malformed Engine.IO payload")
        return await super().handle_request(*args, **kwargs)

    async def _check_polling_body(self, request: web.Request) -> str | None:
        """Why a long-polling POST body cannot be decoded, or None (python-engineio logs a traceback for it)."""
        length = request.content_length
        if length is None or length > self.max_http_buffer_size:
            return None  # python-engineio refuses it without reading, or reads nothing
        body = await request.read()
        request[_POLLING_BODY] = body
        try:
            packets = eio_payload.Payload(encoded_payload=body.decode()).packets
        except (ValueError, IndexError, TypeError) as exc:
            return describe_error(exc)
        if not all(_known_type(packet) for packet in packets):
            return "unknown packet type"
        return None

    def run_soon(self, work: Any) -> None:
        """Run a coroutine in a task of its own, held until it is done."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _queue_overflowed(self, queue: SendQueue) -> None:
        # Called from inside a fan-out loop: the socket is cut off in a task of its own.
        self.run_soon(self._cut_off(queue))

    async def _cut_off(self, queue: SendQueue) -> None:
        """Disconnect a socket whose client fell too far behind, and free what it held."""
        # Rare, so a scan: python-engineio makes the queue before the socket is known by sid.
        socket = next((s for s in list(self.sockets.values()) if s.queue is queue), None)
        log.warning(
            "%s: cut off: %d packets (%d bytes) waiting unread, over the bound of %d packets or %d bytes; "
            "the client can reconnect and rejoin with lastMessageId",
            socket.sid if socket is not None else "?",
            queue.qsize(),
            queue.bytes,
            queue.max_packets,
            queue.max_bytes,
        )
        queue.discard_backlog()
        if self.cut_off_notice is not None:
            queue.put_final(self.cut_off_notice)
        if socket is not None:
            # Runs the disconnect handlers (rooms, the per-user count) and queues Engine.IO's CLOSE.
            await socket.close(wait=False, abort=False, reason=CUT_OFF_REASON)
        queue.put_final(None)  # a WebSocket writer stops once it has written what is left
        # A client reading its last packets has as long as it would have to answer a ping.
        _abort_later(queue, self.ping_timeout)
        if _MALLOC_TRIM is not None:
            # The backlog was thousands of blocks of a few KB from the C heap; freed, glibc keeps them in
            # the process unless asked to return free pages. In a thread: it walks the heap (ms per 100 MB).
            await asyncio.get_running_loop().run_in_executor(None, _MALLOC_TRIM, 0)
        self.sockets_cut_off += 1  # counted once all of the above is done

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        """As python-engineio's, except that the next ping of a socket is a timer rather than a sleeping task."""
        if getattr(target, "__func__", None) is AsyncSocket._send_ping:
            asyncio.get_running_loop().call_later(self.ping_interval, _send_ping, target.__self__)
            return None
        return super().start_background_task(target, *args, **kwargs)

    async def _service_task(self) -> None:
        self.service_task_event = self.create_event()
        sweep_seconds = min(SWEEP_SECONDS, self.ping_timeout / 4)
        while True:
            try:
                await asyncio.wait_for(self.service_task_event.wait(), timeout=sweep_seconds)
                return
            except TimeoutError:
                pass
            try:
                await self._sweep()
            except Exception:
                log.exception("Engine.IO socket sweep failed")

    async def _sweep(self) -> None:
        """Forget closed sockets; close those whose client missed a pong (python-engineio's check)."""
        for visited, socket in enumerate(list(self.sockets.values()), 1):
            if socket.closed:
                self.sockets.pop(socket.sid, None)
                self.pending.done(socket.sid)
                # Ends the transport if the client has not: a WebSocket's reader waits without a timeout.
                socket.queue.put_nowait(None)
                _abort_later(socket.queue, self.ping_timeout)
            elif not socket.closing and not await socket.check_ping_timeout():
                # python-engineio queues no CLOSE packet for a ping timeout: this ends the transport.
                socket.queue.put_nowait(None)
                _abort_later(socket.queue, self.ping_timeout)
            if visited % SWEEP_CHUNK == 0:
                await asyncio.sleep(0)  # other work runs between chunks of a large sweep


def _abort_later(queue: Any, seconds: float) -> None:
    """Drop the connection of a socket's WebSocket writer, if it has one, in ``seconds`` unless it closed.

    The writer may be waiting for a client that never reads, which would keep
    the connection and its write buffer for ever.
    """
    transport = getattr(queue, "transport", None)
    if transport is not None:
        asyncio.get_running_loop().call_later(seconds, transport.abort)


def remote_address(environ: dict[str, Any]) -> str | None:
    """The client's address, from a session's compact environ or the one python-engineio's aiohttp driver builds."""
    if "REMOTE_ADDR" in environ:  # a session's compact environ (chatsvc/realtime/server.py session_environ)
        kept: str | None = environ["REMOTE_ADDR"]
        return kept
    request = environ.get("aiohttp.request")
    return getattr(request, "remote", None)


def describe_error(exc: BaseException) -> str:
    """An exception as one short line for a log (never a traceback)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class _Body:
    """A request body already read, where python-engineio reads it (``environ["wsgi.input"]``)."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self, length: int = -1) -> bytes:
        """The body, as python-engineio asks for it (once, by its Content-Length)."""
        return self._body if length < 0 else self._body[:length]


# The keys of python-engineio's aiohttp environ that python-engineio, python-socketio or chatsvc read
# (tests/test_upstream_contract.py checks the libraries read no other). A WebSocket session's request
# handler holds its environ as long as the connection lives: the other headers and the WSGI constants
# would cost every idle socket a dict twice the size and a string per header name.
ENVIRON_KEYS = frozenset(
    {
        "wsgi.input",
        "wsgi.url_scheme",
        "REQUEST_METHOD",
        "QUERY_STRING",
        "PATH_INFO",
        "SCRIPT_NAME",
        "REMOTE_ADDR",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "HTTP_HOST",
        "HTTP_ORIGIN",
        "HTTP_UPGRADE",
        "HTTP_CONNECTION",
        "HTTP_ACCEPT_ENCODING",
        "HTTP_ACCESS_CONTROL_REQUEST_HEADERS",
        "HTTP_X_FORWARDED_PROTO",
        "HTTP_X_FORWARDED_HOST",
        "HTTP_AUTHORIZATION",
        "aiohttp.request",
    }
)


def _translate_request(request: web.Request) -> dict[str, Any]:
    # python-engineio's aiohttp translation, reading a long-polling body from where the check above left it.
    full: dict[str, Any] = eio_aiohttp.translate_request(request)
    environ = {key: value for key, value in full.items() if key in ENVIRON_KEYS}
    body = request.get(_POLLING_BODY)
    if body is not None:
        environ["wsgi.input"] = _Body(body)
    return environ


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _find_malloc_trim()
_PING = SharedPacket(eio_packet.PING)


def _send_ping(socket: AsyncSocket) -> None:
    # What AsyncSocket._send_ping does once its sleep is over.
    if not socket.closing and not socket.closed:
        socket.last_ping = time.time()
        socket.queue.put_nowait(_PING)
