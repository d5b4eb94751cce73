"""Query strings and path segments are checked by the route's model (chatsvc/models.py), with the texts clients know."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatsvc.config import Config
from chatsvc.models import MAX_ID
from tests.conftest import make_config
from tests.helpers import Api, assert_error

API_KEY = "parameters-test-key"
TOO_BIG = str(MAX_ID + 1)
ID_RANGE = f"between 1 and {MAX_ID}"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, api_key=API_KEY)


# (method, path, query, the exact message of the 400 answer); every one is refused before any lookup.
CASES = [
    ("GET", "/chatroom/create-one-to-one", {}, "friendId is required"),
    ("GET", "/chatroom/create-one-to-one", {"friendId": " "}, "friendId is required"),
    ("GET", "/chatroom/create-one-to-one", {"friendId": "abc"}, "friendId must be an integer"),
    ("GET", "/chatroom/create-one-to-one", {"friendId": "1.5"}, "friendId must be an integer"),
    ("GET", "/chatroom/create-one-to-one", {"friendId": "0"}, f"friendId must be an integer {ID_RANGE}"),
    ("GET", "/chatroom/create-one-to-one", {"friendId": TOO_BIG}, f"friendId must be an integer {ID_RANGE}"),
    ("GET", "/chatroom/findChatroom", {"userId1": "1"}, "userId2 is required"),
    ("GET", "/chatroom/findChatroom", {"userId1": "x", "userId2": "y"}, "userId1 must be an integer"),
    ("GET", "/chatroom/list", {"name": "n" * 51}, "name must be at most 50 characters"),
    ("GET", "/chatroom/create-group", {}, "name is required"),
    ("GET", "/chatroom/create-group", {"name": " \t"}, "name must not be empty"),
    ("GET", "/chatroom/create-group", {"name": "n" * 51}, "name must be at most 50 characters"),
    ("GET", "/chatroom/members", {"chatroomId": "x"}, "chatroomId must be an integer"),
    (
        "GET",
        "/chatroom/members",
        {"chatroomId": TOO_BIG},
        f"chatroomId must be an integer between {-MAX_ID} and {MAX_ID}",
    ),
    ("GET", "/chatroom/info/abc", {}, "id must be an integer"),
    ("GET", "/chatroom/join/1", {}, "joinUsername is required"),
    ("GET", "/chatroom/join/1", {"joinUsername": "u" * 51}, "joinUsername must be at most 50 characters"),
    ("GET", "/chatroom/quit/1", {"quitUserId": "-1"}, f"quitUserId must be an integer {ID_RANGE}"),
    ("GET", "/chat-history/list", {}, "chatroomId is required"),
    ("GET", "/chat-history/list", {"chatroomId": "1", "limit": "1001"}, "limit must be an integer between 1 and 1000"),
    ("GET", "/chat-history/list", {"chatroomId": "1", "beforeId": "0"}, f"beforeId must be an integer {ID_RANGE}"),
    (
        "GET",
        "/chat-history/list",
        {"chatroomId": "1", "afterId": "-1"},
        f"afterId must be an integer between 0 and {MAX_ID}",
    ),
    ("GET", "/friendship/agree/x", {}, "id must be an integer"),
    ("GET", "/friendship/reject/0", {}, f"id must be an integer {ID_RANGE}"),
    ("GET", "/friendship/remove/1e3", {}, "id must be an integer"),
    ("GET", "/friendship/list", {"name": "n" * 51}, "name must be at most 50 characters"),
    ("GET", "/favorite/add", {}, "chatHistoryId is required"),
    ("GET", "/favorite/del", {"id": "abc"}, "id must be an integer"),
    ("GET", "/user/find", {}, "username is required"),
    ("GET", "/user/find", {"username": " "}, "username must not be empty"),
    ("GET", "/user/find", {"username": "u" * 51}, "username must be at most 50 characters"),
    ("GET", "/user/register-captcha", {}, "address is required"),
    ("GET", "/user/register-captcha", {"address": "nope"}, "address is not a valid email address"),
    ("GET", "/user/update_password/captcha", {"address": "a@b"}, "address is not a valid email address"),
    ("DELETE", "/sidecar/v1/rooms/x/members", {"username": "ada"}, "id must be an integer"),
    ("DELETE", "/sidecar/v1/rooms/1/members", {}, "username must be a non-empty array of usernames"),
    ("POST", "/sidecar/v1/rooms/0/messages", {}, f"id must be an integer {ID_RANGE}"),
]


@pytest.mark.parametrize(("method", "path", "query", "message"), CASES, ids=[f"{c[1]} {c[3]}" for c in CASES])
async def test_query_parameters_bad_values_are_400_with_the_usual_text(
    api: Api, method: str, path: str, query: dict[str, str], message: str
) -> None:
    user = await api.new_user()
    resp = await api.request(method, path, token=user.token, params=query, headers={"X-Api-Key": API_KEY})
    assert_error(resp.status, resp.body, 400)
    assert resp.body["message"] == message


async def test_query_parameters_repeated_usernames_are_all_read(api: Api) -> None:
    """A repeated query parameter (the sidecar's ?username=) is checked item by item, with the list's limit."""
    too_many = [("username", f"user{n}") for n in range(11)]
    resp = await api.request("DELETE", "/sidecar/v1/rooms/1/members", params=too_many, headers={"X-Api-Key": API_KEY})
    assert_error(resp.status, resp.body, 400)
    assert resp.body["message"] == "username may name at most 10 users"
    blank = [("username", "ada"), ("username", " ")]
    resp = await api.request("DELETE", "/sidecar/v1/rooms/1/members", params=blank, headers={"X-Api-Key": API_KEY})
    assert_error(resp.status, resp.body, 400)
    assert resp.body["message"] == "username[] must not be empty"
