"""Presence, the live room list and group roles (issue 15), on both engines, one instance.

The grace period is short here (CHATSVC_PRESENCE_GRACE), and every wait is on
an event with a timeout; "nothing else arrived" is checked against a later
notice that travels the same path (the fan-out delivers in order).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsvc.config import Config
from tests.conftest import make_config
from tests.helpers import Api, SocketClient, User, assert_error, public_profile

pytestmark = pytest.mark.both_engines

GRACE = 0.2
API_KEY = "presence-sidecar-key-0123456789abcdef"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    # A client's disconnect may abort its connection before its last packet is written: short pings find it.
    return make_config(tmp_path, presence_grace=GRACE, rate_limit=0, ping_interval=1, ping_timeout=1, api_key=API_KEY)


async def befriend(api: Api, one: User, other: User) -> None:
    sent = await api.post("/friendship/add", {"username": other.username}, one.token)
    assert sent.status == 201, sent.body
    agreed = await api.get(f"/friendship/agree/{one.id}", other.token)
    assert agreed.status == 200, agreed.body


async def roles(api: Api, viewer: User, room: int) -> dict[int, str]:
    resp = await api.get("/chatroom/members", viewer.token, chatroomId=room)
    assert resp.status == 200, resp.body
    return {member["id"]: member["role"] for member in resp.body}


def presence_of(user: User, online: bool | None = None) -> Any:
    return lambda m: (
        m.get("type") == "presence" and m["userId"] == user.id and (online is None or m["online"] is online)
    )


async def until_marker(client: SocketClient, marker: Any) -> list[dict[str, Any]]:
    """Every message before the first one matching ``marker`` (which is waited for)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while True:
            event = await client.messages.get()
            if marker(event):
                return seen
            seen.append(event)


# --- presence ---------------------------------------------------------------------------------------------------


async def test_presence_friend_hears_online_then_offline_after_grace_and_last_seen_is_stored(
    api: Api, sockets, trio, db_rows
) -> None:
    alice, bob, _ = trio
    await befriend(api, alice, bob)
    b = await sockets(bob.token)
    a = await sockets(alice.token)
    online = await b.next_message(presence_of(alice, True))
    assert set(online) == {"type", "userId", "online", "lastSeen"} and online["lastSeen"].endswith("Z")
    seen = (await api.get("/user/presence", bob.token, ids=f"{alice.id}")).body
    assert seen == [{"id": alice.id, "online": True, "lastSeen": online["lastSeen"]}]

    await a.disconnect()
    offline = await b.next_message(presence_of(alice), timeout=15)
    assert offline["online"] is False and offline["lastSeen"] >= online["lastSeen"]
    assert (await api.get("/user/presence", bob.token, ids=f"{alice.id}")).body == [
        {"id": alice.id, "online": False, "lastSeen": offline["lastSeen"]}
    ]
    assert [row[0] for row in db_rows('SELECT last_seen FROM "user" WHERE id = ?', (alice.id,))] == [
        offline["lastSeen"]
    ]


async def test_presence_reconnect_within_grace_sends_no_offline(api: Api, server, sockets, trio) -> None:
    alice, bob, carol = trio
    server.state.presence.grace = 3600  # a reload: the old socket goes long before the grace ends
    await befriend(api, alice, bob)
    await befriend(api, carol, bob)
    b = await sockets(bob.token)
    first = await sockets(alice.token)
    await b.next_message(presence_of(alice, True))
    await first.disconnect()
    await sockets(alice.token)
    await sockets(carol.token)  # the marker: bob hears carol after anything about alice
    before = await until_marker(b, presence_of(carol, True))
    assert [m for m in before if m.get("type") == "presence"] == []
    assert (await api.get("/user/presence", bob.token, ids=str(alice.id))).body[0]["online"] is True


async def test_presence_reaches_one_to_one_partners_but_not_mere_group_mates(api: Api, sockets, trio) -> None:
    alice, bob, carol = trio
    dan = await api.new_user()
    await api.one_to_one(alice, bob)
    await api.group(alice, carol)
    await befriend(api, dan, carol)
    b, c = await sockets(bob.token), await sockets(carol.token)
    await sockets(alice.token)
    assert (await b.next_message(presence_of(alice, True)))["online"] is True
    await sockets(dan.token)  # the marker: carol hears dan after anything about alice
    before = await until_marker(c, presence_of(dan, True))
    assert [m for m in before if m.get("type") == "presence"] == []


async def test_presence_route_answers_only_about_users_the_caller_may_see(api: Api, sockets, trio) -> None:
    alice, bob, carol = trio
    group = await api.group(alice, carol)
    await befriend(api, alice, bob)
    await sockets(carol.token)
    dan = await api.new_user()
    resp = await api.get("/user/presence", alice.token, ids=f"{dan.id},{carol.id},{bob.id},{alice.id},987654,{bob.id}")
    assert resp.status == 200, resp.body
    assert [entry["id"] for entry in resp.body] == sorted([alice.id, bob.id, carol.id])
    assert {entry["id"]: entry["online"] for entry in resp.body}[carol.id] is True
    assert {entry["id"]: entry["online"] for entry in resp.body}[bob.id] is False
    # A stranger learns nothing, not even that the users exist.
    assert (await api.get("/user/presence", dan.token, ids=f"{alice.id},{carol.id}")).body == []
    quit_resp = await api.get(f"/chatroom/quit/{group}", carol.token, quitUserId=carol.id)
    assert quit_resp.status == 200
    assert (await api.get("/user/presence", alice.token, ids=str(carol.id))).body == []


@pytest.mark.parametrize(
    "params",
    [{}, {"ids": ""}, {"ids": "a"}, {"ids": "1,,2"}, {"ids": "1,"}, {"ids": "-1"}, {"ids": "0"},
     {"ids": str(2**63)}, {"ids": ",".join(str(i) for i in range(1, 102))}, {"ids": "١"}],
)  # fmt: skip
async def test_presence_route_refuses_bad_ids(api: Api, trio, params: dict[str, str]) -> None:
    alice, _, _ = trio
    resp = await api.get("/user/presence", alice.token, **params)
    assert_error(resp.status, resp.body, 400)


async def test_presence_sidecar_reads_anyone_by_username(api: Api, sockets, trio) -> None:
    alice, bob, _ = trio
    await sockets(alice.token)
    key = {"X-Api-Key": API_KEY}
    params = [("username", bob.username), ("username", alice.username)]
    resp = await api.request("GET", "/sidecar/v1/presence", params=params, headers=key)  # type: ignore[arg-type]
    assert resp.status == 200, resp.body
    assert [(e["username"], e["id"], e["online"]) for e in resp.body] == [
        (bob.username, bob.id, False),
        (alice.username, alice.id, True),
    ]
    assert resp.body[1]["lastSeen"].endswith("Z") and resp.body[0]["lastSeen"] is None
    unknown = await api.request("GET", "/sidecar/v1/presence", params={"username": "nobody"}, headers=key)
    assert_error(unknown.status, unknown.body, 400)
    wrong = await api.request("GET", "/sidecar/v1/presence", params={"username": bob.username}, token=alice.token)
    assert_error(wrong.status, wrong.body, 401)


async def test_presence_route_needs_a_login(api: Api) -> None:
    resp = await api.get("/user/presence", None, ids="1")
    assert_error(resp.status, resp.body, 401)


# --- live room list -----------------------------------------------------------------------------------------------


async def test_live_room_list_added_to_a_group_then_removed(api: Api, sockets, trio) -> None:
    alice, bob, _ = trio
    room = await api.group(alice)
    b = await sockets(bob.token)
    other_tab = await sockets(bob.token)
    await api.get(f"/chatroom/join/{room}", alice.token, joinUsername=bob.username)
    listed = (await api.get("/chatroom/list", bob.token)).body
    for client in (b, other_tab):
        added = await client.next_message(lambda m: m.get("type") == "roomAdded")
        assert added == {"type": "roomAdded", "chatroom": listed[0]}
    await api.get(f"/chatroom/quit/{room}", alice.token, quitUserId=bob.id)
    for client in (b, other_tab):
        assert await client.next_message(lambda m: m.get("type") == "roomRemoved") == {
            "type": "roomRemoved",
            "chatroomId": room,
        }


async def test_live_room_list_one_to_one_room_appears_for_both(api: Api, sockets, trio) -> None:
    alice, bob, _ = trio
    a, b = await sockets(alice.token), await sockets(bob.token)
    room = await api.one_to_one(alice, bob)
    added_b = await b.next_message(lambda m: m.get("type") == "roomAdded")
    assert added_b["chatroom"] == (await api.get("/chatroom/list", bob.token)).body[0]
    assert added_b["chatroom"]["id"] == room and added_b["chatroom"]["name"] == alice.nick_name
    assert (await a.next_message(lambda m: m.get("type") == "roomAdded"))["chatroom"]["name"] == bob.nick_name
    await api.one_to_one(bob, alice)  # the same room again: nothing new appears
    await api.get("/chatroom/create-group", alice.token, name="marker")
    before = await until_marker(a, lambda m: m.get("type") == "roomAdded")
    assert before == []


async def test_live_friend_request_and_answers(api: Api, sockets, trio) -> None:
    alice, bob, carol = trio
    a, b = await sockets(alice.token), await sockets(bob.token)
    sent = await api.post("/friendship/add", {"username": bob.username, "reason": "hi"}, alice.token)
    arrived = await b.next_message(lambda m: m.get("type") == "friendRequest")
    assert arrived == {"type": "friendRequest", "request": {**sent.body, "fromUser": public_profile(alice)}}
    await api.get(f"/friendship/agree/{alice.id}", bob.token)
    to_alice = await a.next_message(lambda m: m.get("type") == "friendAdded")
    to_bob = await b.next_message(lambda m: m.get("type") == "friendAdded")
    assert to_alice["user"] == (await api.get("/friendship/list", alice.token)).body[0]
    assert to_bob["user"] == (await api.get("/friendship/list", bob.token)).body[0]

    await api.post("/friendship/add", {"username": carol.username}, alice.token)
    rejected = await api.get(f"/friendship/reject/{alice.id}", carol.token)
    answer = await a.next_message(lambda m: m.get("type") == "friendRequest")
    assert answer["request"] == {**rejected.body, "toUser": public_profile(carol)}
    assert answer["request"]["status"] == 2


# --- group roles --------------------------------------------------------------------------------------------------


async def test_roles_creator_owns_and_makes_admins_who_manage_members(api: Api, sockets, trio) -> None:
    alice, bob, carol = trio
    dan = await api.new_user()
    room = await api.group(alice, bob)
    assert await roles(api, bob, room) == {alice.id: "owner", bob.id: "member"}
    b = await sockets(bob.token)
    await b.join(bob, room)

    made = await api.get(f"/chatroom/set-role/{room}", alice.token, userId=bob.id, role="admin")
    assert made.status == 200 and made.body == {"chatroomId": room, "userId": bob.id, "role": "admin"}
    assert await b.next_message(lambda m: m.get("type") == "roleChanged") == {
        "type": "roleChanged",
        "chatroomId": room,
        "userId": bob.id,
        "role": "admin",
    }
    assert (await api.get(f"/chatroom/join/{room}", bob.token, joinUsername=carol.username)).status == 200
    assert (await api.get(f"/chatroom/join/{room}", bob.token, joinUsername=dan.username)).status == 200
    assert (await api.get(f"/chatroom/quit/{room}", bob.token, quitUserId=dan.id)).status == 200
    # A member manages nobody; an admin does not remove the owner.
    for user, path, params in [
        (carol, f"/chatroom/join/{room}", {"joinUsername": dan.username}),
        (carol, f"/chatroom/quit/{room}", {"quitUserId": bob.id}),
        (bob, f"/chatroom/quit/{room}", {"quitUserId": alice.id}),
    ]:
        resp = await api.get(path, user.token, **params)
        assert_error(resp.status, resp.body, 403)
    assert await roles(api, alice, room) == {alice.id: "owner", bob.id: "admin", carol.id: "member"}

    back = await api.get(f"/chatroom/set-role/{room}", alice.token, userId=bob.id, role="member")
    assert back.body["role"] == "member"
    resp = await api.get(f"/chatroom/join/{room}", bob.token, joinUsername=dan.username)
    assert_error(resp.status, resp.body, 403)
    # Anyone may leave.
    assert (await api.get(f"/chatroom/quit/{room}", carol.token, quitUserId=carol.id)).status == 200
    assert await roles(api, alice, room) == {alice.id: "owner", bob.id: "member"}


async def test_roles_leaving_owner_is_succeeded_by_the_longest_standing_admin_else_member(
    api: Api, sockets, trio
) -> None:
    alice, bob, carol = trio
    dan = await api.new_user()
    room = await api.group(alice, bob, carol, dan)
    await api.get(f"/chatroom/set-role/{room}", alice.token, userId=dan.id, role="admin")
    await api.get(f"/chatroom/set-role/{room}", alice.token, userId=carol.id, role="admin")
    b = await sockets(bob.token)
    await b.join(bob, room)

    assert (await api.get(f"/chatroom/quit/{room}", alice.token, quitUserId=alice.id)).status == 200
    changed = await b.next_message(lambda m: m.get("type") == "roleChanged")
    assert changed == {"type": "roleChanged", "chatroomId": room, "userId": carol.id, "role": "owner"}
    assert await roles(api, bob, room) == {bob.id: "member", carol.id: "owner", dan.id: "admin"}

    # The new owner removes the remaining admin and leaves: the longest-standing member takes over.
    assert (await api.get(f"/chatroom/quit/{room}", carol.token, quitUserId=dan.id)).status == 200
    assert (await api.get(f"/chatroom/quit/{room}", carol.token, quitUserId=carol.id)).status == 200
    assert await roles(api, bob, room) == {bob.id: "owner"}


async def test_roles_set_role_authorization_matrix_changes_nothing(api: Api, trio) -> None:
    alice, bob, carol = trio
    dan, eve = await api.new_user(), await api.new_user()
    room = await api.group(alice, bob, carol)
    await api.get(f"/chatroom/set-role/{room}", alice.token, userId=bob.id, role="admin")
    direct = await api.one_to_one(alice, dan)
    cases = [
        (eve, f"/chatroom/set-role/{room}", {"userId": carol.id, "role": "admin"}, 403),  # outsider
        (carol, f"/chatroom/set-role/{room}", {"userId": carol.id, "role": "admin"}, 403),  # member
        (bob, f"/chatroom/set-role/{room}", {"userId": carol.id, "role": "admin"}, 403),  # admin
        (bob, f"/chatroom/set-role/{room}", {"userId": alice.id, "role": "member"}, 403),
        (alice, f"/chatroom/set-role/{room}", {"userId": alice.id, "role": "member"}, 400),  # the owner's own
        (alice, f"/chatroom/set-role/{room}", {"userId": dan.id, "role": "admin"}, 400),  # not a member
        (alice, f"/chatroom/set-role/{room}", {"userId": carol.id, "role": "owner"}, 400),
        (alice, f"/chatroom/set-role/{room}", {"userId": carol.id}, 400),
        (alice, f"/chatroom/set-role/{room}", {"role": "admin"}, 400),
        (alice, f"/chatroom/set-role/{room}", {"userId": "x", "role": "admin"}, 400),
        (alice, f"/chatroom/set-role/{direct}", {"userId": dan.id, "role": "admin"}, 400),  # one-to-one
        (alice, "/chatroom/set-role/987654", {"userId": carol.id, "role": "admin"}, 404),
        (alice, "/chatroom/set-role/abc", {"userId": carol.id, "role": "admin"}, 400),
        (None, f"/chatroom/set-role/{room}", {"userId": carol.id, "role": "admin"}, 401),
    ]
    for user, path, params, status in cases:
        resp = await api.get(path, user.token if user else None, **params)
        assert_error(resp.status, resp.body, status)
    assert await roles(api, alice, room) == {alice.id: "owner", bob.id: "admin", carol.id: "member"}
    assert await roles(api, alice, direct) == {alice.id: "member", dan.id: "member"}


async def test_roles_setting_the_same_role_again_sends_nothing(api: Api, sockets, trio) -> None:
    alice, bob, _ = trio
    room = await api.group(alice, bob)
    b = await sockets(bob.token)
    await b.join(bob, room)
    again = await api.get(f"/chatroom/set-role/{room}", alice.token, userId=bob.id, role="member")
    assert again.status == 200 and again.body["role"] == "member"
    await api.get(f"/chatroom/set-role/{room}", alice.token, userId=bob.id, role="admin")
    assert await until_marker(b, lambda m: m.get("type") == "roleChanged") == []


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
)


async def test_roles_and_presence_hostile_queries_never_fail_the_server(api: Api, trio) -> None:
    alice, bob, _ = trio
    room = await api.group(alice, bob)
    loop = asyncio.get_running_loop()
    text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
    value = text | st.integers(min_value=-(2**70), max_value=2**70).map(str) | st.sampled_from([str(bob.id), "admin"])
    set_role = st.fixed_dictionaries({}, optional={"userId": value, "role": value})
    presence = st.fixed_dictionaries({}, optional={"ids": value | text.map(lambda t: "1," + t)})
    requests = st.tuples(st.just(f"/chatroom/set-role/{room}"), set_role) | st.tuples(
        st.just("/user/presence"), presence
    )
    tried: list[object] = []

    @SETTINGS
    @given(requests)
    def property_test(request: tuple[str, dict[str, str]]) -> None:
        tried.append(request)
        path, params = request
        future = asyncio.run_coroutine_threadsafe(api.request("GET", path, token=alice.token, params=params), loop)
        resp = future.result(timeout=30)
        assert resp.status < 500, (path, params, resp.body)
        if resp.status >= 400:
            assert set(resp.body) == {"statusCode", "message", "error"}
        elif path == "/user/presence":
            assert all(set(entry) == {"id", "online", "lastSeen"} for entry in resp.body)

    await asyncio.to_thread(property_test)
    assert len(tried) >= 50
    assert set((await roles(api, alice, room)).values()) <= {"owner", "admin", "member"}
    assert (await roles(api, alice, room))[alice.id] == "owner"
