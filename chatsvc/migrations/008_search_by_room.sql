-- Search by room, and CJK bigrams (issue 15). The index of 004 kept one trigram posting list per term for
-- the whole history: a search in one room read every match of the word, newest first, until enough were in
-- the room; and a two-character word (CJK) has no trigram, so it scanned the history.
DROP TRIGGER chat_search_insert;
DROP TRIGGER chat_search_update;
DROP TRIGGER chat_search_delete;
DROP TABLE chat_search;
-- An entry's rowid is chatroom_id * 2^32 + message id: each posting list is ordered by room, then by message,
-- so a room's matches are one rowid range that FTS5 seeks to and reads newest first (message ids below 2^32).
-- Contentless (the text lives in chat_history): an entry leaves the index with the text it entered with.
-- Sizes are kept (no columnsize = 0): without them FTS5 cannot list a contentless table, and dumps fail.
CREATE VIRTUAL TABLE chat_search USING fts5 (content, content = '', tokenize = 'trigram');
-- Two-character words: every pair of CJK characters (CJK and Hangul blocks, compatibility ideographs,
-- full-width forms, supplementary ideographs) of a live text message, as the hex of its UTF-8 so that any
-- character is a plain token; no positions are kept. chatsvc/store/sqlite.py spells a query's pair the same way.
CREATE VIRTUAL TABLE chat_search_pairs USING fts5 (pairs, content = '', detail = none);
-- The pairs of each live text message that has any (json_each of "[0,0,...]" numbers the characters: a
-- trigger may not use WITH RECURSIVE).
CREATE VIEW chat_search_pairs_source AS
SELECT h.id AS id, h.chatroom_id * 4294967296 + h.id AS entry, (
    SELECT group_concat(hex(substr(h.content, s.key + 1, 2)), ' ')
    FROM json_each('[' || substr(replace(hex(zeroblob(length(h.content))), '00', ',0'), 2) || ']') AS s
    WHERE substr(h.content, s.key + 1, 2) GLOB '[⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿][⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿]'
) AS pairs
FROM chat_history AS h
WHERE h.type = 0 AND h.deleted = 0 AND h.content GLOB '*[⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿][⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿]*';
-- A message leaves the index before its row changes (BEFORE: the pairs are read from the row as it was) and
-- comes back after (AFTER); SQLite runs BEFORE triggers first. Only an entry the index holds may be taken out.
CREATE TRIGGER chat_search_insert AFTER INSERT ON chat_history WHEN new.type = 0 AND new.deleted = 0 BEGIN
    INSERT INTO chat_search (rowid, content) VALUES (new.chatroom_id * 4294967296 + new.id, new.content);
    INSERT INTO chat_search_pairs (rowid, pairs) SELECT entry, pairs FROM chat_search_pairs_source WHERE id = new.id;
END;
CREATE TRIGGER chat_search_unindex BEFORE UPDATE OF content, deleted, type, chatroom_id ON chat_history
WHEN old.type = 0 AND old.deleted = 0 BEGIN
    INSERT INTO chat_search (chat_search, rowid, content)
    VALUES ('delete', old.chatroom_id * 4294967296 + old.id, old.content);
    INSERT INTO chat_search_pairs (chat_search_pairs, rowid, pairs)
    SELECT 'delete', entry, pairs FROM chat_search_pairs_source WHERE id = old.id;
END;
CREATE TRIGGER chat_search_reindex AFTER UPDATE OF content, deleted, type, chatroom_id ON chat_history
WHEN new.type = 0 AND new.deleted = 0 BEGIN
    INSERT INTO chat_search (rowid, content) VALUES (new.chatroom_id * 4294967296 + new.id, new.content);
    INSERT INTO chat_search_pairs (rowid, pairs) SELECT entry, pairs FROM chat_search_pairs_source WHERE id = new.id;
END;
CREATE TRIGGER chat_search_delete BEFORE DELETE ON chat_history WHEN old.type = 0 AND old.deleted = 0 BEGIN
    INSERT INTO chat_search (chat_search, rowid, content)
    VALUES ('delete', old.chatroom_id * 4294967296 + old.id, old.content);
    INSERT INTO chat_search_pairs (chat_search_pairs, rowid, pairs)
    SELECT 'delete', entry, pairs FROM chat_search_pairs_source WHERE id = old.id;
END;
-- Backfill: the live text messages stored so far, in rowid order (FTS5 writes a segment whenever an entry's
-- rowid is not above the last one's, so an unordered fill would write one per message).
INSERT INTO chat_search (rowid, content)
SELECT chatroom_id * 4294967296 + id, content FROM chat_history WHERE type = 0 AND deleted = 0
ORDER BY chatroom_id, id;
INSERT INTO chat_search_pairs (rowid, pairs) SELECT entry, pairs FROM chat_search_pairs_source ORDER BY entry;
-- Each posting list as one segment: a lookup seeks once per term instead of once per segment the fill wrote.
INSERT INTO chat_search (chat_search) VALUES ('optimize');
INSERT INTO chat_search_pairs (chat_search_pairs) VALUES ('optimize');
