"""Secrets stay with the service's user: private database files, a strong signing secret, nothing secret in logs."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest

from chatsvc.config import Config
from chatsvc.db import Database
from chatsvc.instance_lock import instance_lock_path
from chatsvc.testing import run_chatsvc
from tests.conftest import make_config
from tests.helpers import Api, connect_socket
from tests.process import ChatsvcProcess, run_chatsvc_command

# The one line allowed to carry a code: the stand-in for the mail when SMTP is not configured (chatsvc/mail.py).
MAIL_STAND_IN = re.compile(r"INFO chatsvc\.mail: verification code for (\S+) \(.*\): (\d{6})$")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The common default umask, under which files are created readable by everyone."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
async def test_data_folder_is_0700_and_database_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with run_chatsvc(config) as server:
        api = Api(server.base_url, server.http)
        await api.new_user()  # a write, so the -wal file has content
        db = config.db_path
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), instance_lock_path(db)]
        assert all(path.exists() for path in files)
        assert mode_of(db.parent) == 0o700
        assert {path.name: mode_of(path) for path in files} == {path.name: 0o600 for path in files}


async def test_start_warns_when_other_users_can_read_an_existing_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data" / "chat.db"
    db = Database(path)
    await db.open()
    await db.close()
    caplog.set_level(logging.WARNING, logger="chatsvc.db")
    db = Database(path)
    await db.open()
    await db.close()
    assert not caplog.records, "private files: no warning"

    path.chmod(0o644)
    path.parent.chmod(0o755)
    await db.open()
    await db.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any(f"folder {path.parent} is readable" in w and "chmod 700" in w for w in warnings)
    assert any(f"file {path} is readable" in w and "chmod 600" in w for w in warnings)


def test_a_jwt_secret_shorter_than_32_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="CHATSVC_JWT_SECRET must be at least 32 bytes"):
        Config.from_env({"CHATSVC_JWT_SECRET": "x" * 31})
    assert Config.from_env({"CHATSVC_JWT_SECRET": "x" * 32}).jwt_secret == "x" * 32
    # Bytes, not characters: 16 two-byte characters are enough.
    assert Config.from_env({"CHATSVC_JWT_SECRET": "é" * 16}).jwt_secret == "é" * 16
    assert Config.from_env({"CHATSVC_JWT_SECRET": ""}).jwt_secret is None


async def test_serve_with_a_short_jwt_secret_exits_2_naming_the_variable(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    status, _, stderr = await run_chatsvc_command(
        "serve", "--port", "0", "--db", str(db), env={"CHATSVC_JWT_SECRET": "short-secret"}
    )
    assert status == 2
    assert "CHATSVC_JWT_SECRET" in stderr and "32 bytes" in stderr
    assert not db.exists()


async def test_debug_log_shows_no_password_hash_token_secret_or_code(tmp_path: Path) -> None:
    """A whole DEBUG run (first start, register, login, chat, code request, password change), grepped."""
    db = tmp_path / "chat.db"
    server = ChatsvcProcess(db, env={"CHATSVC_LOG_LEVEL": "DEBUG"})
    await server.start()
    assert server.proc is not None and server.proc.stderr is not None
    stderr = server.proc.stderr
    lines: list[str] = []
    codes: asyncio.Queue[str] = asyncio.Queue()

    async def read_log() -> None:
        # Read all along: a DEBUG log must never fill the pipe and stall the server.
        async for raw in stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if found := MAIL_STAND_IN.search(line):
                codes.put_nowait(found.group(2))

    reader = asyncio.create_task(read_log())
    old_password, new_password = f"old-{secrets.token_hex(8)}", f"new-{secrets.token_hex(8)}"
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(server.url, session)
            await api.register("alice", password=old_password)
            alice = await api.login("alice", old_password)
            bob = await api.new_user()
            room = await api.one_to_one(alice, bob)
            client = await connect_socket(server.url, alice.token)
            await client.join(alice, room)
            await client.send(None, room, "hi")
            await client.disconnect()
            with closing(sqlite3.connect(db)) as conn:
                (old_hash,) = conn.execute("SELECT password_hash FROM user WHERE username = 'alice'").fetchone()

            assert (await api.get("/user/update_password/captcha", address="alice@example.com")).status == 200
            async with asyncio.timeout(10):
                code = await codes.get()
            change = {"username": "alice", "email": "alice@example.com", "password": new_password, "captcha": code}
            assert (await api.post("/user/update_password", change)).status == 201
            renewed = await api.login("alice", new_password)
    finally:
        server.terminate()
        await server.wait(15)
        await reader
    with closing(sqlite3.connect(db)) as conn:
        (new_hash,) = conn.execute("SELECT password_hash FROM user WHERE username = 'alice'").fetchone()
        (jwt_secret,) = conn.execute("SELECT value FROM setting WHERE key = 'jwt_secret'").fetchone()

    log = "\n".join(lines)
    secrets_by_name = {
        "old password": old_password,
        "new password": new_password,
        "old password hash": old_hash,
        "old hash's key": old_hash.rsplit("$", 1)[1],
        "new password hash": new_hash,
        "new hash's key": new_hash.rsplit("$", 1)[1],
        "token": alice.token,
        "token signature": alice.token.rsplit(".", 1)[1],
        "renewed token": renewed.token,
        "JWT secret": jwt_secret,
    }
    leaked = [name for name, value in secrets_by_name.items() if value in log]
    assert leaked == [], f"secrets in the DEBUG log: {leaked}"
    with_code = [line for line in lines if code in line]
    assert len(with_code) == 1 and MAIL_STAND_IN.search(with_code[0]), with_code
