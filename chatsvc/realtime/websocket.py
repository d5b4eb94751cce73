"""WebSocket connections chatsvc takes over from aiohttp after the handshake: the one module below aiohttp's public API.

aiohttp runs a WebSocket inside the request handler that accepted it: the
request, its headers and parser, the ``WebSocketResponse`` with its reader,
writer and queue, two tasks and every middleware's and Engine.IO's suspended
frame stay alive as long as the socket does, about 12 KB per idle socket.
Here the handler answers the upgrade (``take_over``) and then hands the
connection to a ``WebSocketProtocol``, a small asyncio protocol that cuts
frames from what it reads and writes ready-made frames; the handler returns
at once, and aiohttp forgets the request and the connection. Engine.IO's
WebSocket transport (chatsvc/realtime/engine.py) is such a protocol.

What is sent and accepted is RFC 6455 without extensions, as aiohttp's own
``WebSocketResponse(compress=False)`` did: no permessage-deflate, no
subprotocol; client frames must be masked; pings are answered; fragmented
messages are joined; a message over the size limit closes the connection
with 1009, text that is not UTF-8 with 1007, a protocol error with 1002.

aiohttp internals touched here, each checked by tests/test_upstream_contract.py:

* ``aiohttp._websocket.helpers.websocket_mask``: unmasks a client's frame in
  place (aiohttp's WebSocket reader does the same).
* ``RequestHandler._message_tail``: bytes the client sent after its upgrade
  request, which aiohttp keeps for the WebSocket parser it would install
  (``RequestHandler.set_parser``); they are the new protocol's first input.
* ``BaseProtocol.transport`` set to None, then ``RequestHandler.connection_lost``,
  once the handler has returned (``_TakenOver.write_eof``): aiohttp's
  ``RequestHandler.start`` then ends without closing the transport, and its
  ``web_server.Server`` drops the connection from those it closes on
  shutdown (chatsvc closes its own, chatsvc/realtime/engine.py
  ``ChatEngineServer.close_transports``).

Should an upgrade break this, ``web.WebSocketResponse`` (and engineio's own
aiohttp driver) is the public path (docs/performance.md, "Where chatsvc
touches library internals").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from typing import Any

from aiohttp import hdrs, web
from aiohttp._websocket.helpers import websocket_mask

# A slow reader's connection stops taking frames once this much output is buffered (as aiohttp's own writer).
WRITE_BUFFER_LIMIT = 64 * 1024
# Seconds a closing connection waits for the client's close frame before it is closed anyway (aiohttp: 10).
CLOSE_TIMEOUT = 10.0

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

_FIN = 0x80
_CONTINUATION = 0x0
_TEXT = 0x1
_BINARY = 0x2
_CLOSE = 0x8
_PING = 0x9
_PONG = 0xA
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def websocket_frame(encoded: str | bytes) -> bytes:
    """One unmasked, uncompressed WebSocket frame (RFC 6455 section 5.2), as a server sends it."""
    if isinstance(encoded, str):
        return _frame(_TEXT, encoded.encode())
    return _frame(_BINARY, bytes(encoded))


def _frame(opcode: int, payload: bytes | bytearray) -> bytes:
    first = _FIN | opcode
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection after the handshake: frames in (to ``message_received``), frames out.

    Subclasses implement ``message_received`` (each text or binary message,
    called from ``data_received``) and ``connection_closed`` (once, when the
    connection is gone). ``__slots__`` throughout: there is one per idle client.
    """

    __slots__ = ("_close_sent", "_close_timer", "_drained", "_fragments", "_paused", "_tail", "max_size", "transport")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.transport: asyncio.Transport | None = None
        # Bytes of a frame not complete yet (empty most of the time).
        self._tail: bytearray | None = None
        # The frames of a fragmented message so far, its opcode first.
        self._fragments: list[Any] | None = None
        self._close_sent = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- for subclasses ----------------------------------------------------------------------------------------

    def message_received(self, data: str | bytes) -> None:
        """A text (str) or binary (bytes) message from the client."""
        raise NotImplementedError

    def connection_closed(self) -> None:
        """The connection is gone (called once)."""

    def closing(self) -> bool:
        """Whether the connection is gone, going, or waiting for the client's close frame."""
        return self.transport is None or self._close_sent or self.transport.is_closing()

    def write(self, frames: bytes) -> bool:
        """Hand frames to the kernel; True if the caller should ``await drain()`` (the client reads slowly)."""
        assert self.transport is not None
        self.transport.write(frames)
        return self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT

    async def drain(self) -> None:
        """Wait until the connection takes more output; ConnectionResetError if it is gone."""
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drained)
        if self.transport is None:
            raise ConnectionResetError("Connection lost")

    def close(self, code: int = CLOSE_NORMAL) -> None:
        """Send a close frame, and close the connection once the client answers (or ``CLOSE_TIMEOUT`` passes)."""
        transport = self.transport
        if transport is None or self._close_sent:
            return
        self._close_sent = True
        if transport.is_closing():
            return
        transport.write(_frame(_CLOSE, code.to_bytes(2, "big")))
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.close)

    def hang_up(self) -> None:
        """Close the connection once what is buffered is written (a close frame first, if none was sent)."""
        transport = self.transport
        if transport is None:
            return
        if not self._close_sent and not transport.is_closing():
            self._close_sent = True
            transport.write(_frame(_CLOSE, CLOSE_GOING_AWAY.to_bytes(2, "big")))
        transport.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()

    def peer(self) -> str | None:
        """The client's address (for a log line)."""
        name = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(name[0]) if name else None

    # -- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection (from ``take_over``)."""
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: stop timers and waiters, then tell the subclass."""
        if self.transport is None:
            return
        self.transport = None
        self._tail = None
        self._fragments = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self.connection_closed()

    def pause_writing(self) -> None:
        """The transport's buffer is over its high-water mark."""
        self._paused = True

    def resume_writing(self) -> None:
        """The transport's buffer is back under its low-water mark."""
        self._paused = False
        drained = self._drained
        if drained is not None:
            self._drained = None
            if not drained.done():
                drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        """Cut every complete frame from what arrived, in one pass; keep the rest of an incomplete one.

        A client marking each message it reads sends a small text frame per
        message it receives, so this runs for every one of them: a complete,
        unfragmented text frame is unmasked, decoded and handed to
        ``message_received`` right here, without a call per step; the rest
        (control frames, fragments, binary, a connection that is closing)
        takes ``_frame_received``.
        """
        buffer: bytes | bytearray = data
        tail = self._tail
        if tail:
            tail += data  # rare: a frame split across reads
            buffer = tail
        size = len(buffer)
        at = 0
        while size - at >= 2 and self.transport is not None:
            first = buffer[at]
            second = buffer[at + 1]
            length = second & 0x7F
            start = at + 2
            if length > 125:
                if length == 126:
                    if size - at < 4:
                        break
                    length = int.from_bytes(buffer[at + 2 : at + 4], "big")
                    start = at + 4
                else:
                    if size - at < 10:
                        break
                    length = int.from_bytes(buffer[at + 2 : at + 10], "big")
                    start = at + 10
            if not second & 0x80 or first & 0x70:
                self._fail(CLOSE_PROTOCOL_ERROR)  # a client's frame must be masked; no extension is agreed
                return
            opcode = first & 0x0F
            if opcode >= _CLOSE:
                if not first & _FIN or length > 125:
                    self._fail(CLOSE_PROTOCOL_ERROR)
                    return
            elif length > self.max_size or (
                self._fragments is not None and length + self._fragments_size() > self.max_size
            ):
                self._fail(CLOSE_TOO_BIG)  # before buffering it
                return
            end = start + 4 + length
            if end > size:
                break
            # aiohttp's own unmasking (in C where its extension is built): XOR with the 4-byte key, in place.
            payload = bytearray(buffer[start + 4 : end])
            mask = buffer[start : start + 4]
            websocket_mask(mask if type(mask) is bytes else bytes(mask), payload)
            at = end
            if first == _FIN | _TEXT and self._fragments is None and not self._close_sent:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    self._fail(CLOSE_INVALID_DATA)
                    return
                self.message_received(text)
            elif not self._frame_received(opcode, bool(first & _FIN), payload):
                return
        if self.transport is None:
            return
        if at == size:
            self._tail = None
        elif tail:
            del tail[:at]
        else:
            self._tail = bytearray(buffer[at:])

    def _fragments_size(self) -> int:
        fragments = self._fragments
        return 0 if fragments is None else sum(len(part) for part in fragments[1:])

    def _frame_received(self, opcode: int, fin: bool, payload: bytearray) -> bool:
        # False once the connection is failing or closed: nothing more is read.
        if opcode in (_TEXT, _BINARY):
            if self._fragments is not None:
                self._fail(CLOSE_PROTOCOL_ERROR)  # a new message in the middle of a fragmented one
                return False
            if not fin:
                self._fragments = [opcode, payload]
                return True
            return self._message(opcode, payload)
        if opcode == _CONTINUATION:
            fragments = self._fragments
            if fragments is None:
                self._fail(CLOSE_PROTOCOL_ERROR)
                return False
            fragments.append(payload)
            if not fin:
                return True
            self._fragments = None
            return self._message(fragments[0], b"".join(fragments[1:]))
        if opcode == _PING:
            if not self._close_sent and self.transport is not None:
                self.transport.write(_frame(_PONG, payload))
            return True
        if opcode == _PONG:
            return True
        if opcode == _CLOSE:
            self._close_received(payload)
            return False
        self._fail(CLOSE_PROTOCOL_ERROR)  # an opcode RFC 6455 reserves
        return False

    def _message(self, opcode: int, payload: bytes | bytearray) -> bool:
        if self._close_sent:
            return True  # read on, and drop, until the client's close frame (closing earlier could reset it)
        if opcode == _TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA)
                return False
            self.message_received(text)
        else:
            self.message_received(bytes(payload))
        return self.transport is not None

    def _close_received(self, payload: bytearray) -> None:
        transport = self.transport
        if transport is None:
            return
        if not self._close_sent:
            # Answer with the client's code, as RFC 6455 section 5.5.1 asks, then hang up.
            self._close_sent = True
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NORMAL
            transport.write(_frame(_CLOSE, code.to_bytes(2, "big") if 1000 <= code < 5000 else b""))
        transport.close()

    def _fail(self, code: int) -> None:
        transport = self.transport
        if transport is None:
            return
        if not self._close_sent:
            self._close_sent = True
            transport.write(_frame(_CLOSE, code.to_bytes(2, "big")))
        transport.close()


def _accept_key(request: web.Request) -> str:
    """The Sec-WebSocket-Accept of a valid upgrade request; HTTPBadRequest otherwise (as aiohttp's handshake)."""
    headers = request.headers
    if request.method != "GET" or headers.get(hdrs.UPGRADE, "").lower().strip() != "websocket":
        raise web.HTTPBadRequest(text="Can only upgrade to WebSocket")
    if "upgrade" not in headers.get(hdrs.CONNECTION, "").lower():
        raise web.HTTPBadRequest(text="No CONNECTION upgrade header")
    if headers.get(hdrs.SEC_WEBSOCKET_VERSION, "") not in ("13", "8", "7"):
        raise web.HTTPBadRequest(text="Unsupported version")
    key = headers.get(hdrs.SEC_WEBSOCKET_KEY, "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise web.HTTPBadRequest(text="Handshake error")
    return base64.b64encode(hashlib.sha1(key.encode() + _ACCEPT_GUID).digest()).decode()


class _TakenOver(web.StreamResponse):
    """The 101 answer to an upgrade whose connection a WebSocketProtocol owns; returned by the handler."""

    def __init__(self, accept: str) -> None:
        super().__init__(
            status=101,
            headers={hdrs.UPGRADE: "websocket", hdrs.CONNECTION: "upgrade", hdrs.SEC_WEBSOCKET_ACCEPT: accept},
        )
        self.force_close()  # no HTTP keep-alive after it
        self._aiohttp_protocol: Any = None

    async def write_eof(self, data: bytes = b"") -> None:
        """Finish the response as aiohttp does, then make aiohttp let go of the connection without closing it."""
        await super().write_eof(data)
        protocol = self._aiohttp_protocol
        if protocol is not None:
            self._aiohttp_protocol = None
            # aiohttp's RequestHandler closes protocol.transport when its request loop ends, unless it is None;
            # connection_lost then drops the connection from web_server.Server, which closes those on shutdown.
            protocol.transport = None
            protocol.connection_lost(None)


async def take_over(request: web.Request, connection: WebSocketProtocol) -> web.StreamResponse:
    """Answer a WebSocket upgrade (101), then hand its connection to ``connection``; the response to return.

    Raises HTTPBadRequest for a request that is not a valid upgrade (nothing
    is sent), and ConnectionResetError if the client is gone.
    """
    response = _TakenOver(_accept_key(request))
    await response.prepare(request)
    protocol = request.protocol
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("Connection lost")
    # What the client sent after its request, kept by aiohttp for the WebSocket parser it would install.
    tail: bytes = protocol._message_tail  # type: ignore[attr-defined]
    protocol._message_tail = b""  # type: ignore[attr-defined]
    protocol.keep_alive(False)
    transport.set_protocol(connection)
    connection.connection_made(transport)
    response._aiohttp_protocol = protocol
    if tail:
        connection.data_received(tail)
    if not transport.is_closing() and not transport.is_reading():
        transport.resume_reading()  # aiohttp pauses a connection whose tail grows past its read buffer
    return response
