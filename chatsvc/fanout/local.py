"""Lean fan-out: encode a broadcast once and queue it on each recipient's Engine.IO socket.

python-socketio's stock ``AsyncManager.emit`` encodes once too, but then
creates one task per recipient and waits for them all; on a room of a hundred
members that is most of the cost of a message. Engine.IO socket send queues
are asyncio queues drained by each socket's own writer (WebSocket or
long-polling), so putting the packet there directly keeps every transport
working and needs no task at all. A put never waits: the queue is bounded
(chatsvc/transport.py ``SendQueue``), and a socket past its bound is cut off
rather than slowing the room down.

The class is a mixin over any AsyncManager, so the Redis-backed manager can
use it too: its pub/sub listener delivers locally through ``super().emit``.
"""

from __future__ import annotations

from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from chatsvc.jsonutil import SocketJSON
from chatsvc.realtime.engine import SharedPacket


class MalformedPacket(ValueError):
    """A packet from a client that is not Socket.IO as chatsvc accepts it."""


class ChatPacket(sio_packet.Packet):
    """Socket.IO packets encoded with orjson, a cheap binary check, and strict decoding.

    The stock check walks every value of every payload looking for bytes;
    chatsvc never sends binary, so only top-level arguments are looked at.
    A packet a client sends is decoded strictly: whatever python-socketio
    would fail on later, with a traceback (an event that is not a list
    starting with its name, a packet type clients never send, bad JSON),
    raises MalformedPacket here, which chatsvc/socket_server.py logs in one line.
    """

    json = SocketJSON

    def __init__(
        self,
        packet_type: int = sio_packet.EVENT,
        data: Any = None,
        namespace: str | None = None,
        id: int | None = None,
        binary: bool | None = None,
        encoded_packet: Any = None,
    ) -> None:
        if encoded_packet is not None and not encoded_packet:
            # The stock class reads an empty packet as an event without data.
            raise MalformedPacket("empty packet")
        super().__init__(packet_type, data, namespace, id, binary, encoded_packet)

    def decode(self, encoded_packet: Any) -> int:
        """Decode a packet from a client; MalformedPacket unless it is one a client may send."""
        if not isinstance(encoded_packet, str):
            raise MalformedPacket("binary data where a packet was expected")
        try:
            attachments: int = super().decode(encoded_packet)
        except (ValueError, TypeError, IndexError) as exc:
            raise MalformedPacket(f"undecodable packet ({type(exc).__name__})") from None
        kind, data = self.packet_type, self.data
        if kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
            if not (isinstance(data, list) and data and isinstance(data[0], str)):
                raise MalformedPacket("an event must be a list starting with its name")
        elif kind in (sio_packet.ACK, sio_packet.BINARY_ACK):
            if not isinstance(data, list):
                raise MalformedPacket("an acknowledgement must be a list")
        elif kind == sio_packet.CONNECT:
            if data is not None and not isinstance(data, dict):
                raise MalformedPacket("a connect packet's data must be an object")
        elif kind != sio_packet.DISCONNECT:
            raise MalformedPacket(f"packet type {kind} is not one a client sends")
        return attachments

    @classmethod
    def reconstruct_binary(cls, data: Any, attachments: list[Any]) -> Any:
        """Put binary attachments back in their placeholders; MalformedPacket if one points nowhere."""
        try:
            return super().reconstruct_binary(data, attachments)
        except (IndexError, KeyError, TypeError) as exc:
            raise MalformedPacket(f"bad binary placeholder ({type(exc).__name__})") from None

    @classmethod
    def data_is_binary(cls, data: Any) -> bool:
        """Whether a top-level argument is bytes (nested bytes are not supported)."""
        if isinstance(data, bytes | bytearray):
            return True
        return isinstance(data, list) and any(isinstance(item, bytes | bytearray) for item in data)


class LeanEmitMixin:
    """Overrides ``emit`` for the common case: no callback, text packet."""

    server: Any
    rooms: dict[str, Any]
    # Packets queued on recipients' sockets; read by chatsvc/metrics.py when scraped.
    deliveries: int = 0

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        """Queue one encoded packet on every recipient socket."""
        if callback is not None:
            await super().emit(  # type: ignore[misc]
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs
            )
            return
        room = to or room
        if namespace not in self.rooms:
            return
        if isinstance(data, tuple):
            args = list(data)
        elif data is not None:
            args = [data]
        else:
            args = []
        encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
        if isinstance(encoded, list):  # binary attachments: leave them to the stock path
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, **kwargs)  # type: ignore[misc]
            return
        packet = SharedPacket(eio_packet.MESSAGE, encoded)
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        sockets = self.server.eio.sockets
        sent = 0
        for sid, eio_sid in self.get_participants(namespace, room):  # type: ignore[attr-defined]
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if socket is not None and not socket.closed:
                socket.queue.put_nowait(packet)
                sent += 1
        self.deliveries += sent


class LeanManager(LeanEmitMixin, socketio.AsyncManager):
    """The in-process client manager with lean fan-out."""
