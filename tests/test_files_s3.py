"""Uploads in S3-compatible storage: the real app against moto's standalone S3 server on loopback (issue 16).

Every byte goes over real HTTP: chatsvc's aiobotocore client and presigned
PUT to the server, and the test's plain aiohttp client following the
redirects and presigned URLs, as a browser or the original frontend would.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiobotocore.session import get_session

from chatsvc.config import Config
from chatsvc.errors import StartupError
from chatsvc.testing import ChatsvcServer, run_chatsvc
from tests.conftest import make_config
from tests.helpers import Api, assert_error, png_bytes, tool_missing, upload_file
from tests.process import free_port

BUCKET = "chat-room"
ACCESS_KEY = "chatsvc-test"
SECRET_KEY = "chatsvc-test-secret"
START_TIMEOUT = 30.0
PDF = b"%PDF-1.7\n" + b"0" * 5000 + b"\n%%EOF\n"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server in a subprocess on a free loopback port: ``http://127.0.0.1:<port>``."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        tool_missing(
            "S3 tests", "moto's standalone server is not installed (pip install 'moto[server]', in the test extra)"
        )
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                tool_missing("S3 tests", f"moto's S3 server exited at start: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    tool_missing("S3 tests", f"moto's S3 server did not answer within {START_TIMEOUT:.0f} s")
                # Polling a process that is still starting: there is no event to wait on.
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_url(endpoint: str, bucket: str = BUCKET) -> str:
    return endpoint.replace("http://", f"http://{ACCESS_KEY}:{SECRET_KEY}@", 1) + f"/{bucket}"


@pytest.fixture
def config(tmp_path: Path, s3_endpoint: str) -> Config:
    return make_config(tmp_path, s3_url=s3_url(s3_endpoint))


async def object_bytes(endpoint: str, key: str, bucket: str = BUCKET) -> bytes | None:
    """An object as the bucket holds it, read with a client of our own; None if there is none."""
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        try:
            found = await client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None
        async with found["Body"] as body:
            data: bytes = await body.read()
            return data


async def test_files_s3_upload_is_stored_in_the_bucket_and_get_redirects_to_a_presigned_url(
    api: Api, s3_endpoint: str, server: ChatsvcServer
) -> None:
    alice = await api.new_user()
    image = png_bytes(12, 12)
    resp = await upload_file(api, alice.token, image, "pic.png", "image/png")
    assert resp.status == 201, resp.body
    name = resp.body["name"]
    assert resp.body["contentType"] == "image/png" and resp.body["size"] == len(image)
    assert await object_bytes(s3_endpoint, f"uploads/{name}") == image
    # Nothing stays in the spool once the bucket has the file.
    assert list((server.state.config.files_path / ".incoming").iterdir()) == []

    async with aiohttp.ClientSession() as plain:
        async with plain.get(resp.body["url"], allow_redirects=False) as redirect:
            assert redirect.status == 302
            location = redirect.headers["Location"]
            assert location.startswith(f"{s3_endpoint}/{BUCKET}/uploads/{name}?")
            assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
        async with plain.get(location) as got:
            assert got.status == 200
            assert await got.read() == image
            assert got.headers["Content-Type"] == "image/png"
            assert "Content-Disposition" not in got.headers


async def test_files_s3_non_image_downloads_as_an_attachment_with_its_original_name(api: Api) -> None:
    alice = await api.new_user()
    resp = await upload_file(api, alice.token, PDF, "notes é.pdf", "application/octet-stream")
    assert resp.status == 201, resp.body
    async with aiohttp.ClientSession() as plain, plain.get(resp.body["url"]) as got:
        assert got.status == 200
        assert await got.read() == PDF
        assert got.headers["Content-Type"] == "application/pdf"
        assert got.headers["Content-Disposition"] == (
            "attachment; filename=\"notes _.pdf\"; filename*=UTF-8''notes%20%C3%A9.pdf"
        )


async def test_files_s3_presigned_put_works_as_the_original_frontend_uses_it(api: Api, s3_endpoint: str) -> None:
    """GET /minio/presignedUrl?name= answers a URL the client PUTs the raw file to, as the original backend did."""
    alice = await api.new_user()
    resp = await api.get("/minio/presignedUrl", alice.token, name="avatar 1.png")
    assert resp.status == 200, resp.body
    url = resp.body
    assert isinstance(url, str) and url.startswith(f"{s3_endpoint}/{BUCKET}/avatar%201.png?")
    image = png_bytes(5, 5)
    async with aiohttp.ClientSession() as plain, plain.put(url, data=image) as put:
        assert put.status == 200, await put.text()
    assert await object_bytes(s3_endpoint, "avatar 1.png") == image


async def test_files_s3_presigned_url_refuses_bad_names_and_anonymous_callers(api: Api) -> None:
    alice = await api.new_user()
    for name in ("uploads/0123", "", "a\x01b", "x" * 1025):
        resp = await api.get("/minio/presignedUrl", alice.token, name=name)
        assert_error(resp.status, resp.body, 400)
    anonymous = await api.get("/minio/presignedUrl", name="a.png")
    assert_error(anonymous.status, anonymous.body, 401)


async def test_files_s3_sweep_removes_the_unused_object(api: Api, s3_endpoint: str, server: ChatsvcServer) -> None:
    alice = await api.new_user()
    resp = await upload_file(api, alice.token, png_bytes(), "a.png")
    name = resp.body["name"]
    assert await object_bytes(s3_endpoint, f"uploads/{name}") is not None
    assert await server.state.upload_sweeper.sweep(max_age=0) == [name]
    assert await object_bytes(s3_endpoint, f"uploads/{name}") is None
    async with aiohttp.ClientSession() as plain, plain.get(resp.body["url"], allow_redirects=False) as gone:
        assert gone.status == 404


async def test_files_s3_a_missing_bucket_is_created_at_start(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = "fresh-bucket"
    config = make_config(tmp_path, s3_url=s3_url(s3_endpoint, bucket))
    async with run_chatsvc(config) as running, aiohttp.ClientSession() as session:
        api = Api(running.base_url.rstrip("/"), session)
        alice = await api.new_user()
        resp = await upload_file(api, alice.token, b"hello\n", "hello.txt", "text/plain")
        assert resp.status == 201, resp.body
        assert await object_bytes(s3_endpoint, f"uploads/{resp.body['name']}", bucket) == b"hello\n"


async def test_files_s3_unreachable_storage_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    config = make_config(tmp_path, s3_url=s3_url(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StartupError, match=r"cannot use the S3 bucket chat-room at http://127\.0\.0\.1:"):
        async with run_chatsvc(config):
            pass
