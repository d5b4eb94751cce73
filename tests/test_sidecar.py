"""The sidecar API: a host application manages users, rooms and messages with an API key."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chatsvc.config import Config
from chatsvc.store.users import insert_user
from chatsvc.testing import ChatsvcServer, run_chatsvc
from tests.conftest import make_config
from tests.helpers import Api, Response, User, assert_error, send_payload

API_KEY = "test-sidecar-key"
SIDECAR_DOCS = Path(__file__).resolve().parent.parent / "docs" / "sidecar.md"
P = "/sidecar/v1"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, api_key=API_KEY)


async def sidecar(api: Api, method: str, path: str, json: Any = None, **params: str) -> Response:
    """A call to the sidecar API with the right key."""
    return await api.request(method, P + path, json=json, params=params or None, headers={"X-Api-Key": API_KEY})


async def managed_user(api: Api, username: str, **fields: Any) -> User:
    """Create a user through the sidecar and mint their token, as a host does."""
    created = await sidecar(api, "POST", "/users", {"username": username, **fields})
    assert created.status in (200, 201), created.body
    minted = await sidecar(api, "POST", "/tokens", {"username": username})
    assert minted.status == 201, minted.body
    profile = minted.body["user"]
    return User(profile["id"], username, profile["nickName"], minted.body["token"], profile)


async def test_sidecar_routes_answer_404_when_no_api_key_is_set() -> None:
    async with run_chatsvc() as plain:
        alice = await plain.create_user("alice")
        for method, path in (("POST", "/users"), ("POST", "/tokens"), ("DELETE", "/rooms/1/members")):
            async with plain.http.request(
                method,
                plain.base_url + P + path,
                json={"username": "alice"},
                headers={"X-Api-Key": API_KEY, "Authorization": f"Bearer {alice['token']}"},
            ) as raw:
                assert_error(raw.status, await raw.json(), 404)


async def test_sidecar_refuses_a_missing_or_wrong_key_and_user_tokens(api: Api) -> None:
    alice = await api.new_user()
    body = {"username": "mallory"}
    for headers in (
        {},
        {"X-Api-Key": "wrong"},
        {"X-Api-Key": API_KEY + "x"},
        {"Authorization": f"Bearer {alice.token}"},
    ):
        resp = await api.request("POST", P + "/users", json=body, headers=headers)
        assert_error(resp.status, resp.body, 401)
    resp = await api.request("POST", P + "/tokens", json={"username": alice.username}, headers={"X-Api-Key": "nope"})
    assert_error(resp.status, resp.body, 401)
    # Nothing was created by the refused calls.
    assert (await sidecar(api, "POST", "/tokens", {"username": "mallory"})).status == 400


async def test_sidecar_creates_users_who_cannot_log_in_with_a_password(api: Api) -> None:
    resp = await sidecar(api, "POST", "/users", {"username": "ext-42", "nickName": "Ada", "email": "ada@example.com"})
    assert resp.status == 201 and resp.body["created"] is True
    user = resp.body["user"]
    assert {k: user[k] for k in ("username", "nickName", "email", "headPic")} == {
        "username": "ext-42",
        "nickName": "Ada",
        "email": "ada@example.com",
        "headPic": "",
    }
    for password in ("!", "", "secret123"):
        login = await api.post("/user/login", {"username": "ext-42", "password": password})
        assert_error(login.status, login.body, 400)
    # Without a nickName the username stands in for it.
    bare = await sidecar(api, "POST", "/users", {"username": "ext-43"})
    assert bare.status == 201 and bare.body["user"]["nickName"] == "ext-43" and bare.body["user"]["email"] == ""


async def test_sidecar_upsert_updates_the_profile_and_the_sender_cache(api: Api, sockets) -> None:
    ada = await managed_user(api, "ada", nickName="Ada")
    await managed_user(api, "bob")
    room = await sidecar(api, "POST", "/rooms", {"type": "one-to-one", "members": ["ada", "bob"]})
    room_id = room.body["room"]["id"]
    a = await sockets(ada.token)
    await a.join(ada, room_id)
    first = await a.call("sendMessage", send_payload(ada, room_id, "before"))
    assert first["sender"]["nickName"] == "Ada"

    updated = await sidecar(
        api, "POST", "/users", {"username": "ada", "nickName": "Ada L.", "headPic": "http://x/a.png"}
    )
    assert updated.status == 200 and updated.body["created"] is False
    assert updated.body["user"]["nickName"] == "Ada L." and updated.body["user"]["id"] == ada.id
    assert updated.body["user"]["headPic"] == "http://x/a.png"

    second = await a.call("sendMessage", send_payload(ada, room_id, "after"))
    assert second["sender"]["nickName"] == "Ada L." and second["sender"]["headPic"] == "http://x/a.png"
    # A call without profile fields changes nothing; an empty email clears it.
    same = await sidecar(api, "POST", "/users", {"username": "ada"})
    assert same.status == 200 and same.body["user"]["nickName"] == "Ada L."
    cleared = await sidecar(api, "POST", "/users", {"username": "ada", "email": ""})
    assert cleared.body["user"]["email"] == ""


async def test_sidecar_upsert_keeps_a_registered_users_password(api: Api) -> None:
    alice = await api.new_user()
    resp = await sidecar(api, "POST", "/users", {"username": alice.username, "nickName": "Renamed"})
    assert resp.status == 200 and resp.body["user"]["id"] == alice.id
    again = await api.login(alice.username)
    assert again.nick_name == "Renamed"


async def test_sidecar_token_is_accepted_by_http_and_socket_io(api: Api, sockets) -> None:
    ada = await managed_user(api, "ada")
    info = await api.get("/user/info", ada.token)
    assert info.status == 200 and info.body["username"] == "ada"
    client = await sockets(ada.token)
    assert client.sio.connected
    minted = await sidecar(api, "POST", "/tokens", {"username": "ada"})
    assert minted.body["expiresIn"] == 7 * 24 * 3600
    unknown = await sidecar(api, "POST", "/tokens", {"username": "nobody"})
    assert_error(unknown.status, unknown.body, 400)


async def test_sidecar_one_to_one_room_is_found_not_duplicated(api: Api) -> None:
    ada = await managed_user(api, "ada")
    bob = await managed_user(api, "bob")
    first = await sidecar(api, "POST", "/rooms", {"type": "one-to-one", "members": ["ada", "bob"]})
    assert first.status == 201 and first.body["created"] is True
    room = first.body["room"]
    assert room["type"] is False and [u["id"] for u in room["users"]] == sorted([ada.id, bob.id])
    second = await sidecar(api, "POST", "/rooms", {"type": "one-to-one", "members": ["bob", "ada"]})
    assert second.status == 200 and second.body["created"] is False and second.body["room"]["id"] == room["id"]
    # The user-facing route finds the same room.
    assert await api.one_to_one(ada, bob) == room["id"]
    for members in (["ada"], ["ada", "ada"], ["ada", "bob", "carol"]):
        resp = await sidecar(api, "POST", "/rooms", {"type": "one-to-one", "members": members})
        assert_error(resp.status, resp.body, 400)


async def test_sidecar_refuses_bad_room_requests(api: Api) -> None:
    await managed_user(api, "ada")
    cases = [
        {"type": "group", "members": ["ada"]},  # no name
        {"type": "group", "name": "g", "members": []},
        {"type": "group", "name": "g", "members": "ada"},
        {"type": "group", "name": "g", "members": ["ada", "ghost"]},
        {"type": "channel", "name": "g", "members": ["ada"]},
        {"type": "group", "name": "g", "members": [1]},
    ]
    for body in cases:
        resp = await sidecar(api, "POST", "/rooms", body)
        assert_error(resp.status, resp.body, 400)
    assert "ghost" in (await sidecar(api, "POST", "/rooms", cases[3])).body["message"]


async def test_sidecar_membership_changes_are_live(api: Api, sockets) -> None:
    ada = await managed_user(api, "ada")
    bob = await managed_user(api, "bob")
    created = await sidecar(api, "POST", "/rooms", {"type": "group", "name": "Team", "members": ["ada"]})
    assert created.status == 201
    group = created.body["room"]
    assert group["name"] == "Team" and group["type"] is True and [u["id"] for u in group["users"]] == [ada.id]
    group_id = group["id"]
    direct = (await sidecar(api, "POST", "/rooms", {"type": "one-to-one", "members": ["ada", "bob"]})).body["room"][
        "id"
    ]

    a = await sockets(ada.token)
    b = await sockets(bob.token)
    await a.join(ada, group_id)
    assert (await b.call("joinRoom", {"chatroomId": group_id}))["statusCode"] == 403

    added = await sidecar(api, "POST", f"/rooms/{group_id}/members", {"members": ["bob", "ada"]})
    assert added.status == 200 and added.body["added"] == [bob.id]
    assert sorted(u["id"] for u in added.body["room"]["users"]) == sorted([ada.id, bob.id])
    assert await a.next_message() == {"type": "joinRoom", "userId": bob.id}
    await b.join(bob, group_id)
    await b.join(bob, direct)
    await a.call("sendMessage", send_payload(ada, group_id, "welcome bob"))
    assert (await b.next_chat())["message"]["content"] == "welcome bob"

    removed = await sidecar(api, "DELETE", f"/rooms/{group_id}/members", username="bob")
    assert removed.status == 200 and removed.body["removed"] == [bob.id]
    assert [u["id"] for u in removed.body["room"]["users"]] == [ada.id]
    assert await a.next_message(lambda m: m.get("type") == "quitRoom") == {"type": "quitRoom", "userId": bob.id}
    # Removing again is not an error: nothing to remove.
    again = await sidecar(api, "DELETE", f"/rooms/{group_id}/members", username="bob")
    assert again.status == 200 and again.body["removed"] == []

    # Bob's socket left the group: the group message stored before the direct one never reaches him.
    await a.call("sendMessage", send_payload(ada, group_id, "bob is gone"))
    await a.call("sendMessage", send_payload(ada, direct, "still here?"))
    assert (await b.next_chat())["message"]["content"] == "still here?"
    ack = await b.call("sendMessage", send_payload(bob, group_id, "let me back"))
    assert ack["statusCode"] == 403


async def test_sidecar_membership_routes_refuse_bad_targets(api: Api) -> None:
    await managed_user(api, "ada")
    await managed_user(api, "bob")
    direct = (await sidecar(api, "POST", "/rooms", {"type": "one-to-one", "members": ["ada", "bob"]})).body["room"][
        "id"
    ]
    resp = await sidecar(api, "POST", f"/rooms/{direct}/members", {"members": ["ada"]})
    assert_error(resp.status, resp.body, 400)
    resp = await sidecar(api, "DELETE", f"/rooms/{direct}/members", username="bob")
    assert_error(resp.status, resp.body, 400)
    resp = await sidecar(api, "POST", "/rooms/999999/members", {"members": ["ada"]})
    assert_error(resp.status, resp.body, 404)
    resp = await sidecar(api, "DELETE", "/rooms/999999/members", username="ada")
    assert_error(resp.status, resp.body, 404)
    resp = await sidecar(api, "DELETE", f"/rooms/{direct}/members")
    assert_error(resp.status, resp.body, 400)


async def test_sidecar_posts_a_users_message_that_sockets_receive(api: Api, sockets) -> None:
    ada = await managed_user(api, "ada")
    bob = await managed_user(api, "bob")
    await managed_user(api, "eve")
    room = (await sidecar(api, "POST", "/rooms", {"type": "one-to-one", "members": ["ada", "bob"]})).body["room"]["id"]
    b = await sockets(bob.token)
    await b.join(bob, room)

    posted = await sidecar(api, "POST", f"/rooms/{room}/messages", {"username": "ada", "content": "from the host"})
    assert posted.status == 201, posted.body
    assert posted.body["senderId"] == ada.id and posted.body["type"] == 0
    assert posted.body["sender"]["username"] == "ada"
    event = await b.next_chat()
    assert event == {"type": "sendMessage", "userId": ada.id, "message": posted.body}
    history = await api.get("/chat-history/list", bob.token, chatroomId=room)
    assert history.body == [posted.body]

    image = await sidecar(
        api, "POST", f"/rooms/{room}/messages", {"username": "bob", "type": "image", "content": "http://x/y.png"}
    )
    assert image.status == 201 and image.body["type"] == 1
    assert (await b.next_chat())["message"]["id"] == image.body["id"]

    outsider = await sidecar(api, "POST", f"/rooms/{room}/messages", {"username": "eve", "content": "hi"})
    assert_error(outsider.status, outsider.body, 403)
    missing = await sidecar(api, "POST", "/rooms/999999/messages", {"username": "ada", "content": "hi"})
    assert_error(missing.status, missing.body, 404)
    for body in (
        {"username": "ada", "content": ""},
        {"username": "ada", "content": "x" * 501},
        {"username": "ada", "content": "hi", "type": "video"},
        {"username": "ada", "content": 5},
        {"content": "nobody sends this"},
        {"username": "ada", "system": True, "content": "both"},
        {"system": "yes", "content": "hi"},
        {"username": "ghost", "content": "hi"},
    ):
        resp = await sidecar(api, "POST", f"/rooms/{room}/messages", body)
        assert_error(resp.status, resp.body, 400)
    after = await api.get("/chat-history/list", bob.token, chatroomId=room)
    assert len(after.body) == 2


async def test_sidecar_system_messages_come_from_a_user_who_cannot_log_in(api: Api, sockets) -> None:
    ada = await managed_user(api, "ada")
    group = (await sidecar(api, "POST", "/rooms", {"type": "group", "name": "News", "members": ["ada"]})).body["room"]
    a = await sockets(ada.token)
    await a.join(ada, group["id"])

    body = {"system": True, "content": "Maintenance at noon", "clientMsgId": "notice-1"}
    posted = await sidecar(api, "POST", f"/rooms/{group['id']}/messages", body)
    assert posted.status == 201
    sender = posted.body["sender"]
    assert sender["username"] == "system" and sender["nickName"] == "System"
    assert (await a.next_chat())["message"] == posted.body
    # The system user is not made a member, and cannot log in.
    members = await api.get("/chatroom/members", ada.token, chatroomId=group["id"])
    assert [m["id"] for m in members.body] == [ada.id]
    login = await api.post("/user/login", {"username": "system", "password": "!"})
    assert_error(login.status, login.body, 400)

    # A retry with the same clientMsgId returns the stored message and stores nothing new.
    retry = await sidecar(api, "POST", f"/rooms/{group['id']}/messages", body)
    assert retry.status == 200 and retry.body == posted.body
    nxt = await sidecar(api, "POST", f"/rooms/{group['id']}/messages", {"system": True, "content": "second"})
    assert nxt.body["senderId"] == sender["id"]
    assert (await a.next_chat())["message"]["content"] == "second"
    history = await api.get("/chat-history/list", ada.token, chatroomId=group["id"])
    assert [m["content"] for m in history.body] == ["Maintenance at noon", "second"]


async def test_sidecar_system_user_is_never_a_registered_account(api: Api, server: ChatsvcServer) -> None:
    # Registering as "system" is refused now, but a database may hold such an account from before.
    async with server.state.db.transaction() as conn:
        squatter = await insert_user(conn, username="system", password_hash="!", nick_name="System", email="")
    assert squatter is not None
    await managed_user(api, "ada")
    group = (await sidecar(api, "POST", "/rooms", {"type": "group", "name": "News", "members": ["ada"]})).body["room"]
    posted = await sidecar(api, "POST", f"/rooms/{group['id']}/messages", {"system": True, "content": "official"})
    assert posted.status == 201
    assert posted.body["senderId"] != squatter["id"]
    assert posted.body["sender"]["username"].startswith("system-")
    assert posted.body["sender"]["nickName"] == "System"


async def test_sidecar_system_messages_and_only_they_carry_the_system_flag(
    api: Api, server: ChatsvcServer, sockets
) -> None:
    # A user who looks like the system (an account from before names were reserved) is still an ordinary user.
    async with server.state.db.transaction() as conn:
        await insert_user(conn, username="lookalike", password_hash="!", nick_name="System", email="")
    ada = await managed_user(api, "ada")
    lookalike = await managed_user(api, "lookalike")
    room = await sidecar(api, "POST", "/rooms", {"type": "group", "name": "News", "members": ["ada", "lookalike"]})
    room_id = room.body["room"]["id"]
    a = await sockets(ada.token)
    await a.join(ada, room_id)

    official = await sidecar(api, "POST", f"/rooms/{room_id}/messages", {"system": True, "content": "official"})
    imitation = await sockets(lookalike.token)
    fake = await imitation.call("sendMessage", send_payload(lookalike, room_id, "official too"))
    by_ada = await sidecar(api, "POST", f"/rooms/{room_id}/messages", {"username": "ada", "content": "hi"})
    assert official.body["system"] is True
    assert fake["system"] is False and fake["sender"]["nickName"] == "System"
    assert by_ada.body["system"] is False
    expected = {"official": True, "official too": False, "hi": False}

    # Live broadcasts, history, recovery, a retry's answer and favorites all say the same.
    live = [(await a.next_chat())["message"] for _ in expected]
    assert {m["content"]: m["system"] for m in live} == expected
    history = (await api.get("/chat-history/list", ada.token, chatroomId=room_id)).body
    assert {m["content"]: m["system"] for m in history} == expected
    recovering = await sockets(ada.token)
    ack = await recovering.call("joinRoom", {"chatroomId": room_id, "lastMessageId": 0})
    assert ack["recovered"] is True and ack["count"] == 3
    replayed = [(await recovering.next_chat())["message"] for _ in expected]
    assert {m["content"]: m["system"] for m in replayed} == expected
    body = {"system": True, "content": "once", "clientMsgId": "once-1"}
    first = await sidecar(api, "POST", f"/rooms/{room_id}/messages", body)
    retry = await sidecar(api, "POST", f"/rooms/{room_id}/messages", body)
    assert first.status == 201 and retry.status == 200 and retry.body["system"] is True
    for message in (official.body, fake):
        assert (await api.get("/favorite/add", ada.token, chatHistoryId=message["id"])).status == 200
    favorites = (await api.get("/favorite/list", ada.token)).body
    assert {f["chatHistory"]["content"]: f["chatHistory"]["system"] for f in favorites} == {
        "official": True,
        "official too": False,
    }


async def test_sidecar_refuses_the_system_users_names_and_the_system_user(api: Api) -> None:
    ada = await managed_user(api, "ada")
    for body, field in (
        ({"username": "System"}, "username"),
        ({"username": " system "}, "username"),
        ({"username": "ada", "nickName": "SYSTEM"}, "nickName"),
    ):
        resp = await sidecar(api, "POST", "/users", body)
        assert_error(resp.status, resp.body, 400)
        assert resp.body["message"] == f"{field} is reserved: it would pass for the system user"
    group = (await sidecar(api, "POST", "/rooms", {"type": "group", "name": "News", "members": ["ada"]})).body["room"]
    posted = await sidecar(api, "POST", f"/rooms/{group['id']}/messages", {"system": True, "content": "hello"})
    system_name, system_id = posted.body["sender"]["username"], posted.body["senderId"]
    # The system user gets no token and joins no room: only system: true speaks as it.
    for path, params in (
        (f"/chatroom/join/{group['id']}", {"joinUsername": system_name}),
        ("/chatroom/create-one-to-one", {"friendId": system_id}),
    ):
        resp = await api.get(path, ada.token, **params)
        assert_error(resp.status, resp.body, 400)
        assert resp.body["message"] == "The system user cannot be a member of a chatroom"
    for method, path, body in (
        ("POST", "/tokens", {"username": system_name}),
        ("POST", f"/rooms/{group['id']}/members", {"members": [system_name]}),
        ("POST", "/rooms", {"type": "one-to-one", "members": ["ada", system_name]}),
        ("POST", f"/rooms/{group['id']}/messages", {"username": system_name, "content": "hi"}),
    ):
        resp = await sidecar(api, method, path, body)
        assert_error(resp.status, resp.body, 400)
        assert "system: true" in resp.body["message"]
    members = await api.get("/chatroom/members", ada.token, chatroomId=group["id"])
    assert [m["id"] for m in members.body] == [ada.id]


async def test_sidecar_docs_python_example_mints_a_working_token(
    api: Api, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host-side example of docs/sidecar.md, run as written (blocking urllib, so in a thread)."""
    blocks = re.findall(r"```python\n(.*?)```", SIDECAR_DOCS.read_text(encoding="utf-8"), flags=re.S)
    example = next(block for block in blocks if "def chat_token_for" in block)
    monkeypatch.setenv("CHATSVC_URL", base_url)
    monkeypatch.setenv("CHATSVC_API_KEY", API_KEY)
    namespace: dict[str, Any] = {}
    exec(compile(example, str(SIDECAR_DOCS), "exec"), namespace)
    account = SimpleNamespace(id=42, display_name="Ada")
    token = await asyncio.to_thread(namespace["chat_token_for"], account)
    info = await api.get("/user/info", token)
    assert info.status == 200 and info.body["username"] == "acct-42" and info.body["nickName"] == "Ada"
    # Signing in again updates the profile and mints another working token.
    account.display_name = "Ada L."
    again = await asyncio.to_thread(namespace["chat_token_for"], account)
    assert (await api.get("/user/info", again)).body["nickName"] == "Ada L."
