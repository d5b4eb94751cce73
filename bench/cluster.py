"""``python -m bench --cluster N``: the same workload against one chatsvc instance and against N behind Redis.

Set-up goes through the API of a single instance, exactly as in the main
benchmark (fresh database, same server settings). Then each chosen socket
workload (default A) runs against that instance alone, without Redis, as
today; the instance is stopped, N ``python -m chatsvc serve`` processes start
on the same database with ``CHATSVC_REDIS_URL`` pointing at a throwaway
``redis-server``, and the same workload, with the same users, rooms and
tokens, runs against them. The sockets are spread over the instances
(senders in turn, receivers in turn), so every room has members on several
instances and most deliveries cross Redis. Every delivery is checked as in
the main benchmark: missing and duplicate deliveries must be 0.

Cores: each instance gets a core of its own, and the load generator the
rest, when there are more than N cores; otherwise (2 cores) every instance
and Redis share the first core, the generator has the others, and the N
figure shows what the Redis fan-out costs rather than how chatsvc scales.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp

from bench import report
from bench.loadgen import Mode, SocketSpec
from bench.pg import DATABASE as PG_DATABASE
from bench.rawsio import RawSocket
from bench.run import Bench, BenchUser, Target
from bench.servers import ManagedProcess, RedisServer, ServerProcess, free_port

REDIS_CHANNEL = "chatsvc-bench"
# How long the instances may take to subscribe and pass their first message across Redis.
FAN_OUT_READY_S = 30.0
PROBE_WAIT_S = 0.5

Load = tuple[list[SocketSpec], Mode, float]


def find_redis_server() -> str | None:
    """The redis-server executable on PATH, or None."""
    return shutil.which("redis-server")


def spread(specs: list[SocketSpec], instances: int) -> list[SocketSpec]:
    """Senders in turn over the instances, and receivers in turn, so each instance stores and delivers its share.

    (Socket ``i`` on instance ``i % N`` would put every sender of A, each its
    room's first member, on the first instance.)
    """
    senders = receivers = 0
    placed = []
    for spec in specs:
        if spec.send_room is not None:
            placed.append(replace(spec, server=senders % instances))
            senders += 1
        else:
            placed.append(replace(spec, server=receivers % instances))
            receivers += 1
    return placed


class ClusterBench(Bench):
    """One run of the cluster mode: 1 instance, then N instances behind Redis, per repetition."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.instances: list[ServerProcess] = []
        self.redis: RedisServer | None = None
        self.redis_version = ""

    @property
    def single_label(self) -> str:
        """The row of the single instance."""
        return "1 instance"

    @property
    def cluster_label(self) -> str:
        """The row of the N instances."""
        return f"{self.args.cluster} instances"

    def _plan_cores(self) -> tuple[list[int] | None, list[int] | None]:
        """A core per instance when there are more cores than instances; else the first core for all of them."""
        if self.args.no_pin:
            return None, None
        try:
            cores = sorted(os.sched_getaffinity(0))
            if len(cores) < 2:
                return None, None
            count = max(1, min(self.args.cluster, len(cores) - 1))
            server, gen = cores[:count], cores[count:]
            os.sched_setaffinity(0, gen)  # the coordinator and the workers it spawns
        except (AttributeError, OSError):
            return None, None
        return server, gen

    def _instance_cores(self, index: int) -> list[int] | None:
        if not self.server_cores:
            return None
        return [self.server_cores[index % len(self.server_cores)]]

    # -- servers ------------------------------------------------------------

    def _db_args(self) -> list[str]:
        """The shared SQLite file, or with ``--engine postgres`` the benchmark's PostgreSQL database."""
        if self.pg is None:
            return super()._db_args()
        return ["--database-url", self.pg.url(PG_DATABASE)]

    async def start_chatsvc(self) -> None:
        """Start (or restart) the single instance, without Redis, on the first server core."""
        port = self.chatsvc.port if self.chatsvc is not None else free_port()
        args = ["-m", "chatsvc", "serve", "--host", "127.0.0.1", "--port", str(port), *self._db_args()]
        self.chatsvc = ServerProcess("chatsvc", args, port, self._server_env(), self.workdir / "chatsvc.log")
        await self.chatsvc.start(self._instance_cores(0))
        self.log(f"1 instance: chatsvc pid {self.chatsvc.pid} on {self.chatsvc.url}")

    async def start_redis(self) -> None:
        """Start the throwaway redis-server, on the server cores."""
        executable = find_redis_server()
        assert executable is not None
        self.redis = RedisServer(executable, free_port(), self.workdir, self.workdir / "redis.log")
        self.redis_version = await self.redis.version()
        await self.redis.start(self.server_cores)
        self.log(f"redis-server pid {self.redis.pid} on {self.redis.url}")

    async def start_instances(self, probe: tuple[int, BenchUser, BenchUser]) -> None:
        """Start N instances over the benchmark database and Redis; return once messages cross between all."""
        assert self.redis is not None
        env = {**self._server_env(), "CHATSVC_REDIS_URL": self.redis.url, "CHATSVC_REDIS_CHANNEL": REDIS_CHANNEL}
        ports = [instance.port for instance in self.instances] or [free_port() for _ in range(self.args.cluster)]
        self.instances = []
        for index, port in enumerate(ports):
            args = ["-m", "chatsvc", "serve", "--host", "127.0.0.1", "--port", str(port), *self._db_args()]
            log_path = self.workdir / f"chatsvc-{index}.log"
            instance = ServerProcess(f"chatsvc-{index}", args, port, env, log_path)
            self.instances.append(instance)
            await instance.start(self._instance_cores(index))
        began = time.monotonic()
        await self.wait_for_fan_out(*probe)
        self.log(
            f"{self.cluster_label}: pids {[i.pid for i in self.instances]} on ports {ports}, "
            f"messages cross Redis ({time.monotonic() - began:.1f} s after start)"
        )

    async def stop_instances(self) -> None:
        """Stop the N instances."""
        await asyncio.gather(*(instance.stop() for instance in self.instances))

    async def wait_for_fan_out(self, room: int, sender: BenchUser, receiver: BenchUser) -> None:
        """Until every instance listens to the channel and a message sent through each reaches a socket on each."""
        assert self.redis is not None and self.http is not None
        deadline = time.monotonic() + FAN_OUT_READY_S
        while await self.redis.subscribers(REDIS_CHANNEL) < len(self.instances):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the instances did not all subscribe to Redis; see {self.workdir}/chatsvc-*.log")
            await asyncio.sleep(0.05)
        # Subscribed is not yet in the stream: an instance delivers its own broadcasts locally until its
        # probe has come back through Redis. Only a message that crossed proves each one is in.
        seen: list[set[int]] = [set() for _ in self.instances]
        arrived = asyncio.Event()

        def receive(index: int) -> Callable[[str], None]:
            def on_event(frame: str) -> None:
                if '"sendMessage"' in frame:
                    seen[index].add(json.loads(frame[2:])[1]["message"]["id"])
                    arrived.set()

            return on_event

        sockets: list[RawSocket] = []
        try:
            senders = []
            for index, instance in enumerate(self.instances):
                for user, on_event in ((sender, lambda frame: None), (receiver, receive(index))):
                    sock = RawSocket(instance.url, on_event)
                    sockets.append(sock)
                    await sock.connect({"token": user.token})
                    ack = await sock.call("joinRoom", json.dumps({"chatroomId": room, "userId": user.id}))
                    if isinstance(ack, dict) and "statusCode" in ack:
                        raise RuntimeError(f"probe joinRoom refused: {ack}")
                    if user is sender:
                        senders.append(sock)
            message = {"type": "text", "content": "probe"}
            payload = json.dumps({"sendUserId": sender.id, "chatroomId": room, "message": message})
            while True:
                ids = [(await sock.call("sendMessage", payload))["id"] for sock in senders]
                wait_until = time.monotonic() + PROBE_WAIT_S
                while not all(set(ids) <= got for got in seen) and time.monotonic() < wait_until:
                    arrived.clear()
                    try:
                        async with asyncio.timeout(max(wait_until - time.monotonic(), 0)):
                            await arrived.wait()
                    except TimeoutError:
                        pass
                if all(set(ids) <= got for got in seen):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"messages did not cross between instances; see {self.workdir}/chatsvc-*.log")
        finally:
            await asyncio.gather(*(sock.close() for sock in sockets), return_exceptions=True)

    # -- the run --------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Per repetition: each workload against 1 instance, then against N behind Redis; the report as a dict."""
        args = self.args
        workers = args.workers or max(1, len(self.gen_cores) if self.gen_cores else 1)
        self.pool = self.make_pool(workers)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.only}
        try:
            # Blocking, once, before anything runs: the server's life is tied to this (the main) thread.
            if args.engine == "postgres" and not self.start_postgres():
                raise RuntimeError(f"PostgreSQL could not start: {self.pg_skipped}")
            await self.start_redis()
            await self.start_chatsvc()
            loads: dict[str, Load] = {name: await self.specs_for(name) for name in args.only}
            sender, receiver = (await self.ensure_users(2))[:2]
            (probe_room,) = await self.one_to_one_rooms([(sender, receiver)])
            for repetition in range(args.repeat):
                if repetition > 0:
                    await self.start_chatsvc()
                assert self.chatsvc is not None
                single = Target(self.single_label, [self.chatsvc])
                for name, (specs, mode, rate) in loads.items():
                    runs[name].append({single.label: await self.socket_workload(name, single, specs, mode, rate)})
                await self.chatsvc.stop()
                await self.start_instances((probe_room, sender, receiver))
                assert self.redis is not None
                several = Target(self.cluster_label, self.instances, self.redis.pid)
                for name, (specs, mode, rate) in loads.items():
                    placed = spread(specs, len(self.instances))
                    runs[name][-1][several.label] = await self.socket_workload(name, several, placed, mode, rate)
                await self.stop_instances()
            for name, repeated in runs.items():
                self.results[name] = report.median_run(name, repeated)
                if len(repeated) > 1:
                    self.repetitions[name] = repeated
        finally:
            await self.tear_down()
        return self.report(workers)

    def servers(self) -> list[ManagedProcess | None]:
        """The single instance, the cluster's instances and Redis."""
        return [self.chatsvc, *self.instances, self.redis]

    def meta(self, workers: int) -> dict[str, Any]:
        """The main benchmark's meta, and how the instances were laid out."""
        meta = super().meta(workers)
        for key in ("baseline_loop", "node_versions", "node_skipped", "postgres_seed_s"):
            del meta[key]
        instance_cores = [self._instance_cores(i) for i in range(self.args.cluster)]
        meta["cluster"] = {
            "instances": self.args.cluster,
            "engine": self.args.engine,
            "labels": [self.single_label, self.cluster_label],
            "single_instance_cores": self._instance_cores(0),
            "instance_cores": instance_cores,
            "redis_cores": self.server_cores,
            # Fewer server cores than instances: the N figure shows the cost of Redis fan-out, not scaling.
            "shared_cores": self.server_cores is None or len(self.server_cores) < self.args.cluster,
            "redis_server": self.redis_version,
            "redis_channel": REDIS_CHANNEL,
            "placement": "senders in turn over the instances, receivers in turn",
        }
        return meta
