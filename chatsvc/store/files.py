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


async def mark_uploads_used_by_messages(conn: aiosqlite.Connection) -> int:
    """Mark uploads that image and file messages stored since the last call refer to; messages read.

    Reads chat_history forward from where the previous call stopped (a setting),
    so each message is read once however often the sweep runs. Runs inside a
    write transaction: no message can commit behind the new mark meanwhile.
    """
    checked = int(await fetch_value(conn, "SELECT value FROM setting WHERE key = ?", (CHECKED_MESSAGE_SETTING,)) or 0)
    read = 0
    while True:
        rows = await fetch_all(
            conn,
            """
            SELECT id, content FROM chat_history
            WHERE id > ? AND type IN (?, ?)
            ORDER BY id LIMIT ?
            """,
            (checked, *FILE_MESSAGE_TYPES, SCAN_BATCH),
        )
        if not rows:
            break
        await mark_uploads_used(conn, referenced_names([row["content"] for row in rows]))
        checked = rows[-1]["id"]
        read += len(rows)
    # Text messages after the last file message need not be read again either.
    newest = await fetch_value(conn, "SELECT max(id) FROM chat_history")
    checked = max(checked, int(newest or 0))
    await conn.execute(
        "INSERT INTO setting (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (CHECKED_MESSAGE_SETTING, str(checked)),
    )
    return read


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
