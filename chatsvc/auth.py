"""Passwords, tokens, and who is calling.

Passwords are stored as salted scrypt hashes computed in a worker thread,
never on the event loop, a few at a time. Tokens are HS256 JWTs carrying
``userId``, ``username``, the user's token version, which a password change
and a logout bump, and ``auth_time``, the login that started the session:
renewed tokens keep it, and no token is valid past the session's maximum age.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt

from chatsvc.errors import Unauthorized
from chatsvc.store.settings import get_or_create_setting

if TYPE_CHECKING:
    from chatsvc.db import Database

SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
DEFAULT_SESSION_MAX_AGE = 30 * 24 * 3600
# Where the generated signing secret is kept when none is configured.
JWT_SECRET_SETTING = "jwt_secret"
# Tokens verified, and sessions' latest tokens, kept in memory at most (each list is emptied when full).
TOKENS_KEPT = 10_000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int) -> bytes:
    # maxmem must cover 128 * n * r bytes, which the default (32 MiB) does not at n = 2**15.
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=256 * n * SCRYPT_R, dklen=KEY_BYTES
    )


async def _derive(password: str, salt: bytes, n: int) -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, _scrypt, password, salt, n)


def _parse_hash(encoded: str) -> tuple[int, bytes, bytes] | None:
    """(n, salt, key) of a stored hash, or None if it is not one that a password can match."""
    try:
        scheme, n_s, r_s, p_s, salt_s, key_s = encoded.split("$")
        if scheme != "scrypt" or int(r_s) != SCRYPT_R or int(p_s) != SCRYPT_P:
            return None
        return int(n_s), base64.b64decode(salt_s), base64.b64decode(key_s)
    except ValueError:
        return None


def _encode(n: int, salt: bytes, key: bytes) -> str:
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


async def hash_password(password: str, *, n: int) -> str:
    """A self-describing salted scrypt hash: ``scrypt$n$r$p$salt$key`` (for trusted callers: CLI, set-ups)."""
    salt = secrets.token_bytes(SALT_BYTES)
    return _encode(n, salt, await _derive(password, salt, n))


class PasswordHasher:
    """Hashes and checks the passwords of requests, at most ``concurrency`` at once.

    Each hash holds a worker thread and a CPU for tens of milliseconds. A flood
    of logins or registrations therefore waits for a slot here instead of
    filling the default executor, which the rest of the service shares, and
    taking every CPU from the event loop.
    """

    def __init__(self, n: int, concurrency: int) -> None:
        self.n = n
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        # Observed by tests: callers queued, slots taken, most slots ever taken, scrypt hashes computed.
        self.waiting = 0
        self.in_use = 0
        self.peak = 0
        self.computed = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one hashing slot, waiting for one to free up."""
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            self.in_use -= 1
            self._slots.release()

    async def _derive(self, password: str, salt: bytes, n: int) -> bytes:
        self.computed += 1
        return await _derive(password, salt, n)

    async def hash(self, password: str) -> str:
        """A new salted hash of the password at the configured cost."""
        salt = secrets.token_bytes(SALT_BYTES)
        async with self.slot():
            key = await self._derive(password, salt, self.n)
        return _encode(self.n, salt, key)

    async def verify(self, password: str, encoded: str | None, *, admit: Callable[[], None] | None = None) -> bool:
        """Whether the password matches the stored hash.

        Exactly one hash is computed whatever the account: with no stored hash
        (unknown user) or one that no password matches (sidecar and system
        users), a dummy hash at the configured cost is computed instead, so the
        refusal takes as long as a wrong password does. ``admit`` runs once a
        slot is free, just before the hash: it may raise to refuse a request
        that went over a limit while it waited.
        """
        parsed = _parse_hash(encoded) if encoded is not None else None
        async with self.slot():
            if admit is not None:
                admit()
            if parsed is None:
                await self._derive(password, secrets.token_bytes(SALT_BYTES), self.n)
                return False
            stored_n, salt, expected = parsed
            key = await self._derive(password, salt, stored_n)
        return hmac.compare_digest(key, expected)


@dataclass(frozen=True)
class Identity:
    """The caller as a verified token says: who, and which token generation."""

    user_id: int
    username: str
    token_version: int
    # When the user logged in (Unix seconds): the session this token belongs to started then.
    auth_time: int


class TokenService:
    """Issues and verifies the service's signed tokens.

    The signing secret is the configured one (``CHATSVC_JWT_SECRET``), or one
    generated once and kept in the database, so tokens survive a restart with
    no configuration: :meth:`load_secret` reads it at startup.
    """

    def __init__(
        self,
        ttl_seconds: int,
        max_age_seconds: int = DEFAULT_SESSION_MAX_AGE,
        *,
        secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._ttl = ttl_seconds
        self._max_age = max_age_seconds
        self._clock = clock
        # Every authenticated request verifies a token and answers with a fresh one (the sliding session of the
        # original backend): PyJWT prepares the key and parses both JSON parts each time, about a tenth of a
        # history page's CPU. A token is a pure function of its claims, which change once a second, so both
        # directions are kept: the identity and expiry of each token verified, and the token last issued for
        # each session in the current second. Expiry and the session's age are still checked on every use.
        self._verified: dict[str, tuple[Identity, int]] = {}
        self._issued: dict[tuple[int, str, int, int], tuple[int, str]] = {}

    async def load_secret(self, db: Database, configured: str | None) -> None:
        """Use the configured secret, else the one kept in the database (created there if missing)."""
        if configured is None:
            async with db.transaction() as conn:
                configured = await get_or_create_setting(conn, JWT_SECRET_SETTING, secrets.token_urlsafe(48))
        self._secret = configured
        self._verified.clear()
        self._issued.clear()

    @property
    def _key(self) -> str:
        assert self._secret is not None, "the signing secret is not loaded (TokenService.load_secret)"
        return self._secret

    def issue(self, user_id: int, username: str, token_version: int, auth_time: int | None = None) -> str:
        """A token for the user, valid for the configured time but never past the session's end.

        ``auth_time`` is the login the session started with; None starts a new session now.
        """
        now = int(self._clock())
        auth_time = now if auth_time is None else auth_time
        session = (user_id, username, token_version, auth_time)
        last = self._issued.get(session)
        if last is not None and last[0] == now:
            return last[1]
        claims = {
            "userId": user_id,
            "username": username,
            "tv": token_version,
            "iat": now,
            "exp": min(now + self._ttl, auth_time + self._max_age),
            "auth_time": auth_time,
        }
        token = jwt.encode(claims, self._key, algorithm="HS256")
        if len(self._issued) >= TOKENS_KEPT:
            self._issued.clear()
        self._issued[session] = (now, token)
        return token

    def verify(self, token: str) -> Identity:
        """The identity in a valid token; raises Unauthorized otherwise."""
        known = self._verified.get(token)
        if known is not None:
            identity, expires = known
            now = self._clock()
            # As PyJWT decides (no leeway): expired from its exp second on.
            if expires <= now:
                raise Unauthorized("Token expired, please log in again")
            if identity.auth_time + self._max_age <= now:
                raise Unauthorized("Session expired, please log in again")
            return identity
        identity, expires = self._verify_signed(token)
        if len(self._verified) >= TOKENS_KEPT:
            self._verified.clear()
        self._verified[token] = (identity, expires)
        return identity

    def _verify_signed(self, token: str) -> tuple[Identity, int]:
        """PyJWT's verification and our checks of the claims: the identity, and when the token expires."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._key, algorithms=["HS256"], options={"require": ["exp", "userId"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired, please log in again") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid token, please log in again") from None
        user_id, username, version = claims.get("userId"), claims.get("username", ""), claims.get("tv", 0)
        # Tokens issued before auth_time existed: the issue time is the latest the login can have been.
        auth_time = claims.get("auth_time", claims.get("iat"))
        if (
            type(user_id) is not int
            or not isinstance(username, str)
            or type(version) is not int
            or type(auth_time) is not int
        ):
            raise Unauthorized("Invalid token, please log in again")
        if auth_time + self._max_age <= self._clock():
            raise Unauthorized("Session expired, please log in again")
        return Identity(user_id, username, version, auth_time), int(claims["exp"])


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
