"""The servers under test (and Redis for --cluster) as child processes, and what /proc says about them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from redis import asyncio as aioredis

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads included."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields after it are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def peak_rss_bytes(pid: int) -> int:
    """The highest resident set size the process has had (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class CpuMark:
    """CPU times of some processes at one moment."""

    wall: float
    cpu: dict[int, float]

    @classmethod
    def take(cls, pids: list[int]) -> CpuMark:
        """Read the CPU time of each process now."""
        return cls(time.monotonic(), {pid: cpu_seconds(pid) for pid in pids})

    def percent_since(self, earlier: CpuMark) -> dict[int, float]:
        """Per process: CPU used between the two marks, as % of one core."""
        elapsed = max(self.wall - earlier.wall, 1e-9)
        return {pid: 100.0 * (self.cpu[pid] - earlier.cpu.get(pid, 0.0)) / elapsed for pid in self.cpu}


def child_setup(cores: list[int] | None) -> Callable[[], None]:
    """What a child process does between fork and exec: pin itself to ``cores``, raise its open-files limit."""

    def setup() -> None:
        if cores:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cores)
        # Enough descriptors for every idle socket of workload I.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return setup


class ManagedProcess:
    """A process the benchmark starts, logs to a file, waits for and stops."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    async def _spawn(self, argv: list[str], env: dict[str, str] | None, cores: list[int] | None) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                # Between fork and exec the child only sets its affinity and file limit: two system calls.
                preexec_fn=child_setup(cores),
            )
        finally:
            log.close()

    async def _until_ready(self, probe: Callable[[], Awaitable[None]], refused: type[Exception]) -> None:
        """Call ``probe`` until it stops raising ``refused``; fail if the process exits first."""
        assert self.proc is not None
        async with asyncio.timeout(READY_TIMEOUT_S):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"{self.name} exited during start-up; see {self.log_path}")
                try:
                    await probe()
                    return
                except refused:
                    await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


class ServerProcess(ManagedProcess):
    """A server under test: started with its command line, stopped with SIGTERM."""

    def __init__(
        self, name: str, args: list[str], port: int, env: dict[str, str], log_path: Path, program: str = sys.executable
    ) -> None:
        super().__init__(name, log_path)
        self.args = args
        self.port = port
        self.env = env
        # The interpreter that runs ``args``: this Python, or node for the Node peer.
        self.program = program

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, cores: list[int] | None) -> None:
        """Start the process and wait until it answers HTTP."""
        await self._spawn([self.program, *self.args], self.env, cores)
        async with aiohttp.ClientSession() as session:

            async def probe() -> None:
                async with session.get(self.url + "/") as resp:
                    await resp.read()

            await self._until_ready(probe, aiohttp.ClientConnectionError)


class RedisServer(ManagedProcess):
    """A throwaway ``redis-server`` on a loopback port, without persistence, for chatsvc's Redis fan-out."""

    def __init__(self, executable: str, port: int, workdir: Path, log_path: Path) -> None:
        super().__init__("redis-server", log_path)
        self.executable = executable
        self.port = port
        self.workdir = workdir

    @property
    def url(self) -> str:
        """The URL chatsvc's CHATSVC_REDIS_URL takes."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def version(self) -> str:
        """``redis-server 7.0.15``, from what ``redis-server --version`` says."""
        proc = await asyncio.create_subprocess_exec(
            self.executable, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        words = out.decode(errors="replace").split()
        return "redis-server " + next((w[2:] for w in words if w.startswith("v=")), "(unknown version)")

    async def start(self, cores: list[int] | None) -> None:
        """Start redis-server and wait until it answers PING."""
        argv = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        await self._spawn([*argv, "--dir", str(self.workdir)], None, cores)
        client = aioredis.Redis.from_url(self.url)
        try:

            async def probe() -> None:
                await client.ping()

            await self._until_ready(probe, aioredis.ConnectionError)
        finally:
            await client.aclose()

    async def subscribers(self, channel: str) -> int:
        """How many clients listen to a pub/sub channel (``PUBSUB NUMSUB``): one per running chatsvc instance."""
        client = aioredis.Redis.from_url(self.url)
        try:
            counts = await client.pubsub_numsub(channel)
            return int(counts[0][1])
        finally:
            await client.aclose()
