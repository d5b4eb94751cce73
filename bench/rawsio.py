"""A minimal Socket.IO v5 client speaking Engine.IO v4 frames over aiohttp's WebSocket client.

python-socketio's own client decodes every packet into Python objects and
runs a task per event, which is too heavy to receive tens of thousands of
broadcasts per second on one core. This client hands each event frame to a
callback as the raw text, so a receiver can find what it needs by substring
search, and decodes only the few frames that matter (handshake, acks).

Frames used (WebSocket transport only, no long-polling):
``0{...}`` open, ``2``/``3`` ping/pong, ``40{auth}`` connect, ``40{"sid"}``
connected, ``44{...}`` refused, ``42[...]`` event, ``42<id>[...]`` event
wanting an ack, ``43<id>[...]`` ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import aiohttp

EventHandler = Callable[[str], None]
AckHandler = Callable[[str], None]

HANDSHAKE_TIMEOUT = 30.0


class SocketRefused(Exception):
    """The server refused the Socket.IO connection or closed it during the handshake."""


class RawSocket:
    """One Socket.IO connection to the default namespace."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, on_event: EventHandler) -> None:
        self._session = session
        self._url = base_url.replace("http://", "ws://", 1).rstrip("/") + "/socket.io/?EIO=4&transport=websocket"
        self._on_event = on_event
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._acks: dict[int, AckHandler] = {}
        self._next_ack = 0
        self._reader: asyncio.Task[None] | None = None
        self._no_pending_acks = asyncio.Event()
        self._no_pending_acks.set()
        self.closed = asyncio.Event()

    async def connect(self, auth: dict[str, Any] | None) -> None:
        """Open the WebSocket, finish both handshakes, and start reading frames."""
        self._ws = ws = await self._session.ws_connect(self._url, max_msg_size=0, autoping=True)
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            opening = await self._text()
            if not opening.startswith("0"):
                raise SocketRefused(f"expected an Engine.IO open packet, got {opening[:80]!r}")
            await ws.send_str("40" + (json.dumps(auth, separators=(",", ":")) if auth else ""))
            while True:
                frame = await self._text()
                if frame == "2":
                    await ws.send_str("3")
                elif frame.startswith("40"):
                    break
                elif frame.startswith("44"):
                    raise SocketRefused(frame[2:])
        self._reader = asyncio.create_task(self._read())

    async def _text(self) -> str:
        assert self._ws is not None
        msg = await self._ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise SocketRefused(f"connection closed during the handshake ({msg.type.name})")
        data: str = msg.data
        return data

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        on_event = self._on_event
        text = aiohttp.WSMsgType.TEXT
        try:
            while True:
                msg = await ws.receive()
                if msg.type is not text:
                    break
                data: str = msg.data
                head = data[:2]
                if head == "42":
                    on_event(data)
                elif head == "43":
                    self._on_ack(data)
                elif data == "2":
                    await ws.send_str("3")
                elif head == "41":
                    break
        finally:
            self.closed.set()

    def _on_ack(self, data: str) -> None:
        start = data.find("[")
        handler = self._acks.pop(int(data[2:start]), None)
        if not self._acks:
            self._no_pending_acks.set()
        if handler is not None:
            handler(data[start:])

    async def emit(self, event: str, payload_json: str, on_ack: AckHandler | None = None) -> None:
        """Send an event whose single argument is ``payload_json`` (already encoded)."""
        assert self._ws is not None
        if on_ack is None:
            await self._ws.send_str(f'42["{event}",{payload_json}]')
            return
        ack_id = self._next_ack
        self._next_ack += 1
        self._acks[ack_id] = on_ack
        self._no_pending_acks.clear()
        await self._ws.send_str(f'42{ack_id}["{event}",{payload_json}]')

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
        """Leave the namespace and close the WebSocket."""
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._ws.send_str("41")
            await self._ws.close()
        if self._reader is not None:
            await self._reader
