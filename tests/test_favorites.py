"""Favorites: saving messages sent over a real socket, listing them with their messages, deleting them."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from chatsvc.config import Config
from chatsvc.state import STATE
from tests.helpers import Api, User, assert_error
from tests.test_query_plans import NOT_QUERIES, plan_scans

FAVORITE_KEYS = {"id", "chatHistoryId", "userId", "createTime"}
NOT_VISIBLE = "You can only save messages of chatrooms you are a member of"


async def save(api: Api, user: User, message_id: int) -> dict[str, Any]:
    resp = await api.get("/favorite/add", user.token, chatHistoryId=message_id)
    assert resp.status == 200, resp.body
    return resp.body


async def favorites_of(api: Api, user: User) -> list[dict[str, Any]]:
    resp = await api.get("/favorite/list", user.token)
    assert resp.status == 200, resp.body
    return resp.body


@pytest.fixture
async def chat(api: Api, sockets) -> dict[str, Any]:
    """Alice and Bob with a one-to-one room and two messages sent over real sockets; Carol is outside."""
    alice, bob, carol = await api.new_user(), await api.new_user(), await api.new_user()
    room = await api.one_to_one(alice, bob)
    a = await sockets(alice.token)
    b = await sockets(bob.token)
    await a.join(alice, room)
    await b.join(bob, room)
    hello = await a.send(alice, room, "hello bob")
    picture = await b.send(bob, room, "http://pics/cat.png", kind="image")
    return {"alice": alice, "bob": bob, "carol": carol, "room": room, "hello": hello, "picture": picture}


async def test_favorite_add_then_list_shows_the_message_with_sender(api: Api, chat) -> None:
    alice, room, hello, picture = chat["alice"], chat["room"], chat["hello"], chat["picture"]
    first = await save(api, alice, hello["id"])
    assert set(first) == FAVORITE_KEYS
    assert first["chatHistoryId"] == hello["id"] and first["userId"] == alice.id
    assert first["createTime"].endswith("Z")
    second = await save(api, alice, picture["id"])

    messages = {message["id"]: message for message in await api.history(alice, room)}
    listed = await favorites_of(api, alice)
    # Newest first, each message exactly as the history shows it.
    assert listed == [
        {**second, "chatHistory": messages[picture["id"]]},
        {**first, "chatHistory": messages[hello["id"]]},
    ]
    assert listed[0]["chatHistory"]["sender"]["id"] == chat["bob"].id
    assert listed[0]["chatHistory"]["type"] == 1
    assert listed[1]["chatHistory"]["content"] == "hello bob"


async def test_favorite_add_twice_returns_the_existing_one(api: Api, chat) -> None:
    alice, hello = chat["alice"], chat["hello"]
    first = await save(api, alice, hello["id"])
    again = await save(api, alice, hello["id"])
    assert again == first
    assert [f["id"] for f in await favorites_of(api, alice)] == [first["id"]]


async def test_favorite_each_member_saves_their_own(api: Api, chat) -> None:
    alice, bob, hello = chat["alice"], chat["bob"], chat["hello"]
    mine = await save(api, alice, hello["id"])
    theirs = await save(api, bob, hello["id"])
    assert mine["id"] != theirs["id"] and theirs["userId"] == bob.id
    assert [f["id"] for f in await favorites_of(api, alice)] == [mine["id"]]
    assert [f["id"] for f in await favorites_of(api, bob)] == [theirs["id"]]


async def test_favorite_add_refuses_a_non_member(api: Api, chat) -> None:
    carol, hello = chat["carol"], chat["hello"]
    resp = await api.get("/favorite/add", carol.token, chatHistoryId=hello["id"])
    assert_error(resp.status, resp.body, 403)
    assert resp.body["message"] == NOT_VISIBLE
    assert await favorites_of(api, carol) == []


async def test_favorite_add_answers_unknown_messages_like_hidden_ones(api: Api, chat) -> None:
    carol, alice, hello = chat["carol"], chat["alice"], chat["hello"]
    hidden = await api.get("/favorite/add", carol.token, chatHistoryId=hello["id"])
    unknown = await api.get("/favorite/add", carol.token, chatHistoryId=hello["id"] + 1000)
    assert_error(unknown.status, unknown.body, 403)
    # Same status and message: a non-member learns nothing about which ids exist.
    assert unknown.body == hidden.body
    for_member = await api.get("/favorite/add", alice.token, chatHistoryId=hello["id"] + 1000)
    assert_error(for_member.status, for_member.body, 403)


async def test_favorite_add_refuses_a_member_who_quit_the_group(api: Api, sockets) -> None:
    alice, bob = await api.new_user(), await api.new_user()
    group = (await api.get("/chatroom/create-group", alice.token, name="Team")).body
    assert (await api.get(f"/chatroom/join/{group}", alice.token, joinUsername=bob.username)).status == 200
    a = await sockets(alice.token)
    message = await a.send(alice, group, "team news")
    assert (await save(api, bob, message["id"]))["chatHistoryId"] == message["id"]

    assert (await api.get(f"/chatroom/quit/{group}", bob.token, quitUserId=bob.id)).status == 200
    later = await a.send(alice, group, "after bob left")
    resp = await api.get("/favorite/add", bob.token, chatHistoryId=later["id"])
    assert_error(resp.status, resp.body, 403)
    # What was saved before quitting stays saved.
    assert [f["chatHistoryId"] for f in await favorites_of(api, bob)] == [message["id"]]


@pytest.mark.parametrize("params", [{}, {"chatHistoryId": ""}, {"chatHistoryId": "abc"}, {"chatHistoryId": "0"}])
async def test_favorite_add_refuses_bad_ids(api: Api, chat, params: dict[str, str]) -> None:
    resp = await api.get("/favorite/add", chat["alice"].token, **params)
    assert_error(resp.status, resp.body, 400)
    assert resp.body["message"].startswith("chatHistoryId")
    assert await favorites_of(api, chat["alice"]) == []


async def test_favorite_of_one_user_is_invisible_and_undeletable_for_another(api: Api, chat) -> None:
    alice, bob, hello = chat["alice"], chat["bob"], chat["hello"]
    saved = await save(api, alice, hello["id"])
    # Bob is in the same room, yet sees none of Alice's favorites...
    assert await favorites_of(api, bob) == []
    assert await favorites_of(api, chat["carol"]) == []
    # ...and cannot delete one: answered like an id that does not exist.
    theirs = await api.get("/favorite/del", bob.token, id=saved["id"])
    assert_error(theirs.status, theirs.body, 404)
    unknown = await api.get("/favorite/del", bob.token, id=saved["id"] + 1000)
    assert unknown.body == theirs.body
    assert [f["id"] for f in await favorites_of(api, alice)] == [saved["id"]]


async def test_favorite_del_removes_only_that_favorite(api: Api, chat) -> None:
    alice, hello, picture = chat["alice"], chat["hello"], chat["picture"]
    first = await save(api, alice, hello["id"])
    second = await save(api, alice, picture["id"])
    resp = await api.get("/favorite/del", alice.token, id=first["id"])
    assert resp.status == 200 and resp.body == first
    assert [f["id"] for f in await favorites_of(api, alice)] == [second["id"]]

    again = await api.get("/favorite/del", alice.token, id=first["id"])
    assert_error(again.status, again.body, 404)
    assert again.body["message"] == "Favorite not found"
    # The message itself is untouched, and may be saved again.
    assert hello["id"] in [m["id"] for m in await api.history(alice, chat["room"])]
    assert (await save(api, alice, hello["id"]))["id"] != first["id"]


@pytest.mark.parametrize("params", [{}, {"id": "x"}, {"id": "-1"}, {"id": "1e3"}])
async def test_favorite_del_refuses_bad_ids(api: Api, chat, params: dict[str, str]) -> None:
    resp = await api.get("/favorite/del", chat["alice"].token, **params)
    assert_error(resp.status, resp.body, 400)
    assert resp.body["message"].startswith("id ")


@pytest.mark.parametrize("path", ["/favorite/add?chatHistoryId=1", "/favorite/list", "/favorite/del?id=1"])
async def test_favorite_routes_need_login(api: Api, path: str) -> None:
    resp = await api.request("GET", path)
    assert_error(resp.status, resp.body, 401)
    bad = await api.request("GET", path, token="not-a-token")
    assert_error(bad.status, bad.body, 401)


async def test_favorite_queries_use_indexes(server: TestServer, config: Config, api: Api, chat) -> None:
    alice, carol, hello = chat["alice"], chat["carol"], chat["hello"]
    statements: set[str] = set()
    db = server.app[STATE].db
    await db.set_trace(statements.add)
    saved = await save(api, alice, hello["id"])
    await save(api, alice, hello["id"])
    await api.get("/favorite/add", carol.token, chatHistoryId=hello["id"])
    await favorites_of(api, alice)
    await api.get("/favorite/del", alice.token, id=saved["id"])
    await db.set_trace(None)
    # The favorite statements, and the visibility check that joins a message to the caller's membership.
    queries = {s for s in statements if not NOT_QUERIES.match(s) and ("favorite" in s or "user_chatroom AS m" in s)}
    assert len(queries) >= 5, queries
    assert plan_scans(config.db_path, queries) == {}
