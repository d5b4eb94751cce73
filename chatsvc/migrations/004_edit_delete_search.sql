-- Edit, delete and search (issue 15). An edited message keeps its id and gains edit_time; a deleted one keeps
-- its place (id, room, sender, time, type) with its content erased.
ALTER TABLE chat_history ADD COLUMN edit_time TEXT;
ALTER TABLE chat_history ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1));
-- Search: a trigram index of live text messages (substrings of three or more characters, any case).
-- External content: the text is stored once, in chat_history; the triggers keep the index in step.
CREATE VIRTUAL TABLE chat_search USING fts5 (
    content, content = 'chat_history', content_rowid = 'id', tokenize = 'trigram'
);
CREATE TRIGGER chat_search_insert AFTER INSERT ON chat_history WHEN new.type = 0 AND new.deleted = 0 BEGIN
    INSERT INTO chat_search (rowid, content) VALUES (new.id, new.content);
END;
-- Only rows the index holds are taken out of it: a 'delete' of a row it lacks would corrupt it.
CREATE TRIGGER chat_search_update_old AFTER UPDATE OF content, deleted ON chat_history
WHEN old.type = 0 AND old.deleted = 0 BEGIN
    INSERT INTO chat_search (chat_search, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER chat_search_update_new AFTER UPDATE OF content, deleted ON chat_history
WHEN new.type = 0 AND new.deleted = 0 BEGIN
    INSERT INTO chat_search (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER chat_search_delete AFTER DELETE ON chat_history WHEN old.type = 0 AND old.deleted = 0 BEGIN
    INSERT INTO chat_search (chat_search, rowid, content) VALUES ('delete', old.id, old.content);
END;
INSERT INTO chat_search (rowid, content) SELECT id, content FROM chat_history WHERE type = 0;
