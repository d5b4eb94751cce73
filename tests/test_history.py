"""/chat-history/list: members only, ascending pages, limit and cursors."""

from __future__ import annotations

import re
import sqlite3

import pytest

from chatsvc.config import Config
from tests.helpers import Api, User, assert_error, send_payload

ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def seed_messages(config: Config, room: int, senders: list[User], count: int) -> list[int]:
    """Store ``count`` messages straight into the database, alternating senders; their ids in order."""
    with sqlite3.connect(config.db_path) as conn:
        ids = []
        for i in range(count):
            cursor = conn.execute(
                "INSERT INTO chat_history (content, type, chatroom_id, sender_id) VALUES (?, ?, ?, ?)",
                (f"m{i}", i % 3, room, senders[i % len(senders)].id),
            )
            ids.append(int(cursor.lastrowid or 0))
    return ids


def ids_of(messages: list[dict]) -> list[int]:
    return [m["id"] for m in messages]


async def test_history_of_a_new_room_is_empty(api: Api, pair) -> None:
    alice, _, room = pair
    assert await api.history(alice, room) == []


async def test_history_lists_messages_ascending_with_their_sender(api: Api, config: Config, sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    sent = []
    for i, kind in enumerate(("text", "image", "file")):
        sent.append(await a.call("sendMessage", send_payload(alice, room, f"c{i}", kind=kind)))
    listed = await api.history(bob, room)
    assert listed == sent
    assert ids_of(listed) == sorted(ids_of(listed))
    assert [m["type"] for m in listed] == [0, 1, 2]
    first = listed[0]
    assert first["chatroomId"] == room and first["senderId"] == alice.id
    assert ISO_MILLIS.match(first["createTime"]) and ISO_MILLIS.match(first["updateTime"])
    assert first["system"] is False
    # No email: only the user and their friends see it, and a message goes to the whole room.
    assert first["sender"] == {
        "id": alice.id,
        "username": alice.username,
        "nickName": alice.nick_name,
        "headPic": "",
        "createTime": alice.profile["createTime"],
    }


async def test_history_only_holds_the_rooms_own_messages(api: Api, config: Config, pair) -> None:
    alice, bob, room = pair
    carol = await api.new_user()
    other = await api.one_to_one(alice, carol)
    mine = seed_messages(config, room, [alice, bob], 3)
    seed_messages(config, other, [alice, carol], 3)
    assert ids_of(await api.history(alice, room)) == mine


async def test_history_non_member_is_403(api: Api, pair) -> None:
    _, _, room = pair
    carol = await api.new_user()
    resp = await api.get("/chat-history/list", carol.token, chatroomId=room)
    assert_error(resp.status, resp.body, 403)
    missing_room = await api.get("/chat-history/list", carol.token, chatroomId=room + 1000)
    assert_error(missing_room.status, missing_room.body, 403)


async def test_history_needs_login(api: Api, pair) -> None:
    _, _, room = pair
    resp = await api.get("/chat-history/list", chatroomId=room)
    assert_error(resp.status, resp.body, 401)


async def test_history_default_limit_is_the_newest_hundred(api: Api, config: Config, pair) -> None:
    alice, bob, room = pair
    ids = seed_messages(config, room, [alice, bob], 105)
    assert ids_of(await api.history(alice, room)) == ids[-100:]


async def test_history_limit_takes_the_newest_messages(api: Api, config: Config, pair) -> None:
    alice, bob, room = pair
    ids = seed_messages(config, room, [alice, bob], 10)
    assert ids_of(await api.history(alice, room, limit=3)) == ids[-3:]
    assert ids_of(await api.history(alice, room, limit=1)) == ids[-1:]
    assert ids_of(await api.history(alice, room, limit=1000)) == ids


async def test_history_empty_limit_counts_as_absent(api: Api, config: Config, pair) -> None:
    alice, bob, room = pair
    ids = seed_messages(config, room, [alice, bob], 3)
    assert ids_of(await api.history(alice, room, limit="", beforeId="", afterId="")) == ids


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "abc", "1.5"])
async def test_history_limit_out_of_bounds_is_400(api: Api, pair, limit: str) -> None:
    alice, _, room = pair
    resp = await api.get("/chat-history/list", alice.token, chatroomId=room, limit=limit)
    assert_error(resp.status, resp.body, 400)
    assert "limit" in resp.body["message"]


async def test_history_before_id_pages_backwards(api: Api, config: Config, pair) -> None:
    alice, bob, room = pair
    ids = seed_messages(config, room, [alice, bob], 10)
    page = await api.history(alice, room, limit=4)
    assert ids_of(page) == ids[6:]
    page = await api.history(alice, room, limit=4, beforeId=page[0]["id"])
    assert ids_of(page) == ids[2:6]
    page = await api.history(alice, room, limit=4, beforeId=page[0]["id"])
    assert ids_of(page) == ids[:2]
    assert await api.history(alice, room, limit=4, beforeId=ids[0]) == []


async def test_history_after_id_pages_forwards(api: Api, config: Config, pair) -> None:
    alice, bob, room = pair
    ids = seed_messages(config, room, [alice, bob], 10)
    assert ids_of(await api.history(alice, room, limit=4, afterId=0)) == ids[:4]
    assert ids_of(await api.history(alice, room, limit=4, afterId=ids[3])) == ids[4:8]
    assert ids_of(await api.history(alice, room, limit=4, afterId=ids[7])) == ids[8:]
    assert await api.history(alice, room, afterId=ids[-1]) == []


async def test_history_both_cursors_give_the_messages_between(api: Api, config: Config, pair) -> None:
    alice, bob, room = pair
    ids = seed_messages(config, room, [alice, bob], 10)
    assert ids_of(await api.history(alice, room, afterId=ids[1], beforeId=ids[8])) == ids[2:8]
    assert ids_of(await api.history(alice, room, afterId=ids[1], beforeId=ids[8], limit=2)) == ids[2:4]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"chatroomId": ""},
        {"chatroomId": "abc"},
        {"chatroomId": "1.0"},
        {"chatroomId": "ROOM", "beforeId": "x"},
        {"chatroomId": "ROOM", "beforeId": "0"},
        {"chatroomId": "ROOM", "afterId": "-1"},
        {"chatroomId": "ROOM", "afterId": "1e3"},
    ],
)
async def test_history_missing_or_bad_parameters_are_400(api: Api, pair, params: dict[str, str]) -> None:
    alice, _, room = pair
    query = {k: str(room) if v == "ROOM" else v for k, v in params.items()}
    resp = await api.get("/chat-history/list", alice.token, **query)
    assert_error(resp.status, resp.body, 400)
