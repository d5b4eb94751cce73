"""Conventions every HTTP route shares: error shape, CORS, preflights, JSON bodies."""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest

from chatsvc.config import Config
from tests.helpers import Api, Response, assert_error, close_engineio_session, engineio_handshake, serve, session_id

ORIGIN = "http://app.example"
OTHER_ORIGIN = "http://other.example"
EVIL_ORIGIN = "http://evil.example"
ERROR_KEYS = {"statusCode", "message", "error"}


def header_values(resp: Response, name: str) -> set[str]:
    """The comma-separated values of a header, lower-cased."""
    return {v.strip().lower() for v in resp.headers.get(name, "").split(",") if v.strip()}


async def preflight(
    api: Api, path: str, origin: str = ORIGIN, method: str = "GET", params: dict[str, str] | None = None
) -> Response:
    return await api.request(
        "OPTIONS",
        path,
        params=params,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


# -- errors -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/user", "/chatroom/unknown", "/chat-history"])
async def test_unknown_route_is_a_404_json_error_even_without_login(api: Api, path: str) -> None:
    resp = await api.get(path)
    assert_error(resp.status, resp.body, 404)
    assert resp.body["error"] == "Not Found"
    assert resp.headers["Content-Type"].startswith("application/json")


async def test_wrong_method_is_a_405_json_error(api: Api) -> None:
    resp = await api.get("/user/login")
    assert_error(resp.status, resp.body, 405)
    assert "POST" in resp.headers["Allow"]


async def test_unexpected_exception_is_logged_and_answered_500_without_internals(
    api: Api, config: Config, caplog: pytest.LogCaptureFixture, pair
) -> None:
    alice, _, room = pair
    # A real fault below the handler: the table the query needs is gone.
    with sqlite3.connect(config.db_path) as conn:
        conn.execute("DROP TABLE chat_history")
    with caplog.at_level(logging.ERROR):
        resp = await api.request(
            "GET", "/chat-history/list", token=alice.token, params={"chatroomId": room}, headers={"Origin": ORIGIN}
        )
    assert_error(resp.status, resp.body, 500)
    assert resp.body == {"statusCode": 500, "message": "Internal server error", "error": "Internal Server Error"}
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert logged and "chat_history" in str(logged[0].exc_info[1])


# -- CORS ---------------------------------------------------------------------


async def test_cors_headers_on_success_and_every_error_status(api: Api) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    carol = await api.new_user()
    room = await api.one_to_one(alice, bob)
    origin = {"Origin": ORIGIN}
    responses = {
        200: await api.request("GET", "/user/info", token=alice.token, headers=origin),
        201: await api.request(
            "POST", "/user/login", json={"username": alice.username, "password": "secret123"}, headers=origin
        ),
        400: await api.request("POST", "/user/login", json={}, headers=origin),
        401: await api.request("GET", "/user/info", headers=origin),
        403: await api.request(
            "GET", "/chat-history/list", token=carol.token, params={"chatroomId": room}, headers=origin
        ),
        404: await api.request("GET", "/missing", headers=origin),
        405: await api.request("GET", "/user/login", headers=origin),
    }
    for status, resp in responses.items():
        assert resp.status == status, (status, resp.body)
        assert resp.headers.get("Access-Control-Allow-Origin") == "*", status
        assert "token" in header_values(resp, "Access-Control-Expose-Headers"), status
    assert responses[200].headers["token"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/user/info", "GET"),
        ("/user/login", "POST"),
        ("/chatroom/list", "GET"),
        ("/chat-history/list", "GET"),
        ("/does/not/exist", "GET"),
        ("/", "POST"),
    ],
)
async def test_preflight_on_any_path_is_2xx_without_login(api: Api, path: str, method: str) -> None:
    resp = await preflight(api, path, method=method)
    assert 200 <= resp.status < 300, resp.body
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert {"authorization", "content-type"} <= header_values(resp, "Access-Control-Allow-Headers")
    assert {method.lower(), "get", "post"} <= header_values(resp, "Access-Control-Allow-Methods")
    assert "token" in header_values(resp, "Access-Control-Expose-Headers")
    assert "token" not in resp.headers


async def test_preflight_ignores_a_bad_authorization_header(api: Api) -> None:
    resp = await api.request(
        "OPTIONS",
        "/chatroom/list",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET", "Authorization": "Bearer expired"},
    )
    assert 200 <= resp.status < 300


async def test_cors_origin_list_echoes_only_allowed_origins(config: Config) -> None:
    async with serve(config.with_changes(cors_origins=(ORIGIN, OTHER_ORIGIN))) as api:
        for origin in (ORIGIN, OTHER_ORIGIN):
            resp = await api.request("GET", "/missing", headers={"Origin": origin})
            assert resp.headers["Access-Control-Allow-Origin"] == origin
            assert "origin" in header_values(resp, "Vary")
            assert "token" in header_values(resp, "Access-Control-Expose-Headers")
            allowed = await preflight(api, "/chatroom/list", origin=origin)
            assert 200 <= allowed.status < 300 and allowed.headers["Access-Control-Allow-Origin"] == origin
        refused = await api.request("GET", "/missing", headers={"Origin": EVIL_ORIGIN})
        assert refused.status == 404 and "Access-Control-Allow-Origin" not in refused.headers
        refused_preflight = await preflight(api, "/chatroom/list", origin=EVIL_ORIGIN)
        assert "Access-Control-Allow-Origin" not in refused_preflight.headers

        handshake = await engineio_handshake(api, ORIGIN)
        assert handshake.status == 200
        assert handshake.headers.getall("Access-Control-Allow-Origin") == [ORIGIN]
        await close_engineio_session(api, session_id(handshake))
        foreign = await engineio_handshake(api, EVIL_ORIGIN)
        assert foreign.status == 400
        assert "Access-Control-Allow-Origin" not in foreign.headers


def test_cors_origins_from_the_environment() -> None:
    config = Config.from_env({"CHATSVC_CORS_ORIGINS": f" {ORIGIN} ,{OTHER_ORIGIN},"})
    assert config.cors_origins == (ORIGIN, OTHER_ORIGIN)
    assert Config.from_env({}).cors_origins == ("*",)
    assert Config.from_env({"CHATSVC_CORS_ORIGINS": " , "}).cors_origins == ("*",)


async def test_socketio_path_has_exactly_one_allow_origin_header(api: Api) -> None:
    handshake = await engineio_handshake(api, ORIGIN)
    assert handshake.status == 200, handshake.body
    assert len(handshake.headers.getall("Access-Control-Allow-Origin")) == 1
    await close_engineio_session(api, session_id(handshake))
    # A browser preflights the very URL it is about to request, Engine.IO query included.
    resp = await preflight(api, "/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert 200 <= resp.status < 300
    assert len(resp.headers.getall("Access-Control-Allow-Origin")) == 1


async def test_socketio_cors_follows_the_origin_list_without_credentials(config: Config) -> None:
    polling = {"EIO": "4", "transport": "polling"}
    async with serve(config.with_changes(cors_origins=(ORIGIN,))) as api:
        allowed = await engineio_handshake(api, ORIGIN)
        assert allowed.status == 200
        assert allowed.headers.getall("Access-Control-Allow-Origin") == [ORIGIN]
        assert "Access-Control-Allow-Credentials" not in allowed.headers
        await close_engineio_session(api, session_id(allowed))
        allowed_preflight = await preflight(api, "/socket.io/", method="POST", params=polling)
        assert 200 <= allowed_preflight.status < 300
        assert allowed_preflight.headers.getall("Access-Control-Allow-Origin") == [ORIGIN]
        assert "Access-Control-Allow-Credentials" not in allowed_preflight.headers
        for refused in (
            await engineio_handshake(api, EVIL_ORIGIN),
            await preflight(api, "/socket.io/", origin=EVIL_ORIGIN, method="POST", params=polling),
        ):
            assert "Access-Control-Allow-Origin" not in refused.headers
            assert "Access-Control-Allow-Credentials" not in refused.headers


async def test_socketio_cors_with_any_origin_allowed_sends_no_credentials(api: Api) -> None:
    handshake = await engineio_handshake(api, EVIL_ORIGIN)
    assert handshake.status == 200
    assert "Access-Control-Allow-Credentials" not in handshake.headers
    await close_engineio_session(api, session_id(handshake))
    resp = await preflight(api, "/socket.io/", origin=EVIL_ORIGIN, params={"EIO": "4", "transport": "polling"})
    assert "Access-Control-Allow-Credentials" not in resp.headers


# -- JSON bodies --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"username=alice&password=secret123", "application/x-www-form-urlencoded"),
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
    ],
)
async def test_non_json_body_is_400(api: Api, data: bytes, content_type: str) -> None:
    for path in ("/user/register", "/user/login"):
        resp = await api.request("POST", path, data=data, headers={"Content-Type": content_type})
        assert_error(resp.status, resp.body, 400)


@pytest.mark.parametrize("body", [[], [{"username": "alice", "password": "secret123"}], "alice", 42, None])
async def test_json_body_that_is_not_an_object_is_400(api: Api, body: object) -> None:
    await api.new_user("alice")
    for path in ("/user/register", "/user/login"):
        resp = await api.request("POST", path, data=json.dumps(body), headers={"Content-Type": "application/json"})
        assert_error(resp.status, resp.body, 400)
        assert "object" in resp.body["message"]


async def test_unknown_body_fields_are_ignored(api: Api) -> None:
    resp = await api.post(
        "/user/register",
        {
            "username": "alice",
            "password": "secret123",
            "confirmPassword": "secret123",
            "nickName": "Alice",
            "email": "alice@example.com",
            "captcha": "123456",
            "id": 999,
            "isAdmin": True,
        },
    )
    assert resp.status == 201, resp.body
    assert resp.body["id"] != 999 and set(resp.body) == {
        "id",
        "username",
        "nickName",
        "email",
        "headPic",
        "createTime",
    }
    login = await api.post("/user/login", {"username": "alice", "password": "secret123", "remember": True})
    assert login.status == 201, login.body


async def test_ids_in_json_are_numbers(api: Api, pair) -> None:
    alice, _, room = pair
    assert type(room) is int
    listed = (await api.get("/chatroom/list", alice.token)).body
    assert type(listed[0]["id"]) is int and all(type(i) is int for i in listed[0]["userIds"])
    assert type((await api.get("/user/info", alice.token)).body["id"]) is int
    assert set((await api.get("/user/info")).body) == ERROR_KEYS
