"""The demo page over HTTP, its static files, and the demo data behind ``make demo``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from chatsvc.config import Config
from chatsvc.demo import DEMO_GROUP, DEMO_PASSWORD, DemoSeed, demo_banner, prepare_demo
from tests.helpers import Api, assert_error
from tests.process import free_port

STARTUP_TIMEOUT = 15.0


async def test_demo_page_index_is_html_without_login(api: Api) -> None:
    # Clients send whatever token they hold; a public page ignores it.
    resp = await api.request("GET", "/", headers={"Authorization": "Bearer not-a-token"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<script src="/static/app.js"' in resp.body and '<script src="/static/sio.js"' in resp.body
    assert 'id="auth-form"' in resp.body
    policy = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "content_type", "marker"),
    [
        ("app.js", "text/javascript; charset=utf-8", "function openRoom"),
        ("sio.js", "text/javascript; charset=utf-8", "class SocketClient"),
        ("style.css", "text/css; charset=utf-8", ".msg"),
    ],
)
async def test_demo_page_static_file_has_its_content_type(api: Api, name: str, content_type: str, marker: str) -> None:
    resp = await api.get(f"/static/{name}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == content_type
    assert resp.headers["Cache-Control"] == "no-cache"
    assert marker in resp.body


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/..%2F__init__.py", "/static/%2E%2E%2Fschema.sql"])
async def test_demo_page_unknown_static_file_is_404(api: Api, path: str) -> None:
    async with api.session.get(api.base_url + path) as resp:
        assert_error(resp.status, await resp.json(), 404)


async def test_demo_page_scripts_use_no_html_sinks() -> None:
    # User text must reach the page through textContent only: no innerHTML-like sinks at all.
    static = Path(__file__).parent.parent / "chatsvc" / "static"
    for script in ("app.js", "sio.js"):
        source = (static / script).read_text()
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", source), script


async def test_demo_seed_creates_users_rooms_and_messages_once(config: Config, api: Api) -> None:
    everyone = ("alice", "bob", "carol")
    assert await prepare_demo(config) == DemoSeed(created=everyone, existing=(), demo_password=everyone)

    resp = await api.post("/user/login", {"username": "alice", "password": DEMO_PASSWORD})
    assert resp.status == 201, resp.body
    token = resp.body["token"]
    rooms = (await api.get("/chatroom/list", token)).body
    by_name = {room["name"]: room for room in rooms}
    assert set(by_name) == {DEMO_GROUP, "Bob"}
    group, direct = by_name[DEMO_GROUP], by_name["Bob"]
    assert group["type"] is True and group["userCount"] == 3
    assert direct["type"] is False and direct["userCount"] == 2
    group_history = (await api.get("/chat-history/list", token, chatroomId=group["id"])).body
    assert [m["sender"]["username"] for m in group_history] == ["alice", "bob", "carol"]
    assert len((await api.get("/chat-history/list", token, chatroomId=direct["id"])).body) == 2
    friends = (await api.get("/friendship/list", token)).body
    assert sorted(friend["username"] for friend in friends) == ["bob", "carol"]
    for username in ("bob", "carol"):
        login = await api.post("/user/login", {"username": username, "password": DEMO_PASSWORD})
        assert login.status == 201, login.body

    again = await prepare_demo(config)
    assert again == DemoSeed(created=(), existing=everyone, demo_password=everyone)
    assert (await api.get("/chatroom/list", token)).body == rooms
    assert (await api.get("/chat-history/list", token, chatroomId=group["id"])).body == group_history
    banner = demo_banner(config, again, "http://127.0.0.1:3005/")
    assert banner == (
        f"alice, bob and carol already existed in {config.db_path}: their passwords were not changed.\n"
        f"Open http://127.0.0.1:3005/ and log in as alice, bob or carol with password: {DEMO_PASSWORD}"
    )


async def test_demo_seed_after_the_readme_tour_adds_carol_and_leaves_alice_and_bob_their_passwords(
    config: Config, api: Api
) -> None:
    # The README tour registers alice and bob with a password of their own and opens their room.
    for username in ("alice", "bob"):
        await api.register(username, password="secret123")
    alice, bob = await api.login("alice"), await api.login("bob")
    tour_room = await api.one_to_one(alice, bob)

    seed = await prepare_demo(config)
    assert seed == DemoSeed(created=("carol",), existing=("alice", "bob"), demo_password=("carol",))
    for username in ("alice", "bob"):
        assert (await api.post("/user/login", {"username": username, "password": DEMO_PASSWORD})).status == 400
        assert (await api.post("/user/login", {"username": username, "password": "secret123"})).status == 201
    carol = await api.post("/user/login", {"username": "carol", "password": DEMO_PASSWORD})
    assert carol.status == 201, carol.body
    friends = (await api.get("/friendship/list", carol.body["token"])).body
    assert sorted(friend["username"] for friend in friends) == ["alice", "bob"]
    rooms = (await api.get("/chatroom/list", alice.token)).body
    assert sorted((room["name"], room["userCount"]) for room in rooms) == [(DEMO_GROUP, 3), ("Nick bob", 2)]
    assert next(room["id"] for room in rooms if not room["type"]) == tour_room

    banner = demo_banner(config, seed, "http://127.0.0.1:3005/")
    assert banner == (
        f"Created demo user carol in {config.db_path}, with friendships, a group and a few messages.\n"
        f"alice and bob already existed in {config.db_path}: their passwords were not changed.\n"
        f"Open http://127.0.0.1:3005/ and log in as carol with password: {DEMO_PASSWORD}"
        " (alice and bob with the passwords set before)"
    )


@pytest.fixture
async def demo_process(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``python -m chatsvc demo`` on a free loopback port, stopped with SIGTERM afterwards."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatsvc",
        "demo",
        "--port",
        str(port),
        "--db",
        str(tmp_path / "demo.db"),
        # No desktop: the demo prints the address instead of opening a browser during the tests.
        env={
            **{k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")},
            "CHATSVC_SCRYPT_N": "16",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    yield proc, port
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_demo_command_seeds_prints_url_and_password_then_serves(demo_process) -> None:
    proc, port = demo_process
    assert proc.stdout is not None
    async with asyncio.timeout(STARTUP_TIMEOUT):
        printed = ""
        while "password" not in printed:
            line = await proc.stdout.readline()
            assert line, f"chatsvc demo exited early: {printed!r}"
            printed += line.decode()
    url = f"http://127.0.0.1:{port}/"
    assert printed.startswith("Created demo users alice, bob and carol in ")
    assert f"Open {url} and log in as alice, bob or carol with password: {DEMO_PASSWORD}" in printed

    # The start-up line is written once the server listens, so the page answers at once.
    assert proc.stderr is not None
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while " serving " not in (line := (await proc.stderr.readline()).decode()):
            assert line, "chatsvc demo exited before its start-up line"
    assert f"serving {url};" in line and "socket auth: token" in line
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
        async with session.post(url + "user/login", json={"username": "carol", "password": DEMO_PASSWORD}) as resp:
            assert resp.status == 201
