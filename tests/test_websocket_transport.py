"""chatsvc's Engine.IO WebSocket transport (chatsvc/realtime/engine.py): upgrade, frame lengths, compression, bursts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from chatsvc.config import Config
from chatsvc.testing import run_chatsvc
from tests.conftest import make_config
from tests.helpers import EVENT_TIMEOUT, Api, HandFramedSocket, User, raw_connect, send_payload

# Long enough for the 16-bit and the 64-bit WebSocket length forms, in a 4-byte character.
LONG_MESSAGE_CHARS = 17_000


@pytest.fixture
def config(tmp_path: Path) -> Config:
    # No send rate limit: the slow-reader test sends a thousand messages at once.
    return make_config(tmp_path, message_max_length=LONG_MESSAGE_CHARS, max_socket_payload=256 * 1024, rate_limit=0)


@pytest.fixture
async def raw_socket(base_url: str) -> AsyncIterator[Any]:
    """Opens RawSockets over WebSocket with a given permessage-deflate setting; closes them after the test."""
    async with aiohttp.ClientSession() as session:

        async def open_raw(user: User, compress: int = 0) -> HandFramedSocket:
            return HandFramedSocket(await raw_connect(session, base_url, user, compress))

        yield open_raw


async def test_websocket_transport_upgrade_from_polling_keeps_the_session(sockets, pair) -> None:
    alice, bob, room = pair
    # python-engineio's client upgrades inside connect(): this runs the probe handshake on the server.
    a = await sockets(alice.token, transports=["polling", "websocket"])
    b = await sockets(bob.token, transports=["websocket"])
    assert a.sio.transport() == "websocket"
    await a.join(alice, room)
    await b.join(bob, room)
    sent = await a.call("sendMessage", send_payload(alice, room, "after the upgrade"))
    for client in (a, b):
        assert (await client.next_chat())["message"]["id"] == sent["id"]
    reply = await b.call("sendMessage", send_payload(bob, room, "back"))
    assert (await a.next_chat())["message"]["id"] == reply["id"]


async def test_websocket_transport_upgraded_session_keeps_no_long_polling_request(sockets, pair) -> None:
    # An idle socket's memory: once upgraded, nothing holds on to the polling requests that opened the session.
    alice, _, _ = pair
    client = await sockets(alice.token, transports=["polling", "websocket"])
    assert client.sio.transport() == "websocket"
    gc.collect()
    polling = [
        obj for obj in gc.get_objects() if isinstance(obj, web.BaseRequest) and obj.query.get("transport") == "polling"
    ]
    assert polling == [], f"{len(polling)} finished long-polling request(s) still referenced"


async def test_websocket_transport_upgrade_answers_the_open_poll(base_url: str, pair) -> None:
    """The JavaScript client upgrades while a long-polling GET is still open: the upgrade must end that poll."""
    alice, _, room = pair
    polling = base_url + "/socket.io/?EIO=4&transport=polling"
    sent = asyncio.Event()

    async def on_request_sent(*_: Any) -> None:
        sent.set()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(on_request_sent)
    async with aiohttp.ClientSession(trace_configs=[tracing]) as session:
        async with session.get(polling) as resp:
            handshake = await resp.text()
        assert handshake.startswith("0{"), handshake
        sid = json.loads(handshake[1:])["sid"]
        async with session.post(f"{polling}&sid={sid}", data="40" + json.dumps({"token": alice.token})) as resp:
            assert resp.status == 200
        async with session.get(f"{polling}&sid={sid}") as resp:
            assert (await resp.text()).startswith("40{")
        sent.clear()
        open_poll = asyncio.ensure_future(session.get(f"{polling}&sid={sid}"))
        # Once the poll is on the wire the server reads it before the WebSocket's own connection.
        await asyncio.wait_for(sent.wait(), EVENT_TIMEOUT)
        ws_url = base_url.replace("http", "ws", 1) + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
        async with session.ws_connect(ws_url) as ws:
            await ws.send_str("2probe")
            assert (await ws.receive(timeout=EVENT_TIMEOUT)).data == "3probe"
            async with asyncio.timeout(EVENT_TIMEOUT):
                async with await open_poll as resp:
                    assert await resp.text() == "6"  # noop: the poll is over, switch to the WebSocket
            await ws.send_str("5")
            raw = HandFramedSocket(ws)
            assert await raw.call("joinRoom", {"chatroomId": room, "userId": alice.id}) == {"chatroomId": room}


@pytest.mark.parametrize("length", [10, 1_000, LONG_MESSAGE_CHARS], ids=["7-bit", "16-bit", "64-bit"])
async def test_websocket_transport_frames_every_payload_length(length: int, joined) -> None:
    alice, _, room, a, b = joined
    content = "\U0001f600" * length  # four bytes each in UTF-8
    await a.call("sendMessage", send_payload(alice, room, content))
    assert (await b.next_chat())["message"]["content"] == content


@pytest.mark.parametrize("offer_deflate", [False, True], ids=["plain", "deflate-offered"])
async def test_websocket_transport_delivers_a_burst_in_order(raw_socket, sockets, pair, offer_deflate: bool) -> None:
    alice, bob, room = pair
    receiver = await raw_socket(bob, compress=15 if offer_deflate else 0)
    assert receiver.ws.compress == 0  # permessage-deflate is never negotiated
    assert await receiver.call("joinRoom", {"chatroomId": room, "userId": bob.id}) == {"chatroomId": room}
    sender = await sockets(alice.token)
    await sender.join(alice, room)
    # Sent without waiting, so the writer finds many packets queued at once.
    sends = [sender.call("sendMessage", send_payload(alice, room, f"burst {n} " + "x" * (n * 37))) for n in range(40)]
    acks = await asyncio.gather(*sends)
    expected = sorted(ack["id"] for ack in acks)
    assert await receiver.chat_ids(len(expected)) == expected


async def test_websocket_transport_closes_a_connection_that_sends_no_engine_io(raw_socket, pair) -> None:
    alice, bob, room = pair
    broken = await raw_socket(alice)
    await broken.ws.send_str("x")
    closing = await broken.ws.receive(timeout=EVENT_TIMEOUT)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
    # Only that connection: a new one works.
    again = await raw_socket(bob)
    assert await again.call("joinRoom", {"chatroomId": room, "userId": bob.id}) == {"chatroomId": room}


async def test_websocket_transport_drops_a_client_that_stops_answering_pings(tmp_path: Path) -> None:
    config = make_config(tmp_path, ping_interval=1, ping_timeout=2)
    async with run_chatsvc(config) as running, aiohttp.ClientSession() as session:
        base_url = str(running.make_url("")).rstrip("/")
        api = Api(base_url, session)
        alice, bob = await api.new_user(), await api.new_user()
        room = await api.one_to_one(alice, bob)
        silent = HandFramedSocket(await raw_connect(session, base_url, bob))
        lively = HandFramedSocket(await raw_connect(session, base_url, alice))

        async def answer_pings() -> None:
            async for message in lively.ws:
                if message.data == "2":
                    await lively.ws.send_str("3")

        answering = asyncio.ensure_future(answer_pings())
        # The silent client reads but never answers: after a ping and its timeout the server closes it.
        seen: list[Any] = []
        async with asyncio.timeout(EVENT_TIMEOUT + 5):
            message = await silent.ws.receive()
            while message.type == aiohttp.WSMsgType.TEXT:
                seen.append(message.data)
                message = await silent.ws.receive()
        assert "2" in seen, seen
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        # The client that answered every ping is still served.
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answering
        assert await lively.call("joinRoom", {"chatroomId": room, "userId": alice.id}) == {"chatroomId": room}
        await lively.ws.close()


async def test_websocket_transport_slow_reader_holds_up_no_one_and_loses_nothing(raw_socket, sockets, pair) -> None:
    alice, bob, room = pair
    slow = await raw_socket(bob)
    assert await slow.call("joinRoom", {"chatroomId": room, "userId": bob.id}) == {"chatroomId": room}
    sender = await sockets(alice.token)
    watcher = await sockets(alice.token)
    await sender.join(alice, room)
    await watcher.join(alice, room)
    # The slow client stops reading (aiohttp stops reading the socket once 64 KiB wait unread): the
    # server's output to it backs up far past its write buffer limit while the room goes on.
    content = "\U0001f600" * LONG_MESSAGE_CHARS  # 68 KB a message, 10 MB in all
    acks = [await sender.call("sendMessage", send_payload(alice, room, content)) for _ in range(150)]
    expected = [ack["id"] for ack in acks]
    seen = [(await watcher.next_chat())["message"]["id"] for _ in expected]
    assert seen == expected
    assert await slow.chat_ids(len(expected)) == expected


async def test_websocket_transport_idle_socket_keeps_no_request(sockets, pair) -> None:
    # An idle socket's memory: once accepted, a WebSocket's connection is chatsvc's, and aiohttp's request
    # (headers, parser, handler frames) is freed instead of living as long as the socket.
    alice, bob, _ = pair
    direct = await sockets(alice.token, transports=["websocket"])
    upgraded = await sockets(bob.token, transports=["polling", "websocket"])
    assert upgraded.sio.transport() == "websocket"
    await direct.call("joinRoom", {"chatroomId": 0, "userId": alice.id})  # the socket works
    gc.collect()
    requests = [obj for obj in gc.get_objects() if isinstance(obj, web.BaseRequest) and obj.path == "/socket.io/"]
    assert requests == [], f"{len(requests)} Socket.IO request(s) still referenced by idle sockets"


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    """A client's WebSocket frame (masked unless ``mask`` is empty)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        length = bytes((size,))
    elif size < 1 << 16:
        length = bytes((126,)) + size.to_bytes(2, "big")
    else:
        length = bytes((127,)) + size.to_bytes(8, "big")
    if not mask:
        return bytes((first,)) + length + payload
    length = bytes((length[0] | 0x80,)) + length[1:]
    return bytes((first,)) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame as (opcode, payload)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), EVENT_TIMEOUT)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await asyncio.wait_for(reader.readexactly(size), EVENT_TIMEOUT)


@contextlib.asynccontextmanager
async def websocket_by_hand(base_url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP connection upgraded to an Engine.IO WebSocket, past the OPEN packet."""
    host, port = base_url.split("//", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EVENT_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    opcode, opened = await read_frame(reader)
    assert (opcode, opened[:2]) == (0x1, b"0{"), opened
    try:
        yield reader, writer
    finally:
        writer.close()


async def test_websocket_transport_joins_fragments_and_answers_pings(base_url: str, pair) -> None:
    alice, _, _ = pair
    connect = ("40" + json.dumps({"token": alice.token})).encode()
    async with websocket_by_hand(base_url) as (reader, writer):
        writer.write(
            masked_frame(0x1, connect[:5], fin=False)
            + masked_frame(0x9, b"are you there")  # a control frame between fragments, as RFC 6455 allows
            + masked_frame(0x0, connect[5:])
        )
        assert await read_frame(reader) == (0xA, b"are you there")
        opcode, connected = await read_frame(reader)
        assert (opcode, connected[:3]) == (0x1, b"40{"), connected
        writer.write(masked_frame(0x8, (1000).to_bytes(2, "big")))
        assert await read_frame(reader) == (0x8, (1000).to_bytes(2, "big"))
        assert await asyncio.wait_for(reader.read(), EVENT_TIMEOUT) == b""  # and the server hangs up


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (masked_frame(0x1, b"40", mask=b""), 1002),  # a client's frame must be masked
        # Over CHATSVC_MAX_SOCKET_PAYLOAD: refused on its header, before the payload is read.
        (masked_frame(0x1, b"4" + b"x" * 300 * 1024)[:14], 1009),
        (masked_frame(0x1, b"4\xff\xfe"), 1007),  # text that is not UTF-8
        (masked_frame(0x0, b"4"), 1002),  # a continuation of nothing
    ],
    ids=["unmasked", "too-big", "not-utf8", "stray-continuation"],
)
async def test_websocket_transport_closes_on_a_broken_frame(base_url: str, frame: bytes, code: int) -> None:
    async with websocket_by_hand(base_url) as (reader, writer):
        writer.write(frame)
        assert await read_frame(reader) == (0x8, code.to_bytes(2, "big"))
        assert await asyncio.wait_for(reader.read(), EVENT_TIMEOUT) == b""
