"""Webhooks for unseen messages (chatsvc/webhooks.py): a real HTTP receiver on loopback checks what arrives.

The receiver verifies every signature as docs/sidecar.md tells a host to,
answers as the test scripts it (500, no answer, 200), and records each call.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.servers import RedisServer
from bench.webhook import sender_pid
from chatsvc.app import create_app
from chatsvc.config import Config
from chatsvc.state import STATE
from chatsvc.testing import ChatsvcServer, run_chatsvc
from chatsvc.webhook_process import WebhookProcess
from chatsvc.webhooks import WebhookSender, sign
from tests.conftest import make_config
from tests.helpers import Api, SocketClient, User, connect_socket, send_payload, until
from tests.process import ChatsvcProcess, free_port
from tests.test_redis_cluster import REDIS_SERVER, require_redis_server

pytestmark = pytest.mark.both_engines

SECRET = "webhook-secret-for-tests-0123456789abcdef"
DEADLINE = 15.0
SIDECAR_DOCS = Path(__file__).resolve().parent.parent / "docs" / "sidecar.md"


@dataclass
class Call:
    """One POST the receiver got, its signature already checked."""

    payload: dict[str, Any]
    body: bytes
    timestamp: int


@dataclass
class Receiver:
    """A host application's webhook endpoint: verifies signatures, answers as scripted, records calls."""

    calls: list[Call] = field(default_factory=list)
    # Consumed one per call: "500" answers 500, "hang" never answers; once empty, every call gets 200.
    script: list[str] = field(default_factory=list)
    bad_signatures: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = verify(request.headers.get("X-Chatsvc-Signature", ""), body)
        if timestamp is None:
            self.bad_signatures += 1
            return web.Response(status=400)
        self.calls.append(Call(json.loads(body), body, timestamp))
        answer = self.script.pop(0) if self.script else "200"
        if answer == "hang":
            # Held past the sender's timeout; released when the test ends.
            await self.release.wait()
            return web.Response(status=200)
        return web.Response(status=int(answer))

    def ids(self) -> list[str]:
        return [call.payload["id"] for call in self.calls]

    def by_message(self) -> dict[int, list[Call]]:
        found: dict[int, list[Call]] = {}
        for call in self.calls:
            found.setdefault(call.payload["message"]["id"], []).append(call)
        return found


def documented_check() -> Callable[[str, str, bytes], bool]:
    """``verify_signature`` from docs/sidecar.md, as a host would copy it."""
    blocks = re.findall(r"```python\n(.*?)```", SIDECAR_DOCS.read_text(encoding="utf-8"), flags=re.S)
    example = next(block for block in blocks if "def verify_signature" in block)
    namespace: dict[str, Any] = {}
    exec(compile(example, str(SIDECAR_DOCS), "exec"), namespace)
    return namespace["verify_signature"]  # type: ignore[no-any-return]


VERIFY_SIGNATURE = documented_check()


def verify(header: str, body: bytes) -> int | None:
    """The timestamp of a call that passes the documented check, else None."""
    if not VERIFY_SIGNATURE(SECRET, header, body):
        return None
    return int(dict(item.split("=", 1) for item in header.split(","))["t"])


def test_documented_check_refuses_a_wrong_secret_a_changed_body_and_an_old_timestamp() -> None:
    body = b'{"type":"message.unseen"}'
    now = int(time.time())
    assert VERIFY_SIGNATURE(SECRET, sign(SECRET, now, body), body)
    assert not VERIFY_SIGNATURE(SECRET, sign("another-secret-of-at-least-32-bytes!", now, body), body)
    assert not VERIFY_SIGNATURE(SECRET, sign(SECRET, now, body), body + b" ")
    assert not VERIFY_SIGNATURE(SECRET, sign(SECRET, now - 3600, body), body)
    assert not VERIFY_SIGNATURE(SECRET, "v1=deadbeef", body)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/chat", found.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    found.url = str(server.make_url("/hooks/chat"))
    yield found
    found.release.set()
    await server.close()


def webhook_settings(receiver: Receiver) -> dict[str, Any]:
    """Webhooks to the receiver, with a short backoff and timeout so retries come quickly."""
    return {
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_backoff": 0.05,
        "webhook_backoff_max": 0.2,
        "webhook_timeout": 0.5,
        "rate_limit": 0,
    }


@pytest.fixture
def config(tmp_path: Path, receiver: Receiver) -> Config:
    return make_config(tmp_path, **webhook_settings(receiver))


def sender_of(server: ChatsvcServer) -> WebhookSender | WebhookProcess:
    webhooks = server.state.webhooks
    assert webhooks is not None
    return webhooks


async def sending(server: ChatsvcServer) -> WebhookSender | WebhookProcess:
    """The sender, once it makes rounds (a sender process takes a moment to start)."""
    webhooks = sender_of(server)
    if isinstance(webhooks, WebhookProcess):
        await asyncio.wait_for(webhooks.ready.wait(), DEADLINE)
    return webhooks


async def settled(server: ChatsvcServer, count: int) -> None:
    """Wait until the sender has settled ``count`` deliveries: sent, given up, or with no one to tell."""
    webhooks = sender_of(server)
    await until(
        lambda: webhooks.sent + webhooks.failed + webhooks.unneeded >= count, f"{count} deliveries settled", DEADLINE
    )


async def test_webhook_posts_a_signed_message_unseen_for_the_offline_member(
    server: ChatsvcServer, receiver: Receiver, pair: tuple[User, User, int], sockets, db_rows
) -> None:
    alice, bob, room = pair
    a = await sockets(alice.token)
    await a.join(alice, room)
    message = await a.send(alice, room, "are you there?")
    await settled(server, 1)
    assert receiver.bad_signatures == 0
    [call] = receiver.calls
    assert call.payload == {
        "type": "message.unseen",
        "id": f"unseen-{message['id']}",
        "message": message,
        "recipientIds": [bob.id],
    }
    assert abs(call.timestamp - time.time()) < 60
    assert db_rows("SELECT count(*) FROM webhook_outbox") == [(0,)]
    metrics = await (await server.http.get(server.base_url + "/metrics")).text()
    assert "chatsvc_webhook_sent_total 1.0" in metrics
    assert "chatsvc_webhook_pending 0.0" in metrics
    assert "chatsvc_webhook_sender_up 1.0" in metrics


async def test_webhook_leaves_out_members_online_in_the_room(
    server: ChatsvcServer, receiver: Receiver, api: Api, trio: tuple[User, User, User], sockets
) -> None:
    alice, bob, carol = trio
    room = await api.group(alice, bob, carol)
    together = await api.one_to_one(alice, bob)
    a = await sockets(alice.token)
    b = await sockets(bob.token)
    await b.join(bob, room)
    await b.join(bob, together)
    # Bob is online in both rooms: the one-to-one message has no one to tell, the group's only carol.
    seen_by_all = await a.send(alice, together, "bob sees this")
    partly_seen = await a.send(alice, room, "carol does not")
    await settled(server, 2)
    assert receiver.by_message().keys() == {partly_seen["id"]}
    assert receiver.calls[0].payload["recipientIds"] == [carol.id]
    assert seen_by_all["id"] not in receiver.by_message()
    # Connected but not in the room is offline for that room.
    await sockets(carol.token)
    third = await b.send(bob, room, "carol has a socket, not in this room")
    await settled(server, 3)
    assert sorted(receiver.by_message()[third["id"]][0].payload["recipientIds"]) == [alice.id, carol.id]


async def test_webhook_retries_after_500_and_timeouts_with_the_same_id_and_body(
    server: ChatsvcServer, receiver: Receiver, pair: tuple[User, User, int], sockets
) -> None:
    alice, _bob, room = pair
    receiver.script = ["500", "hang", "500"]
    a = await sockets(alice.token)
    message = await a.send(alice, room)
    await settled(server, 1)
    calls = receiver.by_message()[message["id"]]
    assert len(calls) == 4
    assert {call.body for call in calls} == {calls[0].body}
    assert receiver.ids() == [f"unseen-{message['id']}"] * 4
    webhooks = sender_of(server)
    assert (webhooks.sent, webhooks.attempts_failed, webhooks.failed) == (1, 3, 0)


async def test_webhook_gives_up_after_the_retry_window(
    tmp_path: Path, receiver: Receiver, database_url: str | None
) -> None:
    receiver.script = ["500"] * 1000
    config = make_config(tmp_path, **webhook_settings(receiver), webhook_retry_window=1, database_url=database_url)
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        api = Api(server.base_url, session)
        alice, bob = await api.new_user(), await api.new_user()
        room = await api.one_to_one(alice, bob)
        a = await connect_socket(server.base_url, alice.token)
        # The retry window runs from the message's time: the first attempt must come within it.
        await sending(server)
        try:
            await a.send(alice, room)
            await settled(server, 1)
        finally:
            await a.disconnect()
        webhooks = sender_of(server)
        assert (webhooks.sent, webhooks.failed) == (0, 1)
        assert webhooks.attempts_failed >= 2
        assert await server.state.db.reader.fetch_value("SELECT count(*) FROM webhook_outbox") == 0


async def test_webhook_deliveries_survive_a_sigkill(
    tmp_path: Path, receiver: Receiver, database_url: str | None
) -> None:
    env = {
        "CHATSVC_WEBHOOK_URL": receiver.url,
        "CHATSVC_WEBHOOK_SECRET": SECRET,
        "CHATSVC_WEBHOOK_BACKOFF": "0.05",
        "CHATSVC_WEBHOOK_BACKOFF_MAX": "0.2",
        "CHATSVC_WEBHOOK_TIMEOUT": "0.5",
        "CHATSVC_RATE_LIMIT": "0",
        **({"CHATSVC_DATABASE_URL": database_url} if database_url else {}),
    }
    db_path = tmp_path / "data" / "chat.db"
    # The receiver is down (500) while the first process runs: every delivery stays in the outbox.
    receiver.script = ["500"] * 100_000
    first = ChatsvcProcess(db_path, env=env)
    await first.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(first.url, session)
            alice, bob = await api.new_user(), await api.new_user()
            room = await api.one_to_one(alice, bob)
            a = await connect_socket(first.url, alice.token)
            ids = [(await a.send(alice, room, f"m{i}"))["id"] for i in range(10)]
            await until(lambda: set(ids) <= receiver.by_message().keys(), "a first attempt at each", DEADLINE)
            first.terminate(signal.SIGKILL)
            assert await first.wait(DEADLINE) == -signal.SIGKILL
            await a.sio.disconnect()
    finally:
        first.kill()
    receiver.script.clear()
    receiver.calls.clear()
    second = ChatsvcProcess(db_path, env=env)
    await second.start()
    try:
        await until(lambda: set(ids) <= receiver.by_message().keys(), "every delivery after the restart", DEADLINE)
        assert all(call.payload["recipientIds"] == [bob.id] for call in receiver.calls)
    finally:
        second.terminate()
        await second.wait(DEADLINE)


async def test_refuses_a_webhook_url_without_a_secret() -> None:
    with pytest.raises(ValueError, match="CHATSVC_WEBHOOK_SECRET"):
        Config.from_env({"CHATSVC_WEBHOOK_URL": "http://127.0.0.1:9/hook"})


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    require_redis_server()
    assert REDIS_SERVER is not None
    server = RedisServer(REDIS_SERVER, free_port(), tmp_path, tmp_path / "redis-server.log")
    await server.start(None)
    yield server
    await server.stop()


async def test_webhooks_with_two_instances_send_each_delivery_once_and_count_sockets_on_both(
    tmp_path: Path, receiver: Receiver, redis_server: RedisServer, database_url: str | None
) -> None:
    config = make_config(tmp_path, **webhook_settings(receiver), redis_url=redis_server.url, database_url=database_url)
    servers = [TestServer(create_app(config), host="127.0.0.1") for _ in range(2)]
    clients: list[SocketClient] = []
    async with aiohttp.ClientSession() as session:
        try:
            for server in servers:
                await server.start_server()
            url_a, url_b = (str(server.make_url("")).rstrip("/") for server in servers)
            api = Api(url_a, session)
            alice, bob, carol = await api.new_user(), await api.new_user(), await api.new_user()
            room = await api.group(alice, bob, carol)
            on_a = await connect_socket(url_a, alice.token)
            on_b = await connect_socket(url_b, bob.token)
            clients += [on_a, on_b]
            await on_a.join(alice, room)
            await on_b.join(bob, room)
            await on_a.next_message(lambda m: m == {"type": "joinRoom", "userId": bob.id})
            # Bob is online on B only; the instance that sends each delivery may be A or B.
            ids = [(await on_a.call("sendMessage", send_payload(alice, room, f"m{i}")))["id"] for i in range(20)]
            senders: list[Callable[[], int]] = []
            for server in servers:
                webhooks = server.app[STATE].webhooks
                assert webhooks is not None
                senders.append(lambda w=webhooks: w.sent)  # type: ignore[misc]
            await until(lambda: sum(s() for s in senders) >= len(ids), "every delivery sent", DEADLINE)
            assert sorted(receiver.by_message()) == ids
            assert len(receiver.calls) == len(ids), "a delivery was sent twice"
            assert {tuple(call.payload["recipientIds"]) for call in receiver.calls} == {(carol.id,)}
        finally:
            for client in clients:
                if client.sio.connected:
                    await client.disconnect()
            for server in servers:
                await server.close()


def process_state(pid: int) -> str | None:
    """A process's state letter (``R``, ``S``, ``Z``…), None once it is gone (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting for its new parent to reap it)."""
    return process_state(pid) in (None, "Z", "X")


async def test_sender_process_is_started_again_after_being_killed_and_is_told_who_is_online(
    server: ChatsvcServer, receiver: Receiver, api: Api, trio: tuple[User, User, User], sockets
) -> None:
    alice, bob, carol = trio
    room = await api.group(alice, bob, carol)
    webhooks = await sending(server)
    assert isinstance(webhooks, WebhookProcess) and webhooks.pid is not None
    first = webhooks.pid
    os.kill(first, signal.SIGKILL)
    await until(lambda: webhooks.starts == 2 and webhooks.ready.is_set(), "a second sender process", DEADLINE)
    assert webhooks.pid != first and gone(first)
    a = await sockets(alice.token)
    b = await sockets(bob.token)
    await b.join(bob, room)
    # Bob's socket is recorded by the server's fan-out: the new process must be told, and leave him out.
    message = await a.send(alice, room, "after the restart")
    await settled(server, 1)
    assert [call.payload["recipientIds"] for call in receiver.by_message()[message["id"]]] == [[carol.id]]
    assert webhooks.sent == 1


async def test_shutdown_stops_the_sender_process(tmp_path: Path, receiver: Receiver, database_url: str | None) -> None:
    config = make_config(tmp_path, **webhook_settings(receiver), database_url=database_url)
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        webhooks = await sending(server)
        assert isinstance(webhooks, WebhookProcess) and webhooks.pid is not None
        pid = webhooks.pid
        api = Api(server.base_url, session)
        alice, bob = await api.new_user(), await api.new_user()
        room = await api.one_to_one(alice, bob)
        a = await connect_socket(server.base_url, alice.token)
        try:
            await a.send(alice, room)
            await settled(server, 1)
        finally:
            await a.disconnect()
    # It stopped by itself once told (not killed after the wait), and was waited for: no process is left.
    assert webhooks.exit_status == 0
    assert process_state(pid) is None


async def test_sender_process_exits_when_chatsvc_is_killed(
    tmp_path: Path, receiver: Receiver, database_url: str | None
) -> None:
    env = {
        "CHATSVC_WEBHOOK_URL": receiver.url,
        "CHATSVC_WEBHOOK_SECRET": SECRET,
        **({"CHATSVC_DATABASE_URL": database_url} if database_url else {}),
    }
    chatsvc = ChatsvcProcess(tmp_path / "data" / "chat.db", env=env)
    await chatsvc.start()
    try:
        assert chatsvc.proc is not None
        server_pid = chatsvc.proc.pid
        await until(lambda: sender_pid(server_pid) is not None, "the sender process", DEADLINE)
        child = sender_pid(server_pid)
        assert child is not None
        chatsvc.terminate(signal.SIGKILL)
        assert await chatsvc.wait(DEADLINE) == -signal.SIGKILL
        await until(lambda: gone(child), "the sender process to exit with its server", DEADLINE)
    finally:
        chatsvc.kill()


async def test_inline_sender_posts_from_the_server_process(
    tmp_path: Path, receiver: Receiver, database_url: str | None
) -> None:
    config = make_config(tmp_path, **webhook_settings(receiver), webhook_sender="inline", database_url=database_url)
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        assert isinstance(server.state.webhooks, WebhookSender)
        api = Api(server.base_url, session)
        alice, bob = await api.new_user(), await api.new_user()
        room = await api.one_to_one(alice, bob)
        a = await connect_socket(server.base_url, alice.token)
        try:
            message = await a.send(alice, room)
            await settled(server, 1)
        finally:
            await a.disconnect()
        assert [call.payload["recipientIds"] for call in receiver.by_message()[message["id"]]] == [[bob.id]]


async def test_on_sqlite_a_batch_queues_its_deliveries_in_its_one_insert_statement(
    server: ChatsvcServer, receiver: Receiver, pair: tuple[User, User, int], sockets, database_url: str | None
) -> None:
    """No BEGIN, no second INSERT: the writer's TEMP trigger writes the outbox row (PostgreSQL uses a transaction)."""
    if database_url is not None:
        pytest.skip("PostgreSQL has no trigger of one connection: its batch is a transaction of two statements")
    alice, bob, room = pair
    a = await sockets(alice.token)
    await a.join(alice, room)
    statements: list[str] = []
    await server.state.db.set_trace(statements.append)
    try:
        message = await a.send(alice, room, "one statement")
    finally:
        await server.state.db.set_trace(None)
    await settled(server, 1)
    assert [call.payload["recipientIds"] for call in receiver.by_message()[message["id"]]] == [[bob.id]]
    writes = [s.strip().split(None, 3)[:3] for s in statements if re.match(r"\s*(BEGIN|INSERT|COMMIT)", s, re.I)]
    assert [w for w in writes if w[0].upper() != "INSERT" or w[2] != "chat_history"] == [], statements


async def test_sender_process_runs_at_a_lower_priority_than_its_server(server: ChatsvcServer) -> None:
    """On a core it shares with the server, the scheduler lets the send path go before the webhook calls."""
    webhooks = await sending(server)
    assert isinstance(webhooks, WebhookProcess) and webhooks.pid is not None
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, webhooks.pid) == min(19, own + 10)


async def test_a_round_without_retries_settles_its_deliveries_in_one_statement(
    tmp_path: Path, receiver: Receiver, database_url: str | None
) -> None:
    """No BEGIN anywhere: the sender deletes what it delivered in one autocommit DELETE (the writer's batch is
    one INSERT), so it holds the database's write lock for one statement."""
    if database_url is not None:
        pytest.skip("the statement trace is SQLite's")
    config = make_config(tmp_path, **webhook_settings(receiver), webhook_sender="inline")
    async with run_chatsvc(config) as server, aiohttp.ClientSession() as session:
        api = Api(server.base_url, session)
        alice, bob = await api.new_user(), await api.new_user()
        room = await api.one_to_one(alice, bob)
        a = await connect_socket(server.base_url, alice.token)
        statements: list[str] = []
        await server.state.db.set_trace(statements.append)
        try:
            message = await a.send(alice, room)
            await settled(server, 1)
        finally:
            await server.state.db.set_trace(None)
            await a.disconnect()
        assert [call.payload["recipientIds"] for call in receiver.by_message()[message["id"]]] == [[bob.id]]
    # Neither the batch's INSERT nor the sender's DELETE runs inside a transaction (the writer's only ones are
    # the search index's chunks, chatsvc/search_index.py; write statements do not interleave with them).
    in_transaction = False
    for statement in statements:
        if re.match(r"\s*(BEGIN|COMMIT)", statement, re.I):
            in_transaction = statement.strip().upper().startswith("BEGIN")
        elif re.match(r"\s*(INSERT INTO chat_history|DELETE FROM webhook_outbox)", statement):
            assert not in_transaction, statements
    assert any(re.match(r"\s*DELETE FROM webhook_outbox", s) for s in statements), statements
