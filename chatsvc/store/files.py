"""Uploaded files: the upload table, and finding which uploads messages and profiles refer to."""

from __future__ import annotations

import re
from typing import Any

import aiosqlite

from chatsvc.store import fetch_all, fetch_one, fetch_value

# How far the sweep has read chat_history for references (chatsvc/files/sweep.py).
CHECKED_MESSAGE_SETTING = "upload_checked_message_id"
# Image and file messages, as stored in chat_history.type.
FILE_MESSAGE_TYPES = (1, 2)
# Messages read per query while looking for references.
SCAN_BATCH = 2000
_FILE_URL = re.compile(r"/file/([0-9a-f]{32})(?![0-9a-f])")


async def insert_upload(
    conn: aiosqlite.Connection,
    *,
    name: str,
    original_name: str,
    content_type: str,
    size: int,
    uploader_id: int,
) -> dict[str, Any]:
    """Record a stored file; the new row."""
    row = await fetch_one(
        conn,
        """
        INSERT INTO upload (name, original_name, content_type, size, uploader_id)
        VALUES (:name, :original_name, :content_type, :size, :uploader_id)
        RETURNING name, original_name AS originalName, content_type AS contentType, size, create_time AS createTime
        """,
        {
            "name": name,
            "original_name": original_name,
            "content_type": content_type,
            "size": size,
            "uploader_id": uploader_id,
        },
    )
    assert row is not None
    return row


async def find_upload(conn: aiosqlite.Connection, name: str) -> dict[str, Any] | None:
    """A stored file by name, or None."""
    return await fetch_one(
        conn,
        """
        SELECT name, original_name AS originalName, content_type AS contentType, size, create_time AS createTime
        FROM upload WHERE name = ?
        """,
        (name,),
    )


def referenced_names(texts: list[str]) -> set[str]:
    """The upload names that URLs in these texts point at (``.../file/<name>``)."""
    return {match for text in texts for match in _FILE_URL.findall(text)}


async def mark_uploads_used(conn: aiosqlite.Connection, names: set[str]) -> None:
    """Mark these uploads as referred to, so the sweep keeps them."""
    if names:
        marks = ", ".join("?" for _ in names)
        await conn.execute(f"UPDATE upload SET used = 1 WHERE used = 0 AND name IN ({marks})", sorted(names))


async def checked_message_id(conn: aiosqlite.Connection) -> int:
    """The id of the last message the sweep has read for references (0 before the first sweep)."""
    value = await fetch_value(conn, "SELECT value FROM setting WHERE key = ?", (CHECKED_MESSAGE_SETTING,))
    return int(value or 0)


async def save_checked_message_id(conn: aiosqlite.Connection, message_id: int) -> None:
    """Remember that messages up to ``message_id`` have been read for references."""
    await conn.execute(
        "INSERT INTO setting (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (CHECKED_MESSAGE_SETTING, str(message_id)),
    )


async def find_referenced_uploads(conn: aiosqlite.Connection, after_id: int) -> tuple[set[str], int]:
    """The upload names image and file messages after ``after_id`` refer to, and the newest message id read.

    Reads forward by id in batches, so a sweep reads each message once
    however often it runs; text messages are skipped, but the id returned is
    the newest of all messages, so they are not read again either.
    """
    names: set[str] = set()
    checked = after_id
    while True:
        rows = await fetch_all(
            conn,
            "SELECT id, content FROM chat_history WHERE id > ? AND type IN (?, ?) ORDER BY id LIMIT ?",
            (checked, *FILE_MESSAGE_TYPES, SCAN_BATCH),
        )
        if not rows:
            break
        names |= referenced_names([row["content"] for row in rows])
        checked = rows[-1]["id"]
    newest = await fetch_value(conn, "SELECT max(id) FROM chat_history")
    return names, max(checked, int(newest or 0))


async def mark_uploads_used_by_profiles(conn: aiosqlite.Connection, max_age_seconds: int) -> None:
    """Mark the sweep's candidates (unused, older than ``max_age_seconds``) that are someone's profile picture."""
    await conn.execute(
        """
        UPDATE upload SET used = 1
        WHERE used = 0
          AND create_time <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', :age)
          AND EXISTS (SELECT 1 FROM user WHERE user.head_pic LIKE '%/file/' || upload.name)
        """,
        {"age": f"-{max_age_seconds} seconds"},
    )


async def delete_unused_uploads(conn: aiosqlite.Connection, max_age_seconds: int) -> list[str]:
    """Delete the rows of uploads nothing refers to, made more than ``max_age_seconds`` ago; their names."""
    rows = await fetch_all(
        conn,
        """
        DELETE FROM upload
        WHERE used = 0 AND create_time <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', :age)
        RETURNING name
        """,
        {"age": f"-{max_age_seconds} seconds"},
    )
    return [row["name"] for row in rows]
