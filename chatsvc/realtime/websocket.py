"""WebSocket frames written under aiohttp's ``WebSocketResponse``: the one module below aiohttp's public API.

chatsvc/realtime/engine.py accepts a WebSocket with aiohttp's public
``WebSocketResponse`` (``prepare``, ``receive``, ``send_str``, ``close``), but
writes the packets queued for a socket itself: every packet that piled up, as
ready-made frames (a broadcast is framed once for all its recipients), in one
write to the connection. aiohttp's own ``WebSocketResponse.send_str`` frames
and writes each packet on its own (one system call per frame).

aiohttp internals touched here, each checked by tests/test_upstream_contract.py:

* ``web.BaseRequest.transport`` after ``WebSocketResponse.prepare``: the
  WebSocket's connection, whose ``write`` the frames go to in order with the
  response's own (mirrors what ``aiohttp._websocket.writer.WebSocketWriter``
  writes for an unmasked, uncompressed frame).
* ``web.BaseRequest.writer`` and ``AbstractStreamWriter.drain``: the flow
  control of that connection, waited on past ``WRITE_BUFFER_LIMIT`` as
  aiohttp's WebSocket writer does.

Should an upgrade break this, ``ws.send_str`` per packet is the public path
(docs/performance.md, "Where chatsvc touches library internals").
"""

from __future__ import annotations

import asyncio
import struct

from aiohttp import web

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


class FrameWriter:
    """Writes ready-made frames to the connection of a prepared ``WebSocketResponse``."""

    __slots__ = ("_stream", "transport")

    def __init__(self, request: web.Request) -> None:
        # The connection itself: an asyncio transport (None once the connection is gone).
        self.transport: asyncio.Transport | None = request.transport  # type: ignore[assignment]
        self._stream = request.writer

    def closing(self) -> bool:
        """Whether the connection is gone or going."""
        return self.transport is None or self.transport.is_closing()

    def write(self, frames: bytes) -> bool:
        """Hand frames to the kernel; True if the caller should ``await drain()`` (the peer reads slowly)."""
        assert self.transport is not None
        self.transport.write(frames)
        return self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT

    async def drain(self) -> None:
        """Wait until the connection's buffer has gone down, as aiohttp's own WebSocket writer does."""
        await self._stream.drain()
