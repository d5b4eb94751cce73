"""The periodic sweep that removes uploads no message or profile refers to once they are old enough.

An upload is kept for good as soon as an image or file message, or a user's
``headPic``, names its URL. One that nothing names after
``CHATSVC_UPLOAD_UNUSED_TTL`` (24 hours) is removed: its row, then its bytes.
With several instances each one sweeps; the row deletion decides which
instance removes which file.
"""

from __future__ import annotations

import asyncio
import logging

from chatsvc.db import Database
from chatsvc.files import FileStore
from chatsvc.store import files

log = logging.getLogger(__name__)


class UploadSweeper:
    """Runs :meth:`sweep` every ``interval`` seconds until closed."""

    def __init__(self, db: Database, store: FileStore, *, max_age: int, interval: int) -> None:
        self._db = db
        self._store = store
        self._max_age = max_age
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin sweeping in the background (the first sweep one interval from now)."""
        self._task = asyncio.create_task(self._run(), name="chatsvc-upload-sweep")

    async def close(self) -> None:
        """Stop sweeping; a sweep in progress is cancelled (its transaction rolls back)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Exception:
                # A failed sweep (database busy, storage down) is tried again next time.
                log.exception("upload sweep failed")

    async def sweep(self, max_age: int | None = None) -> list[str]:
        """Remove the unused uploads older than ``max_age`` seconds (default: the setting); their names.

        The messages since the last sweep are read on the reader connection,
        without the write lock; the write transaction then reads only what was
        committed meanwhile, marks what is referred to, and deletes the rest.
        """
        age = self._max_age if max_age is None else max_age
        reader = self._db.reader
        referenced, checked = await files.find_referenced_uploads(reader, await files.checked_message_id(reader))
        async with self._db.transaction() as conn:
            since, checked = await files.find_referenced_uploads(conn, checked)
            await files.mark_uploads_used(conn, referenced | since)
            await files.save_checked_message_id(conn, checked)
            await files.mark_uploads_used_by_profiles(conn, age)
            names = await files.delete_unused_uploads(conn, age)
        if names:
            await self._store.delete(names)
            log.info("removed %d unused upload(s)", len(names))
        return names
