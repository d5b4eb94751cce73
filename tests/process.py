"""Run chatsvc as a real process, the way `make run` does, for shutdown and crash tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from bench.servers import free_port


class ChatsvcProcess:
    """``python -m chatsvc serve`` on a loopback port over a given database file."""

    def __init__(self, db_path: Path, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.db_path = db_path
        self.port = port or free_port()
        self.env = {**os.environ, "CHATSVC_SCRYPT_N": "16", **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 15.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatsvc",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            str(self.db_path),
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await self._until_ready(timeout)

    async def _until_ready(self, timeout: float) -> None:
        """Poll until the server answers HTTP (a readiness probe, not a timing assumption)."""
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
            while True:
                assert self.proc is not None and self.proc.returncode is None, "server exited during start-up"
                try:
                    async with session.get(self.url + "/healthz") as resp:
                        if resp.status < 500:
                            return
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")

    def terminate(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


async def run_chatsvc_command(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, str, str]:
    """``python -m chatsvc ARGS`` run to its end (a refused start, a CLI command): exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatsvc",
        *args,
        env={**os.environ, "CHATSVC_SCRYPT_N": "16", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
