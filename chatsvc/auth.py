"""Passwords, tokens, and who is calling.

Passwords are stored as salted scrypt hashes computed in a worker thread,
never on the event loop. Tokens are HS256 JWTs carrying ``userId``,
``username`` and the user's token version, which a password change bumps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from chatsvc.errors import Unauthorized

SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int) -> bytes:
    # maxmem must cover 128 * n * r bytes, which the default (32 MiB) does not at n = 2**15.
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=256 * n * SCRYPT_R, dklen=KEY_BYTES
    )


async def hash_password(password: str, *, n: int) -> str:
    """A self-describing salted scrypt hash: ``scrypt$n$r$p$salt$key``."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = await asyncio.get_running_loop().run_in_executor(None, _scrypt, password, salt, n)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


async def verify_password(password: str, encoded: str | None, *, n: int) -> bool:
    """Whether the password matches the stored hash.

    With no stored hash (unknown user) a dummy hash is still computed, so the
    answer takes as long for unknown users as for wrong passwords.
    """
    if encoded is None:
        await hash_password(password, n=n)
        return False
    try:
        scheme, n_s, r_s, p_s, salt_s, key_s = encoded.split("$")
        if scheme != "scrypt" or int(r_s) != SCRYPT_R or int(p_s) != SCRYPT_P:
            return False
        salt, expected = base64.b64decode(salt_s), base64.b64decode(key_s)
    except ValueError:
        return False
    key = await asyncio.get_running_loop().run_in_executor(None, _scrypt, password, salt, int(n_s))
    return hmac.compare_digest(key, expected)


@dataclass(frozen=True)
class Identity:
    """The caller as a verified token says: who, and which token generation."""

    user_id: int
    username: str
    token_version: int


class TokenService:
    """Issues and verifies the service's signed tokens."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self._ttl = ttl_seconds

    def issue(self, user_id: int, username: str, token_version: int) -> str:
        """A token for the user, valid for the configured time."""
        now = int(time.time())
        claims = {"userId": user_id, "username": username, "tv": token_version, "iat": now, "exp": now + self._ttl}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Identity:
        """The identity in a valid token; raises Unauthorized otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp", "userId"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired, please log in again") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid token, please log in again") from None
        user_id, username, version = claims.get("userId"), claims.get("username", ""), claims.get("tv", 0)
        if type(user_id) is not int or not isinstance(username, str) or type(version) is not int:
            raise Unauthorized("Invalid token, please log in again")
        return Identity(user_id, username, version)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
