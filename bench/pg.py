"""The benchmark's own PostgreSQL server: chatsvc.testing_postgres's throwaway cluster, with settings for a
fair, durable comparison with SQLite (docs/performance.md, "PostgreSQL")."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from chatsvc.testing_postgres import PostgresError, PostgresNotFound, PostgresServer

DATABASE = "bench"
# Durable as chatsvc promises (fsync, synchronous_commit and full-page writes on, as SQLite runs with
# synchronous=FULL), sized for one database of a few GB on a small machine: the 10-million-message room and its
# indexes (about 1.5 GB) fit in shared_buffers and the page cache; checkpoints are rare enough not to land in a
# measured window (max_wal_size, checkpoint_timeout); the planner is told the storage is an SSD (random_page_cost)
# and JIT, which only costs time on statements this short, is off.
BENCH_SETTINGS: Mapping[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_level": "replica",
    "shared_buffers": "1GB",
    "effective_cache_size": "4GB",
    "work_mem": "16MB",
    "maintenance_work_mem": "512MB",
    "wal_buffers": "16MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
    "random_page_cost": "1.1",
    "jit": "off",
    "max_connections": "100",
}


def start_postgres(cores: list[int] | None, log: Callable[[str], None]) -> PostgresServer | str:
    """initdb and start the benchmark's PostgreSQL on ``cores``; or why it cannot run (no initdb, a failure).

    Synchronous and called on the main thread: the server is tied to the thread that starts it
    (chatsvc/testing_postgres.py), and that thread must outlive it.
    """
    try:
        server = PostgresServer(settings=BENCH_SETTINGS)
    except (PostgresNotFound, PostgresError) as exc:
        return str(exc)
    # The server's processes inherit the affinity of the thread that forks the postmaster: the server cores, like
    # chatsvc (and SQLite, which runs inside chatsvc), not the load generator's.
    previous = _affinity()
    try:
        if cores:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cores)
        server.start()
        server.create_database(DATABASE)
    except (PostgresError, OSError) as exc:
        server.close()
        return str(exc)
    finally:
        if cores and previous:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, previous)
    log(f"PostgreSQL ({server.bindir}) pid {server.proc.pid if server.proc else '?'} on port {server.port}")
    return server


def _affinity() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None


def server_version(server: PostgresServer) -> str:
    """``PostgreSQL 15.x`` as the server reports it."""
    return "PostgreSQL " + server.psql("SHOW server_version").strip()


async def copy_from_sqlite(db_path: Path, url: str, log_path: Path) -> None:
    """``chatsvc copy-to-postgres``: the users, rooms and signing secret made through the API, ids and all."""
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatsvc",
            "copy-to-postgres",
            "--from",
            str(db_path),
            "--to",
            url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"chatsvc copy-to-postgres failed ({proc.returncode}); see {log_path}")
