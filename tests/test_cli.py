"""The ``chatsvc`` console script: --version, init-db, user add, token, and how serve starts or refuses to."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from chatsvc import __version__
from chatsvc.config import Config
from chatsvc.testing import TEST_SCRYPT_N, run_chatsvc

CLI_TIMEOUT = 60
STARTUP_TIMEOUT = 15.0


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any CHATSVC_ setting, plus a cheap password hash and ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSVC_")}
    full_env.update({"CHATSVC_SCRYPT_N": str(TEST_SCRYPT_N), **(env or {})})
    return full_env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m chatsvc ARGS`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "chatsvc", *args],
        capture_output=True,
        text=True,
        env=cli_env(env),
        cwd=cwd,
        timeout=CLI_TIMEOUT,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "chat.db"


async def login_status(db: Path, username: str, password: str) -> int:
    """Log in against a server running on the database file the CLI wrote."""
    async with run_chatsvc(Config(db_path=db, scrypt_n=TEST_SCRYPT_N)) as server:
        body = {"username": username, "password": password}
        async with server.http.post(server.base_url + "/user/login", json=body) as resp:
            return resp.status


def test_cli_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"chatsvc {__version__}"


def test_cli_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "chatsvc"
    assert script.exists(), "run `pip install -e .` to install the console script"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert result.returncode == 0 and __version__ in result.stdout


def test_cli_init_db_creates_the_schema_and_exits(db: Path) -> None:
    result = run_cli("init-db", "--db", str(db))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert {"user", "chatroom", "user_chatroom", "chat_history", "friendship", "favorite", "setting"} <= tables
    again = run_cli("init-db", "--db", str(db))
    assert again.returncode == 0, again.stderr


def test_cli_init_db_reads_the_path_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "env" / "chat.db"
    result = run_cli("init-db", env={"CHATSVC_DB": str(db)})
    assert result.returncode == 0, result.stderr
    assert db.exists()


async def test_cli_user_add_creates_a_user_who_can_log_in(db: Path) -> None:
    result = run_cli("user", "add", "alice", "--password", "wonderland", "--nick", "Alice", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("created user alice (id 1)")
    assert "password:" not in result.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT nick_name, email FROM user WHERE username = 'alice'").fetchone() == ("Alice", "")
    assert await login_status(db, "alice", "wonderland") == 201
    assert await login_status(db, "alice", "wrong-password") == 400


async def test_cli_user_add_generates_and_prints_a_password(db: Path) -> None:
    result = run_cli("user", "add", "bob", "--email", "bob@example.com", "--db", str(db))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("password: ")
    password = lines[1].removeprefix("password: ")
    assert len(password) >= 12
    assert await login_status(db, "bob", password) == 201


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--password", "short"], "password must be"),
        (["--email", "not-an-email"], "email is not a valid email address"),
        (["--nick", " "], "nick must not be empty"),
        (["--nick", "System"], "nickName is reserved: it would pass for the system user"),
    ],
)
def test_cli_user_add_refuses_bad_input(db: Path, args: list[str], message: str) -> None:
    result = run_cli("user", "add", "carol", *args, "--db", str(db))
    assert result.returncode == 1 and message in result.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM user").fetchone() == (0,)


def test_cli_user_add_refuses_the_system_users_name(db: Path) -> None:
    result = run_cli("user", "add", "SYSTEM", "--db", str(db))
    assert result.returncode == 1 and "username is reserved: it would pass for the system user" in result.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM user").fetchone() == (0,)


def test_cli_user_add_refuses_a_taken_username(db: Path) -> None:
    assert run_cli("user", "add", "dave", "--db", str(db)).returncode == 0
    again = run_cli("user", "add", "dave", "--db", str(db))
    assert again.returncode == 1 and "Username already exists" in again.stderr


async def test_cli_token_is_signed_with_the_secret_kept_in_the_database(db: Path) -> None:
    assert run_cli("user", "add", "erin", "--db", str(db)).returncode == 0
    result = run_cli("token", "erin", "--db", str(db))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    async with run_chatsvc(Config(db_path=db, scrypt_n=TEST_SCRYPT_N)) as server:
        headers = {"Authorization": f"Bearer {token}"}
        async with server.http.get(server.base_url + "/user/info", headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["username"] == "erin"


def test_cli_token_uses_the_secret_from_the_environment(db: Path) -> None:
    secret = "an-environment-secret-of-enough-length-for-hs256"
    assert run_cli("user", "add", "frank", "--db", str(db)).returncode == 0
    result = run_cli("token", "frank", "--db", str(db), env={"CHATSVC_JWT_SECRET": secret})
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["username"] == "frank" and claims["userId"] == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM setting WHERE key = 'jwt_secret'").fetchone() == (0,)


def test_cli_token_refuses_an_unknown_user(db: Path) -> None:
    assert run_cli("init-db", "--db", str(db)).returncode == 0
    result = run_cli("token", "nobody", "--db", str(db))
    assert result.returncode == 1 and "Unknown user: nobody" in result.stderr and result.stdout == ""


def test_cli_token_without_a_database_says_so_and_creates_none(tmp_path: Path) -> None:
    # In an empty folder, with the default path: nothing may appear, not even the data/ folder.
    result = run_cli("token", "erin", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("chatsvc: no database at data/chatsvc.db"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_token_with_a_database_path_that_does_not_exist_creates_none(db: Path) -> None:
    result = run_cli("token", "erin", "--db", str(db))
    assert result.returncode == 1 and f"no database at {db}" in result.stderr
    assert not db.parent.exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--port", "99999", "--port is out of range: 99999"),
        ("--port", "-1", "--port is out of range: -1"),
        ("--port", "http", "--port must be an integer, got 'http'"),
        ("--db", "", "--db must name a file"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_cli_a_bad_flag_stops_the_start_with_one_line_naming_it(
    tmp_path: Path, command: str, flag: str, value: str, message: str
) -> None:
    args = [command, flag, value] if flag == "--db" else [command, flag, value, "--db", str(tmp_path / "chat.db")]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"chatsvc: {message}\n" and result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CHATSVC_PORT", "99999", "CHATSVC_PORT is out of range: 99999"),
        ("CHATSVC_PORT", "-1", "CHATSVC_PORT is out of range: -1"),
        ("CHATSVC_SMTP_URL", "ftp://nope", "CHATSVC_SMTP_URL must look like smtp://"),
        ("CHATSVC_SMTP_URL", "smtp://", "CHATSVC_SMTP_URL must look like smtp://"),
        ("CHATSVC_SMTP_URL", "smtp://mail.example.com:99999", "CHATSVC_SMTP_URL must look like smtp://"),
        ("CHATSVC_MAIL_FROM", "chatsvc", "CHATSVC_MAIL_FROM must be a mail address"),
        ("CHATSVC_CORS_ORIGINS", "https://chat.example.com/", "CHATSVC_CORS_ORIGINS: 'https://chat.example.com/' is"),
        ("CHATSVC_SCRYPT_N", str(2**20), "CHATSVC_SCRYPT_N is out of range"),
        ("CHATSVC_PING_INTERVAL", str(30 * 86400), "CHATSVC_PING_INTERVAL is out of range"),
        ("CHATSVC_REDIS_URL", "redis://localhost:port/0", "CHATSVC_REDIS_URL has an invalid port"),
        ("CHATSVC_DB", " ", "CHATSVC_DB must name a file"),
    ],
)
def test_cli_a_bad_setting_stops_the_start_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = run_cli("serve", env={"CHATSVC_DB": str(tmp_path / "chat.db"), variable: value}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"chatsvc: {message}") and len(result.stderr.splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 that another socket listens on for the whole test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_cli_a_taken_port_is_one_line_and_exit_1(tmp_path: Path, taken_port: int, command: str) -> None:
    db = tmp_path / "chat.db"
    result = run_cli(command, "--host", "127.0.0.1", "--port", str(taken_port), "--db", str(db))
    assert result.returncode == 1
    assert result.stderr == f"chatsvc: cannot listen on 127.0.0.1:{taken_port}: the port is already in use" + (
        " (another chatsvc, or another program?)\n"
    )
    assert not db.exists()


def test_cli_a_host_that_does_not_resolve_is_one_line_and_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    result = run_cli("serve", "--port", "0", "--db", str(db), env={"CHATSVC_HOST": "not-a-host.invalid"})
    assert result.returncode == 1
    assert result.stderr.startswith("chatsvc: cannot listen on not-a-host.invalid:0: the host name does not resolve")
    assert len(result.stderr.splitlines()) == 1 and not db.exists()


async def read_line_with(stream: asyncio.StreamReader, marker: str) -> str:
    """The first line of a child's output that contains ``marker``; fails if the stream ends first."""
    seen = []
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while marker not in (line := (await stream.readline()).decode()):
            assert line, f"output ended without {marker!r}: {seen}"
            seen.append(line)
    return line


async def test_cli_serve_says_where_it_listens_its_database_and_auth_mode(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "chatsvc", "serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db)],
        env=cli_env({"CHATSVC_SOCKET_AUTH": "trust-client"}),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = await read_line_with(proc.stderr, " serving ")
        found = re.search(r"serving (http://127\.0\.0\.1:(\d+)/); database (.+); socket auth: (.+)$", line)
        assert found, line
        url, port, shown_db, auth = found.groups()
        assert int(port) > 0 and shown_db == str(db) and auth == "trust-client (INSECURE)"
        # The line is written once the server listens: the URL answers at once.
        async with aiohttp.ClientSession() as session, session.get(url + "healthz") as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STARTUP_TIMEOUT):
            await proc.wait()
