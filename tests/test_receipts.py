"""Read positions, unread counts, last messages and typing notices (issue 15), with real clients."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsvc.config import Config
from chatsvc.store.reads import UNREAD_COUNT_CAP
from tests.conftest import make_config
from tests.helpers import (
    EVENT_TIMEOUT,
    Api,
    SocketClient,
    User,
    assert_ack_error,
    assert_error,
    connect_socket,
    send_payload,
    serve,
)
from tests.test_hostile_input import EXAMPLES, SETTINGS, drive, id_like, json_values, run_on_loop

pytestmark = pytest.mark.both_engines

API_KEY = "receipts-sidecar-key"
# Short enough that waiting for the server's own "stopped typing" costs the tests little.
TYPING_TIMEOUT = 0.3


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, typing_timeout=TYPING_TIMEOUT, api_key=API_KEY)


def is_read(event: dict[str, Any]) -> bool:
    return event.get("type") == "read"


def is_typing(event: dict[str, Any]) -> bool:
    return event.get("type") == "typing"


async def room_list(api: Api, user: User, **params: Any) -> list[dict[str, Any]]:
    resp = await api.get("/chatroom/list", user.token, **params)
    assert resp.status == 200, resp.body
    return list(resp.body)


async def listed(api: Api, user: User, room: int) -> dict[str, Any]:
    """The caller's /chatroom/list item of one room."""
    return next(item for item in await room_list(api, user) if item["id"] == room)


async def receipts(api: Api, user: User, room: int) -> dict[int, int]:
    resp = await api.get("/chatroom/read-receipts", user.token, chatroomId=room)
    assert resp.status == 200, resp.body
    return {item["userId"]: item["lastReadId"] for item in resp.body}


async def fence(sender: SocketClient, user: User, room: int, *receivers: SocketClient) -> list[list[dict[str, Any]]]:
    """Send a message and collect, per receiver, every event that came before it (order is per socket)."""
    sent = await sender.send(user, room, "fence")
    before: list[list[dict[str, Any]]] = []
    for receiver in receivers:
        seen: list[dict[str, Any]] = []
        while True:
            event = await receiver.next_message(timeout=EVENT_TIMEOUT)
            if event.get("type") == "sendMessage" and event["message"]["id"] == sent["id"]:
                break
            seen.append(event)
        before.append(seen)
    return before


# -- read positions ---------------------------------------------------------------------------------------------


async def test_mark_read_acks_the_position_and_tells_the_room_and_the_readers_other_sockets(
    joined, sockets, api: Api
) -> None:
    alice, bob, room, a, b = joined
    elsewhere = await sockets(alice.token)  # alice's other tab, not in the room
    sent = [await b.send(bob, room, f"m{i}") for i in range(3)]
    ack = await a.call("markRead", {"chatroomId": room, "messageId": sent[1]["id"]})
    assert ack == {"chatroomId": room, "lastReadId": sent[1]["id"]}
    notice = {"type": "read", "chatroomId": room, "userId": alice.id, "lastReadId": sent[1]["id"]}
    assert await b.next_message(is_read) == notice
    assert await elsewhere.next_message(is_read) == notice
    assert (await receipts(api, bob, room))[alice.id] == sent[1]["id"]


async def test_read_position_never_moves_backwards_nor_past_the_newest_message(joined, api: Api) -> None:
    alice, bob, room, a, b = joined
    sent = [await b.send(bob, room, f"m{i}") for i in range(3)]
    newest = sent[-1]["id"]
    assert (await a.call("markRead", {"chatroomId": room, "messageId": sent[1]["id"]}))["lastReadId"] == sent[1]["id"]
    # Backwards: the position stays.
    assert (await a.call("markRead", {"chatroomId": room, "messageId": sent[0]["id"]}))["lastReadId"] == sent[1]["id"]
    # Past the newest message: it stops at the newest.
    assert (await a.call("markRead", {"chatroomId": room, "messageId": newest + 1000}))["lastReadId"] == newest
    assert (await receipts(api, alice, room))[alice.id] == newest
    item = await listed(api, alice, room)
    assert (item["lastReadId"], item["unreadCount"]) == (newest, 0)


async def test_a_position_that_did_not_move_is_not_announced(joined) -> None:
    alice, bob, room, a, b = joined
    first = await b.send(bob, room, "one")
    await a.call("markRead", {"chatroomId": room, "messageId": first["id"]})
    assert (await b.next_message(is_read))["lastReadId"] == first["id"]
    await a.call("markRead", {"chatroomId": room, "messageId": first["id"]})
    (seen_by_b,) = await fence(a, alice, room, b)
    assert [event for event in seen_by_b if is_read(event)] == []


async def test_sending_a_message_moves_the_senders_read_position_to_it(joined, api: Api) -> None:
    alice, bob, room, a, b = joined
    received = await b.send(bob, room, "to alice")
    mine = await a.send(alice, room, "reply")
    positions = await receipts(api, alice, room)
    assert positions == {alice.id: mine["id"], bob.id: received["id"]}
    item = await listed(api, alice, room)
    assert (item["lastReadId"], item["unreadCount"]) == (mine["id"], 0)


async def test_room_list_counts_unread_messages_by_others_and_shows_the_newest(joined, api: Api, trio) -> None:
    alice, bob, room, a, b = joined
    sent = [await b.send(bob, room, f"m{i}") for i in range(3)]
    item = await listed(api, alice, room)
    assert item["lastReadId"] == 0
    assert item["unreadCount"] == 3
    last = item["lastMessage"]
    assert (last["id"], last["content"], last["senderId"]) == (sent[-1]["id"], "m2", bob.id)
    assert last["sender"]["id"] == bob.id and last["sender"]["username"] == bob.username
    await a.call("markRead", {"chatroomId": room, "messageId": sent[1]["id"]})
    item = await listed(api, alice, room)
    assert (item["lastReadId"], item["unreadCount"]) == (sent[1]["id"], 1)
    # Bob's own messages are never unread to him.
    assert (await listed(api, bob, room))["unreadCount"] == 0
    # A room without messages: nothing read, nothing unread, no last message.
    group = (await api.get("/chatroom/create-group", alice.token, name="quiet")).body
    item = await listed(api, alice, group)
    assert (item["lastReadId"], item["unreadCount"], item["lastMessage"]) == (0, 0, None)


async def test_each_rooms_newest_message_is_kept_on_its_row(joined, api: Api, db_rows) -> None:
    alice, bob, room, _, b = joined
    other = (await api.get("/chatroom/create-group", alice.token, name="other")).body

    def newest(chatroom: int) -> int:
        return int(db_rows("SELECT last_message_id FROM chatroom WHERE id = ?", (chatroom,))[0][0])

    assert (newest(room), newest(other)) == (0, 0)
    sent = [await b.send(bob, room, f"m{i}") for i in range(3)]
    assert (newest(room), newest(other)) == (sent[-1]["id"], 0)
    # One statement storing into two rooms (as a batch of the writer does) moves each room to its own newest.
    rows = [("x", 0, room, bob.id), ("y", 0, other, alice.id), ("z", 0, room, bob.id), ("w", 0, other, alice.id)]
    db_rows(
        "INSERT INTO chat_history (content, type, chatroom_id, sender_id) VALUES "
        + ", ".join(["(?, ?, ?, ?)"] * len(rows)),
        tuple(value for row in rows for value in row),
    )
    stored = db_rows("SELECT chatroom_id, max(id) FROM chat_history GROUP BY chatroom_id")
    assert {newest(room), newest(other)} == {int(high) for _, high in stored}
    assert (await listed(api, alice, other))["lastMessage"]["id"] == newest(other)
    # A deleted message keeps its place: it is still the room's newest, shown deleted.
    last = (await listed(api, alice, room))["lastMessage"]
    assert (await b.call("deleteMessage", {"messageId": last["id"]}))["id"] == last["id"]
    assert newest(room) == last["id"]
    item = await listed(api, alice, room)
    assert (item["lastMessage"]["id"], item["lastMessage"]["deleted"]) == (last["id"], True)


async def test_unread_count_stops_at_the_cap_and_is_exact_below_it(joined, api: Api, db_rows) -> None:
    alice, bob, room, a, _ = joined
    total = UNREAD_COUNT_CAP + 5
    db_rows(
        "INSERT INTO chat_history (content, type, chatroom_id, sender_id) VALUES "
        + ", ".join([f"('unread', 0, {int(room)}, {int(bob.id)})"] * total)
    )
    assert (await listed(api, alice, room))["unreadCount"] == UNREAD_COUNT_CAP
    ids = [int(row[0]) for row in db_rows("SELECT id FROM chat_history WHERE chatroom_id = ? ORDER BY id", (room,))]
    # Read up to the sixth: 999 left, counted exactly.
    await a.call("markRead", {"chatroomId": room, "messageId": ids[5]})
    assert (await listed(api, alice, room))["unreadCount"] == total - 6 == UNREAD_COUNT_CAP - 1


async def test_room_list_by_activity_puts_the_room_with_the_newest_message_first(api: Api, sockets, trio) -> None:
    alice, bob, carol = trio
    with_bob = await api.one_to_one(alice, bob)
    with_carol = await api.one_to_one(alice, carol)
    quiet = (await api.get("/chatroom/create-group", alice.token, name="quiet")).body
    b = await sockets(bob.token)
    c = await sockets(carol.token)
    await c.send(carol, with_carol, "older")
    await b.send(bob, with_bob, "newer")
    assert [item["id"] for item in await room_list(api, alice)] == [with_bob, with_carol, quiet]
    by_activity = [item["id"] for item in await room_list(api, alice, order="activity")]
    # The quiet room was made before either message, so it comes last.
    assert by_activity == [with_bob, with_carol, quiet]
    await c.send(carol, with_carol, "newest")
    assert [item["id"] for item in await room_list(api, alice, order="activity")] == [with_carol, with_bob, quiet]
    assert [item["id"] for item in await room_list(api, alice, order="activity", name="quiet")] == [quiet]
    bad = await api.get("/chatroom/list", alice.token, order="newest")
    assert_error(bad.status, bad.body, 400)
    assert "order" in bad.body["message"]


# -- authorization ----------------------------------------------------------------------------------------------


async def test_outsiders_cannot_mark_read_type_or_read_receipts_and_nothing_changes(
    joined, sockets, api: Api, db_rows
) -> None:
    alice, bob, room, a, b = joined
    sent = await a.send(alice, room, "private")
    mallory = await api.new_user()
    m = await sockets(mallory.token)
    before = db_rows("SELECT user_id, chatroom_id, last_read_id FROM user_chatroom ORDER BY 1, 2")
    assert_ack_error(await m.call("markRead", {"chatroomId": room, "messageId": sent["id"]}), 403)
    assert_ack_error(await m.call("typing", {"chatroomId": room, "typing": True}), 403)
    # Nor as somebody else.
    assert_ack_error(await m.call("markRead", {"chatroomId": room, "messageId": sent["id"], "userId": bob.id}), 403)
    assert_ack_error(await m.call("typing", {"chatroomId": room, "typing": True, "userId": bob.id}), 403)
    resp = await api.get("/chatroom/read-receipts", mallory.token, chatroomId=room)
    assert_error(resp.status, resp.body, 403)
    resp = await api.get("/chatroom/read-receipts", chatroomId=room)
    assert_error(resp.status, resp.body, 401)
    # A room that does not exist is refused the same way.
    assert_ack_error(await m.call("markRead", {"chatroomId": room + 1000, "messageId": 1}), 403)
    assert db_rows("SELECT user_id, chatroom_id, last_read_id FROM user_chatroom ORDER BY 1, 2") == before
    (seen_by_b,) = await fence(a, alice, room, b)
    assert [event for event in seen_by_b if is_read(event) or is_typing(event)] == []
    assert m.sio.connected


async def test_a_removed_member_can_no_longer_mark_read(api: Api, sockets, trio) -> None:
    alice, bob, _carol = trio
    group = (await api.get("/chatroom/create-group", alice.token, name="g")).body
    await api.get(f"/chatroom/join/{group}", alice.token, joinUsername=bob.username)
    b = await sockets(bob.token)
    sent = await b.send(bob, group, "hi")
    await api.get(f"/chatroom/quit/{group}", alice.token, quitUserId=bob.id)
    assert_ack_error(await b.call("markRead", {"chatroomId": group, "messageId": sent["id"]}), 403)
    resp = await api.get("/chatroom/read-receipts", bob.token, chatroomId=group)
    assert_error(resp.status, resp.body, 403)


async def test_mark_read_and_typing_take_tokens_from_an_allowance_of_their_own(tmp_path: Path) -> None:
    # Refills too slowly to matter during the test.
    config = make_config(tmp_path / "limited", rate_limit=0.001, rate_burst=2, receipt_rate=0.001, receipt_burst=3)
    async with serve(config) as limited:
        alice = await limited.new_user()
        bob = await limited.new_user()
        room = await limited.one_to_one(alice, bob)
        a = await connect_socket(limited.base_url, alice.token)
        try:
            # More than the sending burst: marks do not draw on it.
            acks = [await a.call("markRead", {"chatroomId": room, "messageId": 1}) for _ in range(3)]
            assert all("statusCode" not in ack for ack in acks), acks
            assert_ack_error(await a.call("markRead", {"chatroomId": room, "messageId": 1}), 429)
            assert_ack_error(await a.call("typing", {"chatroomId": room, "typing": True}), 429)
            await a.emit("markRead", {"chatroomId": room, "messageId": 1})
            refused = await asyncio.wait_for(a.exceptions.get(), EVENT_TIMEOUT)
            assert refused == {"status": "error", "message": "Marking read too fast: slow down"}
            # ...nor do sends draw on theirs.
            await a.send(alice, room, "one")
            await a.send(alice, room, "two")
            assert_ack_error(await a.call("sendMessage", send_payload(alice, room, "three")), 429)
            assert a.sio.connected
        finally:
            await a.disconnect()


@pytest.mark.parametrize(
    ("event", "payload", "text"),
    [
        ("markRead", {"messageId": 1}, "chatroomId is required"),
        ("markRead", {"chatroomId": 1}, "messageId is required"),
        ("markRead", {"chatroomId": 1, "messageId": "x"}, "messageId"),
        ("markRead", {"chatroomId": 1, "messageId": 0}, "messageId"),
        ("markRead", [1, 2], "payload"),
        ("typing", {"chatroomId": 1}, "typing is required"),
        ("typing", {"chatroomId": 1, "typing": "yes"}, "typing"),
        ("typing", {"typing": True}, "chatroomId is required"),
    ],
)
async def test_bad_payloads_get_a_400_ack_naming_the_field(joined, event: str, payload: Any, text: str) -> None:
    _alice, _bob, _room, a, _b = joined
    ack = await a.call(event, payload)
    assert_ack_error(ack, 400)
    assert text in ack["message"], ack
    assert a.sio.connected


async def test_hostile_mark_read_and_typing_payloads(api: Api, sockets, joined, db_rows) -> None:
    _alice, bob, room, a, b = joined
    sent = await b.send(bob, room, "x")
    field = id_like | st.just(room) | st.just(sent["id"]) | json_values
    payloads = st.one_of(
        json_values,
        st.tuples(
            st.sampled_from(["markRead", "typing"]),
            st.fixed_dictionaries(
                {}, optional={"chatroomId": field, "messageId": field, "typing": field, "userId": field}
            ),
        ),
    )

    @SETTINGS
    @given(st.sampled_from(["markRead", "typing"]), payloads)
    def property_test(loop: asyncio.AbstractEventLoop, event: str, payload: Any) -> None:
        EXAMPLES.append(payload)
        if isinstance(payload, tuple):
            event, payload = payload
        ack = run_on_loop(loop, a.call(event, payload))
        assert isinstance(ack, dict)
        if "statusCode" in ack:
            assert 400 <= ack["statusCode"] < 500, ack
        elif event == "markRead":
            assert ack["chatroomId"] == room and ack["lastReadId"] in (0, sent["id"]), ack
        else:
            assert ack == {}
        assert a.sio.connected

    await drive(property_test)
    # Whatever came in, positions are 0 or a message of their room.
    for user_id, position in db_rows("SELECT user_id, last_read_id FROM user_chatroom WHERE chatroom_id = ?", (room,)):
        assert position in (0, sent["id"]), (user_id, position)


# -- typing ------------------------------------------------------------------------------------------------------


async def test_typing_is_announced_to_the_others_and_ends_when_a_message_is_sent(joined) -> None:
    alice, _bob, room, a, b = joined
    assert await a.call("typing", {"chatroomId": room, "typing": True}) == {}
    assert await b.next_message(is_typing) == {"type": "typing", "chatroomId": room, "userId": alice.id, "typing": True}
    sent = await a.send(alice, room, "done typing")
    stopped = await b.next_message(lambda e: is_typing(e) or e.get("type") == "sendMessage")
    assert stopped["type"] == "sendMessage" and stopped["message"]["id"] == sent["id"]
    assert await b.next_message(is_typing, timeout=TYPING_TIMEOUT * 10) == {
        "type": "typing",
        "chatroomId": room,
        "userId": alice.id,
        "typing": False,
    }


async def test_typing_ends_on_its_own_after_the_timeout(joined) -> None:
    _alice, _bob, room, a, b = joined
    await a.call("typing", {"chatroomId": room, "typing": True})
    assert (await b.next_message(is_typing))["typing"] is True
    # Nobody says anything: the server ends it (CHATSVC_TYPING_TIMEOUT, short in these tests).
    assert (await b.next_message(is_typing))["typing"] is False


async def test_typing_ends_when_the_typist_leaves_or_disconnects(joined, sockets) -> None:
    alice, bob, room, a, b = joined
    await a.call("typing", {"chatroomId": room, "typing": True})
    assert (await b.next_message(is_typing))["typing"] is True
    await a.call("leaveRoom", {"chatroomId": room})
    assert await b.next_message(is_typing) == {
        "type": "typing",
        "chatroomId": room,
        "userId": alice.id,
        "typing": False,
    }
    # Now bob types, watched by a new socket of alice's, and his socket goes away.
    a2 = await sockets(alice.token)
    await a2.join(alice, room)
    await b.call("typing", {"chatroomId": room, "typing": True})
    assert (await a2.next_message(is_typing))["typing"] is True
    await b.disconnect()
    assert await a2.next_message(is_typing) == {"type": "typing", "chatroomId": room, "userId": bob.id, "typing": False}


async def test_typing_goes_out_at_most_once_a_second_per_user_and_room(joined) -> None:
    alice, _bob, room, a, b = joined
    for typing in (True, False, True, False, True, False):
        await a.call("typing", {"chatroomId": room, "typing": typing})
    first = await b.next_message(is_typing)
    # The first change at once; the rest of the second collapses into the state at its end.
    second = await b.next_message(is_typing)
    assert (first["typing"], second["typing"]) == (True, False)
    (seen_by_b,) = await fence(a, alice, room, b)
    assert [event for event in seen_by_b if is_typing(event)] == []


async def test_typing_is_not_stored(joined, db_rows) -> None:
    _alice, _bob, room, a, b = joined
    before = db_rows("SELECT count(*) FROM chat_history")
    await a.call("typing", {"chatroomId": room, "typing": True})
    await b.next_message(is_typing)
    assert db_rows("SELECT count(*) FROM chat_history") == before


# -- sidecar ------------------------------------------------------------------------------------------------------


async def test_sidecar_marks_read_on_behalf_of_a_member(joined, api: Api) -> None:
    alice, bob, room, a, _b = joined
    sent = [await a.send(alice, room, f"m{i}") for i in range(2)]
    headers = {"X-Api-Key": API_KEY}
    path = f"/sidecar/v1/rooms/{room}/read"
    resp = await api.request("POST", path, json={"username": bob.username, "messageId": sent[0]["id"]}, headers=headers)
    assert resp.status == 200, resp.body
    assert resp.body == {"chatroomId": room, "userId": bob.id, "lastReadId": sent[0]["id"]}
    assert (await a.next_message(is_read))["lastReadId"] == sent[0]["id"]
    assert (await listed(api, bob, room))["unreadCount"] == 1
    outsider = await api.new_user()
    resp = await api.request("POST", path, json={"username": outsider.username, "messageId": 1}, headers=headers)
    assert_error(resp.status, resp.body, 403)
    resp = await api.request(
        "POST",
        f"/sidecar/v1/rooms/{room + 1000}/read",
        json={"username": bob.username, "messageId": 1},
        headers=headers,
    )
    assert_error(resp.status, resp.body, 404)
    resp = await api.request("POST", path, json={"username": bob.username, "messageId": 1})
    assert_error(resp.status, resp.body, 401)
    resp = await api.request("POST", path, json={"username": bob.username}, headers=headers)
    assert_error(resp.status, resp.body, 400)
    assert (await receipts(api, alice, room))[bob.id] == sent[0]["id"]


async def test_send_payload_helper_still_marks_senders_position(joined, api: Api) -> None:
    alice, bob, room, a, _b = joined
    ack = await a.call("sendMessage", send_payload(None, room, "no sendUserId"))
    assert (await receipts(api, bob, room))[alice.id] == ack["id"]
