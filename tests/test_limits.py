"""Per-connection event rate, connections per user, and the event names a client may not use."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
import socketio

from chatsvc.config import Config
from chatsvc.realtime.events import RECOVERY_MESSAGES_PER_TOKEN, RESERVED_EVENTS
from chatsvc.testing import run_chatsvc
from tests.conftest import make_config
from tests.helpers import (
    EVENT_TIMEOUT,
    Api,
    assert_ack_error,
    assert_error,
    close_engineio_session,
    engineio_handshake,
    send_payload,
    session_id,
)

SIDECAR_KEY = "test-limits-key"
ORIGIN = "http://app.example"


@pytest.fixture
def config(tmp_path) -> Config:
    # A bucket that does not refill within a test: burst 3, then refused.
    return make_config(tmp_path, rate_limit=0.001, rate_burst=3, max_connections_per_user=2)


async def test_limits_send_rate_over_burst_gets_429_ack_and_socket_stays(api: Api, sockets, pair) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    payload = send_payload(alice, room)
    for _ in range(3):
        assert "id" in await a.call("sendMessage", payload)
    assert_ack_error(await a.call("sendMessage", payload), 429)
    assert a.sio.connected
    # Another connection has its own bucket.
    other = await sockets(alice.token)
    assert "id" in await other.call("sendMessage", payload)
    history = await api.get("/chat-history/list", alice.token, chatroomId=room)
    assert len(history.body) == 4


async def test_limits_client_sent_connect_event_does_not_reset_the_send_allowance(api: Api, sockets, pair) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    for _ in range(3):
        assert "id" in await a.call("sendMessage", send_payload(alice, room))
    assert_ack_error(await a.call("sendMessage", send_payload(alice, room)), 429)
    # Shaped like python-socketio's own connect call (environ, auth): it must not reach on_connect.
    assert_ack_error(await a.call("connect", ({}, {"token": alice.token})), 400)
    assert_ack_error(await a.call("sendMessage", send_payload(alice, room)), 429)
    assert a.sio.connected
    history = await api.get("/chat-history/list", alice.token, chatroomId=room)
    assert len(history.body) == 3


async def test_limits_client_sent_disconnect_event_does_not_free_a_connection_slot(api: Api, sockets, pair) -> None:
    alice, _, room = pair
    first = await sockets(alice.token)
    await sockets(alice.token)
    assert_ack_error(await first.call("disconnect", "client namespace disconnect"), 400)
    await first.emit("disconnect", None)  # without an ack too
    assert (await first.exceptions.get())["status"] == "error"
    with pytest.raises(socketio.exceptions.ConnectionError, match="Too many connections"):
        await sockets(alice.token)
    # The socket that sent it is still connected and served as before.
    assert "id" in await first.call("sendMessage", send_payload(alice, room))


@pytest.mark.parametrize("event", sorted(RESERVED_EVENTS))
async def test_limits_reserved_event_names_from_a_client_get_a_400_and_reach_no_handler(
    api: Api, sockets, event: str, pair
) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    ack = await a.call(event, {"chatroomId": room})
    assert_ack_error(ack, 400)
    assert event in ack["message"]
    assert "id" in await a.call("sendMessage", send_payload(alice, room))


async def test_limits_join_room_spends_the_same_allowance_as_sends(api: Api, sockets, pair) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    for _ in range(2):
        assert await a.call("joinRoom", {"chatroomId": room}) == {"chatroomId": room}
    assert "id" in await a.call("sendMessage", send_payload(alice, room))
    assert_ack_error(await a.call("joinRoom", {"chatroomId": room}), 429)
    assert_ack_error(await a.call("sendMessage", send_payload(alice, room)), 429)
    assert a.sio.connected


async def test_limits_recovery_costs_in_proportion_to_what_it_replays(tmp_path: Path) -> None:
    burst = 6
    replayed = 3 * RECOVERY_MESSAGES_PER_TOKEN
    config = make_config(tmp_path, rate_limit=0.001, rate_burst=burst, api_key=SIDECAR_KEY, recovery_limit=replayed)
    async with run_chatsvc(config) as running, aiohttp.ClientSession() as session:
        base_url = str(running.make_url("")).rstrip("/")
        api = Api(base_url, session)
        alice, bob = await api.new_user(), await api.new_user()
        room = await api.one_to_one(alice, bob)
        # Stored through the sidecar API, which no socket's allowance limits.
        posts = [
            api.request(
                "POST",
                f"/sidecar/v1/rooms/{room}/messages",
                json={"username": alice.username, "content": f"m{n}"},
                headers={"X-Api-Key": SIDECAR_KEY},
            )
            for n in range(replayed)
        ]
        assert {resp.status for resp in await asyncio.gather(*posts)} == {201}
        b = await running.connect(bob.token)
        ack = await b.call("joinRoom", {"chatroomId": room, "lastMessageId": 0}, timeout=EVENT_TIMEOUT)
        assert ack == {"chatroomId": room, "recovered": True, "count": replayed}
        # The join cost 1 + 150/50 = 4 of 6: one more event each is left, then 429.
        left = burst - 1 - replayed // RECOVERY_MESSAGES_PER_TOKEN
        for _ in range(left):
            assert "id" in await b.call("sendMessage", send_payload(bob, room), timeout=EVENT_TIMEOUT)
        assert_ack_error(await b.call("sendMessage", send_payload(bob, room), timeout=EVENT_TIMEOUT), 429)


async def test_limits_connections_per_user_are_capped(api: Api, sockets) -> None:
    alice = await api.new_user()
    first = await sockets(alice.token)
    await sockets(alice.token)
    with pytest.raises(socketio.exceptions.ConnectionError, match="Too many connections"):
        await sockets(alice.token)
    await first.disconnect()
    await sockets(alice.token)


async def test_limits_http_body_over_the_limit_is_413_json(api: Api) -> None:
    resp = await api.request(
        "POST",
        "/user/register",
        data=b'{"username": "' + b"x" * (1024 * 1024 + 10) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(resp.status, resp.body, 413)


async def test_limits_socket_packet_over_the_limit_closes_the_transport_and_stores_nothing(
    api: Api, sockets, config: Config, pair
) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    gone = asyncio.Event()
    a.sio.on("disconnect", lambda *_: gone.set())
    huge = "x" * (config.max_socket_payload + 1)
    await a.emit("sendMessage", send_payload(alice, room, huge))
    async with asyncio.timeout(5):
        await gone.wait()
    history = await api.get("/chat-history/list", alice.token, chatroomId=room)
    assert history.body == []


# -- sessions that never complete the Socket.IO connect -------------------------


async def open_sessions(api: Api, count: int) -> list[str]:
    """Open Engine.IO long-polling sessions without the Socket.IO connect; their ids."""
    handshakes = await asyncio.gather(*(engineio_handshake(api, ORIGIN) for _ in range(count)))
    assert [resp.status for resp in handshakes] == [200] * count, [r.body for r in handshakes if r.status != 200]
    return [session_id(resp) for resp in handshakes]


async def socketio_connect(api: Api, sid: str, token: str) -> None:
    """The Socket.IO connect on a long-polling session, as a client library sends it."""
    params = {"EIO": "4", "transport": "polling", "sid": sid}
    assert (
        await api.request("POST", "/socket.io/", params=params, data="40" + json.dumps({"token": token}))
    ).status == 200
    assert str((await api.request("GET", "/socket.io/", params=params)).body).startswith("40{")


async def test_limits_sessions_short_of_the_socketio_connect_are_bounded_per_address(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_pending_sessions_per_address=3, max_pending_sessions=100)
    async with run_chatsvc(config) as running, aiohttp.ClientSession() as session:
        api = Api(str(running.make_url("")).rstrip("/"), session)
        alice = await api.new_user()
        first, second, _ = await open_sessions(api, 3)
        refused = await engineio_handshake(api, ORIGIN)
        assert_error(refused.status, refused.body, 429)
        # A session that completes the Socket.IO connect no longer counts; nor does one that closes.
        await socketio_connect(api, first, alice.token)
        await open_sessions(api, 1)
        await close_engineio_session(api, second)
        await open_sessions(api, 1)
        again = await engineio_handshake(api, ORIGIN)
        assert_error(again.status, again.body, 429)


async def test_limits_sessions_short_of_the_socketio_connect_are_bounded_in_all(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_pending_sessions_per_address=0, max_pending_sessions=2)
    async with run_chatsvc(config) as running, aiohttp.ClientSession() as session:
        api = Api(str(running.make_url("")).rstrip("/"), session)
        alice = await api.new_user()
        first, _ = await open_sessions(api, 2)
        refused = await engineio_handshake(api, ORIGIN)
        assert_error(refused.status, refused.body, 503)
        await socketio_connect(api, first, alice.token)
        await open_sessions(api, 1)


async def test_limits_default_bound_lets_1000_clients_behind_one_address_connect_at_once(api: Api) -> None:
    await open_sessions(api, 1000)
    metrics = str((await api.request("GET", "/metrics")).body)
    assert "chatsvc_pending_sessions 1000.0" in metrics
    refused = await engineio_handshake(api, ORIGIN)
    assert_error(refused.status, refused.body, 429)
    assert "chatsvc_handshakes_refused_total 1.0" in str((await api.request("GET", "/metrics")).body)


# -- slow request headers -------------------------------------------------------


async def test_limits_half_sent_request_headers_are_closed_after_the_header_timeout(tmp_path: Path) -> None:
    timeout = 1.0
    async with run_chatsvc(make_config(tmp_path, header_timeout=timeout)) as running:
        url = running.make_url("")
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(b"GET /healthz HT")  # half a request line, and nothing more
            await writer.drain()
            # The server closes the connection: end of stream, with no response.
            assert await asyncio.wait_for(reader.read(), timeout + EVENT_TIMEOUT) == b""
        finally:
            writer.close()


def test_limits_settings_from_the_environment() -> None:
    config = Config.from_env(
        {
            "CHATSVC_SOCKET_QUEUE_PACKETS": "2000",
            "CHATSVC_SOCKET_QUEUE_BYTES": "1048576",
            "CHATSVC_MAX_PENDING_SESSIONS": "0",
            "CHATSVC_MAX_PENDING_SESSIONS_PER_ADDRESS": "5000",
            "CHATSVC_HEADER_TIMEOUT": "30",
        }
    )
    assert (config.socket_queue_packets, config.socket_queue_bytes) == (2000, 1024 * 1024)
    assert (config.max_pending_sessions, config.max_pending_sessions_per_address) == (0, 5000)
    assert config.header_timeout == 30
    with pytest.raises(ValueError, match="CHATSVC_SOCKET_QUEUE_BYTES"):
        Config.from_env({"CHATSVC_SOCKET_QUEUE_BYTES": "1000"})
