-- Edit, delete and search (issue 15). An edited message keeps its id and gains edit_time; a deleted one keeps
-- its place (id, room, sender, time, type) with its content erased.
ALTER TABLE chat_history ADD COLUMN edit_time TEXT;
-- Deleting a message drops the favorites of it.
CREATE INDEX favorite_by_message ON favorite (chat_history_id);
ALTER TABLE chat_history ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1));
-- Search: a trigram index of live text messages (substrings of three or more characters, any case).
-- External content: the text is stored once, in chat_history; the triggers keep the index in step.
CREATE VIRTUAL TABLE chat_search USING fts5 (
    content, content = 'chat_history', content_rowid = 'id', tokenize = 'trigram'
);
CREATE TRIGGER chat_search_insert AFTER INSERT ON chat_history WHEN new.type = 0 AND new.deleted = 0 BEGIN
    INSERT INTO chat_search (rowid, content) VALUES (new.id, new.content);
END;
-- One trigger, the old row out before the new one in: only a row the index holds may be taken out of it
-- (a 'delete' of a row it lacks corrupts it), and two triggers would run in an order SQLite does not promise.
CREATE TRIGGER chat_search_update AFTER UPDATE OF content, deleted ON chat_history BEGIN
    INSERT INTO chat_search (chat_search, rowid, content)
    SELECT 'delete', old.id, old.content WHERE old.type = 0 AND old.deleted = 0;
    INSERT INTO chat_search (rowid, content) SELECT new.id, new.content WHERE new.type = 0 AND new.deleted = 0;
END;
CREATE TRIGGER chat_search_delete AFTER DELETE ON chat_history WHEN old.type = 0 AND old.deleted = 0 BEGIN
    INSERT INTO chat_search (chat_search, rowid, content) VALUES ('delete', old.id, old.content);
END;
INSERT INTO chat_search (rowid, content) SELECT id, content FROM chat_history WHERE type = 0;
