"""/file: uploading files and fetching them; /minio: the original backend's presigned upload URL.

A file is as private as its name: 128 random bits, known to whoever was sent
its URL. ``GET /file/<name>`` needs no login, so that ``<img src>`` works.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from chatsvc.errors import BadRequest, NotFound
from chatsvc.files import NAME_PATTERN, S3_UPLOAD_PREFIX, new_file_name
from chatsvc.files.spool import receive_upload
from chatsvc.http.middleware import caller, public
from chatsvc.jsonutil import json_response
from chatsvc.models import PresignedUrlQuery, validate_params
from chatsvc.state import STATE
from chatsvc.store.files import find_upload, insert_upload

routes = web.RouteTableDef()

_NAME = re.compile(NAME_PATTERN)


@routes.post("/file/upload")
async def upload_file(request: web.Request) -> web.Response:
    """Store the multipart ``file`` part; answers ``{url, name, size, contentType}``."""
    state = request.app[STATE]
    config = state.config
    spooled = await receive_upload(
        request, spool_folder=state.files.spool_folder, max_size=config.max_upload, allowed=config.upload_types
    )
    name = new_file_name()
    try:
        await state.files.put(
            name, spooled.path, content_type=spooled.content_type, original_name=spooled.original_name
        )
    finally:
        # Consumed by the store when it succeeded; removed here when it failed.
        await asyncio.to_thread(spooled.path.unlink, missing_ok=True)
    try:
        async with state.db.transaction() as conn:
            await insert_upload(
                conn,
                name=name,
                original_name=spooled.original_name,
                content_type=spooled.content_type,
                size=spooled.size,
                uploader_id=caller(request).id,
            )
    except BaseException:
        # No row, no file: nothing half-written stays behind.
        await state.files.delete([name])
        raise
    base = config.public_url or str(request.url.origin())
    body = {"url": f"{base}/file/{name}", "name": name, "size": spooled.size, "contentType": spooled.content_type}
    return json_response(body, status=201)


@routes.get("/file/{name}")
@public
async def get_file(request: web.Request) -> web.StreamResponse:
    """The file's bytes (or, with S3, a redirect to them), with headers that keep non-images from running."""
    name = request.match_info["name"]
    upload = await find_upload(request.app[STATE].db.reader, name) if _NAME.fullmatch(name) else None
    if upload is None:
        raise NotFound("File not found")
    return await request.app[STATE].files.respond(request, upload)


@routes.get("/minio/presignedUrl")
async def presigned_url(request: web.Request) -> web.Response:
    """A URL to PUT object ``name`` into the bucket for an hour, as the original backend answered (S3 only)."""
    name = validate_params(PresignedUrlQuery, request.query).name
    if name.startswith(S3_UPLOAD_PREFIX) or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadRequest(f"name must not start with {S3_UPLOAD_PREFIX!r} nor contain control characters")
    url = await request.app[STATE].files.presigned_put_url(name)
    if url is None:
        raise NotFound("Direct uploads need S3 storage (CHATSVC_S3_URL); use POST /file/upload")
    return json_response(url)
