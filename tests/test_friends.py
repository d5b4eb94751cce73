"""Friends: requests (add, list, agree, reject), the symmetric friend list, and removal."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from chatsvc.config import Config
from chatsvc.state import STATE
from chatsvc.store.friends import insert_friend_request
from tests.helpers import Api, User, assert_error, public_profile
from tests.test_query_plans import NOT_QUERIES, plan_scans

REQUEST_KEYS = {"id", "fromUserId", "toUserId", "reason", "status", "createTime", "updateTime"}


def friend_entry(user: User) -> dict[str, Any]:
    """A user as the friend list shows them."""
    return {key: user.profile[key] for key in ("id", "username", "nickName", "email", "headPic")}


async def ask(api: Api, sender: User, receiver: User, reason: str = "hi") -> dict[str, Any]:
    resp = await api.post("/friendship/add", {"username": receiver.username, "reason": reason}, sender.token)
    assert resp.status == 201, resp.body
    return resp.body


async def befriend(api: Api, a: User, b: User) -> None:
    await ask(api, a, b)
    resp = await api.get(f"/friendship/agree/{a.id}", b.token)
    assert resp.status == 200, resp.body


async def friends_of(api: Api, user: User, **params: Any) -> list[dict[str, Any]]:
    resp = await api.get("/friendship/list", user.token, **params)
    assert resp.status == 200, resp.body
    return resp.body


async def requests_of(api: Api, user: User) -> dict[str, Any]:
    resp = await api.get("/friendship/request_list", user.token)
    assert resp.status == 200, resp.body
    return resp.body


async def test_friendship_add_creates_pending_request_listed_for_both(api: Api, trio) -> None:
    alice, bob, carol = trio
    created = await ask(api, alice, bob, "met at the meetup")
    assert set(created) == REQUEST_KEYS
    assert created["fromUserId"] == alice.id and created["toUserId"] == bob.id
    assert created["reason"] == "met at the meetup" and created["status"] == 0
    assert created["createTime"].endswith("Z")

    assert await requests_of(api, bob) == {"toMe": [{**created, "fromUser": public_profile(alice)}], "fromMe": []}
    assert await requests_of(api, alice) == {"toMe": [], "fromMe": [{**created, "toUser": public_profile(bob)}]}
    assert await requests_of(api, carol) == {"toMe": [], "fromMe": []}
    # Not friends until agreed.
    assert await friends_of(api, alice) == []
    assert await friends_of(api, bob) == []


async def test_friendship_add_reason_is_optional(api: Api, trio) -> None:
    alice, bob, _ = trio
    resp = await api.post("/friendship/add", {"username": bob.username}, alice.token)
    assert resp.status == 201 and resp.body["reason"] == "", resp.body


async def test_friendship_request_list_newest_first_in_both_boxes(api: Api, trio) -> None:
    alice, bob, carol = trio
    to_alice_1 = await ask(api, bob, alice)
    from_alice = await ask(api, alice, carol)
    to_alice_2 = await ask(api, carol, bob)  # not alice's
    lists = await requests_of(api, alice)
    assert [r["id"] for r in lists["toMe"]] == [to_alice_1["id"]]
    assert [r["id"] for r in lists["fromMe"]] == [from_alice["id"]]
    assert lists["fromMe"][0]["toUser"] == public_profile(carol)
    assert to_alice_2["id"] not in [r["id"] for r in lists["toMe"] + lists["fromMe"]]

    dave = await api.new_user()
    first = await ask(api, alice, dave)
    second = await ask(api, bob, dave)
    assert [r["id"] for r in (await requests_of(api, dave))["toMe"]] == [second["id"], first["id"]]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"reason": "x"}, "username is required"),
        ({"username": "", "reason": "x"}, "username must not be empty"),
        ({"username": 42, "reason": "x"}, "username must be a string"),
        ({"username": "nobody-has-this-name", "reason": "x"}, "User not found"),
        ({"username": "BOB", "reason": "x" * 101}, "reason must be at most 100 characters"),
        ({"username": "BOB", "reason": 7}, "reason must be a string"),
        ([], "must be a JSON object"),
    ],
)
async def test_friendship_add_refuses_bad_input(api: Api, trio, body: Any, fragment: str) -> None:
    alice, bob, _ = trio
    if isinstance(body, dict) and body.get("username") == "BOB":
        body = {**body, "username": bob.username}
    resp = await api.post("/friendship/add", body, alice.token)
    assert_error(resp.status, resp.body, 400)
    assert fragment in resp.body["message"]
    assert await requests_of(api, bob) == {"toMe": [], "fromMe": []}


async def test_friendship_add_refuses_non_json_body(api: Api, trio) -> None:
    alice, _, _ = trio
    resp = await api.request("POST", "/friendship/add", token=alice.token, data=b"{not json")
    assert_error(resp.status, resp.body, 400)


async def test_friendship_add_refuses_yourself(api: Api, trio) -> None:
    alice, _, _ = trio
    resp = await api.post("/friendship/add", {"username": alice.username, "reason": "me"}, alice.token)
    assert_error(resp.status, resp.body, 400)
    assert "yourself" in resp.body["message"]
    assert await requests_of(api, alice) == {"toMe": [], "fromMe": []}


async def test_friendship_add_refuses_a_second_pending_request_either_way(api: Api, trio) -> None:
    alice, bob, _ = trio
    first = await ask(api, alice, bob)
    again = await api.post("/friendship/add", {"username": bob.username, "reason": "again"}, alice.token)
    assert_error(again.status, again.body, 400)
    assert "already sent this user" in again.body["message"]
    back = await api.post("/friendship/add", {"username": alice.username, "reason": "back"}, bob.token)
    assert_error(back.status, back.body, 400)
    assert "agree to it instead" in back.body["message"]
    assert [r["id"] for r in (await requests_of(api, bob))["toMe"]] == [first["id"]]
    assert (await requests_of(api, bob))["fromMe"] == []


async def test_friendship_add_refuses_existing_friends_from_either_side(api: Api, trio) -> None:
    alice, bob, _ = trio
    await befriend(api, alice, bob)
    for sender, receiver in ((alice, bob), (bob, alice)):
        resp = await api.post("/friendship/add", {"username": receiver.username, "reason": "x"}, sender.token)
        assert_error(resp.status, resp.body, 400)
        assert "already friends" in resp.body["message"]


async def test_friendship_agree_makes_both_friends_once(api: Api, trio) -> None:
    alice, bob, carol = trio
    created = await ask(api, alice, bob)
    resp = await api.get(f"/friendship/agree/{alice.id}", bob.token)
    assert resp.status == 200
    assert resp.body["id"] == created["id"] and resp.body["status"] == 1
    assert set(resp.body) == REQUEST_KEYS

    assert await friends_of(api, alice) == [friend_entry(bob)]
    assert await friends_of(api, bob) == [friend_entry(alice)]
    assert await friends_of(api, carol) == []
    listed = await requests_of(api, alice)
    assert [(r["id"], r["status"]) for r in listed["fromMe"]] == [(created["id"], 1)]

    # Agreed already: nothing pends any more.
    again = await api.get(f"/friendship/agree/{alice.id}", bob.token)
    assert_error(again.status, again.body, 400)
    assert await friends_of(api, bob) == [friend_entry(alice)]


async def test_friendship_agree_settles_requests_sent_both_ways(server: TestServer, api: Api, trio) -> None:
    alice, bob, _ = trio
    # The API refuses to ask back, so seed the crossed state as older data or a client of the original could leave it.
    first = await ask(api, alice, bob)
    async with server.app[STATE].db.transaction() as conn:
        crossed = await insert_friend_request(conn, bob.id, alice.id, "me too")

    resp = await api.get(f"/friendship/agree/{alice.id}", bob.token)
    assert resp.status == 200 and resp.body["id"] == first["id"]
    statuses = {r["id"]: r["status"] for r in (await requests_of(api, alice))["fromMe"]}
    statuses |= {r["id"]: r["status"] for r in (await requests_of(api, alice))["toMe"]}
    assert statuses == {first["id"]: 1, crossed["id"]: 1}
    assert await friends_of(api, alice) == [friend_entry(bob)]
    assert await friends_of(api, bob) == [friend_entry(alice)]
    # Nothing left to agree from the other side.
    other = await api.get(f"/friendship/agree/{bob.id}", alice.token)
    assert_error(other.status, other.body, 400)


async def test_friendship_agree_needs_a_pending_request_to_the_caller(api: Api, trio) -> None:
    alice, bob, carol = trio
    await ask(api, alice, bob)
    # The sender cannot agree to their own request, and carol was not asked.
    for who, from_id in ((alice, bob.id), (carol, alice.id), (bob, carol.id), (bob, 999999), (bob, bob.id)):
        resp = await api.get(f"/friendship/agree/{from_id}", who.token)
        assert_error(resp.status, resp.body, 400)
        assert resp.body["message"] == "There is no pending friend request from this user"
    assert await friends_of(api, alice) == []
    assert (await requests_of(api, bob))["toMe"][0]["status"] == 0


async def test_friendship_reject_marks_rejected_and_allows_asking_again(api: Api, trio) -> None:
    alice, bob, _ = trio
    created = await ask(api, alice, bob)
    resp = await api.get(f"/friendship/reject/{alice.id}", bob.token)
    assert resp.status == 200
    assert resp.body["id"] == created["id"] and resp.body["status"] == 2
    assert await friends_of(api, alice) == [] and await friends_of(api, bob) == []
    assert (await requests_of(api, alice))["fromMe"][0]["status"] == 2

    again = await api.get(f"/friendship/reject/{alice.id}", bob.token)
    assert_error(again.status, again.body, 400)
    agree = await api.get(f"/friendship/agree/{alice.id}", bob.token)
    assert_error(agree.status, agree.body, 400)

    second = await ask(api, alice, bob, "please")
    assert second["id"] != created["id"] and second["status"] == 0


async def test_friendship_reject_needs_a_pending_request(api: Api, trio) -> None:
    alice, bob, _ = trio
    resp = await api.get(f"/friendship/reject/{alice.id}", bob.token)
    assert_error(resp.status, resp.body, 400)
    assert resp.body["message"] == "There is no pending friend request from this user"


async def test_friendship_list_is_symmetric_and_filters_by_nickname(api: Api, trio) -> None:
    alice, bob, carol = trio
    await befriend(api, alice, bob)  # alice asked
    await befriend(api, carol, alice)  # carol asked
    assert await friends_of(api, alice) == [friend_entry(bob), friend_entry(carol)]
    assert await friends_of(api, carol) == [friend_entry(alice)]

    # nickNames are "Nick <username>"; the filter is a case-insensitive substring.
    assert await friends_of(api, alice, name=bob.username.upper()) == [friend_entry(bob)]
    assert await friends_of(api, alice, name="nick") == [friend_entry(bob), friend_entry(carol)]
    assert await friends_of(api, alice, name="  ") == [friend_entry(bob), friend_entry(carol)]
    assert await friends_of(api, alice, name="zzz") == []
    # A user's own friends only, even when the filter would match others.
    assert await friends_of(api, bob, name=carol.username) == []


async def test_friendship_list_refuses_an_overlong_name(api: Api, trio) -> None:
    alice, _, _ = trio
    resp = await api.get("/friendship/list", alice.token, name="x" * 51)
    assert_error(resp.status, resp.body, 400)


async def test_friendship_remove_ends_it_both_ways(api: Api, trio) -> None:
    alice, bob, carol = trio
    await befriend(api, alice, bob)
    await befriend(api, alice, carol)
    # Bob was asked, and removes: it ends for both.
    resp = await api.get(f"/friendship/remove/{alice.id}", bob.token)
    assert resp.status == 200 and resp.body == "Friend removed"
    assert await friends_of(api, bob) == []
    assert await friends_of(api, alice) == [friend_entry(carol)]

    again = await api.get(f"/friendship/remove/{alice.id}", bob.token)
    assert_error(again.status, again.body, 400)
    assert again.body["message"] == "This user is not your friend"
    # And they may become friends again.
    await befriend(api, bob, alice)
    assert await friends_of(api, alice) == [friend_entry(bob), friend_entry(carol)]


async def test_friendship_remove_refuses_a_non_friend(api: Api, trio) -> None:
    alice, bob, carol = trio
    await befriend(api, bob, carol)
    for target in (carol.id, alice.id, 999999):
        resp = await api.get(f"/friendship/remove/{target}", alice.token)
        assert_error(resp.status, resp.body, 400)
    assert await friends_of(api, bob) == [friend_entry(carol)]


@pytest.mark.parametrize("bad_id", ["abc", "0", "-3", "1.5", "99999999999999999999"])
@pytest.mark.parametrize("route", ["agree", "reject", "remove"])
async def test_friendship_routes_refuse_bad_ids(api: Api, trio, route: str, bad_id: str) -> None:
    alice, _, _ = trio
    resp = await api.get(f"/friendship/{route}/{bad_id}", alice.token)
    assert_error(resp.status, resp.body, 400)
    assert resp.body["message"].startswith("id must be an integer")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/friendship/add"),
        ("GET", "/friendship/request_list"),
        ("GET", "/friendship/agree/1"),
        ("GET", "/friendship/reject/1"),
        ("GET", "/friendship/list"),
        ("GET", "/friendship/remove/1"),
    ],
)
async def test_friendship_routes_need_login(api: Api, method: str, path: str) -> None:
    resp = await api.request(method, path, json={"username": "x", "reason": "y"} if method == "POST" else None)
    assert_error(resp.status, resp.body, 401)
    bad = await api.request(method, path, token="not-a-token")
    assert_error(bad.status, bad.body, 401)


async def test_friendship_queries_use_indexes(server: TestServer, config: Config, api: Api, trio) -> None:
    alice, bob, carol = trio
    statements: set[str] = set()
    db = server.app[STATE].db
    await db.set_trace(statements.add)
    await ask(api, alice, bob)
    await api.post("/friendship/add", {"username": alice.username, "reason": "x"}, bob.token)
    await requests_of(api, bob)
    await api.get(f"/friendship/agree/{alice.id}", bob.token)
    await ask(api, carol, alice)
    await api.get(f"/friendship/reject/{carol.id}", alice.token)
    await friends_of(api, alice)
    await friends_of(api, alice, name="nick")
    await api.get(f"/friendship/remove/{bob.id}", alice.token)
    await db.set_trace(None)
    queries = {s for s in statements if not NOT_QUERIES.match(s) and "friend" in s}
    assert len(queries) >= 7, queries
    assert plan_scans(config.db_path, queries) == {}
