"""The ``chatsvc`` console script: --version, init-db, user add, token (serve is run by tests/process.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from chatsvc import __version__
from chatsvc.config import Config
from chatsvc.testing import TEST_SCRYPT_N, run_chatsvc

CLI_TIMEOUT = 60


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m chatsvc ARGS`` in a child process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSVC_")}
    full_env.update({"CHATSVC_SCRYPT_N": str(TEST_SCRYPT_N), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "chatsvc", *args], capture_output=True, text=True, env=full_env, timeout=CLI_TIMEOUT
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
    result = run_cli("token", "nobody", "--db", str(db))
    assert result.returncode == 1 and "Unknown user: nobody" in result.stderr and result.stdout == ""
