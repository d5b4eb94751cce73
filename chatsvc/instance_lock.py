"""One serving process per database, unless every process on it shares rooms through Redis.

A process without Redis keeps room memberships and profiles in memory and
fans out in memory: a second such process on the same database would serve
stale memberships and never see the first one's messages live. So a serving
process holds an ``flock`` on a file beside the database for its lifetime:
exclusive without ``CHATSVC_REDIS_URL``, shared with it (Redis instances
cooperate, chatsvc/fanout/redis.py). A conflicting process refuses to start.
The administrative commands (``chatsvc token``, ``user add``, ``init-db``)
take no lock: they work beside a serving process.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from chatsvc.db import FILE_MODE, create_private_folder
from chatsvc.errors import StartupError

# Exit status of a refused start, as for an invalid setting.
CONFLICT_EXIT_STATUS = 2


def instance_lock_path(db_path: Path) -> Path:
    """The lock file of the processes serving ``db_path``."""
    return db_path.with_name(db_path.name + ".instance-lock")


class InstanceLock:
    """The claim of a serving process on its database: exclusive alone, shared with other Redis instances."""

    def __init__(self, db_path: Path, *, shared: bool) -> None:
        self.db_path = db_path
        self.path = instance_lock_path(db_path)
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; StartupError (exit status 2) if another process holds it in conflict."""
        try:
            create_private_folder(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise StartupError(f"cannot open the database {self.db_path}: {exc}") from exc
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(self._conflict(), exit_status=CONFLICT_EXIT_STATUS) from None
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (idempotent); closing the file releases it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _conflict(self) -> str:
        if self.shared:
            return (
                f"a chatsvc process without CHATSVC_REDIS_URL is serving {self.db_path}: stop it, "
                "or set CHATSVC_REDIS_URL on every instance that serves this database"
            )
        return (
            f"another chatsvc process is serving {self.db_path}: to run several instances on one database, "
            "set CHATSVC_REDIS_URL on every one of them (docs/deploy.md)"
        )
