"""Verification codes by mail: a real SMTP sink on loopback receives them, register needs them.

The module's ``config`` points chatsvc at an aiosmtpd server that requires no
TLS and records each delivered mail with the login the client used.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from chatsvc.config import Config
from chatsvc.mail import SmtpTarget, parse_smtp_url
from tests.helpers import Api, assert_error, serve

MAIL_TIMEOUT = 5.0
SMTP_USER = "mailer"
SMTP_PASSWORD = "p@ss word/1"
MAIL_FROM = "chat@example.org"


@dataclass
class Mail:
    """One delivered mail: envelope recipients, parsed message, and the SMTP login used."""

    rcpt_tos: list[str]
    message: EmailMessage
    login: bytes | None

    @property
    def code(self) -> str:
        """The six-digit code in the body."""
        body = self.message.get_body(("plain",))
        assert body is not None
        found = re.search(r"\b(\d{6})\b", body.get_content())
        assert found, body.get_content()
        return found.group(1)


class MailSink:
    """An aiosmtpd handler; it runs in the controller's thread, so mails go through a thread-safe queue."""

    def __init__(self) -> None:
        self.mails: queue.Queue[Mail] = queue.Queue()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.mails.put(Mail(list(envelope.rcpt_tos), message, login))
        return "250 OK"

    async def next_mail(self) -> Mail:
        """The next delivered mail, waiting at most MAIL_TIMEOUT seconds."""
        return await asyncio.to_thread(self.mails.get, timeout=MAIL_TIMEOUT)


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (SMTP_USER.encode(), SMTP_PASSWORD.encode())
    return AuthResult(success=ok, auth_data=auth_data)


def free_port() -> int:
    """A loopback port nobody listens on (aiosmtpd's controller cannot bind port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_sink() -> Iterator[tuple[MailSink, int]]:
    """A real SMTP server on loopback accepting the service's login, and its port."""
    sink = MailSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, authenticator=_authenticate, auth_require_tls=False)
    controller.start()
    yield sink, port
    controller.stop()


@pytest.fixture
def sink(smtp_sink: tuple[MailSink, int]) -> MailSink:
    return smtp_sink[0]


@pytest.fixture
def config(config: Config, smtp_sink: tuple[MailSink, int]) -> Config:
    """The default test settings, with mail going to the sink (credentials URL-encoded)."""
    url = f"smtp://{SMTP_USER}:{quote(SMTP_PASSWORD, safe='')}@127.0.0.1:{smtp_sink[1]}"
    return config.with_changes(smtp_url=url, mail_from=MAIL_FROM)


def run_sql(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run a statement on the service's database file from outside, as an operator would."""
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        with conn:
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def registration(username: str, captcha: Any = None, address: str | None = None) -> dict[str, Any]:
    body = {
        "username": username,
        "password": "secret123",
        "nickName": f"Nick {username}",
        "email": address or f"{username}@example.com",
        "confirmPassword": "secret123",
    }
    if captcha is not None:
        body["captcha"] = captcha
    return body


async def request_code(api: Api, sink: MailSink, address: str) -> str:
    resp = await api.get("/user/register-captcha", address=address)
    assert resp.status == 200, resp.body
    mail = await sink.next_mail()
    assert mail.rcpt_tos == [address]
    return mail.code


async def test_register_captcha_is_mailed_and_register_accepts_it(api: Api, sink: MailSink, config: Config) -> None:
    resp = await api.get("/user/register-captcha", address="ann@example.com")
    assert resp.status == 200 and resp.body == "Verification code sent"

    mail = await sink.next_mail()
    assert mail.rcpt_tos == ["ann@example.com"]
    assert mail.message["To"] == "ann@example.com" and mail.message["From"] == MAIL_FROM
    assert "registration" in mail.message["Subject"]
    assert mail.login == SMTP_USER.encode()
    assert re.fullmatch(r"\d{6}", mail.code)

    created = await api.post("/user/register", registration("ann", mail.code))
    assert created.status == 201, created.body
    assert created.body["username"] == "ann" and "password" not in str(created.body)
    await api.login("ann")
    # Consumed: nothing left to reuse.
    assert run_sql(config.db_path, "SELECT count(*) FROM captcha") == [(0,)]


async def test_register_captcha_lives_five_minutes_others_ten(api: Api, sink: MailSink, config: Config) -> None:
    code = await request_code(api, sink, "ben@example.com")
    assert (await api.post("/user/register", registration("ben", code))).status == 201
    user = await api.login("ben")
    assert (await api.get("/user/register-captcha", address="new@example.com")).status == 200
    assert (await api.get("/user/update_password/captcha", address="ben@example.com")).status == 200
    assert (await api.get("/user/update/captcha", user.token)).status == 200
    lifetimes = run_sql(
        config.db_path,
        "SELECT purpose, round((julianday(expires_at) - julianday(created_at)) * 86400) FROM captcha ORDER BY purpose",
    )
    assert lifetimes == [("register", 300.0), ("update_password", 600.0), ("update_user", 600.0)]


async def test_register_without_captcha_refused_when_smtp_is_on(api: Api, sink: MailSink) -> None:
    missing = await api.post("/user/register", registration("cid"))
    assert_error(missing.status, missing.body, 400)
    assert "captcha" in missing.body["message"]

    never_sent = await api.post("/user/register", registration("cid", "123456"))
    assert_error(never_sent.status, never_sent.body, 400)
    assert "expired" in never_sent.body["message"]
    login = await api.post("/user/login", {"username": "cid", "password": "secret123"})
    assert_error(login.status, login.body, 400)


def wrong_codes(code: str, count: int) -> list[str]:
    """``count`` six-digit codes, none of them ``code``."""
    return [f"{(int(code) + k) % 10**6:06d}" for k in range(1, count + 1)]


async def test_register_code_survives_four_wrong_guesses(api: Api, sink: MailSink, config: Config) -> None:
    code = await request_code(api, sink, "dan@example.com")
    for wrong in wrong_codes(code, 4):
        refused = await api.post("/user/register", registration("dan", wrong))
        assert_error(refused.status, refused.body, 400)
        assert refused.body["message"] == "Verification code is incorrect"
    assert run_sql(config.db_path, "SELECT attempts FROM captcha") == [(4,)]
    # Someone else's wrong guesses leave the code usable by its owner.
    assert (await api.post("/user/register", registration("dan", code))).status == 201
    await api.login("dan")


async def test_register_code_dies_at_its_fifth_wrong_guess(api: Api, sink: MailSink) -> None:
    code = await request_code(api, sink, "dax@example.com")
    answers = []
    for wrong in wrong_codes(code, 5):
        refused = await api.post("/user/register", registration("dax", wrong))
        assert_error(refused.status, refused.body, 400)
        answers.append(refused.body["message"])
    assert answers[:4] == ["Verification code is incorrect"] * 4
    assert "last try" in answers[4]
    # The sixth guess, even the right code, finds nothing to use.
    late = await api.post("/user/register", registration("dax", code))
    assert_error(late.status, late.body, 400)
    assert "expired" in late.body["message"]
    login = await api.post("/user/login", {"username": "dax", "password": "secret123"})
    assert_error(login.status, login.body, 400)


async def test_register_new_code_starts_with_no_wrong_guesses(api: Api, sink: MailSink, config: Config) -> None:
    code = await request_code(api, sink, "dee@example.com")
    for wrong in wrong_codes(code, 4):
        assert (await api.post("/user/register", registration("dee", wrong))).status == 400
    run_sql(
        config.db_path,
        "UPDATE captcha SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-61 seconds') WHERE address = ?",
        ("dee@example.com",),
    )
    fresh = await request_code(api, sink, "dee@example.com")
    assert run_sql(config.db_path, "SELECT attempts FROM captcha") == [(0,)]
    for wrong in wrong_codes(fresh, 4):
        assert (await api.post("/user/register", registration("dee", wrong))).status == 400
    assert (await api.post("/user/register", registration("dee", fresh))).status == 201


async def test_register_captcha_cannot_be_reused(api: Api, sink: MailSink) -> None:
    code = await request_code(api, sink, "eve@example.com")
    assert (await api.post("/user/register", registration("eve", code))).status == 201
    again = await api.post("/user/register", registration("eve2", code, "eve@example.com"))
    assert_error(again.status, again.body, 400)
    assert "expired" in again.body["message"]


async def test_register_captcha_is_bound_to_its_address(api: Api, sink: MailSink) -> None:
    code = await request_code(api, sink, "fay@example.com")
    other = await api.post("/user/register", registration("fay", code, "someone.else@example.com"))
    assert_error(other.status, other.body, 400)
    # Same mailbox in other letter case: the same code.
    assert (await api.post("/user/register", registration("fay", code, "Fay@Example.com"))).status == 201


async def test_register_expired_captcha_refused(api: Api, sink: MailSink, config: Config) -> None:
    code = await request_code(api, sink, "gus@example.com")
    run_sql(
        config.db_path,
        "UPDATE captcha SET expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 seconds') WHERE address = ?",
        ("gus@example.com",),
    )
    expired = await api.post("/user/register", registration("gus", code))
    assert_error(expired.status, expired.body, 400)
    assert "expired" in expired.body["message"]


async def test_register_taken_username_keeps_the_code_usable(api: Api, sink: MailSink) -> None:
    first = await request_code(api, sink, "hal@example.com")
    assert (await api.post("/user/register", registration("hal", first))).status == 201
    code = await request_code(api, sink, "hal2@example.com")
    taken = await api.post("/user/register", registration("hal", code, "hal2@example.com"))
    assert_error(taken.status, taken.body, 400)
    assert taken.body["message"] == "Username already exists"
    # The failed insert rolled back the code's consumption.
    assert (await api.post("/user/register", registration("hal2", code))).status == 201


async def test_captcha_rate_limited_per_address_and_purpose(api: Api, sink: MailSink, config: Config) -> None:
    assert (await api.get("/user/register-captcha", address="ida@example.com")).status == 200
    first = await sink.next_mail()

    for address in ("ida@example.com", "IDA@example.COM"):
        limited = await api.get("/user/register-captcha", address=address)
        assert_error(limited.status, limited.body, 429)
    assert sink.mails.empty()

    # Another address, or another purpose for the same address, is not limited.
    assert (await api.get("/user/register-captcha", address="jon@example.com")).status == 200
    assert (await api.get("/user/update_password/captcha", address="ida@example.com")).status == 200
    assert {(await sink.next_mail()).rcpt_tos[0] for _ in range(2)} == {"jon@example.com", "ida@example.com"}

    # A minute later, a fresh code replaces the first.
    run_sql(
        config.db_path,
        "UPDATE captcha SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-61 seconds') WHERE address = ?",
        ("ida@example.com",),
    )
    assert (await api.get("/user/register-captcha", address="ida@example.com")).status == 200
    second = await sink.next_mail()
    if second.code != first.code:
        stale = await api.post("/user/register", registration("ida", first.code))
        assert_error(stale.status, stale.body, 400)
    else:
        assert (await api.post("/user/register", registration("ida", second.code))).status == 201


async def test_captcha_address_must_be_an_email(api: Api, sink: MailSink) -> None:
    for path in ("/user/register-captcha", "/user/update_password/captcha"):
        missing = await api.get(path)
        assert_error(missing.status, missing.body, 400)
        for bad in ("", "nobody", "a@b", "a b@example.com", "x@example.com\r\nBcc: y@example.com"):
            resp = await api.get(path, address=bad)
            assert_error(resp.status, resp.body, 400)
    assert sink.mails.empty()


async def test_captcha_routes_without_login_ignore_a_bad_token(api: Api, sink: MailSink) -> None:
    for path in ("/user/register-captcha", "/user/update_password/captcha"):
        resp = await api.request("GET", path, token="not-a-token", params={"address": "kim@example.com"})
        assert resp.status == 200, resp.body
        assert (await sink.next_mail()).rcpt_tos == ["kim@example.com"]


async def test_update_captcha_goes_to_the_callers_email(api: Api, sink: MailSink) -> None:
    code = await request_code(api, sink, "lea@example.com")
    assert (await api.post("/user/register", registration("lea", code))).status == 201
    lea = await api.login("lea")

    anonymous = await api.get("/user/update/captcha")
    assert_error(anonymous.status, anonymous.body, 401)
    resp = await api.get("/user/update/captcha", lea.token, address="attacker@example.com")
    assert resp.status == 200 and resp.body == "Verification code sent"
    mail = await sink.next_mail()
    assert mail.rcpt_tos == ["lea@example.com"]
    changed = await api.post(
        "/user/update", {"nickName": "Lea", "email": "lea@example.com", "captcha": mail.code}, lea.token
    )
    assert changed.status == 201 and changed.body["nickName"] == "Lea"


async def test_update_password_by_mailed_code(api: Api, sink: MailSink) -> None:
    code = await request_code(api, sink, "max@example.com")
    assert (await api.post("/user/register", registration("max", code))).status == 201
    old = await api.login("max")

    assert (await api.get("/user/update_password/captcha", address="max@example.com")).status == 200
    mail = await sink.next_mail()
    assert mail.rcpt_tos == ["max@example.com"] and "password" in mail.message["Subject"]
    body = {"username": "max", "email": "max@example.com", "password": "brand-new", "captcha": mail.code}
    done = await api.post("/user/update_password", body)
    assert done.status == 201 and done.body == "Password updated"
    stale = await api.get("/user/info", old.token)
    assert_error(stale.status, stale.body, 401)
    await api.login("max", "brand-new")


async def test_update_password_naming_another_account_leaves_the_code_alone(
    api: Api, sink: MailSink, config: Config
) -> None:
    for name in ("max", "eve"):
        code = await request_code(api, sink, f"{name}@example.com")
        assert (await api.post("/user/register", registration(name, code))).status == 201
    assert (await api.get("/user/update_password/captcha", address="max@example.com")).status == 200
    code = (await sink.next_mail()).code

    # Requests that do not name max's account, wrong code or right: refused, and no try is counted.
    wrong = wrong_codes(code, 1)[0]
    for username, captcha in [("eve", wrong)] * 6 + [("eve", code), ("nobody", code), ("MAX", code)]:
        body = {"username": username, "email": "max@example.com", "password": "taken-over", "captcha": captcha}
        refused = await api.post("/user/update_password", body)
        assert_error(refused.status, refused.body, 400)
        assert refused.body["message"] == "Verification code is incorrect, or no account has this username and email"
    assert run_sql(config.db_path, "SELECT attempts, code != '' FROM captcha WHERE purpose = 'update_password'") == [
        (0, 1)
    ]
    # A wrong code for the right account gets the same answer, so the route tells no one whose address it is.
    body = {"username": "max", "email": "max@example.com", "password": "brand-new", "captcha": wrong}
    guessed = await api.post("/user/update_password", body)
    assert guessed.body == refused.body

    done = await api.post("/user/update_password", {**body, "captcha": code})
    assert done.status == 201, done.body
    await api.login("max", "brand-new")
    await api.login("eve")


def test_migration_002_gives_the_captcha_table_of_schema_sql(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    fresh = sqlite3.connect(tmp_path / "fresh.db")
    fresh.executescript((root / "schema.sql").read_text())
    migrated = sqlite3.connect(tmp_path / "migrated.db")
    # The database as schema.sql made it before migration 002 (the frozen copy test_migrations.py uses too).
    migrated.executescript((root / "tests" / "fixtures" / "schema_v1.sql").read_text())
    migrated.execute(
        "INSERT INTO captcha (purpose, address, code, expires_at) VALUES ('register', 'a@example.com', '123456', 'x')"
    )
    migrated.executescript((root / "chatsvc" / "migrations" / "002_captcha_attempts.sql").read_text())
    shape = "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('captcha')"
    assert migrated.execute(shape).fetchall() == fresh.execute(shape).fetchall()
    assert migrated.execute("SELECT code, attempts FROM captcha").fetchall() == [("123456", 0)]


async def test_captcha_mail_failure_answers_503_and_allows_retry(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on this port: the connection is refused.
    async with serve(config.with_changes(smtp_url=f"smtp://127.0.0.1:{free_port()}")) as api:
        for _ in range(2):  # the failed code was dropped, so no 429 the second time
            resp = await api.get("/user/register-captcha", address="ned@example.com")
            assert_error(resp.status, resp.body, 503)
            assert "internal" not in resp.body["message"].lower()
    assert any("could not send" in r.getMessage() and r.exc_info for r in caplog.records)
    assert run_sql(config.db_path, "SELECT count(*) FROM captcha") == [(0,)]


async def test_register_without_smtp_ignores_captcha_and_logs_codes(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsvc.mail")
    async with serve(config.with_changes(smtp_url=None)) as api:
        for body in (registration("oli"), registration("pam", "000000"), registration("quin", ["not", "a", "code"])):
            resp = await api.post("/user/register", body)
            assert resp.status == 201, resp.body

        assert (await api.get("/user/register-captcha", address="ray@example.com")).status == 200
        logged = [r.getMessage() for r in caplog.records if r.name == "chatsvc.mail"]
        assert len(logged) == 1 and "ray@example.com" in logged[0]
        assert re.search(r"\b\d{6}$", logged[0]), logged
        limited = await api.get("/user/register-captcha", address="ray@example.com")
        assert_error(limited.status, limited.body, 429)


def test_smtp_url_parsing() -> None:
    plain = parse_smtp_url("smtp://u%40x:p%3Aw@mail.example.com:587")
    assert plain == SmtpTarget("mail.example.com", 587, False, "u@x", "p:w")
    assert parse_smtp_url("smtps://mail.example.com") == SmtpTarget("mail.example.com", 465, True, None, None)
    assert parse_smtp_url("SMTP://mail.example.com").port == 25
    for bad in ("http://mail.example.com", "smtp://", "mail.example.com:25"):
        with pytest.raises(ValueError):
            parse_smtp_url(bad)
