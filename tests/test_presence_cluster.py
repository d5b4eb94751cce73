"""Presence and the live room list across two instances behind one real Redis (chatsvc/presence.py RedisCounter).

The instances and Redis are those of tests/test_redis_cluster.py; the grace
period is short, and waits are on events (or, for a timer that must pass
without a notice, on the instance's own pending set) with timeouts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.servers import RedisServer
from chatsvc.config import Config
from chatsvc.presence import RedisCounter
from tests.conftest import make_config
from tests.helpers import User, until
from tests.test_presence_roles import befriend, presence_of, until_marker
from tests.test_redis_cluster import DEADLINE, Instance, cluster, redis_server  # noqa: F401 - fixtures

GRACE = 0.2


@pytest.fixture
def config(tmp_path: Path, redis_server: RedisServer) -> Config:  # noqa: F811 - this module's settings
    return make_config(
        tmp_path,
        redis_url=redis_server.url,
        rate_limit=0,
        presence_grace=GRACE,
        presence_ttl=3,
        # A client's disconnect may abort its connection before its last packet is written: the pings find it.
        ping_interval=1,
        ping_timeout=1,
    )


async def grace_passed(instance: Instance, user: User) -> None:
    await until(lambda: user.id not in instance.state.presence._pending, "the grace period to pass")


async def test_presence_counts_sockets_on_every_instance_and_announces_each_change_once(cluster) -> None:  # noqa: F811
    a, b = cluster
    alice, bob, carol = await a.api.new_user(), await a.api.new_user(), await a.api.new_user()
    await befriend(a.api, alice, bob)
    await befriend(a.api, carol, bob)
    watcher = await b.socket(bob)

    on_a = await a.socket(alice)
    online = await watcher.next_message(presence_of(alice, True))
    on_b = await b.socket(alice)  # a second socket, on the other instance: no second notice
    await on_a.disconnect()
    await until(lambda: alice.id not in a.state.presence.counter.local, "A to see the socket go", DEADLINE)
    await grace_passed(a, alice)
    assert (await b.api.get("/user/presence", bob.token, ids=str(alice.id))).body == [
        {"id": alice.id, "online": True, "lastSeen": online["lastSeen"]}
    ]
    assert (await a.api.get("/user/presence", bob.token, ids=str(alice.id))).body[0]["online"] is True
    await a.socket(carol)  # the marker
    assert [m for m in await until_marker(watcher, presence_of(carol, True)) if m.get("type") == "presence"] == []

    await on_b.disconnect()
    offline = await watcher.next_message(presence_of(alice), DEADLINE)
    assert offline["online"] is False
    assert (await a.api.get("/user/presence", bob.token, ids=str(alice.id))).body[0]["online"] is False


async def test_presence_of_a_crashed_instance_expires(cluster) -> None:  # noqa: F811
    a, b = cluster
    alice, bob = await a.api.new_user(), await a.api.new_user()
    await befriend(a.api, alice, bob)
    await a.socket(alice)
    counter = a.state.presence.counter
    assert isinstance(counter, RedisCounter)
    assert (await b.api.get("/user/presence", bob.token, ids=str(alice.id))).body[0]["online"] is True
    # A crash: A stops refreshing its counts (its sockets stay, but nothing renews them in Redis).
    assert counter._refresher is not None
    counter._refresher.cancel()
    deadline = asyncio.get_running_loop().time() + 10 * counter.ttl
    while (await b.api.get("/user/presence", bob.token, ids=str(alice.id))).body[0]["online"]:
        assert asyncio.get_running_loop().time() < deadline, "a crashed instance's counts never expired"
        await asyncio.sleep(0.1)  # polling Redis for the expiry, not a synchronisation


async def test_live_room_list_crosses_instances(cluster) -> None:  # noqa: F811
    a, b = cluster
    alice, bob = await a.api.new_user(), await a.api.new_user()
    watcher = await b.socket(bob)
    room = (await a.api.get("/chatroom/create-group", alice.token, name="Team")).body
    await a.api.get(f"/chatroom/join/{room}", alice.token, joinUsername=bob.username)
    added = await watcher.next_message(lambda m: m.get("type") == "roomAdded")
    assert added["chatroom"] == (await b.api.get("/chatroom/list", bob.token)).body[0]
    await a.api.get(f"/chatroom/quit/{room}", alice.token, quitUserId=bob.id)
    assert await watcher.next_message(lambda m: m.get("type") == "roomRemoved") == {
        "type": "roomRemoved",
        "chatroomId": room,
    }
