"""The webhook calls' HTTP/1.1 client (chatsvc/webhook_client.py) against a raw HTTP server on loopback.

The server reads each request whole (head and Content-Length body) and
writes the answer the test scripted, byte for byte, so the client meets the
answers real receivers give: chunked bodies, bodies up to the end of the
connection, ``Connection: close``, a ``100 Continue`` first, kept-alive
connections closed between calls, no answer, and garbage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from chatsvc.webhook_client import WebhookClient

pytestmark = pytest.mark.both_engines

SIGNATURE = "t=1,v1=00"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class RawServer:
    """Answers each request with the next scripted bytes; ``None`` closes the connection instead."""

    script: list[bytes | None] = field(default_factory=list)
    # Close each connection after one answer, without saying so (a receiver's short keep-alive).
    close_after_answer: bool = False
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    connections: int = 0
    hang: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append((head, await reader.readexactly(length)))
                answer = self.script.pop(0) if self.script else OK
                if answer is None:
                    return
                if answer == b"hang":
                    await self.hang.wait()
                    return
                writer.write(answer)
                await writer.drain()
                # HTTP/1.0 without a length: the body ends with the connection.
                if self.close_after_answer or b"Connection: close" in answer or answer.startswith(b"HTTP/1.0"):
                    return
        finally:
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    found = RawServer()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    found.url = f"http://127.0.0.1:{port}/hooks/chat?k=1"
    yield found
    found.hang.set()
    server.close()
    await server.wait_closed()


@pytest.fixture
async def client(raw_server: RawServer) -> AsyncIterator[WebhookClient]:
    made = WebhookClient(raw_server.url, connections=4, timeout=0.5)
    yield made
    await made.close()


async def test_client_sends_the_signed_body_and_reuses_one_connection(
    raw_server: RawServer, client: WebhookClient
) -> None:
    raw_server.script = [OK, b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad"]
    assert [await client.post(b'{"n":%d}' % n, SIGNATURE) for n in range(3)] == [200, 204, 500]
    assert raw_server.connections == 1
    head, body = raw_server.requests[0]
    assert body == b'{"n":0}'
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hooks/chat?k=1 HTTP/1.1"
    assert b"X-Chatsvc-Signature: t=1,v1=00" in lines
    assert b"Content-Type: application/json" in lines
    assert b"Content-Length: 7" in lines
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in lines)


async def test_client_reads_chunked_answers_and_skips_100_continue(
    raw_server: RawServer, client: WebhookClient
) -> None:
    raw_server.script = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: 1\r\n\r\n",
        OK,
    ]
    assert await client.post(b"{}", SIGNATURE) == 200
    assert await client.post(b"{}", SIGNATURE) == 200
    assert raw_server.connections == 1


async def test_client_opens_a_new_connection_after_close_or_a_body_to_the_end(
    raw_server: RawServer, client: WebhookClient
) -> None:
    raw_server.script = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nbody up to the end",
        OK,
    ]
    assert [await client.post(b"{}", SIGNATURE) for _ in range(3)] == [200, 200, 200]
    assert raw_server.connections == 3


async def test_client_retries_once_on_a_fresh_connection_when_a_kept_one_was_closed(
    raw_server: RawServer, client: WebhookClient
) -> None:
    raw_server.close_after_answer = True
    assert await client.post(b"{}", SIGNATURE) == 200
    # The receiver closed the kept-alive connection after its answer: the next call is not lost to it.
    assert await client.post(b"{}", SIGNATURE) == 200
    assert raw_server.connections == 2


async def test_client_reports_no_answer_garbage_and_a_closed_connection(
    raw_server: RawServer, client: WebhookClient
) -> None:
    raw_server.script = [b"hang", b"SMTP ready\r\n\r\n", None]
    assert await client.post(b"{}", SIGNATURE) == "no answer within 0.5s"
    garbage = await client.post(b"{}", SIGNATURE)
    assert isinstance(garbage, str) and "not an HTTP/1.x status line" in garbage
    closed = await client.post(b"{}", SIGNATURE)
    assert isinstance(closed, str) and "IncompleteReadError" in closed
    # The client still works afterwards.
    assert await client.post(b"{}", SIGNATURE) == 200


async def test_client_refuses_a_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        WebhookClient("ftp://example.invalid/x", connections=1, timeout=1)
