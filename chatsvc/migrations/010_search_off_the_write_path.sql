-- The search index off the message write path (issues 13 and 14): storing a message no longer indexes it; the
-- writer indexes the new messages in chunks when it is idle, and before each search (chatsvc/search_index.py).
-- FTS5 writes a segment per transaction, so indexing each small batch inside its INSERT cost more than the INSERT.
-- The index holds every live text message up to indexed_id (with its current text), and none above it.
-- Its own one-row table, not the setting table: the triggers compare an INTEGER without a cast, and
-- copy-to-postgres (which copies setting) carries no SQLite index state to an engine without this index.
CREATE TABLE chat_search_watermark (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_id INTEGER NOT NULL
);
-- The index made by 008 and kept by the triggers holds every message stored so far.
INSERT INTO chat_search_watermark (id, indexed_id) SELECT 1, coalesce(max(id), 0) FROM chat_history;
-- Only an entry the index holds may be taken out (a 'delete' of one it does not hold corrupts a contentless
-- table), and one above the watermark is indexed later with the text it has then.
DROP TRIGGER chat_search_insert;
DROP TRIGGER chat_search_unindex;
DROP TRIGGER chat_search_reindex;
DROP TRIGGER chat_search_delete;
-- A new message is indexed at once only when its id is at or below the watermark: ids are reused once the
-- newest message is deleted, and the indexer looks above the watermark only.
CREATE TRIGGER chat_search_insert AFTER INSERT ON chat_history
WHEN new.type = 0 AND new.deleted = 0 AND new.id <= (SELECT indexed_id FROM chat_search_watermark) BEGIN
    INSERT INTO chat_search (rowid, content) VALUES (new.chatroom_id * 4294967296 + new.id, new.content);
    INSERT INTO chat_search_pairs (rowid, pairs) SELECT entry, pairs FROM chat_search_pairs_source WHERE id = new.id;
END;
CREATE TRIGGER chat_search_unindex BEFORE UPDATE OF content, deleted, type, chatroom_id ON chat_history
WHEN old.type = 0 AND old.deleted = 0 AND old.id <= (SELECT indexed_id FROM chat_search_watermark) BEGIN
    INSERT INTO chat_search (chat_search, rowid, content)
    VALUES ('delete', old.chatroom_id * 4294967296 + old.id, old.content);
    INSERT INTO chat_search_pairs (chat_search_pairs, rowid, pairs)
    SELECT 'delete', entry, pairs FROM chat_search_pairs_source WHERE id = old.id;
END;
CREATE TRIGGER chat_search_reindex AFTER UPDATE OF content, deleted, type, chatroom_id ON chat_history
WHEN new.type = 0 AND new.deleted = 0 AND new.id <= (SELECT indexed_id FROM chat_search_watermark) BEGIN
    INSERT INTO chat_search (rowid, content) VALUES (new.chatroom_id * 4294967296 + new.id, new.content);
    INSERT INTO chat_search_pairs (rowid, pairs) SELECT entry, pairs FROM chat_search_pairs_source WHERE id = new.id;
END;
CREATE TRIGGER chat_search_delete BEFORE DELETE ON chat_history
WHEN old.type = 0 AND old.deleted = 0 AND old.id <= (SELECT indexed_id FROM chat_search_watermark) BEGIN
    INSERT INTO chat_search (chat_search, rowid, content)
    VALUES ('delete', old.chatroom_id * 4294967296 + old.id, old.content);
    INSERT INTO chat_search_pairs (chat_search_pairs, rowid, pairs)
    SELECT 'delete', entry, pairs FROM chat_search_pairs_source WHERE id = old.id;
END;
