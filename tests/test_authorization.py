"""The authorization matrix: anonymous callers and logged-in outsiders are refused everywhere, and change nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import socketio

from tests.helpers import Api, User, assert_ack_error, assert_error, send_payload

pytestmark = pytest.mark.both_engines

TABLES = ("user", "chatroom", "user_chatroom", "chat_history", "friendship", "friend_request", "favorite", "setting")


# Connecting a socket stores when its user was last seen (presence): not a change an outsider's request made.
USER_COLUMNS = "id, username, password_hash, nick_name, email, head_pic, token_version, create_time, update_time"


def snapshot(db_rows: Callable[..., list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: db_rows(f'SELECT {USER_COLUMNS if table == "user" else "*"} FROM "{table}" ORDER BY 1, 2')
        for table in TABLES
    }


@pytest.fixture
async def world(api: Api, sockets) -> dict[str, Any]:
    """Two members with a one-to-one room, a group and a message each, a favorite, and an outsider."""
    ann, ben, out = await api.new_user("ann"), await api.new_user("ben"), await api.new_user("out")
    pair = await api.one_to_one(ann, ben)
    group = (await api.get("/chatroom/create-group", ann.token, name="g")).body
    await api.get(f"/chatroom/join/{group}", ann.token, joinUsername="ben")
    a = await sockets(ann.token)
    message = await a.call("sendMessage", send_payload(ann, pair, "secret"))
    await a.call("sendMessage", send_payload(ann, group, "secret"))
    favorite = (await api.get("/favorite/add", ann.token, chatHistoryId=message["id"])).body
    await api.post("/friendship/add", {"username": "ben", "reason": "r"}, ann.token)
    return {"ann": ann, "ben": ben, "out": out, "pair": pair, "group": group, "message": message, "favorite": favorite}


def room_routes(w: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], int]]:
    """(method, path, params or body, status for a logged-in outsider) of every route touching a room's data."""
    ann: User = w["ann"]
    return [
        ("GET", "/chat-history/list", {"chatroomId": w["pair"]}, 403),
        ("GET", "/chat-history/list", {"chatroomId": w["group"], "afterId": 0}, 403),
        ("GET", "/chatroom/findChatroom", {"userId1": ann.id, "userId2": w["ben"].id}, 403),
        ("GET", "/chatroom/members", {"chatroomId": w["group"]}, 403),
        ("GET", "/chatroom/members", {"chatroomId": w["pair"]}, 403),
        ("GET", f"/chatroom/info/{w['group']}", {}, 403),
        ("GET", f"/chatroom/info/{w['pair']}", {}, 403),
        ("GET", f"/chatroom/join/{w['group']}", {"joinUsername": "out"}, 403),
        ("GET", f"/chatroom/quit/{w['group']}", {"quitUserId": w["ben"].id}, 403),
        ("GET", "/favorite/add", {"chatHistoryId": w["message"]["id"]}, 403),
        ("GET", "/favorite/del", {"id": w["favorite"]["id"]}, 404),
    ]


LOGIN_ONLY_ROUTES = [
    ("GET", "/user/info", {}),
    ("GET", "/user/update/captcha", {}),
    ("POST", "/user/update", {"email": "x@example.com", "captcha": "000000"}),
    ("GET", "/chatroom/list", {}),
    ("GET", "/chatroom/create-group", {"name": "g"}),
    ("GET", "/chatroom/create-one-to-one", {"friendId": 1}),
    ("GET", "/friendship/list", {}),
    ("GET", "/friendship/request_list", {}),
    ("POST", "/friendship/add", {"username": "ann", "reason": "r"}),
    ("GET", "/friendship/agree/1", {}),
    ("GET", "/friendship/reject/1", {}),
    ("GET", "/friendship/remove/1", {}),
    ("GET", "/favorite/list", {}),
]


async def call(api: Api, method: str, path: str, args: dict[str, Any], token: str | None):
    if method == "GET":
        return await api.request("GET", path, token=token, params={k: str(v) for k, v in args.items()})
    return await api.request("POST", path, token=token, json=args)


def expired_token(db_rows: Callable[..., list[tuple[Any, ...]]], user: User) -> str:
    """A token of a real user, signed with the service's own secret, that expired a minute ago."""
    [(secret,)] = db_rows("SELECT value FROM setting WHERE key = 'jwt_secret'")
    now = int(time.time())
    claims = {"userId": user.id, "username": user.username, "tv": 0, "iat": now - 120, "exp": now - 60}
    return jwt.encode(claims, secret, algorithm="HS256")


async def test_authorization_anonymous_expired_and_badly_signed_tokens_are_refused_and_change_nothing(
    api: Api, world, db_rows
) -> None:
    before = snapshot(db_rows)
    routes = [(m, p, a) for m, p, a, _ in room_routes(world)] + LOGIN_ONLY_ROUTES
    bad_tokens = (None, "not-a-token", world["ann"].token + "x", expired_token(db_rows, world["ann"]))
    for method, path, args in routes:
        for token in bad_tokens:
            resp = await call(api, method, path, args, token)
            assert_error(resp.status, resp.body, 401)
    assert snapshot(db_rows) == before


async def test_authorization_outsiders_are_refused_and_change_nothing(api: Api, world, db_rows) -> None:
    before = snapshot(db_rows)
    for method, path, args, status in room_routes(world):
        resp = await call(api, method, path, args, world["out"].token)
        assert_error(resp.status, resp.body, status)
        assert "secret" not in str(resp.body)
    assert snapshot(db_rows) == before


async def test_authorization_socket_outsiders_cannot_join_send_or_recover(api: Api, sockets, world, db_rows) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets(None)
    before = snapshot(db_rows)
    out: User = world["out"]
    client = await sockets(out.token)
    for room in (world["pair"], world["group"]):
        assert_ack_error(await client.call("joinRoom", {"chatroomId": room, "userId": out.id}), 403)
        assert_ack_error(await client.call("joinRoom", {"chatroomId": room, "userId": out.id, "lastMessageId": 0}), 403)
        assert_ack_error(await client.call("sendMessage", send_payload(out, room, "hi")), 403)
        # Claiming to be a member does not help.
        assert_ack_error(await client.call("sendMessage", send_payload(world["ann"], room, "hi")), 403)
    assert client.drain() == []
    assert snapshot(db_rows) == before
