"""markRead and typing taken as their WebSocket frame is read (ChatSocketServer.handle_inline), with real clients.

Each test checks the answer a client sees and, through ``chatsvc_socket_events_inline_total``, which path
answered: an event of the shapes taken inline must be taken there (or the per-event cost comes back, see
docs/performance.md "Read positions and typing"), and every other shape must still get python-socketio's answer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.helpers import EVENT_TIMEOUT, Api, HandFramedSocket, assert_ack_error, raw_connect
from tests.test_receipts import fence, is_read, is_typing, receipts
from tests.test_send_queue import metric

pytestmark = pytest.mark.both_engines

INLINE = "chatsvc_socket_events_inline_total"


async def test_an_acked_mark_read_is_taken_inline_and_acked_with_the_stored_position(joined, sockets, api) -> None:
    alice, bob, room, a, b = joined
    elsewhere = await sockets(alice.token)
    sent = [await b.send(bob, room, f"m{i}") for i in range(3)]
    before = await metric(api, INLINE)
    ack = await a.call("markRead", {"chatroomId": room, "messageId": sent[1]["id"]})
    assert ack == {"chatroomId": room, "lastReadId": sent[1]["id"]}
    assert await metric(api, INLINE) == before + 1
    notice = {"type": "read", "chatroomId": room, "userId": alice.id, "lastReadId": sent[1]["id"]}
    assert await b.next_message(is_read) == notice
    assert await elsewhere.next_message(is_read) == notice
    assert (await receipts(api, bob, room))[alice.id] == sent[1]["id"]
    # Past the newest message: the newest; backwards: where it is.
    assert await a.call("markRead", {"chatroomId": room, "messageId": sent[-1]["id"] + 100}) == {
        "chatroomId": room,
        "lastReadId": sent[-1]["id"],
    }
    assert await a.call("markRead", {"chatroomId": room, "messageId": sent[0]["id"]}) == {
        "chatroomId": room,
        "lastReadId": sent[-1]["id"],
    }
    assert await metric(api, INLINE) == before + 3


async def test_marks_without_an_ack_are_stored_and_announced_and_never_go_backwards(joined, api) -> None:
    alice, bob, room, a, b = joined
    sent = [await b.send(bob, room, f"m{i}") for i in range(5)]
    before = await metric(api, INLINE)
    # Out of order and without acks: they may be stored together; the furthest counts.
    for message in (sent[3], sent[1], sent[2]):
        await a.emit("markRead", {"chatroomId": room, "messageId": message["id"]})
    notice = await b.next_message(is_read)
    assert notice["userId"] == alice.id and notice["lastReadId"] in {sent[3]["id"], sent[2]["id"], sent[1]["id"]}
    # An acked mark behind them is stored after them: it answers with the furthest.
    ack = await a.call("markRead", {"chatroomId": room, "messageId": sent[0]["id"]})
    assert ack == {"chatroomId": room, "lastReadId": sent[3]["id"]}
    assert (await receipts(api, bob, room))[alice.id] == sent[3]["id"]
    assert await metric(api, INLINE) == before + 4
    assert a.exceptions.empty()


@pytest.mark.parametrize(
    ("event", "payload", "text"),
    [
        ("markRead", {"chatroomId": "ROOM", "messageId": "x"}, "messageId"),
        ("markRead", {"chatroomId": "ROOM"}, "messageId is required"),
        ("markRead", [1, 2], "payload"),
        ("markRead", "just text", "payload"),
        ("typing", {"chatroomId": "ROOM", "typing": "yes"}, "typing"),
        ("typing", {"chatroomId": "ROOM"}, "typing is required"),
    ],
)
async def test_bad_payloads_taken_inline_get_a_400_ack_or_exception_and_the_socket_stays(
    joined, api, event: str, payload: Any, text: str
) -> None:
    _alice, _bob, room, a, _b = joined
    if isinstance(payload, dict):
        payload = {key: room if value == "ROOM" else value for key, value in payload.items()}
    before = await metric(api, INLINE)
    ack = await a.call(event, payload)
    assert_ack_error(ack, 400)
    assert text in ack["message"], ack
    # Without an ack id the same refusal comes as an ``exception`` event.
    await a.emit(event, payload)
    refused = await asyncio.wait_for(a.exceptions.get(), EVENT_TIMEOUT)
    assert refused == {"status": "error", "message": ack["message"]}
    assert await metric(api, INLINE) == before + 2
    assert a.sio.connected
    assert await a.call("typing", {"chatroomId": room, "typing": False}) == {}


async def test_outsiders_are_refused_inline_with_403_and_nothing_is_stored_or_announced(
    joined, sockets, api: Api, db_rows
) -> None:
    alice, bob, room, a, b = joined
    sent = await a.send(alice, room, "private")  # the room's members are cached from here on
    mallory = await api.new_user()
    m = await sockets(mallory.token)
    rows = db_rows("SELECT user_id, chatroom_id, last_read_id FROM user_chatroom ORDER BY 1, 2")
    before = await metric(api, INLINE)
    assert_ack_error(await m.call("markRead", {"chatroomId": room, "messageId": sent["id"]}), 403)
    assert_ack_error(await m.call("typing", {"chatroomId": room, "typing": True}), 403)
    assert_ack_error(await m.call("markRead", {"chatroomId": room, "messageId": sent["id"], "userId": bob.id}), 403)
    await m.emit("markRead", {"chatroomId": room, "messageId": sent["id"]})
    refused = await asyncio.wait_for(m.exceptions.get(), EVENT_TIMEOUT)
    assert refused == {"status": "error", "message": "You are not a member of this chatroom"}
    assert await metric(api, INLINE) == before + 4
    assert db_rows("SELECT user_id, chatroom_id, last_read_id FROM user_chatroom ORDER BY 1, 2") == rows
    (seen_by_b,) = await fence(a, alice, room, b)
    assert [event for event in seen_by_b if is_read(event) or is_typing(event)] == []
    assert m.sio.connected


async def test_typing_taken_inline_acks_an_empty_object_and_tells_the_others(joined, api) -> None:
    alice, _bob, room, a, b = joined
    before = await metric(api, INLINE)
    assert await a.call("typing", {"chatroomId": room, "typing": True}) == {}
    assert await b.next_message(is_typing) == {"type": "typing", "chatroomId": room, "userId": alice.id, "typing": True}
    await a.emit("typing", {"chatroomId": room, "typing": False})
    assert await b.next_message(is_typing) == {
        "type": "typing",
        "chatroomId": room,
        "userId": alice.id,
        "typing": False,
    }
    assert await metric(api, INLINE) == before + 2


async def test_a_mark_in_a_room_not_cached_yet_takes_the_full_path_with_the_same_answer(
    api: Api, sockets, pair
) -> None:
    alice, _bob, room = pair
    # Nobody has joined or sent: the room's members are not in the server's cache.
    a = await sockets(alice.token)
    before = await metric(api, INLINE)
    assert await a.call("markRead", {"chatroomId": room, "messageId": 1}) == {"chatroomId": room, "lastReadId": 0}
    assert await metric(api, INLINE) == before
    # That answer loaded them: the next is taken inline.
    assert await a.call("markRead", {"chatroomId": room, "messageId": 1}) == {"chatroomId": room, "lastReadId": 0}
    assert await metric(api, INLINE) == before + 1


async def test_a_binary_mark_read_takes_the_full_path_and_gets_a_400(joined, api) -> None:
    _alice, _bob, room, a, _b = joined
    before = await metric(api, INLINE)
    ack = await a.call("markRead", {"chatroomId": room, "messageId": b"\x01"})
    assert_ack_error(ack, 400)
    assert "messageId" in ack["message"], ack
    assert await metric(api, INLINE) == before
    assert a.sio.connected


async def raw_ack(hand: HandFramedSocket, ack_id: str) -> Any:
    """The argument of the ack with this id, skipping the events and other acks before it."""
    prefix = "43" + ack_id + "["
    while True:
        frame = await hand.frame()
        if frame.startswith(prefix):
            return json.loads(frame[len(prefix) - 1 :])[0]


async def test_packet_shapes_not_taken_inline_get_python_socketios_answer_and_the_socket_stays(
    api: Api, joined
) -> None:
    alice, bob, room, _a, b = joined
    sent = await b.send(bob, room, "x")
    mark = json.dumps({"chatroomId": room, "messageId": sent["id"]})
    async with aiohttp.ClientSession() as session:
        ws = await raw_connect(session, api.base_url, alice)
        hand = HandFramedSocket(ws)
        before = await metric(api, INLINE)
        # Another namespace, which this socket never connected to: python-socketio drops it unanswered.
        await ws.send_str(f'42/elsewhere,7["markRead",{mark}]')
        # An ack id longer than taken inline: python-socketio answers it.
        long_id = "1234567890123456"
        await ws.send_str(f'42{long_id}["markRead",{mark}]')
        assert await raw_ack(hand, long_id) == {"chatroomId": room, "lastReadId": sent["id"]}
        # A second argument: python-socketio hands both to the handler, which takes one; the server logs it.
        await ws.send_str(f'428["markRead",{mark},"more"]')
        # Broken JSON: logged as a malformed packet, nothing answered.
        await ws.send_str('429["markRead",{')
        # A binary event whose attachment comes as a text frame: python-socketio takes the frame as the
        # attachment, not as an event of its own; the mark gets a 400 (its messageId is that text).
        await ws.send_str(f'451-3["markRead",{{"chatroomId":{room},"messageId":{{"_placeholder":true,"num":0}}}}]')
        await ws.send_str(f'424["markRead",{mark}]')
        assert_ack_error(await raw_ack(hand, "3"), 400)
        # Through all of it the socket stayed, and a plain mark is still taken inline.
        await ws.send_str(f'425["markRead",{mark}]')
        assert await raw_ack(hand, "5") == {"chatroomId": room, "lastReadId": sent["id"]}
        assert await metric(api, INLINE) == before + 1
        await ws.close()
