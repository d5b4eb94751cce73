"""Delivery guarantees: order, idempotent sends, recovery after reconnect, send rate limits."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from chatsvc.config import Config
from tests.conftest import make_config
from tests.helpers import Api, SocketClient, User, assert_ack_error, send_payload


async def collect_chats(client: SocketClient, until_id: int) -> list[int]:
    """Ids of broadcast chat messages received until (and including) ``until_id``."""
    ids: list[int] = []
    while not ids or ids[-1] < until_id:
        ids.append((await client.next_chat())["message"]["id"])
    return ids


async def test_delivery_concurrent_senders_arrive_in_id_order_for_every_member(api: Api, sockets) -> None:
    users = [await api.new_user() for _ in range(3)]
    room = await api.one_to_one(users[0], users[1])
    # A third member joins through SQL-free means: the one-to-one room has two; use both plus a second socket.
    clients = [await sockets(users[0].token), await sockets(users[1].token), await sockets(users[1].token)]
    for client, user in zip(clients, [users[0], users[1], users[1]], strict=True):
        await client.join(user, room)

    async def burst(client: SocketClient, user: User) -> list[int]:
        acks = await asyncio.gather(*(client.call("sendMessage", send_payload(user, room, f"m{i}")) for i in range(30)))
        return [ack["id"] for ack in acks]

    acked = await asyncio.gather(burst(clients[0], users[0]), burst(clients[1], users[1]))
    all_ids = sorted(acked[0] + acked[1])
    assert len(set(all_ids)) == 60
    for client in clients:
        received = await collect_chats(client, all_ids[-1])
        assert received == all_ids
    history = await api.get("/chat-history/list", users[0].token, chatroomId=room, limit=100)
    assert [m["id"] for m in history.body] == all_ids


async def test_delivery_repeated_client_msg_id_is_stored_and_broadcast_once(api: Api, joined) -> None:
    alice, _, room, a, b = joined
    first = await a.call("sendMessage", send_payload(alice, room, "hello", clientMsgId="c-1"))
    again = await a.call("sendMessage", send_payload(alice, room, "hello", clientMsgId="c-1"))
    concurrent = await asyncio.gather(
        *(a.call("sendMessage", send_payload(alice, room, "twice", clientMsgId="c-2")) for _ in range(5))
    )
    assert first["clientMsgId"] == "c-1"
    assert again == first
    assert len({ack["id"] for ack in concurrent}) == 1
    marker = await a.call("sendMessage", send_payload(alice, room, "marker"))
    received = await collect_chats(b, marker["id"])
    assert received == [first["id"], concurrent[0]["id"], marker["id"]]
    history = await api.get("/chat-history/list", alice.token, chatroomId=room)
    assert [m["content"] for m in history.body] == ["hello", "twice", "marker"]


async def test_delivery_client_msg_id_is_per_sender(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    b = await sockets(bob.token)
    from_alice = await a.call("sendMessage", send_payload(alice, room, "a", clientMsgId="same"))
    from_bob = await b.call("sendMessage", send_payload(bob, room, "b", clientMsgId="same"))
    assert from_alice["id"] != from_bob["id"]


@pytest.mark.parametrize("bad", [17, "", "x" * 65, ["a"]])
async def test_delivery_invalid_client_msg_id_is_refused(api: Api, sockets, pair, bad: object) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    assert_ack_error(await a.call("sendMessage", send_payload(alice, room, "x", clientMsgId=bad)), 400)
    history = await api.get("/chat-history/list", alice.token, chatroomId=room)
    assert history.body == []


async def test_delivery_reconnect_with_last_message_id_catches_up_then_goes_live(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    b = await sockets(bob.token)
    await b.join(bob, room)
    seen = await a.call("sendMessage", send_payload(alice, room, "before"))
    assert (await b.next_chat())["message"]["id"] == seen["id"]
    await b.disconnect()
    missed = [(await a.call("sendMessage", send_payload(alice, room, f"missed {i}")))["id"] for i in range(5)]

    b2 = await sockets(bob.token)
    ack = await b2.call("joinRoom", {"chatroomId": room, "userId": bob.id, "lastMessageId": seen["id"]})
    assert ack == {"chatroomId": room, "recovered": True, "count": 5}
    live = await a.call("sendMessage", send_payload(alice, room, "live"))
    events = await collect_chats(b2, live["id"])
    assert events == [*missed, live["id"]]


async def test_delivery_recovery_during_concurrent_sends_has_no_gap_and_no_duplicate(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    first = await a.call("sendMessage", send_payload(alice, room, "start"))

    async def sender() -> list[int]:
        ids = []
        for i in range(60):
            ids.append((await a.call("sendMessage", send_payload(alice, room, f"n{i}")))["id"])
        return ids

    sending = asyncio.create_task(sender())
    b = await sockets(bob.token)
    ack = await b.call("joinRoom", {"chatroomId": room, "userId": bob.id, "lastMessageId": first["id"]})
    assert ack["recovered"] is True
    sent = await sending
    received = await collect_chats(b, sent[-1])
    assert received == sent


async def test_delivery_recovery_over_the_limit_tells_the_client_to_read_history(
    config: Config, tmp_path, api: Api, sockets, pair
) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    for i in range(config.recovery_limit + 1):
        await a.emit("sendMessage", send_payload(alice, room, f"m{i}"))
    last = await a.call("sendMessage", send_payload(alice, room, "last"))
    b = await sockets(bob.token)
    ack = await b.call("joinRoom", {"chatroomId": room, "userId": bob.id, "lastMessageId": 0})
    assert ack == {"chatroomId": room, "recovered": False}
    # Still joined: live messages keep coming.
    live = await a.call("sendMessage", send_payload(alice, room, "live"))
    assert (await b.next_chat())["message"]["id"] == live["id"] > last["id"]


@pytest.fixture
def config(tmp_path) -> Config:
    return make_config(tmp_path, rate_limit=1000, rate_burst=1000, recovery_limit=20, max_connections_per_user=3)


async def test_delivery_ack_means_the_row_is_committed(config: Config, api: Api, sockets, pair) -> None:
    alice, _, room = pair
    a = await sockets(alice.token)
    ack = await a.call("sendMessage", send_payload(alice, room, "durable"))
    # A separate connection sees the row the moment the ack arrives.
    with sqlite3.connect(config.db_path) as conn:
        row = conn.execute("SELECT content FROM chat_history WHERE id = ?", (ack["id"],)).fetchone()
        sync = conn.execute("PRAGMA synchronous").fetchone()
    assert row == ("durable",)
    assert sync is not None
