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
