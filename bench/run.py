"""The benchmark's coordinator: servers, set-up through the API, workloads, report.

Workloads A–D run against chatsvc and then the baseline server, one after
the other, so each pair of figures comes from the same minute of the same
machine. H and R need bulk data: chatsvc is stopped, the data is written by
SQL, and chatsvc is started again on the same file. I runs last.
Unless --no-postgres, a second chatsvc runs on the benchmark's own PostgreSQL
(bench/pg.py) with the same users and rooms (copied from the SQLite file
once the API has made them), and A-D, H and R run against it too, right
after the SQLite one.
With ``--cluster N``, bench/cluster.py runs instead: the socket workloads
against one instance and against N instances behind Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp

from bench import report, steadiness
from bench.loadgen import Mode, Plan, SocketSpec, WorkerPool
from bench.node import NodeUnavailable, NodeWorkerPool, ensure_node_packages, node_peer
from bench.pg import BENCH_SETTINGS, copy_from_sqlite, server_version, start_postgres
from bench.pg import DATABASE as PG_DATABASE
from bench.seed import (
    HistoryRoom,
    Population,
    create_groups,
    seed_history,
    seed_history_postgres,
    seed_population,
    seed_population_postgres,
)
from bench.servers import CpuMark, ManagedProcess, ServerProcess, free_port, peak_rss_bytes, rss_bytes
from chatsvc.testing_postgres import PostgresServer, find_bindir

WORKLOADS = "ABCDHRI"
# The workloads the PostgreSQL column runs (issue 14).
POSTGRES_WORKLOADS = "ABCDHR"
# The load generators: bench/rawsio.py sockets in Python workers, or socket.io-client in Node workers.
CLIENTS = ("raw", "sio-js")
PASSWORD = "bench-password"
# Sockets per user in workload I; chatsvc allows 20 per user by default.
IDLE_SOCKETS_PER_USER = 10
R_CALLERS = 20
HISTORY_PAGE = 50
HISTORY_MEMBERS = 10
DRAIN_S = 10.0
SETUP_CONCURRENCY = 16

# Every bench user registers through the API from this one address: registrations are not limited.
SERVER_ENV = {
    "CHATSVC_SQLITE_SYNCHRONOUS": "FULL",
    "CHATSVC_RATE_LIMIT": "0",
    "CHATSVC_RECEIPT_RATE": "0",
    "CHATSVC_SCRYPT_N": "16",
    "CHATSVC_REGISTER_RATE": "0",
}

QUICK = {
    "duration": 4.0,
    "warmup": 1.0,
    "http_duration": 2.0,
    "history_rows": 200_000,
    "users": 10_000,
    "rooms": 20_000,
    "idle_sockets": 1_000,
    "idle_seconds": 5.0,
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench``."""
    p = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark chatsvc against a plain Socket.IO server"
    )
    p.add_argument(
        "--only", help="workloads to run, e.g. A,B,H (default: all of ABCDHRI; with --cluster: A, and only A-D)"
    )
    p.add_argument("--quick", action="store_true", help="small scale and short windows (about a minute)")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per socket workload (15)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before each window (3)")
    p.add_argument("--http-duration", type=float, default=5.0, help="seconds per HTTP request kind in H and R (5)")
    p.add_argument("--a-rooms", type=int, default=10, help="A and D: rooms (10)")
    p.add_argument("--a-members", type=int, default=10, help="A and D: members per room (10)")
    p.add_argument("--b-members", type=int, default=100, help="B: members of the room (100)")
    p.add_argument("--b-senders", type=int, default=5, help="B: senders (5)")
    p.add_argument("--c-pairs", type=int, default=100, help="C: one-to-one rooms (100)")
    p.add_argument("--open-rate", type=float, default=500.0, help="D: messages/s in total (500)")
    p.add_argument("--pad", type=int, default=0, help="extra characters in each message's content (0)")
    p.add_argument(
        "--receipts",
        action="store_true",
        help="A-D: every socket also sends markRead for each message it receives and typing every 2 s (issue 15; "
        "chatsvc only: use with --no-baseline --no-node; --client sio-js too)",
    )
    p.add_argument(
        "--receipts-debounce",
        type=float,
        default=0.0,
        metavar="S",
        help="with --receipts: each socket marks the newest message it received at most every S seconds instead "
        "of every message (0)",
    )
    p.add_argument("--history-rows", type=int, default=10_000_000, help="H: messages in the room (10,000,000)")
    p.add_argument("--users", type=int, default=100_000, help="R: users in the database (100,000)")
    p.add_argument("--rooms", type=int, default=200_000, help="R: rooms seeded (200,000)")
    p.add_argument("--idle-sockets", type=int, default=10_000, help="I: idle sockets (10,000)")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="I: idle CPU window; pings come every 25 s (30)")
    p.add_argument("--workers", type=int, default=0, help="load generator processes (default: its cores, >= 1)")
    p.add_argument("--repeat", type=int, default=1, help="run each of A-D this many times; report the median (1)")
    p.add_argument(
        "--client",
        choices=CLIENTS,
        default="raw",
        help="load generator: raw (bench/rawsio.py, WebSocket only) or sio-js (the official socket.io-client "
        "on Node: long-polling first, then the upgrade) (raw)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline server")
    p.add_argument("--no-node", action="store_true", help="skip the Node peer (socket.io 4 + better-sqlite3)")
    p.add_argument(
        "--no-postgres",
        action="store_true",
        help="skip the PostgreSQL column (chatsvc on the benchmark's own PostgreSQL; skipped anyway without initdb)",
    )
    p.add_argument(
        "--engine",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="with --cluster: the instances share an SQLite file, or one PostgreSQL database (sqlite)",
    )
    p.add_argument(
        "--skip-without-node",
        action="store_true",
        help="with --client sio-js: if node or its packages are missing, say the run was skipped and exit 0",
    )
    p.add_argument("--baseline-uvloop", action="store_true", help="run the baseline on uvloop too")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and load generator to cores")
    p.add_argument(
        "--steadiness",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="time the machine's own pauses on every core before the workloads (bench/steadiness.py; 0: skip) (3)",
    )
    p.add_argument(
        "--json",
        type=Path,
        help="where to write the JSON report (default bench-results/bench-<time>.json, or cluster-<time>.json)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder (database, server logs)")
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="instead: run the socket workloads against 1 instance and against N instances sharing rooms "
        "through Redis (needs redis-server), and compare them",
    )
    p.add_argument(
        "--webhook",
        action="store_true",
        help="instead: workload A with only the senders online, without and with CHATSVC_WEBHOOK_URL "
        "(a receiver on loopback), and what webhooks cost (issue 16)",
    )
    p.add_argument(
        "--webhook-sender",
        choices=("process", "inline"),
        default="process",
        help="with --webhook: CHATSVC_WEBHOOK_SENDER, the sender in a process of its own or on the server's loop "
        "(process)",
    )
    p.add_argument(
        "--skip-without-redis",
        action="store_true",
        help="with --cluster: if redis-server is not installed, say the mode was skipped and exit 0",
    )
    p.add_argument(
        "--skip-without-postgres",
        action="store_true",
        help="with --cluster --engine postgres: if PostgreSQL (initdb) is not installed, say so and exit 0",
    )
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and normalise the options (``--quick`` lowers every default not given explicitly)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        for name, value in QUICK.items():
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
    if args.cluster:
        if args.cluster < 2:
            parser.error("--cluster needs at least 2 instances")
        only = (args.only or "A").upper()
        if any(w in only for w in WORKLOADS if w not in report.SOCKET_WORKLOADS):
            parser.error("--cluster runs socket workloads only (A-D)")
    elif args.webhook:
        if (args.only or "A").upper() != "A":
            parser.error("--webhook runs workload A only")
        only = "A"
    else:
        if args.engine != "sqlite":
            parser.error("--engine chooses the database of --cluster; the main run has a PostgreSQL column already")
        only = (args.only or WORKLOADS).upper()
    args.only = [w for w in WORKLOADS if w in only]
    if not args.only:
        parser.error("--only names no workload of " + WORKLOADS)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


@dataclass(frozen=True)
class Target:
    """What a socket workload runs against: one server, or several chatsvc instances and their Redis."""

    label: str
    servers: list[ServerProcess]
    redis_pid: int | None = None


@dataclass(frozen=True)
class BenchUser:
    """A user registered through the API, with a token."""

    id: int
    username: str
    token: str


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class Bench:
    """One benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="chatsvc-bench-"))
        self.db_path = self.workdir / "bench.db"
        self.server_cores, self.gen_cores = self._plan_cores()
        self.users: list[BenchUser] = []
        self.group_api = True
        self.rooms: dict[str, list[list[int]]] = {}
        self.results: dict[str, Any] = {}
        self.repetitions: dict[str, list[dict[str, Any]]] = {}
        self.chatsvc: ServerProcess | None = None
        self.baseline: ServerProcess | None = None
        self.node: ServerProcess | None = None
        # The PostgreSQL column: the server, chatsvc on it, the server's version, or why the column was skipped.
        self.pg: PostgresServer | None = None
        self.pg_chatsvc: ServerProcess | None = None
        self.pg_version: str | None = None
        self.pg_skipped: str | None = None
        self.steadiness: dict[str, Any] | None = None
        # Seconds the PostgreSQL seeding took, per part (history, population).
        self.pg_seed_s: dict[str, float] = {}
        # The Node peer's and socket.io-client's versions once installed, or why the Node peer was skipped.
        self.node_versions: dict[str, str] = {}
        self.node_skipped: str | None = None
        self.pool: WorkerPool | NodeWorkerPool | None = None
        self.http: aiohttp.ClientSession | None = None

    def log(self, message: str) -> None:
        """Progress on stderr, so stdout holds only the report."""
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)

    def _plan_cores(self) -> tuple[list[int] | None, list[int] | None]:
        """The server gets the first core, the load generator the others (when there are two or more)."""
        if self.args.no_pin:
            return None, None
        try:
            cores = sorted(os.sched_getaffinity(0))
            if len(cores) < 2:
                return None, None
            server, gen = cores[:1], cores[1:]
            os.sched_setaffinity(0, gen)  # the coordinator and the workers it spawns
        except (AttributeError, OSError):
            return None, None
        return server, gen

    # -- servers ------------------------------------------------------------

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSVC_")}
        return {**env, **SERVER_ENV, "PYTHONUNBUFFERED": "1"}

    def _db_args(self) -> list[str]:
        """The command-line options that give chatsvc its database: the benchmark's SQLite file."""
        return ["--db", str(self.db_path)]

    async def start_chatsvc(self) -> None:
        """Start (or restart) chatsvc on the benchmark database."""
        port = self.chatsvc.port if self.chatsvc is not None else free_port()
        args = ["-m", "chatsvc", "serve", "--host", "127.0.0.1", "--port", str(port), *self._db_args()]
        self.chatsvc = ServerProcess("chatsvc", args, port, self._server_env(), self.workdir / "chatsvc.log")
        await self.chatsvc.start(self.server_cores)
        self.log(f"chatsvc pid {self.chatsvc.pid} on {self.chatsvc.url}")

    def start_postgres(self) -> bool:
        """Start the benchmark's PostgreSQL (blocking: only at the start of a run); False, and why, if it cannot."""
        started = start_postgres(self.server_cores, self.log)
        if isinstance(started, str):
            self.pg_skipped = started
            self.log(f"PostgreSQL column skipped: {started}")
            return False
        self.pg = started
        self.pg_version = server_version(started)
        return True

    async def start_pg_chatsvc(self) -> None:
        """Start (or restart) chatsvc on the benchmark's PostgreSQL database."""
        assert self.pg is not None
        port = self.pg_chatsvc.port if self.pg_chatsvc is not None else free_port()
        args = ["-m", "chatsvc", "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--database-url", self.pg.url(PG_DATABASE)]
        log_path = self.workdir / "chatsvc-pg.log"
        self.pg_chatsvc = ServerProcess(report.PG_LABEL, args, port, self._server_env(), log_path)
        await self.pg_chatsvc.start(self.server_cores)
        self.log(f"chatsvc on PostgreSQL pid {self.pg_chatsvc.pid} on {self.pg_chatsvc.url}")

    async def prepare_postgres_leg(self, socket_loads: list[str]) -> None:
        """Make every user and room the run needs through the API, copy them to PostgreSQL, start chatsvc there."""
        assert self.pg is not None
        if "H" in self.args.only or "R" in self.args.only:
            await self.ensure_users(max(HISTORY_MEMBERS, R_CALLERS))
        for name in socket_loads:
            await self.specs_for(name)
        began = time.monotonic()
        await copy_from_sqlite(self.db_path, self.pg.url(PG_DATABASE), self.workdir / "copy-to-postgres.log")
        self.log(f"users and rooms copied to PostgreSQL ({time.monotonic() - began:.1f} s)")
        await self.start_pg_chatsvc()

    async def start_baseline(self) -> None:
        """Start the plain python-socketio server."""
        port = free_port()
        args = ["-m", "bench.baseline_server", "--host", "127.0.0.1", "--port", str(port)]
        if self.args.baseline_uvloop:
            args.append("--uvloop")
        self.baseline = ServerProcess("baseline", args, port, self._server_env(), self.workdir / "baseline.log")
        await self.baseline.start(self.server_cores)
        self.log(f"baseline pid {self.baseline.pid} on {self.baseline.url}")

    async def prepare_node(self) -> bool:
        """Install the Node packages if needed; False (and the reason noted) if the Node side cannot run."""
        if self.node_versions:
            return True
        try:
            self.node_versions = await asyncio.to_thread(ensure_node_packages, self.log)
        except NodeUnavailable as exc:
            self.node_skipped = str(exc)
            self.log(f"Node peer skipped: {exc}")
            return False
        return True

    async def start_node(self) -> None:
        """Start (or restart, on a fresh database) the Node peer: socket.io 4 storing with better-sqlite3."""
        if self.node is not None:
            await self.node.stop()
        port = free_port()
        db_path = self.workdir / f"node-peer-{port}.db"
        self.node = node_peer(port, db_path, self._server_env(), self.workdir / "node.log")
        await self.node.start(self.server_cores)
        self.log(f"Node peer pid {self.node.pid} on {self.node.url}")

    def make_pool(self, workers: int) -> WorkerPool | NodeWorkerPool:
        """The load generator's worker processes: Python with raw sockets, or Node with socket.io-client."""
        if self.args.client == "sio-js":
            return NodeWorkerPool(workers, self.gen_cores)
        return WorkerPool(workers, self.gen_cores)

    # -- set-up through the API ---------------------------------------------

    async def _api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        assert self.http is not None and self.chatsvc is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.chatsvc.url + path, headers=headers, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None)

    async def ensure_users(self, count: int) -> list[BenchUser]:
        """Register and log in users through the API until there are ``count``."""
        start = len(self.users)
        if count <= start:
            return self.users[:count]
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        stamp = f"{int(time.time()) % 100000}"

        async def create(i: int) -> BenchUser:
            username = f"bench{stamp}u{i}"
            async with gate:
                status, body = await self._api(
                    "POST",
                    "/user/register",
                    json={
                        "username": username,
                        "password": PASSWORD,
                        "nickName": f"Bench {i}",
                        "email": f"{username}@example.com",
                    },
                )
                if status != 201:
                    raise RuntimeError(f"register {username}: {status} {body}")
                status, body = await self._api("POST", "/user/login", json={"username": username, "password": PASSWORD})
                if status != 201:
                    raise RuntimeError(f"login {username}: {status} {body}")
            return BenchUser(body["user"]["id"], username, body["token"])

        began = time.monotonic()
        self.users += await asyncio.gather(*(create(i) for i in range(start, count)))
        self.log(f"registered {count - start} users through the API ({time.monotonic() - began:.1f} s)")
        return self.users[:count]

    async def create_group_rooms(self, name: str, groups: list[list[BenchUser]]) -> list[int]:
        """Group rooms through the API (create-group, join), or by SQL where the API has no group routes."""
        if self.group_api:
            creator = groups[0][0]
            status, body = await self._api("GET", "/chatroom/create-group", creator.token, params={"name": f"{name} 0"})
            if status == 404:
                self.group_api = False
                self.log("no /chatroom/create-group route: group rooms are created by SQL")
            elif status != 200:
                raise RuntimeError(f"create-group: {status} {body}")
            else:
                ids = [int(body)]
                for index, members in enumerate(groups):
                    if index > 0:
                        status, body = await self._api(
                            "GET", "/chatroom/create-group", members[0].token, params={"name": f"{name} {index}"}
                        )
                        if status != 200:
                            raise RuntimeError(f"create-group: {status} {body}")
                        ids.append(int(body))
                    await self._join_all(ids[-1], members)
                return ids
        return await asyncio.to_thread(
            create_groups, self.db_path, [(f"{name} {i}", [m.id for m in members]) for i, members in enumerate(groups)]
        )

    async def _join_all(self, room_id: int, members: list[BenchUser]) -> None:
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def join(member: BenchUser) -> None:
            async with gate:
                status, body = await self._api(
                    "GET", f"/chatroom/join/{room_id}", members[0].token, params={"joinUsername": member.username}
                )
            if status != 200:
                raise RuntimeError(f"join {member.username} to {room_id}: {status} {body}")

        await asyncio.gather(*(join(member) for member in members[1:]))

    async def one_to_one_rooms(self, pairs: list[tuple[BenchUser, BenchUser]]) -> list[int]:
        """One-to-one rooms through the API."""
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def create(a: BenchUser, b: BenchUser) -> int:
            async with gate:
                status, body = await self._api("GET", "/chatroom/create-one-to-one", a.token, params={"friendId": b.id})
            if status != 200:
                raise RuntimeError(f"create-one-to-one: {status} {body}")
            return int(body)

        return list(await asyncio.gather(*(create(a, b) for a, b in pairs)))

    # -- socket workloads ---------------------------------------------------

    async def rooms_of_a(self) -> list[tuple[int, list[BenchUser]]]:
        """Workload A's rooms (shared with D), created on first use."""
        if "A" not in self.rooms:
            size, count = self.args.a_members, self.args.a_rooms
            users = await self.ensure_users(size * count)
            groups = [users[k * size : (k + 1) * size] for k in range(count)]
            ids = await self.create_group_rooms("bench A", groups)
            self.rooms["A"] = [
                [room_id, *[u.id for u in members]] for room_id, members in zip(ids, groups, strict=True)
            ]
        by_id = {u.id: u for u in self.users}
        return [(room[0], [by_id[uid] for uid in room[1:]]) for room in self.rooms["A"]]

    async def specs_for(self, name: str) -> tuple[list[SocketSpec], Mode, float]:
        """The sockets of workload A–D: who joins which room and who sends."""
        args = self.args
        layout: list[tuple[BenchUser, int, bool]] = []  # user, room, sends
        mode: Mode = "closed"
        rate = 0.0
        if name in "AD":
            for room_id, members in await self.rooms_of_a():
                layout += [(user, room_id, i == 0) for i, user in enumerate(members)]
            if name == "D":
                mode = "open"
                rate = args.open_rate / args.a_rooms
        elif name == "B":
            members = await self.ensure_users(args.b_members)
            (room_id,) = await self.create_group_rooms("bench B", [members])
            layout = [(user, room_id, i < args.b_senders) for i, user in enumerate(members)]
        elif name == "C":
            users = await self.ensure_users(2 * args.c_pairs)
            pairs = list(zip(users[: args.c_pairs], users[args.c_pairs :], strict=True))
            for (a, b), room_id in zip(pairs, await self.one_to_one_rooms(pairs), strict=True):
                layout += [(a, room_id, True), (b, room_id, True)]
        senders = sum(1 for _, _, sends in layout if sends)
        ranks = itertools.count()
        specs = [
            # Open-loop senders spread their sends evenly over the interval instead of all at once.
            SocketSpec(index, user.id, user.token, (room_id,), room_id, next(ranks) / senders)
            if sends
            else SocketSpec(index, user.id, user.token, (room_id,))
            for index, (user, room_id, sends) in enumerate(layout)
        ]
        return specs, mode, rate

    async def socket_workload(
        self, name: str, target: Target, specs: list[SocketSpec], mode: Mode, rate: float
    ) -> dict[str, Any]:
        """Run one of A–D against one server (or several instances) and measure it."""
        assert self.pool is not None
        args, pool = self.args, self.pool
        senders = [s for s in specs if s.send_room is not None]
        urls = tuple(server.url for server in target.servers)
        plans = [
            Plan(urls, specs[w :: pool.size], mode, rate, args.pad, args.receipts, args.receipts_debounce)
            for w in range(pool.size)
        ]
        ready = await pool.command("setup", [(plan,) for plan in plans])
        connected = sum(r["connected"] for r in ready)
        if connected < len(specs):
            errors = [e for r in ready for e in r["errors"]]
            raise RuntimeError(f"{name}/{target.label}: only {connected} of {len(specs)} sockets connected: {errors}")
        t_begin = time.monotonic() + 0.2
        t_measure = t_begin + args.warmup
        t_end = t_measure + args.duration
        ns = 1_000_000_000
        started = asyncio.ensure_future(
            pool.command_all("start", int(t_begin * ns), int(t_measure * ns), int(t_end * ns))
        )
        server_pids = [server.pid for server in target.servers]
        redis_pids = [target.redis_pid] if target.redis_pid is not None else []
        pids = [*server_pids, *redis_pids, *pool.pids]
        await _sleep_until(t_measure)
        first = CpuMark.take(pids)
        # Several instances: their RSS sampled together and summed.
        rss_max = sum(rss_bytes(pid) for pid in server_pids)
        while time.monotonic() < t_end:
            await asyncio.sleep(min(0.5, max(t_end - time.monotonic(), 0)))
            rss_max = max(rss_max, sum(rss_bytes(pid) for pid in server_pids))
        last = CpuMark.take(pids)
        stopped = await started
        finals: dict[int, tuple[int, list[int]]] = {}
        for reply in stopped:
            finals.update(reply["finals"])
        room_senders: dict[int, list[int]] = {}
        for spec in senders:
            assert spec.send_room is not None
            room_senders.setdefault(spec.send_room, []).append(spec.index)
        stats = await pool.command_all("finish", finals, room_senders, DRAIN_S)
        await pool.command_all("close")
        cpu = last.percent_since(first)
        window = last.wall - first.wall
        gen_cpu = [cpu[pid] for pid in pool.pids]
        gen_cores = len(self.gen_cores) if self.gen_cores else os.cpu_count() or 1
        result = {
            "sockets": len(specs),
            "senders": len(senders),
            "mode": mode,
            "window_s": round(window, 3),
            "sends_per_s": sum(s["acks"] for s in stats) / args.duration,
            "deliveries_per_s": sum(s["deliveries"] for s in stats) / args.duration,
            "latency_ms": report.percentiles_ms(report.merge_samples(s["latencies"] for s in stats)),
            "ack_latency_ms": report.percentiles_ms(report.merge_samples(s["ack_latencies"] for s in stats)),
            "messages_sent": sum(sent for sent, _ in finals.values()),
            "missing": sum(s["missing"] for s in stats),
            "duplicates": sum(s["duplicates"] for s in stats),
            "out_of_order": sum(s["out_of_order"] for s in stats),
            "send_errors": sum(s["ack_errors"] for s in stats),
            "first_error": next((s["first_error"] for s in stats if s["first_error"]), None),
            "stalls": sum(s["stalls"] for s in stats),
            "instances": len(server_pids),
            "server_cpu_pct": sum(cpu[pid] for pid in server_pids),
            "server_rss_mb": rss_max / 2**20,
            "loadgen_cpu_pct": sum(gen_cpu),
            "loadgen_worker_cpu_pct": gen_cpu,
            "loadgen_saturated": max(gen_cpu) >= report.SATURATED_PCT
            or sum(gen_cpu) >= report.SATURATED_PCT * min(gen_cores, pool.size),
        }
        if len(server_pids) > 1:
            result["server_cpu_pct_each"] = [cpu[pid] for pid in server_pids]
            # Whole run, warm-up included: shows every instance served its share of the receivers.
            result["deliveries_by_instance"] = [
                sum(column) for column in zip(*(s["deliveries_by_server"] for s in stats), strict=True)
            ]
        if redis_pids:
            result["redis_cpu_pct"] = cpu[redis_pids[0]]
        result.update(report.handshake_figures(ready))
        self.log(
            f"{name}/{target.label}: {result['sends_per_s']:,.0f} sends/s, "
            f"{result['deliveries_per_s']:,.0f} deliveries/s, "
            f"p99 {result['latency_ms']['p99'] or 0:.2f} ms, missing {result['missing']}, dup {result['duplicates']}, "
            f"server CPU {result['server_cpu_pct']:.0f}%, generator CPU {result['loadgen_cpu_pct']:.0f}%"
        )
        return result

    # -- HTTP workloads -----------------------------------------------------

    async def timed_requests(
        self, server: ServerProcess, next_request: Callable[[], tuple[str, str]], accept: Callable[[Any], bool]
    ) -> dict[str, Any]:
        """Sequential GETs of ``(path, token)`` to ``server`` for --http-duration seconds after a warm-up."""
        assert self.http is not None
        base = server.url
        samples = array("q")
        errors = 0
        first_error: str | None = None
        warm_end = time.monotonic() + min(1.0, self.args.http_duration / 5)
        while time.monotonic() < warm_end:
            path, token = next_request()
            async with self.http.get(base + path, headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
        end = time.monotonic() + self.args.http_duration
        mark = CpuMark.take([server.pid])
        while time.monotonic() < end:
            path, token = next_request()
            headers = {"Authorization": f"Bearer {token}"}
            t0 = time.perf_counter_ns()
            async with self.http.get(base + path, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
            samples.append(time.perf_counter_ns() - t0)
            if status != 200 or not accept(json.loads(body)):
                errors += 1
                if first_error is None:
                    first_error = f"{path}: {status} {body[:200]!r}"
        cpu = CpuMark.take([server.pid]).percent_since(mark)[server.pid]
        return {
            "requests": len(samples),
            "per_s": len(samples) / self.args.http_duration,
            "latency_ms": report.percentiles_ms(samples),
            "errors": errors,
            "first_error": first_error,
            "server_cpu_pct": cpu,
        }

    async def seed_bulk(self) -> tuple[HistoryRoom | None, Population | None]:
        """Stop chatsvc, write H's and R's data by SQL, start it again on the same file."""
        args = self.args
        members = await self.ensure_users(max(HISTORY_MEMBERS, R_CALLERS))
        assert self.chatsvc is not None
        await self.chatsvc.stop()
        history = population = None
        if "H" in args.only:
            self.log(f"seeding {args.history_rows:,} history messages by SQL (server stopped)")
            history = await asyncio.to_thread(
                seed_history, self.db_path, args.history_rows, [u.id for u in members[:HISTORY_MEMBERS]], self.log
            )
        if "R" in args.only:
            self.log(f"seeding {args.users:,} users and {args.rooms:,} rooms by SQL (server stopped)")
            population = await asyncio.to_thread(
                seed_population, self.db_path, args.users, args.rooms, [u.id for u in members[:R_CALLERS]], self.log
            )
        await self.start_chatsvc()
        return history, population

    async def seed_bulk_postgres(self) -> tuple[HistoryRoom | None, Population | None]:
        """The same data as :meth:`seed_bulk` in the PostgreSQL database, with chatsvc on it stopped meanwhile."""
        args = self.args
        assert self.pg is not None and self.pg_chatsvc is not None
        members = await self.ensure_users(max(HISTORY_MEMBERS, R_CALLERS))
        url = self.pg.url(PG_DATABASE)
        await self.pg_chatsvc.stop()
        history = population = None
        if "H" in args.only:
            self.log(f"seeding {args.history_rows:,} history messages into PostgreSQL (server stopped)")
            began = time.monotonic()
            history = await seed_history_postgres(
                url, args.history_rows, [u.id for u in members[:HISTORY_MEMBERS]], self.log
            )
            self.pg_seed_s["history"] = time.monotonic() - began
        if "R" in args.only:
            self.log(f"seeding {args.users:,} users and {args.rooms:,} rooms into PostgreSQL (server stopped)")
            began = time.monotonic()
            population = await seed_population_postgres(
                url, args.users, args.rooms, [u.id for u in members[:R_CALLERS]], self.log
            )
            self.pg_seed_s["population"] = time.monotonic() - began
        await self.start_pg_chatsvc()
        return history, population

    async def history_workload(self, room: HistoryRoom, server: ServerProcess) -> dict[str, Any]:
        """H: the newest page and pages at random depths of a room with --history-rows messages."""
        token = next(u.token for u in self.users if u.id == room.reader_id)
        rng = random.Random(7)
        base = f"/chat-history/list?chatroomId={room.room_id}&limit={HISTORY_PAGE}"
        low = room.first_id + HISTORY_PAGE

        def full_page(body: Any) -> bool:
            return isinstance(body, list) and len(body) == min(HISTORY_PAGE, room.rows)

        def random_page() -> tuple[str, str]:
            return f"{base}&beforeId={rng.randint(low, max(low, room.last_id))}", token

        requests = {
            "newest": await self.timed_requests(server, lambda: (base, token), full_page),
            "random": await self.timed_requests(server, random_page, full_page),
        }
        self.log(
            f"H/{server.name}: "
            + "newest p50 {:.2f} ms, random p99 {:.2f} ms".format(
                requests["newest"]["latency_ms"]["p50"] or 0, requests["random"]["latency_ms"]["p99"] or 0
            )
        )
        return {"scale": f"{room.rows:,} messages in the room, pages of {HISTORY_PAGE}", "requests": requests}

    async def rooms_workload(self, population: Population, server: ServerProcess) -> dict[str, Any]:
        """R: findChatroom (half existing pairs, half not) and the callers' room lists, callers in turn."""
        rng = random.Random(11)
        callers = [u for u in self.users if u.id in population.partners]
        turns = itertools.count()

        def find() -> tuple[str, str]:
            turn = next(turns)
            caller = callers[turn % len(callers)]
            partners = population.partners[caller.id]
            other = rng.choice(partners) if turn % 2 and partners else rng.choice(population.user_ids)
            return f"/chatroom/findChatroom?userId1={caller.id}&userId2={other}", caller.token

        def list_rooms() -> tuple[str, str]:
            return "/chatroom/list", callers[next(turns) % len(callers)].token

        requests = {
            "findChatroom": await self.timed_requests(server, find, lambda body: body is None or isinstance(body, int)),
            "list": await self.timed_requests(
                server, list_rooms, lambda body: isinstance(body, list) and len(body) > 0
            ),
        }
        self.log(
            f"R/{server.name}: "
            + "findChatroom p50 {:.2f} ms, list p50 {:.2f} ms".format(
                requests["findChatroom"]["latency_ms"]["p50"] or 0, requests["list"]["latency_ms"]["p50"] or 0
            )
        )
        return {
            "scale": f"{population.users:,} users, {population.rooms:,} seeded rooms, "
            f"{population.memberships:,} memberships; {len(callers)} callers",
            "requests": requests,
        }

    # -- idle sockets ---------------------------------------------------------

    async def idle_workload(self, server: ServerProcess) -> dict[str, Any]:
        """I: many idle sockets in one server process: RSS per connection and idle CPU."""
        assert self.pool is not None
        args, pool = self.args, self.pool
        users = await self.ensure_users(math.ceil(args.idle_sockets / IDLE_SOCKETS_PER_USER))
        specs = [
            SocketSpec(i, users[i // IDLE_SOCKETS_PER_USER].id, users[i // IDLE_SOCKETS_PER_USER].token, ())
            for i in range(args.idle_sockets)
        ]
        rss_before = rss_bytes(server.pid)
        began = time.monotonic()
        ready = await pool.command(
            "setup", [(Plan((server.url,), specs[w :: pool.size], "idle"),) for w in range(pool.size)]
        )
        connect_s = time.monotonic() - began
        connected = sum(r["connected"] for r in ready)
        if connected < len(specs):
            errors = [e for r in ready for e in r["errors"]]
            self.log(f"I/{server.name}: only {connected} of {len(specs)} sockets connected: {errors}")
        self.log(
            f"I/{server.name}: {connected:,} sockets connected in {connect_s:.1f} s; idle for {args.idle_seconds:.0f} s"
        )
        await asyncio.sleep(1.0)  # let the connect burst's garbage settle before reading RSS
        rss_after = rss_bytes(server.pid)
        first = CpuMark.take([server.pid, *pool.pids])
        await asyncio.sleep(args.idle_seconds)
        last = CpuMark.take([server.pid, *pool.pids])
        rss_end = rss_bytes(server.pid)
        await pool.command_all("close")
        cpu = last.percent_since(first)
        result = {
            "sockets": connected,
            "connect_s": connect_s,
            "rss_before_mb": rss_before / 2**20,
            "rss_after_mb": rss_after / 2**20,
            "rss_end_mb": rss_end / 2**20,
            "rss_peak_mb": peak_rss_bytes(server.pid) / 2**20,
            "rss_per_connection_kb": (max(rss_after, rss_end) - rss_before) / max(connected, 1) / 1024,
            "idle_cpu_pct": cpu[server.pid],
            "idle_window_s": last.wall - first.wall,
            "loadgen_cpu_pct": sum(cpu[pid] for pid in pool.pids),
            **report.handshake_figures(ready),
        }
        self.log(
            f"I/{server.name}: {result['rss_per_connection_kb']:.1f} KB per connection, "
            f"idle CPU {result['idle_cpu_pct']:.1f}%"
        )
        return result

    # -- the run --------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Every selected workload; the report as a dict."""
        args = self.args
        workers = args.workers or max(1, len(self.gen_cores) if self.gen_cores else 1)
        self.pool = self.make_pool(workers)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        try:
            if args.steadiness > 0:
                # Before any server starts: what the cores lose to the host and to other processes.
                cores = list(range(os.cpu_count() or 1))
                self.steadiness = await asyncio.to_thread(steadiness.probe, cores, args.steadiness)
                self.log(steadiness.describe(self.steadiness))
            await self.start_chatsvc()
            socket_loads = [w for w in args.only if w in report.SOCKET_WORKLOADS]
            wants_pg = not args.no_postgres and any(w in POSTGRES_WORKLOADS for w in args.only)
            # Blocking, once, before any workload: the server's life is tied to this (the main) thread.
            if wants_pg and self.start_postgres():
                await self.prepare_postgres_leg(socket_loads)
            wants_node = bool(socket_loads or "I" in args.only) and not args.no_node
            with_node = wants_node and await self.prepare_node()
            if socket_loads and not args.no_baseline:
                await self.start_baseline()
            if socket_loads and with_node:
                await self.start_node()
            for name in socket_loads:
                specs, mode, rate = await self.specs_for(name)
                runs: list[dict[str, Any]] = []
                for _ in range(args.repeat):
                    # The same workload against each server in turn: chatsvc, the baseline, the Node peer.
                    pair: dict[str, Any] = {}
                    for label, server in (
                        ("chatsvc", self.chatsvc),
                        (report.PG_LABEL, self.pg_chatsvc),
                        ("baseline", self.baseline),
                        ("node", self.node),
                    ):
                        if server is not None:
                            pair[label] = await self.socket_workload(name, Target(label, [server]), specs, mode, rate)
                    runs.append(pair)
                self.results[name] = report.median_run(name, runs)
                if len(runs) > 1:
                    self.repetitions[name] = runs
            for done in (self.baseline, self.node):
                if done is not None:
                    await done.stop()
            if "H" in args.only or "R" in args.only:
                history, population = await self.seed_bulk()
                assert self.chatsvc is not None
                if history is not None:
                    self.results["H"] = await self.history_workload(history, self.chatsvc)
                if population is not None:
                    self.results["R"] = await self.rooms_workload(population, self.chatsvc)
                if self.pg_chatsvc is not None:
                    history, population = await self.seed_bulk_postgres()
                    if history is not None:
                        self.results["H"][report.PG_LABEL] = await self.history_workload(history, self.pg_chatsvc)
                    if population is not None:
                        self.results["R"][report.PG_LABEL] = await self.rooms_workload(population, self.pg_chatsvc)
            if self.pg_chatsvc is not None:
                await self.pg_chatsvc.stop()
            if "I" in args.only:
                assert self.chatsvc is not None
                idle = {"chatsvc": await self.idle_workload(self.chatsvc)}
                if with_node:
                    await self.start_node()  # a fresh process: its RSS before holds nothing of A-D
                    assert self.node is not None
                    idle["node"] = await self.idle_workload(self.node)
                    await self.node.stop()
                self.results["I"] = idle
        finally:
            await self.tear_down()
        return self.report(workers)

    def servers(self) -> list[ManagedProcess | None]:
        """Every process this run may have started."""
        return [self.chatsvc, self.pg_chatsvc, self.baseline, self.node]

    async def tear_down(self) -> None:
        """Stop the servers and the load generator; remove the work folder unless --keep."""
        if self.http is not None:
            await self.http.close()
        for server in self.servers():
            if server is not None:
                await server.stop()
        if self.pool is not None:
            self.pool.close()
        if self.pg is not None:
            if self.args.keep:
                # Its folder goes with it: keep the server's log beside the others.
                with contextlib.suppress(OSError):
                    shutil.copy(self.pg.log_path, self.workdir / "postgres.log")
            self.pg.close()
        if self.args.keep:
            self.log(f"work folder kept: {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def report(self, workers: int) -> dict[str, Any]:
        """The JSON report of the run."""
        return {
            "meta": self.meta(workers),
            "results": self.results,
            "ratios": report.ratios(self.results),
            "targets": report.targets(self.results),
            "repetitions": self.repetitions,
        }

    def meta(self, workers: int) -> dict[str, Any]:
        """The machine, versions and settings of this run."""
        options = {k: v for k, v in vars(self.args).items() if k != "json"}
        return {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "total_s": time.monotonic() - self.started,
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "versions": {
                p: _version(p) for p in ("chatsvc", "aiohttp", "python-socketio", "python-engineio", "uvloop", "orjson")
            },
            "server_cores": self.server_cores,
            "loadgen_cores": self.gen_cores,
            "workers": workers,
            "server_env": SERVER_ENV,
            "baseline_loop": "uvloop" if self.args.baseline_uvloop else "asyncio",
            "client": self.args.client,
            # node and its packages (the Node peer's and socket.io-client's), or why the Node peer did not run.
            "node_versions": self.node_versions,
            "node_skipped": self.node_skipped,
            "group_rooms_via": "API" if self.group_api else "SQL (no group routes in this chatsvc)",
            # The PostgreSQL column: the server's version and settings, the seeding times, or why it was skipped.
            "postgres": self.pg_version,
            "postgres_settings": dict(BENCH_SETTINGS) if self.pg_version else None,
            "postgres_seed_s": self.pg_seed_s,
            "postgres_skipped": self.pg_skipped,
            "steadiness": self.steadiness,
            "options": options,
        }


def _default_json_path(kind: str) -> Path:
    return Path("bench-results") / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or with --cluster, the comparison of 1 and N instances); print the table, write JSON."""
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.client == "sio-js":
        try:
            ensure_node_packages(lambda message: print(message, file=sys.stderr, flush=True))
        except NodeUnavailable as exc:
            print(
                f"socket.io-client load generator (--client sio-js) skipped: {exc}",
                file=sys.stdout if args.skip_without_node else sys.stderr,
            )
            return 0 if args.skip_without_node else 2
    bench: Bench
    if args.cluster:
        # Imported here: bench.cluster builds on this module's Bench.
        from bench.cluster import ClusterBench, find_redis_server

        if args.engine == "postgres" and find_bindir() is None:
            print(
                f"cluster mode on PostgreSQL ({args.cluster} instances behind Redis) skipped: no PostgreSQL server "
                "binaries (initdb, postgres, psql) found (Debian: apt-get install postgresql)",
                file=sys.stdout if args.skip_without_postgres else sys.stderr,
            )
            return 0 if args.skip_without_postgres else 2
        if find_redis_server() is None:
            print(
                f"cluster mode ({args.cluster} instances behind Redis) skipped: redis-server is not installed "
                "(Debian: apt-get install redis-server)",
                file=sys.stdout if args.skip_without_redis else sys.stderr,
            )
            return 0 if args.skip_without_redis else 2
        bench = ClusterBench(args)
    elif args.webhook:
        from bench.webhook import WebhookBench

        bench = WebhookBench(args)
    else:
        bench = Bench(args)
    result = asyncio.run(bench.run())
    kind = "cluster" if args.cluster else "webhook" if args.webhook else "bench"
    path: Path = args.json or _default_json_path(kind if args.client == "raw" else f"{kind}-{args.client}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(report.render(result))
    print(f"JSON report: {path}")
    return 0
