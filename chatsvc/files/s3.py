"""The S3 file store: uploads kept in an S3-compatible bucket (AWS S3, MinIO, ...), ``CHATSVC_S3_URL``.

aiobotocore (the asyncio port of botocore) signs every request. Uploads are
keyed ``uploads/<name>``; ``GET /file/<name>`` redirects to a presigned GET
URL that lives a few minutes and tells the bucket which Content-Type,
Content-Disposition and Cache-Control to answer with.

The bytes of an upload go to the bucket through a presigned PUT URL,
streamed from the spooled file by aiohttp, rather than through
``put_object``: over plain http botocore hashes the whole body (SHA-256 for
the signature, CRC32 for its checksum) on the event loop before sending,
which would stall every other client for the length of a large file.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from chatsvc.errors import ServiceUnavailable, StartupError
from chatsvc.files import S3_UPLOAD_PREFIX, S3Location, download_headers, is_image
from chatsvc.files.spool import prepare_spool_folder

log = logging.getLogger(__name__)

KEY_PREFIX = S3_UPLOAD_PREFIX
# How long a presigned download stays valid; the redirect to it may be cached for half of that.
GET_URL_SECONDS = 300
# As the original backend: an hour to PUT a file with a URL from GET /minio/presignedUrl.
PUT_URL_SECONDS = 3600
# Our own upload of a spooled file: long enough for the largest file over a slow link.
OWN_PUT_SECONDS = 900
DELETE_BATCH = 1000


class S3FileStore:
    """Files in a bucket; downloads are redirects to presigned URLs."""

    def __init__(self, location: S3Location, folder: Path, *, public_endpoint: str | None = None) -> None:
        self.location = location
        self.spool_folder = folder / ".incoming"
        self._public_endpoint = public_endpoint or location.endpoint
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._signer: Any = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the clients and make sure the bucket exists (created if missing); StartupError if unreachable."""
        try:
            await asyncio.to_thread(prepare_spool_folder, self.spool_folder)
        except OSError as exc:
            raise StartupError(f"cannot use the upload spool folder {self.spool_folder}: {exc}") from None
        self._client = await self._open_client(self.location.endpoint)
        self._signer = (
            self._client
            if self._public_endpoint == self.location.endpoint
            else await self._open_client(self._public_endpoint)
        )
        self._http = await self._stack.enter_async_context(aiohttp.ClientSession())
        bucket = self.location.bucket
        try:
            try:
                await self._client.head_bucket(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                await self._client.create_bucket(Bucket=bucket)
                log.info("created the S3 bucket %s at %s", bucket, self.location.endpoint)
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            await self.close()
            raise StartupError(f"cannot use the S3 bucket {bucket} at {self.location.endpoint}: {exc}") from None

    async def _open_client(self, endpoint: str) -> Any:
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        creator = get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            region_name=self.location.region,
            aws_access_key_id=self.location.access_key,
            aws_secret_access_key=self.location.secret_key,
            config=config,
        )
        return await self._stack.enter_async_context(creator)

    async def close(self) -> None:
        """Close the clients."""
        await self._stack.aclose()

    async def put(self, name: str, spooled: Path, *, content_type: str, original_name: str) -> None:
        """Stream the spooled file into the bucket; ServiceUnavailable if the bucket refuses it."""
        assert self._http is not None, "store not started"
        params = {"Bucket": self.location.bucket, "Key": KEY_PREFIX + name, "ContentType": content_type}
        url = await self._client.generate_presigned_url("put_object", Params=params, ExpiresIn=OWN_PUT_SECONDS)
        try:
            with spooled.open("rb") as body:
                # aiohttp reads a file body in its executor, a chunk at a time.
                async with self._http.put(url, data=body, headers={"Content-Type": content_type}) as resp:
                    if resp.status != 200:
                        detail = (await resp.text())[:200]
                        log.error("S3 refused upload %s: %s %s", name, resp.status, detail)
                        raise ServiceUnavailable("File storage refused the file; try again later")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.error("S3 upload of %s failed: %s", name, exc)
            raise ServiceUnavailable("File storage is unreachable; try again later") from None
        finally:
            await asyncio.to_thread(spooled.unlink, missing_ok=True)

    async def respond(self, request: web.Request, upload: dict[str, Any]) -> web.StreamResponse:
        """A redirect to a presigned GET URL that answers with the file's headers."""
        headers = download_headers(upload)
        params = {
            "Bucket": self.location.bucket,
            "Key": KEY_PREFIX + upload["name"],
            "ResponseContentType": headers["Content-Type"],
            "ResponseCacheControl": headers["Cache-Control"],
        }
        if not is_image(upload["contentType"]):
            params["ResponseContentDisposition"] = headers["Content-Disposition"]
        url = await self._signer.generate_presigned_url("get_object", Params=params, ExpiresIn=GET_URL_SECONDS)
        return web.Response(
            status=302, headers={"Location": url, "Cache-Control": f"private, max-age={GET_URL_SECONDS // 2}"}
        )

    async def delete(self, names: list[str]) -> None:
        """Remove objects, a thousand per request."""
        for start in range(0, len(names), DELETE_BATCH):
            keys = [{"Key": KEY_PREFIX + name} for name in names[start : start + DELETE_BATCH]]
            await self._client.delete_objects(Bucket=self.location.bucket, Delete={"Objects": keys, "Quiet": True})

    async def presigned_put_url(self, object_name: str) -> str | None:
        """A presigned PUT URL for ``object_name`` in the bucket, valid an hour (as the original backend's)."""
        params = {"Bucket": self.location.bucket, "Key": object_name}
        url: str = await self._signer.generate_presigned_url("put_object", Params=params, ExpiresIn=PUT_URL_SECONDS)
        return url
