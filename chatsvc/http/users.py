"""/user: registration, login and the caller's profile."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from chatsvc.auth import hash_password
from chatsvc.errors import BadRequest
from chatsvc.http.middleware import caller, public
from chatsvc.jsonutil import json_response
from chatsvc.state import STATE
from chatsvc.store.users import find_user_by_username, insert_user
from chatsvc.validation import email, json_body, text_field

routes = web.RouteTableDef()

USERNAME_MAX = 50
NICKNAME_MAX = 50
PASSWORD_MIN = 6
PASSWORD_MAX = 128


def password_field(body: Mapping[str, Any], name: str = "password") -> str:
    """A new password of acceptable length."""
    password = text_field(body, name, max_length=PASSWORD_MAX, allow_blank=True)
    if len(password) < PASSWORD_MIN:
        raise BadRequest(f"{name} must be at least {PASSWORD_MIN} characters")
    return password


@routes.post("/user/register")
@public
async def register(request: web.Request) -> web.Response:
    """Create an account; answers the new user's public profile."""
    state = request.app[STATE]
    body = await json_body(request)
    username = text_field(body, "username", max_length=USERNAME_MAX)
    nick_name = text_field(body, "nickName", max_length=NICKNAME_MAX)
    address = email(body.get("email"))
    password = password_field(body)
    password_hash = await hash_password(password, n=state.config.scrypt_n)
    async with state.db.transaction() as conn:
        user = await insert_user(
            conn, username=username, password_hash=password_hash, nick_name=nick_name, email=address
        )
    if user is None:
        raise BadRequest("Username already exists")
    return json_response(user, status=201)


@routes.post("/user/login")
@public
async def login(request: web.Request) -> web.Response:
    """Exchange username and password for the user and a token."""
    state = request.app[STATE]
    body = await json_body(request)
    username = text_field(body, "username", max_length=USERNAME_MAX)
    password = text_field(body, "password", max_length=PASSWORD_MAX, allow_blank=True)
    found = await find_user_by_username(state.db.reader, username)
    ok = await state.check_password(password, found["passwordHash"] if found else None)
    if found is None or not ok:
        raise BadRequest("Wrong username or password")
    token_version = found.pop("tokenVersion")
    del found["passwordHash"]
    return json_response({"user": found, "token": state.issue_token(found, token_version)}, status=201)


@routes.get("/user/info")
async def user_info(request: web.Request) -> web.Response:
    """The caller's own profile."""
    return json_response(caller(request).user)
