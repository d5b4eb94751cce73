"""Chat rooms and their members."""

from __future__ import annotations

from typing import Any

import orjson

from chatsvc.store import Connection, fetch_all, fetch_one, fetch_value
from chatsvc.store.users import PROFILE_COLUMNS, PROFILE_SEEN_BY_VIEWER, without_hidden_email

ONE_TO_ONE = 0
GROUP = 1
# Roles of a group's members (user_chatroom.role); one-to-one rooms have members only.
OWNER, ADMIN, MEMBER = "owner", "admin", "member"


def pair_key(user_a: int, user_b: int) -> str:
    """The key that identifies the one-to-one room of two users, whatever their order."""
    low, high = sorted((user_a, user_b))
    return f"{low}:{high}"


async def find_one_to_one_room(conn: Connection, user_a: int, user_b: int) -> int | None:
    """The id of the one-to-one room both users are members of, or None."""
    room_id: int | None = await fetch_value(
        conn,
        """
        SELECT c.id
        FROM user_chatroom AS a
        JOIN user_chatroom AS b ON b.chatroom_id = a.chatroom_id AND b.user_id = :b
        JOIN chatroom AS c ON c.id = a.chatroom_id AND c.type = 0
        WHERE a.user_id = :a
        ORDER BY c.id
        LIMIT 1
        """,
        {"a": user_a, "b": user_b},
    )
    return room_id


async def create_one_to_one_room(conn: Connection, user_a: int, user_b: int, name: str) -> int:
    """Create the one-to-one room of two users, or return the existing one.

    Must run inside a write transaction: the insert and the membership rows
    land together, and the unique pair key settles a race to one room.
    """
    key = pair_key(user_a, user_b)
    created = await fetch_value(
        conn,
        """
        INSERT INTO chatroom (name, type, pair_key) VALUES (?, 0, ?)
        ON CONFLICT (pair_key) WHERE pair_key IS NOT NULL DO NOTHING
        RETURNING id
        """,
        (name, key),
    )
    if created is None:
        existing: int = await fetch_value(conn, "SELECT id FROM chatroom WHERE pair_key = ?", (key,))
        return existing
    await conn.execute(
        f"""
        INSERT INTO user_chatroom (user_id, chatroom_id, joined_at)
        VALUES (?, ?, {conn.dialect.now}), (?, ?, {conn.dialect.now})
        """,
        (user_a, created, user_b, created),
    )
    return int(created)


async def create_group_room(conn: Connection, name: str, owner_id: int) -> int:
    """Create a group room with its first member, its owner; inside a write transaction."""
    room_id: int = await fetch_value(conn, "INSERT INTO chatroom (name, type) VALUES (?, 1) RETURNING id", (name,))
    await conn.execute(
        f"""
        INSERT INTO user_chatroom (user_id, chatroom_id, role, joined_at)
        VALUES (?, ?, '{OWNER}', {conn.dialect.now})
        """,
        (owner_id, room_id),
    )
    return room_id


async def find_room(conn: Connection, room_id: int) -> dict[str, Any] | None:
    """A room's own row (id, name, type as bool, times), or None."""
    room = await fetch_one(
        conn,
        """
        SELECT id, name, type, create_time AS "createTime", update_time AS "updateTime"
        FROM chatroom WHERE id = ?
        """,
        (room_id,),
    )
    if room is not None:
        room["type"] = room["type"] == GROUP
    return room


async def is_member(conn: Connection, user_id: int, room_id: int) -> bool:
    """Whether the user is a member of the room."""
    found = await fetch_value(
        conn, "SELECT 1 FROM user_chatroom WHERE user_id = ? AND chatroom_id = ?", (user_id, room_id)
    )
    return found is not None


async def list_member_ids(conn: Connection, chatroom_id: int) -> list[int]:
    """Ids of the room's members."""
    return await conn.fetch_column(
        "SELECT user_id FROM user_chatroom WHERE chatroom_id = ? ORDER BY user_id", (chatroom_id,)
    )


async def list_rooms_of_user(
    conn: Connection, user_id: int, name_filter: str = "", *, only_room: int | None = None
) -> list[dict[str, Any]]:
    """The user's rooms with member ids, one-to-one rooms named after the other member (``only_room``: just that one).

    One statement: names and member lists come from correlated subqueries
    served by the membership indexes, not from a query per room.
    """
    dialect = conn.dialect
    rows = await fetch_all(
        conn,
        f"""
        SELECT * FROM (
            SELECT
                c.id,
                CASE WHEN c.type = 0 THEN coalesce((
                    SELECT u.nick_name FROM user_chatroom AS o JOIN "user" AS u ON u.id = o.user_id
                    WHERE o.chatroom_id = c.id AND o.user_id != :me LIMIT 1
                ), c.name) ELSE c.name END AS name,
                c.type,
                c.create_time AS "createTime",
                (SELECT {dialect.json_array("user_id")} FROM user_chatroom WHERE chatroom_id = c.id) AS "userIds"
            FROM user_chatroom AS m
            JOIN chatroom AS c ON c.id = m.chatroom_id
            WHERE m.user_id = :me{" AND m.chatroom_id = :room" if only_room is not None else ""}
        ) AS room
        WHERE :name = '' OR {dialect.contains("lower(name)", "lower(:name)")}
        ORDER BY id
        """,
        {"me": user_id, "name": name_filter, **({"room": only_room} if only_room is not None else {})},
    )
    for row in rows:
        row["type"] = row["type"] == GROUP
        row["userIds"] = orjson.loads(row["userIds"])
        row["userCount"] = len(row["userIds"])
    return rows


async def list_member_profiles(conn: Connection, chatroom_id: int, *, seen_by: int | None) -> list[dict[str, Any]]:
    """Profiles of the room's members in id order (empty for a room that does not exist).

    As user ``seen_by`` may see them: emails only of that user and their
    friends. ``None`` is a trusted caller (the sidecar API), who sees every email.
    """
    if seen_by is None:
        return await fetch_all(
            conn,
            f"""
            SELECT {PROFILE_COLUMNS}, m.role
            FROM user_chatroom AS m
            JOIN "user" ON "user".id = m.user_id
            WHERE m.chatroom_id = ?
            ORDER BY m.user_id
            """,
            (chatroom_id,),
        )
    rows = await fetch_all(
        conn,
        f"""
        SELECT {PROFILE_SEEN_BY_VIEWER}, m.role
        FROM user_chatroom AS m
        JOIN "user" AS u ON u.id = m.user_id
        WHERE m.chatroom_id = :room
        ORDER BY m.user_id
        """,
        {"room": chatroom_id, "viewer": seen_by},
    )
    return [without_hidden_email(row) for row in rows]


async def add_member(conn: Connection, chatroom_id: int, user_id: int) -> bool:
    """Make the user a member of the room; False if they already were."""
    added = await fetch_value(
        conn,
        f"""
        INSERT INTO user_chatroom (user_id, chatroom_id, joined_at) VALUES (?, ?, {conn.dialect.now})
        ON CONFLICT (user_id, chatroom_id) DO NOTHING
        RETURNING 1
        """,
        (user_id, chatroom_id),
    )
    return added is not None


async def add_members(conn: Connection, chatroom_id: int, user_ids: list[int]) -> list[int]:
    """Make users members of a room with one statement; the ids that were not members before."""
    # WHERE true: without it SQLite would read ON CONFLICT as part of the SELECT's join.
    added = await conn.fetch_column(
        f"""
        INSERT INTO user_chatroom (user_id, chatroom_id, joined_at)
        SELECT ids.value, CAST(:room AS BIGINT), {conn.dialect.now}
        FROM {conn.dialect.in_list(":ids", "int")} AS ids WHERE true
        ON CONFLICT (user_id, chatroom_id) DO NOTHING
        RETURNING user_id
        """,
        {"room": chatroom_id, "ids": conn.dialect.list_value(user_ids)},
    )
    return sorted(added)


async def remove_members(conn: Connection, chatroom_id: int, user_ids: list[int]) -> list[int]:
    """End users' memberships of a room with one statement; the ids that were members."""
    removed = await conn.fetch_column(
        f"""
        DELETE FROM user_chatroom
        WHERE chatroom_id = :room AND user_id IN {conn.dialect.in_list(":ids", "int")}
        RETURNING user_id
        """,
        {"room": chatroom_id, "ids": conn.dialect.list_value(user_ids)},
    )
    return sorted(removed)


async def find_member_role(conn: Connection, chatroom_id: int, user_id: int) -> str | None:
    """The user's role in the room, or None if they are not a member."""
    role: str | None = await fetch_value(
        conn, "SELECT role FROM user_chatroom WHERE user_id = ? AND chatroom_id = ?", (user_id, chatroom_id)
    )
    return role


async def set_member_role(conn: Connection, chatroom_id: int, user_id: int, role: str) -> bool:
    """Give a member a role; False if they are not a member. Inside a write transaction."""
    changed = await conn.execute(
        "UPDATE user_chatroom SET role = ? WHERE user_id = ? AND chatroom_id = ?", (role, user_id, chatroom_id)
    )
    return changed > 0


async def find_successor(conn: Connection, chatroom_id: int) -> int | None:
    """Who becomes owner when the owner leaves: the longest-standing admin, else member; None if nobody is left.

    Memberships older than join times (NULL) stood longest; ties go to the lower user id.
    """
    successor: int | None = await fetch_value(
        conn,
        f"""
        SELECT user_id FROM user_chatroom
        WHERE chatroom_id = ? AND role != '{OWNER}'
        ORDER BY CASE role WHEN '{ADMIN}' THEN 0 ELSE 1 END, joined_at IS NOT NULL, joined_at, user_id
        LIMIT 1
        """,
        (chatroom_id,),
    )
    return successor
