"""A user's email address is shown to that user and their friends, and left out everywhere else.

Alice and Bob are friends; Carol is in their group but a friend of neither.
Each route and event is read as Alice: Carol's address must not appear
anywhere in it, Bob's only where friends see it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import Api, User, send_payload

pytestmark = pytest.mark.both_engines


def mentions(body: Any, user: User) -> bool:
    """Whether the user's email address appears anywhere in a JSON answer or event."""
    return user.profile["email"] in json.dumps(body)


def by_id(profiles: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {profile["id"]: profile for profile in profiles}


@pytest.fixture
async def friends_and_stranger(api: Api) -> tuple[User, User, User, int]:
    """Alice and Bob, friends; Carol, a stranger to both; and a group of the three."""
    alice, bob, carol = await api.new_user("alice"), await api.new_user("bob"), await api.new_user("carol")
    assert (await api.post("/friendship/add", {"username": "bob"}, alice.token)).status == 201
    assert (await api.get(f"/friendship/agree/{alice.id}", bob.token)).status == 200
    group = (await api.get("/chatroom/create-group", alice.token, name="Three")).body
    for user in (bob, carol):
        assert (await api.get(f"/chatroom/join/{group}", alice.token, joinUsername=user.username)).status == 200
    return alice, bob, carol, group


async def test_email_user_sees_their_own_address(api: Api, friends_and_stranger) -> None:
    alice, _, carol, _ = friends_and_stranger
    for user in (alice, carol):
        assert user.profile["email"] == f"{user.username}@example.com"  # login answers it
        info = await api.get("/user/info", user.token)
        assert info.body["email"] == user.profile["email"]
        found = await api.get("/user/find", user.token, username=user.username)
        assert found.body["email"] == user.profile["email"]


async def test_email_find_shows_it_to_friends_only(api: Api, friends_and_stranger) -> None:
    alice, bob, carol, _ = friends_and_stranger
    friend = await api.get("/user/find", alice.token, username="bob")
    assert friend.body == bob.profile
    stranger = await api.get("/user/find", alice.token, username="carol")
    assert stranger.status == 200 and "email" not in stranger.body and not mentions(stranger.body, carol)
    assert stranger.body["nickName"] == carol.nick_name
    other_way = await api.get("/user/find", carol.token, username="alice")
    assert "email" not in other_way.body


async def test_email_room_members_show_it_for_the_caller_and_friends_only(api: Api, friends_and_stranger) -> None:
    alice, bob, carol, group = friends_and_stranger
    members = await api.get("/chatroom/members", alice.token, chatroomId=group)
    info = await api.get(f"/chatroom/info/{group}", alice.token)
    for profiles in (members.body, info.body["users"]):
        seen = by_id(profiles)
        # Members come with their group role (issue 15).
        assert seen[alice.id] == {**alice.profile, "role": "owner"} and seen[bob.id] == {
            **bob.profile,
            "role": "member",
        }
        assert "email" not in seen[carol.id] and seen[carol.id]["nickName"] == carol.nick_name
        assert not mentions(profiles, carol)
    # Carol sees only her own address.
    for profiles in (
        (await api.get("/chatroom/members", carol.token, chatroomId=group)).body,
        (await api.get(f"/chatroom/info/{group}", carol.token)).body["users"],
    ):
        assert [p.get("email") for p in profiles] == [None, None, carol.profile["email"]]
    # No longer friends: Bob's address goes at once.
    assert (await api.get(f"/friendship/remove/{bob.id}", alice.token)).status == 200
    members = await api.get("/chatroom/members", alice.token, chatroomId=group)
    assert "email" not in by_id(members.body)[bob.id]


async def test_email_never_rides_on_a_message(api: Api, sockets, friends_and_stranger) -> None:
    alice, bob, carol, group = friends_and_stranger
    a = await sockets(alice.token)
    await a.join(alice, group)
    acks = []
    for user, text in ((carol, "from carol"), (bob, "from bob")):
        client = await sockets(user.token)
        acks.append(await client.call("sendMessage", send_payload(None, group, text)))
    live = [await a.next_chat(), await a.next_chat()]
    history = (await api.get("/chat-history/list", alice.token, chatroomId=group)).body
    recovering = await sockets(alice.token)
    ack = await recovering.call("joinRoom", {"chatroomId": group, "lastMessageId": 0})
    assert ack["recovered"] is True and ack["count"] == 2
    replayed = [await recovering.next_chat(), await recovering.next_chat()]
    for message in acks:
        assert (await api.get("/favorite/add", alice.token, chatHistoryId=message["id"])).status == 200
    favorites = (await api.get("/favorite/list", alice.token)).body

    assert [m["message"]["content"] for m in live] == ["from carol", "from bob"]
    for seen in (acks, live, history, replayed, favorites):
        # Not even a friend's: a message goes to the whole room (and its sender profile is cached for all).
        assert not mentions(seen, carol) and not mentions(seen, bob) and '"email"' not in json.dumps(seen)
    assert history[0]["sender"] == {key: value for key, value in carol.profile.items() if key != "email"}


async def test_email_friend_requests_leave_it_out_and_the_friend_list_shows_it(api: Api, friends_and_stranger) -> None:
    alice, bob, carol, _ = friends_and_stranger
    assert (await api.post("/friendship/add", {"username": "alice"}, carol.token)).status == 201
    for user in (alice, carol):
        requests = (await api.get("/friendship/request_list", user.token)).body
        others = [r["fromUser"] for r in requests["toMe"]] + [r["toUser"] for r in requests["fromMe"]]
        assert others and all("email" not in other for other in others)
    # A request's sender is not yet a friend; once agreed, the friend list shows the address.
    assert not mentions((await api.get("/friendship/request_list", alice.token)).body, carol)
    friends = (await api.get("/friendship/list", alice.token)).body
    assert friends == [{key: bob.profile[key] for key in ("id", "username", "nickName", "email", "headPic")}]
    assert (await api.get(f"/friendship/agree/{carol.id}", alice.token)).status == 200
    friends = (await api.get("/friendship/list", alice.token)).body
    assert [f["email"] for f in friends] == [bob.profile["email"], carol.profile["email"]]
