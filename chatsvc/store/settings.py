"""Service-wide values kept in the database."""

from __future__ import annotations

from chatsvc.store import Connection, fetch_value

# The id of the user system messages are sent as (chatsvc/admin.py creates it on first use).
SYSTEM_USER_SETTING = "system_user_id"


async def find_system_user_id(conn: Connection) -> int | None:
    """The id of the system user, or None while it does not exist yet."""
    found: int | None = await fetch_value(
        conn, "SELECT CAST(value AS INTEGER) FROM setting WHERE key = ?", (SYSTEM_USER_SETTING,)
    )
    return found


async def get_or_create_setting(conn: Connection, key: str, default: str) -> str:
    """The stored value of ``key``; stores ``default`` first if there is none."""
    await conn.execute("INSERT INTO setting (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, default))
    value: str = await fetch_value(conn, "SELECT value FROM setting WHERE key = ?", (key,))
    return value


async def record_write_probe(conn: Connection) -> None:
    """Store the time in the ``write_probe`` setting: a small real write, to learn whether writes work again."""
    await conn.execute(
        f"""
        INSERT INTO setting (key, value) VALUES ('write_probe', CAST({conn.dialect.now} AS TEXT))
        ON CONFLICT (key) DO UPDATE SET value = excluded.value
        """
    )


async def find_setting(conn: Connection, key: str) -> str | None:
    """The stored value of a service-wide setting, or None."""
    value: str | None = await fetch_value(conn, "SELECT value FROM setting WHERE key = ?", (key,))
    return value
