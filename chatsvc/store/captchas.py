"""Verification codes: one live code per (purpose, address), with its expiry and the wrong guesses made at it."""

from __future__ import annotations

from typing import Any

from chatsvc.store import Connection, fetch_one

# Purposes, as stored in captcha.purpose.
REGISTER = "register"
UPDATE_PASSWORD = "update_password"
UPDATE_USER = "update_user"


async def store_captcha(
    conn: Connection, purpose: str, address: str, code: str, *, ttl_seconds: int, interval_seconds: int
) -> dict[str, Any] | None:
    """Save a new code for the address, replacing the old one; None if the last was issued too recently.

    The rate limit lives in the statement itself: the upsert only replaces a
    row created at least ``interval_seconds`` ago, so two racing requests
    cannot both pass the check.
    """
    dialect = conn.dialect
    return await fetch_one(
        conn,
        f"""
        INSERT INTO captcha (purpose, address, code, expires_at, created_at)
        VALUES (:purpose, :address, :code, {dialect.seconds_from_now(":ttl")}, {dialect.now})
        ON CONFLICT (purpose, address) DO UPDATE
            SET code = excluded.code, expires_at = excluded.expires_at, created_at = excluded.created_at,
                attempts = 0
            WHERE captcha.created_at <= {dialect.seconds_from_now(":interval")}
        RETURNING purpose, address, expires_at AS "expiresAt", created_at AS "createdAt"
        """,
        {
            "purpose": purpose,
            "address": address,
            "code": code,
            "ttl": ttl_seconds,
            "interval": -interval_seconds,
        },
    )


async def find_captcha(conn: Connection, purpose: str, address: str) -> dict[str, Any] | None:
    """The code stored for the address and whether it is still valid, or None."""
    return await fetch_one(
        conn,
        f"""
        SELECT code, expires_at AS "expiresAt", expires_at > {conn.dialect.now} AS live
        FROM captcha WHERE purpose = ? AND address = ?
        """,
        (purpose, address),
    )


async def delete_captcha(conn: Connection, purpose: str, address: str, code: str | None = None) -> bool:
    """Remove the address's code (only if it is still ``code``, when given); whether a row went."""
    deleted = await conn.execute(
        """
        DELETE FROM captcha
        WHERE purpose = :purpose AND address = :address AND (CAST(:code AS TEXT) IS NULL OR code = :code)
        """,
        {"purpose": purpose, "address": address, "code": code},
    )
    return deleted > 0


async def count_wrong_guess(conn: Connection, purpose: str, address: str, *, max_attempts: int) -> int:
    """Count a wrong guess at the address's code, burning the code at the ``max_attempts``-th; guesses so far.

    A burnt code keeps its row (with an empty code), so the request rate limit still holds.
    """
    row = await fetch_one(
        conn,
        """
        UPDATE captcha SET
            attempts = attempts + 1,
            code = CASE WHEN attempts + 1 >= :max_attempts THEN '' ELSE code END
        WHERE purpose = :purpose AND address = :address
        RETURNING attempts
        """,
        {"purpose": purpose, "address": address, "max_attempts": max_attempts},
    )
    return max_attempts if row is None else int(row["attempts"])


async def purge_expired_captchas(conn: Connection) -> None:
    """Drop every expired code, so the table only holds codes issued in the last few minutes."""
    await conn.execute(f"DELETE FROM captcha WHERE expires_at <= {conn.dialect.now}")
