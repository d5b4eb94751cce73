"""Uploads on disk: POST /file/upload and GET /file/<name> against the real app on loopback (issue 16)."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from chatsvc.config import Config
from chatsvc.files import S3Location, parse_s3_url
from chatsvc.files.sniff import SNIFF_BYTES, sniff
from chatsvc.testing import ChatsvcServer, run_chatsvc
from tests.conftest import make_config
from tests.helpers import Api, assert_error, png_bytes, until, upload_file
from tests.test_profile import codes, request_update_code  # noqa: F401  (codes is a fixture)

LIMIT = 256 * 1024
PDF = b"%PDF-1.4\n" + b"1 0 obj << >> endobj\n" * 50 + b"%%EOF\n"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, max_upload=LIMIT)


def files_folder(server: ChatsvcServer) -> Path:
    return server.state.config.files_path


def stored_files(server: ChatsvcServer) -> list[str]:
    """The names of stored files and of spooled leftovers, as they are on disk."""
    folder = files_folder(server)
    return sorted(p.name for p in folder.iterdir() if p.is_file()) + sorted(
        p.name for p in (folder / ".incoming").iterdir()
    )


async def fetch(api: Api, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, CIMultiDict[str]]:
    async with api.session.get(url, headers=headers or {}, allow_redirects=False) as resp:
        return resp.status, await resp.read(), resp.headers.copy()


async def test_files_image_upload_answers_its_url_and_serves_the_same_bytes(api: Api, server: ChatsvcServer) -> None:
    alice = await api.new_user()
    image = png_bytes(30, 20)
    # The client's claim is ignored: the bytes say PNG.
    resp = await upload_file(api, alice.token, image, "holiday.png", "application/octet-stream")
    assert resp.status == 201, resp.body
    name = resp.body["name"]
    assert resp.body == {
        "url": f"{api.base_url}/file/{name}",
        "name": name,
        "size": len(image),
        "contentType": "image/png",
    }
    assert len(name) == 32 and int(name, 16) >= 0
    # No login needed to fetch: an <img> sends no Authorization header.
    status, body, headers = await fetch(api, resp.body["url"])
    assert status == 200 and body == image
    assert headers["Content-Type"] == "image/png"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Disposition" not in headers and "Content-Security-Policy" not in headers
    assert "max-age=31536000" in headers["Cache-Control"] and "immutable" in headers["Cache-Control"]
    assert headers["ETag"]


async def test_files_non_image_is_an_attachment_with_its_original_name_in_a_sandbox(api: Api) -> None:
    alice = await api.new_user()
    resp = await upload_file(api, alice.token, PDF, "C:\\Users\\me\\Rapport d'été.pdf", "image/png")
    assert resp.status == 201, resp.body
    assert resp.body["contentType"] == "application/pdf"
    status, body, headers = await fetch(api, resp.body["url"])
    assert status == 200 and body == PDF
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Security-Policy"] == "sandbox"
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"Rapport d'_t_.pdf\"; filename*=UTF-8''Rapport%20d%27%C3%A9t%C3%A9.pdf"
    )


async def test_files_html_claiming_to_be_an_image_is_stored_and_served_as_sandboxed_text(api: Api) -> None:
    alice = await api.new_user()
    page = b"<html><script>alert(document.cookie)</script></html>"
    resp = await upload_file(api, alice.token, page, "cat.png", "image/png")
    assert resp.status == 201, resp.body
    assert resp.body["contentType"] == "text/plain"
    status, body, headers = await fetch(api, resp.body["url"])
    assert status == 200 and body == page
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Security-Policy"] == "sandbox"
    assert headers["Content-Disposition"].startswith("attachment;")


async def test_files_unknown_binary_is_refused_by_its_magic_bytes(api: Api, server: ChatsvcServer) -> None:
    alice = await api.new_user()
    elf = b"\x7fELF\x02\x01\x01\x00" + os.urandom(2000)
    resp = await upload_file(api, alice.token, elf, "photo.jpg", "image/jpeg")
    assert_error(resp.status, resp.body, 415)
    assert stored_files(server) == []


@pytest.mark.parametrize("config_types", ["image/png,image/jpeg"])
async def test_files_only_the_configured_types_are_accepted(tmp_path: Path, config_types: str) -> None:
    config = make_config(tmp_path, upload_types=Config.from_env({"CHATSVC_UPLOAD_TYPES": config_types}).upload_types)
    async with run_chatsvc(config) as running, aiohttp.ClientSession() as session:
        api = Api(running.base_url.rstrip("/"), session)
        alice = await api.new_user()
        refused = await upload_file(api, alice.token, PDF, "doc.png", "image/png")
        assert_error(refused.status, refused.body, 415)
        assert "application/pdf is not accepted" in refused.body["message"]
        accepted = await upload_file(api, alice.token, png_bytes(), "a.png", "image/png")
        assert accepted.status == 201, accepted.body


async def test_files_sizes_up_to_the_limit_are_stored_and_one_byte_more_is_413(api: Api, server: ChatsvcServer) -> None:
    alice = await api.new_user()
    for size in (1, 100, 8191, 8192, 8193, 300_000 // 2, LIMIT):
        data = (b"x" * 63 + b"\n") * (size // 64) + b"y" * (size % 64)
        resp = await upload_file(api, alice.token, data, f"{size}.txt", "text/plain")
        assert resp.status == 201, (size, resp.body)
        assert resp.body["size"] == size
        status, body, _ = await fetch(api, resp.body["url"])
        assert status == 200 and body == data, size
    kept = stored_files(server)
    too_big = await upload_file(api, alice.token, b"z" * (LIMIT + 1), "big.txt", "text/plain")
    assert_error(too_big.status, too_big.body, 413)
    assert stored_files(server) == kept


async def test_files_over_the_limit_without_content_length_is_413_as_it_streams(
    api: Api, server: ChatsvcServer
) -> None:
    """A chunked body declares no length: the count of bytes as they arrive stops it."""
    alice = await api.new_user()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(LIMIT // 4096 + 2):
            yield b"q" * 4096

    form = aiohttp.FormData()
    form.add_field("file", chunks(), filename="endless.txt", content_type="text/plain")
    resp = await api.request("POST", "/file/upload", token=alice.token, data=form)
    assert_error(resp.status, resp.body, 413)
    assert stored_files(server) == []


async def test_files_upload_needs_login_and_one_file_part(api: Api) -> None:
    alice = await api.new_user()
    anonymous = await upload_file(api, None, png_bytes(), "a.png")
    assert_error(anonymous.status, anonymous.body, 401)
    as_json = await api.post("/file/upload", {"file": "x"}, alice.token)
    assert_error(as_json.status, as_json.body, 400)
    form = aiohttp.FormData()
    form.add_field("picture", png_bytes(), filename="a.png", content_type="image/png")
    wrong_name = await api.request("POST", "/file/upload", token=alice.token, data=form)
    assert_error(wrong_name.status, wrong_name.body, 400)
    form = aiohttp.FormData()
    form.add_field("file", png_bytes(), filename="a.png", content_type="image/png")
    form.add_field("file", png_bytes(), filename="b.png", content_type="image/png")
    two = await api.request("POST", "/file/upload", token=alice.token, data=form)
    assert_error(two.status, two.body, 400)
    empty = await upload_file(api, alice.token, b"", "empty.txt", "text/plain")
    assert_error(empty.status, empty.body, 400)


async def test_files_range_requests_answer_the_requested_bytes(api: Api) -> None:
    alice = await api.new_user()
    data = bytes(range(256)) * 8
    data = b"%PDF-" + data[5:]
    resp = await upload_file(api, alice.token, data, "r.pdf")
    url = resp.body["url"]
    status, body, headers = await fetch(api, url, {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, body, _ = await fetch(api, url, {"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, _, _ = await fetch(api, url, {"Range": f"bytes={len(data) + 5}-"})
    assert status == 416


async def test_files_etag_answers_304_to_a_client_that_has_the_file(api: Api) -> None:
    alice = await api.new_user()
    resp = await upload_file(api, alice.token, png_bytes(), "a.png")
    status, _, headers = await fetch(api, resp.body["url"])
    assert status == 200
    status, body, _ = await fetch(api, resp.body["url"], {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""
    status, _, _ = await fetch(api, resp.body["url"], {"If-None-Match": '"something-else"'})
    assert status == 200


async def test_files_unknown_names_are_404(api: Api) -> None:
    for name in ("0" * 32, "not-a-name", "..%2Fchat.db", "A" * 32):
        status, _, _ = await fetch(api, f"{api.base_url}/file/{name}")
        assert status == 404, name


async def test_files_folder_is_private_and_beside_the_database(api: Api, server: ChatsvcServer) -> None:
    alice = await api.new_user()
    await upload_file(api, alice.token, png_bytes(), "a.png")
    folder = files_folder(server)
    assert folder == server.state.config.db_path.parent / "files"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / ".incoming").stat().st_mode) == 0o700


async def test_files_presigned_url_needs_s3(api: Api) -> None:
    alice = await api.new_user()
    resp = await api.get("/minio/presignedUrl", alice.token, name="a.png")
    assert_error(resp.status, resp.body, 404)
    assert "CHATSVC_S3_URL" in resp.body["message"]


async def test_files_sweep_removes_only_uploads_nothing_refers_to(
    api: Api,
    server: ChatsvcServer,
    sockets,
    codes,  # noqa: F811
) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    room = await api.one_to_one(alice, bob)
    unused, sent_image, sent_file, avatar = [
        (await upload_file(api, alice.token, data, filename)).body
        for data, filename in ((png_bytes(), "u.png"), (png_bytes(), "i.png"), (PDF, "f.pdf"), (png_bytes(), "me.png"))
    ]
    client = await sockets(alice.token)
    await client.join(alice, room)
    for upload, kind in ((sent_image, "image"), (sent_file, "file")):
        ack = await client.call(
            "sendMessage", {"chatroomId": room, "message": {"type": kind, "content": upload["url"]}}
        )
        assert ack["content"] == upload["url"] and ack["type"] == (1 if kind == "image" else 2), ack
    code = await request_update_code(api, alice, codes)
    resp = await api.post(
        "/user/update", {"headPic": avatar["url"], "email": alice.profile["email"], "captcha": code}, alice.token
    )
    assert resp.status == 201 and resp.body["headPic"] == avatar["url"], resp.body

    assert await server.state.upload_sweeper.sweep(max_age=3600) == []
    assert await server.state.upload_sweeper.sweep(max_age=0) == [unused["name"]]
    status, _, _ = await fetch(api, unused["url"])
    assert status == 404
    assert unused["name"] not in stored_files(server)
    for kept in (sent_image, sent_file, avatar):
        status, _, _ = await fetch(api, kept["url"])
        assert status == 200, kept
    # Kept for good: a later sweep reads only newer messages, and still keeps them.
    assert await server.state.upload_sweeper.sweep(max_age=0) == []


async def test_files_periodic_sweep_removes_an_unused_upload(tmp_path: Path) -> None:
    config = make_config(tmp_path, upload_unused_ttl=1, upload_sweep_interval=1)
    async with run_chatsvc(config) as running, aiohttp.ClientSession() as session:
        api = Api(running.base_url.rstrip("/"), session)
        alice = await api.new_user()
        resp = await upload_file(api, alice.token, png_bytes(), "a.png")
        path = running.state.config.files_path / resp.body["name"]
        assert path.exists()
        await until(lambda: not path.exists(), "the sweep to remove the unused upload", timeout=10)
        status, _, _ = await fetch(api, resp.body["url"])
        assert status == 404


def test_files_settings_are_read_and_checked() -> None:
    config = Config.from_env(
        {
            "CHATSVC_MAX_UPLOAD": "2048",
            "CHATSVC_UPLOAD_TYPES": "image/png, application/pdf",
            "CHATSVC_FILES_DIR": "/srv/chat-files",
            "CHATSVC_S3_URL": "https://key:se%2Fcret@minio.example.com:9000/chat-room?region=eu-west-1",
            "CHATSVC_PUBLIC_URL": "https://chat.example.com/",
        }
    )
    assert config.max_upload == 2048
    assert config.upload_types == ("image/png", "application/pdf")
    assert config.files_path == Path("/srv/chat-files")
    assert config.public_url == "https://chat.example.com"
    location = parse_s3_url(config.s3_url or "")
    assert location == S3Location("https://minio.example.com:9000", "chat-room", "key", "se/cret", "eu-west-1")
    assert Config.from_env({"CHATSVC_DB": "var/chat.db"}).files_path == Path("var/files")
    for variable, value in (
        ("CHATSVC_UPLOAD_TYPES", "image/svg+xml"),
        ("CHATSVC_UPLOAD_TYPES", " , "),
        ("CHATSVC_MAX_UPLOAD", "0"),
        ("CHATSVC_S3_URL", "http://minio:9000/chat-room"),
        ("CHATSVC_S3_URL", "ftp://k:s@minio:9000/chat-room"),
        ("CHATSVC_S3_URL", "http://k:s@minio:9000/"),
        ("CHATSVC_S3_URL", "http://k:s@minio:99999/chat-room"),
        ("CHATSVC_S3_URL", "http://k:s@minio:9000/chat-room?bucket=x"),
        ("CHATSVC_PUBLIC_URL", "chat.example.com"),
    ):
        with pytest.raises(ValueError, match=variable):
            Config.from_env({variable: value})


def office_file(entries: list[tuple[str, bytes]], *, stored_first: bool = False) -> bytes:
    """A zip archive with these entries in this order, as office suites write them."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for index, (name, data) in enumerate(entries):
            method = zipfile.ZIP_STORED if stored_first and index == 0 else zipfile.ZIP_DEFLATED
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return out.getvalue()


CONTENT_TYPES_XML = (
    b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>'
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (png_bytes(), "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100), "image/jpeg"),
        (b"GIF89a" + bytes(100), "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(100), "image/webp"),
        (PDF, "application/pdf"),
        ("Grüße, 你好\n\ttabs and CRLF\r\n".encode(), "text/plain"),
        (office_file([("a.txt", b"hello")]), "application/zip"),
        (
            office_file(
                [("[Content_Types].xml", CONTENT_TYPES_XML), ("_rels/.rels", b"<r/>"), ("word/document.xml", b"<w/>")]
            ),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        (
            office_file([("[Content_Types].xml", CONTENT_TYPES_XML), ("xl/workbook.xml", b"<x/>")]),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
        (
            office_file(
                [("mimetype", b"application/vnd.oasis.opendocument.text"), ("content.xml", b"<o/>")], stored_first=True
            ),
            "application/vnd.oasis.opendocument.text",
        ),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "application/x-ole-storage"),
        (b"\x7fELF\x02\x01\x01" + bytes(100), None),
        (b"MZ\x90\x00" + bytes(100), None),
        (b"text with a \x00 NUL", None),
        (b"\xc3\x28 not UTF-8", None),
    ],
)
def test_files_type_is_recognised_from_the_first_bytes(data: bytes, expected: str | None) -> None:
    assert sniff(data[:SNIFF_BYTES], complete=len(data) <= SNIFF_BYTES) == expected


def test_files_text_cut_inside_a_character_by_the_sniff_window_is_still_text() -> None:
    text = ("é" * SNIFF_BYTES).encode()
    assert sniff(text[: SNIFF_BYTES - 1], complete=False) == "text/plain"
    assert sniff(text[: SNIFF_BYTES - 1], complete=True) is None


async def test_files_upload_url_starts_with_the_public_url_when_set(tmp_path: Path) -> None:
    config = make_config(tmp_path, public_url="https://chat.example.com")
    async with run_chatsvc(config) as running, aiohttp.ClientSession() as session:
        api = Api(running.base_url.rstrip("/"), session)
        alice = await api.new_user()
        resp = await upload_file(api, alice.token, png_bytes(), "a.png")
        assert resp.body["url"] == f"https://chat.example.com/file/{resp.body['name']}"


async def test_files_upload_reaches_the_disk_while_it_is_still_arriving(tmp_path: Path) -> None:
    """Streamed, not buffered: half the file is in the spool before the client has sent the other half."""
    config = make_config(tmp_path, max_upload=4 * 1024 * 1024)
    half = 1024 * 1024
    async with run_chatsvc(config) as running, aiohttp.ClientSession() as session:
        api = Api(running.base_url.rstrip("/"), session)
        alice = await api.new_user()
        spool = running.state.files.spool_folder

        def spooled_bytes() -> int:
            return sum(p.stat().st_size for p in spool.iterdir())

        async def body() -> AsyncIterator[bytes]:
            for _ in range(half // 4096):
                yield b"a" * 4095 + b"\n"
            await until(lambda: spooled_bytes() >= half // 2, "the first half to reach the spool file")
            for _ in range(half // 4096):
                yield b"b" * 4095 + b"\n"

        form = aiohttp.FormData(quote_fields=False)
        form.add_field("file", body(), filename="big.txt", content_type="text/plain")
        resp = await api.request("POST", "/file/upload", token=alice.token, data=form)
        assert resp.status == 201, resp.body
        assert resp.body["size"] == 2 * half
        assert spooled_bytes() == 0
