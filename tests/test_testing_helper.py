"""chatsvc.testing and its pytest plugin, as another project's tests use them."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import socketio

from chatsvc.state import STATE
from chatsvc.testing import ChatsvcServer, run_chatsvc

pytest_plugins = ("pytester",)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


async def get_json(chatsvc: ChatsvcServer, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with chatsvc.http.get(chatsvc.base_url + path, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_chatsvc_fixture_serves_http_and_socket_io_on_loopback(chatsvc: ChatsvcServer) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", chatsvc.base_url)
    alice = await chatsvc.create_user("alice")
    bob = await chatsvc.create_user("bob", nick_name="Bobby")
    assert bob["nickName"] == "Bobby" and bob["email"] == "bob@example.com"
    room = await chatsvc.create_room([alice, bob], type="one-to-one")
    assert await chatsvc.create_room(["bob", "alice"], type="one-to-one") == room

    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    b = await chatsvc.connect(bob)
    b.on("message", received.put_nowait)
    await b.call("joinRoom", {"chatroomId": room, "userId": bob["id"]})
    a = await chatsvc.connect(alice["token"])
    await a.call("joinRoom", {"chatroomId": room, "userId": alice["id"]})
    payload = {"sendUserId": alice["id"], "chatroomId": room, "message": {"type": "text", "content": "hello"}}
    ack = await a.call("sendMessage", payload)
    async with asyncio.timeout(5):
        while (event := await received.get())["type"] != "sendMessage":
            pass
    assert event["message"] == ack

    status, info = await get_json(chatsvc, "/user/info", alice["token"])
    assert status == 200 and info["username"] == "alice"


async def test_chatsvc_fixture_users_log_in_and_get_fresh_tokens(chatsvc: ChatsvcServer) -> None:
    carol = await chatsvc.create_user(password="carols-password")
    body = {"username": carol["username"], "password": "carols-password"}
    async with chatsvc.http.post(chatsvc.base_url + "/user/login", json=body) as resp:
        assert resp.status == 201
    token = await chatsvc.token(carol["username"])
    status, info = await get_json(chatsvc, "/user/info", token)
    assert status == 200 and info["id"] == carol["id"]


async def test_chatsvc_fixture_groups_have_every_member(chatsvc: ChatsvcServer) -> None:
    users = [await chatsvc.create_user() for _ in range(3)]
    room = await chatsvc.create_room(users, name="Trio")
    status, info = await get_json(chatsvc, f"/chatroom/info/{room}", users[2]["token"])
    assert status == 200 and info["name"] == "Trio" and info["type"] is True
    assert [u["id"] for u in info["users"]] == [u["id"] for u in users]
    # The app and its state are there for white-box checks.
    assert chatsvc.app[STATE] is chatsvc.state and chatsvc.config.scrypt_n == 16


class TestSettings:
    @pytest.fixture
    def chatsvc_settings(self) -> dict[str, Any]:
        return {"api_key": "k", "message_max_length": 10}

    async def test_chatsvc_settings_reach_the_server(self, chatsvc: ChatsvcServer) -> None:
        assert chatsvc.config.api_key == "k"
        alice = await chatsvc.create_user()
        room = await chatsvc.create_room([alice])
        client = await chatsvc.connect(alice)
        await client.call("joinRoom", {"chatroomId": room})
        payload = {"chatroomId": room, "message": {"type": "text", "content": "x" * 11}}
        assert (await client.call("sendMessage", payload))["statusCode"] == 400


async def test_run_chatsvc_cleans_up_clients_and_the_database() -> None:
    async with run_chatsvc() as chat:
        db_folder = chat.config.db_path.parent
        user = await chat.create_user()
        client = await chat.connect(user)
        assert client.connected and db_folder.exists()
    assert not client.connected
    assert not db_folder.exists()


async def test_run_chatsvc_refuses_a_bad_token_like_the_real_server() -> None:
    async with run_chatsvc() as chat:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await chat.connect("not-a-token")


def test_docs_example_passes_in_a_fresh_project(pytester: pytest.Pytester) -> None:
    """The example test of docs/testing.md, copied into an empty project, passes with the installed plugin."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    example = next(block for block in blocks if "async def test_" in block)
    pytester.makepyfile(test_example=example)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_docs_example_with_the_docs_ini_line_runs_without_warnings(pytester: pytest.Pytester) -> None:
    """docs/testing.md's pytest configuration silences pytest-asyncio's warning about the fixture loop scope."""
    text = DOCS.read_text(encoding="utf-8")
    example = next(
        block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "async def test_" in block
    )
    (ini,) = re.findall(r"```ini\n(.*?)```", text, flags=re.S)
    pytester.makepyfile(test_example=example)
    pytester.makeini(ini)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, warnings=0)
    # pytest-asyncio warns while pytest starts, outside any test: it shows only in the output.
    output = result.stdout.str() + result.stderr.str()
    assert "Warning" not in output, output
