"""Several chatsvc instances over one database, sharing rooms through a real Redis (chatsvc/fanout/redis.py).

Each test starts its own ``redis-server`` on a free loopback port and two
instances (A and B) on one SQLite file: in-process apps built by the real
factory, and in one test two real ``python -m chatsvc serve`` processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bench.servers import RedisServer
from chatsvc.app import create_app
from chatsvc.config import Config
from chatsvc.db import SqliteDatabase
from chatsvc.fanout.local import LocalFanout
from chatsvc.fanout.redis import RedisFanout
from chatsvc.order_lock import FileOrderLock, NoOrderLock, order_lock_for, order_lock_path
from chatsvc.realtime.server import LeanManager
from chatsvc.state import STATE, AppState
from chatsvc.store import captchas
from tests.conftest import make_config
from tests.helpers import (
    Api,
    SocketClient,
    User,
    assert_ack_error,
    assert_error,
    connect_socket,
    send_payload,
    until,
)
from tests.process import ChatsvcProcess, free_port

REDIS_SERVER = shutil.which("redis-server")
DEADLINE = 15.0


async def chat_ids(client: SocketClient, count: int, *, after: int = 0, timeout: float = 10.0) -> list[int]:
    """The ids of the next ``count`` chat messages the client receives, skipping ids up to ``after``."""
    ids: list[int] = []
    while len(ids) < count:
        message_id = (await client.next_chat(timeout))["message"]["id"]
        if message_id > after:
            ids.append(message_id)
    return ids


async def streams(client: SocketClient, user: User, room: int, *, streams: int = 4, each: int = 25) -> list[int]:
    """Send from several concurrent closed loops (many small write batches); the acked ids."""

    async def stream(k: int) -> list[int]:
        return [(await client.call("sendMessage", send_payload(user, room, f"m{k}.{i}")))["id"] for i in range(each)]

    return [message_id for ids in await asyncio.gather(*(stream(k) for k in range(streams))) for message_id in ids]


def require_redis_server() -> None:
    """Skip without redis-server, except in CI, where its absence is a failure."""
    if REDIS_SERVER is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    require_redis_server()
    assert REDIS_SERVER is not None
    server = RedisServer(REDIS_SERVER, free_port(), tmp_path, tmp_path / "redis-server.log")
    await server.start(None)
    yield server
    await server.stop()


@dataclass
class Instance:
    """One in-process chatsvc app on its own port, with an HTTP client and its sockets."""

    name: str
    server: TestServer
    api: Api
    sockets: list[SocketClient] = field(default_factory=list)

    @property
    def state(self) -> AppState:
        return self.server.app[STATE]

    @property
    def fanout(self) -> RedisFanout:
        fanout = self.state.fanout
        assert isinstance(fanout, RedisFanout)
        return fanout

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def socket(self, user: User) -> SocketClient:
        client = await connect_socket(self.url, user.token)
        self.sockets.append(client)
        return client


@pytest.fixture
def config(tmp_path: Path, redis_server: RedisServer) -> Config:
    return make_config(tmp_path, redis_url=redis_server.url, rate_limit=0)


@pytest.fixture
async def cluster(config: Config) -> AsyncIterator[tuple[Instance, Instance]]:
    """Instances A and B over one database and one Redis, both listening to the channel."""
    async with aiohttp.ClientSession() as session:
        instances = []
        for name in ("A", "B"):
            server = TestServer(create_app(config), host="127.0.0.1")
            await server.start_server()
            instances.append(Instance(name, server, Api(str(server.make_url("")).rstrip("/"), session)))
        a, b = instances
        await until(lambda: a.fanout.ordered() and b.fanout.ordered(), "both instances to listen to Redis", DEADLINE)
        yield a, b
        for instance in instances:
            for client in instance.sockets:
                if client.sio.connected:
                    await client.disconnect()
            await instance.server.close()


async def test_cluster_members_on_two_instances_get_every_message_once_in_id_order(cluster) -> None:
    a, b = cluster
    alice, bob, carol = await a.api.new_user(), await a.api.new_user(), await a.api.new_user()
    room = await a.api.group(alice, bob, carol)
    on_a = await a.socket(alice)
    on_b = await b.socket(bob)
    also_on_b = await b.socket(carol)
    await on_a.join(alice, room)
    await on_b.join(bob, room)
    # joinRoom reaches the room on the other instance too.
    await on_a.next_message(lambda m: m == {"type": "joinRoom", "userId": bob.id})
    await also_on_b.join(carol, room)

    acked = await asyncio.gather(streams(on_a, alice, room), streams(on_b, bob, room), streams(also_on_b, carol, room))
    all_ids = sorted(acked[0] + acked[1] + acked[2])
    assert len(set(all_ids)) == 300
    fence = (await on_a.call("sendMessage", send_payload(alice, room, "fence")))["id"]
    for client in (on_a, on_b, also_on_b):
        # Exactly these, in id order; then the fence proves nothing came twice.
        assert await chat_ids(client, 301) == [*all_ids, fence]
    history = await b.api.get("/chat-history/list", bob.token, chatroomId=room, limit=400)
    assert [m["id"] for m in history.body] == [*all_ids, fence]


async def test_cluster_client_moving_to_the_other_instance_misses_nothing(cluster) -> None:
    a, b = cluster
    alice, bob, carol = await a.api.new_user(), await a.api.new_user(), await a.api.new_user()
    room = await a.api.group(alice, bob, carol)
    alice_a = await a.socket(alice)
    carol_b = await b.socket(carol)
    bob_a = await a.socket(bob)
    await bob_a.join(bob, room)
    seen = await alice_a.call("sendMessage", send_payload(alice, room, "seen"))
    assert (await bob_a.next_chat())["message"]["id"] == seen["id"]
    await bob_a.disconnect()
    missed = [(await carol_b.call("sendMessage", send_payload(carol, room, f"missed{i}")))["id"] for i in range(5)]
    stop = asyncio.Event()

    async def sender(client: SocketClient, user: User) -> None:
        while not stop.is_set():
            await client.call("sendMessage", send_payload(user, room, "live"))

    # Both instances keep storing while bob hops between them: each catch-up must meet the live stream exactly.
    sending = asyncio.gather(*(sender(alice_a, alice) for _ in range(4)), *(sender(carol_b, carol) for _ in range(4)))
    last = seen["id"]
    try:
        for hop in range(6):
            instance = (b, a)[hop % 2]
            bob_now = await instance.socket(bob)
            ack = await bob_now.call("joinRoom", {"chatroomId": room, "userId": bob.id, "lastMessageId": last})
            assert ack["recovered"] is True, ack
            received = await chat_ids(bob_now, 30)
            if hop == 0:
                assert received[: len(missed)] == missed
            history = await a.api.get(
                "/chat-history/list", bob.token, chatroomId=room, afterId=last, limit=len(received)
            )
            # No gap, no duplicate, id order: exactly the stored messages after lastMessageId.
            assert received == [m["id"] for m in history.body], f"hop {hop} to {instance.name}"
            await bob_now.disconnect()
            last = received[-1]
    finally:
        stop.set()
        await sending


async def test_cluster_quit_on_one_instance_takes_effect_on_the_other_before_it_answers(cluster) -> None:
    a, b = cluster
    alice, bob, carol, dave = [await a.api.new_user() for _ in range(4)]
    room = await a.api.group(alice, bob, carol)
    alice_a = await a.socket(alice)
    bob_b = await b.socket(bob)
    carol_b = await b.socket(carol)
    for client, user in ((alice_a, alice), (bob_b, bob), (carol_b, carol)):
        await client.join(user, room)
    # B caches the room's members now.
    assert "id" in await bob_b.call("sendMessage", send_payload(bob, room, "before"))

    quit_resp = await a.api.get(f"/chatroom/quit/{room}", alice.token, quitUserId=bob.id)
    assert quit_resp.status == 200, quit_resp.body
    # No waiting: the quit answered only once every instance applied it.
    assert_ack_error(await bob_b.call("sendMessage", send_payload(bob, room, "after quit")), 403)
    after = await alice_a.call("sendMessage", send_payload(alice, room, "without bob"))
    await carol_b.next_message(lambda m: m == {"type": "quitRoom", "userId": bob.id})
    assert (await carol_b.next_chat())["message"]["id"] == after["id"]
    # bob's socket sits on the same instance as carol's: had it still been in the room, it would have it by now.
    assert all(m.get("message", {}).get("id") != after["id"] for m in bob_b.drain())

    # A member added through A may send through B at once, although B cached the room without them.
    join_resp = await a.api.get(f"/chatroom/join/{room}", alice.token, joinUsername=dave.username)
    assert join_resp.status == 200, join_resp.body
    dave_b = await b.socket(dave)
    await dave_b.join(dave, room)
    assert "id" in await dave_b.call("sendMessage", send_payload(dave, room, "new here"))


async def test_cluster_profile_change_reaches_the_other_instances_cache(cluster, config: Config) -> None:
    a, b = cluster
    alice, bob = await a.api.new_user(), await a.api.new_user()
    room = await a.api.group(alice, bob)
    bob_b = await b.socket(bob)
    first = await bob_b.call("sendMessage", send_payload(bob, room, "old name"))
    assert first["sender"]["nickName"] == bob.nick_name  # B caches bob's profile now

    assert (await a.api.get("/user/update/captcha", bob.token)).status == 200
    with sqlite3.connect(config.db_path) as conn:
        (code,) = conn.execute(
            "SELECT code FROM captcha WHERE purpose = ? AND address = ?", (captchas.UPDATE_USER, bob.profile["email"])
        ).fetchone()
    body = {"nickName": "Bobby", "email": bob.profile["email"], "captcha": code}
    updated = await a.api.post("/user/update", body, bob.token)
    assert updated.status == 201, updated.body

    names: list[str] = []

    async def send_and_note() -> None:
        names.append((await bob_b.call("sendMessage", send_payload(bob, room, "new name")))["sender"]["nickName"])

    deadline = time.monotonic() + DEADLINE
    await send_and_note()
    while names[-1] != "Bobby":
        assert time.monotonic() < deadline, f"B kept the old profile in {len(names)} messages: {names[-1]}"
        await asyncio.sleep(0.02)
        await send_and_note()


async def test_cluster_password_reset_disconnects_sockets_on_every_instance(cluster, config: Config) -> None:
    a, b = cluster
    bob = await a.api.new_user()
    bob_b = await b.socket(bob)
    gone = asyncio.Event()
    bob_b.sio.on("disconnect", lambda *_: gone.set())
    email = bob.profile["email"]
    assert (await a.api.get("/user/update_password/captcha", address=email)).status == 200
    with sqlite3.connect(config.db_path) as conn:
        (code,) = conn.execute(
            "SELECT code FROM captcha WHERE purpose = ? AND address = ?", (captchas.UPDATE_PASSWORD, email)
        ).fetchone()
    body = {"username": bob.username, "email": email, "password": "another123", "captcha": code}
    assert (await a.api.post("/user/update_password", body)).status == 201
    await asyncio.wait_for(gone.wait(), DEADLINE)


async def test_cluster_logout_on_one_instance_ends_the_token_on_the_other_before_it_answers(cluster) -> None:
    a, b = cluster
    bob = await a.api.new_user()
    # B has checked bob's token, so B caches his account now.
    assert (await b.api.get("/user/info", bob.token)).status == 200

    assert (await a.api.post("/user/logout", token=bob.token)).status == 201
    refused = await b.api.get("/user/info", bob.token)
    assert_error(refused.status, refused.body, 401)


async def test_cluster_instance_cut_off_from_redis_checks_every_token_in_the_database(
    cluster, redis_server: RedisServer
) -> None:
    a, b = cluster
    bob = await a.api.new_user()
    assert (await b.api.get("/user/info", bob.token)).status == 200
    await redis_server.stop()
    await until(lambda: not a.fanout.ordered() and not b.fanout.ordered(), "both instances to notice", DEADLINE)

    # The revocation cannot reach B through Redis; B must not trust what it cached.
    assert (await a.api.post("/user/logout", token=bob.token)).status == 201
    refused = await b.api.get("/user/info", bob.token)
    assert_error(refused.status, refused.body, 401)

    await redis_server.start(None)
    await until(lambda: a.fanout.ordered() and b.fanout.ordered(), "fan-out to resume", DEADLINE)
    again = await a.api.login(bob.username)
    assert (await b.api.get("/user/info", again.token)).status == 200
    assert (await a.api.post("/user/logout", token=again.token)).status == 201
    refused = await b.api.get("/user/info", again.token)
    assert_error(refused.status, refused.body, 401)


async def test_cluster_redis_outage_keeps_local_delivery_and_fan_out_resumes(
    cluster, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsvc.fanout.redis")
    a, b = cluster
    alice, bob, carol = await a.api.new_user(), await a.api.new_user(), await a.api.new_user()
    room = await a.api.group(alice, bob, carol)
    alice_a, carol_a, bob_b = await a.socket(alice), await a.socket(carol), await b.socket(bob)
    for client, user in ((alice_a, alice), (carol_a, carol), (bob_b, bob)):
        await client.join(user, room)

    await redis_server.stop()
    await until(lambda: not a.fanout.ordered() and not b.fanout.ordered(), "both instances to notice", DEADLINE)
    assert any(r.levelno == logging.ERROR and "Redis fan-out fault" in r.getMessage() for r in caplog.records)

    # Each instance still serves its own sockets.
    local_a = await alice_a.call("sendMessage", send_payload(alice, room, "only on A"))
    assert (await carol_a.next_chat())["message"]["id"] == local_a["id"]
    assert (await alice_a.next_chat())["message"]["id"] == local_a["id"]
    local_b = await bob_b.call("sendMessage", send_payload(bob, room, "only on B"))
    assert (await bob_b.next_chat())["message"]["id"] == local_b["id"]

    await redis_server.start(None)
    await until(lambda: a.fanout.ordered() and b.fanout.ordered(), "fan-out to resume", DEADLINE)
    assert any("Redis fan-out resumed" in r.getMessage() for r in caplog.records)
    for client in (alice_a, carol_a, bob_b):
        client.drain()
    across = await bob_b.call("sendMessage", send_payload(bob, room, "from B again"))
    assert (await alice_a.next_chat())["message"]["id"] == across["id"]
    assert (await carol_a.next_chat())["message"]["id"] == across["id"]
    back = await alice_a.call("sendMessage", send_payload(alice, room, "from A again"))
    assert await chat_ids(bob_b, 2) == [across["id"], back["id"]]


async def test_cluster_starts_without_redis_and_joins_the_stream_when_it_comes(tmp_path: Path) -> None:
    require_redis_server()
    assert REDIS_SERVER is not None
    redis_server = RedisServer(REDIS_SERVER, free_port(), tmp_path, tmp_path / "redis-server.log")
    config = make_config(tmp_path, redis_url=redis_server.url, rate_limit=0)
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(str(server.make_url("")).rstrip("/"), session)
            alice, bob = await api.new_user(), await api.new_user()
            room = await api.one_to_one(alice, bob)
            alice_s = await connect_socket(api.base_url, alice.token)
            bob_s = await connect_socket(api.base_url, bob.token)
            await alice_s.join(alice, room)
            await bob_s.join(bob, room)
            sent = await alice_s.call("sendMessage", send_payload(alice, room, "no redis yet"))
            assert (await bob_s.next_chat())["message"]["id"] == sent["id"]
            await redis_server.start(None)
            fanout = server.app[STATE].fanout
            assert isinstance(fanout, RedisFanout)
            await until(fanout.ordered, "the instance to join the stream", DEADLINE)
            sent = await alice_s.call("sendMessage", send_payload(alice, room, "through redis"))
            assert (await bob_s.next_chat())["message"]["id"] == sent["id"]
            await alice_s.disconnect()
            await bob_s.disconnect()
    finally:
        await server.close()
        await redis_server.stop()


async def test_cluster_two_processes_store_every_message_once_and_deliver_in_order(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    db = tmp_path / "shared.db"
    env = {
        "CHATSVC_REDIS_URL": redis_server.url,
        "CHATSVC_RATE_LIMIT": "0",
        "CHATSVC_JWT_SECRET": "a-cluster-test-secret-of-32-bytes-or-more",
    }
    processes = [ChatsvcProcess(db, env=env), ChatsvcProcess(db, env=env)]
    for process in processes:
        await process.start()
    try:
        async with aiohttp.ClientSession() as session:
            api_a, api_b = (Api(process.url, session) for process in processes)
            alice, bob = await api_a.new_user(), await api_b.new_user()
            room = await api_a.one_to_one(alice, bob)
            on_a = await connect_socket(api_a.base_url, alice.token)
            on_b = await connect_socket(api_b.base_url, bob.token)
            await on_a.join(alice, room)
            await on_b.join(bob, room)
            deadline = time.monotonic() + DEADLINE
            while await redis_server.subscribers("chatsvc") < 2:
                assert time.monotonic() < deadline, "both processes should subscribe"
                await asyncio.sleep(0.02)
            # Each process publishes its probe right after subscribing; a message that crossed proves it passed.
            while True:
                warm = await on_b.call("sendMessage", send_payload(bob, room, "warm-up"))
                try:
                    await on_a.next_message(lambda m, w=warm["id"]: m.get("message", {}).get("id") == w, timeout=0.5)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "cross-process delivery never started"
            acked = await asyncio.gather(streams(on_a, alice, room, each=40), streams(on_b, bob, room, each=40))
            all_ids = sorted(acked[0] + acked[1])
            assert len(set(all_ids)) == 320
            fence = (await on_a.call("sendMessage", send_payload(alice, room, "fence")))["id"]
            for client in (on_a, on_b):
                received = await chat_ids(client, 321, after=all_ids[0] - 1)
                assert received == [*all_ids, fence]
            await on_a.disconnect()
            await on_b.disconnect()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await process.wait(15)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id FROM chat_history WHERE content LIKE 'm%' ORDER BY id").fetchall()
        assert [row[0] for row in rows] == all_ids
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_cluster_instance_stores_and_publishes_only_under_the_shared_order_lock(cluster, config: Config) -> None:
    a, _ = cluster
    alice, bob = await a.api.new_user(), await a.api.new_user()
    room = await a.api.one_to_one(alice, bob)
    alice_a = await a.socket(alice)
    other_instance = FileOrderLock(order_lock_path(config.db_path))
    await other_instance.open()
    try:
        async with other_instance.held():
            sending = asyncio.create_task(alice_a.call("sendMessage", send_payload(alice, room, "waits")))
            # While another instance stores and publishes, this one must not: its ack cannot come.
            done, _ = await asyncio.wait([sending], timeout=0.3)
            assert not done
        assert "id" in await asyncio.wait_for(sending, DEADLINE)
    finally:
        await other_instance.close()


async def test_cluster_database_write_waits_out_another_process_lock(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    db = SqliteDatabase(path, busy_timeout_ms=20)
    await db.open()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        # The other "process" keeps the write lock for longer than the busy timeout, then lets go.
        asyncio.get_running_loop().call_later(0.15, holder.execute, "ROLLBACK")
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO setting (key, value) VALUES ('k', 'v')")
        holder.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.15, holder.execute, "ROLLBACK")
        await db.write_statement(lambda conn: conn.execute("INSERT INTO setting (key, value) VALUES ('k2', 'v')"))
    finally:
        holder.close()
        await db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM setting WHERE key IN ('k', 'k2')").fetchone() == (2,)


def test_cluster_settings_come_from_the_environment(tmp_path: Path) -> None:
    config = Config.from_env({"CHATSVC_REDIS_URL": "redis://127.0.0.1:6390/2", "CHATSVC_REDIS_CHANNEL": "chat-a"})
    assert (config.redis_url, config.redis_channel) == ("redis://127.0.0.1:6390/2", "chat-a")
    assert Config.from_env({}).redis_url is None
    with pytest.raises(ValueError, match="CHATSVC_REDIS_URL"):
        Config.from_env({"CHATSVC_REDIS_URL": "http://127.0.0.1:6379"})
    # One instance delivers in-process and takes no cross-process lock; with Redis, python-socketio's
    # manager still keeps only this instance's rooms, and the writer shares the order lock.
    single = make_config(tmp_path)
    state = create_app(single)[STATE]
    assert type(state.fanout) is LocalFanout
    assert type(order_lock_for(single)) is NoOrderLock
    assert type(state.sio.manager) is LeanManager
    shared = single.with_changes(redis_url="redis://127.0.0.1:6390/2")
    state = create_app(shared)[STATE]
    assert type(state.fanout) is RedisFanout
    assert type(order_lock_for(shared)) is FileOrderLock
    assert type(state.sio.manager) is LeanManager
