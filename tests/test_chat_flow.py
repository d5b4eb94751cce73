"""The chat core end to end: log in, find-or-create a room, join, talk, read history."""

from __future__ import annotations

import pytest

from tests.helpers import Api, send_payload

pytestmark = pytest.mark.both_engines


async def test_two_users_chat_live_and_history_lists_it(api: Api, sockets) -> None:
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")

    found = await api.get("/chatroom/findChatroom", alice.token, userId1=alice.id, userId2=bob.id)
    assert found.status == 200 and found.body is None
    room = await api.one_to_one(alice, bob)
    assert isinstance(room, int)
    found = await api.get("/chatroom/findChatroom", bob.token, userId1=bob.id, userId2=alice.id)
    assert found.body == room

    a = await sockets(alice.token)
    b = await sockets(bob.token)
    await a.join(alice, room)
    await b.join(bob, room)
    assert await a.next_message() == {"type": "joinRoom", "userId": bob.id}

    ack = await a.call("sendMessage", send_payload(alice, room, "hi bob"))
    assert ack["content"] == "hi bob" and ack["senderId"] == alice.id and ack["type"] == 0
    await b.emit("sendMessage", send_payload(bob, room, "http://x/y.png", kind="image"))

    for client in (a, b):
        first = await client.next_chat()
        second = await client.next_chat()
        assert first["userId"] == alice.id and first["message"]["content"] == "hi bob"
        assert first["message"]["sender"] == {
            "id": alice.id,
            "username": "alice",
            "nickName": "Nick alice",
            "headPic": "",
            "createTime": alice.profile["createTime"],
        }
        assert second["userId"] == bob.id and second["message"]["type"] == 1
        assert second["message"]["sender"]["username"] == "bob"
        assert first["message"]["id"] < second["message"]["id"]

    history = await api.get("/chat-history/list", alice.token, chatroomId=room)
    assert history.status == 200
    assert [m["content"] for m in history.body] == ["hi bob", "http://x/y.png"]
    assert history.body[0] == ack
    assert set(history.body[0]) >= {
        "id",
        "content",
        "type",
        "chatroomId",
        "senderId",
        "createTime",
        "updateTime",
        "sender",
    }

    listed = await api.get("/chatroom/list", alice.token)
    assert listed.body == [
        {
            "id": room,
            "name": "Nick bob",
            "type": False,
            "createTime": listed.body[0]["createTime"],
            "userCount": 2,
            "userIds": sorted([alice.id, bob.id]),
            # Alice's own message read her up to it; bob's after it is unread and the newest.
            "lastReadId": ack["id"],
            "unreadCount": 1,
            "lastMessage": history.body[-1],
        }
    ]
