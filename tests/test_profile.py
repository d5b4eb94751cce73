"""Profile changes and forgotten passwords, confirmed by verification codes.

No SMTP server is configured here, so chatsvc writes each code to the
``chatsvc.mail`` log, where these tests read it (tests/test_captcha.py covers
delivery by mail).
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
import socketio

from tests.helpers import Api, User, assert_error, send_payload


@pytest.fixture
def codes(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captured chatsvc.mail records, where codes go without SMTP."""
    caplog.set_level(logging.INFO, logger="chatsvc.mail")
    return caplog


def logged_code(caplog: pytest.LogCaptureFixture, address: str) -> str:
    """The latest code logged for an address."""
    for record in reversed(caplog.records):
        message = record.getMessage()
        if record.name == "chatsvc.mail" and f" {address} " in message:
            found = re.search(r"\b(\d{6})$", message)
            assert found, message
            return found.group(1)
    raise AssertionError(f"no code logged for {address}")


async def request_update_code(api: Api, user: User, codes: pytest.LogCaptureFixture) -> str:
    resp = await api.get("/user/update/captcha", user.token)
    assert resp.status == 200 and resp.body == "Verification code sent", resp.body
    return logged_code(codes, user.profile["email"])


async def request_password_code(api: Api, address: str, codes: pytest.LogCaptureFixture) -> str:
    resp = await api.get("/user/update_password/captcha", address=address)
    assert resp.status == 200, resp.body
    return logged_code(codes, address)


async def test_update_user_changes_profile_and_message_senders(api: Api, sockets, codes) -> None:
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    client = await sockets(alice.token)
    await client.join(alice, room)
    before = await client.call("sendMessage", send_payload(alice, room, "before"))
    assert before["sender"]["nickName"] == "Nick alice"

    code = await request_update_code(api, alice, codes)
    body = {"nickName": "Alice A.", "headPic": "http://pics/a.png", "email": "alice@new.example", "captcha": code}
    resp = await api.post("/user/update", body, alice.token)
    assert resp.status == 201, resp.body
    expected = {
        "id": alice.id,
        "username": "alice",
        "nickName": "Alice A.",
        "email": "alice@new.example",
        "headPic": "http://pics/a.png",
        "createTime": alice.profile["createTime"],
    }
    assert resp.body == expected
    assert (await api.get("/user/info", alice.token)).body == expected
    # Messages carry the new profile at once (the sender cache was dropped).
    after = await client.call("sendMessage", send_payload(alice, room, "after"))
    assert after["sender"] == {key: value for key, value in expected.items() if key != "email"}
    history = await api.get("/chat-history/list", bob.token, chatroomId=room)
    assert [m["sender"]["nickName"] for m in history.body] == ["Alice A.", "Alice A."]


async def test_update_user_refuses_a_nickname_that_imitates_the_system_user(api: Api, codes) -> None:
    mallory = await api.new_user("mallory")
    code = await request_update_code(api, mallory, codes)
    body = {"nickName": " System ", "email": mallory.profile["email"], "captcha": code}
    resp = await api.post("/user/update", body, mallory.token)
    assert_error(resp.status, resp.body, 400)
    assert "nickName is reserved" in resp.body["message"]
    assert (await api.get("/user/info", mallory.token)).body == mallory.profile
    # Refused before the code was looked at: it still works for an ordinary change.
    ordinary = await api.post("/user/update", {**body, "nickName": "Mallory"}, mallory.token)
    assert ordinary.status == 201 and ordinary.body["nickName"] == "Mallory", ordinary.body


async def test_update_user_optional_fields_keep_their_values(api: Api, codes) -> None:
    carol = await api.new_user("carol")
    code = await request_update_code(api, carol, codes)
    resp = await api.post("/user/update", {"email": "carol@example.com", "captcha": code}, carol.token)
    assert resp.status == 201, resp.body
    assert resp.body == carol.profile
    # nickName may not be blank (checked before any code is looked at).
    blank = await api.post(
        "/user/update", {"nickName": "  ", "email": "carol@example.com", "captcha": "000000"}, carol.token
    )
    assert_error(blank.status, blank.body, 400)


async def test_update_user_code_is_checked_against_current_email(api: Api, codes) -> None:
    alice = await api.new_user("alice")
    mallory = await api.new_user("mallory")
    # Mallory holds a code for her own mailbox and tries it on Alice's account (as with a stolen token).
    code = await request_update_code(api, mallory, codes)
    body = {"nickName": "owned", "email": mallory.profile["email"], "captcha": code}
    stolen = await api.post("/user/update", body, alice.token)
    assert_error(stolen.status, stolen.body, 400)
    assert (await api.get("/user/info", alice.token)).body == alice.profile
    # Mallory's own code was not touched.
    mine = await api.post(
        "/user/update", {"nickName": "M", "email": mallory.profile["email"], "captcha": code}, mallory.token
    )
    assert mine.status == 201 and mine.body["nickName"] == "M"


async def test_update_user_code_is_single_use_and_wrong_code_refused(api: Api, codes) -> None:
    dave = await api.new_user("dave")
    code = await request_update_code(api, dave, codes)
    assert (
        await api.post("/user/update", {"nickName": "D1", "email": "dave@example.com", "captcha": code}, dave.token)
    ).status == 201
    reused = await api.post(
        "/user/update", {"nickName": "D2", "email": "dave@example.com", "captcha": code}, dave.token
    )
    assert_error(reused.status, reused.body, 400)
    assert "expired" in reused.body["message"]

    # The rate limit allows one code a minute; a new account gets its own.
    erin = await api.new_user("erin")
    code = await request_update_code(api, erin, codes)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    refused = await api.post(
        "/user/update", {"nickName": "E", "email": "erin@example.com", "captcha": wrong}, erin.token
    )
    assert_error(refused.status, refused.body, 400)
    assert "incorrect" in refused.body["message"]
    assert (await api.get("/user/info", erin.token)).body["nickName"] == "Nick erin"
    assert (await api.get("/user/info", dave.token)).body["nickName"] == "D1"


async def test_update_user_validates_fields(api: Api, codes) -> None:
    fred = await api.new_user("fred")
    code = await request_update_code(api, fred, codes)
    good = {"nickName": "Fred", "headPic": "", "email": "fred@example.com", "captcha": code}
    bad_bodies = [
        {**good, "nickName": "n" * 51},
        {**good, "nickName": 7},
        {**good, "headPic": "h" * 1001},
        {**good, "email": "not-an-email"},
        {key: value for key, value in good.items() if key != "email"},
        {key: value for key, value in good.items() if key != "captcha"},
        {**good, "captcha": 123456},
    ]
    for body in bad_bodies:
        resp = await api.post("/user/update", body, fred.token)
        assert_error(resp.status, resp.body, 400)
    # Refused before the code was looked at: it still works, at the limits.
    at_limits = {**good, "nickName": "n" * 50, "headPic": "h" * 1000}
    resp = await api.post("/user/update", at_limits, fred.token)
    assert resp.status == 201 and resp.body["nickName"] == "n" * 50 and resp.body["headPic"] == "h" * 1000


async def test_update_user_requires_login(api: Api, codes) -> None:
    for method, path in (("GET", "/user/update/captcha"), ("POST", "/user/update")):
        resp = await api.request(method, path, json={} if method == "POST" else None)
        assert_error(resp.status, resp.body, 401)
        resp = await api.request(method, path, token="bad.token.here", json={} if method == "POST" else None)
        assert_error(resp.status, resp.body, 401)


async def test_update_password_resets_and_ends_old_tokens(api: Api, sockets, codes) -> None:
    gina = await api.new_user("gina")
    open_socket = await sockets(gina.token)
    gone = asyncio.Event()
    open_socket.sio.on("disconnect", lambda *_: gone.set())
    code = await request_password_code(api, "gina@example.com", codes)
    body = {"username": "gina", "email": "gina@example.com", "password": "new-secret", "captcha": code}
    # Public: a stale token in the header does not matter.
    resp = await api.request("POST", "/user/update_password", json=body, token="stale")
    assert resp.status == 201 and resp.body == "Password updated", resp.body
    # A socket opened with the old credentials is closed too.
    async with asyncio.timeout(5):
        await gone.wait()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets(gina.token)

    for path in ("/user/info", "/chatroom/list"):
        old = await api.get(path, gina.token)
        assert_error(old.status, old.body, 401)
    wrong = await api.post("/user/login", {"username": "gina", "password": "secret123"})
    assert_error(wrong.status, wrong.body, 400)
    fresh = await api.login("gina", "new-secret")
    assert (await api.get("/user/info", fresh.token)).body["username"] == "gina"

    reused = await api.post("/user/update_password", {**body, "password": "third-secret"})
    assert_error(reused.status, reused.body, 400)
    await api.login("gina", "new-secret")


async def test_update_password_unknown_user_or_other_email_one_message(api: Api, codes) -> None:
    await api.new_user("hank")
    await api.new_user("iris")
    code = await request_password_code(api, "hank@example.com", codes)
    base = {"email": "hank@example.com", "password": "new-secret", "captcha": code}

    unknown = await api.post("/user/update_password", {**base, "username": "nobody"})
    other = await api.post("/user/update_password", {**base, "username": "iris"})
    for resp in (unknown, other):
        assert_error(resp.status, resp.body, 400)
    assert unknown.body == other.body
    await api.login("iris")
    await api.login("hank")
    # Neither attempt used the code up.
    fixed = await api.post("/user/update_password", {**base, "username": "hank", "email": "HANK@example.com"})
    assert fixed.status == 201, fixed.body
    await api.login("hank", "new-secret")


async def test_update_password_wrong_or_missing_code(api: Api, codes) -> None:
    await api.new_user("jack")
    base = {"username": "jack", "email": "jack@example.com", "password": "new-secret"}
    never = await api.post("/user/update_password", {**base, "captcha": "123456"})
    assert_error(never.status, never.body, 400)
    assert "expired" in never.body["message"]
    missing = await api.post("/user/update_password", base)
    assert_error(missing.status, missing.body, 400)
    short = await api.post("/user/update_password", {**base, "password": "12345", "captcha": "123456"})
    assert_error(short.status, short.body, 400)

    code = await request_password_code(api, "jack@example.com", codes)
    # A register code is no password code.
    assert (await api.get("/user/register-captcha", address="jack@example.com")).status == 200
    register_code = logged_code(codes, "jack@example.com")
    if register_code != code:
        crossed = await api.post("/user/update_password", {**base, "captcha": register_code})
        assert_error(crossed.status, crossed.body, 400)
        assert "incorrect" in crossed.body["message"]
    else:
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        refused = await api.post("/user/update_password", {**base, "captcha": wrong})
        assert_error(refused.status, refused.body, 400)
    await api.login("jack")
