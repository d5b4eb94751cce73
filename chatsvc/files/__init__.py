"""Uploaded files: where their bytes live, behind one small interface.

Two engines implement :class:`FileStore`: :mod:`chatsvc.files.disk` (the
default, a private folder beside the database) and :mod:`chatsvc.files.s3`
(S3-compatible object storage, ``CHATSVC_S3_URL``). An upload is first
spooled to a private temporary file while its size and type are checked
(:mod:`chatsvc.files.spool`), then handed to the store whole; the uploads
table (chatsvc/store/files.py) says what each name is. Both engines serve
``GET /file/<name>``: the disk store answers with the bytes, the S3 store with
a redirect to a short-lived presigned URL.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from chatsvc.files.sniff import IMAGE_TYPES

if TYPE_CHECKING:
    from chatsvc.config import Config

# 128 random bits, in hex: no character that a URL, a file system or SQL LIKE treats specially.
NAME_BYTES = 16
NAME_PATTERN = r"[0-9a-f]{32}"
# Keys of files uploaded through chatsvc in an S3 bucket; GET /minio/presignedUrl refuses names under it.
S3_UPLOAD_PREFIX = "uploads/"
# Browsers and caches may keep a file for a year: a name is never reused for other bytes.
IMMUTABLE = "private, max-age=31536000, immutable"


def new_file_name() -> str:
    """A fresh, unguessable file name."""
    return secrets.token_hex(NAME_BYTES)


def is_image(content_type: str) -> bool:
    """Whether browsers show this type in ``<img>``: served inline and without a sandbox."""
    return content_type in IMAGE_TYPES


def content_disposition(kind: str, original_name: str) -> str:
    """A Content-Disposition header naming the file, readable by old and new browsers alike (RFC 6266)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in original_name) or "file"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(original_name, safe='')}"


def download_headers(upload: dict[str, Any]) -> dict[str, str]:
    """The headers that go with a file's bytes, whichever store serves them."""
    content_type = upload["contentType"]
    headers = {"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"}
    if content_type.startswith("text/"):
        headers["Content-Type"] = f"{content_type}; charset=utf-8"
    else:
        headers["Content-Type"] = content_type
    if not is_image(content_type):
        # Opened straight from its URL, an HTML-looking file must not run script in chatsvc's origin.
        headers["Content-Security-Policy"] = "sandbox"
        headers["Content-Disposition"] = content_disposition("attachment", upload["originalName"])
    return headers


class FileStore(Protocol):
    """Where uploaded bytes live."""

    # Where uploads are spooled while they arrive: a private folder on local disk.
    spool_folder: Path

    async def start(self) -> None:
        """Prepare the store (make the folder, check the bucket); raises StartupError if it cannot be used."""

    async def close(self) -> None:
        """Release connections."""

    async def put(self, name: str, spooled: Path, *, content_type: str, original_name: str) -> None:
        """Keep the complete, checked file at ``spooled`` under ``name``; ``spooled`` is consumed."""

    async def respond(self, request: web.Request, upload: dict[str, Any]) -> web.StreamResponse:
        """The answer to ``GET /file/<name>`` for a stored upload (the bytes, or a redirect to them)."""

    async def delete(self, names: list[str]) -> None:
        """Remove files; names already gone are no error."""

    async def presigned_put_url(self, object_name: str) -> str | None:
        """A URL that lets a client PUT ``object_name`` into the bucket, as the original backend gave; None on disk."""


@dataclass(frozen=True)
class S3Location:
    """Where the S3 store keeps files: endpoint, bucket, credentials and region, from ``CHATSVC_S3_URL``."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str


def parse_s3_url(raw: str, setting: str = "CHATSVC_S3_URL") -> S3Location:
    """``http(s)://ACCESS_KEY:SECRET_KEY@host[:port]/bucket[?region=...]`` as an S3Location; ValueError if not."""
    shape = "http(s)://ACCESS_KEY:SECRET_KEY@host:port/bucket"
    parts = urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{setting} has an invalid port: must look like {shape}") from None
    bucket = parts.path.strip("/")
    if parts.scheme not in ("http", "https") or not parts.hostname or not bucket or "/" in bucket:
        raise ValueError(f"{setting} must look like {shape}")
    if parts.username is None or parts.password is None:
        raise ValueError(f"{setting} must carry the access key and secret key: {shape}")
    region = "us-east-1"
    for pair in filter(None, parts.query.split("&")):
        key, _, value = pair.partition("=")
        if key != "region" or not value:
            raise ValueError(f"{setting}: the only query parameter is region=NAME")
        region = unquote(value)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    endpoint = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return S3Location(endpoint, unquote(bucket), unquote(parts.username), unquote(parts.password), region)


def make_file_store(config: Config) -> FileStore:
    """The store the settings name: S3 with CHATSVC_S3_URL, else the folder beside the database."""
    if config.s3_url is not None:
        # Imported only when used: aiobotocore is the optional "s3" extra.
        from chatsvc.files.s3 import S3FileStore

        return S3FileStore(parse_s3_url(config.s3_url), config.files_path, public_endpoint=config.s3_public_url)
    from chatsvc.files.disk import DiskFileStore

    return DiskFileStore(config.files_path)
