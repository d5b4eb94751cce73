"""Socket.IO: connecting with a token, joinRoom, sendMessage, leaveRoom, errors, trust-client mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestServer

from chatsvc.app import create_app
from chatsvc.config import Config
from tests.helpers import EVENT_TIMEOUT, Api, SocketClient, assert_ack_error, connect_socket, send_payload, serve

Event = dict[str, Any]


async def events_until(client: SocketClient, last: Callable[[Event], bool]) -> list[Event]:
    """Every ``message`` event up to and including the first that matches ``last``."""
    seen: list[Event] = []
    async with asyncio.timeout(EVENT_TIMEOUT):
        while not seen or not last(seen[-1]):
            seen.append(await client.messages.get())
    return seen


# -- connecting ---------------------------------------------------------------------


async def test_connect_without_token_is_refused_with_a_clear_message(base_url: str) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError, match="Authentication required"):
        await connect_socket(base_url)


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "Bearer nonsense"])
async def test_connect_with_a_bad_token_is_refused_with_a_clear_message(base_url: str, token: str) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError, match="Invalid token"):
        await connect_socket(base_url, token)


async def test_connect_error_event_carries_the_reason(base_url: str) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    reasons: asyncio.Queue[Any] = asyncio.Queue()
    sio.on("connect_error", reasons.put_nowait)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(base_url, auth={"token": "garbage"}, transports=["websocket"], wait_timeout=EVENT_TIMEOUT)
    reason = await asyncio.wait_for(reasons.get(), EVENT_TIMEOUT)
    assert isinstance(reason, dict) and "Invalid token" in reason["message"]


async def test_connect_with_a_token_of_another_server_is_refused(api: Api, config: Config) -> None:
    # Signed with the other server's own generated secret.
    other = config.with_changes(db_path=config.db_path.with_name("other.db"))
    async with serve(other) as other_api:
        stranger = await other_api.new_user()
    with pytest.raises(socketio.exceptions.ConnectionError, match="Invalid token"):
        await connect_socket(api.base_url, stranger.token)


@pytest.mark.parametrize("how", ["auth", "auth-bearer", "header", "query"])
async def test_connect_token_accepted_from_auth_header_or_query(api: Api, sockets, pair, how: str) -> None:
    alice, _, room = pair
    if how == "auth":
        client = await sockets(alice.token)
    elif how == "auth-bearer":
        client = await sockets(auth={"token": f"Bearer {alice.token}"})
    elif how == "header":
        client = await sockets(headers={"Authorization": f"Bearer {alice.token}"})
    else:
        client = await connect_socket(f"{api.base_url}?token={alice.token}")
    try:
        # The socket acts as the token's user.
        await client.join(alice, room)
        ack = await client.call("sendMessage", send_payload(alice, room))
        assert ack["senderId"] == alice.id
    finally:
        await client.disconnect()


async def test_connect_with_polling_transport_is_authenticated_too(base_url: str) -> None:
    # Promptly: the refused client's goodbye answers its pending long-poll at once.
    async with asyncio.timeout(EVENT_TIMEOUT):
        with pytest.raises(socketio.exceptions.ConnectionError, match="Authentication required"):
            await connect_socket(base_url, transports=["polling"])


# -- joinRoom ---------------------------------------------------------------------------


async def test_join_room_acks_and_tells_the_room(sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    b = await sockets(bob.token)
    await a.join(alice, room)
    ack = await b.call("joinRoom", {"chatroomId": room, "userId": bob.id})
    assert ack == {"chatroomId": room}
    assert await a.next_message() == {"type": "joinRoom", "userId": bob.id}
    assert await b.next_message() == {"type": "joinRoom", "userId": bob.id}


async def test_join_room_without_user_id_acts_as_the_token_user(sockets, pair) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    assert await a.call("joinRoom", {"chatroomId": room}) == {"chatroomId": room}
    assert await a.next_message() == {"type": "joinRoom", "userId": alice.id}


async def test_join_room_by_a_non_member_is_refused_and_delivers_nothing(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    carol = await api.new_user()
    carols_room = await api.one_to_one(carol, bob)
    a = await sockets(alice.token)
    c = await sockets(carol.token)
    assert_ack_error(await c.call("joinRoom", {"chatroomId": room, "userId": carol.id}), 403)
    await a.join(alice, room)
    await a.call("sendMessage", send_payload(alice, room, "private"))
    # Broadcasts are queued before the sender's ack: had carol joined, "private" would come first.
    await c.call("joinRoom", {"chatroomId": carols_room, "userId": carol.id})
    seen = await events_until(c, lambda e: e == {"type": "joinRoom", "userId": carol.id})
    assert all(e.get("type") != "sendMessage" for e in seen), seen
    assert c.sio.connected


async def test_join_room_as_another_user_is_refused(sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    ack = await a.call("joinRoom", {"chatroomId": room, "userId": bob.id})
    assert_ack_error(ack, 403)
    assert "userId" in ack["message"]
    assert a.messages.empty()


@pytest.mark.parametrize(
    "payload",
    [None, "1", [1], {}, {"chatroomId": "1"}, {"chatroomId": 1.5}, {"chatroomId": True}, {"chatroomId": 0}],
)
async def test_join_room_bad_payload_is_400(sockets, pair, payload: Any) -> None:
    alice, _, _ = pair
    a = await sockets(alice.token)
    assert_ack_error(await a.call("joinRoom", payload), 400)
    assert a.sio.connected


async def test_join_room_of_a_missing_room_is_403(sockets, pair) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    assert_ack_error(await a.call("joinRoom", {"chatroomId": room + 1000, "userId": alice.id}), 403)


# -- sendMessage -------------------------------------------------------------------------


async def test_send_message_acks_the_stored_message_and_broadcasts_it(api: Api, joined) -> None:
    alice, _, room, a, b = joined
    payload = send_payload(alice, room, "x" * 500, kind="file")
    payload["extra"] = {"ignored": True}
    payload["message"]["fileName"] = "ignored too"
    ack = await a.call("sendMessage", payload)
    assert set(ack) >= {"id", "content", "type", "chatroomId", "senderId", "createTime", "updateTime", "sender"}
    assert ack["content"] == "x" * 500 and ack["type"] == 2 and ack["chatroomId"] == room
    assert ack["sender"]["id"] == alice.id and "password" not in str(ack)
    for client in (a, b):
        event = await client.next_chat()
        assert event == {"type": "sendMessage", "userId": alice.id, "message": ack}
    assert [m["content"] for m in await api.history(alice, room)] == ["x" * 500]


async def test_send_message_with_a_spoofed_sender_is_refused_and_not_stored(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    ack = await a.call("sendMessage", send_payload(bob, room, "as bob"))
    assert_ack_error(ack, 403)
    assert "sendUserId" in ack["message"]
    assert [m["content"] for m in await api.history(alice, room)] == []


async def test_send_message_by_a_non_member_is_refused_and_not_stored(api: Api, sockets, pair) -> None:
    alice, _, room = pair
    carol = await api.new_user()
    c = await sockets(carol.token)
    assert_ack_error(await c.call("sendMessage", send_payload(carol, room, "intruder")), 403)
    assert_ack_error(await c.call("sendMessage", send_payload(None, room)), 403)
    assert [m["content"] for m in await api.history(alice, room)] == []


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("empty content", {"message": {"type": "text", "content": ""}}),
        ("whitespace content", {"message": {"type": "text", "content": " \t\n "}}),
        ("501 characters", {"message": {"type": "text", "content": "x" * 501}}),
        ("content not a string", {"message": {"type": "text", "content": 42}}),
        ("missing content", {"message": {"type": "text"}}),
        ("unknown type", {"message": {"type": "video", "content": "hi"}}),
        ("numeric type", {"message": {"type": 0, "content": "hi"}}),
        ("missing type", {"message": {"content": "hi"}}),
        ("missing message", {}),
        ("message not an object", {"message": "hi"}),
        ("missing chatroomId", {"chatroomId": None}),
        ("string chatroomId", {"chatroomId": "ROOM"}),
        ("string sendUserId", {"sendUserId": "ME"}),
    ],
)
async def test_send_message_invalid_payload_is_400_and_not_stored(
    api: Api, sockets, pair, name: str, payload: dict[str, Any]
) -> None:
    alice, _, room = pair
    full: dict[str, Any] = {"sendUserId": alice.id, "chatroomId": room}
    full.update(payload)
    if full.get("chatroomId") == "ROOM":
        full["chatroomId"] = str(room)
    if full.get("sendUserId") == "ME":
        full["sendUserId"] = str(alice.id)
    full = {k: v for k, v in full.items() if v is not None}
    a = await sockets(alice.token)
    assert_ack_error(await a.call("sendMessage", full), 400)
    assert [m["content"] for m in await api.history(alice, room)] == []


@pytest.mark.parametrize("payload", [None, "hello", 42, [1, 2], True])
async def test_send_message_payload_not_an_object_is_400(api: Api, sockets, pair, payload: Any) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    assert_ack_error(await a.call("sendMessage", payload), 400)
    assert [m["content"] for m in await api.history(alice, room)] == []


async def test_send_message_failure_without_ack_arrives_as_exception(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    await a.emit("sendMessage", send_payload(alice, room, ""))
    event = await asyncio.wait_for(a.exceptions.get(), EVENT_TIMEOUT)
    assert set(event) == {"status", "message"}
    assert event["status"] == "error" and "content" in event["message"]
    await a.emit("sendMessage", send_payload(bob, room, "spoofed"))
    event = await asyncio.wait_for(a.exceptions.get(), EVENT_TIMEOUT)
    assert event["status"] == "error" and "sendUserId" in event["message"]
    await a.emit("joinRoom", {"chatroomId": "nope"})
    event = await asyncio.wait_for(a.exceptions.get(), EVENT_TIMEOUT)
    assert event["status"] == "error" and "chatroomId" in event["message"]
    assert [m["content"] for m in await api.history(alice, room)] == []


async def test_send_message_errors_keep_the_socket_usable(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    b = await sockets(bob.token)
    await b.join(bob, room)
    for bad in (None, {}, send_payload(alice, room, ""), send_payload(bob, room), send_payload(alice, room + 999)):
        ack = await a.call("sendMessage", bad)
        assert "statusCode" in ack
    await a.emit("sendMessage", "not even an object")
    await asyncio.wait_for(a.exceptions.get(), EVENT_TIMEOUT)
    assert a.sio.connected
    ack = await a.call("sendMessage", send_payload(alice, room, "still here"))
    assert ack["content"] == "still here"
    assert (await b.next_chat())["message"]["id"] == ack["id"]
    assert [m["content"] for m in await api.history(alice, room)] == ["still here"]


async def test_send_message_reaches_members_who_joined_only(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    b = await sockets(bob.token)  # connected, but never joined the room
    ack = await a.call("sendMessage", send_payload(alice, room, "before bob joins"))
    await b.call("joinRoom", {"chatroomId": room, "userId": bob.id})
    seen = await events_until(b, lambda e: e == {"type": "joinRoom", "userId": bob.id})
    assert all(e.get("type") != "sendMessage" for e in seen), seen
    ack = await a.call("sendMessage", send_payload(alice, room, "after"))
    assert (await b.next_chat())["message"]["id"] == ack["id"]


# -- leaveRoom ----------------------------------------------------------------------------


async def test_leave_room_stops_delivery(joined) -> None:
    alice, bob, room, a, b = joined
    assert await b.call("leaveRoom", {"chatroomId": room}) == {"chatroomId": room}
    missed = await a.call("sendMessage", send_payload(alice, room, "while bob is away"))
    # Broadcasts are queued before the sender's ack, so "missed" is already out when bob rejoins.
    await b.call("joinRoom", {"chatroomId": room, "userId": bob.id})
    seen = await events_until(b, lambda e: e == {"type": "joinRoom", "userId": bob.id})
    back = await a.call("sendMessage", send_payload(alice, room, "welcome back"))
    seen += await events_until(b, lambda e: e.get("type") == "sendMessage")
    chats = [e["message"]["id"] for e in seen if e.get("type") == "sendMessage"]
    assert chats == [back["id"]], (missed["id"], seen)


@pytest.mark.parametrize("payload", [None, {}, {"chatroomId": "x"}, [1]])
async def test_leave_room_bad_payload_is_400(sockets, pair, payload: Any) -> None:
    alice, _, _ = pair
    a = await sockets(alice.token)
    assert_ack_error(await a.call("leaveRoom", payload), 400)
    assert a.sio.connected


# -- transports ---------------------------------------------------------------------------


async def test_polling_and_websocket_clients_exchange_messages(sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token, transports=["polling"])
    b = await sockets(bob.token, transports=["websocket"])
    assert a.sio.transport() == "polling" and b.sio.transport() == "websocket"
    await a.join(alice, room)
    await b.join(bob, room)
    from_a = await a.call("sendMessage", send_payload(alice, room, "over polling"))
    from_b = await b.call("sendMessage", send_payload(bob, room, "over websocket"))
    for client in (a, b):
        got = [(await client.next_chat())["message"]["id"] for _ in range(2)]
        assert got == [from_a["id"], from_b["id"]]


async def test_polling_client_disconnects_promptly(sockets, pair) -> None:
    alice, _, _ = pair
    a = await sockets(alice.token, transports=["polling"])
    async with asyncio.timeout(EVENT_TIMEOUT):
        await a.disconnect()


# -- trust-client mode ------------------------------------------------------------------------


@pytest.fixture
async def trusting(config: Config) -> AsyncIterator[tuple[Api, str]]:
    async with serve(config.with_changes(socket_auth="trust-client")) as api:
        yield api, api.base_url


async def test_trust_client_accepts_sockets_without_token_and_trusts_the_payload(trusting) -> None:
    api, base_url = trusting
    alice = await api.new_user()
    bob = await api.new_user()
    room = await api.one_to_one(alice, bob)
    a = await connect_socket(base_url)
    b = await connect_socket(base_url, transports=["polling"])
    try:
        await a.join(alice, room)
        await b.join(bob, room)
        ack = await a.call("sendMessage", send_payload(alice, room, "from alice"))
        assert ack["senderId"] == alice.id
        assert (await b.next_chat())["message"]["id"] == ack["id"]
        # Nothing binds the socket to one user: that is why the mode is insecure.
        ack = await a.call("sendMessage", send_payload(bob, room, "claimed bob"))
        assert ack["senderId"] == bob.id
    finally:
        await a.disconnect()
        await b.disconnect()
    assert [m["content"] for m in await api.history(alice, room)] == ["from alice", "claimed bob"]


async def test_trust_client_still_checks_membership_and_needs_a_user(trusting) -> None:
    api, base_url = trusting
    alice = await api.new_user()
    bob = await api.new_user()
    carol = await api.new_user()
    room = await api.one_to_one(alice, bob)
    c = await connect_socket(base_url)
    try:
        assert_ack_error(await c.call("joinRoom", {"chatroomId": room, "userId": carol.id}), 403)
        assert_ack_error(await c.call("sendMessage", send_payload(carol, room, "intruder")), 403)
        assert_ack_error(await c.call("joinRoom", {"chatroomId": room}), 400)
        assert_ack_error(await c.call("sendMessage", send_payload(None, room, "who?")), 400)
    finally:
        await c.disconnect()
    assert [m["content"] for m in await api.history(alice, room)] == []


async def test_trust_client_socket_with_a_token_is_bound_to_it(trusting) -> None:
    api, base_url = trusting
    alice = await api.new_user()
    bob = await api.new_user()
    room = await api.one_to_one(alice, bob)
    with pytest.raises(socketio.exceptions.ConnectionError, match="Invalid token"):
        await connect_socket(base_url, "garbage")
    a = await connect_socket(base_url, alice.token)
    try:
        assert_ack_error(await a.call("sendMessage", send_payload(bob, room, "spoofed")), 403)
    finally:
        await a.disconnect()


def test_trust_client_mode_from_the_environment() -> None:
    assert Config.from_env({}).socket_auth == "token"
    assert Config.from_env({"CHATSVC_SOCKET_AUTH": "trust-client"}).socket_auth == "trust-client"
    with pytest.raises(ValueError, match="CHATSVC_SOCKET_AUTH"):
        Config.from_env({"CHATSVC_SOCKET_AUTH": "none"})


# -- shutdown ----------------------------------------------------------------------------------


async def test_server_closes_with_an_abandoned_polling_session(config: Config) -> None:
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        # A long-polling handshake whose client never polls again (a closed tab, a lost network).
        url = server.make_url("/socket.io/").with_query(EIO="4", transport="polling")
        async with session.get(url) as resp:
            assert resp.status == 200
    async with asyncio.timeout(10):
        await server.close()
