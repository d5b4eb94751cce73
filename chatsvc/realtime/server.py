"""The Socket.IO server: python-socketio as chatsvc runs it. The one module that touches python-socketio's internals.

What python-socketio does not tell or do for chatsvc is added here: handlers
learn whether the client asked for an acknowledgement, shutdown can wait
until every ack has gone out, a long-polling client saying goodbye is
answered at once, the Engine.IO server (chatsvc/realtime/engine.py) learns
which sessions completed the Socket.IO connect, a malformed packet is logged
in one line instead of a traceback, packets are encoded with orjson
(``ChatPacket``) and a broadcast is queued on each recipient without a task
per recipient (``LeanManager``). The fan-out (chatsvc/fanout/) and the event
handlers (events.py) use the public ``emit``, ``enter_room``, ``leave_room``
and ``disconnect``, and the few methods of :class:`ChatSocketServer` below.

Private names of python-socketio touched here, each checked by
tests/test_upstream_contract.py (docs/performance.md has the table):

* ``AsyncServer._engineio_server_class`` (installs ChatEngineServer; called by
  ``socketio.base_server.BaseServer.__init__``).
* ``AsyncServer._handle_eio_connect``, ``_handle_connect``,
  ``_handle_eio_message``, ``_handle_eio_disconnect``,
  ``_handle_event_internal`` (overridden, each calling the upstream one), and
  ``AsyncServer.environ``.
* ``AsyncManager.emit`` (mirrored by ``LeanManager.emit``), and the manager's
  ``rooms``, ``get_participants``, ``is_connected`` and ``sid_from_eio_sid``.
* ``socketio.packet.Packet.data_is_binary``, ``reconstruct_binary`` and
  ``decode`` (overridden by ``ChatPacket``, installed through the public
  ``serializer=``), and ``Packet.json``.
* ``AsyncServer._binary_packet`` (read), and ``socketio.packet.Packet.decode``,
  ``AsyncServer._handle_eio_message``, ``_handle_event`` and
  ``_handle_event_internal``, mirrored for the one packet shape that
  ``ChatSocketServer._inline_message`` takes (``sendMessage``, ``markRead``
  and ``typing`` as their frame is read, without python-socketio's dispatch);
  ``socketio.packet.Packet.encode`` for an ACK, mirrored by ``encode_ack``;
  and the Engine.IO server's ``async_handlers`` being off (set by
  ``BaseServer.__init__``): a socket's packets on python-socketio's path are
  handled one after the other, which the inline path keeps
  (``ChatEngineServer.full_path``).

Public extension points come first: the manager through ``client_manager=``,
the packet class through ``serializer=``, reserved event names through
``AsyncNamespace.trigger_event`` (events.py). ``_handle_event_internal`` stays
because no public hook sees the ack id: ``trigger_event`` gets the event's
arguments only.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import socketio
from socketio import packet as sio_packet

from chatsvc.config import Config
from chatsvc.jsonutil import SocketJSON
from chatsvc.logs import REQUEST_ID_ENVIRON, request_id_of_environ
from chatsvc.realtime.engine import ChatEngineServer, SocketLimits, describe_error, remote_address

# Seconds live transports get on shutdown to send their CLOSE packet.
TRANSPORT_FLUSH_SECONDS = 2.0
# What a socket cut off for falling behind hears last, as an ``exception`` event (docs/protocol.md).
CUT_OFF_MESSAGE = (
    "Disconnected: too many messages waiting unread on this connection; "
    "reconnect and rejoin with lastMessageId to get the rest"
)


_BINARY = (bytes, bytearray)


class MalformedPacket(ValueError):
    """A packet from a client that is not Socket.IO as chatsvc accepts it."""


class ChatPacket(sio_packet.Packet):
    """Socket.IO packets encoded with orjson, a cheap binary check, and strict decoding.

    The stock check walks every value of every payload looking for bytes;
    chatsvc never sends binary, so only top-level arguments are looked at.
    A packet a client sends is decoded strictly: whatever python-socketio
    would fail on later, with a traceback (an event that is not a list
    starting with its name, a packet type clients never send, bad JSON),
    raises MalformedPacket here, which ChatSocketServer._handle_eio_message logs in one line.
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
        # Once per packet sent (each ack, each broadcast): a loop over a tuple of types, no generator,
        # no union object (half the cost of building and encoding an ack, as any() with a union was).
        if isinstance(data, _BINARY):
            return True
        if isinstance(data, list):
            for item in data:
                if isinstance(item, _BINARY):
                    return True
        return False


class LeanManager(socketio.AsyncManager):
    """python-socketio's in-process client manager, with an ``emit`` that encodes once and queues directly.

    The stock ``AsyncManager.emit`` encodes once too, but then creates one
    task per recipient and waits for them all; on a room of a hundred members
    that is most of the cost of a message. Engine.IO send queues are drained
    by each socket's own writer, so the encoded packet is put on each
    recipient's queue (ChatEngineServer.queue_message): no task at all. A put
    never waits: the queue is bounded, and a socket past its bound is cut off
    rather than slowing the room down. Mirrors ``socketio.AsyncManager.emit``.
    """

    server: ChatSocketServer
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
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs)
            return
        if not self.queue_event(event, data, namespace, to or room, skip_sid):
            # binary attachments: leave them to the stock path
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, to=to, **kwargs)

    def queue_event(self, event: str, data: Any, namespace: str, room: Any, skip_sid: Any = None) -> bool:
        """``emit`` without waiting (it never waits for anything else); False, queueing nothing, if binary."""
        if namespace not in self.rooms:
            return True
        if isinstance(data, tuple):
            args = list(data)
        elif data is not None:
            args = [data]
        else:
            args = []
        encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
        if isinstance(encoded, list):
            return False
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        self.deliveries += self.server.eio.queue_message(self.get_participants(namespace, room), skip, encoded)
        return True


# Whether the event being handled came with an acknowledgement callback.
# python-socketio does not tell handlers, so the server sets it per event.
_ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested", default=False)


def ack_requested() -> bool:
    """Whether the client wants an acknowledgement for the event being handled."""
    return _ack_requested.get()


# The ack of an event handled inline: called once with what the client is to get.
InlineAck = Callable[[Any], None]
# An event handled as its frame is read (ChatSocketServer.handle_inline): called with the socket's sid, the JSON
# text of the event's one argument, and its ack (None if the client asked for none); returns False to leave the
# event to the full path.
InlineHandler = Callable[[str, str, InlineAck | None], bool]
# An Engine.IO message's text as the inline path takes it (socketio.packet.Packet.decode, for one shape): "4" (MESSAGE),
# "2" (EVENT), no attachment count, no namespace, an optional ack id of at most 15 digits (python-socketio reads up
# to 100; the full path still does), then a JSON list whose first item is the event's name, unescaped.
_INLINE_EVENT = re.compile(r'42([0-9]{0,15})\["([A-Za-z]+)",')


def encode_ack(ack_id: int, result: dict[str, Any]) -> str:
    """The Socket.IO ACK packet of the default namespace answering ``ack_id`` with one object.

    What ``ChatPacket(ACK, namespace="/", id=ack_id, data=[result]).encode()``
    gives (``socketio.packet.Packet.encode``: the type, the id, the JSON of the
    data; a dict is never binary), without a packet object and its binary check:
    an inline event's ack is built for every ``sendMessage``.
    """
    return "3" + str(ack_id) + SocketJSON.dumps([result])


class _Ack:
    """The ack of one inline event: the ACK packet queued on the socket, as python-socketio's
    ``AsyncServer._handle_event_internal`` sends it through ``_send_packet``; counted in flight until then."""

    __slots__ = ("_eio_sid", "_id", "_open", "_server")

    def __init__(self, server: ChatSocketServer, eio_sid: str, ack_id: int) -> None:
        self._server, self._eio_sid, self._id = server, eio_sid, ack_id
        self._open = True
        server._event_started()

    def __call__(self, result: Any) -> None:
        if not self._open:
            return
        server = self._server
        if type(result) is dict:
            encoded = encode_ack(self._id, result)
        else:
            encoded = server.packet_class(sio_packet.ACK, namespace="/", id=self._id, data=[result]).encode()
        server.eio.queue_one(self._eio_sid, encoded)
        self.drop()

    def drop(self) -> None:
        """Stop counting the event in flight without answering (it went to the full path, which answers)."""
        if self._open:
            self._open = False
            self._server._event_ended()


# What a Socket.IO session keeps of the request that opened it: what the connect handler reads (the token may
# come in a header or the query) and what the log says about the session.
_KEPT_ENVIRON = ("REQUEST_METHOD", "QUERY_STRING", "PATH_INFO", "HTTP_AUTHORIZATION")


def session_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """A compact environ for a session: the keys chatsvc reads, the client's address and the request id."""
    kept = {key: environ[key] for key in _KEPT_ENVIRON if key in environ}
    kept["REMOTE_ADDR"] = remote_address(environ) or ""
    kept[REQUEST_ID_ENVIRON] = request_id_of_environ(environ)
    return kept


class ChatSocketServer(socketio.AsyncServer):
    """An AsyncServer that tells handlers whether the client wants an ack, and counts events in flight."""

    def __init__(self, *, event_observer: Callable[[str, float], None] | None = None, **kwargs: Any) -> None:
        serializer = kwargs.get("serializer")
        packet_class = serializer if isinstance(serializer, type) else sio_packet.Packet
        notice = packet_class(
            sio_packet.EVENT, namespace="/", data=["exception", {"status": "error", "message": CUT_OFF_MESSAGE}]
        )
        # python-socketio hands the keyword arguments it does not know to the Engine.IO server.
        super().__init__(cut_off_notice=notice.encode(), inline_message=self._inline_message, **kwargs)
        # By event name: the handlers of events taken as their frame is read, and whether each waits its turn
        # behind the socket's packets still on python-socketio's path (see handle_inline).
        self._inline: dict[str, tuple[InlineHandler, bool]] = {}
        # Events those handlers took; read by chatsvc/metrics.py when scraped.
        self.inline_events = 0
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Called with (event name, seconds to the ack) after each event; chatsvc/metrics.py keeps sends.
        self._event_observer = event_observer
        self.eio: ChatEngineServer

    def _engineio_server_class(self) -> type[ChatEngineServer]:
        return ChatEngineServer

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        # A new Engine.IO session counts as pending until its Socket.IO connect succeeds.
        kept = session_environ(environ)
        self.eio.pending.opened(eio_sid, kept["REMOTE_ADDR"])
        # python-socketio keeps the environ for the session's life (get_environ, the connect handler):
        # a compact copy instead of the WSGI-style dict and the aiohttp request it holds, which for a
        # long-polling client is a finished request, its headers and its connection's state.
        return await super()._handle_eio_connect(eio_sid, kept)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        if self.manager.sid_from_eio_sid(eio_sid, namespace or "/") is not None:  # not refused
            self.eio.pending.done(eio_sid)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except ValueError as exc:
            # Malformed input: ChatPacket refuses what it cannot decode (MalformedPacket),
            # python-socketio what it does not expect (a binary packet before the connect). Event
            # handlers answer their own errors, so nothing else raises here.
            self.eio.malformed_input.warning(
                "%s: malformed Socket.IO packet from %s: %s",
                eio_sid,
                remote_address(self.environ.get(eio_sid) or {}),
                describe_error(exc),
            )
        finally:
            # Handled (and answered) through python-socketio's dispatch: the socket's later events may be taken
            # inline again once none of its earlier ones is still on this path (ChatEngineServer.full_path_done).
            self.eio.full_path_done(eio_sid)

    async def _handle_event_internal(  # type: ignore[no-untyped-def]
        self, server, sid, eio_sid, data, namespace, id
    ):
        _ack_requested.set(id is not None)
        self._event_started()
        started = time.perf_counter()
        try:
            # The ack is sent inside this call, so "idle" means every ack went out.
            return await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            self._event_ended()
            if self._event_observer is not None and data:
                self._event_observer(data[0], time.perf_counter() - started)

    def _event_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _event_ended(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def handle_inline(self, event: str, handler: InlineHandler, *, in_turn: bool = False) -> None:
        """Hand ``event`` of the default namespace to ``handler`` as its WebSocket frame is read.

        No packet object, no task, no trip through the namespace's dispatch: for
        events clients send for every message they receive (``markRead``), every
        few seconds (``typing``) or for every message they write
        (``sendMessage``), that dispatch cost several times the event's own
        work. What the handler declines, and every other shape of the event
        (long-polling, binary, another namespace, a second argument), takes the
        full path. With ``in_turn``, the event is also left to the full path
        while one of the socket's packets is still there (python-socketio
        handles a socket's packets one after the other): a send read meanwhile
        is then stored after the one before it. Marks and typing notices need
        no turn (nothing they do depends on the order of other events), and
        must not wait for one: a client marking each message it receives
        would otherwise queue its marks behind one another on the full path.
        """
        self._inline[event] = (handler, in_turn)

    def observe_event(self, event: str, seconds: float) -> None:
        """Tell the event observer that an event handled inline was answered after ``seconds``."""
        if self._event_observer is not None:
            self._event_observer(event, seconds)

    def run_soon(self, work: Any) -> None:
        """Run a coroutine in a task of its own, held until it is done (for inline handlers that must wait)."""
        self.eio.run_soon(work)

    def _inline_message(self, eio_sid: str, text: str) -> bool:
        """Handle an Engine.IO message (its text, ``4`` first) inline if it is one of those events; else False.

        Mirrors what python-socketio does with such a packet, for the one shape
        taken here: ``socketio.packet.Packet.decode`` (type 2 EVENT, no
        attachment count, no namespace, an optional ack id of digits, a JSON
        list of the name and one argument), ``AsyncServer._handle_eio_message``
        (a text frame that follows a binary packet is its attachment, not a
        packet: ``_binary_packet``), ``_handle_event`` (only for a socket
        connected to the namespace) and ``_handle_event_internal`` (the ack
        packet, see ``_Ack``). The argument's JSON text is the list's text
        between the name's comma and the closing bracket: if it is one JSON
        value, the list is exactly the name and it; if not, the handler finds
        it is no JSON and the full path answers the packet as it always has.
        """
        match = _INLINE_EVENT.match(text)
        if match is None or text[-1] != "]":
            return False
        found = self._inline.get(match[2])
        if found is None or eio_sid in self._binary_packet:
            return False
        handler, in_turn = found
        if in_turn and eio_sid in self.eio.full_path:
            return False
        manager = self.manager
        sid = manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not manager.is_connected(sid, "/"):
            return False
        digits = match[1]
        ack = _Ack(self, eio_sid, int(digits)) if digits else None
        if handler(sid, text[match.end() : -1], ack):
            self.inline_events += 1
            return True
        if ack is not None:
            ack.drop()
        return False

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self.eio.answer_goodbye(eio_sid, reason)
        self.eio.pending.done(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def close_transports(self, flush_timeout: float) -> None:
        """Close every Engine.IO connection, giving live ones up to ``flush_timeout`` to send the CLOSE packet."""
        await self.eio.close_transports(flush_timeout)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no event is being handled; False if the timeout passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- what the fan-out, the event handlers and the metrics ask of the server ---------------------------

    def participants(self, room: str, namespace: str = "/") -> list[str]:
        """The sids of this instance's sockets in a room."""
        return [sid for sid, _ in self.manager.get_participants(namespace, room)]

    def holders_in(self, room: str, holders: Iterable[str], namespace: str = "/") -> list[str]:
        """Those of ``holders`` (rooms holding a user's sockets) with a socket of this instance in ``room``."""
        rooms = self.manager.rooms.get(namespace, {})
        in_room = rooms.get(room)
        if not in_room:
            return []
        # Called for every stored message with webhooks on: a plain loop, no generator per holder.
        found = []
        for holder in holders:
            sids = rooms.get(holder)
            if sids:
                for sid in sids:
                    if sid in in_room:
                        found.append(holder)
                        break
        return found

    async def leave_room_of(self, holder: str, room: str, namespace: str = "/") -> None:
        """Take every socket in room ``holder`` (a user's sockets) out of ``room``."""
        for sid in self.participants(holder, namespace):
            await self.leave_room(sid, room, namespace)

    async def disconnect_room(self, room: str, namespace: str = "/") -> None:
        """Disconnect every socket of this instance in a room."""
        for sid in self.participants(room, namespace):
            await self.disconnect(sid, namespace)

    def emit_now(self, event: str, data: Any, to: str, namespace: str = "/") -> None:
        """``emit(event, data, to=sid)`` without waiting, for code that cannot (inline handlers); no binary data."""
        queued = self.manager.queue_event(event, data, namespace, to)
        assert queued, "emit_now sends no binary data"

    def is_connected(self, sid: str, namespace: str = "/") -> bool:
        """Whether python-socketio counts the socket as connected (not before connect, nor after disconnect)."""
        return bool(self.manager.is_connected(sid, namespace))

    @property
    def deliveries(self) -> int:
        """Event packets queued on this instance's sockets so far (a broadcast counts once per recipient)."""
        return int(getattr(self.manager, "deliveries", 0))

    def socket_counts(self, namespace: str = "/") -> tuple[int, int, int]:
        """Connected sockets, chat rooms with sockets, and socket-in-room memberships, on this instance."""
        rooms = self.manager.rooms.get(namespace, {})
        sockets = len(rooms.get(None, ()))
        chat_rooms = 0
        memberships = 0
        for name, members in list(rooms.items()):
            # Chat rooms are named by their numeric id; "user:<id>" rooms hold a user's sockets.
            if isinstance(name, str) and name.isdigit():
                chat_rooms += 1
                memberships += len(members)
        return sockets, chat_rooms, memberships


def build_socket_server(
    config: Config, *, event_observer: Callable[[str, float], None] | None = None
) -> ChatSocketServer:
    """The Socket.IO server of one application (the event handlers are registered by the app factory)."""
    origins = config.cors_origins
    return ChatSocketServer(
        client_manager=LeanManager(),
        # orjson packets without a global change to python-socketio's Packet class.
        serializer=ChatPacket,
        # Engine.IO already runs each incoming message in its own task.
        async_handlers=False,
        async_mode="aiohttp",
        # CHATSVC_CORS_ORIGINS, as for the HTTP API; no credentials: sockets authenticate with a token, not cookies.
        cors_allowed_origins="*" if "*" in origins else list(origins),
        cors_credentials=False,
        max_http_buffer_size=config.max_socket_payload,
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        logger=False,
        engineio_logger=False,
        event_observer=event_observer,
        socket_limits=SocketLimits(
            queue_packets=config.socket_queue_packets,
            queue_bytes=config.socket_queue_bytes,
            pending_sessions=config.max_pending_sessions,
            pending_sessions_per_address=config.max_pending_sessions_per_address,
        ),
    )
