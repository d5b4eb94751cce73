"""/chat-history/list: members only, ascending pages, limit and cursors."""

from __future__ import annotations

import re
import sqlite3

import pytest

from chatsvc.config import Config
from tests.helpers import Api, User, assert_error

pytestmark = pytest.mark.both_engines

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


async def history(api: Api, user: User, room: int, **params: object) -> list[dict]:
    resp = await api.get("/chat-history/list", user.token, chatroomId=room, **params)
    assert resp.status == 200, resp.body
    return list(resp.body)


def ids_of(messages: list[dict]) -> list[int]:
    return [m["id"] for m in messages]


@pytest.fixture
async def room_of_two(api: Api) -> tuple[User, User, int]:
    alice = await api.new_user()
    bob = await api.new_user()
    return alice, bob, await api.one_to_one(alice, bob)


async def test_history_of_a_new_room_is_empty(api: Api, room_of_two) -> None:
    alice, _, room = room_of_two
    assert await history(api, alice, room) == []


async def test_history_lists_messages_ascending_with_their_sender(
    api: Api, config: Config, sockets, room_of_two
) -> None:
    alice, bob, room = room_of_two
    a = await sockets(alice.token)
    sent = []
    for i, kind in enumerate(("text", "image", "file")):
        sent.append(
            await a.call(
                "sendMessage",
                {"sendUserId": alice.id, "chatroomId": room, "message": {"type": kind, "content": f"c{i}"}},
            )
        )
    listed = await history(api, bob, room)
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


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_history_only_holds_the_rooms_own_messages(api: Api, config: Config, room_of_two) -> None:
    alice, bob, room = room_of_two
    carol = await api.new_user()
    other = await api.one_to_one(alice, carol)
    mine = seed_messages(config, room, [alice, bob], 3)
    seed_messages(config, other, [alice, carol], 3)
    assert ids_of(await history(api, alice, room)) == mine


async def test_history_non_member_is_403(api: Api, room_of_two) -> None:
    _, _, room = room_of_two
    carol = await api.new_user()
    resp = await api.get("/chat-history/list", carol.token, chatroomId=room)
    assert_error(resp.status, resp.body, 403)
    missing_room = await api.get("/chat-history/list", carol.token, chatroomId=room + 1000)
    assert_error(missing_room.status, missing_room.body, 403)


async def test_history_needs_login(api: Api, room_of_two) -> None:
    _, _, room = room_of_two
    resp = await api.get("/chat-history/list", chatroomId=room)
    assert_error(resp.status, resp.body, 401)


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_history_default_limit_is_the_newest_hundred(api: Api, config: Config, room_of_two) -> None:
    alice, bob, room = room_of_two
    ids = seed_messages(config, room, [alice, bob], 105)
    assert ids_of(await history(api, alice, room)) == ids[-100:]


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_history_limit_takes_the_newest_messages(api: Api, config: Config, room_of_two) -> None:
    alice, bob, room = room_of_two
    ids = seed_messages(config, room, [alice, bob], 10)
    assert ids_of(await history(api, alice, room, limit=3)) == ids[-3:]
    assert ids_of(await history(api, alice, room, limit=1)) == ids[-1:]
    assert ids_of(await history(api, alice, room, limit=1000)) == ids


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_history_empty_limit_counts_as_absent(api: Api, config: Config, room_of_two) -> None:
    alice, bob, room = room_of_two
    ids = seed_messages(config, room, [alice, bob], 3)
    assert ids_of(await history(api, alice, room, limit="", beforeId="", afterId="")) == ids


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "abc", "1.5"])
async def test_history_limit_out_of_bounds_is_400(api: Api, room_of_two, limit: str) -> None:
    alice, _, room = room_of_two
    resp = await api.get("/chat-history/list", alice.token, chatroomId=room, limit=limit)
    assert_error(resp.status, resp.body, 400)
    assert "limit" in resp.body["message"]


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_history_before_id_pages_backwards(api: Api, config: Config, room_of_two) -> None:
    alice, bob, room = room_of_two
    ids = seed_messages(config, room, [alice, bob], 10)
    page = await history(api, alice, room, limit=4)
    assert ids_of(page) == ids[6:]
    page = await history(api, alice, room, limit=4, beforeId=page[0]["id"])
    assert ids_of(page) == ids[2:6]
    page = await history(api, alice, room, limit=4, beforeId=page[0]["id"])
    assert ids_of(page) == ids[:2]
    assert await history(api, alice, room, limit=4, beforeId=ids[0]) == []


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_history_after_id_pages_forwards(api: Api, config: Config, room_of_two) -> None:
    alice, bob, room = room_of_two
    ids = seed_messages(config, room, [alice, bob], 10)
    assert ids_of(await history(api, alice, room, limit=4, afterId=0)) == ids[:4]
    assert ids_of(await history(api, alice, room, limit=4, afterId=ids[3])) == ids[4:8]
    assert ids_of(await history(api, alice, room, limit=4, afterId=ids[7])) == ids[8:]
    assert await history(api, alice, room, afterId=ids[-1]) == []


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_history_both_cursors_give_the_messages_between(api: Api, config: Config, room_of_two) -> None:
    alice, bob, room = room_of_two
    ids = seed_messages(config, room, [alice, bob], 10)
    assert ids_of(await history(api, alice, room, afterId=ids[1], beforeId=ids[8])) == ids[2:8]
    assert ids_of(await history(api, alice, room, afterId=ids[1], beforeId=ids[8], limit=2)) == ids[2:4]


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
async def test_history_missing_or_bad_parameters_are_400(api: Api, room_of_two, params: dict[str, str]) -> None:
    alice, _, room = room_of_two
    query = {k: str(room) if v == "ROOM" else v for k, v in params.items()}
    resp = await api.get("/chat-history/list", alice.token, **query)
    assert_error(resp.status, resp.body, 400)
