"""Edit, delete and search (issue 15): editMessage, deleteMessage, /chat-history/search, and the sidecar's routes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsvc.config import Config
from tests.conftest import make_config
from tests.helpers import Api, SocketClient, User, assert_ack_error, assert_error
from tests.test_hostile_input import EXAMPLES, SETTINGS, drive, id_like, json_values, nasty_text, run_on_loop

pytestmark = pytest.mark.both_engines

API_KEY = "test-sidecar-key"
DELETED_KEYS = {"id", "chatroomId", "senderId", "createTime", "sender", "deleted", "content", "type"}


@pytest.fixture
def config(tmp_path: Path, request: pytest.FixtureRequest) -> Config:
    """The sidecar on; ``edit_window`` from an indirect parameter, else the default."""
    return make_config(tmp_path, api_key=API_KEY, edit_window=getattr(request, "param", 86400))


async def sidecar(api: Api, method: str, path: str, json: Any = None, **params: str) -> Any:
    return await api.request(
        method, "/sidecar/v1" + path, json=json, params=params or None, headers={"X-Api-Key": API_KEY}
    )


async def search(api: Api, user: User, q: str, **params: Any) -> Any:
    return await api.get("/chat-history/search", user.token, q=q, **params)


async def found_ids(api: Api, user: User, q: str, **params: Any) -> list[int]:
    resp = await search(api, user, q, **params)
    assert resp.status == 200, resp.body
    return [message["id"] for message in resp.body]


def by_id(history: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {message["id"]: message for message in history}


# -- edit ----------------------------------------------------------------------------------------------------------


async def test_edit_acks_the_updated_message_tells_the_room_and_history_shows_it(api: Api, joined) -> None:
    alice, bob, room, a, b = joined
    sent = await a.send(alice, room, "helo")
    await b.next_chat()
    assert sent["editedAt"] is None
    ack = await a.call("editMessage", {"messageId": sent["id"], "content": "hello"})
    assert ack["id"] == sent["id"] and ack["content"] == "hello" and ack["editedAt"] is not None
    assert ack["createTime"] == sent["createTime"] and ack["sender"] == sent["sender"]
    notice = await b.next_message(lambda m: m.get("type") == "messageUpdated")
    assert notice == {"type": "messageUpdated", "message": ack}
    # The sender's own socket hears it too.
    await a.next_message(lambda m: m.get("type") == "messageUpdated")
    assert by_id(await api.history(bob, room))[sent["id"]] == ack


async def test_only_the_sender_may_edit_and_nothing_changes_otherwise(api: Api, joined, sockets) -> None:
    alice, bob, room, a, b = joined
    sent = await a.send(alice, room, "mine")
    outsider = await api.new_user()
    o = await sockets(outsider.token)
    assert_ack_error(await b.call("editMessage", {"messageId": sent["id"], "content": "bob's"}), 403)
    assert_ack_error(await o.call("editMessage", {"messageId": sent["id"], "content": "outsider"}), 403)
    assert_ack_error(await a.call("editMessage", {"messageId": sent["id"], "content": "x", "userId": bob.id}), 403)
    assert_ack_error(await a.call("editMessage", {"messageId": 10**9, "content": "x"}), 404)
    assert by_id(await api.history(alice, room))[sent["id"]] == sent
    assert a.sio.connected and b.sio.connected and o.sio.connected


async def test_a_member_who_left_cannot_edit_or_delete(api: Api, trio, sockets) -> None:
    alice, _bob, carol = trio
    resp = await api.get("/chatroom/create-group", alice.token, name="g")
    assert resp.status == 200, resp.body
    room = resp.body if isinstance(resp.body, int) else resp.body["id"]
    resp = await api.get(f"/chatroom/join/{room}", alice.token, joinUsername=carol.username)
    assert resp.status == 200, resp.body
    c = await sockets(carol.token)
    await c.join(carol, room)
    sent = await c.send(carol, room, "before leaving")
    resp = await api.get(f"/chatroom/quit/{room}", carol.token, quitUserId=carol.id)
    assert resp.status == 200, resp.body
    assert_ack_error(await c.call("editMessage", {"messageId": sent["id"], "content": "after"}), 403)
    assert_ack_error(await c.call("deleteMessage", {"messageId": sent["id"]}), 403)
    assert by_id(await api.history(alice, room))[sent["id"]]["content"] == "before leaving"


async def test_only_text_messages_can_be_edited(api: Api, joined) -> None:
    alice, _bob, room, a, _b = joined
    picture = await a.send(alice, room, "http://pics/cat.png", kind="image")
    assert_ack_error(await a.call("editMessage", {"messageId": picture["id"], "content": "http://x"}), 400)
    assert by_id(await api.history(alice, room))[picture["id"]] == picture


async def test_edit_is_refused_after_the_edit_window(api: Api, joined, db_rows) -> None:
    alice, _bob, room, a, _b = joined
    sent = await a.send(alice, room, "old")
    # Sent two days ago, as far as the database knows (the default window is one day).
    db_rows("UPDATE chat_history SET create_time = ? WHERE id = ?", ("2000-01-01T00:00:00.000Z", sent["id"]))
    ack = await a.call("editMessage", {"messageId": sent["id"], "content": "new"})
    assert_ack_error(ack, 403)
    assert by_id(await api.history(alice, room))[sent["id"]]["content"] == "old"
    # Deleting has no window.
    assert await a.call("deleteMessage", {"messageId": sent["id"]}) == {
        "id": sent["id"],
        "chatroomId": room,
        "deleted": True,
    }


@pytest.mark.parametrize("config", [0], indirect=True)
async def test_an_edit_window_of_0_means_no_limit(api: Api, joined, db_rows) -> None:
    alice, _bob, room, a, _b = joined
    sent = await a.send(alice, room, "old")
    db_rows("UPDATE chat_history SET create_time = ? WHERE id = ?", ("2000-01-01T00:00:00.000Z", sent["id"]))
    ack = await a.call("editMessage", {"messageId": sent["id"], "content": "new"})
    assert ack["content"] == "new", ack


async def test_edit_payloads_are_validated(api: Api, joined) -> None:
    alice, _bob, room, a, _b = joined
    sent = await a.send(alice, room, "x")
    for payload in (None, {}, {"messageId": sent["id"]}, {"messageId": sent["id"], "content": ""}, {"content": "y"}):
        assert_ack_error(await a.call("editMessage", payload), 400)
    assert_ack_error(await a.call("editMessage", {"messageId": sent["id"], "content": "y" * 501}), 400)
    assert_ack_error(await a.call("editMessage", {"messageId": sent["id"], "content": "a\x00b"}), 400)
    assert by_id(await api.history(alice, room))[sent["id"]]["content"] == "x"


# -- delete --------------------------------------------------------------------------------------------------------


async def test_delete_tells_the_room_keeps_the_place_and_drops_favorites_and_search(api: Api, joined) -> None:
    alice, bob, room, a, b = joined
    sent = await a.send(alice, room, "regrettable words")
    after = await a.send(alice, room, "regrettable but kept")
    resp = await api.get("/favorite/add", bob.token, chatHistoryId=sent["id"])
    assert resp.status == 200, resp.body
    assert await found_ids(api, bob, "regrettable") == [after["id"], sent["id"]]

    ack = await a.call("deleteMessage", {"messageId": sent["id"]})
    assert ack == {"id": sent["id"], "chatroomId": room, "deleted": True}
    notice = await b.next_message(lambda m: m.get("type") == "messageDeleted")
    assert notice == {"type": "messageDeleted", "chatroomId": room, "messageId": sent["id"]}

    history = await api.history(bob, room)
    assert [m["id"] for m in history][-2:] == [sent["id"], after["id"]]
    place = by_id(history)[sent["id"]]
    assert set(place) == DELETED_KEYS
    assert place == {
        "id": sent["id"],
        "chatroomId": room,
        "senderId": alice.id,
        "createTime": sent["createTime"],
        "sender": sent["sender"],
        "deleted": True,
        "content": "",
        "type": 0,
    }
    resp = await api.get("/favorite/list", bob.token)
    assert resp.status == 200 and resp.body == []
    assert await found_ids(api, bob, "regrettable") == [after["id"]]
    # A deleted message cannot be edited; deleting it again answers the same and tells no one.
    assert_ack_error(await a.call("editMessage", {"messageId": sent["id"], "content": "back"}), 404)
    assert await a.call("deleteMessage", {"messageId": sent["id"]}) == ack


async def test_only_the_sender_may_delete_and_nothing_changes_otherwise(api: Api, joined, sockets) -> None:
    alice, bob, room, a, b = joined
    sent = await a.send(alice, room, "keep me")
    outsider = await api.new_user()
    o = await sockets(outsider.token)
    assert_ack_error(await b.call("deleteMessage", {"messageId": sent["id"]}), 403)
    assert_ack_error(await o.call("deleteMessage", {"messageId": sent["id"]}), 403)
    assert_ack_error(await a.call("deleteMessage", {"messageId": sent["id"], "userId": bob.id}), 403)
    assert_ack_error(await a.call("deleteMessage", {"messageId": 10**9}), 404)
    for payload in (None, {}, {"messageId": 0}, {"messageId": -1}, {"messageId": [sent["id"]]}):
        assert_ack_error(await a.call("deleteMessage", payload), 400)
    assert by_id(await api.history(alice, room))[sent["id"]] == sent


async def test_recovery_replays_edits_and_deletions_as_their_current_state(api: Api, joined, sockets) -> None:
    alice, bob, room, a, _b = joined
    before = await a.send(alice, room, "seen")
    edited = await a.send(alice, room, "typo")
    deleted = await a.send(alice, room, "oops")
    await a.call("editMessage", {"messageId": edited["id"], "content": "fixed"})
    await a.call("deleteMessage", {"messageId": deleted["id"]})
    late = await sockets(bob.token)
    ack = await late.call("joinRoom", {"chatroomId": room, "lastMessageId": before["id"]})
    assert ack == {"chatroomId": room, "recovered": True, "count": 2}
    replayed = [await late.next_chat(), await late.next_chat()]
    current = by_id(await api.history(bob, room))
    assert [event["message"] for event in replayed] == [current[edited["id"]], current[deleted["id"]]]
    assert replayed[0]["message"]["content"] == "fixed" and replayed[1]["message"]["deleted"] is True


async def test_changes_and_a_recovering_join_neither_miss_nor_repeat(api: Api, joined, sockets) -> None:
    """Edits racing a recovering join: each reaches the joiner once, as history or as a notice."""
    alice, bob, room, a, _b = joined
    sent = [await a.send(alice, room, f"m{i}") for i in range(6)]
    late = await sockets(bob.token)
    edits = [a.call("editMessage", {"messageId": m["id"], "content": f"e{i}"}) for i, m in enumerate(sent)]
    join = late.call("joinRoom", {"chatroomId": room, "lastMessageId": sent[0]["id"] - 1})
    results = await asyncio.gather(join, *edits)
    assert results[0]["recovered"] is True
    final = await a.send(alice, room, "end")
    seen: dict[int, str] = {}
    while True:
        event = await late.next_message(lambda m: m.get("type") in ("sendMessage", "messageUpdated"))
        message = event["message"]
        if message["id"] == final["id"]:
            break
        seen[message["id"]] = message["content"]
    # Whatever arrived last for each message is its final content.
    assert seen == {m["id"]: f"e{i}" for i, m in enumerate(sent)}


# -- search --------------------------------------------------------------------------------------------------------


async def test_search_finds_any_case_newest_first_with_sender_in_the_callers_rooms(api: Api, joined, trio) -> None:
    alice, bob, room, a, b = joined
    first = await a.send(alice, room, "The Quick brown fox")
    await a.send(alice, room, "nothing here")
    second = await b.send(bob, room, "a QUICK reply")
    resp = await search(api, alice, "quick")
    assert resp.status == 200
    assert [m["id"] for m in resp.body] == [second["id"], first["id"]]
    history = by_id(await api.history(alice, room))
    assert resp.body == [history[second["id"]], history[first["id"]]]
    assert resp.body[0]["sender"]["id"] == bob.id and resp.body[0]["chatroomId"] == room
    # Someone else's room stays out of reach.
    carol, dave, _ = trio
    other = await api.one_to_one(carol, dave)
    assert await found_ids(api, carol, "quick") == []
    assert_error(*(lambda r: (r.status, r.body))(await search(api, carol, "quick", chatroomId=room)), 403)
    assert await found_ids(api, alice, "quick", chatroomId=room) == [second["id"], first["id"]]
    assert await found_ids(api, carol, "quick", chatroomId=other) == []


async def test_search_finds_cjk_substrings_of_two_or_more_characters(api: Api, joined) -> None:
    alice, bob, room, a, _b = joined
    hello = await a.send(alice, room, "大家你好呀")
    kana = await a.send(alice, room, "今日はいい天気ですね")
    hangul = await a.send(alice, room, "안녕하세요 여러분")
    assert await found_ids(api, bob, "你好") == [hello["id"]]
    assert await found_ids(api, bob, "大家你好") == [hello["id"]]
    assert await found_ids(api, bob, "天気") == [kana["id"]]
    assert await found_ids(api, bob, "いい天気") == [kana["id"]]
    assert await found_ids(api, bob, "하세") == [hangul["id"]]
    assert await found_ids(api, bob, "好你") == []


async def test_search_treats_percent_underscore_and_quotes_literally(api: Api, joined) -> None:
    alice, bob, room, a, _b = joined
    percent = await a.send(alice, room, "100% sure")
    under = await a.send(alice, room, "snake_case name")
    quoted = await a.send(alice, room, "he said \"hi\" and 'bye'")
    await a.send(alice, room, "1000 sure, snakeXcase")
    assert await found_ids(api, bob, "0%") == [percent["id"]]
    assert await found_ids(api, bob, "e_c") == [under["id"]]
    assert await found_ids(api, bob, "% s") == [percent["id"]]
    assert await found_ids(api, bob, '"hi"') == [quoted["id"]]
    assert await found_ids(api, bob, "'bye'") == [quoted["id"]]
    assert await found_ids(api, bob, 'd "h') == [quoted["id"]]
    assert await found_ids(api, bob, "OR") == []
    assert await found_ids(api, bob, "NEAR(a b)") == []


async def test_search_pages_with_before_id_and_limit(api: Api, joined) -> None:
    alice, bob, room, a, _b = joined
    sent = [await a.send(alice, room, f"page word {i}") for i in range(5)]
    ids = [m["id"] for m in reversed(sent)]
    assert await found_ids(api, bob, "word", limit=2) == ids[:2]
    assert await found_ids(api, bob, "word", limit=2, beforeId=ids[1]) == ids[2:4]
    assert await found_ids(api, bob, "word") == ids


async def test_search_parameters_are_validated_and_login_required(api: Api, pair) -> None:
    alice, _bob, _room = pair
    resp = await api.get("/chat-history/search", None, q="word")
    assert_error(resp.status, resp.body, 401)
    for params in ({}, {"q": "a"}, {"q": "ab", "limit": 0}, {"q": "ab", "limit": 101}, {"q": "ab", "beforeId": "x"}):
        resp = await api.get("/chat-history/search", alice.token, **params)
        assert_error(resp.status, resp.body, 400)
    resp = await api.get("/chat-history/search", alice.token, q="x" * 201)
    assert_error(resp.status, resp.body, 400)


async def test_search_follows_edits(api: Api, joined) -> None:
    alice, bob, room, a, _b = joined
    sent = await a.send(alice, room, "colour")
    await a.call("editMessage", {"messageId": sent["id"], "content": "color"})
    assert await found_ids(api, bob, "colour") == []
    assert await found_ids(api, bob, "color") == [sent["id"]]


async def test_any_search_text_answers_200_or_400(api: Api, joined) -> None:
    alice, bob, room, a, _b = joined
    await a.send(alice, room, 'mixed "quotes" AND OR NOT * ^ : ( ) 你好 % _')
    texts = nasty_text | st.sampled_from(['"', '""', "*", "a*", "NEAR(", "col:x", "^ab", "你好", "% _", "AND OR"])

    @SETTINGS
    @given(texts)
    def property_test(loop: asyncio.AbstractEventLoop, text: str) -> None:
        EXAMPLES.append(text)
        resp = run_on_loop(loop, api.request("GET", "/chat-history/search", token=bob.token, params={"q": text}))
        assert resp.status in (200, 400), (text, resp.status, resp.body)
        if resp.status == 200:
            assert isinstance(resp.body, list)

    await drive(property_test)


async def test_search_finds_two_cjk_characters_in_one_room_and_across_rooms(api: Api, joined, trio, sockets) -> None:
    alice, bob, room, a, _b = joined
    carol, _dave, _erin = trio
    group = await api.group(alice, bob, carol)
    outside = await api.group(carol, name="Elsewhere")
    c = await sockets(carol.token)
    here = await a.send(alice, room, "大家你好呀")
    there = await a.send(alice, group, "你好，世界")
    apart = await a.send(alice, room, "你们好")  # 你 and 好, but not side by side
    hidden = await c.send(carol, outside, "你好 in a room bob is not in")
    assert await found_ids(api, bob, "你好", chatroomId=room) == [here["id"]]
    assert await found_ids(api, bob, "你好", chatroomId=group) == [there["id"]]
    assert await found_ids(api, bob, "你好") == [there["id"], here["id"]]
    assert await found_ids(api, carol, "你好") == [hidden["id"], there["id"]]
    assert await found_ids(api, bob, "世界") == [there["id"]]
    assert await found_ids(api, bob, "们好", chatroomId=room) == [apart["id"]]
    assert await found_ids(api, bob, "好你") == []


async def test_search_across_rooms_merges_them_newest_first_and_pages(api: Api, joined, trio, sockets) -> None:
    alice, bob, room, a, _b = joined
    carol, _dave, _erin = trio
    group = await api.group(alice, bob, carol)
    outside = await api.group(carol, name="Elsewhere")
    c = await sockets(carol.token)
    sent = []
    for i in range(6):
        sent.append(await a.send(alice, (room, group)[i % 2], f"Meeting notes {i}"))
        await c.send(carol, outside, f"meeting elsewhere {i}")
    newest_first = list(reversed(sent))
    ids = [m["id"] for m in newest_first]
    assert await found_ids(api, bob, "MEETING") == ids
    assert await found_ids(api, bob, "meeting", limit=4) == ids[:4]
    assert await found_ids(api, bob, "meeting", limit=4, beforeId=ids[3]) == ids[4:]
    in_group = [m["id"] for m in newest_first if m["chatroomId"] == group]
    assert await found_ids(api, bob, "meeting", chatroomId=group) == in_group
    assert await found_ids(api, bob, "meeting", chatroomId=group, limit=2, beforeId=in_group[0]) == in_group[1:3]


async def test_search_follows_edits_and_deletes_of_cjk_text(api: Api, joined) -> None:
    alice, bob, room, a, _b = joined
    sent = await a.send(alice, room, "今天天气很好")
    kept = await a.send(alice, room, "天气预报")
    assert await found_ids(api, bob, "天气") == [kept["id"], sent["id"]]
    await a.call("editMessage", {"messageId": sent["id"], "content": "明天下雨"})
    assert await found_ids(api, bob, "天气") == [kept["id"]]
    assert await found_ids(api, bob, "下雨", chatroomId=room) == [sent["id"]]
    assert await found_ids(api, bob, "明天下雨") == [sent["id"]]
    await a.call("deleteMessage", {"messageId": sent["id"]})
    await a.call("deleteMessage", {"messageId": kept["id"]})
    assert await found_ids(api, bob, "下雨") == []
    assert await found_ids(api, bob, "天气") == []
    assert await found_ids(api, bob, "天气预报", chatroomId=room) == []


# Few characters, so that queries often hit: ASCII letters in both cases, CJK, and characters of LIKE and FTS5.
SEARCH_ALPHABET = "aAbB 你好世%_\\\"'*"
SEARCHED = ["ab你好", "AB 世界", "你好世", "a%b_c", "'ab' \"q\"", "*ab*", "b你a好", "你好你好", "aBa", "世%_", "a b"]


async def test_search_answers_exactly_the_messages_holding_the_text(api: Api, joined) -> None:
    alice, bob, room, a, _b = joined
    group = await api.group(alice, bob)
    sent = [await a.send(alice, (room, group)[i % 2], text) for i, text in enumerate(SEARCHED)]

    def expected(text: str, chatroom: int | None) -> list[int]:
        folded = text.lower()
        matching = [m for m in sent if folded in m["content"].lower() and chatroom in (None, m["chatroomId"])]
        return [m["id"] for m in reversed(matching)]

    @SETTINGS
    @given(st.text(alphabet=SEARCH_ALPHABET, min_size=2, max_size=5), st.sampled_from([None, room, group]))
    def property_test(loop: asyncio.AbstractEventLoop, text: str, chatroom: int | None) -> None:
        EXAMPLES.append(text)
        params = {"q": text} if chatroom is None else {"q": text, "chatroomId": chatroom}
        resp = run_on_loop(loop, api.request("GET", "/chat-history/search", token=bob.token, params=params))
        if not text.strip():
            assert_error(resp.status, resp.body, 400)  # blank text is refused, not searched
            return
        assert resp.status == 200, (text, resp.body)
        assert [m["id"] for m in resp.body] == expected(text, chatroom), text

    await drive(property_test)


async def test_hostile_edit_and_delete_payloads(api: Api, joined) -> None:
    alice, bob, room, a, b = joined
    sent = await a.send(alice, room, "stable")
    payloads = st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "messageId": st.sampled_from([sent["id"]]) | id_like,
                "content": nasty_text | json_values,
                "userId": st.sampled_from([alice.id, bob.id]) | id_like,
            },
        ),
    )
    client: SocketClient = b  # bob may change none of alice's messages

    @SETTINGS
    @given(st.sampled_from(["editMessage", "deleteMessage"]), payloads)
    def property_test(loop: asyncio.AbstractEventLoop, event: str, payload: Any) -> None:
        EXAMPLES.append(payload)
        ack = run_on_loop(loop, client.call(event, payload))
        assert isinstance(ack, dict) and 400 <= ack.get("statusCode", 0) < 500, ack
        assert client.sio.connected

    await drive(property_test)
    assert by_id(await api.history(alice, room))[sent["id"]] == sent


# -- sidecar -------------------------------------------------------------------------------------------------------


async def test_sidecar_edits_as_the_sender_and_deletes_any_message(api: Api, joined) -> None:
    alice, bob, room, a, b = joined
    sent = await a.send(alice, room, "draft")
    resp = await sidecar(api, "PATCH", f"/messages/{sent['id']}", {"username": alice.username, "content": "final"})
    assert resp.status == 200 and resp.body["content"] == "final" and resp.body["editedAt"], resp.body
    await b.next_message(lambda m: m.get("type") == "messageUpdated")
    resp = await sidecar(api, "PATCH", f"/messages/{sent['id']}", {"username": bob.username, "content": "bob"})
    assert_error(resp.status, resp.body, 403)
    resp = await sidecar(api, "DELETE", f"/messages/{sent['id']}", username=bob.username)
    assert_error(resp.status, resp.body, 403)
    assert by_id(await api.history(alice, room))[sent["id"]]["content"] == "final"
    resp = await sidecar(api, "DELETE", f"/messages/{sent['id']}")
    assert resp.status == 200 and resp.body == {"id": sent["id"], "chatroomId": room, "deleted": True}
    await b.next_message(lambda m: m.get("type") == "messageDeleted")
    resp = await sidecar(api, "DELETE", "/messages/999999999")
    assert_error(resp.status, resp.body, 404)
    resp = await api.request("DELETE", f"/sidecar/v1/messages/{sent['id']}", headers={"X-Api-Key": "wrong"})
    assert_error(resp.status, resp.body, 401)
