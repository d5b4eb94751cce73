"""Response headers: JSON answers are never cached or sniffed, and no response names the server's libraries."""

from __future__ import annotations

import asyncio
import base64
import os

from chatsvc.testing import ChatsvcServer
from tests.helpers import Api, Response

SERVER = "chatsvc"


def assert_json_headers(resp: Response) -> None:
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    assert resp.headers["Cache-Control"] == "no-store", resp.headers
    assert resp.headers["X-Content-Type-Options"] == "nosniff", resp.headers


async def test_json_answers_are_not_cached_or_sniffed(api: Api) -> None:
    alice = await api.new_user("alice")
    answers = [
        await api.post("/user/login", {"username": "alice", "password": "secret123"}),
        await api.get("/user/info", alice.token),
        await api.get("/chatroom/list", alice.token),
        await api.get("/healthz"),
    ]
    for resp in answers:
        assert resp.status in (200, 201), resp.body
        assert_json_headers(resp)


async def test_json_errors_are_not_cached_or_sniffed(api: Api) -> None:
    errors = [
        await api.get("/user/info"),  # 401, ours
        await api.post("/user/login", {"username": "alice"}),  # 400, ours
        await api.get("/no/such/route"),  # 404, aiohttp's
        await api.request("DELETE", "/user/info"),  # 405, aiohttp's
        await api.request("POST", "/user/login", data=b"x" * (2 * 1024 * 1024)),  # 413, aiohttp's
    ]
    assert [resp.status for resp in errors] == [401, 400, 404, 405, 413]
    for resp in errors:
        assert_json_headers(resp)


async def test_no_response_names_the_server_libraries(api: Api) -> None:
    alice = await api.new_user("alice")
    answers = [
        await api.get("/user/info", alice.token),
        await api.get("/no/such/route"),
        await api.get("/metrics"),
        await api.get("/"),
        await api.request(
            "OPTIONS", "/user/login", headers={"Origin": "http://a", "Access-Control-Request-Method": "POST"}
        ),
        # Socket.IO's own answers: a polling handshake and a refused request.
        await api.request("GET", "/socket.io/", params={"EIO": "4", "transport": "polling"}),
        await api.request("GET", "/socket.io/", params={"EIO": "4", "transport": "nonsense"}),
    ]
    for resp in answers:
        assert resp.headers["Server"] == SERVER, (resp.status, resp.headers)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", (resp.status, resp.headers)


async def test_websocket_handshake_names_no_library(server: ChatsvcServer) -> None:
    url = server.make_url("")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {url.host}:{url.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
    finally:
        writer.close()
    lines = head.split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), head
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:] if line)}
    assert headers["server"] == SERVER, head
