"""Receiving an upload: the multipart ``file`` part streamed to a private temporary file, checked on the way.

The body is never held whole in memory: it is read in chunks and written to
disk through a worker thread, a few hundred KiB at a time. The size is
counted as the bytes arrive (413 the moment it passes the limit) and the type
is decided from the first bytes (415 unless it is an allowed type), so a
refused upload stops early and leaves no file behind.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from chatsvc.db import create_private_folder
from chatsvc.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from chatsvc.files.sniff import SNIFF_BYTES, sniff

# Read from the socket this much at a time; written to disk once this much more has gathered.
READ_CHUNK = 64 * 1024
WRITE_CHUNK = 256 * 1024
# What aiohttp's multipart reader raises on a body that is not well-formed multipart.
_MALFORMED = (ValueError, AssertionError, HttpProcessingError)
# Multipart boundaries and part headers around the file: a body this much over the limit may still fit.
MULTIPART_OVERHEAD = 16 * 1024
ORIGINAL_NAME_MAX = 255
FIELD = "file"
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Spooled:
    """A received, checked upload waiting in its temporary file."""

    path: Path
    size: int
    content_type: str
    original_name: str


def prepare_spool_folder(folder: Path) -> None:
    """Make the private folder uploads are spooled in, emptied of what a crash left behind."""
    create_private_folder(folder)
    for leftover in folder.iterdir():
        leftover.unlink(missing_ok=True)


def clean_original_name(raw: str | None) -> str:
    """The name the file had on the uploader's machine, without folders or control characters."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = _UNSAFE_NAME.sub("", name).strip()
    return name[:ORIGINAL_NAME_MAX] or "file"


async def receive_upload(
    request: web.Request, *, spool_folder: Path, max_size: int, allowed: tuple[str, ...]
) -> Spooled:
    """Stream the request's one ``file`` part to a temporary file in ``spool_folder``; 400, 413 or 415 if refused."""
    if request.content_type != "multipart/form-data":
        raise BadRequest(f"Send the file as multipart/form-data with one part named {FIELD!r}")
    if request.content_length is not None and request.content_length > max_size + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"File is larger than the limit of {max_size} bytes")
    try:
        reader = await request.multipart()
        part = await reader.next()
    except _MALFORMED:
        raise BadRequest("Malformed multipart/form-data body") from None
    if not isinstance(part, BodyPartReader) or part.name != FIELD or part.filename is None:
        raise BadRequest(f"The multipart body must have one file part named {FIELD!r}")
    spooled = await _spool(part, spool_folder, max_size, allowed)
    try:
        extra = await reader.next() is not None
    except _MALFORMED:
        extra = True
    if extra:
        spooled.path.unlink(missing_ok=True)
        raise BadRequest(f"The multipart body must have only one part, named {FIELD!r}")
    return spooled


async def _spool(part: BodyPartReader, folder: Path, max_size: int, allowed: tuple[str, ...]) -> Spooled:
    original_name = clean_original_name(part.filename)
    head = bytearray()
    while len(head) < SNIFF_BYTES:
        chunk = await _read_chunk(part)
        if not chunk:
            break
        head += chunk
        if len(head) > max_size:
            raise PayloadTooLarge(f"File is larger than the limit of {max_size} bytes")
    if not head:
        raise BadRequest("File is empty")
    content_type = sniff(bytes(head[:SNIFF_BYTES]), complete=part.at_eof())
    if content_type is None or content_type not in allowed:
        what = "This kind of file" if content_type is None else f"{content_type}"
        raise UnsupportedMediaType(f"{what} is not accepted; allowed: {', '.join(allowed)}")
    path = folder / f"{os.getpid()}-{id(part):x}-{os.urandom(4).hex()}.part"
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = len(head)
    try:
        pending = head
        while True:
            chunk = await _read_chunk(part)
            size += len(chunk)
            if size > max_size:
                raise PayloadTooLarge(f"File is larger than the limit of {max_size} bytes")
            pending += chunk
            if len(pending) >= WRITE_CHUNK or (not chunk and pending):
                # Handed over whole and replaced, never changed while the thread writes it.
                await asyncio.to_thread(_write_all, fd, pending)
                pending = bytearray()
            if not chunk:
                break
        # On disk before anyone is told the upload is stored.
        await asyncio.to_thread(os.fsync, fd)
    except BaseException:
        await asyncio.to_thread(_discard, fd, path)
        raise
    os.close(fd)
    return Spooled(path, size, content_type, original_name)


async def _read_chunk(part: BodyPartReader) -> bytes:
    try:
        return await part.read_chunk(READ_CHUNK)
    except _MALFORMED:
        raise BadRequest("Malformed multipart/form-data body") from None


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _discard(fd: int, path: Path) -> None:
    os.close(fd)
    path.unlink(missing_ok=True)
