"""The default file store: a private folder (``<data dir>/files``, 0700) holding one file per upload."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from chatsvc.db import create_private_folder
from chatsvc.errors import NotFound, StartupError
from chatsvc.files import download_headers
from chatsvc.files.spool import prepare_spool_folder


class DiskFileStore:
    """Files in a folder; served by aiohttp's FileResponse (sendfile, ETag, If-None-Match, Range)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # Spooled uploads live in the same file system, so keeping one is a rename.
        self.spool_folder = folder / ".incoming"

    async def start(self) -> None:
        """Create the folders (0700) and drop spooled uploads a crash left behind."""
        try:
            await asyncio.to_thread(create_private_folder, self.folder)
            await asyncio.to_thread(prepare_spool_folder, self.spool_folder)
        except OSError as exc:
            raise StartupError(f"cannot use the files folder {self.folder}: {exc}") from None

    async def close(self) -> None:
        """Nothing to release."""

    def _path(self, name: str) -> Path:
        return self.folder / name

    async def put(self, name: str, spooled: Path, *, content_type: str, original_name: str) -> None:
        """Move the spooled file into place under its name."""
        await asyncio.to_thread(_move_durably, spooled, self._path(name))

    async def respond(self, request: web.Request, upload: dict[str, Any]) -> web.StreamResponse:
        """The file's bytes; aiohttp answers conditional and range requests from the file itself."""
        path = self._path(upload["name"])
        if not await asyncio.to_thread(path.is_file):
            raise NotFound("File not found")
        return web.FileResponse(path, headers=download_headers(upload))

    async def delete(self, names: list[str]) -> None:
        """Remove the files of these names."""
        await asyncio.to_thread(_unlink_all, [self._path(name) for name in names])

    async def presigned_put_url(self, object_name: str) -> str | None:
        """None: direct uploads need S3."""
        return None


def _move_durably(source: Path, target: Path) -> None:
    os.replace(source, target)
    # The rename is durable once the folder's entry is on disk.
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
