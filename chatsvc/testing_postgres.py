"""A throwaway PostgreSQL server for tests: the system's own binaries, a temporary folder, a free loopback port.

::

    from chatsvc.testing_postgres import PostgresServer

    with PostgresServer() as pg:                    # initdb + start: about a second
        with pg.temporary_database() as url:       # postgresql://postgres:…@127.0.0.1:<port>/test_1
            ...                                     # the database is dropped on exit

It runs Debian's ``postgresql`` package (or any PostgreSQL 13+ whose ``initdb``,
``postgres`` and ``psql`` are found, see :func:`find_bindir`) with the settings
chatsvc relies on (``fsync`` and ``synchronous_commit`` on), listening on
127.0.0.1 only. Run as root, the server runs as ``nobody``, since PostgreSQL
refuses to run as root. Everything is synchronous (subprocesses, no event loop):
start it in a session fixture or before the loop, from a thread that outlives it
(see ``_launch``). See docs/testing.md.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

LOOPBACK = "127.0.0.1"
SUPERUSER = "postgres"
# The account the server runs as when the tests run as root.
UNPRIVILEGED_USER = "nobody"
BINARIES = ("initdb", "postgres", "psql")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
PSQL_TIMEOUT = 60.0
# Another process may take the free port between choosing it and binding it (tests run in parallel here).
PORT_ATTEMPTS = 5
# Line 8 of postmaster.pid is the postmaster's status; "ready" once it accepts connections (what pg_ctl -w waits for).
PID_FILE_STATUS_LINE = 7
# Settings on top of PostgreSQL's defaults. fsync and synchronous_commit are chatsvc's promise (an ack follows
# the commit), so they stay on even here; the rest keeps a test server small and predictable.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "listen_addresses": LOOPBACK,
    "fsync": "on",
    "synchronous_commit": "on",
    "shared_buffers": "16MB",
    "huge_pages": "off",
    "timezone": "UTC",
    "log_min_messages": "warning",
}
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PostgresError(RuntimeError):
    """The test server could not be set up, started or asked something; the message carries its own words."""


def find_bindir() -> Path | None:
    """The folder holding ``initdb``, ``postgres`` and ``psql``, or None.

    Looked for in order: ``pg_config --bindir``; the newest ``/usr/lib/postgresql/<version>/bin``
    (Debian keeps the server binaries off PATH); the folder of ``initdb`` on PATH.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(done.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda path: _version_key(path.parent.name), reverse=True)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in BINARIES):
            return folder
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _unprivileged_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise PostgresError(
            f"running as root, and there is no {UNPRIVILEGED_USER!r} account to run PostgreSQL as (it refuses root)"
        ) from None


def _clean_env() -> dict[str, str]:
    # PGDATA, PGPORT, PGSERVICE… of the caller's shell must not steer our server or our psql.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, served on a free port of 127.0.0.1 until :meth:`close`."""

    def __init__(self, bindir: Path | None = None, *, settings: Mapping[str, str] | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresNotFound(
                "no PostgreSQL server binaries (initdb, postgres, psql) found through pg_config, "
                "/usr/lib/postgresql/*/bin or PATH (Debian: apt-get install postgresql)"
            )
        self.bindir = found
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.user = SUPERUSER
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.folder: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._account = _unprivileged_account() if os.geteuid() == 0 else None

    # --- life cycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        assert self.folder is not None, "the server was never started"
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        """Where the server writes its log (kept until :meth:`close`)."""
        assert self.folder is not None, "the server was never started"
        return self.folder / "postgres.log"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Create the cluster on first use, then start the server and wait until it accepts connections.

        Called again after :meth:`stop`, it restarts the same cluster on the same port (a restart test).
        """
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.folder is None:
            self._initdb()
        if self.port:
            try:
                self._launch(self.port, timeout)
            except _PortTaken:
                raise PostgresError(
                    f"port {self.port} was taken while the server was down:\n{self._log_tail()}"
                ) from None
            return
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port()
            try:
                self._launch(port, timeout)
            except _PortTaken:
                if attempt == PORT_ATTEMPTS:
                    raise PostgresError(f"no free port after {PORT_ATTEMPTS} attempts:\n{self._log_tail()}") from None
                continue
            self.port = port
            return

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server: a fast shutdown (SIGINT), then an immediate one (SIGQUIT), then SIGKILL if it is stuck."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for signum, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            proc.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _initdb(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="chatsvc-pg-"))
        self.folder = folder
        try:
            pwfile = folder / "pwfile"
            pwfile.write_text(self.password + "\n")
            self._give_away(folder, pwfile)
            # --no-sync: a crash of the machine loses a throwaway cluster anyway; the server itself keeps fsync on.
            self._run_as_server_user(
                self.bindir / "initdb",
                f"--pgdata={self.datadir}",
                f"--username={self.user}",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            )
            pwfile.unlink()
        except BaseException:
            self.close()
            raise

    def _give_away(self, *paths: Path) -> None:
        """Hand the folder to the unprivileged account when running as root (postgres refuses root)."""
        if self._account is not None:
            for path in paths:
                os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def _run_as_server_user(self, *command: str | Path) -> None:
        account = self._account
        done = subprocess.run(
            [str(part) for part in command],
            cwd=self.folder,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )
        if done.returncode != 0:
            raise PostgresError(f"{Path(command[0]).name} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _launch(self, port: int, timeout: float) -> None:
        assert self.folder is not None
        options = {**self.settings, "port": str(port), "unix_socket_directories": str(self.folder)}
        command = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        # setpriv sets the parent-death signal, so that the server shuts down even if the test process is killed
        # (SIGKILL, a CI timeout) and cannot stop it; it follows the thread that started it, hence "a thread that
        # outlives it". Without setpriv (not Debian), the server simply runs on until stopped.
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            command = [setpriv, "--pdeathsig", "SIGINT", "--", *command]
        account = self._account
        with self.log_path.open("ab") as log:
            # Each start appends to the log; only this start's part explains how this start failed.
            log_start = log.tell()
            self.proc = subprocess.Popen(
                command,
                cwd=self.folder,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )
        self._until_ready(self.proc, timeout, log_start)

    def _until_ready(self, proc: subprocess.Popen[bytes], timeout: float, log_start: int) -> None:
        """Poll postmaster.pid until it says "ready" for this process, as ``pg_ctl start --wait`` does."""
        pid_file = self.datadir / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self.proc = None
                log = self._log_tail(start=log_start)
                if "could not bind" in log or "could not create any TCP/IP sockets" in log:
                    raise _PortTaken
                raise PostgresError(f"postgres exited during start-up ({proc.returncode}):\n{log}")
            with contextlib.suppress(FileNotFoundError):
                lines = pid_file.read_text().splitlines()
                if (
                    len(lines) > PID_FILE_STATUS_LINE
                    and lines[0].strip() == str(proc.pid)
                    and lines[PID_FILE_STATUS_LINE].strip() == "ready"
                ):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresError(f"postgres did not accept connections within {timeout:.0f} s:\n{self._log_tail()}")
            time.sleep(0.01)

    def _log_tail(self, lines: int = 20, start: int = 0) -> str:
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(start)
            return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])
        return ""

    # --- databases --------------------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """``postgresql://postgres:<password>@127.0.0.1:<port>/<database>``, for asyncpg or chatsvc."""
        assert self.port, "the server was never started"
        return f"postgresql://{self.user}:{quote(self.password, safe='')}@{LOOPBACK}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through ``psql`` (unaligned, tuples only) and return what it printed; raises on any error."""
        env = {**_clean_env(), "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}
        connection = ["-h", LOOPBACK, "-p", str(self.port), "-U", self.user, "-d", database]
        done = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *connection, "-c", sql],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PSQL_TIMEOUT,
        )
        if done.returncode != 0:
            raise PostgresError(f"psql failed ({done.returncode}) on {sql!r}:\n{done.stderr}")
        return done.stdout

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (from template0) and return its URL; a unique name if none is given."""
        name = name or f"test_{next(self._names)}"
        if not IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain lower-case identifier: {name!r}")
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending the sessions a test left open in it."""
        if not IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain lower-case identifier: {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def temporary_database(self) -> Iterator[str]:
        """A fresh empty database for one test: its URL, dropped on exit."""
        name = f"test_{next(self._names)}"
        url = self.create_database(name)
        try:
            yield url
        finally:
            self.drop_database(name)


class _PortTaken(Exception):
    """The chosen port was taken before postgres could bind it."""
