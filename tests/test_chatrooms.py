"""/chatroom: find-or-create one-to-one rooms, finding them, and the caller's room list."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from aiohttp.test_utils import TestServer

from chatsvc.config import Config
from chatsvc.state import STATE
from tests.helpers import Api, User, assert_error

pytestmark = pytest.mark.both_engines


async def make_group(server: TestServer, name: str, members: list[User]) -> int:
    """A group room with these members, made at once through the membership service."""
    return await server.app[STATE].membership.create_group(name, [member.id for member in members])


def count_rows(config: Config, sql: str, *params: object) -> int:
    with sqlite3.connect(config.db_path) as conn:
        (count,) = conn.execute(sql, params).fetchone()
    return int(count)


# -- create-one-to-one ----------------------------------------------------------


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_create_one_to_one_returns_a_bare_id_and_makes_both_members(api: Api, config: Config) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    resp = await api.get("/chatroom/create-one-to-one", alice.token, friendId=bob.id)
    assert resp.status == 200 and type(resp.body) is int
    assert resp.headers["Content-Type"].startswith("application/json")
    with sqlite3.connect(config.db_path) as conn:
        assert conn.execute("SELECT type FROM chatroom WHERE id = ?", (resp.body,)).fetchone() == (0,)
        members = conn.execute("SELECT user_id FROM user_chatroom WHERE chatroom_id = ? ORDER BY 1", (resp.body,))
        assert [row[0] for row in members] == sorted([alice.id, bob.id])


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_create_one_to_one_is_idempotent_from_both_sides(api: Api, config: Config, pair) -> None:
    alice, bob, first = pair
    assert await api.one_to_one(alice, bob) == first
    assert await api.one_to_one(bob, alice) == first
    assert count_rows(config, "SELECT count(*) FROM chatroom") == 1
    assert count_rows(config, "SELECT count(*) FROM user_chatroom") == 2


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_create_one_to_one_concurrent_calls_from_both_sides_make_one_room(api: Api, config: Config) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    callers = [alice, bob] * 5
    ids = await asyncio.gather(*(api.one_to_one(me, bob if me is alice else alice) for me in callers))
    assert len(set(ids)) == 1
    assert count_rows(config, "SELECT count(*) FROM chatroom WHERE type = 0") == 1
    assert count_rows(config, "SELECT count(*) FROM user_chatroom WHERE chatroom_id = ?", ids[0]) == 2


async def test_create_one_to_one_rooms_of_different_pairs_differ(api: Api) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    carol = await api.new_user()
    assert await api.one_to_one(alice, bob) != await api.one_to_one(alice, carol)


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_create_one_to_one_with_yourself_is_400(api: Api, config: Config) -> None:
    alice = await api.new_user()
    resp = await api.get("/chatroom/create-one-to-one", alice.token, friendId=alice.id)
    assert_error(resp.status, resp.body, 400)
    assert count_rows(config, "SELECT count(*) FROM chatroom") == 0


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_create_one_to_one_with_an_unknown_user_is_400(api: Api, config: Config) -> None:
    alice = await api.new_user()
    resp = await api.get("/chatroom/create-one-to-one", alice.token, friendId=alice.id + 1000)
    assert_error(resp.status, resp.body, 400)
    assert "not found" in resp.body["message"].lower()
    assert count_rows(config, "SELECT count(*) FROM chatroom") == 0


@pytest.mark.parametrize("params", [{}, {"friendId": ""}, {"friendId": "abc"}, {"friendId": "1.5"}, {"friendId": "0"}])
async def test_create_one_to_one_missing_or_bad_friend_id_is_400(api: Api, params: dict[str, str]) -> None:
    alice = await api.new_user()
    resp = await api.get("/chatroom/create-one-to-one", alice.token, **params)
    assert_error(resp.status, resp.body, 400)
    assert "friendId" in resp.body["message"]


async def test_create_one_to_one_needs_login(api: Api) -> None:
    resp = await api.get("/chatroom/create-one-to-one", friendId=1)
    assert_error(resp.status, resp.body, 401)


# -- findChatroom -------------------------------------------------------------------


async def test_find_chatroom_is_null_then_the_room_whichever_order(api: Api) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    none = await api.get("/chatroom/findChatroom", alice.token, userId1=alice.id, userId2=bob.id)
    assert none.status == 200 and none.body is None
    assert none.headers["Content-Type"].startswith("application/json")
    room = await api.one_to_one(alice, bob)
    for me, a, b in ((alice, alice, bob), (alice, bob, alice), (bob, alice, bob), (bob, bob, alice)):
        found = await api.get("/chatroom/findChatroom", me.token, userId1=a.id, userId2=b.id)
        assert found.status == 200 and found.body == room


async def test_find_chatroom_ignores_group_rooms(api: Api, server: TestServer) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    group = await make_group(server, "just us two", [alice, bob])
    found = await api.get("/chatroom/findChatroom", alice.token, userId1=alice.id, userId2=bob.id)
    assert found.status == 200 and found.body is None
    # Created after the group, so a lookup that did not filter by type would find the group first.
    room = await api.one_to_one(alice, bob)
    assert room != group
    found = await api.get("/chatroom/findChatroom", bob.token, userId1=alice.id, userId2=bob.id)
    assert found.body == room


async def test_find_chatroom_does_not_match_a_room_of_other_users(api: Api) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    carol = await api.new_user()
    await api.one_to_one(bob, carol)
    await api.one_to_one(alice, carol)
    found = await api.get("/chatroom/findChatroom", alice.token, userId1=alice.id, userId2=bob.id)
    assert found.status == 200 and found.body is None


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({}, "userId1"),
        ({"userId1": "ME"}, "userId2"),
        ({"userId2": "ME"}, "userId1"),
        ({"userId1": "ME", "userId2": "abc"}, "userId2"),
        ({"userId1": "x1", "userId2": "ME"}, "userId1"),
        ({"userId1": "ME", "userId2": "2.0"}, "userId2"),
        ({"userId1": "ME", "userId2": ""}, "userId2"),
    ],
)
async def test_find_chatroom_missing_or_non_integer_ids_are_400(api: Api, params: dict[str, str], named: str) -> None:
    alice = await api.new_user()
    query = {k: str(alice.id) if v == "ME" else v for k, v in params.items()}
    resp = await api.get("/chatroom/findChatroom", alice.token, **query)
    assert_error(resp.status, resp.body, 400)
    assert named in resp.body["message"]


async def test_find_chatroom_of_two_other_users_is_403(api: Api) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    carol = await api.new_user()
    await api.one_to_one(bob, carol)
    resp = await api.get("/chatroom/findChatroom", alice.token, userId1=bob.id, userId2=carol.id)
    assert_error(resp.status, resp.body, 403)


# -- list ------------------------------------------------------------------------------


async def test_list_names_one_to_one_rooms_after_the_other_member(api: Api, server: TestServer) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    carol = await api.new_user()
    with_bob = await api.one_to_one(alice, bob)
    with_carol = await api.one_to_one(carol, alice)
    group = await make_group(server, "Project Team", [alice, bob, carol])

    resp = await api.get("/chatroom/list", alice.token)
    assert resp.status == 200
    by_id = {room["id"]: room for room in resp.body}
    assert set(by_id) == {with_bob, with_carol, group}
    for room in resp.body:
        assert set(room) == {
            *("id", "name", "type", "createTime", "userCount", "userIds"),
            *("lastReadId", "unreadCount", "lastMessage"),
        }
    assert by_id[with_bob]["name"] == bob.nick_name and by_id[with_bob]["type"] is False
    assert by_id[with_carol]["name"] == carol.nick_name
    assert by_id[with_bob]["userIds"] == sorted([alice.id, bob.id]) and by_id[with_bob]["userCount"] == 2
    assert by_id[group]["name"] == "Project Team" and by_id[group]["type"] is True
    assert by_id[group]["userCount"] == 3 and sorted(by_id[group]["userIds"]) == sorted([alice.id, bob.id, carol.id])

    # The same room is named after alice in bob's list.
    bobs = {room["id"]: room for room in (await api.get("/chatroom/list", bob.token)).body}
    assert bobs[with_bob]["name"] == alice.nick_name


async def test_list_shows_only_the_callers_rooms(api: Api) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    carol = await api.new_user()
    dave = await api.new_user()
    mine = await api.one_to_one(alice, bob)
    await api.one_to_one(carol, dave)
    listed = (await api.get("/chatroom/list", alice.token)).body
    assert [room["id"] for room in listed] == [mine]
    assert (await api.get("/chatroom/list", (await api.new_user()).token)).body == []


async def test_list_filters_by_name_substring(api: Api, server: TestServer) -> None:
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")
    carol = await api.new_user("carol")
    with_bob = await api.one_to_one(alice, bob)
    with_carol = await api.one_to_one(alice, carol)
    group = await make_group(server, "Weekend Hiking", [alice, carol])

    async def names(name: str) -> set[int]:
        resp = await api.get("/chatroom/list", alice.token, name=name)
        assert resp.status == 200, resp.body
        return {room["id"] for room in resp.body}

    assert await names("") == {with_bob, with_carol, group}
    assert await names("bob") == {with_bob}  # nickName "Nick bob", the other member's
    assert await names("Nick") == {with_bob, with_carol}
    assert await names("hik") == {group}
    assert await names("alice") == set()  # the caller's own name does not name the room
    assert await names("zzz") == set()


async def test_list_needs_login(api: Api) -> None:
    resp = await api.get("/chatroom/list")
    assert_error(resp.status, resp.body, 401)
