"""Friends: friend requests and the friendships they lead to.

A friendship is stored as two rows, one per direction, so "friends of X" is
one primary-key range whoever asked first, and ending it deletes both.
"""

from __future__ import annotations

from typing import Any

from chatsvc.store import Connection, fetch_all, fetch_one, fetch_value

PENDING, AGREED, REJECTED = 0, 1, 2

REQUEST_COLUMNS = """
    r.id AS id, r.from_user_id AS "fromUserId", r.to_user_id AS "toUserId", r.reason AS reason, r.status AS status,
    r.create_time AS "createTime", r.update_time AS "updateTime"
"""

# The other party's public profile (no email: a request comes from someone who is not yet a friend), flat;
# request lists nest it.
_OTHER_USER_COLUMNS = """
    u.id AS u_id, u.username AS u_username, u.nick_name AS "u_nickName",
    u.head_pic AS "u_headPic", u.create_time AS "u_createTime"
"""
_OTHER_USER_KEYS = ("id", "username", "nickName", "headPic", "createTime")


async def insert_friend_request(conn: Connection, from_user_id: int, to_user_id: int, reason: str) -> dict[str, Any]:
    """Store a pending request and return it; inside a write transaction."""
    row = await fetch_one(
        conn,
        """
        INSERT INTO friend_request (from_user_id, to_user_id, reason, status) VALUES (?, ?, ?, 0)
        RETURNING id, from_user_id AS "fromUserId", to_user_id AS "toUserId", reason, status,
                  create_time AS "createTime", update_time AS "updateTime"
        """,
        (from_user_id, to_user_id, reason),
    )
    assert row is not None
    return row


async def find_pending_request_between(conn: Connection, user_a: int, user_b: int) -> dict[str, Any] | None:
    """A pending request from either user to the other, or None."""
    return await fetch_one(
        conn,
        f"""
        SELECT {REQUEST_COLUMNS} FROM friend_request AS r
        WHERE r.status = 0
          AND ((r.from_user_id = :a AND r.to_user_id = :b) OR (r.from_user_id = :b AND r.to_user_id = :a))
        ORDER BY r.id
        LIMIT 1
        """,
        {"a": user_a, "b": user_b},
    )


async def list_friend_requests(conn: Connection, user_id: int) -> dict[str, list[dict[str, Any]]]:
    """Requests to and from the user, any status, newest first, each with the other user's public profile.

    One statement: both directions come from one UNION ALL, each half served
    by its own index on friend_request.
    """
    rows = await fetch_all(
        conn,
        f"""
        SELECT 'toMe' AS box, {REQUEST_COLUMNS}, {_OTHER_USER_COLUMNS}
        FROM friend_request AS r JOIN "user" AS u ON u.id = r.from_user_id
        WHERE r.to_user_id = :me
        UNION ALL
        SELECT 'fromMe' AS box, {REQUEST_COLUMNS}, {_OTHER_USER_COLUMNS}
        FROM friend_request AS r JOIN "user" AS u ON u.id = r.to_user_id
        WHERE r.from_user_id = :me
        ORDER BY id DESC
        """,
        {"me": user_id},
    )
    lists: dict[str, list[dict[str, Any]]] = {"toMe": [], "fromMe": []}
    for row in rows:
        box = row.pop("box")
        other = {key: row.pop("u_" + key) for key in _OTHER_USER_KEYS}
        row["fromUser" if box == "toMe" else "toUser"] = other
        lists[box].append(row)
    return lists


async def settle_friend_request(
    conn: Connection, from_user_id: int, to_user_id: int, status: int
) -> dict[str, Any] | None:
    """Mark the pending request from one user to another agreed or rejected; the request, or None if none pends.

    Inside a write transaction. Should more than one be pending (there is
    normally at most one), all are settled and the newest is returned.
    """
    rows = await fetch_all(
        conn,
        f"""
        UPDATE friend_request
        SET status = :status, update_time = {conn.dialect.now}
        WHERE to_user_id = :to AND status = 0 AND from_user_id = :from
        RETURNING id, from_user_id AS "fromUserId", to_user_id AS "toUserId", reason, status,
                  create_time AS "createTime", update_time AS "updateTime"
        """,
        {"status": status, "from": from_user_id, "to": to_user_id},
    )
    return max(rows, key=lambda row: row["id"]) if rows else None


async def is_friend(conn: Connection, user_id: int, friend_id: int) -> bool:
    """Whether the two users are friends."""
    found = await fetch_value(
        conn, "SELECT 1 FROM friendship WHERE user_id = ? AND friend_id = ?", (user_id, friend_id)
    )
    return found is not None


async def insert_friendship(conn: Connection, user_a: int, user_b: int) -> None:
    """Make two users friends, both directions; a no-op if they already are."""
    await conn.execute(
        """
        INSERT INTO friendship (user_id, friend_id) VALUES (?, ?), (?, ?)
        ON CONFLICT (user_id, friend_id) DO NOTHING
        """,
        (user_a, user_b, user_b, user_a),
    )


async def delete_friendship(conn: Connection, user_a: int, user_b: int) -> bool:
    """End the friendship of two users, both directions; False if they were not friends."""
    rows = await fetch_all(
        conn,
        """
        DELETE FROM friendship
        WHERE (user_id = :a AND friend_id = :b) OR (user_id = :b AND friend_id = :a)
        RETURNING 1
        """,
        {"a": user_a, "b": user_b},
    )
    return bool(rows)


async def list_friends(conn: Connection, user_id: int, name_filter: str = "") -> list[dict[str, Any]]:
    """The user's friends, emails included, in id order; with ``name_filter``, those whose nickName contains it.

    The filter ignores case for ASCII letters only.
    """
    return await fetch_all(
        conn,
        f"""
        SELECT u.id, u.username, u.nick_name AS "nickName", u.email, u.head_pic AS "headPic"
        FROM friendship AS f JOIN "user" AS u ON u.id = f.friend_id
        WHERE f.user_id = :me AND (:name = '' OR {conn.dialect.contains("lower(u.nick_name)", "lower(:name)")})
        ORDER BY f.friend_id
        """,
        {"me": user_id, "name": name_filter},
    )
