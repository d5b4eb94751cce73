"""/user: registration, login, the caller's profile, password storage and tokens."""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer

from chatsvc.app import create_app
from chatsvc.config import Config
from tests.helpers import Api, assert_error

pytestmark = pytest.mark.both_engines

ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PROFILE_KEYS = {"id", "username", "nickName", "email", "headPic", "createTime"}
SEVEN_DAYS = 7 * 24 * 3600
ENV_SECRET = "a-secret-set-in-the-environment-for-tests"


def register_body(username: str = "alice", **changes: Any) -> dict[str, Any]:
    body = {"username": username, "password": "secret123", "nickName": "Alice", "email": f"{username}@example.com"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def stored_jwt_secret(config: Config) -> str:
    """The secret the app generated and kept in its database."""
    with sqlite3.connect(config.db_path) as conn:
        (secret,) = conn.execute("SELECT value FROM setting WHERE key = 'jwt_secret'").fetchone()
    return str(secret)


async def test_register_returns_the_public_profile(api: Api) -> None:
    resp = await api.post("/user/register", register_body(headPic="ignored"))
    assert resp.status == 201, resp.body
    user = resp.body
    assert set(user) == PROFILE_KEYS
    assert type(user["id"]) is int
    assert user["username"] == "alice" and user["nickName"] == "Alice" and user["email"] == "alice@example.com"
    assert user["headPic"] == ""
    assert ISO_MILLIS.match(user["createTime"]), user["createTime"]


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("nickName", "System"),
        ("nickName", " system "),
        ("nickName", "SYSTEM"),
        ("nickName", "S y s t e m"),
        ("nickName", "Sys\u200btem"),
        ("nickName", "\uff33\uff59\uff53\uff54\uff45\uff4d"),  # full-width letters
        ("username", "system"),
        ("username", "System"),
    ],
)
async def test_register_refuses_names_that_imitate_the_system_user(api: Api, field: str, name: str) -> None:
    body = {**register_body("mallory"), field: name}
    resp = await api.post("/user/register", body)
    assert_error(resp.status, resp.body, 400)
    assert resp.body["message"] == f"{field} is reserved: it would pass for the system user"
    login = await api.post("/user/login", {"username": body["username"], "password": "secret123"})
    assert_error(login.status, login.body, 400)
    # Names that merely contain the word are ordinary.
    ok = await api.post("/user/register", register_body("sysadmin", nickName="System Admin"))
    assert ok.status == 201, ok.body


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"username": None}, "username"),
        ({"username": ""}, "username"),
        ({"username": "   "}, "username"),
        ({"username": 42}, "username"),
        ({"nickName": None}, "nickName"),
        ({"nickName": ""}, "nickName"),
        ({"email": None}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"password": None}, "password"),
        ({"password": "12345"}, "password"),
        ({"password": 123456}, "password"),
    ],
)
async def test_register_validation_names_the_bad_field(api: Api, changes: dict[str, Any], field: str) -> None:
    resp = await api.post("/user/register", register_body(**changes))
    assert_error(resp.status, resp.body, 400)
    assert field in resp.body["message"]
    assert (await api.post("/user/login", {"username": "alice", "password": "secret123"})).status == 400


async def test_register_accepts_a_six_character_password(api: Api) -> None:
    resp = await api.post("/user/register", register_body(password="123456"))
    assert resp.status == 201, resp.body
    assert (await api.post("/user/login", {"username": "alice", "password": "123456"})).status == 201


async def test_register_duplicate_username_is_refused(api: Api) -> None:
    assert (await api.post("/user/register", register_body())).status == 201
    resp = await api.post("/user/register", register_body(nickName="Other", email="other@example.com"))
    assert_error(resp.status, resp.body, 400)
    assert "already exists" in resp.body["message"]
    # The first account is untouched.
    login = await api.post("/user/login", {"username": "alice", "password": "secret123"})
    assert login.body["user"]["nickName"] == "Alice"


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_register_stores_only_a_salted_scrypt_hash(api: Api, config: Config) -> None:
    await api.post("/user/register", register_body("alice", password="same-password"))
    await api.post("/user/register", register_body("bob", password="same-password"))
    with sqlite3.connect(config.db_path) as conn:
        hashes = dict(conn.execute("SELECT username, password_hash FROM user"))
        dump = "\n".join(conn.iterdump())
    assert "same-password" not in dump
    for stored in hashes.values():
        scheme, n, r, p, salt, key = stored.split("$")
        assert (scheme, int(n)) == ("scrypt", config.scrypt_n)
        assert int(r) >= 1 and int(p) >= 1 and salt and key
    # Salted: the same password hashes differently for each user.
    assert hashes["alice"] != hashes["bob"]


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_login_returns_user_and_a_seven_day_token(api: Api, config: Config) -> None:
    created = (await api.post("/user/register", register_body())).body
    resp = await api.post("/user/login", {"username": "alice", "password": "secret123"})
    assert resp.status == 201, resp.body
    assert set(resp.body) == {"user", "token"}
    assert resp.body["user"] == created
    claims = jwt.decode(resp.body["token"], stored_jwt_secret(config), algorithms=["HS256"])
    assert claims["userId"] == created["id"] and claims["username"] == "alice"
    assert claims["exp"] - claims["iat"] == SEVEN_DAYS
    assert abs(claims["iat"] - time.time()) < 60


async def test_login_wrong_password_and_unknown_user_get_one_message(api: Api) -> None:
    await api.post("/user/register", register_body())
    wrong_password = await api.post("/user/login", {"username": "alice", "password": "wrong-password"})
    unknown_user = await api.post("/user/login", {"username": "nobody", "password": "secret123"})
    assert_error(wrong_password.status, wrong_password.body, 400)
    assert wrong_password.body == unknown_user.body


@pytest.mark.parametrize("body", [{}, {"username": "alice"}, {"password": "secret123"}, {"username": 1, "password": 2}])
async def test_login_missing_or_mistyped_fields_are_refused(api: Api, body: dict[str, Any]) -> None:
    await api.post("/user/register", register_body())
    resp = await api.post("/user/login", body)
    assert_error(resp.status, resp.body, 400)


async def test_user_info_returns_the_caller(api: Api) -> None:
    alice = await api.new_user()
    resp = await api.get("/user/info", alice.token)
    assert resp.status == 200
    assert resp.body == alice.profile


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer a.b.c"],
)
async def test_user_info_without_a_valid_token_is_401(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await api.request("GET", "/user/info", headers=headers)
    assert_error(resp.status, resp.body, 401)
    assert resp.body["error"] == "Unauthorized"
    assert "token" not in resp.headers


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_user_info_refuses_expired_and_foreign_tokens(api: Api, config: Config) -> None:
    alice = await api.new_user()
    now = int(time.time())
    expired = jwt.encode(
        {"userId": alice.id, "username": alice.username, "iat": now - 100, "exp": now - 10},
        stored_jwt_secret(config),
        algorithm="HS256",
    )
    claims = {"userId": alice.id, "username": alice.username, "iat": now, "exp": now + 100}
    foreign = jwt.encode(claims, "another-secret-of-at-least-32-bytes", "HS256")
    for token in (expired, foreign):
        resp = await api.get("/user/info", token)
        assert_error(resp.status, resp.body, 401)


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_authenticated_response_carries_a_refreshed_token(api: Api, config: Config) -> None:
    alice = await api.new_user()
    resp = await api.get("/user/info", alice.token)
    refreshed = resp.headers["token"]
    claims = jwt.decode(refreshed, stored_jwt_secret(config), algorithms=["HS256"])
    assert claims["userId"] == alice.id and claims["username"] == alice.username
    assert claims["exp"] - claims["iat"] == SEVEN_DAYS
    again = await api.get("/user/info", refreshed)
    assert again.status == 200 and again.body["id"] == alice.id


@pytest.mark.sqlite_only  # looks into the SQLite file
async def test_public_routes_ignore_a_bad_or_expired_authorization_header(api: Api, config: Config) -> None:
    alice = await api.new_user("alice")
    now = int(time.time())
    claims = {"userId": alice.id, "username": "alice", "iat": now - 100, "exp": now - 10}
    expired = jwt.encode(claims, stored_jwt_secret(config), "HS256")
    for authorization in ("Bearer garbage", f"Bearer {expired}", "Basic Zm9vOmJhcg==", "Bearer"):
        headers = {"Authorization": authorization}
        login = await api.request(
            "POST", "/user/login", json={"username": "alice", "password": "secret123"}, headers=headers
        )
        assert login.status == 201, (authorization, login.body)
        register = await api.request(
            "POST", "/user/register", json=register_body(f"u{len(authorization)}"), headers=headers
        )
        assert register.status == 201, (authorization, register.body)


async def test_tokens_survive_a_restart_on_the_same_database(config: Config) -> None:
    first = TestServer(create_app(config), host="127.0.0.1")
    await first.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(str(first.make_url("")).rstrip("/"), session)
            alice = await api.new_user()
    finally:
        await first.close()

    second = TestServer(create_app(config), host="127.0.0.1")
    await second.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(str(second.make_url("")).rstrip("/"), session)
            resp = await api.get("/user/info", alice.token)
            assert resp.status == 200, resp.body
            assert resp.body["id"] == alice.id
    finally:
        await second.close()


async def test_jwt_secret_from_the_environment_is_used(tmp_path, config: Config) -> None:
    env_config = Config.from_env(
        {"CHATSVC_JWT_SECRET": ENV_SECRET, "CHATSVC_DB": str(tmp_path / "env.db")},
        host="127.0.0.1",
        port=0,
        scrypt_n=config.scrypt_n,
    )
    assert env_config.jwt_secret == ENV_SECRET
    server = TestServer(create_app(env_config), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(str(server.make_url("")).rstrip("/"), session)
            alice = await api.new_user()
    finally:
        await server.close()
    claims = jwt.decode(alice.token, ENV_SECRET, algorithms=["HS256"])
    assert claims["userId"] == alice.id
    with sqlite3.connect(env_config.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM setting WHERE key = 'jwt_secret'").fetchone() == (0,)


def test_jwt_secret_unset_or_empty_means_generated() -> None:
    assert Config.from_env({}).jwt_secret is None
    assert Config.from_env({"CHATSVC_JWT_SECRET": ""}).jwt_secret is None


async def test_user_find_by_username_returns_the_public_profile(api: Api) -> None:
    alice = await api.new_user("finder")
    bob = await api.register("findme")
    found = await api.get("/user/find", alice.token, username="findme")
    # Not a friend of the caller: no email.
    assert found.status == 200 and found.body == {key: value for key, value in bob.items() if key != "email"}
    missing = await api.get("/user/find", alice.token, username="nobody")
    assert_error(missing.status, missing.body, 404)
    for params in ({}, {"username": ""}, {"username": "x" * 51}):
        bad = await api.request("GET", "/user/find", token=alice.token, params=params)
        assert_error(bad.status, bad.body, 400)
    anonymous = await api.get("/user/find", username="findme")
    assert_error(anonymous.status, anonymous.body, 401)
