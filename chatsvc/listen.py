"""The listening sockets of ``chatsvc serve``: bound before anything else starts, so a bad address fails at once.

Binding here rather than inside ``web.run_app`` turns the two common start-up
mistakes (a port already taken, a host name that does not resolve) into one
clear line instead of a traceback, and tells the start-up line which ports
were really bound (``--port 0`` picks a free one).
"""

from __future__ import annotations

import errno
import socket

# What each common bind failure means to whoever typed the address.
_BIND_ERRORS = {
    errno.EADDRINUSE: "the port is already in use (another chatsvc, or another program?)",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "this machine has no such address",
}
WILDCARDS = {"0.0.0.0": "all IPv4 interfaces", "::": "all IPv6 interfaces"}


class ListenError(Exception):
    """The address cannot be listened on; the message says why in one line."""


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, non-blocking TCP sockets for every address ``host`` resolves to (all interfaces if empty)."""
    shown = f"{host or '*'}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {shown}: the host name does not resolve ({exc.strerror})") from None
    sockets: list[socket.socket] = []
    try:
        # The same options asyncio's create_server sets when it binds a host and port itself.
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                reason = _BIND_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
                raise ListenError(f"cannot listen on {_url_host(str(address[0]))}:{port}: {reason}") from None
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def socket_url(sock: socket.socket) -> str:
    """The URL a browser on this machine opens to reach a listening socket (loopback for a wildcard address)."""
    address = sock.getsockname()
    host, port = str(address[0]), int(address[1])
    if host in WILDCARDS:
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://{_url_host(host)}:{port}/"


def serving_urls(sockets: list[socket.socket]) -> list[str]:
    """The URL of each socket, saying what a wildcard address covers."""
    urls = []
    for sock in sockets:
        covers = WILDCARDS.get(sock.getsockname()[0])
        urls.append(f"{socket_url(sock)} ({covers})" if covers else socket_url(sock))
    return urls


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
