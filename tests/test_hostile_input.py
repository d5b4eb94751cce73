"""Hostile input: never a 500, never a dropped socket, never an invalid row, never a flood of log lines.

Property-based tests: Hypothesis drives a synchronous function in a worker
thread; each generated payload is sent by real clients on the test's event
loop, which keeps serving the app meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsvc.config import Config
from chatsvc.realtime.engine import MALFORMED_LOG_BURST, MALFORMED_LOG_PER_MINUTE
from tests.helpers import EVENT_TIMEOUT, Api, SocketClient, User, assert_ack_error, assert_error

pytestmark = pytest.mark.both_engines

# Socket.IO packets no client library sends, each of which python-socketio answered with a traceback.
MALFORMED_SOCKETIO = [
    "4",  # an empty Socket.IO packet
    "42",  # an event without data
    "4x",  # not a packet type
    "42[",  # broken JSON
    '42{"a":1}',  # an event that is not a list
    "42[]",  # an event without a name
    "42[1]",  # a name that is not a string
    "47",  # an unknown packet type
    "44{}",  # a connect error, which only servers send
    "40[1]",  # connect data that is not an object
    '451-["x",{"_placeholder":true,"num":9}]',  # a binary event before the Socket.IO connect
]

SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)

# Strings with lone surrogates, control characters and astral-plane characters.
nasty_text = st.text(st.characters(codec=None, categories=None), max_size=600)
ids = st.integers(min_value=-(2**70), max_value=2**70) | st.just(0) | st.just(1)
id_like = ids | st.text(max_size=6) | st.floats() | st.booleans() | st.none() | st.lists(st.integers(), max_size=2)


def run_on_loop(loop: asyncio.AbstractEventLoop, coro: Awaitable[Any]) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)  # type: ignore[arg-type]


async def drive(property_test: Callable[[asyncio.AbstractEventLoop], None]) -> None:
    """Run the Hypothesis test in a thread; check it really tried many inputs."""
    EXAMPLES.clear()
    await asyncio.to_thread(property_test, asyncio.get_running_loop())
    assert len(EXAMPLES) >= 100, f"only {len(EXAMPLES)} examples ran"


EXAMPLES: list[object] = []


def assert_rows_valid(db_path, allowed_rooms: dict[int, set[int]]) -> None:
    """Every stored message is well-formed and was sent by a member of its room."""
    with sqlite3.connect(db_path) as conn:
        for content, kind, room, sender in conn.execute(
            "SELECT content, type, chatroom_id, sender_id FROM chat_history"
        ):
            assert isinstance(content, str) and content.strip() and len(content) <= 500
            assert kind in (0, 1, 2)
            assert sender in allowed_rooms.get(room, set())


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_hostile_send_message_payloads(api: Api, sockets, config: Config, pair) -> None:
    alice, bob, room = pair
    client = await sockets(alice.token)

    message = st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["text", "image", "file", "video", ""]) | json_values,
                "content": nasty_text | json_values,
            },
        ),
    )
    payloads = st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "sendUserId": st.sampled_from([alice.id, bob.id]) | id_like,
                "chatroomId": st.sampled_from([room]) | id_like,
                "clientMsgId": st.none() | st.text(max_size=70) | json_scalars,
                "message": message,
                "extra": json_values,
            },
        ),
    )

    @SETTINGS
    @given(payloads)
    def property_test(loop: asyncio.AbstractEventLoop, payload: Any) -> None:
        EXAMPLES.append(payload)
        ack = run_on_loop(loop, client.call("sendMessage", payload))
        assert isinstance(ack, dict)
        if "statusCode" in ack:
            assert 400 <= ack["statusCode"] < 500, ack
        else:
            assert ack["chatroomId"] == room and ack["senderId"] == alice.id
        assert client.sio.connected

    await drive(property_test)
    assert_rows_valid(config.db_path, {room: {alice.id, bob.id}})


async def test_hostile_join_room_payloads(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    client: SocketClient = await sockets(alice.token)
    payloads = st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "chatroomId": st.sampled_from([room]) | id_like,
                "userId": st.sampled_from([alice.id, bob.id]) | id_like,
                "lastMessageId": id_like,
            },
        ),
    )

    @SETTINGS
    @given(payloads)
    def property_test(loop: asyncio.AbstractEventLoop, payload: Any) -> None:
        EXAMPLES.append(payload)
        ack = run_on_loop(loop, client.call("joinRoom", payload))
        assert isinstance(ack, dict)
        if "statusCode" in ack:
            assert 400 <= ack["statusCode"] < 500, ack
        else:
            assert ack["chatroomId"] == room
        assert client.sio.connected

    await drive(property_test)


async def test_hostile_http_query_parameters(api: Api) -> None:
    alice: User = await api.new_user()
    bob = await api.new_user()
    room = await api.one_to_one(alice, bob)
    query_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
    param = query_text | st.integers(min_value=-(2**70), max_value=2**70).map(str) | st.sampled_from([str(room), ""])
    routes = {
        "/chat-history/list": ["chatroomId", "limit", "beforeId", "afterId"],
        "/chatroom/findChatroom": ["userId1", "userId2"],
        "/chatroom/create-one-to-one": ["friendId"],
        "/chatroom/list": ["name"],
    }
    requests = st.sampled_from(sorted(routes)).flatmap(
        lambda path: st.tuples(st.just(path), st.fixed_dictionaries({}, optional=dict.fromkeys(routes[path], param)))
    )

    @SETTINGS
    @given(requests)
    def property_test(loop: asyncio.AbstractEventLoop, request: tuple[str, dict[str, str]]) -> None:
        EXAMPLES.append(request)
        path, params = request
        resp = run_on_loop(loop, api.request("GET", path, token=alice.token, params=params))
        assert resp.status < 500, (path, params, resp.body)
        if resp.status >= 400:
            assert set(resp.body) == {"statusCode", "message", "error"}

    await drive(property_test)


async def test_hostile_http_bodies(api: Api) -> None:
    bodies = st.one_of(
        json_values.map(lambda v: ("json", v)),
        st.binary(max_size=200).map(lambda b: ("raw", b)),
        st.fixed_dictionaries(
            {}, optional={k: nasty_text | json_scalars for k in ("username", "password", "nickName", "email")}
        ).map(lambda v: ("json", v)),
    )

    @SETTINGS
    @given(st.sampled_from(["/user/register", "/user/login"]), bodies)
    def property_test(loop: asyncio.AbstractEventLoop, path: str, body: tuple[str, Any]) -> None:
        EXAMPLES.append(path)
        kind, value = body
        if kind == "json":
            import json

            data = json.dumps(value).encode()
        else:
            data = value
        resp = run_on_loop(loop, api.request("POST", path, data=data, headers={"Content-Type": "application/json"}))
        assert resp.status < 500, (path, value, resp.body)
        if resp.status >= 400:
            assert set(resp.body) == {"statusCode", "message", "error"}

    await drive(property_test)


async def test_hostile_malformed_packets_are_logged_in_one_throttled_warning_line_each(
    api: Api, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await api.new_user()
    caplog.set_level(logging.INFO)
    rounds = 10
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        # Anonymous: an Engine.IO session that has not sent the Socket.IO connect.
        ws = await session.ws_connect(base_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
        assert (await ws.receive(timeout=EVENT_TIMEOUT)).data.startswith("0{")
        for _ in range(rounds):
            for packet in MALFORMED_SOCKETIO:
                await ws.send_str(packet)
        # The same session still connects (frames are handled in order: the junk was all seen first).
        await ws.send_str("40" + json.dumps({"token": alice.token}))
        async with asyncio.timeout(EVENT_TIMEOUT):
            while not (message := await ws.receive()).data.startswith("40{"):
                assert message.type == aiohttp.WSMsgType.TEXT, message
        await ws.close()
        # Long-polling: a body that is not UTF-8, and a packet type Engine.IO does not have.
        polling = {"EIO": "4", "transport": "polling"}
        handshake = await api.request("GET", "/socket.io/", params=polling)
        sid = json.loads(str(handshake.body)[1:])["sid"]
        for body in (b"\xff\xfe", b"9"):
            resp = await api.request("POST", "/socket.io/", params={**polling, "sid": sid}, data=body)
            assert resp.status == 400 and resp.body["message"] == "Malformed Engine.IO payload", resp.body
    elapsed = time.monotonic() - started
    sent = rounds * len(MALFORMED_SOCKETIO) + 2
    metrics = str((await api.request("GET", "/metrics")).body)
    assert f"chatsvc_malformed_packets_total {float(sent)}" in metrics
    # No traceback, no error; one warning line per packet, until the throttle holds the rest back.
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert noisy == [], [r.getMessage() for r in noisy]
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert lines and all(r.levelno == logging.WARNING and "\n" not in r.getMessage() for r in lines)
    allowed = MALFORMED_LOG_BURST + math.ceil(elapsed * MALFORMED_LOG_PER_MINUTE / 60)
    assert len(lines) <= allowed < sent


async def test_a_nul_character_is_refused_and_spoils_no_one_elses_message(api: Api, sockets) -> None:
    # PostgreSQL's text cannot hold NUL: both engines refuse it up front, so it never reaches a batch insert.
    alice, bob = await api.new_user("alice"), await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    resp = await api.get("/chatroom/list", alice.token, name="a\x00b")
    assert_error(resp.status, resp.body, 400)
    assert "NUL" in resp.body["message"]
    a, b = await sockets(alice.token), await sockets(bob.token)
    await a.join(alice, room)
    await b.join(bob, room)
    send = {"sendUserId": alice.id, "chatroomId": room}
    refused, stored = await asyncio.gather(
        a.call("sendMessage", {**send, "message": {"type": "text", "content": "bad\x00"}}),
        b.call("sendMessage", {**send, "sendUserId": bob.id, "message": {"type": "text", "content": "fine"}}),
    )
    assert_ack_error(refused, 400)
    assert stored["content"] == "fine" and stored["id"] > 0
