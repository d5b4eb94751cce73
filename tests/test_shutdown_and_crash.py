"""What survives a SIGTERM and a SIGKILL: every acknowledged message, exactly once."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import socketio

from tests.helpers import Api, SocketClient, User, connect_socket, send_payload
from tests.process import ChatsvcProcess

SENDERS = 4


async def setup_room(base_url: str) -> tuple[list[User], int]:
    async with aiohttp.ClientSession() as session:
        api = Api(base_url, session)
        users = [await api.new_user(f"sender{i}") for i in range(SENDERS)]
        room = await api.one_to_one(users[0], users[1])
        # Everyone sends into one-to-one rooms with user 0; each pair has its own room.
        rooms = [room] + [await api.one_to_one(users[0], u) for u in users[2:]]
    return users, rooms


async def send_until_stopped(client: SocketClient, user: User, room: int, acked: list[str], tag: str) -> None:
    """Pipeline sends (8 in flight) until the server goes away; record each acked clientMsgId."""
    in_flight: set[asyncio.Task[object]] = set()
    n = 0

    async def one(cid: str) -> None:
        ack = await client.call("sendMessage", send_payload(user, room, cid, clientMsgId=cid), timeout=10)
        if isinstance(ack, dict) and "id" in ack:
            acked.append(cid)

    gone = asyncio.Event()
    client.sio.on("disconnect", lambda *_: gone.set())
    gone_wait = asyncio.create_task(gone.wait())
    try:
        while client.sio.connected and not gone.is_set():
            while len(in_flight) < 8:
                n += 1
                task = asyncio.create_task(one(f"{tag}-{n}"))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.wait([*in_flight, gone_wait], return_when=asyncio.FIRST_COMPLETED)
    except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
        pass
    # Calls still unanswered when the server went away were never acknowledged.
    for task in in_flight:
        task.cancel()
    gone_wait.cancel()
    await asyncio.gather(*in_flight, gone_wait, return_exceptions=True)


def stored_client_ids(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [row[0] for row in conn.execute("SELECT client_msg_id FROM chat_history")]


@pytest.fixture
def spawn() -> Iterator[Callable[[Path], ChatsvcProcess]]:
    """A factory of server processes; any still running after the test is killed."""
    started: list[ChatsvcProcess] = []

    def make(db_path: Path) -> ChatsvcProcess:
        started.append(ChatsvcProcess(db_path))
        return started[-1]

    yield make
    for process in started:
        process.kill()


async def run_senders_then(stop, spawn, tmp_path: Path) -> tuple[list[str], list[object], ChatsvcProcess]:
    """Start a server, send from every user at full speed, call ``stop`` mid-stream; acked ids and notices."""
    server = spawn(tmp_path / "chat.db")
    await server.start()
    users, rooms = await setup_room(server.url)
    clients = [await connect_socket(server.url, u.token) for u in users]
    notices: list[object] = []
    for c in clients:
        c.sio.on("serverShutdown", notices.append)
    acked: list[str] = []
    senders = [
        asyncio.create_task(send_until_stopped(c, u, rooms[max(i - 1, 0)], acked, u.username))
        for i, (c, u) in enumerate(zip(clients, users, strict=True))
    ]
    async with asyncio.timeout(20):
        while len(acked) < 200:  # mid-stream: the senders are at full speed
            await asyncio.wait(senders, timeout=0.05)
    await stop(server)
    async with asyncio.timeout(20):
        await asyncio.gather(*senders)
    for c in clients:
        await c.sio.disconnect()
    return acked, notices, server


async def test_crash_sigkill_loses_no_acknowledged_message(tmp_path: Path, spawn) -> None:
    async def kill(server: ChatsvcProcess) -> None:
        server.kill()
        await server.wait(10)

    acked, _, server = await run_senders_then(kill, spawn, tmp_path)
    # Restart on the same database: it opens, recovers the WAL and serves.
    restarted = spawn(server.db_path)
    await restarted.start()
    restarted.terminate()
    assert await restarted.wait(10) == 0
    stored = stored_client_ids(server.db_path)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert set(acked) <= set(stored), "an acknowledged message was lost"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_shutdown_signal_acks_accepted_writes_tells_sockets_and_exits_zero(
    tmp_path: Path, spawn, signum: int
) -> None:
    async def terminate(server: ChatsvcProcess) -> None:
        server.terminate(signum)
        assert await server.wait(10) == 0

    acked, notices, server = await run_senders_then(terminate, spawn, tmp_path)
    assert len(notices) == SENDERS, "every connected socket is told the server is going away"
    stored = stored_client_ids(server.db_path)
    assert len(stored) == len(set(stored))
    assert set(acked) <= set(stored)
    assert "Traceback" not in await server.stderr()
