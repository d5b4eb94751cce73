"""chatsvc on several hosts: real processes that share no file, one PostgreSQL, one Redis.

Each instance is a ``python -m chatsvc serve`` process with a working folder
of its own; they meet only in the database (the session's PostgreSQL server,
a fresh database per test) and on the Redis channel (a redis-server per
test). What they must keep across hosts: id order for every member, one
message per ``clientMsgId``, recovery on any instance, cache invalidation at
once, and (chatsvc/store/postgres.py PostgresOrderLock) no batch stored or
published while another instance holds the order lock. Then the faults:
PostgreSQL restarted under load, and an instance killed mid-stream.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bench.servers import RedisServer
from chatsvc.config import Config
from chatsvc.order_lock import FileOrderLock, order_lock_for
from chatsvc.store.postgres import ORDER_LOCK_KEY, PostgresOrderLock
from chatsvc.testing_postgres import PostgresServer, find_bindir
from tests.helpers import Api, SocketClient, User, assert_ack_error, connect_socket, send_payload, tool_missing
from tests.process import ChatsvcProcess
from tests.test_redis_cluster import chat_ids, redis_server, streams  # noqa: F401  # redis_server: a fixture
from tests.test_shutdown_and_crash import send_until_stopped

DEADLINE = 20.0
SECRET = "a-cluster-test-secret-of-32-bytes-or-more"
# A send is answered within this while PostgreSQL is down (docs/guarantees.md states the bound the service keeps).
ANSWER_TIMEOUT = 25.0


class Host:
    """One chatsvc process with its own working folder, its HTTP API and the sockets opened on it."""

    def __init__(self, name: str, folder: Path, database_url: str, redis_url: str) -> None:
        self.name = name
        self.folder = folder
        folder.mkdir()
        env = {
            "CHATSVC_DATABASE_URL": database_url,
            "CHATSVC_REDIS_URL": redis_url,
            "CHATSVC_RATE_LIMIT": "0",
            "CHATSVC_JWT_SECRET": SECRET,
        }
        # --db names a file in the host's own folder: with a database URL it must never be created.
        self.process = ChatsvcProcess(folder / "chat.db", env=env)
        self.sockets: list[SocketClient] = []
        self.api: Api

    async def socket(self, user: User) -> SocketClient:
        client = await connect_socket(self.process.url, user.token)
        self.sockets.append(client)
        return client


@pytest.fixture
async def hosts(
    tmp_path: Path,
    postgres_database_url: str,
    redis_server: RedisServer,  # noqa: F811
) -> AsyncIterator[list[Host]]:
    """Hosts A and B, started and subscribed to the channel, with a warm-up message across them."""
    started = [Host(name, tmp_path / name, postgres_database_url, redis_server.url) for name in ("A", "B")]
    async with aiohttp.ClientSession() as session:
        try:
            for host in started:
                await host.process.start()
                host.api = Api(host.process.url, session)
            await until_subscribed(redis_server, len(started))
            yield started
        finally:
            for host in started:
                for client in host.sockets:
                    if client.sio.connected:
                        await client.disconnect()
                host.process.kill()
            for host in started:
                if host.process.proc is not None:
                    await host.process.wait(15)
                    # Shown when the test fails: what each host logged.
                    print(f"--- host {host.name} ---\n{await host.process.stderr()}")


async def until_subscribed(redis_server: RedisServer, count: int) -> None:  # noqa: F811
    deadline = time.monotonic() + DEADLINE
    while await redis_server.subscribers("chatsvc") < count:
        assert time.monotonic() < deadline, f"{count} processes should subscribe"
        await asyncio.sleep(0.02)


async def crossing(sender: SocketClient, user: User, room: int, receiver: SocketClient) -> None:
    """Send until one message crosses to the other host: each process's probe has then passed and order holds."""
    deadline = time.monotonic() + DEADLINE
    while True:
        warm = await sender.call("sendMessage", send_payload(user, room, "warm-up"))
        try:
            await receiver.next_message(lambda m, w=warm["id"]: m.get("message", {}).get("id") == w, timeout=0.5)
            return
        except TimeoutError:
            assert time.monotonic() < deadline, "cross-host delivery never started"


async def test_postgres_cluster_every_member_gets_the_room_in_id_order_across_hosts(hosts: list[Host]) -> None:
    a, b = hosts
    alice, carol = await a.api.new_user(), await a.api.new_user()
    bob, dave = await b.api.new_user(), await b.api.new_user()
    room = await a.api.group(alice, bob, carol, dave)
    alice_a, carol_a = await a.socket(alice), await a.socket(carol)
    bob_b, dave_b = await b.socket(bob), await b.socket(dave)
    for client, user in ((alice_a, alice), (carol_a, carol), (bob_b, bob), (dave_b, dave)):
        await client.join(user, room)
    await crossing(bob_b, bob, room, alice_a)
    await crossing(alice_a, alice, room, bob_b)
    for client in (alice_a, carol_a, bob_b, dave_b):
        client.drain()

    # Senders on both hosts at once, each with several calls in flight: many small batches race for the lock.
    acked = await asyncio.gather(
        streams(alice_a, alice, room, each=30), streams(bob_b, bob, room, each=30), streams(dave_b, dave, room, each=30)
    )
    all_ids = sorted(acked[0] + acked[1] + acked[2])
    assert len(set(all_ids)) == 360
    fence = (await carol_a.call("sendMessage", send_payload(carol, room, "fence")))["id"]
    for client in (alice_a, carol_a, bob_b, dave_b):
        # Exactly these, ascending, whichever host sent them and whichever the member is on.
        assert await chat_ids(client, 361, after=all_ids[0] - 1) == [*all_ids, fence]
    history = await b.api.get("/chat-history/list", dave.token, chatroomId=room, afterId=all_ids[0] - 1, limit=400)
    assert [m["id"] for m in history.body] == [*all_ids, fence]
    for host in hosts:
        # Nothing on either host that the other would need: not even the SQLite file --db names.
        assert not host.process.db_path.exists()
        assert not any(path.name.startswith("chat.db") for path in host.folder.rglob("*"))


async def test_postgres_cluster_retry_on_the_other_host_returns_the_original(hosts: list[Host]) -> None:
    a, b = hosts
    alice, bob = await a.api.new_user(), await b.api.new_user()
    room = await a.api.one_to_one(alice, bob)
    alice_a, alice_b, bob_b = await a.socket(alice), await b.socket(alice), await b.socket(bob)
    await bob_b.join(bob, room)
    await crossing(alice_a, alice, room, bob_b)
    bob_b.drain()

    original = await alice_a.call("sendMessage", send_payload(alice, room, "once", clientMsgId="retry-1"))
    # The connection to A dropped before the ack arrived, say: the client retries through B.
    retried = await alice_b.call("sendMessage", send_payload(alice, room, "once", clientMsgId="retry-1"))
    assert retried["id"] == original["id"]
    # Concurrent retries on both hosts still make one message.
    racing = await asyncio.gather(
        *(
            client.call("sendMessage", send_payload(alice, room, "race", clientMsgId="retry-2"))
            for client in (alice_a, alice_b, alice_a, alice_b)
        )
    )
    assert len({ack["id"] for ack in racing}) == 1
    fence = await alice_a.call("sendMessage", send_payload(alice, room, "fence"))
    assert await chat_ids(bob_b, 3) == [original["id"], racing[0]["id"], fence["id"]]
    history = await a.api.get("/chat-history/list", bob.token, chatroomId=room, afterId=original["id"] - 1, limit=10)
    assert [m["id"] for m in history.body] == [original["id"], racing[0]["id"], fence["id"]]


async def test_postgres_cluster_recovery_with_last_message_id_on_the_other_host(hosts: list[Host]) -> None:
    a, b = hosts
    alice, bob = await a.api.new_user(), await a.api.new_user()
    room = await a.api.one_to_one(alice, bob)
    alice_a, bob_a = await a.socket(alice), await a.socket(bob)
    await bob_a.join(bob, room)
    seen = await alice_a.call("sendMessage", send_payload(alice, room, "seen"))
    assert (await bob_a.next_chat())["message"]["id"] == seen["id"]
    await bob_a.disconnect()
    missed = [(await alice_a.call("sendMessage", send_payload(alice, room, f"missed{i}")))["id"] for i in range(5)]
    stop = asyncio.Event()

    async def sender() -> None:
        while not stop.is_set():
            await alice_a.call("sendMessage", send_payload(alice, room, "live"))

    # A keeps storing while bob comes back on B: the catch-up must meet the live stream with no gap or repeat.
    sending = asyncio.gather(*(sender() for _ in range(4)))
    try:
        bob_b = await b.socket(bob)
        ack = await bob_b.call("joinRoom", {"chatroomId": room, "userId": bob.id, "lastMessageId": seen["id"]})
        assert ack["recovered"] is True, ack
        received = await chat_ids(bob_b, 40)
    finally:
        stop.set()
        await sending
    assert received[: len(missed)] == missed
    history = await b.api.get("/chat-history/list", bob.token, chatroomId=room, afterId=seen["id"], limit=40)
    assert received == [m["id"] for m in history.body]


async def test_postgres_cluster_member_removed_on_one_host_cannot_send_on_the_other_at_once(
    hosts: list[Host],
) -> None:
    a, b = hosts
    alice, bob, carol = await a.api.new_user(), await a.api.new_user(), await a.api.new_user()
    room = await a.api.group(alice, bob, carol)
    bob_b, carol_b = await b.socket(bob), await b.socket(carol)
    await bob_b.join(bob, room)
    await carol_b.join(carol, room)
    # B caches the room's members now.
    assert "id" in await bob_b.call("sendMessage", send_payload(bob, room, "before"))
    removed = await a.api.get(f"/chatroom/quit/{room}", alice.token, quitUserId=bob.id)
    assert removed.status == 200, removed.body
    # No waiting: the removal answered only once every host had forgotten the cached members.
    assert_ack_error(await bob_b.call("sendMessage", send_payload(bob, room, "after removal")), 403)
    assert "id" in await carol_b.call("sendMessage", send_payload(carol, room, "still here"))


async def test_postgres_cluster_no_host_stores_while_another_holds_the_order_lock(
    hosts: list[Host], postgres_database_url: str
) -> None:
    a, b = hosts
    alice, bob = await a.api.new_user(), await a.api.new_user()
    room = await a.api.one_to_one(alice, bob)
    alice_a, bob_b = await a.socket(alice), await b.socket(bob)
    assert "id" in await alice_a.call("sendMessage", send_payload(alice, room, "free"))
    # A third "instance", on a connection of its own, as from another host: no file in common with A or B.
    other = await asyncpg.connect(postgres_database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", ORDER_LOCK_KEY)
        sending = [
            asyncio.create_task(alice_a.call("sendMessage", send_payload(alice, room, "waits"))),
            asyncio.create_task(bob_b.call("sendMessage", send_payload(bob, room, "waits too"))),
        ]
        done, _ = await asyncio.wait(sending, timeout=0.5)
        assert not done, "a host stored a batch while another held the order lock"
        stored = await other.fetchval("SELECT count(*) FROM chat_history WHERE content LIKE 'waits%'")
        assert stored == 0
        await other.execute("SELECT pg_advisory_unlock($1)", ORDER_LOCK_KEY)
        acks = await asyncio.wait_for(asyncio.gather(*sending), DEADLINE)
        assert all("id" in ack for ack in acks), acks
    finally:
        await other.close()


async def test_postgres_cluster_lost_lock_session_answers_503_then_reconnects(
    hosts: list[Host], postgres_database_url: str
) -> None:
    a, _ = hosts
    alice, bob = await a.api.new_user(), await a.api.new_user()
    room = await a.api.one_to_one(alice, bob)
    alice_a = await a.socket(alice)
    assert "id" in await alice_a.call("sendMessage", send_payload(alice, room, "before"))
    admin = await asyncpg.connect(postgres_database_url)
    try:
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            "chatsvc order lock",
        )
        assert ended == 2  # one per host
        answers: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE
        while not answers or "id" not in answers[-1]:
            assert time.monotonic() < deadline, f"sends never worked again: {answers[-3:]}"
            answers.append(await alice_a.call("sendMessage", send_payload(alice, room, "after")))
        for answer in answers[:-1]:
            assert_ack_error(answer, 503)
        # A's lock session is back; B reconnects its own on its next batch.
        sessions = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", "chatsvc order lock"
        )
        assert sessions >= 1
    finally:
        await admin.close()


def test_postgres_cluster_order_lock_is_the_database_s_when_the_engine_is_postgres(tmp_path: Path) -> None:
    base = Config(db_path=tmp_path / "chat.db", redis_url="redis://127.0.0.1:6390/0")
    assert type(order_lock_for(base)) is FileOrderLock
    on_postgres = base.with_changes(database_url="postgresql://chatsvc@db.example:5432/chatsvc")
    lock = order_lock_for(on_postgres)
    assert isinstance(lock, PostgresOrderLock)
    assert lock.url == on_postgres.database_url


# --- faults ---------------------------------------------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, since the test stops and starts it."""
    bindir = find_bindir()
    if bindir is None:
        tool_missing("PostgreSQL fault tests", "no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    with PostgresServer(bindir) as server:
        yield server


async def stored_client_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [row[0] for row in await conn.fetch("SELECT client_msg_id FROM chat_history")]
    finally:
        await conn.close()


async def setup_senders(base_url: str, count: int) -> tuple[list[User], list[int]]:
    async with aiohttp.ClientSession() as session:
        api = Api(base_url, session)
        users = [await api.new_user(f"sender{i}") for i in range(count)]
        rooms = [await api.one_to_one(users[0], user) for user in users[1:]]
    return users, rooms


async def test_postgres_restart_under_load_answers_503_reconnects_and_loses_nothing(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    url = own_postgres.create_database("chat")
    server = ChatsvcProcess(tmp_path / "chat.db", env={"CHATSVC_DATABASE_URL": url, "CHATSVC_RATE_LIMIT": "0"})
    await server.start()
    # Read as it comes: a full pipe would stall the server's logging while every send fails.
    errors = asyncio.create_task(server.stderr())
    try:
        users, rooms = await setup_senders(server.url, 3)
        clients = [await connect_socket(server.url, user.token) for user in users[1:]]
        acked: list[str] = []
        refused: list[Any] = []
        counter = iter(range(1_000_000))

        async def sender(client: SocketClient, user: User, room: int, stop: asyncio.Event) -> None:
            while not stop.is_set():
                cid = f"{user.username}-{next(counter)}"
                ack = await client.call("sendMessage", send_payload(user, room, cid, clientMsgId=cid), ANSWER_TIMEOUT)
                if isinstance(ack, dict) and "id" in ack:
                    acked.append(cid)
                else:
                    refused.append(ack)

        async with aiohttp.ClientSession() as session:

            async def ready() -> int:
                async with session.get(server.url + "/readyz") as resp:
                    return resp.status

            stop = asyncio.Event()
            senders = [
                asyncio.create_task(sender(client, user, room, stop))
                for client, user, room in zip(clients, users[1:], rooms, strict=True)
            ]
            while len(acked) < 100:
                await asyncio.wait(senders, timeout=0.05)
            # Blocks the test's loop for the stop (clients are in this process; the server is another one).
            own_postgres.stop()
            down_at = len(refused)
            while len(refused) < down_at + 20:
                await asyncio.wait(senders, timeout=0.05)
            assert await ready() == 503
            own_postgres.start()
            after = len(acked)
            deadline = time.monotonic() + DEADLINE
            while len(acked) < after + 100:
                assert time.monotonic() < deadline, "sends never worked again after PostgreSQL came back"
                await asyncio.wait(senders, timeout=0.05)
            assert await ready() == 200
            stop.set()
            await asyncio.gather(*senders)
        for client in clients:
            await client.disconnect()
    finally:
        server.kill()
        await server.wait(15)
    logged = await errors
    print(logged)  # shown when the test fails
    for ack in refused:
        # While the database was away: a clear 503, never a 500 or a hang past ANSWER_TIMEOUT (the call's timeout).
        assert_ack_error(ack, 503)
    stored = await stored_client_ids(url)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert set(acked) <= set(stored), "an acknowledged message was lost"
    assert "Traceback" not in logged


async def test_postgres_sigkill_mid_stream_keeps_every_acknowledged_message_once(
    tmp_path: Path, postgres_database_url: str
) -> None:
    env = {"CHATSVC_DATABASE_URL": postgres_database_url}
    server = ChatsvcProcess(tmp_path / "chat.db", env=env)
    await server.start()
    try:
        users, rooms = await setup_senders(server.url, 4)
        clients = [await connect_socket(server.url, user.token) for user in users]
        acked: list[str] = []
        senders = [
            asyncio.create_task(send_until_stopped(client, user, rooms[max(i - 1, 0)], acked, user.username))
            for i, (client, user) in enumerate(zip(clients, users, strict=True))
        ]
        async with asyncio.timeout(DEADLINE):
            while len(acked) < 200:
                await asyncio.wait(senders, timeout=0.05)
        server.kill()
        await server.wait(10)
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*senders)
        for client in clients:
            await client.sio.disconnect()
    finally:
        server.kill()
    # A new process on the same database: it starts (the dead one's claim went with its session) and serves.
    restarted = ChatsvcProcess(tmp_path / "chat.db", env=env)
    await restarted.start()
    restarted.terminate(signal.SIGTERM)
    assert await restarted.wait(15) == 0
    stored = await stored_client_ids(postgres_database_url)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert set(acked) <= set(stored), "an acknowledged message was lost"
