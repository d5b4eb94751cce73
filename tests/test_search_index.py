"""The search index off the message write path (issues 13 and 14): search catches up before it answers.

On SQLite storing a message does not index it: the writer indexes the messages
above the index's watermark when it has time, at start, and before each search
(chatsvc/search_index.py). A message "stored by another instance" is written
with plain SQL into the file, as a second chatsvc sharing it (Redis mode on one
host) would: this process's writer has not seen it, so only the catch-up that
reads the database finds it. PostgreSQL indexes in the INSERT: the tests that
do not look into the SQLite file run there too.
"""

from __future__ import annotations

from typing import Any

import pytest

from chatsvc.config import Config
from tests.conftest import Rows
from tests.helpers import Api, User, serve, until
from tests.test_edit_delete_search import found_ids

pytestmark = pytest.mark.both_engines

# Words of three characters or more (the trigram index) and a CJK pair (the pair index).
WORDS = ["zebra", "draft", "wording", "report", "你好"]


def store_as_another_instance(db_rows: Any, room: int, sender: User, content: str) -> int:
    """A text message stored into the file by another chatsvc sharing it; its id."""
    rows: Rows = db_rows(
        "INSERT INTO chat_history (content, type, chatroom_id, sender_id) VALUES (?, 0, ?, ?) RETURNING id",
        (content, room, sender.id),
    )
    return int(rows[0][0])


def watermark(db_rows: Any) -> int:
    """The highest message id the SQLite search index covers."""
    return int(db_rows("SELECT indexed_id FROM chat_search_watermark")[0][0])


def newest_id(db_rows: Any) -> int:
    return int(db_rows("SELECT max(id) FROM chat_history")[0][0])


def assert_index_consistent(db_rows: Any) -> None:
    """FTS5's own check passes, and the index answers exactly what a scan of the history does."""
    db_rows("INSERT INTO chat_search (chat_search) VALUES ('integrity-check')")
    db_rows("INSERT INTO chat_search_pairs (chat_search_pairs) VALUES ('integrity-check')")
    assert watermark(db_rows) == newest_id(db_rows)
    for word in WORDS:
        table, match = "chat_search", f'"{word}"'
        if len(word) == 2:  # a CJK pair, spelled as chatsvc/store/sqlite.py spells it
            table, match = "chat_search_pairs", '"' + word.encode().hex().upper() + '"'
        indexed = db_rows(f"SELECT rowid % 4294967296 FROM {table} WHERE {table} MATCH ? ORDER BY 1", (match,))
        scanned = db_rows(
            """
            SELECT id FROM chat_history
            WHERE type = 0 AND deleted = 0 AND instr(lower(content), lower(?)) > 0 ORDER BY 1
            """,
            (word,),
        )
        assert indexed == scanned, word


async def test_a_message_acknowledged_is_found_by_the_search_that_follows(api: Api, joined) -> None:
    alice, bob, room, a, _b = joined
    sent: list[int] = []
    for i in range(3):
        sent.insert(0, (await a.send(alice, room, f"freshly said {i}"))["id"])
        # Right after the ack: the writer has had no idle moment to index it.
        assert await found_ids(api, bob, "freshly said") == sent
        assert await found_ids(api, bob, f"said {i}", chatroomId=room) == sent[:1]


@pytest.mark.sqlite_only
async def test_a_message_stored_by_another_instance_is_found_by_the_next_search(api: Api, joined, db_rows) -> None:
    alice, bob, room, _a, _b = joined
    stored = store_as_another_instance(db_rows, room, alice, "said elsewhere 你好")
    assert watermark(db_rows) < stored
    assert await found_ids(api, bob, "elsewhere") == [stored]
    assert await found_ids(api, bob, "你好", chatroomId=room) == [stored]
    assert watermark(db_rows) == stored


@pytest.mark.sqlite_only
async def test_edits_and_deletes_before_indexing_are_searched_as_they_are_now(api: Api, joined, db_rows) -> None:
    alice, bob, room, a, _b = joined
    edited = store_as_another_instance(db_rows, room, alice, "first draft zebra")
    deleted = store_as_another_instance(db_rows, room, alice, "doomed zebra")
    kept = store_as_another_instance(db_rows, room, alice, "kept zebra 你好")
    assert watermark(db_rows) < edited
    ack = await a.call("editMessage", {"messageId": edited, "content": "final wording 你好"})
    assert ack["id"] == edited and ack["content"] == "final wording 你好", ack
    assert (await a.call("deleteMessage", {"messageId": deleted}))["deleted"] is True
    assert watermark(db_rows) < edited  # the edit and the delete did not index them
    assert await found_ids(api, bob, "zebra") == [kept]
    assert await found_ids(api, bob, "final wording") == [edited]
    assert await found_ids(api, bob, "draft") == []
    assert await found_ids(api, bob, "doomed") == []
    assert await found_ids(api, bob, "你好") == [kept, edited]
    # Once indexed, an edit takes the message's entry out again.
    await a.call("editMessage", {"messageId": edited, "content": "second wording"})
    assert await found_ids(api, bob, "wording") == [edited]
    assert await found_ids(api, bob, "你好") == [kept]
    assert_index_consistent(db_rows)


@pytest.mark.sqlite_only
async def test_the_writer_indexes_new_messages_when_idle(api: Api, joined, db_rows) -> None:
    alice, _bob, room, a, _b = joined
    for i in range(3):
        last = (await a.send(alice, room, f"idle {i}"))["id"]
    await until(lambda: watermark(db_rows) >= last, "the writer to index the messages without a search")


@pytest.mark.sqlite_only
async def test_messages_a_stopped_process_left_unindexed_are_indexed_at_the_next_start(config: Config, db_rows) -> None:
    async with serve(config) as api:
        alice, bob = await api.new_user(), await api.new_user()
        room = await api.one_to_one(alice, bob)
    # Stored by a process that then stopped before its writer had time to index them.
    left = [store_as_another_instance(db_rows, room, alice, f"left behind {i}") for i in range(3)]
    assert watermark(db_rows) < left[0]
    async with serve(config):
        # Without a search asking for it.
        await until(lambda: watermark(db_rows) == left[-1], "the writer to index what the stopped process left")
        rowids = db_rows("SELECT rowid % 4294967296 FROM chat_search WHERE chat_search MATCH '\"left behind\"'")
        assert sorted(row[0] for row in rowids) == left


@pytest.mark.sqlite_only
async def test_the_index_stays_consistent_through_sends_edits_and_deletes(api: Api, joined, db_rows) -> None:
    alice, bob, room, a, b = joined
    group = await api.group(alice, bob)
    texts = ["zebra ab", "你好 zebra", "report draft", "AB wording 你好", "plain", "Zebra report"]
    sent = []
    for i, text in enumerate(texts):
        sender, socket, chatroom = (alice, a, room) if i % 2 == 0 else (bob, b, group)
        sent.append((await socket.send(sender, chatroom, text))["id"])
    others = [store_as_another_instance(db_rows, group, alice, text) for text in texts]
    await found_ids(api, bob, "zebra")  # indexes everything so far
    late = [store_as_another_instance(db_rows, room, alice, text) for text in texts]
    for ids in (sent[::2], others, late):
        edit = await a.call("editMessage", {"messageId": ids[0], "content": "draft zebra 你好 again"})
        assert edit["id"] == ids[0], edit
        assert (await a.call("deleteMessage", {"messageId": ids[2]}))["deleted"] is True
    await b.call("editMessage", {"messageId": sent[1], "content": "bob's wording"})
    assert await found_ids(api, bob, "draft zebra") == [late[0], others[0], sent[0]]
    assert_index_consistent(db_rows)
