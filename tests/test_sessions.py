"""Sessions: logout ends every token and socket; renewed tokens keep the login time and stop at the session's end."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio

from chatsvc.auth import TokenService
from chatsvc.config import Config
from chatsvc.errors import Unauthorized
from tests.conftest import make_config
from tests.helpers import EVENT_TIMEOUT, Api, User, assert_error

pytestmark = pytest.mark.both_engines

MAX_AGE = 3 * 3600
TTL = 3600


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, session_max_age_seconds=MAX_AGE, token_ttl_seconds=TTL)


def mint(config: Config, user: User, *, auth_time: int | None, **claims: Any) -> str:
    """A token signed with the service's own secret, as if issued earlier."""
    with sqlite3.connect(config.db_path) as conn:
        (secret,) = conn.execute("SELECT value FROM setting WHERE key = 'jwt_secret'").fetchone()
    now = int(time.time())
    body: dict[str, Any] = {"userId": user.id, "username": user.username, "tv": 0, "iat": now, "exp": now + TTL}
    if auth_time is not None:
        body["auth_time"] = auth_time
    return jwt.encode({**body, **claims}, secret, algorithm="HS256")


def claims_of(config: Config, token: str) -> dict[str, Any]:
    with sqlite3.connect(config.db_path) as conn:
        (secret,) = conn.execute("SELECT value FROM setting WHERE key = 'jwt_secret'").fetchone()
    return jwt.decode(token, secret, algorithms=["HS256"])


async def test_logout_ends_every_token_of_the_caller_and_closes_their_sockets(
    api: Api, sockets: Callable[..., Any]
) -> None:
    alice = await api.new_user("alice")
    other_device = await api.login("alice")
    bob = await api.new_user("bob")
    phone = await sockets(other_device.token)
    bobs = await sockets(bob.token)
    gone = asyncio.Event()
    phone.sio.on("disconnect", lambda *_: gone.set())

    out = await api.post("/user/logout", token=alice.token)
    assert out.status == 201 and out.body == "Logged out", out.body
    # No renewed token for a session that just ended.
    assert "token" not in out.headers

    await asyncio.wait_for(gone.wait(), EVENT_TIMEOUT)
    for token in (alice.token, other_device.token):
        refused = await api.get("/user/info", token)
        assert_error(refused.status, refused.body, 401)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sockets(token)
    # Only the caller's sessions end.
    assert bobs.sio.connected and (await api.get("/user/info", bob.token)).status == 200
    again = await api.login("alice")
    assert (await api.get("/user/info", again.token)).status == 200


async def test_logout_needs_a_login(api: Api) -> None:
    anonymous = await api.post("/user/logout")
    assert_error(anonymous.status, anonymous.body, 401)


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_renewed_tokens_keep_the_login_time(api: Api, config: Config) -> None:
    alice = await api.new_user("alice")
    logged_in = claims_of(config, alice.token)
    assert logged_in["auth_time"] == logged_in["iat"]

    earlier = int(time.time()) - 3600
    renewed = (await api.get("/user/info", mint(config, alice, auth_time=earlier))).headers["token"]
    assert claims_of(config, renewed)["auth_time"] == earlier
    twice = (await api.get("/user/info", renewed)).headers["token"]
    assert claims_of(config, twice)["auth_time"] == earlier


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_renewal_stops_at_the_end_of_the_session(api: Api, config: Config) -> None:
    alice = await api.new_user("alice")
    # Ten minutes of session left: the renewed token lasts ten minutes, not the full TTL.
    started = int(time.time()) - MAX_AGE + 600
    renewed = (await api.get("/user/info", mint(config, alice, auth_time=started))).headers["token"]
    assert claims_of(config, renewed)["exp"] == started + MAX_AGE


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_tokens_past_the_session_age_are_refused(api: Api, config: Config, sockets) -> None:
    alice = await api.new_user("alice")
    # Its own exp is an hour away, but the login was longer ago than the session may last.
    stale = mint(config, alice, auth_time=int(time.time()) - MAX_AGE - 1)
    refused = await api.get("/user/info", stale)
    assert_error(refused.status, refused.body, 401)
    assert "log in again" in refused.body["message"]
    assert "token" not in refused.headers
    with pytest.raises(socketio.exceptions.ConnectionError, match="Session expired"):
        await sockets(stale)
    # Tokens from before auth_time existed count from their issue time.
    legacy = mint(config, alice, auth_time=None, iat=int(time.time()) - MAX_AGE - 1)
    assert (await api.get("/user/info", legacy)).status == 401
    assert (await api.get("/user/info", mint(config, alice, auth_time=None))).status == 200


def test_session_max_age_setting() -> None:
    assert Config.from_env({}).session_max_age_seconds == 30 * 24 * 3600
    assert Config.from_env({"CHATSVC_SESSION_MAX_AGE": "3600"}).session_max_age_seconds == 3600
    with pytest.raises(ValueError, match="CHATSVC_SESSION_MAX_AGE"):
        Config.from_env({"CHATSVC_SESSION_MAX_AGE": "0"})


SECRET = "a-signing-secret-of-at-least-32-bytes"


def test_a_token_verified_once_still_expires_and_still_ends_with_its_session() -> None:
    clock = [time.time()]
    tokens = TokenService(60, 3600, secret=SECRET, clock=lambda: clock[0])
    token = tokens.issue(7, "alice", 0)
    assert tokens.verify(token).user_id == 7  # checked by PyJWT, then kept
    clock[0] += 59
    assert tokens.verify(token).user_id == 7
    clock[0] += 1  # its exp second: expired, as PyJWT has it
    with pytest.raises(Unauthorized, match="Token expired"):
        tokens.verify(token)

    # A token from a service with a longer session age, kept by one with a shorter: the session still ends.
    login = int(time.time()) - 100
    long_lived = TokenService(3600, 10 * 3600, secret=SECRET).issue(7, "alice", 0, auth_time=login)
    clock[0] = time.time()
    short = TokenService(3600, 120, secret=SECRET, clock=lambda: clock[0])
    assert short.verify(long_lived).auth_time == login
    clock[0] = login + 120
    with pytest.raises(Unauthorized, match="Session expired"):
        short.verify(long_lived)


def test_a_session_gets_one_token_per_second_and_a_new_one_for_a_new_token_version() -> None:
    clock = [float(int(time.time()))]
    tokens = TokenService(60, 3600, secret=SECRET, clock=lambda: clock[0])
    login = int(clock[0])
    first = tokens.issue(7, "alice", 0, auth_time=login)
    clock[0] += 0.5
    assert tokens.issue(7, "alice", 0, auth_time=login) == first
    renewed = tokens.issue(7, "alice", 1, auth_time=login)
    assert renewed != first and tokens.verify(renewed).token_version == 1
    clock[0] += 0.5
    later = tokens.issue(7, "alice", 0, auth_time=login)
    claims = jwt.decode(later, SECRET, algorithms=["HS256"], options={"verify_iat": False})  # a second ahead
    assert claims["iat"] == int(clock[0]) == login + 1
