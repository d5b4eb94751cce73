"""The Socket.IO server itself: what python-socketio does not tell or do for chatsvc.

Handlers learn whether the client asked for an acknowledgement, shutdown can
wait until every ack has gone out and close transports that will never
drain, and a long-polling client saying goodbye is answered at once. It also
tells the Engine.IO server (chatsvc/transport.py) which sessions completed
the Socket.IO connect, and logs a malformed packet in one line instead of a
traceback.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from chatsvc.realtime.engine import ChatEngineServer, SharedPacket, describe_error

# Seconds live transports get on shutdown to send their CLOSE packet.
TRANSPORT_FLUSH_SECONDS = 2.0
# What a socket cut off for falling behind hears last, as an ``exception`` event (docs/protocol.md).
CUT_OFF_MESSAGE = (
    "Disconnected: too many messages waiting unread on this connection; "
    "reconnect and rejoin with lastMessageId to get the rest"
)

# Whether the event being handled came with an acknowledgement callback.
# python-socketio does not tell handlers, so the server sets it per event.
_ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested", default=False)


def ack_requested() -> bool:
    """Whether the client wants an acknowledgement for the event being handled."""
    return _ack_requested.get()


class ChatSocketServer(socketio.AsyncServer):
    """An AsyncServer that tells handlers whether the client wants an ack, and counts events in flight."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Called with (event name, seconds to the ack) after each event; chatsvc/metrics.py keeps sends.
        self.event_observer: Callable[[str, float], None] | None = None
        self.eio: ChatEngineServer
        notice = self.packet_class(
            sio_packet.EVENT, namespace="/", data=["exception", {"status": "error", "message": CUT_OFF_MESSAGE}]
        )
        self.eio.cut_off_notice = SharedPacket(eio_packet.MESSAGE, notice.encode())

    def _engineio_server_class(self) -> type[ChatEngineServer]:
        return ChatEngineServer

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        # A new Engine.IO session counts as pending until its Socket.IO connect succeeds.
        request = environ.get("aiohttp.request")
        self.eio.pending.opened(eio_sid, getattr(request, "remote", None) or "")
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        if self.manager.sid_from_eio_sid(eio_sid, namespace or "/") is not None:  # not refused
            self.eio.pending.done(eio_sid)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except ValueError as exc:
            # Malformed input: chatsvc.fanout.ChatPacket refuses what it cannot decode (MalformedPacket),
            # python-socketio what it does not expect (a binary packet before the connect). Event
            # handlers answer their own errors, so nothing else raises here.
            environ = self.environ.get(eio_sid) or {}
            request = environ.get("aiohttp.request")
            self.eio.malformed_input.warning(
                "%s: malformed Socket.IO packet from %s: %s",
                eio_sid,
                getattr(request, "remote", None),
                describe_error(exc),
            )

    async def _handle_event_internal(  # type: ignore[no-untyped-def]
        self, server, sid, eio_sid, data, namespace, id
    ):
        _ack_requested.set(id is not None)
        self._in_flight += 1
        self._idle.clear()
        started = time.perf_counter()
        try:
            # The ack is sent inside this call, so "idle" means every ack went out.
            return await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
            if self.event_observer is not None and data:
                self.event_observer(data[0], time.perf_counter() - started)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        # A long-polling client saying goodbye may have a GET waiting for packets.
        # Answer it now, as the JavaScript Engine.IO server does; python-engineio
        # leaves it open until the next ping (25 s), and its client waits for it.
        transport = self.eio.sockets.get(eio_sid)
        if transport is not None and not transport.upgraded and reason == self.eio.reason.CLIENT_DISCONNECT:
            transport.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        self.eio.pending.done(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def close_transports(self, flush_timeout: float) -> None:
        """Close every Engine.IO connection, giving live ones up to ``flush_timeout`` to send the CLOSE packet.

        engineio's own disconnect-all waits for each queue to drain, which never
        happens for a long-polling client that went away without saying so.
        """
        transports = list(self.eio.sockets.values())
        for transport in transports:
            await transport.close(wait=False)
        flushes = [asyncio.ensure_future(transport.queue.join()) for transport in transports]
        if flushes:
            _, stuck = await asyncio.wait(flushes, timeout=flush_timeout)
            for flush in stuck:
                flush.cancel()
        self.eio.sockets.clear()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no event is being handled; False if the timeout passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
