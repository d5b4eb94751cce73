"""Incoming frames read and handled in one pass: sendMessage below python-socketio's dispatch, several frames per read.

``sendMessage`` of the plain shape, over a WebSocket, is taken as its frame is read
(ChatSocketServer.handle_inline), as ``markRead`` and ``typing`` are (tests/test_receipts_inline.py). Each test
checks what a client sees: the same answers as python-socketio's path (a long-polling client always takes that
one), frames that share one TCP write all answered in their order, and a client's sends stored in the order it
sent them whichever path takes each; ``chatsvc_socket_events_inline_total`` tells which path answered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsvc.errors import BadRequest
from chatsvc.jsonutil import SocketJSON
from chatsvc.models import send_message_model, validate, validate_json
from tests.conftest import make_config
from tests.helpers import EVENT_TIMEOUT, Api, assert_ack_error, connect_socket, send_payload, serve
from tests.test_hostile_input import SETTINGS, json_values
from tests.test_send_queue import metric
from tests.test_websocket_transport import masked_frame, read_frame, websocket_by_hand

pytestmark = pytest.mark.both_engines

INLINE = "chatsvc_socket_events_inline_total"


async def history_ids(api: Api, user: Any, room: int) -> list[int]:
    """The ids of a room's messages, oldest first."""
    resp = await api.request("GET", "/chat-history/list", token=user.token, params={"chatroomId": room})
    assert resp.status == 200, resp.body
    return sorted(message["id"] for message in resp.body)


async def test_a_send_over_websocket_is_taken_inline_stored_broadcast_and_acked(joined, api: Api) -> None:
    alice, bob, room, a, b = joined
    before = await metric(api, INLINE)
    ack = await a.call("sendMessage", send_payload(alice, room, "hello", clientMsgId="c-1"))
    assert await metric(api, INLINE) == before + 1
    assert ack["content"] == "hello" and ack["chatroomId"] == room and ack["senderId"] == alice.id
    assert ack["clientMsgId"] == "c-1" and ack["sender"]["id"] == alice.id
    delivered = await b.next_chat()
    assert delivered["message"] == ack
    assert await history_ids(api, bob, room) == [ack["id"]]
    # A retry with the same clientMsgId answers the original, stores and broadcasts nothing.
    again = await a.call("sendMessage", send_payload(alice, room, "hello", clientMsgId="c-1"))
    assert again == ack
    assert await history_ids(api, bob, room) == [ack["id"]]
    # Without sendUserId, the token's user sends.
    own = await a.call("sendMessage", send_payload(None, room, "mine"))
    assert own["senderId"] == alice.id
    assert await metric(api, INLINE) == before + 3


# Payload changes with the answer python-socketio's path gives (the texts are the API's).
REFUSED = [
    ({"chatroomId": "x"}, 400),
    ({"message": {"type": "gif", "content": "x"}}, 400),
    ({"message": {"type": "text", "content": " "}}, 400),
    ({"message": {"type": "text", "content": "x" * 501}}, 400),
    ({"message": None}, 400),
    ({"clientMsgId": ""}, 400),
    ({"sendUserId": "OTHER"}, 403),
    ({"chatroomId": "FOREIGN"}, 403),
]


async def test_inline_refusals_are_the_full_paths_answers_and_change_nothing(
    api: Api, joined, sockets, db_rows
) -> None:
    alice, bob, room, a, b = joined
    carol, dave = await api.new_user(), await api.new_user()
    foreign = await api.one_to_one(carol, dave)
    polling = await sockets(alice.token, transports=["polling"])  # python-socketio's dispatch, always
    # Both rooms' members are cached from here on: every send below is taken inline.
    await a.send(alice, room, "warm")
    await (await sockets(carol.token)).send(carol, foreign, "warm too")
    await b.next_chat()
    rows = db_rows("SELECT id FROM chat_history ORDER BY id")
    before = await metric(api, INLINE)
    for change, status in REFUSED:
        payload = send_payload(alice, room, "x")
        for key, value in change.items():
            payload[key] = {"OTHER": bob.id, "FOREIGN": foreign}.get(value, value) if isinstance(value, str) else value
        inline = await a.call("sendMessage", payload)
        assert_ack_error(inline, status)
        assert inline == await polling.call("sendMessage", payload), change
        # Without an ack id the same refusal comes as an ``exception`` event.
        await a.emit("sendMessage", payload)
        refused = await asyncio.wait_for(a.exceptions.get(), EVENT_TIMEOUT)
        assert refused == {"status": "error", "message": inline["message"]}
    assert_ack_error(await a.call("sendMessage", "just text"), 400)
    assert await metric(api, INLINE) == before + 2 * len(REFUSED) + 1
    assert db_rows("SELECT id FROM chat_history ORDER BY id") == rows
    assert [event for event in b.drain() if event.get("type") == "sendMessage"] == []
    assert a.sio.connected


async def test_an_outsider_is_refused_inline_with_the_same_403_as_the_full_path(api: Api, joined, sockets) -> None:
    alice, _bob, room, a, _b = joined
    cached = await a.send(alice, room, "cached")
    mallory = await api.new_user()
    m_ws = await sockets(mallory.token)
    m_polling = await sockets(mallory.token, transports=["polling"])
    before = await metric(api, INLINE)
    inline = await m_ws.call("sendMessage", send_payload(mallory, room, "let me in"))
    assert_ack_error(inline, 403)
    assert inline == await m_polling.call("sendMessage", send_payload(mallory, room, "let me in"))
    assert await metric(api, INLINE) == before + 1
    assert await history_ids(api, alice, room) == [cached["id"]]


async def test_a_send_to_a_room_not_cached_takes_the_full_path_then_the_next_is_inline(api: Api, pair, sockets) -> None:
    alice, _bob, room = pair
    a = await sockets(alice.token)  # nobody joined or sent: the room's members are not cached
    before = await metric(api, INLINE)
    first = await a.send(alice, room, "first")
    assert await metric(api, INLINE) == before
    second = await a.send(alice, room, "second")
    assert await metric(api, INLINE) == before + 1
    assert second["id"] > first["id"]


async def test_the_send_rate_limit_holds_inline(tmp_path: Path) -> None:
    # Refills too slowly to matter during the test.
    async with serve(make_config(tmp_path / "limited", rate_limit=0.001, rate_burst=3)) as limited:
        alice, bob = await limited.new_user(), await limited.new_user()
        room = await limited.one_to_one(alice, bob)
        a = await connect_socket(limited.base_url, alice.token)
        try:
            await a.join(alice, room)  # one token; the room's members are cached from here on
            before = await metric(limited, INLINE)
            answers = [await a.call("sendMessage", send_payload(alice, room, f"m{i}")) for i in range(3)]
            assert all("id" in answer for answer in answers[:2]), answers
            assert_ack_error(answers[2], 429)
            assert answers[2]["message"] == "Sending too fast: slow down"
            await a.emit("sendMessage", send_payload(alice, room, "more"))
            refused = await asyncio.wait_for(a.exceptions.get(), EVENT_TIMEOUT)
            assert refused == {"status": "error", "message": "Sending too fast: slow down"}
            assert await metric(limited, INLINE) == before + 4
            assert len(await history_ids(limited, alice, room)) == 2
        finally:
            await a.disconnect()


def event_frame(ack_id: int | None, event: str, payload: Any) -> bytes:
    """A masked WebSocket frame carrying a Socket.IO event of the default namespace."""
    text = "42" + ("" if ack_id is None else str(ack_id)) + json.dumps([event, payload])
    return masked_frame(0x1, text.encode())


async def next_ack(reader: asyncio.StreamReader, acks: dict[int, Any], events: list[Any]) -> None:
    """Read one frame: an ack goes into ``acks`` by id, an event into ``events``; pings are not sent this soon."""
    opcode, payload = await read_frame(reader)
    assert opcode == 0x1, (opcode, payload)
    text = payload.decode()
    if text.startswith("43"):
        digits = text[2 : text.index("[")]
        acks[int(digits)] = json.loads(text[2 + len(digits) :])[0]
    elif text.startswith("42"):
        events.append(json.loads(text[2:]))


@asynccontextmanager
async def connected_by_hand(
    base_url: str, user: Any, room: int
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A hand-framed WebSocket connected as ``user`` and joined to ``room``: its reader and writer."""
    async with websocket_by_hand(base_url) as (reader, writer):
        writer.write(masked_frame(0x1, ("40" + json.dumps({"token": user.token})).encode()))
        _opcode, connected = await read_frame(reader)
        assert connected.startswith(b"40{"), connected
        writer.write(event_frame(0, "joinRoom", {"chatroomId": room}))
        acks: dict[int, Any] = {}
        while 0 not in acks:
            await next_ack(reader, acks, [])
        assert acks[0] == {"chatroomId": room}
        yield reader, writer


async def test_frames_in_one_tcp_write_are_all_answered_and_sends_stored_in_their_order(
    base_url: str, api: Api, joined
) -> None:
    alice, _bob, room, _a, b = joined
    async with connected_by_hand(base_url, alice, room) as (reader, writer):
        before = await metric(api, INLINE)
        frames = [
            event_frame(1, "typing", {"chatroomId": room, "typing": True}),
            event_frame(2, "sendMessage", send_payload(None, room, "one")),
            event_frame(3, "sendMessage", send_payload(None, room, "two")),
            event_frame(4, "markRead", {"chatroomId": room, "messageId": 1}),
            event_frame(5, "sendMessage", {"chatroomId": room}),  # refused: no message
            event_frame(6, "sendMessage", send_payload(None, room, "three")),
            event_frame(7, "typing", {"chatroomId": room, "typing": False}),
        ]
        writer.write(b"".join(frames))  # one write: the server reads them in one chunk (or a few)
        acks: dict[int, Any] = {}
        while len(acks) < len(frames):
            await next_ack(reader, acks, [])
        assert acks[1] == {} and acks[7] == {}
        assert_ack_error(acks[5], 400)
        sent = [acks[2], acks[3], acks[6]]
        assert [message["content"] for message in sent] == ["one", "two", "three"]
        assert sent[0]["id"] < sent[1]["id"] < sent[2]["id"]
        assert acks[4]["chatroomId"] == room
        # The typing and the first send were taken as read; the second send, read while the first waits for its
        # ack, took python-socketio's path (which handles a socket's sends one at a time), and the frames after it
        # followed it there, in turn.
        assert await metric(api, INLINE) == before + 2
        assert [(await b.next_chat())["message"]["id"] for _ in sent] == [message["id"] for message in sent]


async def test_a_frame_split_across_reads_and_one_sharing_its_last_read_are_both_answered(
    base_url: str, joined
) -> None:
    alice, _bob, room, _a, b = joined
    async with connected_by_hand(base_url, alice, room) as (reader, writer):
        first = event_frame(1, "sendMessage", send_payload(None, room, "split " + "x" * 300))
        second = event_frame(2, "sendMessage", send_payload(None, room, "after"))
        for part in (first[:1], first[1:3], first[3:40]):
            writer.write(part)
            await writer.drain()
        writer.write(first[40:] + second)
        acks: dict[int, Any] = {}
        while len(acks) < 2:
            await next_ack(reader, acks, [])
        assert acks[1]["content"].startswith("split ") and acks[2]["content"] == "after"
        assert acks[1]["id"] < acks[2]["id"]
        assert (await b.next_chat())["message"]["id"] == acks[1]["id"]


async def test_frames_before_a_broken_one_in_the_same_write_are_answered_then_the_connection_closes(
    base_url: str, joined
) -> None:
    alice, _bob, room, _a, b = joined
    async with connected_by_hand(base_url, alice, room) as (reader, writer):
        writer.write(event_frame(1, "sendMessage", send_payload(None, room, "kept")) + masked_frame(0x1, b"42\xff\xfe"))
        frames = []
        while True:
            opcode, payload = await read_frame(reader)
            frames.append((opcode, payload))
            if opcode == 0x8:
                break
        assert frames[-1] == (0x8, (1007).to_bytes(2, "big"))  # text that is not UTF-8
        # The send before it was accepted, stored and broadcast (its ack may or may not have left first).
        assert (await b.next_chat())["message"]["content"] == "kept"


async def test_a_clients_sends_are_stored_in_its_order_when_some_take_the_full_path(
    base_url: str, api: Api, joined
) -> None:
    alice, bob, room, _a, _b = joined
    async with connected_by_hand(base_url, alice, room) as (reader, writer):
        # A 16-digit ack id is past what is taken inline: those sends go through python-socketio's dispatch,
        # a task each; the others are taken as read. Each frame is its own write, as a client sends them.
        # 30 sends and the join stay within the default burst of the send rate limit (40).
        count = 30
        long_base = 10**15
        ack_ids = [long_base + i if i % 2 else i + 1 for i in range(count)]
        for index, ack_id in enumerate(ack_ids):
            writer.write(event_frame(ack_id, "sendMessage", send_payload(None, room, f"n{index}")))
            if index % 4 == 3:
                await writer.drain()
        acks: dict[int, Any] = {}
        while len(acks) < len(ack_ids):
            await next_ack(reader, acks, [])
        assert [acks[ack_id].get("content") for ack_id in ack_ids] == [f"n{i}" for i in range(count)], acks
        ids = [acks[ack_id]["id"] for ack_id in ack_ids]
        assert ids == sorted(ids), "a later send was stored before an earlier one"
        assert await history_ids(api, bob, room) == ids


async def test_a_send_read_while_an_earlier_one_waits_in_python_socketios_path_is_handled_after_it(
    server, base_url: str, api: Api, joined
) -> None:
    alice, _bob, room, _a, _b = joined  # room's members are cached
    carol = await api.new_user()
    other = await api.one_to_one(alice, carol)  # nobody has used it: its members are not cached
    eio = server.state.sio.eio
    others = set(eio.connections)
    async with connected_by_hand(base_url, alice, room) as (reader, _writer):
        (session,) = set(eio.connections) - others  # this connection, as the server reads it
        # As if the kernel handed over two reads, one loop turn apart. The first send takes python-socketio's
        # path, which handles a socket's packets one after the other and waits here for the members of `other`
        # to load; the second read comes meanwhile. Taken inline there and then, it would be stored first.
        session.data_received(event_frame(1, "sendMessage", send_payload(None, other, "earlier")))
        asyncio.get_running_loop().call_soon(
            session.data_received, event_frame(2, "sendMessage", send_payload(None, room, "later"))
        )
        acks: dict[int, Any] = {}
        while len(acks) < 2:
            await next_ack(reader, acks, [])
        assert acks[1]["content"] == "earlier" and acks[2]["content"] == "later"
        assert acks[1]["id"] < acks[2]["id"], "the later send was stored first"


payload_texts = st.one_of(
    json_values.map(SocketJSON.dumps),
    st.fixed_dictionaries(
        {
            "chatroomId": json_values | st.integers(),
            "message": json_values
            | st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["text", "image", "file", "gif"]) | json_values,
                    "content": st.text(max_size=8),
                }
            ),
        },
        optional={"clientMsgId": json_values | st.text(max_size=70), "sendUserId": json_values | st.integers()},
    ).map(SocketJSON.dumps),
    st.text(max_size=30),
)


@given(text=payload_texts)
@SETTINGS
def test_validate_json_answers_what_validate_of_the_decoded_json_answers(text: str) -> None:
    model = send_message_model(500)
    try:
        expected: Any = validate(model, SocketJSON.loads(text))
    except BadRequest as exc:
        expected = ("refused", exc.message)
    except ValueError:  # not JSON: the inline path declines, python-socketio's logs it
        expected = None
    try:
        got: Any = validate_json(model, text, SocketJSON.loads)
    except BadRequest as exc:
        got = ("refused", exc.message)
    assert got == expected
