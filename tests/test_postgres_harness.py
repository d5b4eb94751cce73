"""The PostgreSQL server the tests run on (chatsvc/testing_postgres.py, fixtures in tests/conftest.py).

What the PostgreSQL leg of the suite relies on: a real server reached through asyncpg, commits that are
durable before they are acknowledged, a fresh empty database per test, a server nobody else can reach,
and a stop that leaves nothing behind.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import asyncpg
import pytest

from chatsvc.testing_postgres import LOOPBACK, PostgresServer

SESSION_DATABASE = "chatsvc_tests"


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port``, IPv4 and IPv6 (from /proc/net)."""
    found: set[str] = set()
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, port_hex = local.partition(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # /proc/net prints each 32-bit word in host byte order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    return found


async def test_server_answers_through_asyncpg(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        version = await conn.fetchval("SELECT version()")
        database = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    assert version.startswith("PostgreSQL "), version
    assert database == SESSION_DATABASE


async def test_commits_wait_for_the_disk(postgres_database_url: str) -> None:
    # chatsvc acknowledges a message after its commit: that promise needs both settings on.
    conn = await asyncpg.connect(postgres_database_url)
    try:
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.fetchval("SHOW fsync") == "on"
    finally:
        await conn.close()


@pytest.mark.parametrize("turn", ["first", "second"])
async def test_each_test_gets_a_fresh_empty_database(turn: str, postgres_database_url: str) -> None:
    # Both turns leave a table behind: whichever runs second fails if databases were shared.
    conn = await asyncpg.connect(postgres_database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        relations = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
        )
        await conn.execute("CREATE TABLE left_behind (turn text)")
        await conn.execute("INSERT INTO left_behind VALUES ($1)", turn)
    finally:
        await conn.close()
    assert name != SESSION_DATABASE
    assert relations == 0, f"database {name} of the {turn} turn is not empty"


async def test_a_test_database_is_dropped_even_with_a_connection_left_open(postgres_server: PostgresServer) -> None:
    with postgres_server.temporary_database() as url:
        name = url.rsplit("/", 1)[1]
        leaked = await asyncpg.connect(url)
        assert postgres_server.psql(f"SELECT datname FROM pg_database WHERE datname = '{name}'").split() == [name]
    try:
        assert postgres_server.psql(f"SELECT datname FROM pg_database WHERE datname = '{name}'").split() == []
    finally:
        leaked.terminate()


async def test_server_listens_on_loopback_only(postgres_server: PostgresServer, postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SHOW listen_addresses") == LOOPBACK
        assert await conn.fetchval("SELECT host(inet_server_addr())") == LOOPBACK
        # The Unix socket lies in the server's own temporary folder, not in the system's /var/run/postgresql.
        assert await conn.fetchval("SHOW unix_socket_directories") == str(postgres_server.folder)
    finally:
        await conn.close()
    assert listening_addresses(postgres_server.port) == {LOOPBACK}


def test_server_does_not_run_as_root(postgres_server: PostgresServer) -> None:
    assert postgres_server.proc is not None
    owner = Path(f"/proc/{postgres_server.proc.pid}").stat().st_uid
    assert owner != 0
    if os.geteuid() != 0:
        assert owner == os.geteuid()


def test_restart_keeps_the_data_and_close_leaves_nothing(postgres_server: PostgresServer) -> None:
    # A server of its own (the session's must stay up); the fixture skips or fails where PostgreSQL is missing.
    server = PostgresServer(postgres_server.bindir)
    with server:
        server.create_database("kept")
        server.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)", "kept")
        port, folder = server.port, server.folder
        assert folder is not None

        proc = server.proc
        server.stop()
        assert proc is not None and proc.returncode == 0  # a clean fast shutdown
        assert listening_addresses(port) == set()

        server.start()
        assert server.port == port
        assert server.psql("SELECT x FROM t", "kept").split() == ["42"]
        proc = server.proc
    assert proc is not None and proc.returncode == 0
    assert not folder.exists()
    assert listening_addresses(port) == set()
