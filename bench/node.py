"""The Node side of the benchmark: the Node peer server and the socket.io-client load generator.

Both live in bench/node_peer/ with their npm packages (socket.io, better-sqlite3, socket.io-client),
installed by ``npm install`` into bench/node_peer/node_modules the first time a run needs them (better-sqlite3
compiles SQLite: about two minutes) and again whenever package.json changes. Without ``node`` and ``npm`` on
PATH, the benchmark skips the Node peer and refuses ``--client sio-js``, saying why.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.servers import ServerProcess, child_setup

NODE_DIR = Path(__file__).resolve().parent / "node_peer"
PEER_SCRIPT = NODE_DIR / "server.mjs"
LOADGEN_SCRIPT = NODE_DIR / "loadgen.mjs"
PACKAGES = ("socket.io", "better-sqlite3", "socket.io-client")
INSTALL_TIMEOUT_S = 900.0
# Written into node_modules after an install that loaded every package: the hash of the package.json it installed.
STAMP_NAME = ".chatsvc-bench-installed"
# Opens a database with better-sqlite3 and loads socket.io and socket.io-client: the install is usable.
_LOAD_CHECK = (
    "const D = require('better-sqlite3'); new D(':memory:').pragma('journal_mode'); "
    "require('socket.io'); require('socket.io-client'); console.log(process.version)"
)


class NodeUnavailable(Exception):
    """node or npm is missing, or the Node packages could not be installed; the message says which."""


def _manifest_hash() -> str:
    return hashlib.sha256((NODE_DIR / "package.json").read_bytes()).hexdigest()


def _load_check(node: str) -> dict[str, str]:
    proc = subprocess.run(
        [node, "--input-type=commonjs", "-e", _LOAD_CHECK], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise NodeUnavailable(f"the Node packages do not load: {proc.stderr.strip()[-600:]}")
    versions = {"node": proc.stdout.strip()}
    for package in PACKAGES:
        manifest = json.loads((NODE_DIR / "node_modules" / package / "package.json").read_text())
        versions[package] = manifest["version"]
    return versions


def ensure_node_packages(log: Callable[[str], None]) -> dict[str, str]:
    """node's version and the installed packages' versions, installing them first if needed; NodeUnavailable if not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if path is None)
        raise NodeUnavailable(f"{missing} not installed (Debian: apt-get install nodejs npm)")
    modules = NODE_DIR / "node_modules"
    stamp = modules / STAMP_NAME
    wanted = _manifest_hash()
    # One install at a time per checkout (a test and a bench may start together).
    with (NODE_DIR / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted:
            with contextlib.suppress(NodeUnavailable):
                return _load_check(node)
        log(f"installing the Node packages with npm into {modules} (better-sqlite3 compiles: about 2 minutes)")
        try:
            proc = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeUnavailable(f"npm install took longer than {INSTALL_TIMEOUT_S:.0f} s") from exc
        if proc.returncode != 0:
            raise NodeUnavailable(f"npm install failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
        versions = _load_check(node)
        stamp.write_text(wanted)
        return versions


def node_peer(port: int, db_path: Path, env: dict[str, str], log_path: Path) -> ServerProcess:
    """The Node peer server (bench/node_peer/server.mjs) on a loopback port, storing into ``db_path``."""
    node = shutil.which("node")
    assert node is not None
    args = [str(PEER_SCRIPT), "--host", "127.0.0.1", "--port", str(port), "--db", str(db_path)]
    return ServerProcess("node", args, port, env, log_path, program=node)


def _to_js(value: Any) -> Any:
    """Plans and specs (dataclasses, tuples) as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _from_js(reply: dict[str, Any]) -> dict[str, Any]:
    """A worker's reply as bench/loadgen.py's workers give it: sample arrays as int64 bytes, integer keys."""
    if "error" in reply:
        raise RuntimeError(f"socket.io-client worker failed: {reply['error']}")
    for key in ("latencies", "ack_latencies", "connect_ms", "upgrade_ms"):
        if key in reply:
            reply[key] = base64.b64decode(reply[key])
    if "finals" in reply:
        reply["finals"] = {int(index): (sent, failed) for index, (sent, failed) in reply["finals"].items()}
    return reply


class NodeWorkerPool:
    """socket.io-client worker processes (bench/node_peer/loadgen.mjs), with bench.loadgen.WorkerPool's interface."""

    def __init__(self, count: int, cores: list[int] | None) -> None:
        node = shutil.which("node")
        assert node is not None
        self._procs = [
            subprocess.Popen(
                [node, str(LOADGEN_SCRIPT)],
                cwd=NODE_DIR,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=child_setup(cores),
            )
            for _ in range(count)
        ]

    @property
    def size(self) -> int:
        """The number of workers."""
        return len(self._procs)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [proc.pid for proc in self._procs]

    @staticmethod
    def _reply(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"socket.io-client worker {proc.pid} exited (status {proc.wait()})")
        return _from_js(json.loads(line))

    async def command(self, command: str, per_worker_args: list[tuple[Any, ...]]) -> list[Any]:
        """Send a command with its own arguments to every worker; return their replies in order."""
        loop = asyncio.get_running_loop()
        for proc, args in zip(self._procs, per_worker_args, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"command": command, "args": [_to_js(a) for a in args]}) + "\n")
            proc.stdin.flush()
        return list(await asyncio.gather(*(loop.run_in_executor(None, self._reply, proc) for proc in self._procs)))

    async def command_all(self, command: str, *args: Any) -> list[Any]:
        """Send the same command to every worker."""
        return await self.command(command, [args] * self.size)

    def close(self) -> None:
        """Tell the workers to exit and wait for them."""
        for proc in self._procs:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"command": "exit", "args": []}) + "\n")
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
