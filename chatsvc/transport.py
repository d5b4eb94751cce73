"""Engine.IO's WebSocket transport, with a writer that sends all queued packets in one write.

python-engineio drains each socket's send queue in a writer task that wraps
every wait in ``asyncio.wait_for`` (a task and a timer per wake-up) and writes
every packet with its own ``send_str`` call, which is one system call per
frame. Profiles of a 100-member room put those two at a third of the server's
time. This transport drains the same queue but writes every packet that
has piled up in one ``transport.write``, and a broadcast queued on many
sockets (``SharedPacket``) builds its WebSocket frame once for all of them.

Fan-out still only puts packets on each Engine.IO socket's queue; this module is
the WebSocket end of that queue. Long-polling clients and the upgrade from
polling to WebSocket behave as in python-engineio, whose socket state
(``connected``, ``upgrading``, ``upgraded``, ``queue``) this transport uses and
updates the same way. permessage-deflate is not offered, as the JavaScript
Engine.IO server does by default since version 4: chat packets are small, and
compressing each one for each recipient costs more CPU than it saves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from aiohttp import WSMsgType, web
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

log = logging.getLogger(__name__)

# aiohttp's own WebSocket writer waits for the peer once this much output is buffered.
WRITE_BUFFER_LIMIT = 64 * 1024

_FIN = 0x80
_TEXT = 0x1
_BINARY = 0x2


def websocket_frame(encoded: str | bytes) -> bytes:
    """One unmasked, uncompressed WebSocket frame (RFC 6455 section 5.2), as a server sends it."""
    if isinstance(encoded, str):
        payload = encoded.encode()
        first = _FIN | _TEXT
    else:
        payload = bytes(encoded)
        first = _FIN | _BINARY
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


class SharedPacket(eio_packet.Packet):
    """An Engine.IO packet queued on many sockets: encoded, and framed, once."""

    _encoded: str | bytes | None = None
    _frame: bytes | None = None

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


def _frame_of(packet: eio_packet.Packet) -> bytes:
    if isinstance(packet, SharedPacket):
        return packet.frame()
    return websocket_frame(packet.encode())


class LeanWebSocket:
    """Takes the place of python-engineio's aiohttp WebSocket driver for one server.

    Engine.IO calls it with the socket's ``_websocket_handler``; the handler is
    only used to find the socket, whose WebSocket session ``serve_websocket``
    then runs.
    """

    def __init__(self, handler: Any, server: Any) -> None:
        self.socket = handler.__self__
        self.server = server

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        """Accept the WebSocket and serve the Engine.IO session on it until it ends."""
        request: web.Request = environ["aiohttp.request"]
        ws = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await ws.prepare(request)
        await serve_websocket(self.socket, ws, request)
        return ws


async def _read_frame(ws: web.WebSocketResponse, timeout: float, limit: int) -> str | bytes | None:
    """The next text or binary message; None when the peer is gone, silent too long or over the limit."""
    try:
        message = await ws.receive(timeout=timeout)
    except TimeoutError:
        return None
    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    data: str | bytes = message.data
    if len(data) > limit:
        return None
    return data


def _decode(data: str | bytes) -> eio_packet.Packet | None:
    try:
        return eio_packet.Packet(encoded_packet=data)
    except (ValueError, IndexError, TypeError):
        return None


async def _upgrade(socket: Any, ws: web.WebSocketResponse, timeout: float, limit: int) -> bool:
    """The Engine.IO upgrade handshake of a long-polling socket: ping "probe", pong "probe", upgrade."""
    socket.upgrading = True  # Engine.IO holds back packets from the polling side meanwhile
    try:
        probe = await _read_frame(ws, timeout, limit)
        if probe is None:
            return False
        ping = _decode(probe)
        if ping is None or ping.packet_type != eio_packet.PING or ping.data != "probe":
            log.info("%s: WebSocket upgrade failed, no ping probe", socket.sid)
            return False
        await ws.send_str(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
        # A no-op answers the poll the client still has open, so it can switch.
        await socket.queue.put(eio_packet.Packet(eio_packet.NOOP))
        confirm = await _read_frame(ws, timeout, limit)
        if confirm is None:
            return False
        upgrade = _decode(confirm)
        if upgrade is None or upgrade.packet_type != eio_packet.UPGRADE:
            log.info("%s: WebSocket upgrade failed, expected an upgrade packet", socket.sid)
            socket.upgraded = False
            return False
        socket.upgraded = True
        return True
    finally:
        socket.upgrading = False


async def serve_websocket(socket: Any, ws: web.WebSocketResponse, request: web.Request) -> None:
    """Run one Engine.IO socket over an accepted WebSocket: a reader here, a writer task beside it."""
    server = socket.server
    timeout = server.ping_interval + server.ping_timeout
    limit = server.max_http_buffer_size
    if socket.connected:
        if not await _upgrade(socket, ws, timeout, limit):
            return
    else:
        socket.connected = True
        socket.upgraded = True

    writer = asyncio.ensure_future(_write_queued(socket, ws, request))
    try:
        while True:
            data = await _read_frame(ws, timeout, limit)
            if data is None:
                break
            packet = _decode(data)
            if packet is None:
                log.info("%s: not an Engine.IO packet, closing the connection", socket.sid)
                break
            try:
                await socket.receive(packet)
            except eio_exceptions.UnknownPacketError:
                pass
            except eio_exceptions.SocketIsClosedError:
                break
            except Exception:
                log.exception("%s: error while handling a packet", socket.sid)
    finally:
        await socket.queue.put(None)  # lets the writer finish what is queued and stop
        await writer
    await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)


async def _write_queued(socket: Any, ws: web.WebSocketResponse, request: web.Request) -> None:
    """Send what is queued on the socket, everything that piled up in one write, until None is queued."""
    queue: asyncio.Queue[Any] = socket.queue
    transport = request.transport
    try:
        while True:
            batch = [await queue.get()]
            queue.task_done()
            while not queue.empty():
                batch.append(queue.get_nowait())
                queue.task_done()
            stop = None in batch
            if stop:
                batch = batch[: batch.index(None)]
            if batch:
                if transport is None or transport.is_closing():
                    break
                frames = [_frame_of(packet) for packet in batch]
                transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
                if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                    await request.writer.drain()
            if stop:
                break
    except Exception:  # the connection is gone; the reader sees it too and ends the session
        log.debug("%s: WebSocket write failed", socket.sid, exc_info=True)
    finally:
        await ws.close()


def install_lean_websocket(eio_server: Any) -> None:
    """Serve this Engine.IO server's WebSocket connections with ``LeanWebSocket`` (aiohttp mode only)."""
    if eio_server.async_mode != "aiohttp":
        return
    # A copy: python-engineio shares the driver table between servers in one process.
    eio_server._async = {**eio_server._async, "websocket": LeanWebSocket}
