"""Verification codes: one live code per (purpose, address), with its expiry."""

from __future__ import annotations

from typing import Any

import aiosqlite

from chatsvc.store import fetch_one

# Purposes, as stored in captcha.purpose.
REGISTER = "register"
UPDATE_PASSWORD = "update_password"
UPDATE_USER = "update_user"

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


async def store_captcha(
    conn: aiosqlite.Connection, purpose: str, address: str, code: str, *, ttl_seconds: int, interval_seconds: int
) -> dict[str, Any] | None:
    """Save a new code for the address, replacing the old one; None if the last was issued too recently.

    The rate limit lives in the statement itself: the upsert only replaces a
    row created at least ``interval_seconds`` ago, so two racing requests
    cannot both pass the check.
    """
    return await fetch_one(
        conn,
        f"""
        INSERT INTO captcha (purpose, address, code, expires_at, created_at)
        VALUES (:purpose, :address, :code, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', :ttl), {_NOW})
        ON CONFLICT (purpose, address) DO UPDATE
            SET code = excluded.code, expires_at = excluded.expires_at, created_at = excluded.created_at
            WHERE captcha.created_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', :interval)
        RETURNING purpose, address, expires_at AS expiresAt, created_at AS createdAt
        """,
        {
            "purpose": purpose,
            "address": address,
            "code": code,
            "ttl": f"+{ttl_seconds} seconds",
            "interval": f"-{interval_seconds} seconds",
        },
    )


async def find_captcha(conn: aiosqlite.Connection, purpose: str, address: str) -> dict[str, Any] | None:
    """The code stored for the address and whether it is still valid, or None."""
    return await fetch_one(
        conn,
        f"""
        SELECT code, expires_at AS expiresAt, expires_at > {_NOW} AS live
        FROM captcha WHERE purpose = ? AND address = ?
        """,
        (purpose, address),
    )


async def delete_captcha(conn: aiosqlite.Connection, purpose: str, address: str, code: str | None = None) -> bool:
    """Remove the address's code (only if it is still ``code``, when given); whether a row went."""
    cursor = await conn.execute(
        "DELETE FROM captcha WHERE purpose = ? AND address = ? AND (? IS NULL OR code = ?)",
        (purpose, address, code, code),
    )
    return cursor.rowcount > 0


async def burn_captcha(conn: aiosqlite.Connection, purpose: str, address: str) -> None:
    """Make the address's code unusable but keep its row, so the request rate limit still holds."""
    await conn.execute("UPDATE captcha SET code = '' WHERE purpose = ? AND address = ?", (purpose, address))


async def purge_expired_captchas(conn: aiosqlite.Connection) -> None:
    """Drop every expired code, so the table only holds codes issued in the last few minutes."""
    await conn.execute(f"DELETE FROM captcha WHERE expires_at <= {_NOW}")
