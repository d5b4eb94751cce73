"""Property-based hostile input: never a 500, never a dropped socket, never an invalid row.

Hypothesis drives a synchronous function in a worker thread; each generated
payload is sent by real clients on the test's event loop, which keeps serving
the app meanwhile.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsvc.config import Config
from tests.helpers import Api, SocketClient, User

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


async def test_hostile_send_message_payloads(api: Api, sockets, config: Config) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    room = await api.one_to_one(alice, bob)
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


async def test_hostile_join_room_payloads(api: Api, sockets) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    room = await api.one_to_one(alice, bob)
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
