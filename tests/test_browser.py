"""The demo page in real headless Chromium: log in, chat live between two browsers, reload, page, reconnect.

Driven by Playwright for Python with the system's Chromium (Debian's ``chromium``;
``.ci/run`` installs it). Without a browser the tests skip, except under CI=true,
where they fail saying what is missing.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from chatsvc.config import Config
from tests.conftest import make_config
from tests.helpers import Api, User, png_bytes, send_payload, tool_missing
from tests.test_profile import codes, logged_code  # noqa: F401  (codes is a fixture)

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Route,
        WebSocketRoute,
        async_playwright,
        expect,
    )
except ImportError:  # reported by the browser fixture, like a missing Chromium
    async_playwright = None  # type: ignore[assignment]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "secret123"
# Reconnecting waits out a growing back-off, so give it longer than a plain assertion.
RECONNECT_TIMEOUT_MS = 20_000
SOCKET_URL = re.compile(r"/socket\.io/")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """As the shared fixture, without the send rate limit: one test stores 60 messages at once."""
    return make_config(tmp_path, rate_limit=0, presence_grace=0.5)


@pytest.fixture
async def browser(server: TestServer) -> AsyncIterator[Browser]:
    """Headless Chromium from the system, driven by Playwright; closed before the server stops."""
    if async_playwright is None:
        tool_missing(
            "browser test", "Playwright for Python is not installed (pip install playwright, or the test extras)"
        )
    executable = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if executable is None:
        tool_missing("browser test", "no chromium executable on PATH (Debian: apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


def png_data_url(width: int, height: int, rgb: tuple[int, int, int]) -> str:
    """A solid-colour PNG as a data: URL, small enough for a message."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


async def log_in(
    browser: Browser, base_url: str, user: User, prepare: Callable[[Page], Awaitable[None]] | None = None
) -> tuple[BrowserContext, Page]:
    """A fresh browser context logged in through the page's form, with its socket online."""
    context = await browser.new_context(viewport={"width": 1100, "height": 720})
    page = await context.new_page()
    if prepare is not None:
        await prepare(page)
    await page.goto(base_url + "/")
    form = page.locator("#auth-form")
    await form.locator("[name=username]").fill(user.username)
    await form.locator("[name=password]").fill(PASSWORD)
    await page.locator("#auth-submit").click()
    await expect(page.locator("#me-name")).to_have_text(f"{user.nick_name} (@{user.username})")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    return context, page


def collect_errors(errors: list[str]) -> Callable[[Page], Awaitable[None]]:
    """A page set-up that records its uncaught exceptions and console errors (CSP violations among them)."""

    async def prepare(page: Page) -> None:
        page.on("pageerror", lambda exc: errors.append(f"exception: {exc}"))
        page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)

    return prepare


async def open_room(page: Page, room_id: int, name: str) -> None:
    await page.locator(f'#rooms [data-room-id="{room_id}"]').click()
    await expect(page.locator("#room-name")).to_have_text(name)


async def send(page: Page, content: str, kind: str = "text") -> None:
    form = page.locator("#send-form")
    await form.locator("[name=type]").select_option(kind)
    await form.locator("[name=content]").fill(content)
    await form.locator("[name=content]").press("Enter")


def messages(page: Page) -> Any:
    return page.locator("#message-list .msg:not(.pending)")


async def test_browser_two_users_chat_live_and_history_survives_reload(
    browser: Browser, api: Api, base_url: str
) -> None:
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    errors: list[str] = []
    _, page_a = await log_in(browser, base_url, alice, collect_errors(errors))
    _, page_b = await log_in(browser, base_url, bob, collect_errors(errors))
    # Alice starts the chat by Bob's username; one-to-one rooms are named after the other person.
    await page_a.locator("#chat-form [name=username]").fill("bob")
    await page_a.locator("#chat-form [name=username]").press("Enter")
    await expect(page_a.locator("#room-name")).to_have_text(bob.nick_name)
    await open_room(page_b, room, alice.nick_name)

    await send(page_a, "Hello Bob, this arrives live")
    live = messages(page_b).filter(has_text="Hello Bob, this arrives live")
    await expect(live).to_have_count(1)
    await expect(live.locator(".who")).to_have_text(alice.nick_name)
    await expect(live.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-.+Z$"))
    await expect(page_a.locator(".msg.mine")).to_have_count(1)

    hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> <b>bold?</b>'
    await send(page_b, hostile)
    await expect(messages(page_a).last.locator(".text")).to_have_text(hostile)
    assert await page_a.evaluate("window.__pwned") is None
    assert await page_a.locator("#message-list script, #message-list b, #message-list img").count() == 0

    picture = png_data_url(96, 64, (47, 111, 223))
    await send(page_a, picture, "image")
    image = messages(page_b).last.locator("img.image")
    await expect(image).to_have_attribute("src", picture)
    assert await image.evaluate("img => img.decode().then(() => img.naturalWidth)") == 96
    await send(page_b, "https://example.com/files/report.pdf", "file")
    link = messages(page_a).last.locator("a.file")
    await expect(link).to_have_attribute("href", "https://example.com/files/report.pdf")
    await expect(link).to_contain_text("report.pdf")
    await send(page_b, "javascript:window.__pwned = 3", "file")
    await expect(messages(page_a).last.locator(".text")).to_have_text("javascript:window.__pwned = 3")
    assert await page_a.locator('#message-list a[href^="javascript"]').count() == 0
    await send(page_a, "See you after the reload")
    await expect(messages(page_b)).to_have_count(6)

    # A reload keeps the login (token in localStorage) and the open room (in the URL), and lists the history.
    await page_a.reload()
    await expect(page_a.locator("#room-name")).to_have_text(bob.nick_name)
    await expect(messages(page_a)).to_have_count(6)
    await expect(messages(page_a).locator(".text, .image, .file")).to_have_text(
        [
            "Hello Bob, this arrives live",
            hostile,
            "",
            "report.pdf",
            "javascript:window.__pwned = 3",
            "See you after the reload",
        ]
    )
    await expect(messages(page_a).first.locator(".who")).to_have_text(alice.nick_name)
    await expect(page_a.locator("#conn")).to_have_attribute("data-state", "online")
    await send(page_b, "And live again after it")
    await expect(messages(page_a).last.locator(".text")).to_have_text("And live again after it")
    assert await page_a.evaluate("window.__pwned") is None
    assert errors == []

    ARTIFACTS.mkdir(exist_ok=True)
    await page_a.screenshot(path=ARTIFACTS / "chat.png")


async def choose_file(page: Page, opener: str, name: str, mime: str, data: bytes) -> None:
    """Click a button that opens the file chooser, and pick a file in it as a user would."""
    async with page.expect_file_chooser() as chooser:
        await page.locator(opener).click()
    await (await chooser.value).set_files({"name": name, "mimeType": mime, "buffer": data})


async def test_browser_attach_sends_a_picture_and_a_file_and_the_avatar_picker_sets_the_picture(
    browser: Browser,
    api: Api,
    base_url: str,
    codes: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    errors: list[str] = []
    _, page_a = await log_in(browser, base_url, alice, collect_errors(errors))
    _, page_b = await log_in(browser, base_url, bob, collect_errors(errors))
    await open_room(page_a, room, bob.nick_name)
    await open_room(page_b, room, alice.nick_name)

    # The upload is held until the test has seen the progress bar.
    release = asyncio.Event()

    async def hold(route: Route) -> None:
        await release.wait()
        await route.continue_()

    await page_a.route("**/file/upload", hold)
    await choose_file(page_a, "#attach", "sunset.png", "image/png", png_bytes(40, 30, (230, 120, 30)))
    preview = page_a.locator("#attach-preview")
    await expect(preview).to_have_attribute("src", re.compile(r"^blob:"))
    assert await preview.evaluate("img => img.decode().then(() => img.naturalWidth)") == 40
    await expect(page_a.locator("#attach-name")).to_contain_text("sunset.png")
    await page_a.locator("#attach-send").click()
    await expect(page_a.locator("#attach-progress")).to_be_visible()
    release.set()
    await expect(page_a.locator("#attachment")).to_be_hidden()
    image = messages(page_b).last.locator("img.image")
    await expect(image).to_have_attribute("src", re.compile(rf"^{re.escape(base_url)}/file/[0-9a-f]{{32}}$"))
    # Shown inline: the browser fetched and decoded the stored picture.
    assert await image.evaluate("img => img.decode().then(() => img.naturalWidth)") == 40
    await page_a.unroute("**/file/upload")

    pdf = b"%PDF-1.4\n" + b"% minutes of the meeting\n" * 40 + b"%%EOF\n"
    await choose_file(page_a, "#attach", "minutes.pdf", "application/pdf", pdf)
    await expect(page_a.locator("#attach-preview")).to_be_hidden()
    await page_a.locator("#attach-send").click()
    link = messages(page_b).last.locator("a.file")
    await expect(link).to_have_text("minutes.pdf")
    href = await link.get_attribute("href")
    assert href is not None and re.fullmatch(rf"{re.escape(base_url)}/file/[0-9a-f]{{32}}#minutes\.pdf", href), href
    async with api.session.get(href.split("#")[0]) as download:
        assert download.status == 200 and await download.read() == pdf
        assert download.headers["Content-Disposition"].startswith('attachment; filename="minutes.pdf"')
    # Both stay after a reload: they are ordinary image and file messages in the history.
    await page_b.reload()
    await expect(messages(page_b).locator("img.image, a.file")).to_have_count(2)

    await choose_file(page_a, "#avatar-pick", "me.png", "image/png", png_bytes(16, 16, (20, 160, 90)))
    await expect(page_a.locator("#avatar-save")).to_be_enabled()
    await page_a.locator("#avatar-form [name=captcha]").fill(logged_code(codes, alice.profile["email"]))
    await page_a.locator("#avatar-save").click()
    await expect(page_a.locator("#avatar-form")).to_be_hidden()
    avatar = page_a.locator("#me-avatar")
    await expect(avatar).to_have_attribute("src", re.compile(rf"^{re.escape(base_url)}/file/[0-9a-f]{{32}}$"))
    assert await avatar.evaluate("img => img.decode().then(() => img.naturalWidth)") == 16
    assert (await api.get("/user/info", alice.token)).body["headPic"] == await avatar.get_attribute("src")
    assert errors == []


async def test_browser_load_older_pages_back_through_history(
    browser: Browser, api: Api, base_url: str, sockets
) -> None:
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    client = await sockets(bob.token)
    for n in range(1, 61):
        ack = await client.call("sendMessage", send_payload(None, room, f"old {n}"))
        assert ack["content"] == f"old {n}", ack
    _, page = await log_in(browser, base_url, alice)
    await open_room(page, room, bob.nick_name)

    await expect(messages(page)).to_have_count(50)
    await expect(messages(page).first.locator(".text")).to_have_text("old 11")
    await expect(messages(page).last.locator(".text")).to_have_text("old 60")
    await page.locator("#older").click()
    await expect(messages(page)).to_have_count(60)
    await expect(messages(page).first.locator(".text")).to_have_text("old 1")
    await expect(page.locator("#older")).to_be_hidden()


async def test_browser_reconnect_catches_up_on_missed_messages(
    browser: Browser, api: Api, base_url: str, sockets
) -> None:
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    # Alice's socket goes through a relay the test controls: it can cut the line and refuse reconnects.
    relays: list[tuple[WebSocketRoute, WebSocketRoute]] = []
    line_up = True

    def relay(ws: WebSocketRoute) -> Any:
        if not line_up:
            return ws.close()
        relays.append((ws, ws.connect_to_server()))
        return None

    _, page = await log_in(browser, base_url, alice, lambda page: page.route_web_socket(SOCKET_URL, relay))
    await open_room(page, room, bob.nick_name)
    bob_socket = await sockets(bob.token)
    await bob_socket.join(bob, room)
    await bob_socket.call("sendMessage", send_payload(None, room, "before"))
    await expect(messages(page)).to_have_count(1)

    line_up = False
    for to_page, to_server in relays:
        await to_server.close()
        await to_page.close()
    await expect(page.locator("#conn")).not_to_have_attribute("data-state", "online")
    for text in ("missed 1", "missed 2"):
        await bob_socket.call("sendMessage", send_payload(None, room, text))
    await expect(messages(page)).to_have_count(1)

    line_up = True
    await expect(page.locator("#conn")).to_have_attribute("data-state", "online", timeout=RECONNECT_TIMEOUT_MS)
    await expect(messages(page).locator(".text")).to_have_text(["before", "missed 1", "missed 2"])
    await send(page, "back again")
    await expect(messages(page).locator(".text")).to_have_text(["before", "missed 1", "missed 2", "back again"])
    await bob_socket.next_message(lambda m: m.get("message", {}).get("content") == "back again")


async def test_browser_a_message_that_cannot_be_rendered_shows_as_text_and_the_rest_still_render(
    browser: Browser, api: Api, base_url: str, sockets
) -> None:
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    bob_socket = await sockets(bob.token)
    broken = "http://x/%E0%A4%A"  # a file URL whose percent-encoding does not decode

    async def bob_sends(content: str, kind: str = "text") -> None:
        ack = await bob_socket.call("sendMessage", send_payload(None, room, content, kind=kind))
        assert ack["content"] == content, ack

    await bob_sends(broken, "file")
    await bob_sends("still readable")
    errors: list[str] = []
    _, page = await log_in(browser, base_url, alice, collect_errors(errors))
    # From the history.
    await open_room(page, room, bob.nick_name)
    await expect(messages(page).locator(".text")).to_have_text([broken, "still readable"])
    # And live, while the room is open.
    also_broken = "https://example.com/files/report%ZZ.pdf"
    await bob_sends(also_broken, "file")
    await bob_sends("https://example.com/files/notes%20v2.txt", "file")
    await bob_sends("and after it")
    await expect(messages(page)).to_have_count(5)
    await expect(messages(page).locator(".text, .file")).to_have_text(
        [broken, "still readable", also_broken, "notes v2.txt", "and after it"]
    )
    assert errors == []


async def test_browser_register_befriend_by_username_chat_and_build_a_group(
    browser: Browser, api: Api, base_url: str
) -> None:
    dave = await api.new_user("dave")
    erin = await api.new_user("erin")
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(base_url + "/")
    await page.locator("#tab-register").click()
    form = page.locator("#auth-form")
    await form.locator("[name=username]").fill("carol")
    await form.locator("[name=nickName]").fill("Carol C.")
    await form.locator("[name=email]").fill("carol@example.com")
    await form.locator("[name=password]").fill(PASSWORD)
    await page.locator("#auth-submit").click()
    await expect(page.locator("#me-name")).to_have_text("Carol C. (@carol)")

    await page.locator("#friend-form [name=username]").fill("dave")
    await page.locator("#friend-form [name=username]").press("Enter")
    await expect(page.locator("#requests")).to_contain_text("Waiting for @dave")

    _, page_d = await log_in(browser, base_url, dave)
    request = page_d.locator("#requests .request")
    await expect(request).to_contain_text("Carol C. (@carol) asks to be friends")
    await request.get_by_role("button", name="Agree").click()
    friend = page_d.locator('#friends [data-username="carol"]')
    await friend.get_by_role("button", name="Chat").click()
    await expect(page_d.locator("#room-name")).to_have_text("Carol C.")
    await send(page_d, "Thanks for the request!")

    await page.locator("#refresh").click()
    await page.locator('#friends [data-username="dave"]').get_by_role("button", name="Chat").click()
    await expect(page.locator("#room-name")).to_have_text(dave.nick_name)
    await expect(messages(page).locator(".text")).to_have_text(["Thanks for the request!"])

    await page.locator("#group-form [name=name]").fill("Weekend plans")
    await page.locator("#group-form [name=name]").press("Enter")
    await expect(page.locator("#room-name")).to_have_text("Weekend plans")
    await expect(page.locator("#room-members")).to_have_text("1 member: Carol C.")
    await page.locator("#member-form [name=username]").fill("dave")
    await page.locator("#member-form [name=username]").press("Enter")
    await expect(page.locator("#room-members")).to_have_text(f"2 members: {dave.nick_name}, Carol C.")
    await page.locator("#member-form [name=username]").fill("erin")
    await page.locator("#member-form [name=username]").press("Enter")
    await expect(page.locator("#room-members")).to_have_text(f"3 members: {dave.nick_name}, {erin.nick_name}, Carol C.")
    await send(page, "Group is ready")
    await expect(messages(page).locator(".text")).to_have_text(["Group is ready"])
    rooms = (await api.get("/chatroom/list", erin.token)).body
    assert [(r["name"], r["userCount"]) for r in rooms] == [("Weekend plans", 3)]


async def test_browser_message_type_goes_back_to_text_after_a_send_and_on_a_room_change(
    browser: Browser, api: Api, base_url: str
) -> None:
    alice, bob, carol = await api.new_user("alice"), await api.new_user("bob"), await api.new_user("carol")
    with_bob, with_carol = await api.one_to_one(alice, bob), await api.one_to_one(alice, carol)
    _, page = await log_in(browser, base_url, alice)
    await open_room(page, with_bob, bob.nick_name)
    kind = page.locator("#send-form [name=type]")

    await send(page, png_data_url(8, 8, (200, 40, 40)), "image")
    await expect(messages(page).locator("img.image")).to_have_count(1)
    await expect(kind).to_have_value("text")
    # Typed without touching the selector: it goes out as text, not as a broken image.
    await page.locator("#send-form [name=content]").fill("plain words")
    await page.locator("#send-form [name=content]").press("Enter")
    await expect(messages(page).last.locator(".text")).to_have_text("plain words")

    await kind.select_option("file")
    await open_room(page, with_carol, carol.nick_name)
    await expect(kind).to_have_value("text")


async def test_browser_room_list_refreshes_when_the_page_is_shown_again(
    browser: Browser, api: Api, base_url: str
) -> None:
    alice, bob = await api.new_user("alice"), await api.new_user("bob")
    _, page = await log_in(browser, base_url, bob)
    await expect(page.locator("#rooms")).to_have_text("No rooms yet.")
    group = (await api.get("/chatroom/create-group", alice.token, name="Added meanwhile")).body
    assert (await api.get(f"/chatroom/join/{group}", alice.token, joinUsername="bob")).status == 200
    # What the browser fires when its user comes back to the window or tab.
    await page.evaluate("window.dispatchEvent(new Event('focus'))")
    await expect(page.locator(f'#rooms [data-room-id="{group}"]')).to_contain_text("Added meanwhile")


async def test_browser_online_dots_and_rooms_appear_and_go_live(browser: Browser, api: Api, base_url: str) -> None:
    alice, bob = await api.new_user("alice"), await api.new_user("bob")
    assert (await api.post("/friendship/add", {"username": "bob"}, alice.token)).status == 201
    assert (await api.get(f"/friendship/agree/{alice.id}", bob.token)).status == 200
    _, page = await log_in(browser, base_url, bob)
    dot = page.locator(f'#friends li[data-user-id="{alice.id}"] .presence')
    await expect(dot).to_have_attribute("data-online", "false")
    alice_context, _ = await log_in(browser, base_url, alice)
    await expect(dot).to_have_attribute("data-online", "true")

    group = (await api.get("/chatroom/create-group", alice.token, name="Appears live")).body
    assert (await api.get(f"/chatroom/join/{group}", alice.token, joinUsername="bob")).status == 200
    await expect(page.locator(f'#rooms [data-room-id="{group}"]')).to_contain_text("Appears live")
    assert (await api.get(f"/chatroom/quit/{group}", alice.token, quitUserId=bob.id)).status == 200
    await expect(page.locator(f'#rooms [data-room-id="{group}"]')).to_have_count(0)

    await alice_context.close()
    await expect(dot).to_have_attribute("data-online", "false", timeout=RECONNECT_TIMEOUT_MS)


VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}

# Every visible control of the page must show its whole text (placeholder, label or chosen option), stay
# inside its parent's box, and not lie under another element; the page itself must not scroll.
LAYOUT_PROBLEMS = """
() => {
  const problems = [];
  const root = document.documentElement;
  if (root.scrollHeight > root.clientHeight) problems.push(`page scrolls down: ${root.scrollHeight}px`);
  if (root.scrollWidth > root.clientWidth) problems.push(`page scrolls sideways: ${root.scrollWidth}px`);
  const measure = document.createElement("canvas").getContext("2d");
  for (const el of document.querySelectorAll("input, button, select")) {
    if (!el.checkVisibility()) continue;
    const name = el.id || `${el.closest("[id]").id} ${el.name || el.textContent.trim()}`;
    const style = getComputedStyle(el);
    measure.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const room = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    // A select's arrow takes about 20px of its content box.
    const text = el.tagName === "INPUT" ? el.value || el.placeholder
      : el.tagName === "SELECT" ? el.selectedOptions[0].text : "";
    const needed = measure.measureText(text).width + (el.tagName === "SELECT" ? 20 : 0);
    if (text && needed > room + 0.5) problems.push(`${name}: "${text}" needs ${needed}px, has ${room}px`);
    if (el.scrollWidth > el.clientWidth) problems.push(`${name}: content overflows`);
    const box = el.getBoundingClientRect();
    const parent = el.parentElement.getBoundingClientRect();
    if (box.left < parent.left - 0.5 || box.right > parent.right + 0.5) problems.push(`${name}: outside its parent`);
    el.scrollIntoView({ block: "nearest" });
    const at = el.getBoundingClientRect();
    const hit = document.elementFromPoint(at.left + at.width / 2, at.top + at.height / 2);
    if (!hit || !(hit === el || el.contains(hit))) {
      problems.push(`${name}: covered by ${hit && hit.outerHTML.slice(0, 60)}`);
    }
  }
  return problems;
}
"""

SIDEBAR_FORMS = """
() => ["group-form", "chat-form", "friend-form"].map((id) => {
  const form = document.getElementById(id).getBoundingClientRect();
  const input = document.querySelector(`#${id} input`).getBoundingClientRect();
  const button = document.querySelector(`#${id} button`).getBoundingClientRect();
  return {
    left: form.left, width: form.width, top: form.top, bottom: form.bottom, input: input.width, button: button.width,
  };
})
"""


async def assert_sidebar_forms_line_up(page: Page) -> None:
    group, chat, friend = await page.evaluate(SIDEBAR_FORMS)
    for form in (chat, friend):
        assert (form["left"], form["width"], form["input"], form["button"]) == (
            group["left"],
            group["width"],
            group["input"],
            group["button"],
        ), (group, form)
    assert chat["top"] - group["bottom"] >= 6, "the sidebar forms touch"


@pytest.mark.parametrize("device", VIEWPORTS)
async def test_browser_layout_fits_at_desktop_and_phone_width(
    browser: Browser, api: Api, base_url: str, device: str
) -> None:
    alice, bob = await api.new_user("alice"), await api.new_user("bob")
    await api.post("/friendship/add", {"username": "bob", "reason": ""}, alice.token)
    assert (await api.get(f"/friendship/agree/{alice.id}", bob.token)).status == 200
    group = (await api.get("/chatroom/create-group", alice.token, name="Weekend plans")).body
    context = await browser.new_context(viewport=VIEWPORTS[device])  # type: ignore[arg-type]
    page = await context.new_page()
    ARTIFACTS.mkdir(exist_ok=True)

    await page.goto(base_url + "/")
    await expect(page.locator("#auth-form")).to_be_visible()
    await page.screenshot(path=ARTIFACTS / f"login-{device}.png")
    assert await page.evaluate(LAYOUT_PROBLEMS) == []
    await page.locator("#tab-register").click()
    assert await page.evaluate(LAYOUT_PROBLEMS) == []
    await page.locator("#tab-login").click()

    await page.locator("#auth-form [name=username]").fill("alice")
    await page.locator("#auth-form [name=password]").fill(PASSWORD)
    await page.locator("#auth-submit").click()
    await expect(page.locator('#friends [data-username="bob"]')).to_be_visible()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    await assert_sidebar_forms_line_up(page)
    assert await page.evaluate(LAYOUT_PROBLEMS) == []
    if device == "phone":
        await page.screenshot(path=ARTIFACTS / f"rooms-{device}.png")

    await open_room(page, group, "Weekend plans")
    await expect(page.locator("#member-form")).to_be_visible()
    await send(page, "Who brings the tent?")
    await expect(messages(page)).to_have_count(1)
    await page.screenshot(path=ARTIFACTS / f"chat-{device}.png")
    assert await page.evaluate(LAYOUT_PROBLEMS) == []
    if device == "phone":
        # One pane at a time: the room hides the sidebar, and its back button brings it back.
        await expect(page.locator("#friends")).to_be_hidden()
        await page.locator("#back").click()
        await expect(page.locator("#friends")).to_be_visible()
        await expect(page.locator("#room")).to_be_hidden()
        assert await page.evaluate(LAYOUT_PROBLEMS) == []
    else:
        await expect(page.locator("#back")).to_be_hidden()
        await assert_sidebar_forms_line_up(page)

    # The search with its results, and an open edit of a message, fit as well.
    await page.locator("#search-form [name=q]").fill("tent")
    await page.locator("#search-form [name=q]").press("Enter")
    await expect(page.locator("#search-results .search-hit")).to_have_count(1)
    assert await page.evaluate(LAYOUT_PROBLEMS) == []
    await page.locator("#search-results .search-hit").click()
    await expect(page.locator("#room-name")).to_have_text("Weekend plans")
    await messages(page).get_by_role("button", name="Edit").click()
    await expect(page.locator("#message-list .edit-input")).to_be_focused()
    assert await page.evaluate(LAYOUT_PROBLEMS) == []
    await context.close()


async def test_browser_unread_counts_previews_and_typing_live_between_two_users(
    browser: Browser, api: Api, base_url: str
) -> None:
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    other = (await api.get("/chatroom/create-group", alice.token, name="Elsewhere")).body
    errors: list[str] = []
    _, page_a = await log_in(browser, base_url, alice, collect_errors(errors))
    _, page_b = await log_in(browser, base_url, bob, collect_errors(errors))
    await open_room(page_a, other, "Elsewhere")
    await open_room(page_b, room, alice.nick_name)
    link = page_a.locator(f'#rooms [data-room-id="{room}"]')

    # Bob writes while Alice looks at another room: her list counts it and shows it, live.
    await send(page_b, "First, unread")
    await send(page_b, "Second, unread")
    await expect(link.locator(".unread")).to_have_text("2")
    await expect(link.locator(".preview")).to_have_text(f"{bob.nick_name}: Second, unread")

    # Opening the room reads it: the badge goes, and so it stays after a reload (the server has the position).
    await open_room(page_a, room, bob.nick_name)
    await expect(link.locator(".unread")).to_have_count(0)
    await page_a.reload()
    await expect(page_a.locator("#room-name")).to_have_text(bob.nick_name)
    await expect(messages(page_a)).to_have_count(2)
    await expect(link.locator(".unread")).to_have_count(0)
    listed = await api.get("/chatroom/list", alice.token)
    assert next(item for item in listed.body if item["id"] == room)["unreadCount"] == 0

    # Typing shows in the open room on the other side, and goes when the message arrives.
    await page_a.locator("#send-form [name=content]").press_sequentially("Hi Bo")
    await expect(page_b.locator("#typing")).to_have_text(f"{alice.nick_name} is typing…")
    await page_a.locator("#send-form [name=content]").press("Enter")
    await expect(messages(page_b).last.locator(".text")).to_have_text("Hi Bo")
    await expect(page_b.locator("#typing")).to_be_hidden()
    await expect(page_b.locator(f'#rooms [data-room-id="{room}"] .preview')).to_have_text(f"{alice.nick_name}: Hi Bo")
    assert errors == []


async def test_browser_edit_delete_and_search_live_between_two_users(
    browser: Browser, api: Api, base_url: str, db_rows
) -> None:
    alice, bob = await api.new_user("alice"), await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    group = await api.group(alice, bob, name="Camping")
    errors: list[str] = []
    _, page_a = await log_in(browser, base_url, alice, collect_errors(errors))
    _, page_b = await log_in(browser, base_url, bob, collect_errors(errors))
    await open_room(page_a, room, bob.nick_name)
    await open_room(page_b, room, alice.nick_name)
    await send(page_a, "See you at 5")
    await send(page_a, "Wrong chat, sorry")
    await expect(messages(page_b).locator(".text")).to_have_text(["See you at 5", "Wrong chat, sorry"])
    first, second = [int(i) for i in await messages(page_a).evaluate_all("items => items.map((li) => li.dataset.id)")]
    mine = page_a.locator(f'#message-list [data-id="{first}"]')
    seen = page_b.locator(f'#message-list [data-id="{first}"]')
    # Only the sender has the actions.
    await expect(mine.get_by_role("button", name="Edit")).to_be_visible()
    await expect(page_b.locator("#message-list .actions")).to_have_count(0)

    # An inline edit: Escape cancels it, Enter saves it, and the other side sees the new text and "(edited)" live.
    await mine.get_by_role("button", name="Edit").click()
    editor = mine.locator(".edit-input")
    await expect(editor).to_be_focused()
    await expect(editor).to_have_value("See you at 5")
    await editor.fill("never saved")
    await editor.press("Escape")
    await expect(editor).to_have_count(0)
    await expect(mine.locator(".text")).to_have_text("See you at 5")
    await mine.get_by_role("button", name="Edit").click()
    await editor.fill("See you at 6")
    await editor.press("Enter")
    await expect(seen.locator(".text")).to_have_text("See you at 6")
    await expect(seen.locator(".edited")).to_have_text("(edited)")
    await expect(mine.locator(".text")).to_have_text("See you at 6")
    await expect(mine.locator(".edited")).to_have_text("(edited)")
    stored = {m["id"]: m for m in await api.history(bob, room)}
    assert stored[first]["content"] == "See you at 6" and stored[first]["editedAt"] is not None

    # Deleting asks first; then everyone sees "message deleted" in its place, and the room list's preview says so.
    asked: list[str] = []

    async def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page_a.once("dialog", accept)
    await page_a.locator(f'#message-list [data-id="{second}"]').get_by_role("button", name="Delete").click()
    gone = page_b.locator(f'#message-list [data-id="{second}"]')
    await expect(gone.locator(".text")).to_have_text("message deleted")
    await expect(page_b.locator("#message-list")).not_to_contain_text("Wrong chat, sorry")
    await expect(page_a.locator(f'#message-list [data-id="{second}"] .text')).to_have_text("message deleted")
    await expect(page_b.locator(f'#rooms [data-room-id="{room}"] .preview')).to_have_text(
        f"{alice.nick_name}: message deleted"
    )
    assert asked == ["Delete this message for everyone?"]
    assert {m["id"]: m for m in await api.history(bob, room)}[second]["deleted"] is True
    # Both stay so after a reload: from the history's editedAt and deleted.
    await page_b.reload()
    await expect(seen.locator(".edited")).to_have_text("(edited)")
    await expect(gone.locator(".text")).to_have_text("message deleted")

    # A refused edit says why, and stays open to cancel.
    db_rows("UPDATE chat_history SET create_time = ? WHERE id = ?", ("2000-01-01T00:00:00.000Z", first))
    await mine.get_by_role("button", name="Edit").click()
    await editor.fill("too late")
    await editor.press("Enter")
    await expect(page_a.locator("#chat-error")).to_have_text("This message is too old to edit")
    await expect(editor).to_have_value("too late")
    await editor.press("Escape")
    await expect(mine.locator(".text")).to_have_text("See you at 6")

    # Search: Bob writes in the group; Alice finds it from another room (any case) and opening the hit opens its room.
    await open_room(page_b, group, "Camping")
    await send(page_b, "The tent is in the garage")
    await expect(messages(page_b)).to_have_count(1)
    search_form = page_a.locator("#search-form")
    await search_form.locator("[name=scope]").select_option("room")
    await search_form.locator("[name=q]").fill("TENT")
    await search_form.locator("[name=q]").press("Enter")
    await expect(page_a.locator("#search-results")).to_have_text("Nothing found for “TENT”.")
    await search_form.locator("[name=scope]").select_option("all")
    await search_form.locator("[name=q]").press("Enter")
    hit = page_a.locator("#search-results .search-hit")
    await expect(hit).to_have_count(1)
    await expect(hit.locator(".who")).to_have_text(bob.nick_name)
    await expect(hit.locator(".hit-room")).to_have_text("Camping")
    await expect(hit.locator(".text")).to_have_text("The tent is in the garage")
    await expect(hit.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-.+Z$"))
    await hit.click()
    await expect(page_a.locator("#room-name")).to_have_text("Camping")
    await expect(page_a.locator("#message-list .msg.found .text")).to_have_text("The tent is in the garage")
    # Deleted messages are not found; edited ones by their new text.
    await search_form.locator("[name=q]").fill("wrong chat")
    await search_form.locator("[name=q]").press("Enter")
    await expect(page_a.locator("#search-results")).to_have_text("Nothing found for “wrong chat”.")
    await search_form.locator("[name=q]").fill("at 6")
    await search_form.locator("[name=q]").press("Enter")
    await expect(page_a.locator("#search-results .search-hit .text")).to_have_text(["See you at 6"])
    ARTIFACTS.mkdir(exist_ok=True)
    await page_a.screenshot(path=ARTIFACTS / "edit-delete-search.png")
    await page_a.locator("#search-clear").click()
    await expect(page_a.locator("#search")).to_be_hidden()
    assert errors == []
