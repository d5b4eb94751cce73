"""A minimal Socket.IO v5 client speaking Engine.IO v4 over a WebSocket it frames itself.

python-socketio's own client decodes every packet into Python objects and
runs a task per event, which is too heavy to receive tens of thousands of
broadcasts per second on one core; aiohttp's WebSocket client still wakes a
task and builds a message object per frame. This client is an asyncio
protocol: each chunk read from the socket is cut into frames in one pass and
every event frame goes to a callback as raw text, so a receiver can find what
it needs by substring search; only the few frames that matter (handshake,
acks) are decoded.

Frames used (WebSocket transport only, no long-polling):
``0{...}`` open, ``2``/``3`` ping/pong, ``40{auth}`` connect, ``40{"sid"}``
connected, ``44{...}`` refused, ``42[...]`` event, ``42<id>[...]`` event
wanting an ack, ``43<id>[...]`` ack.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

EventHandler = Callable[[str], None]
AckHandler = Callable[[str], None]

HANDSHAKE_TIMEOUT = 30.0

_TEXT, _CLOSE, _PING, _PONG = 0x1, 0x8, 0x9, 0xA
# Client frames must be masked (RFC 6455 5.3); a load generator has no one to hide
# its payload from, so the key is zero and the payload goes out as it is.
_ZERO_MASK = bytes(4)


class SocketRefused(Exception):
    """The server refused the Socket.IO connection or closed it during the handshake."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final WebSocket frame as a client sends it."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + _ZERO_MASK + payload


class _WebSocketProtocol(asyncio.Protocol):
    """The client end of one WebSocket: the HTTP upgrade, then frames cut from each chunk read."""

    def __init__(self, request: bytes, on_text: Callable[[str], None], on_closed: Callable[[], None]) -> None:
        self.request = request
        self.on_text = on_text
        self.on_closed = on_closed
        self.transport: Any = None  # an asyncio.Transport; uvloop's do not subclass it
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(SocketRefused(f"connection lost during the upgrade: {exc}"))
        self.on_closed()

    def send_text(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(_TEXT, text.encode()))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if b" 101 " not in status:
                self.upgraded.set_exception(SocketRefused(f"upgrade refused: {status.decode(errors='replace')}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded.set_result(None)
        self._cut_frames()

    def _cut_frames(self) -> None:
        buffer = self.buffer
        size = len(buffer)
        at = 0
        while size - at >= 2:
            opcode = buffer[at] & 0x0F
            length = buffer[at + 1] & 0x7F
            start = at + 2
            if length == 126:
                if size - at < 4:
                    break
                length = int.from_bytes(buffer[at + 2 : at + 4], "big")
                start = at + 4
            elif length == 127:
                if size - at < 10:
                    break
                length = int.from_bytes(buffer[at + 2 : at + 10], "big")
                start = at + 10
            end = start + length
            if end > size:
                break
            at = end
            if opcode == _TEXT:
                self.on_text(buffer[start:end].decode())
            elif opcode == _PING:
                assert self.transport is not None
                self.transport.write(client_frame(_PONG, bytes(buffer[start:end])))
            elif opcode == _CLOSE:
                assert self.transport is not None
                self.transport.close()
                break
        if at:
            del buffer[:at]


class RawSocket:
    """One Socket.IO connection to the default namespace."""

    def __init__(self, base_url: str, on_event: EventHandler) -> None:
        url = urlsplit(base_url)
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or 80
        self._on_event = on_event
        self._protocol: _WebSocketProtocol | None = None
        self._acks: dict[int, AckHandler] = {}
        self._next_ack = 0
        self._no_pending_acks = asyncio.Event()
        self._no_pending_acks.set()
        self.closed = asyncio.Event()

    async def connect(self, auth: dict[str, Any] | None) -> None:
        """Open the WebSocket, finish both handshakes, and hand later frames to the callbacks."""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        handshake: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            _, protocol = await loop.create_connection(
                lambda: _WebSocketProtocol(request, handshake.put_nowait, self._lost), self._host, self._port
            )
            self._protocol = protocol
            await protocol.upgraded
            opening = await self._handshake_frame(handshake)
            if not opening.startswith("0"):
                raise SocketRefused(f"expected an Engine.IO open packet, got {opening[:80]!r}")
            protocol.send_text("40" + (json.dumps(auth, separators=(",", ":")) if auth else ""))
            while True:
                frame = await self._handshake_frame(handshake)
                if frame == "2":
                    protocol.send_text("3")
                elif frame.startswith("40"):
                    break
                elif frame.startswith("44"):
                    raise SocketRefused(frame[2:])
        protocol.on_text = self._dispatch

    async def _handshake_frame(self, frames: asyncio.Queue[str]) -> str:
        getting = asyncio.ensure_future(frames.get())
        closing = asyncio.ensure_future(self.closed.wait())
        done, _ = await asyncio.wait([getting, closing], return_when=asyncio.FIRST_COMPLETED)
        getting.cancel()
        closing.cancel()
        if getting not in done:
            raise SocketRefused("connection closed during the handshake")
        return getting.result()

    def _lost(self) -> None:
        self.closed.set()

    def _dispatch(self, data: str) -> None:
        head = data[:2]
        if head == "42":
            self._on_event(data)
        elif head == "43":
            self._on_ack(data)
        elif data == "2":
            assert self._protocol is not None
            self._protocol.send_text("3")
        elif head == "41" and self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()

    def _on_ack(self, data: str) -> None:
        start = data.find("[")
        handler = self._acks.pop(int(data[2:start]), None)
        if not self._acks:
            self._no_pending_acks.set()
        if handler is not None:
            handler(data[start:])

    def emit_now(self, event: str, payload_json: str) -> None:
        """Send an event without an acknowledgement, from synchronous code (a receive callback)."""
        assert self._protocol is not None
        self._protocol.send_text(f'42["{event}",{payload_json}]')

    async def emit(self, event: str, payload_json: str, on_ack: AckHandler | None = None) -> None:
        """Send an event whose single argument is ``payload_json`` (already encoded)."""
        assert self._protocol is not None
        if on_ack is None:
            self._protocol.send_text(f'42["{event}",{payload_json}]')
            return
        ack_id = self._next_ack
        self._next_ack += 1
        self._acks[ack_id] = on_ack
        self._no_pending_acks.clear()
        self._protocol.send_text(f'42{ack_id}["{event}",{payload_json}]')

    async def call(self, event: str, payload_json: str, timeout: float = 30.0) -> Any:
        """Send an event and return its decoded acknowledgement argument."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def resolve(raw: str) -> None:
            if not future.done():
                future.set_result(raw)

        await self.emit(event, payload_json, resolve)
        async with asyncio.timeout(timeout):
            args = json.loads(await future)
        return args[0] if args else None

    async def wait_for_acks(self, timeout: float) -> bool:
        """Wait until every acknowledgement asked for has come; False if the timeout passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._no_pending_acks.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Leave the namespace and close the connection."""
        protocol = self._protocol
        if protocol is None:  # never connected
            return
        if protocol.transport is not None and not protocol.transport.is_closing():
            protocol.send_text("41")
            protocol.transport.write(client_frame(_CLOSE, struct.pack("!H", 1000)))
            protocol.transport.close()
        await self.closed.wait()
