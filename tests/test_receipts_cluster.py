"""Read and typing notices between two instances behind a real Redis (issue 15), as in tests/test_redis_cluster.py."""

from __future__ import annotations

from tests.test_redis_cluster import (  # noqa: F401 (fixtures of this module too)
    cluster,
    config,
    redis_server,
)


async def test_cluster_read_and_typing_notices_reach_the_other_instance(cluster) -> None:  # noqa: F811
    a, b = cluster
    alice, bob, carol = await a.api.new_user(), await a.api.new_user(), await a.api.new_user()
    room = await a.api.group(alice, bob, carol)
    alice_a = await a.socket(alice)
    bob_b = await b.socket(bob)
    alice_b = await b.socket(alice)  # alice's other tab, on the other instance, in no room
    await alice_a.join(alice, room)
    await bob_b.join(bob, room)
    sent = await bob_b.send(bob, room, "hello across")
    ack = await alice_a.call("markRead", {"chatroomId": room, "messageId": sent["id"]})
    assert ack == {"chatroomId": room, "lastReadId": sent["id"]}
    notice = {"type": "read", "chatroomId": room, "userId": alice.id, "lastReadId": sent["id"]}
    assert await bob_b.next_message(lambda e: e.get("type") == "read") == notice
    assert await alice_b.next_message(lambda e: e.get("type") == "read") == notice
    # The other instance reads the same position from the shared database.
    resp = await b.api.get("/chatroom/list", alice.token)
    item = next(item for item in resp.body if item["id"] == room)
    assert (item["lastReadId"], item["unreadCount"]) == (sent["id"], 0)

    assert await alice_a.call("typing", {"chatroomId": room, "typing": True}) == {}
    typing = {"type": "typing", "chatroomId": room, "userId": alice.id}
    assert await bob_b.next_message(lambda e: e.get("type") == "typing") == {**typing, "typing": True}
    await alice_a.call("leaveRoom", {"chatroomId": room})
    assert await bob_b.next_message(lambda e: e.get("type") == "typing") == {**typing, "typing": False}
