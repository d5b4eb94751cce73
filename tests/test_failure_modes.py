"""What an operator runs into: a database that cannot be opened or is already served, a full disk, clients that drop."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from chatsvc.errors import StartupError
from chatsvc.testing import ChatsvcServer, run_chatsvc
from tests.conftest import make_config
from tests.helpers import Api, assert_ack_error, assert_error, connect_socket, send_payload
from tests.process import ChatsvcProcess, free_port, run_chatsvc_command

# Big enough for the database and its WAL, small enough to fill in a moment.
SMALL_DISK = "4m"


async def refused_start(db: Path, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """``chatsvc serve`` on ``db``, which must end by itself: its exit status and its log lines."""
    status, _, stderr = await run_chatsvc_command(
        "serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db), env=env, timeout=30
    )
    return status, stderr.strip().splitlines()


# --- a database that cannot be opened ---


async def test_a_file_that_is_not_sqlite_makes_serve_exit_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    db.write_bytes(b"this is not an SQLite database, just text " * 100)
    db.chmod(0o600)
    status, lines = await refused_start(db)
    assert status == 1
    assert lines == [f"chatsvc: cannot open the database {db}: file is not a database"]


async def test_a_database_path_under_a_file_makes_serve_exit_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    status, lines = await refused_start(blocker / "chat.db")
    assert status == 1
    assert lines == [f"chatsvc: cannot open the database {blocker / 'chat.db'}: {blocker} exists and is not a folder"]


# --- one database, one instance unless they share rooms through Redis ---


async def test_a_second_instance_without_redis_is_refused_and_the_cli_still_works_beside_the_first(
    tmp_path: Path,
) -> None:
    db = tmp_path / "data" / "chat.db"
    first = ChatsvcProcess(db)
    await first.start()
    try:
        status, lines = await refused_start(db)
        assert status == 2
        assert len(lines) == 1 and lines[0].startswith(f"chatsvc: another chatsvc process is serving {db}")
        assert "set CHATSVC_REDIS_URL" in lines[0]

        # The administrative commands take no lock.
        for command in (["init-db"], ["user", "add", "zoe", "--password", "secret123"]):
            status, _, stderr = await run_chatsvc_command(*command, "--db", str(db))
            assert status == 0, stderr
        status, token, stderr = await run_chatsvc_command("token", "zoe", "--db", str(db))
        assert status == 0, stderr
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {token.strip()}"}
            async with session.get(first.url + "/user/info", headers=headers) as resp:
                assert resp.status == 200 and (await resp.json())["username"] == "zoe"
    finally:
        first.terminate()
        assert await first.wait(15) == 0


async def test_instances_with_redis_share_a_database_and_a_single_instance_cannot_join_them(tmp_path: Path) -> None:
    single = make_config(tmp_path)
    # Nothing listens there: an instance starts without Redis and keeps retrying (docs/deploy.md).
    clustered = single.with_changes(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with run_chatsvc(clustered) as one, run_chatsvc(clustered) as two:
        for server in (one, two):
            async with server.http.get(server.base_url + "/readyz") as resp:
                assert resp.status == 200
        with pytest.raises(StartupError) as refused:
            async with run_chatsvc(single):
                pass
        assert refused.value.exit_status == 2 and "set CHATSVC_REDIS_URL" in refused.value.message

    async with run_chatsvc(single):
        with pytest.raises(StartupError) as refused:
            async with run_chatsvc(clustered):
                pass
        assert refused.value.exit_status == 2
        assert "a chatsvc process without CHATSVC_REDIS_URL is serving" in refused.value.message


# --- a full disk ---


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on its own tmpfs of a few megabytes; skipped where mounting is not allowed."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a size-limited file system needs mount(8) as root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the file system has no byte left."""
    with open(path, "wb", buffering=0) as filler:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    filler.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc


async def test_a_full_disk_answers_503_fails_readiness_and_recovers_when_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsvc")
    async with run_chatsvc(make_config(small_disk)) as server:
        api = Api(server.base_url, server.http)
        alice = await api.new_user()
        bob = await api.new_user()
        room = await api.one_to_one(alice, bob)
        client = await connect_socket(server.base_url, alice.token)
        try:
            await client.join(alice, room)
            assert (await api.get("/readyz")).status == 200

            fill(small_disk / "filler")
            ack = await client.call("sendMessage", send_payload(None, room, "lost"))
            assert_ack_error(ack, 503)
            assert "disk is full" in ack["message"]
            refused = await api.post(
                "/user/register",
                {"username": "carl", "password": "secret123", "nickName": "Carl", "email": "carl@example.com"},
            )
            assert_error(refused.status, refused.body, 503)
            not_ready = await api.get("/readyz")
            assert_error(not_ready.status, not_ready.body, 503)
            assert "cannot store data" in not_ready.body["message"]
            assert (await api.get("/healthz")).status == 200
            history = await api.get("/chat-history/list", alice.token, chatroomId=room)
            assert history.status == 200 and history.body == []

            (small_disk / "filler").unlink()
            assert (await api.get("/readyz")).status == 200
            ack = await client.call("sendMessage", send_payload(None, room, "kept"))
            assert ack.get("content") == "kept", ack
            await api.register("carl")
            history = await api.get("/chat-history/list", alice.token, chatroomId=room)
            assert [m["content"] for m in history.body] == ["kept"]
        finally:
            await client.disconnect()
    messages = [r.getMessage() for r in caplog.records if r.name == "chatsvc.db"]
    assert sum("writes to the database fail (database or disk is full)" in m for m in messages) == 1
    assert sum("writes to the database succeed again" in m for m in messages) == 1
    assert not [r for r in caplog.records if r.exc_info], "a full disk is logged without tracebacks"


# --- a client that drops mid-request ---


class RecordWaiter(logging.Handler):
    """Sets an event when a record matching the predicate is logged (handlers run in the loop's thread)."""

    def __init__(self, predicate: Any) -> None:
        super().__init__()
        self.predicate = predicate
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.predicate(record):
            self.seen.set()


async def test_a_client_that_drops_mid_body_is_one_log_line(
    server: ChatsvcServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    waiter = RecordWaiter(lambda r: r.name == "chatsvc.access" and getattr(r, "path", None) == "/user/register")
    logging.getLogger("chatsvc.access").addHandler(waiter)
    url = URL(server.base_url)
    try:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(
            b"POST /user/register HTTP/1.1\r\nHost: chat\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
        )
        # The interim answer shows the request reached the application, which now waits for the body.
        assert (await reader.readline()).startswith(b"HTTP/1.1 100")
        writer.write(b'{"username": "half')
        await writer.drain()
        writer.close()
        async with asyncio.timeout(5):
            await waiter.seen.wait()
    finally:
        logging.getLogger("chatsvc.access").removeHandler(waiter)
    about_it = [r for r in caplog.records if "/user/register" in r.getMessage()]
    assert [(r.levelno, getattr(r, "status", None)) for r in about_it] == [(logging.INFO, 499)]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
