"""A small HTTP/1.1 client for webhook calls: signed JSON POSTs to one URL over kept-alive connections.

The sender makes one call per message, so a call's CPU is the webhooks'
cost. A general client (aiohttp's took ~0.4 ms of CPU a call, measured with
py-spy in bench --webhook) builds a request object, headers, a payload and a
response object each time; this one writes a request whose head is
formatted once, reads the status line and just enough of the answer (its
headers, then the body by Content-Length, chunks, or up to the end of the
connection) to reuse the connection, and keeps up to ``connections`` of
them open.

Like aiohttp's default session, it follows no redirect (a 3xx is an answer
that is not 2xx), uses no proxy from the environment, and verifies the
certificate and host name of an https URL against the system's CA store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Chatsvc-Signature"
# An answer's status line and each header line are read with this limit, and at most this many headers.
LINE_LIMIT = 64 * 1024
MAX_HEADERS = 200
# Bodies of answers are read (and dropped) this many bytes at a time.
READ_CHUNK = 64 * 1024

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class BadAnswer(Exception):
    """The receiver answered something that is not HTTP/1.x."""


class WebhookClient:
    """POSTs bodies to one URL, at most ``connections`` at once, each within ``timeout`` seconds."""

    def __init__(self, url: str, *, connections: int, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._timeout = timeout
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc.rpartition("@")[2]
        # Everything but the length and the signature, once.
        self._head = (
            f"POST {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: chatsvc-webhook\r\n"
            "Content-Type: application/json\r\n"
        ).encode("ascii")
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[Connection] = []

    async def post(self, body: bytes, signature: str) -> int | str:
        """POST ``body`` with its ``X-Chatsvc-Signature`` value: the answer's status, or what went wrong."""
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._exchange(body, signature)
            except TimeoutError:
                return f"no answer within {self._timeout:g}s"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, BadAnswer, ValueError) as exc:
                return f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        """Close the idle connections (calls under way close theirs when they end)."""
        idle, self._idle = self._idle, []
        for _reader, writer in idle:
            writer.close()
        for _reader, writer in idle:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _exchange(self, body: bytes, signature: str) -> int:
        request = b"%sContent-Length: %d\r\n%s: %s\r\n\r\n%s" % (
            self._head,
            len(body),
            SIGNATURE_HEADER.encode("ascii"),
            signature.encode("ascii"),
            body,
        )
        if self._idle:
            connection = self._idle.pop()
            try:
                return await self._send(connection, request)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                # A kept-alive connection the receiver closed meanwhile (nothing of an answer came): another.
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
        reader, writer = await asyncio.open_connection(
            self._host, self._port, ssl=self._ssl, limit=LINE_LIMIT, server_hostname=self._host if self._ssl else None
        )
        return await self._send((reader, writer), request)

    async def _send(self, connection: Connection, request: bytes) -> int:
        """One request and its answer on ``connection``; kept for the next call if both ends allow."""
        reader, writer = connection
        keep = False
        try:
            writer.write(request)
            status, keep = await read_answer(reader)
            return status
        finally:
            if keep:
                self._idle.append(connection)
            else:
                writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.x answer to a POST; its status, and whether the connection may carry another request."""
    while True:
        version, status = _status_line(await reader.readuntil(b"\r\n"))
        headers: dict[bytes, bytes] = {}
        for _ in range(MAX_HEADERS + 1):
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, colon, value = line.partition(b":")
            if not colon:
                raise BadAnswer(f"a header line without a colon: {line[:80]!r}")
            key = name.strip().lower()
            headers[key] = headers[key] + b"," + value.strip() if key in headers else value.strip()
        else:
            raise BadAnswer(f"more than {MAX_HEADERS} header lines")
        # 1xx answers (100 Continue, 103 Early Hints) come before the real one.
        if not 100 <= status < 200:
            break
    tokens = {token.strip() for token in headers.get(b"connection", b"").lower().split(b",")}
    keep = version == b"HTTP/1.1" and b"close" not in tokens
    if status in (204, 304):
        return status, keep
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        await _skip_chunks(reader)
    elif b"content-length" in headers:
        await _skip(reader, int(headers[b"content-length"]))
    else:
        # The body runs to the end of the connection.
        while await reader.read(READ_CHUNK):
            pass
        keep = False
    return status, keep


def _status_line(line: bytes) -> tuple[bytes, int]:
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise BadAnswer(f"not an HTTP/1.x status line: {line[:80]!r}")
    return version, int(code)


async def _skip(reader: asyncio.StreamReader, length: int) -> None:
    if length < 0:
        raise BadAnswer("a negative Content-Length")
    while length > 0:
        length -= len(await reader.readexactly(min(length, READ_CHUNK)))


async def _skip_chunks(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, up to the empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return
        await _skip(reader, size)
        if await reader.readexactly(2) != b"\r\n":
            raise BadAnswer("a chunk not followed by CRLF")
