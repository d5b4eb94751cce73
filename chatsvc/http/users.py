"""/user: registration, login and logout, the caller's profile, and verification codes.

A code proves that the person asking controls a mailbox. It is issued for a
purpose (register, update_password, update_user) and an address, lives a few
minutes, is used once, and is burnt by its fifth wrong guess: a stray wrong
guess by someone else leaves it usable for its owner, and guessing stays at
five tries per code and one code per minute. A password reset only tries a
code once the username and email name an account, so no one can use up the
code of an account they do not name. Addresses are compared in lower case,
so case variants share one code and one rate limit.

Failed logins are limited per client address and per username,
registrations per client address (chatsvc/throttle.py), and every password
hash waits for a slot of the application's PasswordHasher.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from aiohttp import web

from chatsvc import models
from chatsvc.errors import BadRequest, NotFound, TooManyRequests
from chatsvc.http.middleware import caller, client_address, ends_session, public
from chatsvc.jsonutil import json_response
from chatsvc.mail import MailUnavailable, send_code
from chatsvc.models import validate, validate_field, validate_params
from chatsvc.state import STATE, AppState
from chatsvc.store import Connection, captchas
from chatsvc.store.users import (
    find_user_by_username,
    find_user_by_username_and_email,
    find_user_seen_by,
    insert_user,
    reset_password,
    revoke_tokens,
    update_user_profile,
)
from chatsvc.validation import json_body, not_reserved

routes = web.RouteTableDef()

# At most one code per purpose and address in this many seconds.
CAPTCHA_INTERVAL_SECONDS = 60
# The wrong guess that burns a code: it survives the four before.
CODE_MAX_ATTEMPTS = 5

CODE_SENT = "Verification code sent"
CODE_EXPIRED = "Verification code has expired or was never requested; request a new one"
CODE_WRONG = "Verification code is incorrect"
CODE_BURNT = "Verification code is incorrect, and that was its last try; request a new one"
# For a password reset, a wrong code and a username/email pair that names no account get one answer,
# so the route cannot be used to learn which address belongs to which username.
CODE_WRONG_OR_NO_ACCOUNT = "Verification code is incorrect, or no account has this username and email"


@dataclass(frozen=True)
class CodePurpose:
    """What a code is for: its stored name, the mail's subject, and how long it lives."""

    name: str
    subject: str
    ttl_minutes: int


REGISTER_CODE = CodePurpose(captchas.REGISTER, "Your chatsvc registration code", 5)
UPDATE_PASSWORD_CODE = CodePurpose(captchas.UPDATE_PASSWORD, "Your chatsvc password reset code", 10)
UPDATE_USER_CODE = CodePurpose(captchas.UPDATE_USER, "Your chatsvc profile change code", 10)


async def issue_code(state: AppState, purpose: CodePurpose, address: str) -> None:
    """Store a fresh code for the address and send it; TooManyRequests if one went out within the minute."""
    code = f"{secrets.randbelow(10**6):06d}"
    key = address.lower()
    async with state.db.transaction() as conn:
        await captchas.purge_expired_captchas(conn)
        stored = await captchas.store_captcha(
            conn,
            purpose.name,
            key,
            code,
            ttl_seconds=purpose.ttl_minutes * 60,
            interval_seconds=CAPTCHA_INTERVAL_SECONDS,
        )
    if stored is None:
        raise TooManyRequests("A code was sent to this address less than a minute ago; please wait before asking again")
    try:
        await send_code(state.config, address, purpose.subject, code, purpose.ttl_minutes)
    except MailUnavailable:
        # Undelivered: let the client ask again at once instead of waiting out the rate limit.
        async with state.db.transaction() as conn:
            await captchas.delete_captcha(conn, purpose.name, key, code)
        raise


async def live_code(conn: Connection, purpose: CodePurpose, address: str) -> bool:
    """Whether the address has a code for the purpose that can still be used."""
    found = await captchas.find_captcha(conn, purpose.name, address.lower())
    return found is not None and bool(found["code"]) and bool(found["live"])


async def consume_code(conn: Connection, purpose: CodePurpose, address: str, code: str) -> str | None:
    """Use up the address's code if ``code`` matches it: None, or why it was refused.

    Runs inside the caller's write transaction, so the code is gone exactly
    when the change it authorises commits. A wrong guess is counted against
    the code, and the fifth burns it; the caller must then leave the
    transaction normally for the count to stick.
    """
    key = address.lower()
    found = await captchas.find_captcha(conn, purpose.name, key)
    if found is None or not found["code"] or not found["live"]:
        return CODE_EXPIRED
    # Constant time, on bytes: compare_digest refuses non-ASCII str.
    if not hmac.compare_digest(found["code"].encode(), code.encode()):
        attempts = await captchas.count_wrong_guess(conn, purpose.name, key, max_attempts=CODE_MAX_ATTEMPTS)
        return CODE_BURNT if attempts >= CODE_MAX_ATTEMPTS else CODE_WRONG
    await captchas.delete_captcha(conn, purpose.name, key)
    return None


async def reset_code_problem(conn: Connection, username: str, address: str, code: str) -> str | None:
    """Use up the password reset code of the account named by username and email: None, or why it was refused.

    A request that names no account leaves the code alone, so no one can
    spend someone else's tries; it is answered like a wrong code.
    """
    if not await live_code(conn, UPDATE_PASSWORD_CODE, address):
        return CODE_EXPIRED
    if await find_user_by_username_and_email(conn, username, address) is None:
        return CODE_WRONG_OR_NO_ACCOUNT
    problem = await consume_code(conn, UPDATE_PASSWORD_CODE, address, code)
    return CODE_WRONG_OR_NO_ACCOUNT if problem == CODE_WRONG else problem


@routes.post("/user/register")
@public
async def register(request: web.Request) -> web.Response:
    """Create an account; answers the new user's public profile.

    With SMTP configured, a register code sent to the email is required;
    without it, codes only go to the log and the captcha field is ignored.
    """
    state = request.app[STATE]
    data = await json_body(request)
    if state.config.smtp_url is None:
        # Without SMTP the code is ignored, whatever it is.
        data = {key: value for key, value in data.items() if key != "captcha"}
    body = validate(models.RegisterBody, data, "Request body")
    username = not_reserved(body.username, "username")
    nick_name = not_reserved(body.nickName, "nickName")
    address = body.email
    password = body.password
    code = None
    if state.config.smtp_url is not None:
        # The code of a register body is optional in the model; with SMTP it must be there.
        code = validate_field(models.UpdatePasswordBody, "captcha", body.captcha).strip()
    state.throttle.register_attempt(client_address(request))
    password_hash = await state.hasher.hash(password)
    problem, user = None, None
    async with state.db.transaction() as conn:
        if code is not None:
            problem = await consume_code(conn, REGISTER_CODE, address, code)
        if problem is None:
            user = await insert_user(
                conn, username=username, password_hash=password_hash, nick_name=nick_name, email=address
            )
            if user is None:
                # Raised inside the transaction: the rollback leaves the code usable.
                raise BadRequest("Username already exists")
    if problem is not None:
        raise BadRequest(problem)
    return json_response(user, status=201)


@routes.post("/user/login")
@public
async def login(request: web.Request) -> web.Response:
    """Exchange username and password for the user and a token; 429 while over a failed-login limit."""
    state = request.app[STATE]
    body = validate(models.LoginBody, await json_body(request), "Request body")
    username, password = body.username, body.password
    address = client_address(request)

    def admit() -> None:
        state.throttle.check_login(username, address)

    # Checked again once a hashing slot is free, for the logins that queued while others failed.
    admit()
    found = await find_user_by_username(state.db.reader, username)
    ok = await state.hasher.verify(password, found["passwordHash"] if found else None, admit=admit)
    if found is None or not ok:
        state.throttle.login_failed(username, address)
        raise BadRequest("Wrong username or password")
    token_version = found.pop("tokenVersion")
    del found["passwordHash"]
    return json_response({"user": found, "token": state.issue_token(found, token_version)}, status=201)


@routes.post("/user/logout")
@ends_session
async def logout(request: web.Request) -> web.Response:
    """End every token of the caller, on every device, and close their sockets."""
    state = request.app[STATE]
    me = caller(request)
    async with state.db.transaction() as conn:
        revoked = await revoke_tokens(conn, me.id)
    if revoked is None:
        raise NotFound("User not found")
    await state.fanout.disconnect_user(me.id)
    return json_response("Logged out", status=201)


@routes.get("/user/find")
async def find_user(request: web.Request) -> web.Response:
    """A user's profile by username, to start a chat with them; the email only for the caller and friends."""
    username = validate_params(models.FindUserQuery, request.query).username
    found = await find_user_seen_by(request.app[STATE].db.reader, username.strip(), caller(request).id)
    if found is None:
        raise NotFound("User not found")
    return json_response(found)


@routes.get("/user/info")
async def user_info(request: web.Request) -> web.Response:
    """The caller's own profile."""
    return json_response(caller(request).user)


@routes.get("/user/register-captcha")
@public
async def register_captcha(request: web.Request) -> web.Response:
    """Send a registration code (valid 5 minutes) to ``address``."""
    address = validate_params(models.CodeQuery, request.query).address
    await issue_code(request.app[STATE], REGISTER_CODE, address)
    return json_response(CODE_SENT)


@routes.get("/user/update_password/captcha")
@public
async def update_password_captcha(request: web.Request) -> web.Response:
    """Send a password reset code (valid 10 minutes) to ``address``."""
    address = validate_params(models.CodeQuery, request.query).address
    await issue_code(request.app[STATE], UPDATE_PASSWORD_CODE, address)
    return json_response(CODE_SENT)


@routes.get("/user/update/captcha")
async def update_user_captcha(request: web.Request) -> web.Response:
    """Send a profile change code (valid 10 minutes) to the caller's current email."""
    await issue_code(request.app[STATE], UPDATE_USER_CODE, caller(request).user["email"])
    return json_response(CODE_SENT)


@routes.post("/user/update")
async def update_user(request: web.Request) -> web.Response:
    """Change the caller's nickName, headPic and email; answers the new profile.

    The code must be the one sent to the caller's current email, not to the
    ``email`` of the body: a stolen token alone cannot move the account to a
    mailbox the thief controls.
    """
    state = request.app[STATE]
    me = caller(request)
    body = validate(models.UpdateUserBody, await json_body(request), "Request body")
    nick_name = None if body.nickName is None else not_reserved(body.nickName, "nickName")
    head_pic = body.headPic
    new_address = body.email
    code = body.captcha.strip()
    profile = None
    async with state.db.transaction() as conn:
        problem = await consume_code(conn, UPDATE_USER_CODE, me.user["email"], code)
        if problem is None:
            profile = await update_user_profile(conn, me.id, nick_name=nick_name, head_pic=head_pic, email=new_address)
    if problem is not None:
        raise BadRequest(problem)
    if profile is None:
        raise NotFound("User not found")
    # Messages carry their sender's profile from this cache, on every instance.
    await state.fanout.forget_profile(me.id)
    return json_response(profile, status=201)


@routes.post("/user/update_password")
@public
async def update_password(request: web.Request) -> web.Response:
    """Set a new password with a code sent to the account's email (forgot password); ends older tokens."""
    state = request.app[STATE]
    body = validate(models.UpdatePasswordBody, await json_body(request), "Request body")
    username, address, password = body.username, body.email, body.password
    code = body.captcha.strip()
    password_hash = await state.hasher.hash(password)
    changed = None
    async with state.db.transaction() as conn:
        problem = await reset_code_problem(conn, username, address, code)
        if problem is None:
            changed = await reset_password(conn, username=username, email=address, password_hash=password_hash)
    if problem is not None or changed is None:
        raise BadRequest(problem or CODE_WRONG_OR_NO_ACCOUNT)
    # Sockets opened with the old password's tokens go too, not just later requests.
    await state.fanout.disconnect_user(changed["id"])
    return json_response("Password updated", status=201)
