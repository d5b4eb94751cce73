"""The whole journey of issue 3 with real clients: sign-up to friends, chat, groups and favorites."""

from __future__ import annotations

from tests.helpers import Api


async def test_journey_register_befriend_chat_group_quit_favorite(api: Api, sockets) -> None:
    # Two users register and log in.
    await api.register("ann", nickName="Ann")
    await api.register("ben", nickName="Ben")
    ann = await api.login("ann")
    ben = await api.login("ben")

    # Ann asks Ben to be friends; Ben sees the request and agrees.
    asked = await api.post("/friendship/add", {"username": "ben", "reason": "hi, it's Ann"}, ann.token)
    assert asked.status == 201
    requests = (await api.get("/friendship/request_list", ben.token)).body
    assert [(r["fromUser"]["username"], r["reason"], r["status"]) for r in requests["toMe"]] == [
        ("ann", "hi, it's Ann", 0)
    ]
    assert (await api.get(f"/friendship/agree/{ann.id}", ben.token)).status == 200
    assert [f["username"] for f in (await api.get("/friendship/list", ann.token)).body] == ["ben"]
    assert [f["username"] for f in (await api.get("/friendship/list", ben.token)).body] == ["ann"]

    # Ann opens their one-to-one chat from the friend list: find, else create.
    found = await api.get("/chatroom/findChatroom", ann.token, userId1=ann.id, userId2=ben.id)
    assert found.body is None
    room = (await api.get("/chatroom/create-one-to-one", ann.token, friendId=ben.id)).body
    a = await sockets(ann.token)
    b = await sockets(ben.token)
    await a.join(ann, room)
    await b.join(ben, room)
    hello = await a.send(ann, room, "hello Ben")
    reply = await b.send(ben, room, "hi Ann")
    for client in (a, b):
        assert [(await client.next_chat())["message"]["id"] for _ in range(2)] == [hello["id"], reply["id"]]
    history = (await api.get("/chat-history/list", ben.token, chatroomId=room)).body
    assert [(m["sender"]["nickName"], m["content"]) for m in history] == [("Ann", "hello Ben"), ("Ben", "hi Ann")]
    assert [r["name"] for r in (await api.get("/chatroom/list", ann.token)).body] == ["Ben"]

    # Ann creates a group, adds Ben and a third user Cat; all three chat.
    cat = await api.new_user("cat")
    group = (await api.get("/chatroom/create-group", ann.token, name="Weekend")).body
    for username in ("ben", "cat"):
        assert (await api.get(f"/chatroom/join/{group}", ann.token, joinUsername=username)).body == group
    members = (await api.get("/chatroom/members", cat.token, chatroomId=group)).body
    assert sorted(m["username"] for m in members) == ["ann", "ben", "cat"]
    c = await sockets(cat.token)
    for client, user in ((a, ann), (b, ben), (c, cat)):
        await client.join(user, group)
    plans = await c.send(cat, group, "plans?")
    for client in (a, b, c):
        assert (await client.next_chat())["message"]["id"] == plans["id"]

    # Cat quits: no more messages reach Cat.
    assert (await api.get(f"/chatroom/quit/{group}", cat.token, quitUserId=cat.id)).body == group
    for client in (a, b):
        assert await client.next_message(lambda m: m.get("type") == "quitRoom") == {
            "type": "quitRoom",
            "userId": cat.id,
        }
    after = await a.send(ann, group, "Cat left")
    assert (await b.next_chat())["message"]["id"] == after["id"]
    assert [event for event in c.drain() if event.get("type") == "sendMessage"] == []

    # Ann saves a message to favorites and lists it.
    saved = await api.get("/favorite/add", ann.token, chatHistoryId=plans["id"])
    assert saved.status == 200
    favorites = (await api.get("/favorite/list", ann.token)).body
    assert [
        (f["chatHistoryId"], f["chatHistory"]["content"], f["chatHistory"]["sender"]["username"]) for f in favorites
    ] == [(plans["id"], "plans?", "cat")]
