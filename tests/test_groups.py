"""Group rooms: create, members, info, join by username, quit; membership changes reach live sockets."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, SocketClient, User, assert_ack_error, assert_error, public_profile, send_payload

pytestmark = pytest.mark.both_engines


async def create_group(api: Api, owner: User, name: str = "Team") -> int:
    resp = await api.get("/chatroom/create-group", owner.token, name=name)
    assert resp.status == 200, resp.body
    assert isinstance(resp.body, int)
    return resp.body


async def add(api: Api, by: User, room: int, user: User) -> None:
    resp = await api.get(f"/chatroom/join/{room}", by.token, joinUsername=user.username)
    assert resp.status == 200 and resp.body == room, resp.body


async def member_ids(api: Api, viewer: User, room: int) -> list[int]:
    resp = await api.get("/chatroom/members", viewer.token, chatroomId=room)
    assert resp.status == 200, resp.body
    return [member["id"] for member in resp.body]


def drain(client: SocketClient) -> list[dict[str, Any]]:
    """Every ``message`` event received so far, without waiting."""
    events = []
    while not client.messages.empty():
        events.append(client.messages.get_nowait())
    return events


async def test_group_create_then_members_info_and_list(api: Api, trio) -> None:
    alice, _, _ = trio
    room = await create_group(api, alice, "  Book club  ")

    members = await api.get("/chatroom/members", alice.token, chatroomId=room)
    assert members.status == 200
    assert members.body == [{**alice.profile, "role": "owner"}]  # her own, email included; she created it

    info = await api.get(f"/chatroom/info/{room}", alice.token)
    assert info.status == 200
    assert info.body == {
        "id": room,
        "name": "Book club",
        "type": True,
        "createTime": info.body["createTime"],
        "updateTime": info.body["updateTime"],
        "users": [{**alice.profile, "role": "owner"}],
    }
    assert info.body["createTime"].endswith("Z")

    listed = await api.get("/chatroom/list", alice.token)
    assert listed.body == [
        {
            "id": room,
            "name": "Book club",
            "type": True,
            "createTime": info.body["createTime"],
            "userCount": 1,
            "userIds": [alice.id],
            "lastReadId": 0,
            "unreadCount": 0,
            "lastMessage": None,
        }
    ]
    assert (await api.get("/chatroom/list", alice.token, name="book")).body[0]["id"] == room
    assert (await api.get("/chatroom/list", alice.token, name="chess")).body == []


async def test_group_list_names_groups_after_themselves_beside_one_to_one_rooms(api: Api, trio) -> None:
    alice, bob, carol = trio
    direct = await api.one_to_one(alice, bob)
    group = await create_group(api, alice, "Weekend")
    await add(api, alice, group, carol)
    listed = await api.get("/chatroom/list", alice.token)
    by_id = {room["id"]: room for room in listed.body}
    assert by_id[direct]["name"] == bob.nick_name and by_id[direct]["type"] is False
    assert by_id[group]["name"] == "Weekend" and by_id[group]["type"] is True
    assert by_id[group]["userIds"] == sorted([alice.id, carol.id]) and by_id[group]["userCount"] == 2
    carol_rooms = await api.get("/chatroom/list", carol.token)
    assert [(room["id"], room["name"], room["type"]) for room in carol_rooms.body] == [(group, "Weekend", True)]


@pytest.mark.parametrize("params", [{}, {"name": ""}, {"name": "   "}, {"name": "x" * 51}])
async def test_group_create_refuses_a_missing_blank_or_long_name(api: Api, trio, params: dict[str, str]) -> None:
    alice, _, _ = trio
    resp = await api.get("/chatroom/create-group", alice.token, **params)
    assert_error(resp.status, resp.body, 400)
    assert (await api.get("/chatroom/list", alice.token)).body == []


async def test_group_create_accepts_a_name_of_fifty_characters(api: Api, trio) -> None:
    alice, _, _ = trio
    room = await create_group(api, alice, "n" * 50)
    assert (await api.get(f"/chatroom/info/{room}", alice.token)).body["name"] == "n" * 50


async def test_group_routes_need_a_login(api: Api, trio) -> None:
    alice, bob, _ = trio
    room = await create_group(api, alice)
    for path, params in [
        ("/chatroom/create-group", {"name": "x"}),
        ("/chatroom/members", {"chatroomId": room}),
        (f"/chatroom/info/{room}", {}),
        (f"/chatroom/join/{room}", {"joinUsername": bob.username}),
        (f"/chatroom/quit/{room}", {"quitUserId": alice.id}),
    ]:
        resp = await api.get(path, **params)
        assert_error(resp.status, resp.body, 401)
    assert await member_ids(api, alice, room) == [alice.id]


async def test_group_join_by_username_adds_the_member_once(api: Api, trio) -> None:
    alice, bob, _ = trio
    room = await create_group(api, alice)
    await add(api, alice, room, bob)
    await add(api, alice, room, bob)
    await add(api, bob, room, bob)  # himself: nothing to manage
    assert await member_ids(api, alice, room) == sorted([alice.id, bob.id])
    info = await api.get(f"/chatroom/info/{room}", bob.token)
    # Bob sees his own email, not that of Alice, who is not his friend.
    assert info.body["users"] == sorted(
        [{**public_profile(alice), "role": "owner"}, {**bob.profile, "role": "member"}], key=lambda u: u["id"]
    )
    assert (await api.get("/chatroom/list", bob.token)).body[0]["userCount"] == 2


async def test_group_joined_user_hears_about_it_joins_over_the_socket_and_chats(api: Api, sockets, trio) -> None:
    alice, bob, _ = trio
    room = await create_group(api, alice)
    a = await sockets(alice.token)
    await a.join(alice, room)
    b = await sockets(bob.token)
    assert_ack_error(await b.call("joinRoom", {"chatroomId": room, "userId": bob.id}), 403)

    await add(api, alice, room, bob)
    assert await a.next_message() == {"type": "joinRoom", "userId": bob.id}
    await b.join(bob, room)
    sent = await b.call("sendMessage", send_payload(bob, room, "hello group"))
    assert sent["senderId"] == bob.id and sent["chatroomId"] == room
    for client in (a, b):
        chat = await client.next_chat()
        assert chat["userId"] == bob.id and chat["message"]["id"] == sent["id"]
        assert chat["message"]["sender"] == public_profile(bob)
    history = await api.get("/chat-history/list", alice.token, chatroomId=room)
    assert [m["content"] for m in history.body] == ["hello group"]


async def test_group_quit_stops_delivery_at_once_and_refuses_the_quitter(api: Api, sockets, trio) -> None:
    alice, bob, carol = trio
    room = await create_group(api, alice)
    await add(api, alice, room, bob)
    await add(api, alice, room, carol)
    a, b, c = await sockets(alice.token), await sockets(bob.token), await sockets(carol.token)
    for client, user in ((a, alice), (b, bob), (c, carol)):
        await client.join(user, room)
    before = await a.call("sendMessage", send_payload(alice, room, "before"))
    for client in (a, b, c):
        assert (await client.next_chat())["message"]["id"] == before["id"]

    resp = await api.get(f"/chatroom/quit/{room}", bob.token, quitUserId=bob.id)
    assert resp.status == 200 and resp.body == room
    for client in (a, c):
        assert await client.next_message(lambda m: m.get("type") == "quitRoom") == {
            "type": "quitRoom",
            "userId": bob.id,
        }

    after = await a.call("sendMessage", send_payload(alice, room, "after"))
    assert (await c.next_chat())["message"]["id"] == after["id"]
    # The refusal's ack comes down bob's connection after anything queued for
    # him earlier, so once it is here a leaked broadcast would be too.
    assert_ack_error(await b.call("sendMessage", send_payload(bob, room, "still here?")), 403)
    assert [event for event in drain(b) if event.get("type") == "sendMessage"] == []
    assert_ack_error(await b.call("joinRoom", {"chatroomId": room, "userId": bob.id}), 403)

    for path, params in [
        ("/chatroom/members", {"chatroomId": room}),
        (f"/chatroom/info/{room}", {}),
        ("/chat-history/list", {"chatroomId": room}),
        (f"/chatroom/join/{room}", {"joinUsername": bob.username}),
    ]:
        refused = await api.get(path, bob.token, **params)
        assert_error(refused.status, refused.body, 403)
    assert await member_ids(api, alice, room) == sorted([alice.id, carol.id])
    assert (await api.get("/chatroom/list", bob.token)).body == []
    history = await api.get("/chat-history/list", alice.token, chatroomId=room)
    assert [m["content"] for m in history.body] == ["before", "after"]


async def test_group_admin_may_remove_another_member_who_stops_receiving(api: Api, sockets, trio) -> None:
    alice, bob, carol = trio
    room = await create_group(api, alice)
    await add(api, alice, room, bob)
    await add(api, alice, room, carol)
    made = await api.get(f"/chatroom/set-role/{room}", alice.token, userId=bob.id, role="admin")
    assert made.status == 200, made.body
    b = await sockets(bob.token)
    c = await sockets(carol.token)
    idle_carol = await sockets(carol.token)  # another of carol's sockets, never in the room
    await b.join(bob, room)
    await c.join(carol, room)

    resp = await api.get(f"/chatroom/quit/{room}", bob.token, quitUserId=carol.id)
    assert resp.status == 200 and resp.body == room
    assert await b.next_message(lambda m: m.get("type") == "quitRoom") == {"type": "quitRoom", "userId": carol.id}
    sent = await b.call("sendMessage", send_payload(bob, room, "without carol"))
    assert (await b.next_chat())["message"]["id"] == sent["id"]
    assert_ack_error(await c.call("sendMessage", send_payload(carol, room, "let me in")), 403)
    assert [event for event in drain(c) if event.get("type") == "sendMessage"] == []
    assert idle_carol.sio.connected
    assert await member_ids(api, alice, room) == sorted([alice.id, bob.id])


async def test_group_member_removed_then_added_again_receives_again(api: Api, sockets, trio) -> None:
    alice, bob, _ = trio
    room = await create_group(api, alice)
    await add(api, alice, room, bob)
    b = await sockets(bob.token)
    await b.join(bob, room)
    assert (await api.get(f"/chatroom/quit/{room}", alice.token, quitUserId=bob.id)).status == 200
    await add(api, alice, room, bob)
    await b.join(bob, room)
    sent = await b.call("sendMessage", send_payload(bob, room, "back"))
    assert (await b.next_chat())["message"]["id"] == sent["id"]


async def test_group_members_of_an_id_that_names_no_room_is_empty(api: Api, trio) -> None:
    alice, _, _ = trio
    await create_group(api, alice)
    for chatroom_id in (-1, 0, 987654, 2**63 - 1):
        resp = await api.get("/chatroom/members", alice.token, chatroomId=chatroom_id)
        assert resp.status == 200 and resp.body == [], (chatroom_id, resp.body)


@pytest.mark.parametrize("params", [{}, {"chatroomId": ""}, {"chatroomId": "abc"}, {"chatroomId": "1.5"}])
async def test_group_members_refuses_a_missing_or_non_integer_id(api: Api, trio, params: dict[str, str]) -> None:
    alice, _, _ = trio
    resp = await api.get("/chatroom/members", alice.token, **params)
    assert_error(resp.status, resp.body, 400)


async def test_group_members_and_info_are_for_members_only(api: Api, trio) -> None:
    alice, bob, carol = trio
    group = await create_group(api, alice)
    direct = await api.one_to_one(alice, bob)
    for room in (group, direct):
        members = await api.get("/chatroom/members", carol.token, chatroomId=room)
        assert_error(members.status, members.body, 403)
        info = await api.get(f"/chatroom/info/{room}", carol.token)
        assert_error(info.status, info.body, 403)
    info = await api.get(f"/chatroom/info/{direct}", bob.token)
    assert info.status == 200 and info.body["type"] is False
    assert [user["id"] for user in info.body["users"]] == sorted([alice.id, bob.id])


async def test_group_info_of_an_unknown_room_is_404_and_a_bad_id_400(api: Api, trio) -> None:
    alice, _, _ = trio
    for room_id in ("987654", "-1", "0"):
        resp = await api.get(f"/chatroom/info/{room_id}", alice.token)
        assert_error(resp.status, resp.body, 404)
    for room_id in ("abc", "1.5", "99999999999999999999"):
        resp = await api.get(f"/chatroom/info/{room_id}", alice.token)
        assert_error(resp.status, resp.body, 400)


async def test_group_join_error_paths_leave_the_members_unchanged(api: Api, trio) -> None:
    alice, bob, carol = trio
    group = await create_group(api, alice)
    direct = await api.one_to_one(alice, bob)
    cases = [
        (carol, f"/chatroom/join/{group}", {"joinUsername": carol.username}, 403),  # caller not a member
        (alice, f"/chatroom/join/{direct}", {"joinUsername": carol.username}, 400),  # one-to-one room
        (alice, f"/chatroom/join/{group}", {"joinUsername": "nobody-by-that-name"}, 400),
        (alice, f"/chatroom/join/{group}", {}, 400),
        (alice, f"/chatroom/join/{group}", {"joinUsername": ""}, 400),
        (alice, f"/chatroom/join/{group}", {"joinUsername": "u" * 51}, 400),
        (alice, "/chatroom/join/987654", {"joinUsername": carol.username}, 404),
        (alice, "/chatroom/join/abc", {"joinUsername": carol.username}, 400),
    ]
    for user, path, params, status in cases:
        resp = await api.get(path, user.token, **params)
        assert_error(resp.status, resp.body, status)
    assert await member_ids(api, alice, group) == [alice.id]
    assert await member_ids(api, alice, direct) == sorted([alice.id, bob.id])


async def test_group_quit_error_paths_leave_the_members_unchanged(api: Api, trio) -> None:
    alice, bob, carol = trio
    group = await create_group(api, alice)
    await add(api, alice, group, bob)
    direct = await api.one_to_one(alice, bob)
    cases = [
        (carol, f"/chatroom/quit/{group}", {"quitUserId": bob.id}, 403),  # caller not a member
        (carol, f"/chatroom/quit/{group}", {"quitUserId": carol.id}, 403),
        (alice, f"/chatroom/quit/{direct}", {"quitUserId": bob.id}, 400),  # one-to-one room
        (alice, f"/chatroom/quit/{direct}", {"quitUserId": alice.id}, 400),
        (alice, f"/chatroom/quit/{group}", {"quitUserId": carol.id}, 400),  # not a member
        (alice, f"/chatroom/quit/{group}", {"quitUserId": 987654}, 400),
        (alice, f"/chatroom/quit/{group}", {}, 400),
        (alice, f"/chatroom/quit/{group}", {"quitUserId": "bob"}, 400),
        (alice, "/chatroom/quit/987654", {"quitUserId": alice.id}, 404),
        (alice, "/chatroom/quit/abc", {"quitUserId": alice.id}, 400),
    ]
    for user, path, params, status in cases:
        resp = await api.get(path, user.token, **params)
        assert_error(resp.status, resp.body, status)
    assert await member_ids(api, alice, group) == sorted([alice.id, bob.id])
    assert await member_ids(api, alice, direct) == sorted([alice.id, bob.id])
